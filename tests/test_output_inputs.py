"""No command writes over what it reads: an output that is, lies inside, or holds an input is refused with or
without --overwrite; --overwrite replaces only files this package wrote (and marked); a result key never
replaces the input's own data; one output is written by one run at a time; the current folder is never
replaced; a read-only place is one line naming it."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import anndata as ad
import numpy as np
import pytest
import torch

from opencellplm import CellPLM, CellPLMModule, pretrained
from opencellplm import _files as files_module
from opencellplm.cli import main
from opencellplm.data import output as output_module

from .conftest import vocabulary
from .official_files import official_config, write_official


def snapshot(folder):
    """Every file under ``folder`` with its bytes, and every folder (``None``): a command may add neither."""
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def error_lines(caplog) -> str:
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    caplog.clear()
    return text


@pytest.fixture
def files(tmp_path, tiny_config, tiny_adata):
    """A checkpoint folder ``ck`` (a copy of a model, as a user keeps one) and an input ``in.h5ad``."""
    torch.manual_seed(0)
    CellPLM(CellPLMModule(tiny_config), vocabulary(tiny_config.n_genes)).save(tmp_path / "ck")
    tiny_adata.obs["cell_type"] = np.where(np.arange(40) % 2, "a", "b")
    tiny_adata.layers["counts"] = tiny_adata.X.copy()
    tiny_adata.obsm["spatial"] = np.random.default_rng(0).random((40, 2)).astype(np.float32)
    tiny_adata.obsm["X_pca"] = np.ones((40, 3), dtype=np.float32)
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    return tmp_path


# ------------------------------------------------------------------------------------------ the shared check
def test_refuse_inputs_covers_an_input_a_folder_around_it_and_a_folder_inside_it(tmp_path):
    (tmp_path / "ck").mkdir()
    inputs = [tmp_path / "in.h5ad", tmp_path / "ck", None]
    with pytest.raises(ValueError, match=r"the output .*in.h5ad is an input of this command; write to another file"):
        files_module.refuse_inputs(tmp_path / "in.h5ad", inputs)
    with pytest.raises(ValueError, match=r"the output .*model.safetensors lies inside .*ck, an input of this command"):
        files_module.refuse_inputs(tmp_path / "ck" / "model.safetensors", inputs)
    with pytest.raises(ValueError, match=r"holds an input of this command \(.*\); write the corpus elsewhere"):
        files_module.refuse_inputs(tmp_path, inputs, kind="corpus")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "ck")
    with pytest.raises(ValueError, match="lies inside"):  # through a symbolic link too
        files_module.refuse_inputs(link / "model.safetensors", inputs)
    assert files_module.refuse_inputs(tmp_path / "out.h5ad", inputs) == (tmp_path / "out.h5ad").resolve()


def test_overwrite_replaces_only_files_this_package_marked(tmp_path):
    data = ad.AnnData(np.ones((2, 3), dtype=np.float32))
    foreign = {
        "user.h5ad": lambda p: data.write_h5ad(p),
        "user.json": lambda p: p.write_text('{"mine": 1}'),
        "user.txt": lambda p: p.write_text("notes"),
        "empty": lambda p: p.write_bytes(b""),
    }
    for name, write in foreign.items():
        write(tmp_path / name)
        before = (tmp_path / name).read_bytes()
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match="not a marked opencellplm output .* never replaced, even with"):
                files_module.check_output_file(tmp_path / name, overwrite=overwrite)
        assert (tmp_path / name).read_bytes() == before
    assert (
        "without opencellplm's 'opencellplm_output' mark"
        in files_module.written_file_problems(tmp_path / "user.h5ad")[0]
    )
    # What this package wrote carries its mark, and --overwrite replaces it (and only with --overwrite).
    output_module.write_new_h5ad(tmp_path / "ours.h5ad", lambda: data)
    output_module.write_json(tmp_path / "ours.json", {"score": 1})
    for name in ("ours.h5ad", "ours.json"):
        assert files_module.written_file_problems(tmp_path / name) == []
        with pytest.raises(FileExistsError, match=r"exists; pass overwrite=True \(--overwrite\) to replace it"):
            files_module.check_output_file(tmp_path / name, overwrite=False)
        files_module.check_output_file(tmp_path / name, overwrite=True)
    output_module.write_json(tmp_path / "ours.json", {"score": 2}, overwrite=True)
    assert json.loads((tmp_path / "ours.json").read_text())["score"] == 2
    assert ad.read_h5ad(tmp_path / "ours.h5ad").shape == (2, 3)
    # Saved again by other software, the mark is gone: the file is the user's now.
    ad.read_h5ad(tmp_path / "ours.h5ad").write_h5ad(tmp_path / "ours.h5ad")
    assert files_module.written_file_problems(tmp_path / "ours.h5ad")


# ----------------------------------------------------------------------------- BAD 1: every command, its inputs
def test_embed_never_writes_into_the_checkpoint_it_reads(files, caplog):
    before = snapshot(files / "ck")
    embed = ["embed", str(files / "in.h5ad"), "--checkpoint", str(files / "ck")]
    for out in ("model.safetensors", "new.h5ad", "sub/deep/new.h5ad"):
        assert main([*embed, "--out", str(files / "ck" / out), "--overwrite"]) == 2
        assert f"lies inside {files / 'ck'}, an input of this command" in error_lines(caplog)
    assert snapshot(files / "ck") == before
    # The shipped model, used without --checkpoint, is an input as well.
    shipped = pretrained.path("cellplm-small")
    assert main(["embed", str(files / "in.h5ad"), "--out", str(shipped / "x.h5ad")]) == 2
    assert "an input of this command" in error_lines(caplog) and not (shipped / "x.h5ad").exists()
    # The library call knows its own checkpoint, whoever calls it.
    model = CellPLM.from_pretrained(files / "ck")
    with pytest.raises(ValueError, match="lies inside"):
        model.embed_file(files / "in.h5ad", files / "ck" / "model.safetensors", overwrite=True)
    assert snapshot(files / "ck") == before


def test_denoise_never_writes_into_the_checkpoint_it_reads(files, caplog):
    before = snapshot(files / "ck")
    denoise = ["denoise", str(files / "in.h5ad"), "--checkpoint", str(files / "ck"), "--overwrite"]
    assert main([*denoise, "--out", str(files / "ck" / "model.safetensors")]) == 2
    assert "lies inside" in error_lines(caplog)
    assert main([*denoise, "--score", "--baselines", "unchanged", "--json", str(files / "ck" / "meta.json")]) == 2
    assert "lies inside" in error_lines(caplog)
    assert snapshot(files / "ck") == before


def test_impute_never_writes_into_its_checkpoint(files, caplog):
    before = snapshot(files / "ck")
    shutil.copy(files / "in.h5ad", files / "reference.h5ad")  # impute refuses the spatial file as its reference
    impute = ["impute", str(files / "in.h5ad"), "--reference", str(files / "reference.h5ad"), "--checkpoint"]
    assert main([*impute, str(files / "ck"), "--out", str(files / "ck" / "model.safetensors"), "--overwrite"]) == 2
    assert "lies inside" in error_lines(caplog) and snapshot(files / "ck") == before


def test_annotate_never_writes_into_the_annotator_or_checkpoint_it_reads(files, caplog):
    fit = ["annotate", "fit", str(files / "in.h5ad"), "--labels-key", "cell_type", "--checkpoint", str(files / "ck")]
    assert main([*fit, "--out", str(files / "ck" / "annotator")]) == 2  # fit: inside its checkpoint
    assert "lies inside" in error_lines(caplog) and not (files / "ck" / "annotator").exists()
    assert main([*fit, "--out", str(files / "A"), "--steps", "2"]) == 0
    before = snapshot(files / "A")
    predict = ["annotate", "predict", str(files / "in.h5ad"), "--annotator", str(files / "A"), "--overwrite"]
    for out in ("model/model.safetensors", "annotator.json"):
        assert main([*predict, "--out", str(files / "A" / out)]) == 2
        assert f"lies inside {files / 'A'}, an input of this command" in error_lines(caplog)
    score = ["annotate", "score", str(files / "in.h5ad"), "--annotator", str(files / "A"), "--labels-key", "cell_type"]
    assert main([*score, "--json", str(files / "A" / "annotator.json"), "--overwrite"]) == 2
    assert "lies inside" in error_lines(caplog)
    assert snapshot(files / "A") == before


def test_perturb_never_writes_into_the_checkpoint_or_predictor_it_reads(files, caplog):
    before = snapshot(files / "ck")
    for action, out in (("fit", "predictor"), ("score", "meta.json")):
        args = ["perturb", action, str(files / "in.h5ad"), "--checkpoint", str(files / "ck"), "--overwrite"]
        assert main([*args, "--out", str(files / "ck" / out)]) == 2
        assert "lies inside" in error_lines(caplog)
    assert snapshot(files / "ck") == before
    predict = ["perturb", "predict", str(files / "ck"), "--labels", "X", "--overwrite"]
    assert main([*predict, "--out", str(files / "ck" / "config.json")]) == 2
    assert "lies inside" in error_lines(caplog) and snapshot(files / "ck") == before


def test_pretrain_never_writes_into_its_corpus(files, caplog):
    from opencellplm.data.corpus import prepare_corpus

    prepare_corpus([files / "in.h5ad"], files / "corpus")
    before = snapshot(files / "corpus")
    for out in (files / "corpus", files / "corpus" / "run", files):
        assert main(["pretrain", "--corpus", str(files / "corpus"), "--config", "tiny", "--out", str(out)]) == 2
        assert "an input of this command" in error_lines(caplog)
    assert snapshot(files / "corpus") == before and not (files / "corpus" / "run").exists()


def test_pretrain_never_writes_into_a_folder_that_is_not_a_run(files, caplog):
    from opencellplm.data.corpus import prepare_corpus

    prepare_corpus([files / "in.h5ad"], files / "corpus")
    (files / "mine").mkdir()
    (files / "mine" / "config.json").write_text('{"mine": 1}')
    pretrain = ["pretrain", "--corpus", str(files / "corpus"), "--config", "tiny", "--steps", "1", "--out"]
    for folder in ("ck", "mine"):  # a checkpoint (its config.json), a user's folder
        before = snapshot(files / folder)
        assert main([*pretrain, str(files / folder)]) == 2
        assert "holds files that are not a training run's" in error_lines(caplog)
        assert snapshot(files / folder) == before and not (files / folder / ".lock").exists()


def test_embed_overwrite_replaces_its_own_output_but_never_a_users_file(files, caplog):
    embed = ["embed", str(files / "in.h5ad"), "--checkpoint", str(files / "ck")]
    (files / "user.h5ad").write_bytes((files / "in.h5ad").read_bytes())  # an h5ad the user wrote
    assert main([*embed, "--out", str(files / "user.h5ad"), "--overwrite"]) == 2
    assert "is not a marked opencellplm output" in error_lines(caplog)
    assert (files / "user.h5ad").read_bytes() == (files / "in.h5ad").read_bytes()
    assert main([*embed, "--out", str(files / "out.h5ad")]) == 0
    assert main([*embed, "--out", str(files / "out.h5ad")]) == 2
    assert "pass --overwrite to replace it" in error_lines(caplog)  # the CLI speaks its flags
    assert main([*embed, "--out", str(files / "out.h5ad"), "--overwrite", "--seed", "1"]) == 0
    assert sorted(p.name for p in files.iterdir() if p.name.startswith(".")) == []  # no lock or partial left


# ------------------------------------------------------------------------------------ WEAK: a key over the input
def test_a_result_key_never_replaces_the_inputs_own_data(files, caplog):
    before = (files / "in.h5ad").read_bytes()
    denoise = ["denoise", str(files / "in.h5ad"), "--checkpoint", str(files / "ck"), "--out", str(files / "d.h5ad")]
    assert main([*denoise, "--layer", "counts", "--layer-added", "counts"]) == 2
    assert "layers['counts'] is read by this command as input" in error_lines(caplog)
    assert main([*denoise, "--layer-added", "counts"]) == 2  # the counts, though X is read
    assert "the input already has layers['counts'], which opencellplm did not write" in error_lines(caplog)
    embed = ["embed", str(files / "in.h5ad"), "--checkpoint", str(files / "ck"), "--out", str(files / "e.h5ad")]
    assert main([*embed, "--key-added", "spatial"]) == 2
    assert "obsm['spatial'] is read by this command as input" in error_lines(caplog)
    assert main([*embed, "--key-added", "X_pca"]) == 2
    assert "Choose another --key-added" in error_lines(caplog)  # the CLI names its flag
    assert not (files / "d.h5ad").exists() and not (files / "e.h5ad").exists()
    assert (files / "in.h5ad").read_bytes() == before
    # A key this package wrote may be written again (embedding an output once more).
    assert main(embed) == 0
    again = ["embed", str(files / "e.h5ad"), "--checkpoint", str(files / "ck"), "--out", str(files / "e2.h5ad")]
    assert main([*again, "--seed", "1"]) == 0
    assert ad.read_h5ad(files / "e2.h5ad").uns["cellplm"]["X_cellplm"]["params"]["seed"] == 1
    # annotate predict: an obs column of the input (the labels) is never replaced.
    fit = ["annotate", "fit", str(files / "in.h5ad"), "--labels-key", "cell_type", "--checkpoint", str(files / "ck")]
    assert main([*fit, "--out", str(files / "A"), "--steps", "2"]) == 0
    predict = ["annotate", "predict", str(files / "in.h5ad"), "--annotator", str(files / "A")]
    assert main([*predict, "--out", str(files / "p.h5ad"), "--key-added", "cell_type"]) == 2
    assert "the input already has obs['cell_type']" in error_lines(caplog) and not (files / "p.h5ad").exists()
    # ... nor a column the prediction writes beside its labels (the probability of the label).
    user = ad.read_h5ad(files / "in.h5ad")
    user.obs["guess_probability"] = 0.5
    user.write_h5ad(files / "user.h5ad")
    predict = ["annotate", "predict", str(files / "user.h5ad"), "--annotator", str(files / "A")]
    assert main([*predict, "--out", str(files / "p.h5ad"), "--key-added", "guess"]) == 2
    assert "the input already has obs['guess_probability']" in error_lines(caplog) and not (files / "p.h5ad").exists()
    assert main([*predict, "--out", str(files / "p.h5ad"), "--key-added", "cellplm_label"]) == 0


# ------------------------------------------------------------------------------------- WEAK: two runs, one output
def test_a_refused_command_makes_no_folder(files, caplog):
    assert main(["embed", str(files / "missing.h5ad"), "--out", str(files / "new" / "a" / "x.h5ad")]) == 2
    assert "input file not found" in error_lines(caplog) and not (files / "new").exists()


def test_a_second_run_into_an_output_being_written_fails_at_once(files, caplog, monkeypatch, held_elsewhere):
    target = files / "out.h5ad"
    child = held_elsewhere(target)
    computed = []
    monkeypatch.setattr(CellPLM, "_embed", lambda *a, **k: computed.append(1))
    embed = ["embed", str(files / "in.h5ad"), "--checkpoint", str(files / "ck"), "--out", str(target), "--overwrite"]
    assert main(embed) == 2
    assert f"{target} is being written by another run (process {child.pid} on" in error_lines(caplog)
    assert computed == [] and not target.exists()
    child.kill()
    child.wait()
    monkeypatch.undo()
    assert main(embed) == 0  # a killed holder's lock is released by the kernel
    assert ad.read_h5ad(target).obsm["X_cellplm"].shape == (40, 8)
    assert not (files / ".out.h5ad.lock").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["annotate", "fit", "IN", "--labels-key", "cell_type", "--checkpoint", "CK", "--out", "OUT"],
        ["perturb", "fit", "IN", "--checkpoint", "CK", "--out", "OUT"],
        ["denoise", "IN", "--checkpoint", "CK", "--fine-tune", "--out", "OUT"],
        ["benchmark", "--quick", "--checkpoint", "CK", "--out", "OUT"],
    ],
    ids=["annotate fit", "perturb fit", "denoise", "benchmark"],
)
def test_a_second_run_into_an_output_fails_before_any_work(files, caplog, monkeypatch, held_elsewhere, command):
    from opencellplm.model import CellPLM as Model

    held_elsewhere(files / "busy")
    monkeypatch.setattr(Model, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model first"))
    names = {"IN": str(files / "in.h5ad"), "CK": str(files / "ck"), "OUT": str(files / "busy")}
    assert main([names.get(word, word) for word in command]) == 2
    assert "busy is being written by another run" in error_lines(caplog)
    assert not (files / "busy").exists()


def test_prepare_corpus_into_a_folder_being_written_fails_before_its_checks(files, monkeypatch, caplog, held_elsewhere):
    from opencellplm.data import corpus

    held_elsewhere(files / "corpus")
    monkeypatch.setattr(corpus, "validate", lambda *a, **k: pytest.fail("checked the inputs first"))
    assert main(["prepare-corpus", str(files / "in.h5ad"), "--out", str(files / "corpus")]) == 2
    assert "corpus is being written by another run" in error_lines(caplog)


def test_output_lock_is_reentrant_and_removed(tmp_path):
    with files_module.output_lock(tmp_path / "x.h5ad") as target, files_module.output_lock(target):
        assert (tmp_path / ".x.h5ad.lock").read_text().startswith(f"{os.getpid()} on ")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_table_it_marked_but_no_other_csv(tmp_path):
    ours, copy, theirs = tmp_path / "ours.csv", tmp_path / "copy.csv", tmp_path / "truth.csv"
    table = "perturbation,G1,G2\nA+B,0.5,1.0\n"  # the shape perturb predict writes
    ours.write_text(table)
    files_module.mark_by_attribute(ours)
    if files_module.attribute_mark_problems(ours):
        pytest.skip("this file system takes no extended attributes (an unmarked table is never replaced)")
    copy.write_bytes(ours.read_bytes())  # a copy without its attributes: the user's now
    theirs.write_text(table)  # the user's table, in the same shape
    for path in (copy, theirs):
        assert "carries no opencellplm mark" in files_module.attribute_mark_problems(path)[0]
        with pytest.raises(FileExistsError, match="not a marked opencellplm output"):
            files_module.check_output_file(path, overwrite=True, recognise=files_module.attribute_mark_problems)


# ------------------------------------------------------------------------------------ WEAK: the current folder
def test_the_current_folder_is_never_replaced(files, monkeypatch, caplog):
    work = files / "corpus"
    assert main(["prepare-corpus", str(files / "in.h5ad"), "--out", str(work)]) == 0
    before = snapshot(work)
    monkeypatch.chdir(work)
    for out in (".", str(files / "corpus")):
        assert main(["prepare-corpus", str(files / "in.h5ad"), "--out", out, "--overwrite"]) == 2
        assert "is the current folder or holds it" in error_lines(caplog)
    (work / "sub").mkdir()
    monkeypatch.chdir(work / "sub")
    assert main(["prepare-corpus", str(files / "in.h5ad"), "--out", "..", "--overwrite"]) == 2
    assert "leave this shell in a deleted folder" in error_lines(caplog)
    (work / "sub").rmdir()
    assert snapshot(work) == before


# ------------------------------------------------------------------------------------------ WEAK: read-only
@pytest.fixture
def read_only(monkeypatch):
    """Make the folder given to the returned function act as a read-only mount (root ignores chmod)."""
    places = []
    real_open, real_mkdir, real_builtin_open = os.open, os.mkdir, open

    def refused(path) -> bool:
        return any(os.path.abspath(os.fsdecode(path)).startswith(str(p) + os.sep) for p in places)

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and refused(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if refused(path):
            if os.path.isdir(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fsdecode(path))
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    def fake_builtin_open(path, mode="r", *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and any(c in mode for c in "wax+") and refused(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
        return real_builtin_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr("builtins.open", fake_builtin_open)
    return lambda folder: places.append(os.path.abspath(folder))


def test_a_read_only_place_is_one_line_naming_it(files, read_only, caplog):
    from opencellplm.data.corpus import prepare_corpus

    prepare_corpus([files / "in.h5ad"], files / "corpus", max_cells=10)
    prefix = write_official(files / "official" / "tiny", official_config(n_genes=50))
    ro = files / "ro"
    ro.mkdir()
    read_only(ro)
    commands = {
        "prepare-corpus": ["prepare-corpus", str(files / "in.h5ad"), "--out", str(ro / "corpus")],
        "convert-official": ["convert-official", str(prefix), "--out", str(ro / "ckpt")],
        "pretrain": ["pretrain", "--corpus", str(files / "corpus"), "--config", "tiny", "--out", str(ro / "run")],
    }
    for name, args in commands.items():
        assert main(args) == 2, name
        message = error_lines(caplog)
        assert message.startswith("cannot write the ") and str(ro) in message, (name, message)
        assert "Read-only file system" in message and "\n" not in message and "Traceback" not in message
    assert list(ro.iterdir()) == []
