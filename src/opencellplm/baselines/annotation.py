"""Cell type annotation baselines, trained on one AnnData and predicting another: :func:`celltypist_style`,
:func:`l1_logistic_cv`, :func:`knn_on_pca`."""

from __future__ import annotations

import logging
import numbers
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..data.labels import has_label
from ._common import (
    CLIP,
    SCVI_TOP_GENES,
    BaselineResult,
    _counts,
    _highly_variable,
    _log_normalized,
    _variable_columns,
    import_package,
    root_logging_kept,
)

logger = logging.getLogger(__name__)

#: Inverse regularisation strengths tried by :func:`l1_logistic_cv` (standardised genes).
L1_CS: tuple[float, ...] = (0.01, 0.1, 1.0)


def celltypist_style(
    train: AnnData, test: AnnData, *, labels_key: str, layer: str | None = None, seed: int = 0
) -> BaselineResult:
    """CellTypist's recipe: logistic regression on standardised log-normalised counts.

    Both sets are normalised to 1e4 counts per cell (each cell by its own total over all its genes) and
    ``log1p``; the genes shared by both are standardised with the training cells' mean and standard deviation
    (a gene constant in training is only centred) and clipped to ``[-10, 10]``; a multinomial logistic regression
    (scikit-learn, ``C=1``, L2, ``lbfgs``, up to 1000 iterations) is fitted on the training cells. CellTypist
    itself fits one-vs-rest models; the multinomial fit gives calibrated probabilities that sum to 1.

    Parameters
    ----------
    train
        Labelled cells (counts; never modified).
    test
        Cells to label (counts; never modified). Genes are matched by name.
    labels_key
        ``train.obs`` column of labels. Training cells without a label are left out.
    layer
        Layer holding the counts in both; ``None`` for ``X``.
    seed
        ``random_state`` of the solver.

    Returns
    -------
    BaselineResult
        ``prediction``: a label string per test cell; ``probabilities`` and ``classes``.
    """
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    x_train, x_test, y, genes = _annotation_inputs(train, test, labels_key=labels_key, layer=layer)
    x_train, x_test = _standardize(x_train, x_test)
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x_train, y)
    _log_convergence(caught, "celltypist_style")
    return _annotation_result(
        "celltypist_style", model, x_test, start, {"layer": layer, "n_genes": len(genes), "C": 1.0, "seed": seed}
    )


def celltypist(
    train: AnnData, test: AnnData, *, labels_key: str, layer: str | None = None, seed: int = 0
) -> BaselineResult:
    """CellTypist itself (the ``celltypist`` package, extra ``baselines``): a model trained on the training cells
    with its own ``celltypist.train`` and applied with its own ``celltypist.annotate`` (``best match``, no majority
    voting), at the package's defaults but one: ``use_SGD=True``.

    CellTypist's default classifier (``LogisticRegression(multi_class="ovr")``) no longer exists in scikit-learn 1.8
    and later, which this package requires; its documented alternative, stochastic gradient descent (a logistic loss,
    one-vs-rest, the recipe its published models were trained with), still runs. ``seed`` is its ``random_state``.

    Each set is given as CellTypist expects it: counts normalised to 1e4 per cell over all of its genes, then
    ``log1p``; CellTypist matches the genes of the two by name itself.

    On small training sets these settings memorise: on 786 Baron training cells (15,345 expressed genes) the model
    labels every training cell right but no test delta or PP cell (macro F1 0.71, against 0.95-0.98 for
    :func:`celltypist_style`, whose L2 penalty is about 13 times stronger at this size). CellTypist's two-pass
    ``feature_selection=True`` gave 0.83 on the same split. It is not used: the wrapper calls ``celltypist.train``
    as a user would, changing only what no longer runs.

    Parameters
    ----------
    train, test, labels_key, layer
        As for :func:`celltypist_style`.

    Returns
    -------
    BaselineResult
        ``prediction``: a label string per test cell; ``probabilities`` and ``classes`` (CellTypist's
        ``probability_matrix``, one-vs-rest, so rows need not sum to 1).
    """
    celltypist_module = import_package("celltypist", "CellTypist", "baselines")
    start = time.perf_counter()
    labelled, y, _ = _labels_and_shared_genes(train, test, labels_key)
    reference = AnnData(_log_normalized(_counts(train, layer))[labelled])
    reference.var_names = train.var_names.astype(str)
    query = AnnData(_log_normalized(_counts(test, layer)))
    query.var_names = test.var_names.astype(str)
    with root_logging_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # celltypist's own imports of scanpy internals
        model = celltypist_module.train(reference, labels=y, n_jobs=1, use_SGD=True, random_state=seed)
        fit_seconds = time.perf_counter() - start
        result = celltypist_module.annotate(query, model=model, majority_voting=False)
    probabilities = result.probability_matrix
    classes = tuple(str(c) for c in probabilities.columns)
    prediction = result.predicted_labels["predicted_labels"].astype(str).to_numpy()
    logger.info("celltypist: predicted %d test cells", len(prediction))
    version = getattr(celltypist_module, "__version__", "unknown")
    return BaselineResult(
        name="celltypist",
        prediction=prediction,
        seconds=time.perf_counter() - start,
        probabilities=probabilities.to_numpy(dtype=np.float64),
        classes=classes,
        params={"layer": layer, "package": f"celltypist {version}", "use_SGD": True, "seed": seed},
        fit_seconds=fit_seconds,
    )


