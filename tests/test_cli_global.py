"""The command line as a whole: each action's own options, --version, --threads, messages in flag names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import pytest
import torch

import opencellplm
from opencellplm import CellPLM, CellPLMModule
from opencellplm._threads import available_cpus
from opencellplm.cli import main

from .conftest import vocabulary


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "-h"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_each_annotate_and_perturb_action_lists_only_its_own_options(capsys):
    fit = help_text(capsys, "annotate", "fit")
    assert "--labels-key" in fit and "--steps" in fit and "--annotator" not in fit and "--key-added" not in fit
    predict = help_text(capsys, "annotate", "predict")
    assert "--annotator" in predict and "--key-added" in predict
    assert "--steps" not in predict and "--labels-key" not in predict and "--baselines" not in predict
    score = help_text(capsys, "annotate", "score")
    assert "--baselines" in score and "--reference" in score and "--scratch" not in score
    predict = help_text(capsys, "perturb", "predict")
    assert "--labels-file" in predict and "--seeds" not in predict and "--control" not in predict
    perturb_fit = help_text(capsys, "perturb", "fit")
    assert "--control" in perturb_fit and "--seeds" not in perturb_fit and "--labels-file" not in perturb_fit
    assert "--seeds" in help_text(capsys, "perturb", "score")


def test_an_option_of_another_action_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # --layer was silently ignored by predict: the annotator's is used
        main(["annotate", "predict", "x.h5ad", "--annotator", "A", "--out", "p.h5ad", "--layer", "counts"])
    assert exit_.value.code == 2 and "unrecognized arguments: --layer counts" in capsys.readouterr().err


@pytest.fixture
def checkpoint(tmp_path, tiny_config):
    CellPLM(CellPLMModule(tiny_config), vocabulary(tiny_config.n_genes)).save(tmp_path / "ckpt")
    return str(tmp_path / "ckpt")


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    opencellplm.set_threads(threads)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"opencellplm {opencellplm.__version__}\n"


def test_threads_reach_torch_given_before_or_after_the_command_and_are_recorded(
    checkpoint, tmp_path, tiny_adata, keep_threads
):
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    embed = ["embed", str(tmp_path / "in.h5ad"), "--checkpoint", checkpoint, "--allow-low-overlap"]
    assert main(["--threads", "2", *embed, "--out", str(tmp_path / "a.h5ad")]) == 0
    assert torch.get_num_threads() == 2
    assert ad.read_h5ad(tmp_path / "a.h5ad").uns["cellplm"]["X_cellplm"]["threads"]["torch_threads"] == 2
    assert main([*embed, "--out", str(tmp_path / "b.h5ad"), "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert ad.read_h5ad(tmp_path / "b.h5ad").uns["cellplm"]["X_cellplm"]["threads"]["torch_threads"] == 1
    score = ["denoise", str(tmp_path / "in.h5ad"), "--checkpoint", checkpoint, "--score", "--baselines", "unchanged"]
    assert main(["--threads", "2", *score, "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["threads"]["torch_threads"] == 2


def test_a_bad_thread_count_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["info", "x", "--threads", "0"])
    assert exit_.value.code == 2 and "--threads: '0' is not a whole number of at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="threads=0: give a whole number of at least 1"):
        opencellplm.set_threads(0)


def thread_settings_after(script: str, **variables: str) -> dict:
    """``opencellplm.thread_settings()`` at the end of ``script``, run in a fresh interpreter (numba's pool
    starts once per process), without OMP_NUM_THREADS or NUMBA_NUM_THREADS unless given in ``variables``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")} | variables
    script += "\nimport json, opencellplm\nprint(json.dumps(opencellplm.thread_settings()))\n"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


NEEDS_TWO_CPUS = pytest.mark.skipif(available_cpus() < 2, reason="numba's default is one thread on one CPU")


@NEEDS_TWO_CPUS
def test_the_thread_count_survives_scanpy_neighbors():
    """numba (scanpy's neighbours and UMAP) starts its OpenMP pool with every CPU, which reset torch's count."""
    settings = thread_settings_after(
        "import numpy as np, anndata as ad, opencellplm\n"
        "opencellplm.set_threads(1)\n"  # before numba is imported, as the command line does
        "import scanpy as sc\n"
        "sc.pp.neighbors(ad.AnnData(np.random.default_rng(0).normal(size=(300, 20)).astype('float32')), use_rep='X')"
    )
    assert settings["torch_threads"] == 1 and settings["numba_threads"] == 1


START_NUMBA_POOL = """
@numba.njit(parallel=True)
def total(n):
    s = 0
    for i in numba.prange(n):
        s += i
    return s
total(10)
"""  # the first parallel call starts numba's pool


