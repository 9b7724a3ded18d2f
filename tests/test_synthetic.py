"""The shipped synthetic data generator: shapes, determinism, separable types, counts, storage."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from opencellplm.testing import synthetic_adata


def dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def test_shape_annotations_and_names():
    adata = synthetic_adata(120, 50, n_types=3, n_samples=4, n_batches=2)
    assert adata.shape == (120, 50)
    assert list(adata.var_names[:2]) == ["GENE0", "GENE1"] and adata.var_names.is_unique
    assert list(adata.obs_names[:2]) == ["cell_0", "cell_1"]
    assert list(adata.obs["cell_type"].cat.categories) == ["type_0", "type_1", "type_2"]
    assert adata.obs["cell_type"].value_counts().to_dict() == {"type_0": 40, "type_1": 40, "type_2": 40}
    assert sorted(adata.obs["sample"].unique()) == ["sample_0", "sample_1", "sample_2", "sample_3"]
    assert adata.obs["batch"].value_counts().to_dict() == {"batch_0": 60, "batch_1": 60}
    assert "spatial" not in adata.obsm
    assert "batch" not in synthetic_adata(20, 10).obs


def test_gene_names_are_used_and_checked():
    names = [f"G{i}" for i in range(10)]
    assert list(synthetic_adata(20, 10, gene_names=names).var_names) == names
    with pytest.raises(ValueError, match="one name per gene"):
        synthetic_adata(20, 10, gene_names=names[:5])
    with pytest.raises(ValueError, match="repeated"):
        synthetic_adata(20, 2, gene_names=["A", "A"])
    with pytest.raises(ValueError, match="n_types"):
        synthetic_adata(3, 10, n_types=4)


def test_same_seed_same_data_other_seed_other_data():
    a, b = synthetic_adata(80, 40, spatial=True, seed=3), synthetic_adata(80, 40, spatial=True, seed=3)
    np.testing.assert_array_equal(dense(a.X), dense(b.X))
    assert a.obs.equals(b.obs)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert not np.array_equal(dense(a.X), dense(synthetic_adata(80, 40, seed=4).X))


def test_counts_are_non_negative_integers_sparse_or_dense():
    sparse = synthetic_adata(100, 60)
    assert sp.issparse(sparse.X) and sparse.X.format == "csr" and sparse.X.dtype == np.float32
    values = dense(sparse.X)
    assert values.min() >= 0 and np.array_equal(values, np.rint(values)) and values.sum() > 0
    full = synthetic_adata(100, 60, sparse=False, dense_dtype=np.int32)
    assert isinstance(full.X, np.ndarray) and full.X.dtype == np.int32
    np.testing.assert_array_equal(full.X, values)  # storage does not change the draw


def test_cell_types_are_separable_but_library_sizes_vary():
    adata = synthetic_adata(300, 200)
    x = dense(adata.X)
    totals = x.sum(axis=1)
    assert totals.std() / totals.mean() > 0.2  # a library-size spread
    log_x = np.log1p(x / totals[:, None] * 1e4)
    pcs = PCA(n_components=20, random_state=0).fit_transform(log_x)
    accuracy = cross_val_score(KNeighborsClassifier(15), pcs, adata.obs["cell_type"], cv=5).mean()
    assert accuracy > 0.8  # chance is 0.25


def test_spatial_domains_follow_cell_types():
    adata = synthetic_adata(200, 30, n_types=4, spatial=True)
    coords = adata.obsm["spatial"]
    assert coords.shape == (200, 2) and np.isfinite(coords).all()
    accuracy = cross_val_score(KNeighborsClassifier(5), coords, adata.obs["cell_type"], cv=5).mean()
    assert accuracy > 0.9  # each type occupies its own region