def scanvi(
    train: AnnData,
    test: AnnData,
    *,
    labels_key: str,
    layer: str | None = None,
    seed: int = 0,
    max_epochs: int | None = None,
    n_top_genes: int | None = SCVI_TOP_GENES,
) -> BaselineResult:
    """scANVI (scvi-tools, extra ``scvi`` or ``baselines``; Xu et al. 2021) at scvi-tools' defaults: an scVI model
    trained on the training cells' counts (its default epochs), turned into scANVI with their labels
    (``from_scvi_model``, its default epochs), which then labels the test cells it never saw (``predict``).

    Both sets are read as raw counts on the ``n_top_genes`` most variable of the genes they share (variable in the
    training cells; None: every shared gene), as scvi-tools' tutorials prepare data; ``seed`` is
    ``scvi.settings.seed``. ``max_epochs`` caps both trainings (None: scvi-tools' defaults).

    Parameters
    ----------
    train, test, labels_key, layer, seed
        As for :func:`celltypist_style`.
    """
    scvi_module = import_package("scvi", "scANVI", "scvi")
    start = time.perf_counter()
    labelled, y, shared = _labels_and_shared_genes(train, test, labels_key)
    reference_counts = _counts(train, layer)[labelled][:, train.var_names.get_indexer(shared)]
    variable = _variable_columns(reference_counts, n_top_genes)
    shared = list(np.asarray(shared)[variable])
    unknown = "(no label)"
    reference = AnnData(reference_counts[:, variable])
    reference.var_names, reference.obs["label"] = list(shared), y
    query = AnnData(_counts(test, layer)[:, test.var_names.get_indexer(shared)])
    query.var_names, query.obs["label"] = list(shared), unknown
    scvi_module.settings.seed = seed
    epochs = {} if max_epochs is None else {"max_epochs": max_epochs}
    with root_logging_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scvi-tools' and Lightning's advice on settings and hardware
        scvi_module.model.SCVI.setup_anndata(reference, labels_key="label")
        vae = scvi_module.model.SCVI(reference)
        vae.train(accelerator="cpu", enable_progress_bar=False, **epochs)
        model = scvi_module.model.SCANVI.from_scvi_model(vae, unlabeled_category=unknown)
        model.train(accelerator="cpu", enable_progress_bar=False, **epochs)
        fit_seconds = time.perf_counter() - start
        prediction = np.asarray(model.predict(query)).astype(str)
        probabilities = model.predict(query, soft=True)
    logger.info("scanvi: predicted %d test cells", len(prediction))
    version = getattr(scvi_module, "__version__", "unknown")
    return BaselineResult(
        name="scanvi",
        prediction=prediction,
        seconds=time.perf_counter() - start,
        probabilities=probabilities.to_numpy(dtype=np.float64),
        classes=tuple(str(c) for c in probabilities.columns),
        params={
            "layer": layer,
            "package": f"scvi-tools {version}",
            "max_epochs": max_epochs,
            "seed": seed,
            "n_genes": len(shared),
        },
        fit_seconds=fit_seconds,
    )


