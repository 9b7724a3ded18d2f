"""Pretraining corpus: shards and manifest from several h5ad files, streaming split by rank."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from opencellplm.cli import main
from opencellplm.data.corpus import Corpus, CorpusDataset, prepare_corpus
from opencellplm.module.pretrain import reconstruction_loss


@pytest.fixture
def corpus_files(tmp_path):
    rng = np.random.default_rng(0)
    sc = ad.AnnData(
        rng.negative_binomial(2, 0.5, size=(90, 12)).astype(np.float32),
        obs=pd.DataFrame({"donor": np.repeat(["a", "b", "c"], 30)}, index=[f"sc{i}" for i in range(90)]),
        var=pd.DataFrame(index=[f"G{i}" for i in range(12)]),
    )
    sc.X[5] = 0  # an empty cell, left out and counted
    spatial = ad.AnnData(
        rng.negative_binomial(2, 0.5, size=(70, 8)).astype(np.float32),
        obs=pd.DataFrame({"donor": ["s"] * 70}, index=[f"sp{i}" for i in range(70)]),
        var=pd.DataFrame(index=[f"G{i}" for i in range(6, 14)]),  # overlaps the first file's genes
    )
    spatial.obsm["spatial"] = rng.random((70, 2)) * 100
    paths = [tmp_path / "sc.h5ad", tmp_path / "spatial.h5ad"]
    sc.write_h5ad(paths[0])
    spatial.write_h5ad(paths[1])
    return paths, sc, spatial


def test_prepare_and_stream_round_trip(tmp_path, corpus_files):
    paths, sc, spatial = corpus_files
    manifest_path = prepare_corpus(paths, tmp_path / "corpus", sample_key="donor", max_cells=20, shard_cells=50)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["n_cells"] == 89 + 70 and manifest["n_genes"] == 14
    assert [d["n_empty_cells_left_out"] for d in manifest["datasets"]] == [1, 0]
    assert [d["spatial_dims"] for d in manifest["datasets"]] == [None, 2]
    assert set(manifest["batches"]) == {"0:sc.h5ad/a", "0:sc.h5ad/b", "0:sc.h5ad/c", "1:spatial.h5ad/s"}
    assert len(manifest["shards"]) > 1 and all(s["n_cells"] >= 1 for s in manifest["shards"])

    vocabulary = (tmp_path / "corpus" / "genes.txt").read_text().splitlines()
    # Every set holds exactly its source cells' counts, under the right vocabulary genes.
    corpus = Corpus(tmp_path / "corpus")
    sources = {0: sc, 1: spatial}
    for shard, info in enumerate(corpus.shards):
        for k in range(info["n_sets"]):
            batch = corpus.cell_set(shard, k)
            source = sources[int(batch.dataset[0])]
            rows = corpus.source_rows(shard, k)
            genes = [vocabulary[i] for i in batch.gene_index.tolist()]
            expected = source[rows][:, genes].X
            np.testing.assert_array_equal(batch.counts.to_dense().numpy(), expected)
    sets = list(CorpusDataset(tmp_path / "corpus", shuffle=False))
    assert len(sets) == manifest["n_sets"] and all(s.n_cells <= 20 for s in sets)
    # Every cell comes back once, with its counts under the right vocabulary genes.
    total = sum(s.counts.to_dense().sum().item() for s in sets)
    assert total == pytest.approx(float(sc.X.sum() + spatial.X.sum()))
    spatial_sets = [s for s in sets if s.coords is not None]
    assert sum(s.n_cells for s in spatial_sets) == 70
    assert all(0.0 <= float(s.coords.min()) and float(s.coords.max()) <= 1.0 for s in spatial_sets)
    first = spatial_sets[0]
    assert [vocabulary[i] for i in first.gene_index.tolist()] == [f"G{i}" for i in range(6, 14)]
    assert first.dataset.unique().tolist() == [1]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_share_the_shards_without_overlap(tmp_path, corpus_files, world_size):
    paths, _, _ = corpus_files
    prepare_corpus(paths, tmp_path / "corpus", sample_key="donor", max_cells=10, shard_cells=20)
    per_rank = [
        CorpusDataset(tmp_path / "corpus", rank=r, world_size=world_size, seed=3).shard_files()
        for r in range(world_size)
    ]
    flat = [f for files in per_rank for f in files]
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert sorted(flat) == sorted(s["file"] for s in manifest["shards"])  # each shard once
    cells = sum(
        sum(b.n_cells for b in CorpusDataset(tmp_path / "corpus", rank=r, world_size=world_size))
        for r in range(world_size)
    )
    assert cells == manifest["n_cells"]


def test_rank_arguments_are_checked(tmp_path, corpus_files):
    paths, _, _ = corpus_files
    prepare_corpus(paths, tmp_path / "corpus", max_cells=10, shard_cells=50)
    with pytest.raises(ValueError, match="give both rank and world_size"):
        CorpusDataset(tmp_path / "corpus", rank=1)
    with pytest.raises(ValueError, match="shards cannot feed 9 processes"):
        CorpusDataset(tmp_path / "corpus", rank=0, world_size=9)


def test_same_file_names_in_two_folders_get_their_own_batches(tmp_path, corpus_files):
    paths, sc, _ = corpus_files
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        sc.write_h5ad(tmp_path / folder / "data.h5ad")
    manifest = prepare_corpus([tmp_path / "x" / "data.h5ad", tmp_path / "y" / "data.h5ad"], tmp_path / "c")
    assert list(json.loads(manifest.read_text())["batches"]) == ["0:data.h5ad/all", "1:data.h5ad/all"]


def test_a_bad_later_file_leaves_nothing_behind(tmp_path, corpus_files):
    paths, sc, _ = corpus_files
    sc.X[0, 0] = -1
    sc.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(ValueError, match=r"bad.h5ad cannot be used:\n- X has 1 NaN, infinite or negative"):
        prepare_corpus([paths[0], tmp_path / "bad.h5ad"], tmp_path / "c")
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.*"))


def test_epochs_reshuffle_deterministically(tmp_path, corpus_files):
    paths, _, _ = corpus_files
    prepare_corpus(paths, tmp_path / "corpus", max_cells=10, shard_cells=20)
    a = CorpusDataset(tmp_path / "corpus", seed=1)
    b = CorpusDataset(tmp_path / "corpus", seed=1)
    assert a.shard_files() == b.shard_files()
    first = [s.counts.to_dense().sum().item() for s in a]
    assert first == [s.counts.to_dense().sum().item() for s in b]
    a.set_epoch(1)
    assert [s.counts.to_dense().sum().item() for s in a] != first


def test_model_vocabulary_and_a_training_step(tmp_path, corpus_files, tiny_config):
    from opencellplm import CellPLMModule, DecoderConfig, MaskingConfig

    paths, _, _ = corpus_files
    prepare_corpus(paths, tmp_path / "corpus", sample_key="donor", max_cells=16)
    vocabulary = [f"G{i}" for i in range(10)]  # G10..G13 are left out
    config = tiny_config.replace(n_genes=10, decoder=DecoderConfig(hidden_dim=16, n_batches=4, n_datasets=2))
    module = CellPLMModule(config).train()
    for batch in CorpusDataset(tmp_path / "corpus", vocabulary=vocabulary):
        assert int(batch.gene_index.max()) < 10
        loss = reconstruction_loss(module(batch, corrupt=MaskingConfig()), masked_term=True)
        assert torch.isfinite(loss.total)
        loss.total.backward()


def test_bad_inputs(tmp_path, corpus_files):
    paths, sc, _ = corpus_files
    with pytest.raises(FileNotFoundError, match=r"input file\(s\) not found"):
        prepare_corpus([tmp_path / "nope.h5ad"], tmp_path / "c1")
    sc.X = sc.X / 2.5
    sc.write_h5ad(tmp_path / "norm.h5ad")
    with pytest.raises(ValueError, match="norm.h5ad cannot be used:\n- X holds non-integer values"):
        prepare_corpus([tmp_path / "norm.h5ad"], tmp_path / "c2")
    prepare_corpus(paths[:1], tmp_path / "c3")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        prepare_corpus(paths[:1], tmp_path / "c3")
    with pytest.raises(FileNotFoundError, match="is .* a corpus"):
        CorpusDataset(tmp_path)


def test_cli(tmp_path, corpus_files):
    paths, _, _ = corpus_files
    out = tmp_path / "corpus"
    assert main(["-q", "prepare-corpus", *map(str, paths), "--out", str(out), "--sample-key", "donor"]) == 0
    assert (out / "manifest.json").is_file()


@pytest.fixture
def corpus_dir(tmp_path, corpus_files):
    """A prepared corpus of 3 shards (59, 65 and 35 cells)."""
    paths, _, _ = corpus_files
    prepare_corpus(paths, tmp_path / "corpus", sample_key="donor", max_cells=20, shard_cells=50)
    return tmp_path / "corpus"


def _edit_manifest(corpus, edit):
    path = corpus / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _record_checksums(corpus):
    """Record the files' current sizes and hashes in the manifest (as if prepare-corpus had written them)."""

    def sha256(name):
        return hashlib.sha256((corpus / name).read_bytes()).hexdigest()

    def edit(manifest):
        manifest["vocabulary_sha256"] = sha256(manifest["vocabulary_file"])
        for d in manifest["datasets"]:
            d["genes_sha256"] = sha256(d["genes_file"])
        for s in manifest["shards"]:
            s.update(bytes=(corpus / s["file"]).stat().st_size, sha256=sha256(s["file"]))

    _edit_manifest(corpus, edit)


