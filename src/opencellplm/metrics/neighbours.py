"""How much of a reference representation's neighbourhood structure an embedding keeps (label-free), and how
much of a labelling its neighbourhoods agree with."""

from __future__ import annotations

import numpy as np


def neighbourhood_agreement(embedding: np.ndarray, reference: np.ndarray, *, k: int = 15) -> float:
    """Mean Jaccard index between each cell's ``k`` nearest neighbours in ``embedding`` and in ``reference``.

    1 when both representations give every cell the same neighbours, about ``k / n`` for unrelated ones. Needs
    no labels, so it can choose among pretrained checkpoints without touching a labelled test set: with the
    standard PCA of log-normalised counts as ``reference``, it says whether an embedding keeps the cell
    neighbourhoods of the usual pipeline, which sequencing depth or noise would scramble. Rows with a NaN in
    either representation are left out. Euclidean distances, self excluded.
    """
    from sklearn.neighbors import NearestNeighbors

    embedding, reference = np.asarray(embedding, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if embedding.ndim != 2 or reference.ndim != 2 or len(embedding) != len(reference):
        raise ValueError(
            f"embedding and reference need one row per cell each, got shapes {embedding.shape} and {reference.shape}"
        )
    keep = ~(np.isnan(embedding).any(1) | np.isnan(reference).any(1))
    n = int(keep.sum())
    if n <= k:
        raise ValueError(f"neighbourhood agreement needs more than k={k} cells without NaN, got {n}")
    sets = [
        NearestNeighbors(n_neighbors=k).fit(x[keep]).kneighbors(return_distance=False) for x in (embedding, reference)
    ]  # kneighbors() without X leaves each cell out of its own neighbours
    shared = np.array([len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(*sets)])
    return float(np.mean(shared / (2 * k - shared)))


def knn_label_agreement(embedding: np.ndarray, labels: np.ndarray, *, k: int = 15) -> float:
    """Class-balanced share of each cell's ``k`` nearest neighbours in ``embedding`` that carry its label.

    The mean over cells of a class, then over classes, so that a few large types do not hide the small ones.
    1 when every neighbourhood is pure, about ``1 / n_classes`` on average for an embedding unrelated to the
    labels. Rows with a NaN, or with a missing label, are left out. Euclidean distances, self excluded.
    """
    from sklearn.neighbors import NearestNeighbors

    embedding = np.asarray(embedding, dtype=np.float64)
    labels = np.asarray(labels, dtype=object)
    if embedding.ndim != 2 or len(embedding) != len(labels):
        raise ValueError(
            f"embedding and labels need one row per cell each, got shapes {embedding.shape} and {labels.shape}"
        )
    keep = ~np.isnan(embedding).any(1) & np.array([label is not None and label == label for label in labels])
    n = int(keep.sum())
    if n <= k:
        raise ValueError(f"kNN label agreement needs more than k={k} labelled cells without NaN, got {n}")
    labels = labels[keep].astype(str)
    neighbours = NearestNeighbors(n_neighbors=k).fit(embedding[keep]).kneighbors(return_distance=False)
    same = (labels[neighbours] == labels[:, None]).mean(1)
    return float(np.mean([same[labels == label].mean() for label in np.unique(labels)]))