@NEEDS_TWO_CPUS
def test_the_thread_count_survives_numba_imported_first():
    settings = thread_settings_after("import numba, opencellplm\nopencellplm.set_threads(1)\n" + START_NUMBA_POOL)
    assert settings["torch_threads"] == 1 and settings["numba_threads"] == 1


@NEEDS_TWO_CPUS
def test_omp_num_threads_holds_through_numba_when_opencellplm_comes_first():
    settings = thread_settings_after("import opencellplm, numba\n" + START_NUMBA_POOL, OMP_NUM_THREADS="1")
    assert settings["torch_threads"] == 1 and settings["numba_threads"] == 1


def test_benchmark_seeds_is_now_n_seeds_and_the_old_spelling_warns(monkeypatch, caplog):
    from opencellplm.cli import report

    seen = []
    monkeypatch.setattr(report, "_benchmark", lambda args: seen.append(args.seeds) or 0)
    assert main(["benchmark", "--out", "b", "--n-seeds", "2"]) == 0 and seen == [2] and not caplog.records
    assert main(["benchmark", "--out", "b", "--seeds", "3"]) == 0 and seen == [2, 3]
    assert "--seeds is deprecated: use --n-seeds (a count; perturb score's --seeds lists the seeds" in caplog.text


def test_library_argument_names_become_flags():
    from opencellplm.cli import in_flag_words

    flags = {"--overwrite", "--layer", "--precision", "--extend-vocabulary", "--gene-key"}
    assert in_flag_words("x exists; pass overwrite=True (--overwrite) to replace it", flags) == (
        "x exists; pass --overwrite to replace it"
    )
    assert in_flag_words("pass layer= naming them, or gene_key=... naming a column", flags) == (
        "pass --layer naming them, or --gene-key naming a column"
    )
    assert in_flag_words("drop precision='bf16'; pass extend_vocabulary=True", flags) == (
        "drop --precision bf16; pass --extend-vocabulary"
    )
    assert in_flag_words("choose another key_added (--key-added)", flags | {"--key-added"}) == (
        "choose another --key-added"
    )
    # not this command's flags: left in the library's words
    assert in_flag_words("it needs official_compat=True, k=15", flags) == "it needs official_compat=True, k=15"
    assert in_flag_words("choose another key_added (--key-added)", flags) == "choose another key_added (--key-added)"


def test_messages_shown_by_the_command_line_name_flags(checkpoint, tmp_path, tiny_adata, caplog, capsys):
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    (tmp_path / "out.h5ad").write_text("the user's file")
    embed = ["embed", str(tmp_path / "in.h5ad"), "--checkpoint", checkpoint, "--out", str(tmp_path / "out.h5ad")]
    assert main(embed) == 2
    assert "--overwrite" in caplog.text and "overwrite=True" not in caplog.text
    tiny_adata.X = tiny_adata.X + 0.5  # not counts
    tiny_adata.write_h5ad(tmp_path / "float.h5ad")
    assert main(["validate", str(tmp_path / "float.h5ad"), "--require-counts"]) == 1
    report = capsys.readouterr().out
    assert "not raw counts; pass --layer naming a layer of raw counts" in report and "layer=" not in report


def test_step_and_cell_set_defaults_say_whose_they_are_and_match_it(capsys):
    import re

    from opencellplm.config import MaskingConfig
    from opencellplm.tasks import AnnotationRecipe, DenoisingRecipe, PerturbationRecipe
    from opencellplm.tasks.imputation import ImputationRecipe

    def flag_help(command: list[str], flag: str) -> str:
        text = " ".join(help_text(capsys, *command).split())
        return text[text.index(f"{flag} {flag[2:].upper().replace('-', '_')} ") :][:400]

    for command, recipe in [
        (["annotate", "fit"], AnnotationRecipe),
        (["denoise"], DenoisingRecipe),
        (["impute"], ImputationRecipe),
        (["perturb", "fit"], PerturbationRecipe),
        (["perturb", "score"], PerturbationRecipe),
    ]:
        said = re.search(r"\(default (\d+), (\w+)'s: each task's recipe sets its own", flag_help(command, "--steps"))
        assert said and (int(said[1]), said[2]) == (recipe().steps, recipe.__name__), command
    for command in (["embed"], ["denoise"], ["prepare-corpus"]):
        assert f"(default {MaskingConfig().max_cells}: the official pretraining cap)" in flag_help(
            command, "--max-cells"
        )
    said = flag_help(["impute"], "--max-cells")
    assert f"(default {ImputationRecipe().max_cells}, the recipe's; smaller than embed's 4000:" in said


def test_benchmark_results_record_the_thread_counts(keep_threads):
    from opencellplm.benchmark.run import environment

    opencellplm.set_threads(1)
    recorded = environment()
    assert recorded["torch_threads"] == 1 and recorded["numba_threads"] >= 1 and recorded["cpus_available"] >= 1