def l1_logistic_cv(
    train: AnnData,
    test: AnnData,
    *,
    labels_key: str,
    layer: str | None = None,
    n_top_genes: int | None = 2000,
    cs: Sequence[float] = L1_CS,
    n_folds: int = 5,
    solver: Literal["liblinear", "saga"] = "liblinear",
    max_iter: int = 100,
    seed: int = 0,
) -> BaselineResult:
    """L1-penalised logistic regression with ``C`` chosen by cross-validation (Boiarsky et al. 2024).

    Normalised to 1e4 per cell and ``log1p``; the ``n_top_genes`` most variable genes of the training cells
    (scanpy ``"seurat"`` flavor; ``None`` for all shared genes); standardised with the training mean and sd,
    clipped to ``[-10, 10]``. For each ``C`` in ``cs`` an L1 logistic regression is scored by macro F1 over
    stratified ``n_folds``-fold cross-validation of the training cells (fewer folds when the rarest class has
    fewer cells); the best ``C`` (the smallest on ties) is refitted on all training cells.

    The default solver is liblinear, one-vs-rest (one binary L1 model per class, probabilities normalised to
    sum to 1): it converges (tolerance 1e-3) and the whole search took 36 s on 3,000 cells x 2,000 genes and
    8 classes (2 CPU cores), while saga's multinomial fit did not converge in 100 epochs and the same search
    with ``max_iter=200`` took 7 minutes. ``solver="saga"`` gives the multinomial model, at most ``max_iter``
    epochs per fit; fits that stop at ``max_iter`` are logged. The gene cap and the three-value grid bound the
    cost: 16 fits in all (3 values x 5 folds, and the refit).

    Parameters
    ----------
    train, test, labels_key, layer, seed
        As in :func:`celltypist_style`.
    n_top_genes
        Highly variable genes kept; ``None`` for all shared genes.
    cs
        Inverse regularisation strengths to try.
    n_folds
        Cross-validation folds (at most).
    solver
        ``"liblinear"`` (one-vs-rest) or ``"saga"`` (multinomial).
    max_iter
        Iteration bound of each fit.

    Returns
    -------
    BaselineResult
        As :func:`celltypist_style`; ``params['C']`` is the chosen value, ``params['cv_f1']`` the mean
        cross-validated macro F1 of each ``C``.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    if solver not in ("liblinear", "saga"):
        raise ValueError(f"solver must be 'liblinear' or 'saga', got {solver!r}")
    start = time.perf_counter()
    x_train, x_test, y, genes = _annotation_inputs(train, test, labels_key=labels_key, layer=layer)
    if n_top_genes is not None:
        keep = _highly_variable(x_train, n_top_genes)
        x_train, x_test, genes = x_train[:, keep], x_test[:, keep], [genes[i] for i in keep]
    x_train, x_test = _standardize(x_train, x_test)
    smallest = int(pd.Series(y).value_counts().min())
    folds = max(2, min(n_folds, smallest))
    estimator, c_name = _l1_logistic(solver=solver, max_iter=max_iter, seed=seed)
    search = GridSearchCV(
        estimator,
        {c_name: sorted(float(c) for c in cs)},
        scoring="f1_macro",
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
        refit=True,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search.fit(x_train, y)
    _log_convergence(caught, "l1_logistic_cv")
    results = search.cv_results_
    cv_f1 = {float(c): float(f1) for c, f1 in zip(results[f"param_{c_name}"], results["mean_test_score"])}
    chosen = float(search.best_params_[c_name])
    logger.info("l1_logistic_cv: C=%g chosen by %d-fold CV (macro F1 per C: %s)", chosen, folds, cv_f1)
    params = {
        "layer": layer,
        "n_genes": len(genes),
        "C": chosen,
        "cv_f1": cv_f1,
        "n_folds": folds,
        "solver": solver,
        "max_iter": max_iter,
        "seed": seed,
    }
    return _annotation_result("l1_logistic_cv", search.best_estimator_, x_test, start, params)


def knn_on_pca(
    train: AnnData,
    test: AnnData,
    *,
    labels_key: str,
    layer: str | None = None,
    n_neighbors: int = 15,
    n_comps: int = 50,
    n_top_genes: int | None = 2000,
    seed: int = 0,
) -> BaselineResult:
    """k-nearest-neighbour vote in a PCA fitted on the training cells: scanpy's standard recipe.

    The field's standard (scanpy's clustering tutorial and its label transfer, ``scanpy.tl.ingest``: a PCA
    fitted on the reference, query cells projected on it, a kNN classifier on the reference's 15 neighbours):
    counts normalised to 1e4 per cell and ``log1p``; the training cells' ``n_top_genes`` highly variable genes
    (scanpy ``"seurat"`` flavor); PCA fitted on the training cells (centred, not scaled: scaling gives every
    rare, noisy gene the weight of a marker; ``min(n_comps, n_train - 1, n_genes)`` components) and applied to
    the test cells; each test cell takes the majority label of its ``n_neighbors`` nearest training cells
    (Euclidean), the probabilities being the neighbours' label shares. An earlier version scaled the genes
    to unit variance before the PCA, which lowered macro F1 on one held-out fold of real data from 0.71 to 0.37.

    Parameters
    ----------
    train, test, labels_key, layer, seed
        As in :func:`celltypist_style`; ``seed`` seeds the PCA solver.
    n_neighbors
        Neighbours that vote (at most the number of training cells).
    n_comps
        Principal components.
    n_top_genes
        Highly variable genes kept; ``None`` for all shared genes.

    Returns
    -------
    BaselineResult
        As :func:`celltypist_style`.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    start = time.perf_counter()
    x_train, x_test, y, genes = _annotation_inputs(train, test, labels_key=labels_key, layer=layer)
    if n_top_genes is not None:
        keep = _highly_variable(x_train, n_top_genes)
        x_train, x_test, genes = x_train[:, keep], x_test[:, keep], [genes[i] for i in keep]
    x_train, x_test = x_train.toarray(), x_test.toarray()  # log-normalised, not scaled (see above)
    n = max(1, min(n_comps, x_train.shape[0] - 1, x_train.shape[1]))
    pca = PCA(n_components=n, random_state=seed).fit(x_train)
    k = min(n_neighbors, x_train.shape[0])
    model = KNeighborsClassifier(n_neighbors=k).fit(pca.transform(x_train), y)
    params = {"layer": layer, "n_genes": len(genes), "n_comps": n, "n_neighbors": k, "seed": seed}
    return _annotation_result("knn_on_pca", model, pca.transform(x_test), start, params)


