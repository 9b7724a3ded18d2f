"""Perturbation prediction baselines (TASKS §6), on mean log-normalised profiles.

Every function takes the training condition means (a DataFrame from
:func:`opencellplm.metrics.perturbation.condition_means`: index the labels, the control among them, columns the
genes) and the test labels, and returns a :class:`~opencellplm.baselines.BaselineResult` whose ``prediction`` is a
DataFrame (index the test labels, columns the genes):

- :func:`perturbation_no_change`: the control mean;
- :func:`perturbation_training_mean`: the mean of the training perturbations;
- :func:`perturbation_additive`: the control plus the sum of the single-gene effects seen in training;
- :func:`perturbation_linear`: the linear model of Ahlmann-Eltze, Huber and Anders (2024/2025).

Published benchmarks (Ahlmann-Eltze et al.) found that no deep model beat the additive model on combinations, nor
the training mean and the linear model on unseen single genes.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.perturbations import CONTROL, GenePerturbation
from ._common import BaselineResult, _counts, _log_normalized, import_package, package_version, root_logging_kept

logger = logging.getLogger(__name__)

_SHOWN = 5


def _check_means(train_means: pd.DataFrame, control: str) -> None:
    if not isinstance(train_means, pd.DataFrame):
        raise ValueError(
            f"train_means must be a DataFrame of mean profiles (index labels, columns genes), "
            f"got {type(train_means).__name__}"
        )
    if not train_means.index.is_unique or not train_means.columns.is_unique:
        raise ValueError("train_means has repeated labels or genes")
    if control not in train_means.index:
        raise ValueError(
            f"the control label {control!r} is not in train_means (labels: {list(train_means.index[:_SHOWN])}...); "
            "pass the control's mean profile as one row, or control= naming it"
        )
    values = train_means.to_numpy()
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
        raise ValueError("train_means must hold finite numbers")


def _test_labels(test_labels: Sequence[str]) -> list[str]:
    labels = [test_labels] if isinstance(test_labels, str) else list(test_labels)
    if not labels:
        raise ValueError("test_labels is empty; pass the labels to predict")
    if len(set(labels)) != len(labels):
        raise ValueError("test_labels has repeated labels")
    return labels


def _check_parsed(parsed: Mapping[str, tuple[GenePerturbation, ...]], labels: Sequence[str], what: str) -> None:
    missing = [label for label in labels if label not in parsed]
    if missing:
        raise ValueError(
            f"parsed lacks {len(missing)} of the {what} label(s): {missing[:_SHOWN]}; "
            "pass opencellplm.data.parse_labels(...) of every training and test label"
        )


def _frame(rows: np.ndarray, labels: list[str], genes: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(rows, index=pd.Index(labels, name="label"), columns=genes)


def perturbation_no_change(
    train_means: pd.DataFrame, test_labels: Sequence[str], *, control: str = CONTROL
) -> BaselineResult:
    """Predict "no change": the control mean profile for every test label.

    Parameters
    ----------
    train_means
        Training condition means (index labels including ``control``, columns genes).
    test_labels
        Labels to predict.
    control
        The control label.

    Returns
    -------
    BaselineResult
        ``name="no_change"``; ``prediction`` a DataFrame (test labels x genes).
    """
    start = time.perf_counter()
    _check_means(train_means, control)
    labels = _test_labels(test_labels)
    row = train_means.loc[control].to_numpy(dtype=np.float64)
    prediction = _frame(np.tile(row, (len(labels), 1)), labels, train_means.columns)
    return BaselineResult(
        "no_change", prediction, time.perf_counter() - start, params={"control": control, "n_test": len(labels)}
    )


def perturbation_training_mean(
    train_means: pd.DataFrame, test_labels: Sequence[str], *, control: str = CONTROL
) -> BaselineResult:
    """Predict the mean profile of the training perturbations (every row but the control) for every test label.

    Parameters
    ----------
    train_means, test_labels, control
        As in :func:`perturbation_no_change`.

    Returns
    -------
    BaselineResult
        ``name="training_mean"``; ``params['n_train']`` the perturbations averaged.

    Raises
    ------
    ValueError
        When ``train_means`` holds no perturbation besides the control.
    """
    start = time.perf_counter()
    _check_means(train_means, control)
    labels = _test_labels(test_labels)
    perturbations = train_means.drop(index=control)
    if perturbations.empty:
        raise ValueError("train_means holds only the control; the training mean needs training perturbations")
    row = perturbations.to_numpy(dtype=np.float64).mean(axis=0)
    prediction = _frame(np.tile(row, (len(labels), 1)), labels, train_means.columns)
    return BaselineResult(
        "training_mean",
        prediction,
        time.perf_counter() - start,
        params={"control": control, "n_train": len(perturbations), "n_test": len(labels)},
    )


def perturbation_additive(
    train_means: pd.DataFrame,
    parsed: Mapping[str, tuple[GenePerturbation, ...]],
    test_labels: Sequence[str],
    *,
    control: str = CONTROL,
) -> BaselineResult:
    """The additive model: the control plus the sum of the label's single-gene effects seen in training.

    ``prediction = control + sum over the label's genes g of (mean of g alone - control)``, where "g alone" is a
    training label whose parsed form is exactly ``(g,)``, direction included (``A:up`` alone does not stand for
    ``A`` knocked down). A gene without a training single contributes 0 (for an unseen single gene the prediction
    is the control); their number is logged and kept in ``params``.

    Parameters
    ----------
    train_means, test_labels, control
        As in :func:`perturbation_no_change`.
    parsed
        Label -> parsed genes (:func:`opencellplm.data.parse_labels`) for the training and the test labels.

    Returns
    -------
    BaselineResult
        ``name="additive"``; ``params['n_genes_not_seen_alone']`` the test genes without a training single and
        ``params['labels_with_unseen_genes']`` how many test labels hold one.
    """
    start = time.perf_counter()
    _check_means(train_means, control)
    labels = _test_labels(test_labels)
    _check_parsed(parsed, labels, "test")
    _check_parsed(parsed, [label for label in train_means.index if label != control], "training")
    base = train_means.loc[control].to_numpy(dtype=np.float64)
    effect = {
        parsed[label][0]: train_means.loc[label].to_numpy(dtype=np.float64) - base
        for label in train_means.index
        if label != control and len(parsed[label]) == 1
    }
    rows, unseen, partial = [], set(), 0
    for label in labels:
        missing = [g for g in parsed[label] if g not in effect]
        unseen.update(missing)
        partial += bool(missing)
        rows.append(base + sum((effect[g] for g in parsed[label] if g in effect), np.zeros_like(base)))
    if unseen:
        logger.info(
            "perturbation_additive: %d gene(s) of %d test label(s) not seen alone in training contribute 0",
            len(unseen),
            partial,
        )
    return BaselineResult(
        "additive",
        _frame(np.array(rows), labels, train_means.columns),
        time.perf_counter() - start,
        params={
            "control": control,
            "n_singles_in_training": len(effect),
            "n_genes_not_seen_alone": len(unseen),
            "labels_with_unseen_genes": partial,
            "n_test": len(labels),
        },
    )


def _ridge_solve(y: np.ndarray, g: np.ndarray, p: np.ndarray, ridge: float) -> np.ndarray:
    """``K = (G'G + rI)^-1 G' Y P (P'P + rI)^-1``: the minimiser of ``|Y - G K P'|^2`` with the ridge on each side."""
    left = np.linalg.solve(g.T @ g + ridge * np.eye(g.shape[1]), g.T @ y)  # (K, n_conditions)
    return np.linalg.solve(p.T @ p + ridge * np.eye(p.shape[1]), (left @ p).T).T  # (K, K)


def perturbation_linear(
    train_means: pd.DataFrame,
    parsed: Mapping[str, tuple[GenePerturbation, ...]],
    test_labels: Sequence[str],
    *,
    control: str = CONTROL,
    n_components: int = 10,
    ridge: float = 0.1,
) -> BaselineResult:
    """The linear model of Ahlmann-Eltze, Huber and Anders (2024/2025), fitted on the training means.

    Following their ``run_linear_pretrained_model.R`` (gene and perturbation embedding both from the training
    data):

    - ``X``: the training pseudobulk, genes x training conditions (the control included);
      ``Y = X - control``, the changes;
    - gene embedding ``G`` (genes x K): the gene scores of the top ``K = n_components`` principal components of
      ``X`` with the genes as observations (each condition centred over the genes, as ``prcomp``), i.e. ``U_K S_K``;
    - perturbation embedding: a condition's vector ``p`` is the sum over its genes of their rows of ``G``, with
      sign +1 for a knock-down and -1 for an activation (the sign matters only when both directions occur; a gene
      outside the measured genes contributes 0); the control's vector is 0. ``P`` stacks the training conditions';
    - ``b``: each gene's mean change over the training conditions (the ``center`` of their ``solve_y_axb``);
    - ``W`` fits ``Y - b ~ G W P'`` by their ``solve_y_axb`` (``A_ridge = B_ridge = ridge``): the closed form
      ``(G'G + ridge I)^-1 G' (Y - b) P (P'P + ridge I)^-1``, a ridge applied to each side in turn (the least
      squares solution when ``ridge = 0`` and ``G``, ``P`` have full column rank; close to, not exactly, the
      minimiser of ``|Y - b - G W P'|^2 + ridge |W|^2``);
    - prediction for a test label: ``control + b + G W p``.

    Their default is 10 components and ridge 0.1 (the values here). Beyond the R script, a combination's vector
    is the sum of its genes' (the brief of TASKS §6), and the directions carry a sign.

    Parameters
    ----------
    train_means, test_labels, control
        As in :func:`perturbation_no_change`.
    parsed
        Label -> parsed genes for the training and the test labels.
    n_components
        ``K``; lowered to ``min(n_genes, n_training_conditions)`` when larger (logged).
    ridge
        Ridge penalty, ``>= 0``.

    Returns
    -------
    BaselineResult
        ``name="linear"``; ``params`` with the components used and how many perturbed genes have no row in ``G``.

    Raises
    ------
    ValueError
        For ``n_components < 1``, a negative ``ridge``, or no training perturbation besides the control.
    """
    start = time.perf_counter()
    if int(n_components) != n_components or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a non-negative number, got {ridge!r}")
    _check_means(train_means, control)
    labels = _test_labels(test_labels)
    train_labels = [label for label in train_means.index if label != control]
    if not train_labels:
        raise ValueError("train_means holds only the control; the linear model needs training perturbations")
    _check_parsed(parsed, labels, "test")
    _check_parsed(parsed, train_labels, "training")

    genes = train_means.columns
    base = train_means.loc[control].to_numpy(dtype=np.float64)
    conditions = [control, *train_labels]
    x = train_means.loc[conditions].to_numpy(dtype=np.float64).T  # (genes, conditions)
    y = x - base[:, None]
    k = min(int(n_components), *x.shape)
    if k < n_components:
        logger.info("perturbation_linear: %d components, not %d (%d genes x %d conditions)", k, n_components, *x.shape)
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    gene_embedding = u[:, :k] * s[:k]  # (genes, K): PCA scores of the genes
    row_of = {gene: i for i, gene in enumerate(genes)}
    unknown: set[str] = set()

    def embed(label: str) -> np.ndarray:
        vector = np.zeros(k)
        for g in parsed.get(label, ()) if label != control else ():
            if g.gene in row_of:
                vector += (1.0 if g.direction == "down" else -1.0) * gene_embedding[row_of[g.gene]]
            else:
                unknown.add(g.gene)
        return vector

    p_train = np.array([embed(label) for label in conditions])  # (conditions, K)
    center = y.mean(axis=1)
    w = _ridge_solve(y - center[:, None], gene_embedding, p_train, float(ridge))
    p_test = np.array([embed(label) for label in labels])
    prediction = base[None, :] + center[None, :] + p_test @ (gene_embedding @ w).T
    if unknown:
        logger.info("perturbation_linear: %d perturbed gene(s) not among the genes contribute 0", len(unknown))
    return BaselineResult(
        "linear",
        _frame(prediction, labels, genes),
        time.perf_counter() - start,
        params={
            "control": control,
            "n_components": k,
            "ridge": float(ridge),
            "n_train": len(train_labels),
            "n_test": len(labels),
            "n_perturbed_genes_not_measured": len(unknown),
        },
    )


def _training_cells(train_cells, labels_key: str, train_means: pd.DataFrame):
    """The training cells on the genes of ``train_means``, checked: an AnnData with ``obs[labels_key]`` and every
    gene."""
    from anndata import AnnData

    if not isinstance(train_cells, AnnData):
        raise TypeError(f"train_cells must be an AnnData of the training cells, got {type(train_cells).__name__}")
    if labels_key not in train_cells.obs:
        raise KeyError(f"train_cells has no obs column {labels_key!r}; it has {list(train_cells.obs.columns)}")
    missing = [g for g in train_means.columns if g not in train_cells.var_names]
    if missing:
        raise ValueError(f"train_cells lacks {len(missing)} gene(s) of train_means: {missing[:_SHOWN]}")
    return train_cells[:, list(train_means.columns)]


@contextmanager
def _working_directory(path) -> Iterator[None]:
    """Run a block in ``path`` (``contextlib.chdir`` from Python 3.11, which this package does not require)."""
    import os

    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class _SeriesMaskCSR(sp.csr_matrix):
    """A CSR matrix that takes a pandas boolean Series as a row mask: GEARS 0.1.2 reads its control cells with
    ``adata.X[adata.obs.condition == "ctrl"]``, which scipy 1.15 and later refuse, and calls ``X.toarray()``
    elsewhere, so X must stay sparse."""

    def __getitem__(self, key):
        if isinstance(key, pd.Series):
            key = key.to_numpy()
        return super().__getitem__(key)


#: The environment variable naming a folder with GEARS's Gene Ontology file (see :func:`gears`).
GEARS_DATA_ENV = "OPENCELLPLM_GEARS_DATA"
GEARS_GO_FILE = "gene2go_all.pkl"


def gears(
    train_means: pd.DataFrame,
    parsed: Mapping[str, tuple[GenePerturbation, ...]],
    test_labels: Sequence[str],
    *,
    train_cells,
    labels_key: str,
    control: str = CONTROL,
    seed: int = 0,
    epochs: int = 20,
    go_folder: str | None = None,
    device: str = "cpu",
) -> BaselineResult:
    """GEARS (the ``cell-gears`` package with ``torch-geometric``, extra ``baselines``; Roohani et al. 2023) at its
    defaults (``model_initialize()``: hidden size 64, the GO graph of 20 similar genes, co-expression threshold 0.4;
    ``train(epochs=20, lr=1e-3)``; batch size 32), trained on the training cells' log-normalised profiles and asked
    for the mean profile of each test label (``predict``).

    GEARS reads the Gene Ontology annotations its authors publish (``gene2go_all.pkl``, Harvard Dataverse file
    6153417), which it downloads on first use; this package never downloads. Put the file in a folder and name it
    with ``go_folder`` or the environment variable ``OPENCELLPLM_GEARS_DATA``; without it this baseline fails
    saying so (a row with the reason). Its perturbation graph is the measured genes and the perturbed ones
    (``default_pert_graph=False``). GEARS does not tell a knock-down from an activation: data with both directions
    are refused. A test label with a gene outside GEARS's graph (no GO annotation) is predicted as the control, and
    ``params`` counts such labels (``labels_outside_graph``). 10% of the training perturbations (seeded) are GEARS's
    validation set, which picks its best epoch. ``seed`` seeds torch and that choice.

    Parameters
    ----------
    train_means, parsed, test_labels, control, train_cells, labels_key
        As for :func:`perturbation_additive`; ``train_cells``: AnnData of the training cells (control and training
        perturbations), counts in ``X``, the label of each in ``obs[labels_key]``, genes in the columns of
        ``train_means``.
    epochs, device
        GEARS's training length and torch device.
    go_folder
        Folder holding ``gene2go_all.pkl`` (default: ``$OPENCELLPLM_GEARS_DATA``).
    """
    import contextlib
    import io
    import os
    import pickle
    import shutil
    import tempfile
    from pathlib import Path

    import torch
    from anndata import AnnData

    start = time.perf_counter()
    _check_means(train_means, control)
    labels = _test_labels(test_labels)
    _check_parsed(parsed, labels, "test")
    cells = _training_cells(train_cells, labels_key, train_means)
    condition = cells.obs[labels_key].astype(str).to_numpy()
    directions = {p.direction for genes in parsed.values() for p in genes}
    if len(directions) > 1:
        raise ValueError("GEARS does not tell a knock-down from an activation; these data have both")
    names = {control: "ctrl"}
    for label in np.unique(condition):
        if label != control:
            genes = [p.gene for p in parsed.get(label, ())]
            if not genes:
                raise ValueError(f"the training label {label!r} names no perturbed gene; parse it with parse_labels")
            names[label] = "+".join(genes + ["ctrl"] * (len(genes) == 1))
    gears_module = import_package("gears", "GEARS", "baselines")  # after the input's own faults
    folder = go_folder or os.environ.get(GEARS_DATA_ENV)
    if not folder or not (Path(folder) / GEARS_GO_FILE).is_file():
        where = f"{folder}/{GEARS_GO_FILE} does not exist" if folder else f"${GEARS_DATA_ENV} is not set"
        raise FileNotFoundError(
            f"GEARS needs its Gene Ontology file {GEARS_GO_FILE} (Harvard Dataverse file 6153417), which it would "
            f"download and this package never does ({where}); put the file in a folder and set ${GEARS_DATA_ENV}"
        )
    work = AnnData(_log_normalized(_counts(cells, None)))
    work.obs["condition"] = [names[c] for c in condition]
    work.obs["cell_type"] = "cell"
    work.var["gene_name"] = list(train_means.columns.astype(str))
    work.var_names = list(train_means.columns.astype(str))
    perturbed = sorted({n for n in names.values() if n != "ctrl"})
    rng = np.random.default_rng(seed)
    validation = sorted(rng.choice(perturbed, max(1, len(perturbed) // 10), replace=False).tolist())
    split = {"train": ["ctrl", *[n for n in perturbed if n not in validation]], "val": validation, "test": validation}
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in (GEARS_GO_FILE, "gene2go.pkl"):  # GEARS reads the same file under both names
            shutil.copyfile(Path(folder) / GEARS_GO_FILE, Path(tmp) / name)
        # GEARS caches its GO graph under ./data of the working directory (and reads it back by data set name):
        # run it inside the temporary folder, so that it neither writes into the user's folder nor reads a stale graph
        (Path(tmp) / "data").mkdir()
        with root_logging_kept(), _working_directory(tmp):
            data = gears_module.PertData(tmp, default_pert_graph=False)
            data.new_data_process("opencellplm", work)
            data.adata.X = _SeriesMaskCSR(data.adata.X)  # after GEARS wrote its h5ad copy
            with open(Path(tmp) / "split.pkl", "wb") as handle:
                pickle.dump(split, handle)
            data.prepare_split(split="custom", split_dict_path=str(Path(tmp) / "split.pkl"))
            data.get_dataloader(batch_size=32, test_batch_size=128)
            model = gears_module.GEARS(data, device=device)
            model.model_initialize()
            model.train(epochs=epochs)
            fit_seconds = time.perf_counter() - start
            known = set(model.pert_list)
            rows, outside = [], 0
            control_row = train_means.loc[control].to_numpy(dtype=np.float64)
            for label in labels:
                genes = [p.gene for p in parsed[label]]
                if genes and all(g in known for g in genes):
                    rows.append(np.asarray(model.predict([genes])["_".join(genes)], dtype=np.float64).ravel())
                else:
                    rows.append(control_row)
                    outside += 1
    return BaselineResult(
        "gears",
        _frame(np.asarray(rows), labels, train_means.columns),
        time.perf_counter() - start,
        params={
            "package": f"cell-gears {package_version('cell-gears')}",
            "epochs": epochs,
            "seed": seed,
            "validation_perturbations": len(validation),
            "labels_outside_graph": outside,
        },
        fit_seconds=fit_seconds,
    )
