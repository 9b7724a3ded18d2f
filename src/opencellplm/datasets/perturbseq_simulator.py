"""A simulated Perturb-seq experiment with known ground truth (every number it gives is *simulated*).

Real Perturb-seq data (Adamson, Norman) cannot be had here, so the perturbation task is trained and scored on
this simulator. Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the same
AnnData, bit for bit.

The model
---------
1. **Gene-regulatory network.** The genes are put in a random topological order; the first ``n_regulators``
   of that order are transcription-factor-like *regulators*. Each gene draws its regulators among the
   regulators that precede it (a regulator: ``Poisson(0.8)`` of them; any other gene: none with probability 0.2,
   else ``1 + Poisson(0.8)``), so the network is a sparse random DAG in which regulators also regulate each
   other (cascades). Every regulator gets at least ``MIN_TARGETS`` targets. Edge weights are positive with
   probability 0.6, with magnitudes uniform in [0.75, 2.5].
2. **Activity.** Gene ``g`` has a baseline activity ``base_g`` (log-normal, sd 1.2) and an operating point
   ``c_g ~ N(0, 0.75)``. With ``r_j`` the activity of gene ``j`` relative to the unperturbed state, a regulated
   gene's relative activity is the saturating response

   ``r_g = sigmoid(c_g + sum_j W_gj (r_j - 1)) / sigmoid(c_g)``

   which is 1 in the unperturbed state, can fall towards 0, and rises at most ``1 / sigmoid(c_g)``-fold. It is
   solved exactly by propagation along the DAG, level by level.
3. **Perturbations.** A knock-down multiplies the gene's (regulated) activity by a per-gene factor drawn in
   ``knockdown`` (default 0.1-0.2); an activation multiplies it by a per-gene fold drawn in ``activation``
   (default 3-5x), capped at ``MAX_FOLD`` times its unperturbed value. The change propagates to every
   downstream gene. A combination applies both at once, so non-additive effects arise through the
   saturating responses (two regulators of one target, or one regulator upstream of the other).
4. **Counts.** A condition's expected profile is ``p = base * r / sum(base * r)`` (proportions). Each cell draws
   a library size (log-normal with median ``library_median`` and log-scale sd ``library_sd``) and, per gene, a
   Gamma multiplier with shape ``theta_g`` (``theta_g = theta * exp(N(0, 0.5))``): counts are
   ``Poisson(library * p * gamma)``, a negative binomial with mean ``library * p`` and variance
   ``mu + mu**2 / theta_g``.

Perturbations in the experiment
-------------------------------
``n_single`` single-gene perturbations and ``n_combo`` two-gene combinations over ``n_single + m`` perturbed genes,
``m = max(4, n_combo // 4)`` of which appear only in combinations (0 without combinations). The perturbed genes are
mostly regulators (``1 - NON_REGULATOR_SHARE`` of them, as far as there are regulators); the others have no
downstream target (only the gene itself changes). The combinations come in three kinds, so that every group of
the GEARS split can be formed: about half with both genes also perturbed alone, 30% with one, 20% with neither
(``uns['simulation']['combo_design']``). ``direction`` sets every perturbation to knock-down (``"down"``),
activation (``"up"``) or a per-gene seeded choice (``"mixed"``); a gene is perturbed the same way alone and in
combinations.

Runtime: the defaults (500 genes, 100 perturbations, 5,500 cells, ~3,250 counts per cell) took 0.3 s on a quiet
CPU core and 0.5 s on a loaded one; drawing the counts dominates (5,000 genes and 6,200 cells: 4 s).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from itertools import combinations, product
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..data.perturbations import CONTROL, GenePerturbation, perturbation_label

logger = logging.getLogger(__name__)

#: Fewest direct targets of a regulator.
MIN_TARGETS = 3
#: Highest activity of an activated gene relative to its unperturbed value.
MAX_FOLD = 10.0
#: Share of the perturbed genes that are not regulators (when there are regulators enough).
NON_REGULATOR_SHARE = 0.1
#: Shares of the combinations with neither / one of their genes also perturbed alone (the rest: both).
COMBO_NEITHER_SHARE = 0.2
COMBO_ONE_SHARE = 0.3

_DESCRIPTION = (
    "SIMULATED Perturb-seq data (opencellplm.datasets.simulate_perturbseq): a random gene-regulatory DAG with "
    "saturating (sigmoid) responses; knock-downs and activations propagate downstream; negative binomial counts. "
    "Not real measurements."
)


def simulate_perturbseq(
    n_genes: int = 500,
    *,
    n_regulators: int = 64,
    n_single: int = 60,
    n_combo: int = 40,
    cells_per_perturbation: int = 50,
    n_control: int = 500,
    direction: Literal["down", "up", "mixed"] = "down",
    gene_names: Sequence[str] | None = None,
    library_median: float = 3000.0,
    library_sd: float = 0.4,
    theta: float = 5.0,
    knockdown: tuple[float, float] = (0.1, 0.2),
    activation: tuple[float, float] = (3.0, 5.0),
    control: str = CONTROL,
    seed: int = 0,
    return_truth: bool = False,
) -> AnnData | tuple[AnnData, pd.DataFrame]:
    """Simulate a Perturb-seq experiment whose expected profiles are known exactly (see the module docstring).

    Parameters
    ----------
    n_genes
        Genes measured (and in the network).
    n_regulators
        Regulator genes (those with downstream targets); at most ``n_genes - MIN_TARGETS``.
    n_single
        Single-gene perturbations (at least 1).
    n_combo
        Two-gene combinations (0 for none).
    cells_per_perturbation
        Cells of each perturbation.
    n_control
        Control cells.
    direction
        ``"down"`` (knock-down / CRISPRi), ``"up"`` (activation / CRISPRa) or ``"mixed"`` (seeded per gene).
    gene_names
        ``n_genes`` unique names to use as ``var_names`` (e.g. the first genes of a model's vocabulary, so that
        perturbed genes have rows in a pretrained gene embedding); default ``"G0001"``, ``"G0002"``, ... A name may
        not hold ``+`` or ``:`` nor equal ``control`` (labels could not be parsed back).
    library_median, library_sd
        Median and log-scale standard deviation of the log-normal library sizes.
    theta
        Typical NB inverse dispersion (per gene ``theta * exp(N(0, 0.5))``).
    knockdown
        Range of the per-gene knock-down factor (remaining activity), within (0, 1).
    activation
        Range of the per-gene activation fold, above 1.
    control
        Label of the control cells.
    seed
        Seed of every draw.
    return_truth
        Also return the noise-free expected profiles.

    Returns
    -------
    AnnData
        Cells (in shuffled order) x genes, ``X`` float32 CSR integer counts;
        ``obs['perturbation']`` (categorical; canonical labels of :mod:`opencellplm.data.perturbations`,
        ``control`` for control cells), ``obs['n_genes_perturbed']`` (0, 1 or 2);
        ``var['regulator']`` (bool), ``var['n_targets']`` (direct targets), ``var['perturbed']`` (bool);
        ``uns['simulation']``: ``simulated=True``, ``seed``, every parameter, ``description``, ``combo_design``
        (the combinations by how many of their genes are perturbed alone: ``both_alone``, ``one_alone``,
        ``neither_alone``), ``network`` (``regulator``, ``target``, ``weight`` arrays: the edges of the DAG) and
        ``seconds`` (wall time).
    truth : pandas.DataFrame
        With ``return_truth=True``: index the labels (sorted, control included), columns the genes, values the
        exact expected proportions of each condition (rows sum to 1; multiply by 1e4 and ``log1p`` to compare
        with log-normalised means, which differ from it by the noise and by Jensen's inequality).

    Raises
    ------
    ValueError
        For a parameter out of range (the message names it and the range), ``gene_names`` of the wrong length,
        duplicated or unusable in labels, or more combinations than the perturbed genes can form.
    """
    start = time.perf_counter()
    _check_parameters(
        n_genes,
        n_regulators,
        n_single,
        n_combo,
        cells_per_perturbation,
        n_control,
        direction,
        library_median,
        library_sd,
        theta,
        knockdown,
        activation,
    )
    names = _gene_names(n_genes, gene_names, control)
    rng = np.random.default_rng(seed)

    order = rng.permutation(n_genes)  # order[k]: the gene at topological position k
    regulators = order[:n_regulators]
    weights = _network(rng, order, n_regulators)  # (n_genes, n_genes) CSR, weights[g, j]: effect of j on g
    base = rng.lognormal(0.0, 1.2, size=n_genes)
    operating = rng.normal(0.0, 0.75, size=n_genes)
    n_targets = np.diff(weights.tocsc().indptr)

    genes_single, genes_combo_only, gene_direction, factor = _perturbed_genes(
        rng, regulators, n_targets, n_single, n_combo, direction, knockdown, activation
    )
    both, one, neither = _combinations(rng, genes_single, genes_combo_only, n_combo)
    conditions: list[tuple[int, ...]] = [()] + [(g,) for g in genes_single] + both + one + neither

    def label(genes: tuple[int, ...]) -> str:
        return perturbation_label([GenePerturbation(names[g], gene_direction[g]) for g in genes], control=control)

    labels = [label(c) for c in conditions]
    multiplier = np.ones((len(conditions), n_genes))
    for row, genes in enumerate(conditions):
        for g in genes:
            multiplier[row, g] = factor[g]
    relative = _propagate(weights, operating, multiplier, _levels(weights, order))
    activity = base * relative
    proportions = activity / activity.sum(axis=1, keepdims=True)

    sizes = np.array([n_control] + [cells_per_perturbation] * (len(conditions) - 1))
    thetas = theta * np.exp(rng.normal(0.0, 0.5, size=n_genes))
    x = _counts(rng, proportions, sizes, thetas, library_median, library_sd)
    cell_condition = np.repeat(np.arange(len(conditions)), sizes)
    shuffle = rng.permutation(len(cell_condition))
    x, cell_condition = x[shuffle], cell_condition[shuffle]

    width = len(str(len(cell_condition)))
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(np.asarray(labels, dtype=object)[cell_condition], categories=sorted(labels)),
            "n_genes_perturbed": np.array([len(c) for c in conditions], dtype=np.int64)[cell_condition],
        },
        index=[f"cell_{i:0{width}d}" for i in range(len(cell_condition))],
    )
    perturbed = np.zeros(n_genes, dtype=bool)
    perturbed[list(genes_single) + list(genes_combo_only)] = True
    is_regulator = np.zeros(n_genes, dtype=bool)
    is_regulator[regulators] = True
    var = pd.DataFrame({"regulator": is_regulator, "n_targets": n_targets, "perturbed": perturbed}, index=names)
    adata = AnnData(X=x, obs=obs, var=var)
    coo = weights.tocoo()
    seconds = time.perf_counter() - start
    adata.uns["simulation"] = {
        "simulated": True,
        "description": _DESCRIPTION,
        "seed": seed,
        "n_genes": n_genes,
        "n_regulators": n_regulators,
        "n_single": n_single,
        "n_combo": n_combo,
        "cells_per_perturbation": cells_per_perturbation,
        "n_control": n_control,
        "direction": direction,
        "gene_names": "given" if gene_names is not None else "generated",
        "library_median": float(library_median),
        "library_sd": float(library_sd),
        "theta": float(theta),
        "knockdown": [float(v) for v in knockdown],
        "activation": [float(v) for v in activation],
        "max_fold": MAX_FOLD,
        "min_targets": MIN_TARGETS,
        "control": control,
        "combo_design": {
            "both_alone": sorted(label(c) for c in both),
            "one_alone": sorted(label(c) for c in one),
            "neither_alone": sorted(label(c) for c in neither),
        },
        "network": {
            "regulator": np.asarray(names, dtype=object)[coo.col].astype(str),
            "target": np.asarray(names, dtype=object)[coo.row].astype(str),
            "weight": coo.data.astype(np.float64),
        },
        "seconds": seconds,
    }
    logger.info(
        "simulate_perturbseq (SIMULATED): %d cells x %d genes, %d perturbations (%d single, %d combo), "
        "%d network edges, %.2f s",
        adata.n_obs,
        adata.n_vars,
        len(conditions) - 1,
        len(genes_single),
        len(conditions) - 1 - len(genes_single),
        weights.nnz,
        seconds,
    )
    if not return_truth:
        return adata
    truth = pd.DataFrame(proportions, index=pd.Index(labels, name="perturbation"), columns=pd.Index(names))
    truth = truth.sort_index()
    truth.attrs["simulated"] = True
    return adata, truth


# ---------------------------------------------------------------------------------------------------------------
# checks


def _check_parameters(
    n_genes,
    n_regulators,
    n_single,
    n_combo,
    cells_per_perturbation,
    n_control,
    direction,
    library_median,
    library_sd,
    theta,
    knockdown,
    activation,
) -> None:
    def integer(name: str, value, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    integer("n_genes", n_genes, MIN_TARGETS + 2)
    integer("n_regulators", n_regulators, 1)
    if n_regulators > n_genes - MIN_TARGETS:
        raise ValueError(
            f"n_regulators must be at most n_genes - {MIN_TARGETS} = {n_genes - MIN_TARGETS} (each regulator needs "
            f"{MIN_TARGETS} targets after it), got {n_regulators}"
        )
    integer("n_single", n_single, 1)
    integer("n_combo", n_combo, 0)
    integer("cells_per_perturbation", cells_per_perturbation, 1)
    integer("n_control", n_control, 1)
    if direction not in ("down", "up", "mixed"):
        raise ValueError(f"direction must be 'down', 'up' or 'mixed', got {direction!r}")
    for name, value in (("library_median", library_median), ("theta", theta)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (isinstance(library_sd, int | float) and math.isfinite(library_sd) and library_sd >= 0):
        raise ValueError(f"library_sd must be a non-negative number, got {library_sd!r}")
    low, high = _pair("knockdown", knockdown)
    if not 0.0 < low <= high < 1.0:
        raise ValueError(f"knockdown must be a range (low, high) with 0 < low <= high < 1, got {knockdown!r}")
    low, high = _pair("activation", activation)
    if not 1.0 < low <= high:
        raise ValueError(f"activation must be a range (low, high) with 1 < low <= high, got {activation!r}")
    n_perturbed = n_single + _n_combo_only(n_combo)
    if n_perturbed > n_genes:
        raise ValueError(
            f"{n_perturbed} perturbed genes are needed (n_single + {_n_combo_only(n_combo)} genes only in "
            f"combinations) but there are only n_genes={n_genes}"
        )


def _pair(name: str, value) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (low, high), got {value!r}") from None
    return low, high


def _gene_names(n_genes: int, gene_names: Sequence[str] | None, control: str) -> list[str]:
    if gene_names is None:
        width = max(4, len(str(n_genes)))
        return [f"G{i:0{width}d}" for i in range(1, n_genes + 1)]
    names = list(gene_names)
    if len(names) != n_genes:
        raise ValueError(f"gene_names has {len(names)} names but n_genes is {n_genes}; pass one name per gene")
    bad = [n for n in names if not isinstance(n, str) or not n.strip() or n != n.strip()]
    if bad:
        raise ValueError(f"gene_names must be non-empty strings without surrounding whitespace, got {bad[:5]}")
    unusable = [n for n in names if "+" in n or ":" in n or n == control]
    if unusable:
        raise ValueError(
            f"gene_names {unusable[:5]} cannot appear in perturbation labels: a gene id holds no '+' or ':' and "
            f"differs from the control label {control!r}"
        )
    duplicated = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if duplicated:
        raise ValueError(f"gene_names must be unique; repeated: {duplicated[:5]}")
    return names


# ---------------------------------------------------------------------------------------------------------------
# network and activity


def _network(rng: np.random.Generator, order: np.ndarray, n_regulators: int) -> sp.csr_matrix:
    """Sparse DAG weights ``(n_genes, n_genes)``, ``[g, j]`` the effect of regulator ``j`` on gene ``g``."""
    n_genes = len(order)
    rows: list[int] = []
    cols: list[int] = []
    for k in range(1, n_genes):
        available = min(k, n_regulators)  # regulators before position k
        if k < n_regulators:
            n_parents = rng.poisson(0.8)
        else:
            n_parents = 0 if rng.random() < 0.2 else 1 + rng.poisson(0.8)
        n_parents = min(n_parents, available)
        for position in rng.choice(available, size=n_parents, replace=False):
            rows.append(int(order[k]))
            cols.append(int(order[position]))
    edges = set(zip(rows, cols))
    n_targets = Counter(cols)
    for position in range(n_regulators):  # at least MIN_TARGETS targets each, among later genes
        regulator = int(order[position])
        extra = MIN_TARGETS - n_targets[regulator]
        if extra <= 0:
            continue
        later = [int(g) for g in order[position + 1 :] if (int(g), regulator) not in edges]
        for g in rng.choice(later, size=min(extra, len(later)), replace=False):
            edges.add((int(g), regulator))
    rows_, cols_ = (np.array(v, dtype=np.int64) for v in zip(*sorted(edges)))
    signs = np.where(rng.random(len(rows_)) < 0.6, 1.0, -1.0)
    values = signs * rng.uniform(0.75, 2.5, size=len(rows_))
    return sp.csr_matrix((values, (rows_, cols_)), shape=(n_genes, n_genes))


def _levels(weights: sp.csr_matrix, order: np.ndarray) -> list[np.ndarray]:
    """Genes grouped by depth in the DAG (level 0: no regulator), each level depending only on earlier ones."""
    depth = np.zeros(len(order), dtype=np.int64)
    for g in order:  # topological order: parents first
        parents = weights.indices[weights.indptr[g] : weights.indptr[g + 1]]
        if len(parents):
            depth[g] = depth[parents].max() + 1
    return [np.flatnonzero(depth == d) for d in range(int(depth.max()) + 1)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _propagate(
    weights: sp.csr_matrix, operating: np.ndarray, multiplier: np.ndarray, levels: list[np.ndarray]
) -> np.ndarray:
    """Relative activities ``(n_conditions, n_genes)`` given each condition's per-gene perturbation multiplier."""
    relative = np.ones_like(multiplier)
    for level, genes in enumerate(levels):
        if level > 0:
            drive = operating[genes] + (relative - 1.0) @ weights[genes].T.toarray()
            relative[:, genes] = _sigmoid(drive) / _sigmoid(operating[genes])
        relative[:, genes] = np.minimum(relative[:, genes] * multiplier[:, genes], MAX_FOLD)
    return relative


# ---------------------------------------------------------------------------------------------------------------
# the perturbations


def _n_combo_only(n_combo: int) -> int:
    return max(4, n_combo // 4) if n_combo else 0


def _perturbed_genes(rng, regulators, n_targets, n_single, n_combo, direction, knockdown, activation):
    """Genes perturbed alone, genes only in combinations, each gene's direction and activity multiplier."""
    n_genes = len(n_targets)
    n_perturbed = n_single + _n_combo_only(n_combo)
    n_from_regulators = min(len(regulators), n_perturbed - round(NON_REGULATOR_SHARE * n_perturbed))
    others = np.setdiff1d(np.arange(n_genes), regulators)
    n_from_others = n_perturbed - n_from_regulators
    if n_from_others > len(others):  # few non-regulators: take more regulators
        n_from_others = len(others)
        n_from_regulators = n_perturbed - n_from_others
    chosen = np.concatenate(
        [
            rng.choice(regulators, size=n_from_regulators, replace=False),
            rng.choice(others, size=n_from_others, replace=False),
        ]
    )
    chosen = rng.permutation(chosen)
    if direction == "mixed":
        up = rng.random(n_genes) < 0.5
    else:
        up = np.full(n_genes, direction == "up")
    gene_direction = np.where(up, "up", "down").tolist()
    factor = np.where(up, rng.uniform(*activation, size=n_genes), rng.uniform(*knockdown, size=n_genes))
    return [int(g) for g in chosen[:n_single]], [int(g) for g in chosen[n_single:]], gene_direction, factor


def _combinations(rng, singles: list[int], combo_only: list[int], n_combo: int):
    """Pairs of genes: both perturbed alone, one of them, neither (about 50% / 30% / 20%)."""
    n_neither = round(COMBO_NEITHER_SHARE * n_combo)
    n_one = round(COMBO_ONE_SHARE * n_combo)
    n_both = n_combo - n_neither - n_one
    kinds = []
    for name, candidates, n in (
        ("both genes alone", list(combinations(sorted(singles), 2)), n_both),
        ("one gene alone", list(product(sorted(singles), sorted(combo_only))), n_one),
        ("neither gene alone", list(combinations(sorted(combo_only), 2)), n_neither),
    ):
        if n > len(candidates):
            raise ValueError(
                f"n_combo={n_combo} asks for {n} combinations with {name} but the perturbed genes allow only "
                f"{len(candidates)}; pass a smaller n_combo or a larger n_single"
            )
        picked = rng.choice(len(candidates), size=n, replace=False) if n else []
        kinds.append([tuple(sorted(candidates[i])) for i in sorted(picked)])
    return kinds


def _counts(rng, proportions, sizes, thetas, library_median, library_sd) -> sp.csr_matrix:
    """NB (Gamma-Poisson) counts, ``sizes[i]`` cells of condition ``i``, as float32 CSR."""
    blocks = []
    for p, n in zip(proportions, sizes):
        library = library_median * np.exp(rng.normal(0.0, library_sd, size=n))
        gamma = rng.gamma(thetas, 1.0 / thetas, size=(n, len(thetas)))
        counts = rng.poisson(library[:, None] * p[None, :] * gamma)
        blocks.append(sp.csr_matrix(counts.astype(np.float32)))
    return sp.vstack(blocks, format="csr")
