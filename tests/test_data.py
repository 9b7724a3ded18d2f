"""The data layer: reading, checking (every bad input by its message), cell sets, coordinates."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from opencellplm.data import cell_sets, iter_row_blocks, normalize_coordinates, read_rows, validate
from opencellplm.data.reader import select_columns
from opencellplm.data.validate import empty_cells_note

from .conftest import vocabulary

VOCAB = vocabulary(50)


def test_clean_input_reports_its_shape_genes_and_samples(tiny_adata):
    before = tiny_adata.copy()
    report = validate(tiny_adata, sample_key="sample", vocabulary=VOCAB)
    assert report.ok and not report.warnings
    assert (report.n_cells, report.n_genes, report.source) == (40, 30, "X")
    assert report.alignment.n_matched == 25
    x = tiny_adata.X
    assert report.share_of_counts == pytest.approx(x[:, :25].sum() / x.sum())
    assert report.sample_sizes == {"s1": 20, "s2": 20}
    text = report.to_text()
    assert "25 of 30 (83.3%) in the vocabulary of 50" in text and "usable: yes" in text
    np.testing.assert_array_equal(tiny_adata.X, before.X)  # nothing written
    assert tiny_adata.obs.equals(before.obs) and not tiny_adata.uns


@pytest.mark.parametrize("bad", [np.nan, -2.0, np.inf])
def test_invalid_entries_are_refused_with_their_number_and_cells(tiny_adata, bad):
    tiny_adata.X[7, 2] = tiny_adata.X[9, 0] = bad
    report = validate(tiny_adata)
    assert not report.ok
    assert "X has 2 NaN, infinite or negative entries, first in cells ['cell7', 'cell9']" in report.errors[0]
    with pytest.raises(ValueError, match="the input cannot be used"):
        report.raise_for_errors()


def test_non_counts_warn_or_are_refused(tiny_adata):
    tiny_adata.X = tiny_adata.X / 3.0
    report = validate(tiny_adata)
    assert report.ok and "X holds non-integer values, so it is not raw counts; pass layer=" in report.warnings[0]
    strict = validate(tiny_adata, require_counts=True)
    assert "X holds non-integer values" in strict.errors[0]


def test_empty_cells_are_counted_and_named(tiny_adata):
    tiny_adata.X[[3, 5]] = 0
    tiny_adata.X[8, :25] = 0  # counts only in genes outside the vocabulary
    report = validate(tiny_adata, vocabulary=VOCAB)
    assert report.empty_cells.tolist() == [3, 5, 8] and report.ok
    assert "cells without counts: 3 (left out)" in report.to_text()
    note = empty_cells_note(tiny_adata, report, "they are left out")
    assert note == "3 cells have no counts in the model's genes, e.g. ['cell3', 'cell5', 'cell8']; they are left out"
    tiny_adata.X[:] = 0
    assert "no cell has any count" in validate(tiny_adata).errors[0]


def test_duplicate_gene_names_warn(tiny_adata):
    tiny_adata.var_names = ["G1", "G1"] + [f"G{i}" for i in range(2, 30)]
    report = validate(tiny_adata)
    assert report.duplicate_genes == ["G1"]
    assert "1 gene id(s) appear more than once, e.g. ['G1']" in report.warnings[0]


def test_missing_keys_list_what_exists(tiny_adata):
    report = validate(tiny_adata, sample_key="donor", spatial_key="xy", gene_key="ensembl")
    assert "obs column 'donor' not found; adata.obs has ['sample']" in report.errors
    assert "obsm key 'xy' not found; adata.obsm has []" in report.errors
    assert "var column 'ensembl' not found; adata.var has []" in report.errors
    assert "layer 'counts' not found; adata.layers has []" in validate(tiny_adata, layer="counts").errors[0]
    assert validate(tiny_adata).spatial_dims is None  # the default 'spatial' may be absent


def test_unlabelled_cells_and_bad_coordinates(tiny_adata):
    tiny_adata.obs.loc["cell3", "sample"] = None
    assert "1 cells have no 'sample' label, e.g. ['cell3']" in validate(tiny_adata, sample_key="sample").errors[0]
    coords = np.random.default_rng(0).random((40, 2))
    coords[4, 1] = np.nan
    tiny_adata.obsm["spatial"] = coords
    assert "obsm['spatial'] has NaN or infinite coordinates for 1 cells, e.g. ['cell4']" in validate(tiny_adata).errors
    tiny_adata.obsm["spatial"] = np.zeros((40, 4))
    assert "must be numeric with 2 or 3 columns" in validate(tiny_adata).errors[0]


def test_no_gene_overlap_is_an_error_with_examples(tiny_adata):
    tiny_adata.var_names = [f"CD{i}" for i in range(30)]
    report = validate(tiny_adata, vocabulary=VOCAB)
    assert "none of the 30 genes in var_names is in the model's vocabulary" in report.errors[0]


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_backed_reading_matches_memory(tmp_path, tiny_adata, layout):
    tiny_adata.X[3] = 0
    if layout == "csr":
        tiny_adata.X = sp.csr_matrix(tiny_adata.X)
    tiny_adata.write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    a, b = validate(tiny_adata, vocabulary=VOCAB), validate(backed, vocabulary=VOCAB)
    assert b.backed and not a.backed
    np.testing.assert_array_equal(a.cell_totals, b.cell_totals)
    assert a.empty_cells.tolist() == b.empty_cells.tolist() == [3]
    rows = np.array([17, 2, 30, 5])
    dense = np.asarray(sp.csr_matrix(tiny_adata.X)[rows][:, [4, 1]].todense())
    np.testing.assert_array_equal(read_rows(backed.X, rows, np.array([4, 1])).toarray(), dense)
    np.testing.assert_array_equal(read_rows(tiny_adata.X, rows, np.array([4, 1])).toarray(), dense)
    backed.file.close()


@pytest.mark.parametrize("kind", ["subset", "permutation", "repeated", "none", "all"])
def test_column_selection_equals_scipy(kind):
    x = sp.random(40, 30, density=0.3, format="csr", dtype=np.float32, random_state=0)
    columns = {
        "subset": np.array([2, 5, 6, 11, 29]),
        "permutation": np.random.default_rng(0).permutation(30)[:20],
        "repeated": np.array([4, 4, 9]),
        "none": np.array([], dtype=np.int64),
        "all": np.arange(30),
    }[kind]
    np.testing.assert_array_equal(select_columns(x, columns).toarray(), x[:, columns].toarray())


def test_rows_read_from_memory_are_a_copy_in_the_order_asked():
    x = sp.random(50, 20, density=0.3, format="csr", dtype=np.float32, random_state=1)
    before = x.toarray()
    rows = np.array([30, 2, 49, 2, 7])
    block = read_rows(x, rows, np.array([19, 3, 8]))
    np.testing.assert_array_equal(block.toarray(), before[rows][:, [19, 3, 8]])
    block.data[:] = -1  # the caller owns what it gets
    np.testing.assert_array_equal(x.toarray(), before)


def test_row_blocks_shared_only_when_asked_and_equal_either_way():
    x = sp.random(50_000, 5, density=0.2, format="csr", dtype=np.float32, random_state=2)  # three blocks
    shared = list(iter_row_blocks(x, x.shape[0], x.shape[1], views=True))
    copied = list(iter_row_blocks(x, x.shape[0], x.shape[1]))
    assert len(shared) == len(copied) > 1
    for (start_a, a), (start_b, b) in zip(shared, copied, strict=True):
        assert start_a == start_b
        np.testing.assert_array_equal(a.toarray(), b.toarray())
        assert np.shares_memory(a.data, x.data) and not np.shares_memory(b.data, x.data)
    x.indices, x.indptr = x.indices.astype(np.int64), x.indptr.astype(np.int64)  # a matrix past 2**31 values
    _, block = next(iter_row_blocks(x, x.shape[0], x.shape[1], views=True))
    assert block.indices.dtype == block.indptr.dtype == np.int64


def test_cell_totals_count_matched_genes_only_with_empty_rows_anywhere():
    rng = np.random.default_rng(3)
    dense = rng.poisson(1.0, (12, 8)).astype(np.float32)
    dense[[0, 5, 11]] = 0  # empty first, middle and last rows
    genes = [*VOCAB[:5], "NOT_A_GENE1", "NOT_A_GENE2", VOCAB[5]]
    report = validate(ad.AnnData(sp.csr_matrix(dense), var=pd.DataFrame(index=genes)), vocabulary=VOCAB)
    np.testing.assert_array_equal(report.cell_totals, dense[:, [0, 1, 2, 3, 4, 7]].sum(1))
    assert report.empty_cells.tolist() == [0, 5, 11]


# --------------------------------------------------------------------------------- cell sets
def _covers_once(sets, n):
    rows = np.concatenate(sets)
    return sorted(rows.tolist()) == list(range(n))


def test_consecutive_chunks_follow_sorted_samples():
    samples = pd.Series(["b", "a", "b", "c", "a", "b", "b"])
    sets = cell_sets(samples, 7, max_cells=2, partition="consecutive")
    assert [s.tolist() for s in sets] == [[1, 4], [0, 2], [5, 6], [3]]


def test_random_partition_is_seeded_balanced_and_complete():
    sets = cell_sets(None, 1000, max_cells=300, seed=1)
    assert [len(s) for s in sets] == [250, 250, 250, 250]  # near-equal, not 300/300/300/100
    assert _covers_once(sets, 1000)
    again = cell_sets(None, 1000, max_cells=300, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(sets, again))
    other = cell_sets(None, 1000, max_cells=300, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(sets, other))
    assert not np.array_equal(sets[0], np.arange(250))  # shuffled, not chunks


def test_spatial_tiles_keep_neighbours_together():
    rng = np.random.default_rng(0)
    coords = rng.random((2000, 2)) * [4.0, 1.0]  # a wide section
    tiles = cell_sets(None, 2000, max_cells=300, coords=coords)  # auto: tiles with coordinates
    random = cell_sets(None, 2000, max_cells=300, partition="random")
    assert _covers_once(tiles, 2000) and max(len(t) for t in tiles) <= 300 and len(tiles) == 7

    def neighbours_kept(sets):
        label = np.empty(2000, dtype=int)
        for i, s in enumerate(sets):
            label[s] = i
        d = ((coords[:, None] - coords[None]) ** 2).sum(-1)
        nn = np.argsort(d, axis=1)[:, 1:6]
        return (label[nn] == label[:, None]).mean()

    assert neighbours_kept(tiles) > 0.8
    assert neighbours_kept(random) < 0.3


def test_3d_tiles_and_left_out_rows():
    coords = np.random.default_rng(1).random((100, 3))
    keep = np.ones(100, dtype=bool)
    keep[[0, 50]] = False
    sets = cell_sets(None, 100, max_cells=30, coords=coords, keep=keep)
    rows = np.concatenate(sets)
    assert sorted(rows.tolist()) == sorted(set(range(100)) - {0, 50})
    with pytest.raises(ValueError, match="partition='tiles' needs coordinates"):
        cell_sets(None, 100, max_cells=30, partition="tiles")


def test_coordinates_are_scaled_per_set_keeping_the_shape():
    coords = np.array([[10.0, 5.0], [14.0, 5.0], [12.0, 7.0]])
    scaled = normalize_coordinates(coords)
    np.testing.assert_allclose(scaled, [[0.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_array_equal(normalize_coordinates(np.ones((2, 3))), np.zeros((2, 3)))


def test_cell_sets_read_the_counts_once_and_the_same_sets_over_substituted_counts():
    import torch

    from opencellplm.data.sets import CellSets, InputSpec
    from opencellplm.metrics import hide_counts
    from opencellplm.testing import synthetic_adata

    genes = vocabulary(50)
    adata = synthetic_adata(90, 60, gene_names=[*genes[:45], *[f"other{i}" for i in range(15)]], spatial=True, seed=4)
    spec = InputSpec(sample_key="sample", max_cells=20, seed=3)
    sets = CellSets(adata, spec, vocabulary=genes, positional=True, require_counts=True)
    columns = sets.report.alignment.columns
    counts = sets.counts()
    assert counts is sets.counts() and counts.shape == (90, 45)  # read once, the model's genes only
    np.testing.assert_array_equal(counts.toarray(), adata.X[:, columns].toarray())
    hidden_counts, _ = hide_counts(counts, fraction=0.2, seed=1)
    hidden = sets.with_counts(hidden_counts)
    # what a new AnnData of the substituted counts would read, cut by the same spec: the same sets, batches alike
    work = ad.AnnData(
        sp.csr_matrix(hidden_counts), obs=adata.obs[["sample"]].copy(), obsm={"spatial": adata.obsm["spatial"]}
    )
    work.var_names = np.asarray(adata.var_names)[columns]
    again = CellSets(work, spec, vocabulary=genes, positional=True, require_counts=True)
    assert [s.tolist() for s in hidden.sets] == [s.tolist() for s in again.sets]
    for index in range(len(hidden)):
        a, b = hidden.read(index), again.read(index)
        assert torch.equal(a.batch.counts.to_dense(), b.batch.counts.to_dense())
        assert torch.equal(a.batch.gene_index, b.batch.gene_index) and torch.equal(a.batch.coords, b.batch.coords)
    for a, b in zip(hidden.iterate(), again.iterate()):
        assert torch.equal(a.batch.counts.to_dense(), b.batch.counts.to_dense())
    assert torch.equal(sets.read(0).batch.counts.to_dense(), torch.as_tensor(counts[sets.sets[0]].toarray()))
    with pytest.raises(ValueError, match=r"the counts must have the shape of counts\(\) \(90, 45\), got \(90, 60\)"):
        sets.with_counts(adata.X)


def test_prefetched_sets_equal_the_sets_read_in_turn():
    import torch

    from opencellplm.data.sets import CellSets, InputSpec
    from opencellplm.testing import synthetic_adata

    genes = vocabulary(50)
    adata = synthetic_adata(90, 60, gene_names=[*genes[:45], *[f"other{i}" for i in range(15)]], spatial=True, seed=5)
    sets = CellSets(adata, InputSpec(sample_key="sample", max_cells=20), vocabulary=genes, positional=True)
    plain, ahead = list(sets.iterate()), list(sets.iterate(prefetch=True))
    assert len(plain) == len(ahead) == len(sets) > 2
    stream = sets.iterate(prefetch=True)
    next(stream)
    stream.close()  # a caller that stops early (or fails) stops the thread building sets ahead
    assert not [t for t in __import__("threading").enumerate() if t.name == "opencellplm-prefetch"]
    for a, b in zip(plain, ahead, strict=True):
        assert a.rows.tolist() == b.rows.tolist()
        assert torch.equal(a.batch.counts.to_dense(), b.batch.counts.to_dense())
        assert torch.equal(a.batch.gene_index, b.batch.gene_index) and torch.equal(a.batch.coords, b.batch.coords)


def test_prefetching_raises_where_an_item_failed_and_stops_its_thread_when_left_early():
    import threading

    from opencellplm.data.prefetch import prefetched

    def items():
        yield from range(3)
        raise OSError("the file went away")

    got = []
    with pytest.raises(OSError, match="the file went away"):
        for item in prefetched(items()):
            got.append(item)
    assert got == [0, 1, 2]
    stream = prefetched(iter(range(1000)), ahead=2)
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()  # the caller stops early: the producer must not stay blocked on a full queue
    assert not [t for t in threading.enumerate() if t.name == "opencellplm-prefetch"]
    with pytest.raises(ValueError, match="ahead must be at least 1"):
        next(prefetched([1], ahead=0))
