"""A small simulated count matrix with cell types, samples, batches and spatial domains, for tests and demos."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

#: Mean count per gene per cell before the library-size spread (so ``n_genes * MEAN_COUNT`` counts per cell).
MEAN_COUNT = 2.0
#: NB inverse dispersion (theta) of every gene: variance = mu + mu**2 / theta.
THETA = 5.0
#: Side of the square section, in the units of ``obsm['spatial']``, when ``spatial=True``.
SECTION_SIZE = 1000.0


def synthetic_adata(
    n_cells: int = 300,
    n_genes: int = 200,
    *,
    n_types: int = 4,
    n_samples: int = 2,
    n_batches: int | None = None,
    spatial: bool = False,
    sparse: bool = True,
    dense_dtype: np.dtype | type = np.float32,
    gene_names: Sequence[str] | None = None,
    seed: int = 0,
) -> AnnData:
    """Negative binomial counts of ``n_types`` separable cell types, for tests, examples and demos.

    The generative model, all of it drawn from ``numpy.random.default_rng(seed)`` (the same seed gives the
    same object, dense or sparse):

    - gene baseline proportions are log-normal (sd 1.5), so a few genes are abundant and many are rare;
    - each type has its own marker genes (``max(2, n_genes // (5 * n_types))`` each, disjoint while there are
      genes enough) raised 3-8x, plus a small type-specific shift on every gene (log-scale sd 0.2): the types
      separate on a PCA of log-normalised counts, but no single gene tells them apart perfectly;
    - cell types are balanced (``n_cells // n_types`` each, in shuffled order); samples are balanced too and
      independent of type;
    - library sizes are log-normal around ``n_genes * MEAN_COUNT`` (log-scale sd 0.4);
    - with ``n_batches``, each batch multiplies every gene by its own factor (log-scale sd 0.25: a mild batch
      effect), batches being balanced and independent of type and sample;
    - counts are Gamma-Poisson (NB) with mean ``library * proportion`` and inverse dispersion ``THETA``.

    Parameters
    ----------
    n_cells, n_genes
        Shape of the matrix.
    n_types
        Number of cell types, ``obs['cell_type']`` = ``"type_0"``, ``"type_1"``, ...
    n_samples
        Number of samples, ``obs['sample']`` = ``"sample_0"``, ...
    n_batches
        If given, ``obs['batch']`` = ``"batch_0"``, ... with a mild batch effect on the counts.
    spatial
        Write ``obsm['spatial']``: 2-D coordinates in a ``SECTION_SIZE`` square per sample where each type
        occupies its own vertical band (a spatial domain), cells placed uniformly inside it.
    sparse
        CSR float32 counts in ``X``; otherwise a dense array of ``dense_dtype``.
    dense_dtype
        dtype of a dense ``X``.
    gene_names
        ``var_names``; default ``GENE0``, ``GENE1``, ...
    seed
        Seed of everything random.

    Returns
    -------
    AnnData
        Integer-valued counts in ``X``; ``obs`` with ``cell_type``, ``sample`` (and ``batch``) as categoricals;
        ``obsm['spatial']`` when ``spatial``; ``obs_names`` ``cell_0``, ...

    Examples
    --------
    >>> adata = synthetic_adata(200, 100, n_types=3, spatial=True)
    >>> adata.obs["cell_type"].value_counts().to_dict()
    {'type_0': 67, 'type_1': 67, 'type_2': 66}
    """
    for name, value, minimum in (
        ("n_cells", n_cells, 1),
        ("n_genes", n_genes, 1),
        ("n_types", n_types, 1),
        ("n_samples", n_samples, 1),
    ):
        if int(value) != value or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if n_batches is not None and (int(n_batches) != n_batches or n_batches < 1):
        raise ValueError(f"n_batches must be None or an integer >= 1, got {n_batches!r}")
    if n_types > n_cells:
        raise ValueError(f"n_types={n_types} is more than n_cells={n_cells}: every type needs a cell; lower n_types")
    if gene_names is None:
        genes = [f"GENE{i}" for i in range(n_genes)]
    else:
        genes = [str(g) for g in gene_names]
        if len(genes) != n_genes:
            raise ValueError(f"gene_names has {len(genes)} names for n_genes={n_genes}; pass one name per gene")
        if len(set(genes)) != len(genes):
            raise ValueError("gene_names has repeated names; var_names must be unique")
    rng = np.random.default_rng(seed)

    # gene baseline and per-type log-scale shifts (markers plus a small shift everywhere)
    base = rng.normal(0.0, 1.5, size=n_genes)
    log_type = base + rng.normal(0.0, 0.2, size=(n_types, n_genes))
    n_markers = max(2, n_genes // (5 * n_types))
    order = rng.permutation(n_genes)
    for t in range(n_types):
        markers = np.take(order, np.arange(t * n_markers, (t + 1) * n_markers), mode="wrap")
        log_type[t, markers] += rng.uniform(np.log(3.0), np.log(8.0), size=n_markers)
    proportions = np.exp(log_type)
    proportions /= proportions.sum(axis=1, keepdims=True)

    types = rng.permutation(np.arange(n_cells) % n_types)
    samples = rng.permutation(np.arange(n_cells) % n_samples)
    library = n_genes * MEAN_COUNT * np.exp(rng.normal(-0.08, 0.4, size=n_cells))  # exp(-sd**2 / 2): mean kept
    mu = library[:, None] * proportions[types]
    obs = {
        "cell_type": _categorical("type", types, n_types),
        "sample": _categorical("sample", samples, n_samples),
    }
    if n_batches is not None:
        batches = rng.permutation(np.arange(n_cells) % n_batches)
        mu *= np.exp(rng.normal(0.0, 0.25, size=(n_batches, n_genes)))[batches]
        obs["batch"] = _categorical("batch", batches, n_batches)
    counts = rng.poisson(rng.gamma(THETA, mu / THETA)).astype(np.float32)

    adata = AnnData(
        X=sp.csr_matrix(counts) if sparse else counts.astype(dense_dtype),
        obs=pd.DataFrame(obs, index=[f"cell_{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=genes),
    )
    if spatial:
        width = SECTION_SIZE / n_types
        x = (types + rng.uniform(0.0, 1.0, size=n_cells)) * width
        y = rng.uniform(0.0, SECTION_SIZE, size=n_cells)
        adata.obsm["spatial"] = np.column_stack([x, y]).astype(np.float32)
    return adata


def _categorical(prefix: str, codes: np.ndarray, n: int) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, categories=[f"{prefix}_{i}" for i in range(n)])
