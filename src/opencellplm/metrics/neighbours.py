"""How much of a reference representation's neighbourhood structure an embedding keeps (label-free)."""

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