def _outside_npz(corpus):
    shutil.copy(corpus / "shards" / "shard-00000.npz", corpus.parent / "outside.npz")  # a valid shard
    return "../outside.npz"


def _link_to_outside(corpus):
    (corpus / "shards" / "link.npz").symlink_to(corpus.parent / _outside_npz(corpus))
    return "shards/link.npz"


@pytest.mark.parametrize(
    ("entry", "name", "problem"),
    [
        ("shards[1].file", "../../etc/passwd", "points outside the corpus folder"),
        ("shards[1].file", "/etc/passwd", "is an absolute path"),
        ("shards[1].file", _outside_npz, "points outside the corpus folder"),
        ("shards[1].file", _link_to_outside, "points outside the corpus folder"),
        ("shards[1].file", 7, "must be a path relative to the corpus folder"),
        ("datasets[0].genes_file", "/etc/passwd", "is an absolute path"),
        ("datasets[1].genes_file", "datasets/../../../../etc/passwd", "points outside the corpus folder"),
        ("vocabulary_file", "/etc/passwd", "is an absolute path"),
        ("vocabulary_file", "../genes.txt", "points outside the corpus folder"),
    ],
)
def test_manifest_paths_must_stay_inside_the_corpus(corpus_dir, entry, name, problem):
    name = name(corpus_dir) if callable(name) else name

    def edit(manifest):
        if entry.startswith("shards"):
            manifest["shards"][1]["file"] = name
        elif entry.startswith("datasets"):
            manifest["datasets"][int(entry[9])]["genes_file"] = name
        else:
            manifest["vocabulary_file"] = name

    _edit_manifest(corpus_dir, edit)
    message = re.escape(f"{corpus_dir / 'manifest.json'}: {entry}") + ".*" + re.escape(problem)
    with pytest.raises(ValueError, match=message):
        Corpus(corpus_dir)
    with pytest.raises(ValueError, match=message):
        CorpusDataset(corpus_dir)