def label_strings(labels: pd.Series, key: str) -> pd.Series:
    """The labels as strings (a missing one reads 'nan': use the labelled rows only), refusing a column that mixes
    value types: 1 and "1" (or True and "True") would become one class, 2 and 2.0 two."""
    present = labels.dropna()
    if isinstance(present.dtype, pd.CategoricalDtype):
        values = present.cat.remove_unused_categories().cat.categories.to_numpy(dtype=object)
    elif present.dtype == object:
        values = present.to_numpy(dtype=object)
    else:  # one numpy or pandas dtype: one type
        values = present.iloc[:1].to_numpy(dtype=object)
    kinds: dict[str, list[Any]] = {}
    for value in values:
        examples = kinds.setdefault(_kind(value), [])
        if len(examples) < 3 and value not in examples:
            examples.append(value)
    if len(kinds) > 1:
        found = "; ".join(f"{kind}: {', '.join(repr(v) for v in examples)}" for kind, examples in sorted(kinds.items()))
        raise ValueError(
            f"obs column {key!r} mixes label types ({found}); values of different types can read alike (1 and "
            f"'1') and would be merged into one class, or split (2 and 2.0). Make the column one type, e.g. strings"
        )
    return labels.astype(str)


def _kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    return "str" if isinstance(value, str) else type(value).__name__


