"""TileDB-SOMA experiments as input: a pretraining corpus (the same corpus as from the h5ad files the experiment
was built from) and embedding (the same embedding as from those files, in one process or two); both resumable after
a kill, every bad input refused before anything is written."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from opencellplm import CellPLM
from opencellplm._files import OutputInUseError
from opencellplm.cli import main
from opencellplm.data import soma as soma_module
from opencellplm.data.corpus import Corpus, prepare_corpus

pytest.importorskip("tiledbsoma", reason="the SOMA corpus needs tiledbsoma (pip install '.[soma]')")
import tiledbsoma  # noqa: E402
import tiledbsoma.io  # noqa: E402

from opencellplm.data.soma import prepare_corpus_from_soma  # noqa: E402

SHARD_KEYS = ("set_offsets", "indptr", "indices", "data", "n_genes", "dataset", "batch", "coords", "coord_dims")


def _adata(rng, name, n, genes, donors, spatial=False):
    adata = ad.AnnData(
        rng.negative_binomial(2, 0.5, size=(n, len(genes))).astype(np.float32),
        obs=pd.DataFrame({"dataset_id": name, "donor": rng.choice(donors, n)}, index=[f"{name}-{i}" for i in range(n)]),
        var=pd.DataFrame({"feature_name": genes, "ensembl": [f"ENSG{g[1:]:0>11}" for g in genes]}, index=genes),
    )
    if spatial:
        adata.obsm["spatial"] = rng.random((n, 2)) * 100
    return adata


def _atlas(folder: Path, gene_left_at_zero: str | None = None):
    """Three h5ad files (two scRNA-seq data sets and a spatial one, overlapping gene sets, an empty cell, a cell
    with control-probe counts only) and the SOMA experiment tiledbsoma.io builds from them. ``gene_left_at_zero``:
    a gene the second data set measures with no count in any cell."""
    rng = np.random.default_rng(0)
    first = _adata(rng, "a", 90, [f"G{i}" for i in range(12)], ["d1", "d2", "d3"])
    first.X[5] = 0  # empty: left out
    second = _adata(rng, "b", 60, [f"G{i}" for i in range(8, 20)], ["d4"])
    if gene_left_at_zero is not None:
        second.X[:, list(second.var_names).index(gene_left_at_zero)] = 0
    third = _adata(rng, "c", 70, [f"G{i}" for i in range(6, 14)] + ["NegControlProbe_1"], ["s"], spatial=True)
    third.X[3, :-1] = 0  # counts in the control probe only: empty once probes are left out
    paths = []
    for adata in (first, second, third):
        paths.append(folder / f"{adata.obs['dataset_id'].iloc[0]}.h5ad")
        adata.write_h5ad(paths[-1])
    uri = str(folder / "experiment")
    tiledbsoma.io.from_h5ad(uri, str(paths[0]), measurement_name="RNA", X_layer_name="raw")
    for path in paths[1:]:
        registration = tiledbsoma.io.register_h5ads(
            uri, [str(path)], measurement_name="RNA", obs_field_name="obs_id", var_field_name="var_id",
            append_obsm_varm=True,
        )  # fmt: skip
        registration.prepare_experiment(uri)
        tiledbsoma.io.from_h5ad(
            uri, str(path), measurement_name="RNA", X_layer_name="raw", registration_mapping=registration
        )
    return uri, paths, [first.n_obs, second.n_obs, third.n_obs]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return _atlas(tmp_path_factory.mktemp("atlas"))


def _shards(folder: Path) -> list[dict[str, np.ndarray]]:
    corpus = Corpus(folder)
    out = []
    for info in corpus.shards:
        with np.load(folder / info["file"]) as f:
            out.append({k: f[k] for k in f.files})
    return out


def _assert_same_corpus(soma_dir: Path, h5ad_dir: Path, row_offsets: list[int]) -> None:
    """Same vocabulary, data sets, genes, sets, counts, batches and coordinates; source rows are the h5ad rows
    shifted by the cells of the files before (the soma_joinid)."""
    soma_manifest = json.loads((soma_dir / "manifest.json").read_text())
    h5ad_manifest = json.loads((h5ad_dir / "manifest.json").read_text())
    assert (soma_dir / "genes.txt").read_text() == (h5ad_dir / "genes.txt").read_text()
    for key in ("n_genes", "n_cells", "n_sets"):
        assert soma_manifest[key] == h5ad_manifest[key], key
    for soma_d, h5ad_d in zip(soma_manifest["datasets"], h5ad_manifest["datasets"], strict=True):
        for key in ("n_cells", "n_empty_cells_left_out", "n_genes", "n_sets", "spatial_dims", "genes_sha256"):
            assert soma_d[key] == h5ad_d[key], (soma_d["file"], key)
    assert list(soma_manifest["batches"].values()) == list(h5ad_manifest["batches"].values())
    assert [k.split("/")[1] for k in soma_manifest["batches"]] == [k.split("/")[1] for k in h5ad_manifest["batches"]]
    soma_shards, h5ad_shards = _shards(soma_dir), _shards(h5ad_dir)
    assert len(soma_shards) == len(h5ad_shards) > 1
    for ours, theirs in zip(soma_shards, h5ad_shards):
        for key in SHARD_KEYS:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
        cells_dataset = np.repeat(theirs["dataset"], np.diff(theirs["set_offsets"]))
        shifted = theirs["source_rows"] + np.asarray(row_offsets)[cells_dataset]
        np.testing.assert_array_equal(ours["source_rows"], shifted)


def test_soma_corpus_equals_the_h5ad_corpus(tmp_path, atlas):
    uri, paths, sizes = atlas
    settings = {"sample_key": "donor", "max_cells": 25, "shard_cells": 60}
    prepare_corpus(paths, tmp_path / "from_h5ad", **settings)
    manifest = prepare_corpus_from_soma(
        uri, tmp_path / "from_soma", dataset_key="dataset_id", block_cells=40, **settings
    )
    _assert_same_corpus(tmp_path / "from_soma", tmp_path / "from_h5ad", [0, sizes[0], sizes[0] + sizes[1]])
    recorded = json.loads(manifest.read_text())
    assert [d["file"] for d in recorded["datasets"]] == ["a", "b", "c"]
    assert recorded["datasets"][2]["n_control_probes_left_out"] == 1
    assert not list(tmp_path.glob(".*")), "the work folder and lock are gone"
    assert Corpus(tmp_path / "from_soma").verify() == []  # every checksum of the manifest holds


def test_obs_filter_selects_the_cells_of_one_file(tmp_path, atlas):
    uri, paths, sizes = atlas
    prepare_corpus([paths[1]], tmp_path / "from_h5ad", sample_key="donor", max_cells=25, shard_cells=30)
    prepare_corpus_from_soma(
        uri, tmp_path / "from_soma", obs_filter="dataset_id == 'b'", dataset_key="dataset_id", sample_key="donor",
        max_cells=25, shard_cells=30,
    )  # fmt: skip
    _assert_same_corpus(tmp_path / "from_soma", tmp_path / "from_h5ad", [sizes[0]])


def test_a_killed_run_keeps_its_shards_and_writes_the_rest(tmp_path, atlas, monkeypatch):
    uri, _, _ = atlas
    settings = {"dataset_key": "dataset_id", "sample_key": "donor", "max_cells": 25, "shard_cells": 40}
    prepare_corpus_from_soma(uri, tmp_path / "whole", **settings)
    n_shards = len(json.loads((tmp_path / "whole" / "manifest.json").read_text())["shards"])
    written = []
    real = soma_module.write_shard

    def killed_after_two(folder, index, sets):
        if len(written) == 2:
            raise KeyboardInterrupt  # as a kill would, between two shards
        written.append(index)
        return real(folder, index, sets)

    monkeypatch.setattr(soma_module, "write_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus_from_soma(uri, tmp_path / "resumed", **settings)
    work = tmp_path / ".resumed.soma-work"
    assert sorted(p.name for p in (work / "shards").iterdir()) == ["shard-00000.npz", "shard-00001.npz"]
    assert not (tmp_path / "resumed").exists()

    def counted(folder, index, sets):
        written.append(index)
        return real(folder, index, sets)

    monkeypatch.setattr(soma_module, "write_shard", counted)
    prepare_corpus_from_soma(uri, tmp_path / "resumed", **settings)
    assert written == list(range(n_shards)), "the two finished shards were kept, the rest written once"
    assert not work.exists()
    for ours, whole in zip(_shards(tmp_path / "resumed"), _shards(tmp_path / "whole"), strict=True):
        for key in (*SHARD_KEYS, "source_rows"):
            np.testing.assert_array_equal(ours[key], whole[key])


def test_a_failure_while_the_corpus_is_finished_keeps_every_shard(tmp_path, atlas, monkeypatch):
    uri, _, _ = atlas
    settings = {"dataset_key": "dataset_id", "max_cells": 25, "shard_cells": 40}
    monkeypatch.setattr(soma_module, "write_manifest", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        prepare_corpus_from_soma(uri, tmp_path / "corpus", **settings)
    monkeypatch.undo()
    kept = sorted(p.name for p in (tmp_path / ".corpus.soma-work" / "shards").iterdir())
    assert kept and not (tmp_path / "corpus").exists()
    monkeypatch.setattr(soma_module, "write_shard", lambda *a: pytest.fail("wrote a shard again"))
    prepare_corpus_from_soma(uri, tmp_path / "corpus", **settings)
    assert sorted(p.name for p in (tmp_path / "corpus" / "shards").iterdir()) == kept
    assert Corpus(tmp_path / "corpus").verify() == []


def test_an_unfinished_run_of_other_settings_is_started_over(tmp_path, atlas, monkeypatch, caplog):
    uri, _, _ = atlas
    monkeypatch.setattr(soma_module, "write_shard", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus_from_soma(uri, tmp_path / "corpus", dataset_key="dataset_id", max_cells=25, shard_cells=40)
    monkeypatch.undo()
    prepare_corpus_from_soma(uri, tmp_path / "corpus", dataset_key="dataset_id", max_cells=30, shard_cells=40)
    assert "holds an unfinished run (other settings): starting over" in caplog.text
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert manifest["settings"]["max_cells"] == 30
    assert max(np.diff(_shards(tmp_path / "corpus")[0]["set_offsets"])) <= 30


def test_cli_builds_the_same_corpus(tmp_path, atlas):
    uri, _, _ = atlas
    args = ["--soma", uri, "--dataset-key", "dataset_id", "--sample-key", "donor", "--max-cells", "25"]
    assert main(["prepare-corpus", *args, "--out", str(tmp_path / "cli")]) == 0
    prepare_corpus_from_soma(uri, tmp_path / "api", dataset_key="dataset_id", sample_key="donor", max_cells=25)
    for ours, api in zip(_shards(tmp_path / "cli"), _shards(tmp_path / "api"), strict=True):
        for key in (*SHARD_KEYS, "source_rows"):
            np.testing.assert_array_equal(ours[key], api[key])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uri": "missing"}, "no SOMA experiment at"),
        ({"uri": "plain"}, "no SOMA experiment at"),
        ({"uri": "collection"}, "is a SOMA Collection, not an Experiment"),
        ({"measurement": "ATAC"}, "measurement 'ATAC' not found; the experiment has ['RNA']"),
        ({"layer": "counts"}, "X layer 'counts' not found in measurement 'RNA'; it has ['raw']"),
        ({"gene_key": "feature_id"}, "var column 'feature_id' not found"),
        ({"sample_key": "patient"}, "obs column 'patient' not found"),
        ({"obs_filter": "dataset_id == 'z'"}, "the obs filter \"dataset_id == 'z'\" selects no cell"),
        ({"obs_filter": "dataset_id ==="}, "cannot be applied"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, atlas, change, message):
    uri, _, _ = atlas
    (tmp_path / "plain").mkdir()
    tiledbsoma.Collection.create(str(tmp_path / "collection")).close()
    given = {"uri": uri} | change
    if given["uri"] != uri:
        given["uri"] = str(tmp_path / given["uri"])
    before = sorted(tmp_path.iterdir())
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        prepare_corpus_from_soma(given.pop("uri"), tmp_path / "corpus", dataset_key="dataset_id", **given)
    assert message in str(err.value)
    assert sorted(tmp_path.iterdir()) == before, "nothing written"


def test_a_refused_run_into_a_new_folder_leaves_no_folder(tmp_path, atlas, atlas_model):
    uri, _, _ = atlas
    model, _ = atlas_model
    with pytest.raises(ValueError, match="measurement 'ATAC' not found"):
        prepare_corpus_from_soma(uri, tmp_path / "new" / "deeper" / "corpus", measurement="ATAC")
    with pytest.raises(ValueError, match="selects no cell"):
        model.embed_soma(uri, tmp_path / "new" / "deeper" / "out.h5ad", obs_filter="donor == 'nobody'")
    assert list(tmp_path.iterdir()) == []


def test_values_that_are_not_counts_are_refused_and_leave_nothing(tmp_path):
    uri = str(tmp_path / "experiment")
    adata = ad.AnnData(np.full((4, 3), 0.5, dtype=np.float32), var=pd.DataFrame(index=["A", "B", "C"]))
    adata.obs_names = [f"c{i}" for i in range(4)]
    adata.var["feature_name"] = adata.var_names
    tiledbsoma.io.from_anndata(uri, adata, measurement_name="RNA", X_layer_name="raw")
    with pytest.raises(ValueError, match="values are not raw counts"):
        prepare_corpus_from_soma(uri, tmp_path / "corpus")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment"]


def test_a_second_run_into_the_same_output_fails_at_once(tmp_path, atlas, monkeypatch, held_elsewhere):
    uri, _, _ = atlas
    held_elsewhere(tmp_path / "corpus")
    monkeypatch.setattr(soma_module, "open_experiment", lambda *a, **k: pytest.fail("opened the experiment first"))
    with pytest.raises(OutputInUseError, match="corpus is being written by another run"):
        prepare_corpus_from_soma(uri, tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()


def test_cli_needs_files_or_a_soma_source_not_both(tmp_path, atlas, caplog):
    uri, paths, _ = atlas
    with caplog.at_level(logging.ERROR):
        assert main(["prepare-corpus", str(paths[0]), "--soma", uri, "--out", str(tmp_path / "c")]) == 2
        assert main(["prepare-corpus", "--out", str(tmp_path / "c")]) == 2
    assert "give input files, or --soma URI / --census VERSION, not both" in caplog.text
    assert "give the input files, or --soma URI / --census VERSION" in caplog.text
    with caplog.at_level(logging.ERROR):
        assert main(["embed", str(paths[0]), "--soma", uri, "--out", str(tmp_path / "c.h5ad")]) == 2
        assert main(["embed", "--out", str(tmp_path / "c.h5ad")]) == 2
    assert main(["prepare-corpus", str(paths[0]), "--obs-filter", "x == 1", "--out", str(tmp_path / "c")]) == 2
    assert "--obs-filter read a SOMA experiment: give --soma URI or --census VERSION, or drop them" in caplog.text
    assert not (tmp_path / "c").exists()


def test_without_tiledbsoma_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiledbsoma", None)
    with pytest.raises(ImportError, match=r"pip install 'opencellplm\[soma\]'"):
        prepare_corpus_from_soma(str(tmp_path / "x"), tmp_path / "corpus")


# ------------------------------------------------------------------------------------------------------- embedding
@pytest.fixture(scope="module")
def atlas_model(atlas, tmp_path_factory):
    from .conftest import small_model

    model = small_model([f"G{i}" for i in range(0, 24)])
    folder = model.save(tmp_path_factory.mktemp("model") / "ckpt")
    return CellPLM.from_pretrained(folder), folder


def test_embedding_a_query_equals_embedding_the_file_it_came_from(tmp_path, atlas, atlas_model):
    uri, paths, _ = atlas
    model, _ = atlas_model
    settings = {"sample_key": "donor", "max_cells": 25, "precision": "fp32"}
    model.embed_file(paths[1], tmp_path / "file.h5ad", **settings)
    model.embed_soma(uri, tmp_path / "soma.zarr", obs_filter="dataset_id == 'b'", block_cells=13, **settings)
    from_file, from_soma = ad.read_h5ad(tmp_path / "file.h5ad"), ad.read_zarr(tmp_path / "soma.zarr")
    np.testing.assert_array_equal(from_soma.obsm["X_cellplm"], from_file.obsm["X_cellplm"])
    assert list(from_soma.obs_names) == list(from_file.obs_names)
    assert from_soma.obs["donor"].astype(str).tolist() == from_file.obs["donor"].astype(str).tolist()
    assert from_soma.obs["soma_joinid"].tolist() == list(range(90, 150))
    assert list(from_soma.var_names[from_soma.X.sum(0).A1 > 0]) == [f"G{i}" for i in range(8, 20)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.h5ad", "soma.zarr"], "the exported query is gone"


def test_a_killed_run_keeps_the_exported_query(tmp_path, atlas, atlas_model, monkeypatch):
    uri, _, _ = atlas
    model, _ = atlas_model
    real = CellPLM.embed_file
    monkeypatch.setattr(CellPLM, "embed_file", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        model.embed_soma(uri, tmp_path / "out.h5ad", sample_key="donor")
    exported = tmp_path / ".out.h5ad.parts" / "query.h5ad"
    assert exported.is_file() and not (tmp_path / "out.h5ad").exists()
    import h5py

    with h5py.File(exported) as f:  # 64-bit offsets: an atlas holds more than 2**31 counts
        assert f["X/indptr"].dtype == np.int64 and f["X/indptr"][-1] == f["X/data"].shape[0]
    monkeypatch.setattr(CellPLM, "embed_file", real)
    monkeypatch.setattr(soma_module, "_read_block", lambda *a, **k: pytest.fail("read the experiment again"))
    model.embed_soma(uri, tmp_path / "out.h5ad", sample_key="donor")
    assert ad.read_h5ad(tmp_path / "out.h5ad").obsm["X_cellplm"].shape[0] == 220
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gene_key": "ensembl"}, "none of the 21 genes in var['ensembl'] of the experiment is in the model's"),
        ({"obs_filter": "donor == 'nobody'"}, "selects no cell"),
        ({"layer": "normalized"}, "X layer 'normalized' not found"),
        ({"measurement": "protein"}, "measurement 'protein' not found"),
        ({"sample_key": "patient"}, "obs column 'patient' not found"),
        ({"key_added": "spatial"}, "obsm['spatial'] holds the coordinates read"),
    ],
)
def test_embedding_refuses_bad_input_before_writing(tmp_path, atlas, atlas_model, change, message):
    uri, _, _ = atlas
    model, _ = atlas_model
    with pytest.raises(ValueError) as err:
        model.embed_soma(uri, tmp_path / "out.h5ad", **change)
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_two_processes_embed_a_query_as_one_does(tmp_path, atlas, atlas_model):
    import os
    import subprocess

    from .conftest import REPO

    uri, _, _ = atlas
    model, folder = atlas_model
    flags = ["--soma", uri, "--checkpoint", str(folder), "--sample-key", "donor", "--max-cells", "25"]
    flags += ["--precision", "fp32"]
    assert main(["embed", *flags, "--out", str(tmp_path / "one.h5ad")]) == 0
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "-m", "opencellplm", "embed", *flags]
    done = subprocess.run([*command, "--out", str(tmp_path / "two.h5ad")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = ad.read_h5ad(tmp_path / "one.h5ad"), ad.read_h5ad(tmp_path / "two.h5ad")
    assert np.array_equal(one.obsm["X_cellplm"], two.obsm["X_cellplm"], equal_nan=True)
    assert one.uns["cellplm"]["X_cellplm"]["n_cell_sets"] > 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5ad", "two.h5ad"]


def test_folders_in_the_way_that_are_not_ours_are_refused_and_kept(tmp_path, atlas, atlas_model):
    uri, _, _ = atlas
    model, _ = atlas_model
    (tmp_path / ".corpus.soma-work").mkdir()
    (tmp_path / ".corpus.soma-work" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="is not a work folder of opencellplm; remove it yourself"):
        prepare_corpus_from_soma(uri, tmp_path / "corpus", dataset_key="dataset_id")
    (tmp_path / ".out.h5ad.parts").mkdir()
    (tmp_path / ".out.h5ad.parts" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="opencellplm did not make it"):
        model.embed_soma(uri, tmp_path / "out.h5ad")
    assert (tmp_path / ".corpus.soma-work" / "mine.txt").read_text() == "keep"
    assert (tmp_path / ".out.h5ad.parts" / "mine.txt").read_text() == "keep"
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "out.h5ad").exists()


# ---------------------------------------------------------------------------------------------- the Census's layout
class _CensusRoot:
    """What ``cellxgene_census.open_soma`` returns, as far as this package reads it: ``census_data[organism]``
    (the experiment) and ``census_info['datasets']`` (a data set's ``soma_joinid`` per ``dataset_id``)."""

    def __init__(self, experiment, dataset_ids: list[str]):
        import pyarrow as pa

        table = pa.table({"soma_joinid": list(range(len(dataset_ids))), "dataset_id": dataset_ids})
        datasets = SimpleNamespace(read=lambda column_names: SimpleNamespace(concat=lambda: table.select(column_names)))
        self.groups = {"census_data": {"homo_sapiens": experiment}, "census_info": {"datasets": datasets}}

    def __getitem__(self, key):
        return self.groups[key]


def test_a_census_corpus_keeps_the_genes_each_data_set_measured(tmp_path, monkeypatch):
    """In the Census layout, a data set's genes come from the presence matrix: one it measured without a single
    count stays, as from its h5ad file; a local experiment (no such record) keeps the genes with counts."""
    import contextlib
    import types

    import pyarrow as pa

    (tmp_path / "atlas").mkdir()
    uri, paths, sizes = _atlas(tmp_path / "atlas", gene_left_at_zero="G19")
    with tiledbsoma.open(uri) as experiment:
        var = experiment.ms["RNA"].var.read().concat().to_pandas()
    joinid = dict(zip(var["var_id"], var["soma_joinid"]))
    measured = [[f"G{i}" for i in range(12)], [f"G{i}" for i in range(8, 20)],
                [f"G{i}" for i in range(6, 14)] + ["NegControlProbe_1"]]  # fmt: skip
    rows = [d for d, genes in enumerate(measured) for _ in genes]
    columns = [joinid[g] for genes in measured for g in genes]
    with tiledbsoma.open(f"{uri}/ms/RNA", mode="w") as ms:
        presence = ms.add_new_sparse_ndarray(soma_module.PRESENCE, type=pa.bool_(), shape=(3, len(var)))
        presence.write(pa.table({"soma_dim_0": pa.array(rows, pa.int64()), "soma_dim_1": pa.array(columns, pa.int64()),
                                 "soma_data": pa.array([True] * len(rows))}))  # fmt: skip
    census = types.ModuleType("cellxgene_census")

    @contextlib.contextmanager
    def open_soma(census_version):
        assert census_version == "2025-01-30"
        with tiledbsoma.open(uri) as experiment:
            yield _CensusRoot(experiment, ["a", "b", "c"])

    census.open_soma = open_soma
    monkeypatch.setitem(sys.modules, "cellxgene_census", census)
    settings = {"sample_key": "donor", "max_cells": 25, "shard_cells": 60}
    prepare_corpus(paths, tmp_path / "from_h5ad", **settings)
    manifest = prepare_corpus_from_soma(None, tmp_path / "from_census", census="2025-01-30", **settings)
    _assert_same_corpus(tmp_path / "from_census", tmp_path / "from_h5ad", [0, sizes[0], sizes[0] + sizes[1]])
    assert json.loads(manifest.read_text())["settings"]["dataset_key"] == "dataset_id"  # the Census's default
    prepare_corpus_from_soma(uri, tmp_path / "local", dataset_key="dataset_id", **settings)
    local = (tmp_path / "local" / "datasets" / "1.genes.txt").read_text().split()
    assert local == [f"G{i}" for i in range(8, 19)]  # G19 has no count in b: no record says b measured it