def test_a_corpus_reached_through_a_symlink_opens(tmp_path, corpus_dir):
    (tmp_path / "link").symlink_to(corpus_dir)
    (corpus_dir / "shards" / "alias.npz").symlink_to(corpus_dir / "shards" / "shard-00001.npz")
    _edit_manifest(corpus_dir, lambda m: m["shards"][1].update(file="shards/alias.npz"))
    corpus = Corpus(tmp_path / "link")
    assert corpus.cell_set(1, 0).n_cells > 0


def _rewrite_shard(corpus, index, change):
    """Apply ``change`` to the arrays of shard ``index`` and save them again."""
    path = corpus / "shards" / f"shard-{index:05d}.npz"
    with np.load(path) as npz:
        arrays = dict(npz)
    change(arrays)
    np.savez(path, **arrays)
    _record_checksums(corpus)


def _truncate(corpus, index):
    path = corpus / "shards" / f"shard-{index:05d}.npz"
    path.write_bytes(path.read_bytes()[:-100])
    _record_checksums(corpus)


def _set(name, value):
    return lambda arrays: arrays.__setitem__(name, value(arrays[name]))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(
            _set("batch", lambda a: np.array([{"x": 1}] * len(a), dtype=object)),
            "not a readable npz .*Object arrays",
            id="pickled",
        ),
        pytest.param(None, r"not a readable npz \(truncated, or not a zip archive\)", id="truncated"),
        pytest.param(lambda a: a.pop("coords"), "array 'coords' is missing", id="missing-array"),
        pytest.param(_set("indices", lambda a: a.astype(np.int64)), "array 'indices' is int64, not int32", id="dtype"),
        pytest.param(
            _set("batch", lambda a: a[:-1]), r"array 'batch' has shape \(58,\), not \(59,\)", id="shape-batch"
        ),
        pytest.param(
            _set("coords", lambda a: a[:, :2]), r"array 'coords' has shape \(59, 2\), not \(59, 3\)", id="shape-coords"
        ),
        pytest.param(
            _set("set_offsets", lambda a: a[:-1]),
            "holds 3 sets of 44 cells, the manifest records 4 sets of 59 cells",
            id="n-sets",
        ),
        pytest.param(_set("indptr", lambda a: a[::-1]), "indptr is not 60 offsets that start at 0", id="indptr"),
        pytest.param(_set("dataset", lambda a: a + 5), r"data set ids \[5\] are not in the manifest", id="dataset-id"),
        pytest.param(
            _set("n_genes", lambda a: a + 1), "n_genes differs from the gene counts of the data sets", id="n-genes"
        ),
        pytest.param(_set("indices", lambda a: a + 12), r"set 0 has gene indices outside \[0, 12\)", id="gene-index"),
        pytest.param(_set("batch", lambda a: a + 4), r"batch ids outside \[0, 4\)", id="batch-id"),
    ],
)
def test_a_broken_shard_is_named_with_its_problem(corpus_dir, change, problem):
    if change is None:
        _truncate(corpus_dir, 0)
    else:
        _rewrite_shard(corpus_dir, 0, change)
    message = re.escape(str(corpus_dir / "shards" / "shard-00000.npz")) + ": " + problem
    corpus = Corpus(corpus_dir)
    with pytest.raises(ValueError, match=message):
        corpus.cell_set(0, 0)
    with pytest.raises(ValueError, match=message):
        list(CorpusDataset(corpus_dir, shuffle=False))


