"""Writing outputs loses nothing: --overwrite replaces only what this package wrote, a killed write
leaves no debris that later runs ignore, and written files follow the umask."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from opencellplm import CellPLM, CellPLMModule
from opencellplm._files import write_directory
from opencellplm.cli import main
from opencellplm.data.corpus import corpus_problems, prepare_corpus
from opencellplm.io.checkpoint import checkpoint_problems

from .conftest import vocabulary
from .official_files import official_config, write_official


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return CellPLM(CellPLMModule(tiny_config), vocabulary(tiny_config.n_genes))


def test_prepare_corpus_overwrite_never_deletes_a_folder_holding_its_input(tmp_path, tiny_adata, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    tiny_adata.write_h5ad(folder / "a.h5ad")
    (folder / "notes.txt").write_text("my notes")
    before = snapshot(folder)
    with caplog.at_level(logging.ERROR):
        code = main(["prepare-corpus", str(folder / "a.h5ad"), "--out", str(folder), "--overwrite"])
    assert code == 2
    assert f"{folder} holds an input of this command ({folder / 'a.h5ad'}); write the corpus elsewhere" in caplog.text
    assert snapshot(folder) == before


def test_prepare_corpus_overwrite_never_deletes_a_foreign_folder(tmp_path, tiny_adata, caplog):
    tiny_adata.write_h5ad(tmp_path / "a.h5ad")
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with caplog.at_level(logging.ERROR):
        code = main(["prepare-corpus", str(tmp_path / "a.h5ad"), "--out", str(out), "--overwrite"])
    assert code == 2
    assert "is not a corpus written by opencellplm, so overwrite will not replace it" in caplog.text
    assert "no manifest.json declaring format 'opencellplm-corpus'" in caplog.text
    assert snapshot(out) == {out.joinpath("notes.txt").relative_to(out): b"my notes"}


def test_overwrite_replaces_our_corpus_but_not_one_with_a_file_added(tmp_path, tiny_adata):
    tiny_adata.write_h5ad(tmp_path / "a.h5ad")
    out = tmp_path / "corpus"
    prepare_corpus([tmp_path / "a.h5ad"], out)
    assert corpus_problems(out) == []
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        prepare_corpus([tmp_path / "a.h5ad"], out)
    prepare_corpus([tmp_path / "a.h5ad"], out, overwrite=True, max_cells=10)  # ours: replaced
    assert corpus_problems(out) == []
    (out / "shards" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not a corpus written by opencellplm, .*it holds shards/keep.txt"):
        prepare_corpus([tmp_path / "a.h5ad"], out, overwrite=True)
    assert (out / "shards" / "keep.txt").read_text() == "mine"


def test_convert_official_overwrite_never_deletes_the_checkpoint_it_reads(tmp_path, caplog):
    folder = tmp_path / "ckpts"
    prefix = write_official(folder / "tiny", official_config(n_genes=50))
    before = snapshot(folder)
    with caplog.at_level(logging.ERROR):
        code = main(["convert-official", str(prefix), "--out", str(folder), "--overwrite"])
    assert code == 2
    assert "holds an input of this command" in caplog.text and "tiny.config.json" in caplog.text
    assert snapshot(folder) == before


def test_save_overwrite_replaces_only_our_checkpoint(tmp_path, model):
    target = tmp_path / "ckpt"
    model.save(target)
    model.save(target, overwrite=True)  # ours: replaced
    (target / "notes.txt").write_text("mine")
    assert checkpoint_problems(target) == ["it holds notes.txt"]
    with pytest.raises(FileExistsError, match=r"not a checkpoint written by opencellplm, .*\(it holds notes.txt\)"):
        model.save(target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "meta.json").write_text('{"format": "something else"}')
    with pytest.raises(FileExistsError, match="no meta.json declaring format 'opencellplm-checkpoint'"):
        model.save(foreign, overwrite=True)
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        model.save(foreign / "meta.json", overwrite=True)
    assert (foreign / "meta.json").read_text() == '{"format": "something else"}'


def test_out_dot_is_refused_as_it_would_replace_the_current_folder(tmp_path, tiny_adata, monkeypatch, caplog):
    """Even an empty current folder: the folder is replaced as a whole, which leaves the shell in a deleted folder."""
    tiny_adata.write_h5ad(tmp_path / "a.h5ad")
    work = tmp_path / "corpus"
    work.mkdir()
    monkeypatch.chdir(work)
    with caplog.at_level(logging.ERROR):
        assert main(["prepare-corpus", str(tmp_path / "a.h5ad"), "--out", "."]) == 2
    assert "is the current folder or holds it" in caplog.text and list(work.iterdir()) == []
    assert main(["prepare-corpus", str(tmp_path / "a.h5ad"), "--out", "corpus"]) == 0  # a new folder below it
    assert corpus_problems(work / "corpus") == []


def test_a_killed_write_leaves_debris_that_the_next_write_removes(tmp_path, caplog):
    target = tmp_path / "out"
    code = (
        "import sys, time; from pathlib import Path; from opencellplm._files import write_directory\n"
        "def fill(folder):\n"
        "    (folder / 'big.bin').write_bytes(bytes(1000))\n"
        "    print('filling', flush=True)\n"
        "    time.sleep(60)\n"
        f"write_directory(Path({str(target)!r}), fill, overwrite=False, recognise=lambda p: [], kind='test')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "filling"
    leftovers = list(tmp_path.glob(".out.partial-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "big.bin").exists()
    # While the writer lives, its folder is left alone (and mentioned).
    with caplog.at_level(logging.WARNING):
        write_directory(tmp_path / "other", lambda f: None, overwrite=False, recognise=lambda p: [], kind="test")
        with pytest.raises(FileExistsError, match="is being written by another run"):  # at once
            write_directory(target, lambda f: None, overwrite=False, recognise=lambda p: [], kind="test")
    assert leftovers[0].exists() and "may still be going" not in caplog.text
    child.kill()
    child.wait()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        write_directory(target, lambda f: None, overwrite=True, recognise=lambda p: [], kind="test")
    assert not leftovers[0].exists()
    assert f"removed {leftovers[0]} (0.0 MB), left by a killed run" in caplog.text


def test_an_interrupted_swap_is_finished(tmp_path, model, caplog):
    """Killed between moving the old directory aside and moving the new one in: the old one is restored."""
    target = tmp_path / "ckpt"
    model.save(target)
    target.rename(tmp_path / ".ckpt.old")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(FileExistsError, match="pass overwrite=True"):
            model.save(target)
    assert "restored" in caplog.text and checkpoint_problems(target) == []
    model.save(tmp_path / "x")
    (tmp_path / "x").rename(tmp_path / ".ckpt.old")  # a stale copy beside a complete target
    model.save(target, overwrite=True)
    assert not (tmp_path / ".ckpt.old").exists()


def test_written_folders_and_files_follow_the_umask(tmp_path, model, tiny_adata):
    old = os.umask(0o002)  # a group-shared setup
    try:
        model.save(tmp_path / "ckpt")
        tiny_adata.write_h5ad(tmp_path / "a.h5ad")
        prepare_corpus([tmp_path / "a.h5ad"], tmp_path / "corpus")
    finally:
        os.umask(old)
    for folder in (tmp_path / "ckpt", tmp_path / "corpus"):
        assert folder.stat().st_mode & 0o777 == 0o775
        for path in folder.rglob("*"):
            assert path.stat().st_mode & 0o777 == (0o775 if path.is_dir() else 0o664), path


def test_embed_out_is_checked_before_any_work(tmp_path, tiny_adata, model, monkeypatch, caplog):
    model.save(tmp_path / "ckpt")
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    computed = []
    original = CellPLM._embed
    monkeypatch.setattr(CellPLM, "_embed", lambda self, *a, **k: computed.append(1) or original(self, *a, **k))
    (tmp_path / "file").write_text("x")
    args = ["embed", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path / "ckpt")]
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--out", str(tmp_path / "file" / "out.h5ad")]) == 2
    assert f"cannot write the output {tmp_path / 'file' / 'out.h5ad'}" in caplog.text and ".partial" not in caplog.text
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--out", str(tmp_path)]) == 2
    assert "is a folder; give --out the path of the file to write" in caplog.text
    assert computed == []
    # A missing folder is created.
    assert main([*args, "--out", str(tmp_path / "new" / "out.h5ad")]) == 0
    assert (tmp_path / "new" / "out.h5ad").is_file() and computed == [1]
    assert not list((tmp_path / "new").glob(".*partial"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_embed_out_in_a_read_only_folder(tmp_path, tiny_adata, model, caplog):
    model.save(tmp_path / "ckpt")
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    (tmp_path / "ro").mkdir(mode=0o555)
    args = ["embed", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path / "ckpt")]
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--out", str(tmp_path / "ro" / "out.h5ad")]) == 2
    assert "cannot write the output" in caplog.text and "Permission denied" in caplog.text


def test_embed_refuses_an_unwritable_output_before_work(tmp_path, tiny_adata, model, monkeypatch):
    """The read-only case as root can see it: creating the output file fails with EACCES."""
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    real_open = type(tmp_path).open

    def refuse(self, mode="r", *args, **kwargs):
        if self.name.endswith(".partial") and "w" in mode:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "open", refuse)
    monkeypatch.setattr(CellPLM, "_embed", lambda *a, **k: pytest.fail("embedded before checking the output"))
    with pytest.raises(PermissionError, match=r"cannot write the output .*out.h5ad: Permission denied$"):
        model.embed_file(tmp_path / "in.h5ad", tmp_path / "out.h5ad")


def test_write_new_h5ad_removes_only_its_own_partial_file(tmp_path):
    import anndata as ad
    import numpy as np

    from opencellplm.data.output import write_new_h5ad

    target = tmp_path / "out.h5ad"
    target.write_bytes(b"the user's file")
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("compute failed")

    for overwrite in (False, True):  # refused before any work: not a file this package wrote
        with pytest.raises(FileExistsError):
            write_new_h5ad(target, broken, overwrite=overwrite)
    assert not calls and target.read_bytes() == b"the user's file"
    target.unlink()
    write_new_h5ad(target, lambda: ad.AnnData(np.ones((2, 3), dtype=np.float32)))
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="compute failed"):
        write_new_h5ad(target, broken, overwrite=True)
    assert target.read_bytes() == before  # a failed run leaves the old file whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]  # and no partial file behind
    write_new_h5ad(target, lambda: ad.AnnData(np.ones((4, 3), dtype=np.float32)), overwrite=True)
    assert ad.read_h5ad(target).shape == (4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


def test_write_new_file_leaves_the_old_file_whole_when_writing_fails(tmp_path):
    from opencellplm.data.output import write_new_file

    target = tmp_path / "prediction.csv"
    target.write_text("an earlier result")
    ours = lambda path: []  # noqa: E731 - the test vouches that the file is this package's

    def half_written(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_new_file(target, half_written, overwrite=True, recognise=ours)
    assert target.read_text() == "an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prediction.csv"]
    with pytest.raises(FileExistsError):
        write_new_file(target, lambda path: path.write_text("new"), recognise=ours)
    write_new_file(target, lambda path: path.write_text("new"), overwrite=True, recognise=ours)
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["prediction.csv"]
