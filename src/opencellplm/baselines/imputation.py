"""Spatial imputation baselines (TASKS §5): predict genes a spatial panel did not measure from an scRNA-seq reference.

- :func:`reference_mean`: every spatial cell gets the reference's mean expression profile, at its own depth;
- :func:`spage_style`: SpaGE (Abdelaal et al. 2020) in spirit: align the two data sets by principal vectors
  (PRECISE, Mourragui et al. 2019) on the shared genes, then each spatial cell takes the weighted mean profile of
  its cosine-nearest reference cells;
- :func:`tangram`: Tangram itself (the ``tangram-sc`` package, extra ``baselines``);
- :func:`gimvi`: gimVI (scvi-tools, extra ``scvi`` or ``baselines``).

Every function takes ``spatial`` (counts of the spatial panel), ``reference`` (scRNA-seq counts) and ``genes`` (the
target genes: all must be in the reference; some may be in the spatial panel too, as held-out genes are) and
returns a :class:`~opencellplm.baselines.BaselineResult` whose ``prediction`` is a dense float32
``(spatial.n_obs, len(genes))`` array on the spatial cells' count scale, by one rule shared with CellPLM's own
prediction, so that the comparison is fair:

1. The **shared genes** are the genes in both ``spatial`` and ``reference``, minus the target genes
   (:func:`shared_genes`). Only they are read from ``spatial``: a target gene's spatial values are never read, so
   held-out genes cannot leak into their own prediction.
2. Each method produces, for each spatial cell, a profile ``p`` over the reference genes in reference-normalised
   units: reference counts divided by the reference cell's total over all its genes (reference cells without
   counts are left out).
3. The cell's size factor is ``s = (its spatial counts summed over the shared genes) / (p summed over the shared
   genes)`` and the prediction is ``p[genes] * s``. A cell whose shared genes are all 0 is predicted 0.

The rule needs non-negative values only, not integer counts. The inputs are read from ``X`` or
``layers[spatial_layer]`` / ``layers[reference_layer]`` (dense, sparse or backed) and never modified.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._lognorm import log_normalize
from ..data.reader import check_readable, counts_matrix, iter_row_blocks, on_disk
from ._common import BaselineResult, _counts, import_package, root_logging_kept

logger = logging.getLogger(__name__)

#: SpaGE keeps the principal vectors whose source/target cosine similarity exceeds this (``main.py``: ``> 0.3``).
MIN_PV_SIMILARITY = 0.3
#: Gene names shown in an error message.
N_EXAMPLES = 5


def shared_genes(spatial: AnnData, reference: AnnData, genes: Sequence[str]) -> list[str]:
    """The genes a baseline reads from ``spatial``: in both data sets, not a target gene, in ``spatial``'s order.

    Parameters
    ----------
    spatial, reference
        The spatial panel and the scRNA-seq reference (only their ``var_names`` are read).
    genes
        The target genes.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        As the baselines do, when ``genes`` is empty, repeats a gene or names genes absent from the reference, when
        ``var_names`` repeat, or when no gene is shared.
    """
    return _gene_plan(spatial, reference, genes)[0]


def reference_mean(
    spatial: AnnData,
    reference: AnnData,
    genes: Sequence[str],
    *,
    spatial_layer: str | None = None,
    reference_layer: str | None = None,
) -> BaselineResult:
    """The mean normalised profile of all reference cells, scaled to each spatial cell's depth.

    ``p`` is the mean over reference cells of ``counts / total`` (the same for every spatial cell), so predictions
    differ between spatial cells only through the size factor (module docstring). A method that cannot beat this
    has learned nothing cell-specific.

    Parameters
    ----------
    spatial
        Counts of the spatial panel; never modified.
    reference
        scRNA-seq counts; never modified.
    genes
        Target genes to predict, all in ``reference.var_names``.
    spatial_layer, reference_layer
        Layers holding the counts; ``None`` for ``X``.

    Returns
    -------
    BaselineResult
        ``prediction``: ``(spatial.n_obs, len(genes))`` float32; ``params``: the layers, ``n_genes``,
        ``n_shared_genes``, ``n_reference_cells`` (with counts).

    Raises
    ------
    ValueError
        When no gene is shared, a target gene is not in the reference, or the counts are negative or not finite.
    """
    start = time.perf_counter()
    data = _imputation_inputs(spatial, reference, genes, spatial_layer, reference_layer)
    mean = np.asarray(data.profiles.mean(axis=0), dtype=np.float64)  # (1, n_shared + n_genes)
    prediction = _to_spatial_scale(np.broadcast_to(mean, (data.spatial.shape[0], mean.shape[1])), data)
    logger.info(
        "reference_mean: %d spatial cells, %d target genes from %d reference cells (%d shared genes)",
        data.spatial.shape[0],
        len(data.genes),
        data.profiles.shape[0],
        len(data.shared),
    )
    return BaselineResult(
        name="reference_mean",
        prediction=prediction,
        seconds=time.perf_counter() - start,
        params=data.params(spatial_layer, reference_layer),
    )


def spage_style(
    spatial: AnnData,
    reference: AnnData,
    genes: Sequence[str],
    *,
    n_pv: int = 30,
    k: int = 50,
    seed: int = 0,
    min_similarity: float = MIN_PV_SIMILARITY,
    spatial_layer: str | None = None,
    reference_layer: str | None = None,
) -> BaselineResult:
    """SpaGE-style prediction: principal-vector alignment on the shared genes, then a kNN-weighted mean profile.

    Following SpaGE (``SpaGE/main.py`` and PRECISE's ``principal_vectors.py``), on the shared genes only:

    1. each data set is log-normalised, ``log1p(x / t * median(t))`` with ``t`` each cell's total over the shared
       genes (both sides normalised over the same genes; SpaGE scales the reference by its totals over all genes),
       and each gene is z-scored within its data set (a constant gene becomes 0; SpaGE's ``zscore`` gives NaN);
    2. a PCA of ``n_pv`` components on each side (scikit-learn, ``random_state=seed``), its loadings
       orthonormalised; the principal vectors come from the SVD ``U S V' = P_ref P_spatial'``: the reference-side
       vectors are the rows of ``U' P_ref``, ordered by similarity, the diagonal of the cosine similarity matrix of
       the two sides' vectors;
    3. the vectors whose similarity exceeds ``min_similarity`` (SpaGE: 0.3; at least one is kept) project both
       z-scored data sets;
    4. each spatial cell's ``k`` nearest reference cells by cosine distance ``d``; those with ``d < 1`` get SpaGE's
       weights ``w = (1 - d / sum(d)) / (n - 1)`` (which sum to 1; one such neighbour gets weight 1, equal weights
       when every ``d`` is 0), and a cell with none falls back to equal weights on all ``k``;
    5. ``p`` is the weighted mean of those reference cells' normalised profiles (counts / total over all genes),
       brought to the spatial cell's depth by the size-factor rule (module docstring). SpaGE averages the
       log-normalised values instead.

    Parameters
    ----------
    spatial, reference, genes, spatial_layer, reference_layer
        As in :func:`reference_mean`.
    n_pv
        Principal components per side and principal vectors; capped by the number of shared genes and of cells
        on each side.
    k
        Nearest reference cells (SpaGE: 50); capped by the number of reference cells.
    seed
        ``random_state`` of the PCAs.
    min_similarity
        Principal vectors less similar than this between the two sides are dropped.

    Returns
    -------
    BaselineResult
        ``prediction``: ``(spatial.n_obs, len(genes))`` float32; ``params``: the settings used (``n_pv`` after the
        cap, ``n_pv_effective`` kept by the similarity threshold, ``k`` after the cap), ``pv_similarity`` (each
        principal vector's similarity), ``n_cells_without_close_neighbours`` (the equal-weight fallback) and the
        counts of :func:`reference_mean`.

    Raises
    ------
    ValueError
        As :func:`reference_mean`; also when fewer than 2 genes are shared, or ``n_pv``, ``k`` or
        ``min_similarity`` are out of range.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    for name, value in (("n_pv", n_pv), ("k", k)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= min_similarity < 1.0:
        raise ValueError(f"min_similarity must lie in [0, 1), got {min_similarity!r}")
    start = time.perf_counter()
    data = _imputation_inputs(spatial, reference, genes, spatial_layer, reference_layer, min_shared=2)
    n_shared = len(data.shared)
    z_spatial = _zscore(_log_normalized(data.spatial))
    reference_shared = data.reference_shared
    usable = np.asarray(reference_shared.sum(axis=1)).ravel() > 0
    if not usable.any():
        raise ValueError(
            f"no reference cell has counts on the {n_shared} shared genes; the reference cannot be matched to the "
            "spatial cells (check that both use the same gene identifiers)"
        )
    if not usable.all():
        logger.info("spage_style: %d reference cells without counts on the shared genes are left out", (~usable).sum())
    z_reference = _zscore(_log_normalized(reference_shared[usable]))
    n_reference = z_reference.shape[0]

    used_pv = int(min(n_pv, n_shared, n_reference, z_spatial.shape[0]))
    if used_pv < n_pv:
        logger.info(
            "spage_style: %d principal vectors instead of %d (%d shared genes, %d reference and %d spatial cells)",
            used_pv,
            n_pv,
            n_shared,
            n_reference,
            z_spatial.shape[0],
        )
    source = _orthonormal_loadings(PCA(n_components=used_pv, random_state=seed).fit(z_reference).components_)
    target = _orthonormal_loadings(PCA(n_components=used_pv, random_state=seed).fit(z_spatial).components_)
    vectors, similarity = _principal_vectors(source, target)
    n_effective = max(1, int(np.sum(similarity > min_similarity)))
    if not np.any(similarity > min_similarity):
        logger.warning(
            "spage_style: no principal vector is more similar than %.2f between the data sets (best %.3f); "
            "keeping the first only",
            min_similarity,
            float(similarity.max()),
        )
    basis = vectors[:n_effective].T  # (n_shared, n_effective)

    used_k = int(min(k, n_reference))
    neighbours = NearestNeighbors(n_neighbors=used_k, metric="cosine").fit(z_reference @ basis)
    distances, indices = neighbours.kneighbors(z_spatial @ basis)
    weights, n_fallback = _spage_weights(distances)
    rows = np.repeat(np.arange(distances.shape[0]), used_k)
    mixing = sp.csr_matrix(
        (weights.ravel(), (rows, np.flatnonzero(usable)[indices.ravel()])),
        shape=(distances.shape[0], data.profiles.shape[0]),
    )
    profile = np.asarray((mixing @ data.profiles).todense(), dtype=np.float64)
    prediction = _to_spatial_scale(profile, data)
    logger.info(
        "spage_style: %d spatial cells, %d target genes; %d of %d principal vectors kept (similarity > %.2f), "
        "%d neighbours among %d reference cells; %d cells without a neighbour at cosine distance < 1",
        distances.shape[0],
        len(data.genes),
        n_effective,
        used_pv,
        min_similarity,
        used_k,
        n_reference,
        n_fallback,
    )
    params = data.params(spatial_layer, reference_layer)
    params.update(
        n_pv=used_pv,
        n_pv_effective=n_effective,
        pv_similarity=[float(x) for x in similarity],
        k=used_k,
        seed=seed,
        min_similarity=float(min_similarity),
        n_cells_without_close_neighbours=n_fallback,
    )
    return BaselineResult(name="spage_style", prediction=prediction, seconds=time.perf_counter() - start, params=params)


def tangram(
    spatial: AnnData,
    reference: AnnData,
    genes: Sequence[str],
    *,
    seed: int = 0,
    spatial_layer: str | None = None,
    reference_layer: str | None = None,
    num_epochs: int = 1000,
    device: str = "cpu",
) -> BaselineResult:
    """Tangram (the ``tangram-sc`` package, extra ``baselines``; Biancalani et al. 2021): the reference cells
    mapped onto the spatial cells by its own ``pp_adatas`` and ``map_cells_to_space``, at its defaults (mode
    ``"cells"``, ``num_epochs`` 1000 at learning rate 0.1, the RNA-count-based density prior); ``seed`` is its
    ``random_state``.

    The mapping is learnt on the shared genes, each data set log-normalised there (``log1p(x / t * median(t))``, ``t``
    each cell's total over those genes, as step 1 of :func:`spage_style`). As Tangram's ``project_genes``, each
    spatial cell's profile is the mapping's weighted sum of the reference cells' normalised profiles; it is brought
    to the spatial cell's depth by the size-factor rule of this module.

    Parameters
    ----------
    spatial, reference, genes, spatial_layer, reference_layer
        As in :func:`reference_mean`.
    num_epochs, device
        Tangram's training length and torch device.
    """
    tangram_module = import_package("tangram", "Tangram", "baselines")
    start = time.perf_counter()
    data = _imputation_inputs(spatial, reference, genes, spatial_layer, reference_layer, min_shared=2)
    single_cells = AnnData(_log_normalized(data.reference_shared))
    spots = AnnData(_log_normalized(data.spatial))
    for mapped in (single_cells, spots):
        mapped.var_names = list(data.shared)
    with root_logging_kept():  # tangram logs each step through the root logger
        logging.getLogger().setLevel(logging.WARNING)
        tangram_module.pp_adatas(single_cells, spots, genes=list(data.shared))
        mapping = tangram_module.map_cells_to_space(
            single_cells, spots, mode="cells", device=device, num_epochs=num_epochs, random_state=seed, verbose=False
        )
    fit_seconds = time.perf_counter() - start
    weights = np.asarray(mapping.X, dtype=np.float64).T  # (spatial cells, reference cells)
    profile = np.asarray(data.profiles.T.dot(weights.T).T)  # the weighted sum of the reference profiles
    prediction = _to_spatial_scale(profile, data)
    logger.info("tangram: %d spatial cells, %d target genes", data.spatial.shape[0], len(data.genes))
    version = getattr(tangram_module, "__version__", "unknown")
    params = data.params(spatial_layer, reference_layer)
    params |= {"package": f"tangram-sc {version}", "mode": "cells", "num_epochs": num_epochs, "seed": seed}
    seconds = time.perf_counter() - start
    return BaselineResult("tangram", prediction, seconds, params=params, fit_seconds=fit_seconds)


def gimvi(
    spatial: AnnData,
    reference: AnnData,
    genes: Sequence[str],
    *,
    seed: int = 0,
    spatial_layer: str | None = None,
    reference_layer: str | None = None,
    max_epochs: int = 200,
) -> BaselineResult:
    """gimVI (scvi-tools' ``external.GIMVI``, extra ``scvi`` or ``baselines``; Lopez et al. 2019) at its defaults:
    one model of the reference's counts (the shared and target genes) and the spatial counts (the shared genes),
    trained for ``max_epochs`` (its default 200); each spatial cell's profile is its decoded normalised expression
    over the reference genes (``get_imputed_values(normalized=True)``), brought to the cell's depth by the
    size-factor rule of this module. ``seed`` is ``scvi.settings.seed``.

    Parameters
    ----------
    spatial, reference, genes, spatial_layer, reference_layer
        As in :func:`reference_mean`.
    max_epochs
        gimVI's training length.
    """
    scvi_module = import_package("scvi", "gimVI", "scvi")
    start = time.perf_counter()
    data = _imputation_inputs(spatial, reference, genes, spatial_layer, reference_layer)
    sequenced = AnnData(sp.csr_matrix(data.reference_counts, dtype=np.float32))
    sequenced.var_names = [*data.shared, *data.genes]
    measured = AnnData(sp.csr_matrix(data.spatial, dtype=np.float32))
    measured.var_names = list(data.shared)
    scvi_module.settings.seed = seed
    with root_logging_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scvi-tools' and Lightning's advice on settings and hardware
        scvi_module.external.GIMVI.setup_anndata(sequenced)
        scvi_module.external.GIMVI.setup_anndata(measured)
        model = scvi_module.external.GIMVI(sequenced, measured)
        model.train(max_epochs=max_epochs, accelerator="cpu", enable_progress_bar=False)
        fit_seconds = time.perf_counter() - start
        _, imputed = model.get_imputed_values(normalized=True)
    prediction = _to_spatial_scale(np.asarray(imputed, dtype=np.float64), data)
    logger.info("gimvi: %d spatial cells, %d target genes", data.spatial.shape[0], len(data.genes))
    version = getattr(scvi_module, "__version__", "unknown")
    params = data.params(spatial_layer, reference_layer)
    params |= {"package": f"scvi-tools {version}", "max_epochs": max_epochs, "seed": seed}
    seconds = time.perf_counter() - start
    return BaselineResult("gimvi", prediction, seconds, params=params, fit_seconds=fit_seconds)


# ---------------------------------------------------------------------------------------------------------------
# helpers


@dataclass(frozen=True)
class _Inputs:
    """What every baseline reads: the spatial counts on the shared genes, and the reference's normalised profiles
    on the shared genes (first ``len(shared)`` columns) then the target genes."""

    shared: list[str]
    genes: list[str]
    spatial: sp.csr_matrix  # (n_spatial, n_shared) float32 counts
    profiles: sp.csr_matrix  # (n_reference_with_counts, n_shared + n_genes) float64, counts / total over all genes
    reference_counts: sp.csr_matrix  # (n_reference_with_counts, n_shared + n_genes) counts

    @property
    def reference_shared(self) -> sp.csr_matrix:
        """(n_reference_with_counts, n_shared) float32 counts."""
        return sp.csr_matrix(self.reference_counts[:, : len(self.shared)], dtype=np.float32)

    def params(self, spatial_layer, reference_layer) -> dict:
        return {
            "spatial_layer": spatial_layer,
            "reference_layer": reference_layer,
            "n_genes": len(self.genes),
            "n_shared_genes": len(self.shared),
            "n_reference_cells": int(self.profiles.shape[0]),
        }


def _gene_plan(spatial: AnnData, reference: AnnData, genes: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(shared genes, target genes)`` after every check on the names."""
    for name, data in (("spatial", spatial), ("reference", reference)):
        if not isinstance(data, AnnData):
            raise TypeError(f"{name} must be an AnnData, got {type(data).__name__}")
        if not data.var_names.is_unique:
            repeated = data.var_names[data.var_names.duplicated()].unique()
            raise ValueError(
                f"{name}.var_names repeats {len(repeated)} gene name(s) ({_examples(repeated)}); make them unique "
                "(var_names_make_unique()) or drop the duplicates"
            )
    if isinstance(genes, str):
        raise TypeError(f"genes must be a sequence of gene names, not a single string ({genes!r}); pass [{genes!r}]")
    targets = [str(g) for g in genes]
    if not targets:
        raise ValueError("genes is empty; pass the target genes to predict")
    if len(set(targets)) != len(targets):
        repeated = sorted({g for g in targets if targets.count(g) > 1})
        raise ValueError(f"genes repeats {len(repeated)} gene name(s): {_examples(repeated)}; pass each gene once")
    missing = [g for g in targets if g not in reference.var_names]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(targets)} target genes are not in reference.var_names: {_examples(missing)}; "
            "a baseline can only predict genes the reference measured"
        )
    excluded = set(targets)
    in_reference = set(reference.var_names)
    shared = [g for g in spatial.var_names if g in in_reference and g not in excluded]
    if not shared:
        overlap = sum(g in in_reference for g in spatial.var_names)
        raise ValueError(
            f"spatial ({spatial.n_vars} genes, e.g. {_examples(spatial.var_names)}) and reference "
            f"({reference.n_vars} genes, e.g. {_examples(reference.var_names)}) share no gene outside the "
            f"{len(targets)} target genes ({overlap} shared in all); both need the same gene identifiers, and the "
            "spatial panel needs measured genes besides the targets"
        )
    return shared, targets


def _imputation_inputs(
    spatial: AnnData,
    reference: AnnData,
    genes: Sequence[str],
    spatial_layer: str | None,
    reference_layer: str | None,
    *,
    min_shared: int = 1,
) -> _Inputs:
    shared, targets = _gene_plan(spatial, reference, genes)
    if len(shared) < min_shared:
        raise ValueError(
            f"spatial and reference share {len(shared)} gene(s) outside the target genes ({_examples(shared)}); "
            f"this method needs at least {min_shared}"
        )
    for name, data in (("spatial", spatial), ("reference", reference)):
        if data.n_obs == 0:
            raise ValueError(f"{name} has no cell (0 rows)")
    spatial_counts = _counts_columns(spatial, spatial_layer, spatial.var_names.get_indexer(shared), "spatial")
    try:
        reference_counts = _counts(reference, reference_layer)
    except ValueError as err:
        raise ValueError(f"reference: {err}") from err
    totals = np.asarray(reference_counts.sum(axis=1), dtype=np.float64).ravel()
    keep = totals > 0
    if not keep.any():
        raise ValueError("every reference cell has a total count of 0; pass the reference counts (reference_layer=)")
    if not keep.all():
        logger.info("%d of %d reference cells without counts are left out", int((~keep).sum()), len(keep))
    columns = reference.var_names.get_indexer(shared + targets)
    kept = reference_counts[np.flatnonzero(keep)]
    profiles = sp.csr_matrix(sp.diags(1.0 / totals[keep]) @ kept[:, columns].astype(np.float64))
    logger.info(
        "imputation inputs: %d spatial cells x %d shared genes (of %d in the panel), %d reference cells x %d genes, "
        "%d target genes",
        spatial.n_obs,
        len(shared),
        spatial.n_vars,
        int(keep.sum()),
        reference.n_vars,
        len(targets),
    )
    return _Inputs(
        shared=shared,
        genes=targets,
        spatial=spatial_counts,
        profiles=profiles,
        reference_counts=sp.csr_matrix(kept[:, columns]),
    )


def _counts_columns(adata: AnnData, layer: str | None, columns: np.ndarray, name: str) -> sp.csr_matrix:
    """A float32 CSR copy of some columns of the counts (X or a layer; in memory or backed), checked non-negative
    and finite on those columns only: the other columns are never checked nor kept."""
    matrix = counts_matrix(adata, layer)
    where = f"{name}.X" if layer is None else f"{name}.layers[{layer!r}]"
    check_readable(matrix, where)
    if on_disk(matrix):
        blocks = [block[:, columns] for _, block in iter_row_blocks(matrix, adata.n_obs, adata.n_vars)]
        counts = sp.vstack(blocks, format="csr").astype(np.float32)
    elif sp.issparse(matrix):
        counts = sp.csr_matrix(matrix)[:, columns].astype(np.float32)
    else:
        counts = sp.csr_matrix(np.asarray(matrix)[:, columns], dtype=np.float32)
    if counts.nnz and (not np.all(np.isfinite(counts.data)) or counts.data.min() < 0):
        raise ValueError(
            f"{where} holds negative or non-finite values on the shared genes; the baselines need non-negative "
            "counts (pass spatial_layer= / reference_layer=)"
        )
    return sp.csr_matrix(counts)


def _to_spatial_scale(profile: np.ndarray, data: _Inputs) -> np.ndarray:
    """``p[genes] * s`` with ``s = spatial total over the shared genes / p summed over the shared genes``."""
    n_shared = len(data.shared)
    observed = np.asarray(data.spatial.sum(axis=1), dtype=np.float64).ravel()
    expected = profile[:, :n_shared].sum(axis=1)
    size_factor = np.divide(observed, expected, out=np.zeros_like(observed), where=expected > 0)
    unscalable = (expected <= 0) & (observed > 0)
    if unscalable.any():
        logger.warning(
            "%d spatial cells get a profile with nothing on the shared genes; they are predicted 0",
            int(unscalable.sum()),
        )
    return np.asarray(profile[:, n_shared:] * size_factor[:, None], dtype=np.float32)


def _log_normalized(counts: sp.csr_matrix) -> np.ndarray:
    """Dense ``log1p(x / total * median(total))`` per cell (totals over the columns given; a cell without counts
    stays 0, and the median is over cells with counts)."""
    return log_normalize(counts, target_sum=None).toarray()


def _zscore(x: np.ndarray) -> np.ndarray:
    """Each column centred and divided by its standard deviation (ddof 0); a constant column becomes 0."""
    sd = x.std(axis=0)
    return np.divide(x - x.mean(axis=0), sd, out=np.zeros_like(x), where=sd > 0)


def _orthonormal_loadings(components: np.ndarray) -> np.ndarray:
    """Rows spanning the same space as ``components``, orthonormal (PRECISE: ``scipy.linalg.orth``)."""
    import scipy.linalg

    return scipy.linalg.orth(components.T).T


def _principal_vectors(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PRECISE's principal vectors: the source-side vectors (rows, unit norm) and each one's cosine similarity to
    its target-side partner, in decreasing order of similarity."""
    u, _, vt = np.linalg.svd(source @ target.T, full_matrices=False)
    n = min(source.shape[0], target.shape[0])
    source_pv = _unit_rows((u.T @ source)[:n])
    target_pv = _unit_rows((vt @ target)[:n])
    similarity = np.einsum("ij,ij->i", source_pv, target_pv)
    return source_pv, similarity


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _spage_weights(distances: np.ndarray) -> tuple[np.ndarray, int]:
    """SpaGE's neighbour weights per row: among the neighbours with cosine distance ``d < 1``,
    ``(1 - d / sum(d)) / (n - 1)``; one such neighbour gets 1; equal weights when every ``d`` is 0 or, on all
    neighbours, when none has ``d < 1``. Rows sum to 1. Also returns the number of rows that fell back."""
    close = distances < 1.0
    n_close = close.sum(axis=1, keepdims=True)
    d = np.where(close, distances, 0.0)
    total = d.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        spage = (1.0 - d / total) / (n_close - 1)
    weights = np.where(close, spage, 0.0)
    single = (n_close == 1).ravel()
    weights[single] = close[single].astype(np.float64)
    tied = ((total == 0) & (n_close > 1)).ravel()  # every close neighbour at distance 0
    weights[tied] = close[tied] / n_close[tied]
    none = (n_close == 0).ravel()
    weights[none] = 1.0 / distances.shape[1]
    return weights, int(none.sum())


def _examples(names, n: int = N_EXAMPLES) -> str:
    names = [str(x) for x in names]
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")