def _remove_key(key):
    return lambda m: m.pop(key)


@pytest.mark.parametrize(
    ("edit", "file", "problem"),
    [
        pytest.param("{not json", "manifest.json", r"not valid JSON \(Expecting property name", id="not-json"),
        pytest.param(b"\xff\xfe{}", "manifest.json", "not valid JSON", id="not-utf8"),
        pytest.param("[1, 2]", "manifest.json", r"not a manifest \(a JSON list, not an object\)", id="not-object"),
        pytest.param(_remove_key("shards"), "manifest.json", "no 'shards'", id="no-shards"),
        pytest.param(_remove_key("vocabulary_file"), "manifest.json", "no 'vocabulary_file'", id="no-vocabulary"),
        pytest.param(
            lambda m: m["shards"][2].pop("n_cells"), "manifest.json", "shards\\[2\\] has no 'n_cells'", id="shard-key"
        ),
        pytest.param(
            lambda m: m["datasets"][1].pop("genes_file"),
            "manifest.json",
            "datasets\\[1\\] has no 'genes_file'",
            id="dataset-key",
        ),
        pytest.param(
            lambda m: m.update(datasets={}), "manifest.json", "'datasets' is not a list of objects", id="datasets-type"
        ),
        pytest.param(
            lambda m: m["shards"][0].update(n_sets="2"),
            "manifest.json",
            "shards\\[0\\].n_sets is '2', not a count",
            id="count-type",
        ),
        pytest.param(
            lambda m: m["shards"][0].update(n_sets=9),
            "manifest.json",
            "n_sets is \\d+ but the shards hold \\d+",
            id="count-sum",
        ),
        pytest.param(
            lambda m: m["datasets"][1].update(id=0),
            "manifest.json",
            "data set ids \\[0, 0\\] repeat",
            id="repeated-ids",
        ),
        pytest.param(
            lambda m: m["shards"].pop(), "manifest.json", "n_sets is \\d+ but the shards hold \\d+", id="shard-list"
        ),
        pytest.param(
            lambda m: m["shards"][1].pop("sha256"),
            "manifest.json",
            r"shards\[1\].sha256 is None, not a sha256",
            id="no-hash",
        ),
        pytest.param(
            lambda m: m["datasets"][0].update(genes_sha256="abc"),
            "manifest.json",
            r"datasets\[0\].genes_sha256 is 'abc', not a sha256",
            id="bad-hash",
        ),
        pytest.param(
            lambda m: m["shards"][0].update(bytes=-1),
            "manifest.json",
            r"shards\[0\].bytes is -1, not a count",
            id="bytes",
        ),
    ],
)
def test_a_broken_manifest_is_named_with_its_problem(corpus_dir, edit, file, problem):
    path = corpus_dir / "manifest.json"
    if isinstance(edit, str):
        path.write_text(edit)
    elif isinstance(edit, bytes):
        path.write_bytes(edit)
    else:
        _edit_manifest(corpus_dir, edit)
    with pytest.raises(ValueError, match=re.escape(str(corpus_dir / file)) + ": .*" + problem):
        Corpus(corpus_dir)