def _labels_and_shared_genes(train: AnnData, test: AnnData, labels_key: str):
    """``(labelled, y, shared)``: which training cells have a label, their labels as strings, and the gene names of
    both sets; each annotation baseline's input checks (a label column, unique gene names, two classes, a shared
    gene)."""
    if labels_key not in train.obs:
        raise KeyError(f"labels_key {labels_key!r} is not a column of train.obs; it has {list(train.obs.columns)}")
    for name, data in (("train", train), ("test", test)):
        if not data.var_names.is_unique:
            raise ValueError(f"{name}.var_names has repeated gene names; make them unique (var_names_make_unique())")
    labels = train.obs[labels_key]
    labelled = has_label(labels)
    if not labelled.all():
        logger.info("%d training cells without a label in %r are left out", int((~labelled).sum()), labels_key)
    y = label_strings(labels, labels_key).to_numpy()[labelled]
    if len(np.unique(y)) < 2:
        raise ValueError(f"train.obs[{labels_key!r}] has {len(np.unique(y))} class(es); a classifier needs at least 2")
    shared = train.var_names.intersection(test.var_names, sort=False)
    if len(shared) == 0:
        raise ValueError("train and test share no gene names (var_names); use the same gene identifiers in both")
    return labelled, y, shared


def _annotation_inputs(train: AnnData, test: AnnData, *, labels_key: str, layer: str | None):
    """Log-normalised training and test matrices on the shared genes, and the training labels as strings."""
    labelled, y, shared = _labels_and_shared_genes(train, test, labels_key)
    if len(shared) < train.n_vars or len(shared) < test.n_vars:
        logger.info(
            "annotation: %d shared genes (train has %d, test %d); the others are ignored",
            len(shared),
            train.n_vars,
            test.n_vars,
        )
    x_train = _log_normalized(_counts(train, layer))[labelled][:, train.var_names.get_indexer(shared)]
    x_test = _log_normalized(_counts(test, layer))[:, test.var_names.get_indexer(shared)]
    logger.info(
        "annotation: %d training cells (%d classes), %d test cells, %d genes",
        x_train.shape[0],
        len(np.unique(y)),
        x_test.shape[0],
        len(shared),
    )
    return x_train, x_test, y, list(shared)


def _standardize(x_train: sp.csr_matrix, x_test: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Dense float32, centred and scaled with the training mean and sd (sd 0 -> 1), clipped to ``[-CLIP, CLIP]``."""
    train = x_train.toarray()
    mean = train.mean(axis=0, dtype=np.float64)
    sd = train.std(axis=0, dtype=np.float64)
    sd[sd == 0] = 1.0
    out = []
    for x in (train, x_test.toarray()):
        z = (x - mean) / sd
        out.append(np.clip(z, -CLIP, CLIP).astype(np.float32))
    return out[0], out[1]


def _l1_logistic(*, solver: str, max_iter: int, seed: int):
    """An L1 logistic regression and the name of its ``C`` parameter, for scikit-learn before and after 1.8
    (which deprecated ``penalty`` for ``l1_ratio`` and dropped multi-class liblinear)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    major, minor = (int(part) for part in sklearn.__version__.split(".")[:2])
    penalty = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
    model = LogisticRegression(solver=solver, max_iter=max_iter, tol=1e-3, random_state=seed, **penalty)
    if solver == "liblinear":
        return OneVsRestClassifier(model), "estimator__C"
    return model, "C"


def _log_convergence(caught: list[warnings.WarningMessage], name: str) -> None:
    from sklearn.exceptions import ConvergenceWarning

    n = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    if n:
        logger.info("%s: %d fit(s) stopped at max_iter before converging", name, n)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _annotation_result(name: str, model, x_test: np.ndarray, start: float, params: dict) -> BaselineResult:
    """The result of a fitted scikit-learn ``model`` (called right after the fit: what ran since ``start`` is the
    fit's time) on the prepared test matrix."""
    fit_seconds = time.perf_counter() - start
    probabilities = np.asarray(model.predict_proba(x_test), dtype=np.float64)
    classes = tuple(str(c) for c in model.classes_)
    prediction = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)].astype(str)
    logger.info("%s: predicted %d test cells", name, len(prediction))
    return BaselineResult(
        name=name,
        prediction=prediction,
        seconds=time.perf_counter() - start,
        probabilities=probabilities,
        classes=classes,
        params=params,
        fit_seconds=fit_seconds,
    )