def test_missing_or_unreadable_files_of_the_corpus_are_named(corpus_dir):
    def fails(file, problem):
        with pytest.raises(ValueError, match=re.escape(f"{corpus_dir / file}: {problem}")):
            Corpus(corpus_dir)

    genes = (corpus_dir / "datasets" / "0.genes.txt").read_text()
    (corpus_dir / "datasets" / "0.genes.txt").write_text(genes + "EXTRA\n")
    _record_checksums(corpus_dir)
    fails("datasets/0.genes.txt", "13 genes, the manifest records 12")
    (corpus_dir / "datasets" / "0.genes.txt").write_text(genes)
    vocabulary = (corpus_dir / "genes.txt").read_bytes()
    (corpus_dir / "genes.txt").write_bytes(b"\xff\xfe")
    _record_checksums(corpus_dir)
    fails("genes.txt", "not UTF-8 text")
    (corpus_dir / "genes.txt").write_bytes(vocabulary)
    _record_checksums(corpus_dir)
    (corpus_dir / "datasets" / "1.genes.txt").unlink()
    fails("datasets/1.genes.txt", "cannot be read (No such file or directory)")
    (corpus_dir / "shards" / "shard-00001.npz").unlink()
    (corpus_dir / "shards" / "shard-00002.npz").unlink()
    fails("shards/shard-00001.npz", f"missing\n{corpus_dir / 'shards' / 'shard-00002.npz'}: missing")


def _sha256_hex(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_records_sizes_and_checksums(corpus_dir):
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    assert manifest["vocabulary_sha256"] == _sha256_hex(corpus_dir / "genes.txt")
    assert [d["genes_sha256"] for d in manifest["datasets"]] == [
        _sha256_hex(corpus_dir / "datasets" / f"{i}.genes.txt") for i in (0, 1)
    ]
    for shard in manifest["shards"]:
        path = corpus_dir / shard["file"]
        assert shard["bytes"] == path.stat().st_size and shard["sha256"] == _sha256_hex(path)


def test_a_shard_replaced_by_a_copy_of_another_is_refused_when_the_corpus_opens(corpus_dir):
    shards = corpus_dir / "shards"
    recorded = json.loads((corpus_dir / "manifest.json").read_text())["shards"][1]["bytes"]
    shutil.copy(shards / "shard-00000.npz", shards / "shard-00001.npz")
    size = (shards / "shard-00001.npz").stat().st_size
    message = f"{shards / 'shard-00001.npz'}: {size} bytes, the manifest records {recorded}; the file changed"
    with pytest.raises(ValueError, match=re.escape(message)):
        Corpus(corpus_dir)
    with pytest.raises(ValueError, match=re.escape(message)):
        CorpusDataset(corpus_dir)


def test_a_changed_file_of_the_same_size_is_refused_by_its_hash(corpus_dir):
    path = corpus_dir / "shards" / "shard-00001.npz"
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 1  # one bit of the counts
    path.write_bytes(content)
    corpus = Corpus(corpus_dir)  # the sizes agree
    corpus.cell_set(0, 0)
    hashes = r"sha256 [0-9a-f]{16}\.\.\. differs from [0-9a-f]{16}\.\.\. in the manifest; the file changed after"
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + hashes):
        corpus.cell_set(1, 0)
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + hashes):
        list(CorpusDataset(corpus_dir, shuffle=False))
    genes = corpus_dir / "datasets" / "1.genes.txt"
    genes.write_text(genes.read_text().replace("G6", "G7"))
    with pytest.raises(ValueError, match=re.escape(f"{genes}: ") + hashes):
        Corpus(corpus_dir)


def test_each_shard_is_hashed_at_its_first_read_only(corpus_dir, monkeypatch):
    from opencellplm.data import corpus as corpus_module

    hashed, read = [], []
    sha256, read_npz = corpus_module.sha256_of, corpus_module._read_npz
    monkeypatch.setattr(corpus_module, "sha256_of", lambda path: hashed.append(Path(path).name) or sha256(path))
    monkeypatch.setattr(corpus_module, "_read_npz", lambda path: read.append(Path(path).name) or read_npz(path))
    corpus = Corpus(corpus_dir, cache_shards=1)
    assert hashed == ["genes.txt", "0.genes.txt", "1.genes.txt"] and read == []  # shards: a stat each
    hashed.clear()
    for shard in (0, 1, 0, 1, 2, 0):
        corpus.cell_set(shard, 0)
    assert len(read) == 6  # the LRU keeps one shard: every read goes to disk...
    assert hashed == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]  # ...but each is hashed once


def test_a_manifest_without_checksums_loads_with_one_warning(corpus_dir):
    def strip(manifest):
        manifest.pop("vocabulary_sha256")
        for d in manifest["datasets"]:
            d.pop("genes_sha256")
        for s in manifest["shards"]:
            del s["bytes"], s["sha256"]

    _edit_manifest(corpus_dir, strip)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = Corpus(corpus_dir)
        sets = [corpus.cell_set(shard, 0) for shard in range(3) for _ in range(2)]
    assert len(caught) == 1
    assert str(caught[0].message).startswith(f"{corpus_dir / 'manifest.json'} records no checksums")
    assert all(s.n_cells > 0 for s in sets)


def test_verify_corpus_lists_every_changed_file(tmp_path, corpus_dir, capsys):
    assert Corpus(corpus_dir).verify() == []
    assert main(["verify-corpus", str(corpus_dir)]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"{corpus_dir}\n159 cells in 10 sets, 3 shards, 2 data sets, 14 genes\n"
        "checked: the sha256 of every file, the arrays of every shard\nintact: yes\n"
    )
    corpus = Corpus(corpus_dir)
    genes, shard = corpus_dir / "datasets" / "0.genes.txt", corpus_dir / "shards" / "shard-00002.npz"
    genes.write_text(genes.read_text().replace("G1\n", "G2\n"))
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 1
    shard.write_bytes(content)
    problems = corpus.verify()
    assert len(problems) == 2
    assert problems[0].startswith(f"{genes}: sha256") and problems[1].startswith(f"{shard}: sha256")
    assert main(["verify-corpus", str(corpus_dir)]) == 1  # the genes file already stops the corpus from opening
    assert capsys.readouterr().out == f"{corpus_dir}\nerror: {problems[0]}\nintact: no\n"

    shutil.copy(corpus_dir / "shards" / "shard-00000.npz", shard)
    genes.write_text(genes.read_text().replace("G2\n", "G1\n", 1))
    assert main(["verify-corpus", str(corpus_dir)]) == 1
    assert f"error: {shard}: " in capsys.readouterr().out
    assert main(["verify-corpus", str(tmp_path)]) == 2  # not a corpus


def test_verify_corpus_without_checksums_checks_the_arrays(corpus_dir, capsys):
    def strip(manifest):
        manifest.pop("vocabulary_sha256")
        for d in manifest["datasets"]:
            d.pop("genes_sha256")
        for s in manifest["shards"]:
            del s["bytes"], s["sha256"]

    _edit_manifest(corpus_dir, strip)
    assert main(["verify-corpus", str(corpus_dir)]) == 0
    out = capsys.readouterr().out
    assert "checked: the arrays of every shard (the manifest records no checksums)" in out
    assert "warning: " in out and "records no checksums" in out and out.endswith("intact: yes\n")
    _truncate(corpus_dir, 1)  # (this records checksums again: strip them once more)
    _edit_manifest(corpus_dir, strip)
    assert main(["verify-corpus", str(corpus_dir)]) == 1
    shard = corpus_dir / "shards" / "shard-00001.npz"
    assert f"error: {shard}: not a readable npz" in capsys.readouterr().out


def test_pretraining_on_a_tampered_corpus_stops_with_the_message(corpus_dir, tmp_path, caplog):
    from dataclasses import replace

    from opencellplm import configs
    from opencellplm.train import pretrain

    model, train = configs.load("tiny")
    train = replace(train, steps=2, eval_every=1, checkpoint_every=1, precision="fp32")
    for path in (corpus_dir / "shards").glob("*.npz"):  # whichever shard the first step reads
        content = bytearray(path.read_bytes())
        content[len(content) // 2] ^= 1
        path.write_bytes(content)
    hashes = r"sha256 [0-9a-f]{16}\.\.\. differs from [0-9a-f]{16}\.\.\. in the manifest"
    with pytest.raises(ValueError, match=re.escape(str(corpus_dir / "shards")) + r"/shard-0000\d\.npz: " + hashes):
        pretrain(corpus_dir, tmp_path / "run", model=model, train=train, device="cpu")

    _edit_manifest(corpus_dir, lambda m: m["shards"][0].update(file="/etc/passwd"))
    run = ["pretrain", "--corpus", str(corpus_dir), "--config", "tiny", "--out", str(tmp_path / "cli"), "--steps", "1"]
    assert main([*run, "--device", "cpu"]) == 2
    assert f"{corpus_dir / 'manifest.json'}: shards[0].file is an absolute path (/etc/passwd)" in caplog.text


def test_gene_ids_that_cannot_be_stored_one_per_line_are_refused(tmp_path, corpus_files):
    paths, sc, _ = corpus_files
    sc.var_names = ["G0", " G1", *[f"G{i}" for i in range(2, 11)], ""]
    sc.write_h5ad(tmp_path / "padded.h5ad")
    with pytest.raises(ValueError, match=r"padded.h5ad cannot be used:\n- var_names: gene 1 \(' G1'\) has whitespace"):
        prepare_corpus([tmp_path / "padded.h5ad"], tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()
