"""Every flag of every subcommand reaches the API: recorders stand in for the task methods and functions, so
nothing is trained, and each test fails if the command line drops or renames a flag on its way (REDESIGN.md,
mutations M1-M5). ``test_every_subcommand_has_a_flag_test`` keeps the list complete."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from opencellplm.cli import main
from opencellplm.tasks import CellTypeAnnotator, Denoiser
from opencellplm.tasks.imputation import SpatialImputer
from opencellplm.testing.synthetic import synthetic_adata

from .conftest import small_model, vocabulary


class Recorded(Exception):
    """Raised by a recorder once it has what it came for (no user error: it reaches the test)."""


@pytest.fixture
def files(tmp_path):
    """A saved model over 60 genes and an h5ad of 40 cells with a counts layer, labels and a test flag."""
    genes = vocabulary(60)
    small_model(genes).save(tmp_path / "ckpt")
    adata = synthetic_adata(40, 60, gene_names=genes, seed=0)
    adata.layers["counts"] = adata.X.copy()
    adata.var["ids"] = list(adata.var_names)
    adata.obs["cell_type"] = np.where(np.arange(40) % 2 == 0, "a", "b")
    adata.obs["held_out"] = np.arange(40) % 4 == 0
    adata.obsm["coords"] = np.random.default_rng(0).random((40, 2))
    adata.write_h5ad(tmp_path / "in.h5ad")
    return tmp_path


def _record(monkeypatch, cls, name: str, seen: dict, *, stop: bool = True, returns=None):
    """Replace ``cls.name`` with a recorder of its keyword arguments and of ``self``."""

    def recorder(self, *args, **kwargs):
        seen[name] = {"self": self, "args": args, **kwargs}
        if stop:
            raise Recorded(name)
        return returns(self) if callable(returns) else returns

    monkeypatch.setattr(cls, name, recorder)


def test_every_denoise_flag_reaches_the_api(files, monkeypatch):
    seen: dict = {}
    _record(monkeypatch, Denoiser, "denoise_file", seen)
    _record(monkeypatch, Denoiser, "score", seen)
    common = ["--checkpoint", str(files / "ckpt"), "--layer", "counts", "--gene-key", "ids"]
    common += ["--sample-key", "sample", "--max-cells", "9", "--gene-levels", "model", "--device", "cpu"]
    with pytest.raises(Recorded):
        main(["denoise", str(files / "in.h5ad"), "--out", str(files / "o.h5ad"), *common, "--fine-tune",
              "--steps", "4", "--work", str(files / "work"), "--layer-added", "smooth", "--overwrite"])  # fmt: skip
    call = seen["denoise_file"]
    assert call["args"] == (str(files / "in.h5ad"), str(files / "o.h5ad"))
    assert {k: call[k] for k in ("layer", "gene_key", "sample_key", "max_cells")} == {
        "layer": "counts",
        "gene_key": "ids",
        "sample_key": "sample",
        "max_cells": 9,
    }
    assert call["layer_added"] == "smooth" and call["gene_levels"] == "model" and call["overwrite"] is True
    assert call["fine_tune"] is True and call["work"] == str(files / "work") and call["device"] == "cpu"
    assert call["self"].recipe.steps == 4 and call["self"].recipe.seed == 0 and call["seed"] == 0
    with pytest.raises(Recorded):  # --seed seeds every random choice: the fine-tuning and the partition
        main(["denoise", str(files / "in.h5ad"), "--out", str(files / "o.h5ad"), *common, "--fine-tune", "--seed", "3"])
    assert seen["denoise_file"]["self"].recipe.seed == 3 and seen["denoise_file"]["seed"] == 3
    with pytest.raises(Recorded):
        main(["denoise", str(files / "in.h5ad"), "--score", *common, "--from-scratch", "--protocol", "mcv",
              "--fraction", "0.2", "--seed", "5", "--baselines", "unchanged,knn_smoothing"])  # fmt: skip
    call = seen["score"]
    assert call["protocol"] == "mcv" and call["fraction"] == 0.2 and call["seed"] == 5
    assert call["self"].recipe.seed == 5  # the fine-tuned rows too
    assert call["fine_tune"] is True and call["from_scratch"] is True  # --from-scratch implies fitting
    assert call["baselines"] == ["unchanged", "knn_smoothing"] and call["gene_levels"] == "model"
    assert (call["layer"], call["gene_key"], call["sample_key"], call["max_cells"]) == ("counts", "ids", "sample", 9)


def test_every_annotate_fit_and_predict_flag_reaches_the_api(files, monkeypatch):
    seen: dict = {}
    _record(monkeypatch, CellTypeAnnotator, "fit", seen)
    args = ["annotate", "fit", str(files / "in.h5ad"), "--labels-key", "cell_type", "--out", str(files / "ann")]
    args += ["--checkpoint", str(files / "ckpt"), "--mode", "transductive", "--test-key", "held_out"]
    args += ["--steps", "7", "--seed", "2", "--layer", "counts", "--gene-key", "ids", "--sample-key", "sample"]
    with pytest.raises(Recorded):
        main(args)
    call = seen["fit"]
    assert call["args"][1] == "cell_type" and call["mode"] == "transductive"
    assert (call["layer"], call["gene_key"], call["sample_key"], call["seed"]) == ("counts", "ids", "sample", 2)
    held_out = ad.read_h5ad(files / "in.h5ad").obs["held_out"].to_numpy()
    np.testing.assert_array_equal(call["train_cells"], ~held_out)
    assert (call["self"].recipe.steps, call["self"].recipe.seed, call["self"].pretrained) == (7, 2, True)
    with pytest.raises(Recorded):
        main([*args, "--start", "scratch"])
    assert seen["fit"]["self"].pretrained is False
    seen.clear()
    with pytest.raises(Recorded):
        main([*args, "--scratch"])  # the old spelling still works, with a warning
    assert seen["fit"]["self"].pretrained is False

    class Saved:  # what annotate predict loads: records the key it is asked to write
        def predict(self, adata, *, key_added):
            seen["predict"] = key_added
            adata.obs[key_added] = "x"

    monkeypatch.setattr(CellTypeAnnotator, "load", staticmethod(lambda folder: Saved()))
    (files / "ann").mkdir()
    out = files / "predicted.h5ad"
    assert main(["annotate", "predict", str(files / "in.h5ad"), "--annotator", str(files / "ann"), "--out",
                 str(out), "--key-added", "my_types"]) == 0  # fmt: skip
    assert seen["predict"] == "my_types" and "my_types" in ad.read_h5ad(out).obs


def test_every_annotate_score_flag_reaches_the_api(files, monkeypatch, capsys):
    seen: dict = {}

    class Scores:
        skipped = {"celltypist": "CellTypist needs the baselines extra"}

        def to_frame(self):
            import pandas as pd

            return pd.DataFrame({"macro_f1": [1.0]}, index=["cellplm"])

        def to_dict(self):
            return {"methods": {}}

    class Saved:
        def score(self, adata, labels_key, **kwargs):
            seen.update(labels_key=labels_key, n_obs=adata.n_obs, **kwargs)
            return Scores()

    monkeypatch.setattr(CellTypeAnnotator, "load", staticmethod(lambda folder: Saved()))
    (files / "ann").mkdir()
    reference = ad.read_h5ad(files / "in.h5ad")
    reference.write_h5ad(files / "ref.h5ad")
    args = ["annotate", "score", str(files / "in.h5ad"), "--annotator", str(files / "ann"), "--labels-key"]
    args += ["cell_type", "--test-key", "held_out", "--reference", str(files / "ref.h5ad"), "--baselines"]
    args += ["knn_on_pca", "--seed", "6", "--json", str(files / "s.json")]
    assert main(args) == 0
    assert "skipped celltypist: CellTypist needs the baselines extra" in capsys.readouterr().out
    held_out = ad.read_h5ad(files / "in.h5ad").obs["held_out"].to_numpy()
    assert seen["labels_key"] == "cell_type" and seen["baselines"] == ("knn_on_pca",) and seen["seed"] == 6
    np.testing.assert_array_equal(seen["test_cells"], held_out)
    assert seen["reference"].n_obs == reference.n_obs and (files / "s.json").is_file()


def test_every_impute_flag_reaches_the_api(files, monkeypatch):
    seen: dict = {}
    _record(monkeypatch, SpatialImputer, "fit", seen, stop=False)
    _record(monkeypatch, SpatialImputer, "predict", seen)
    reference = ad.read_h5ad(files / "in.h5ad")
    reference.layers["raw"] = reference.X.copy()
    reference.var["ref_ids"] = list(reference.var_names)
    reference.obs["donor"] = "d1"
    reference.write_h5ad(files / "ref.h5ad")
    args = ["impute", str(files / "in.h5ad"), "--reference", str(files / "ref.h5ad"), "--out", str(files / "o.h5ad")]
    args += ["--checkpoint", str(files / "ckpt"), "--genes", "G1,G2", "--genes", "G3", "--steps", "6"]
    args += ["--no-positional", "--max-cells", "11", "--layer", "counts", "--gene-key", "ids", "--sample-key"]
    args += ["sample", "--spatial-key", "coords", "--reference-layer", "raw", "--reference-gene-key", "ref_ids"]
    args += ["--reference-sample-key", "donor", "--extend-vocabulary", "--layer-added", "imp", "--seed", "4"]
    args += ["--device", "cpu"]
    with pytest.raises(Recorded):
        main(args)
    call = seen["fit"]
    recipe = call["self"].recipe
    assert (recipe.positional, recipe.max_cells, recipe.seed, recipe.steps) == (False, 11, 4, 6)
    expected = {
        "layer": "counts",
        "gene_key": "ids",
        "sample_key": "sample",
        "spatial_key": "coords",
        "reference_layer": "raw",
        "reference_gene_key": "ref_ids",
        "reference_sample_key": "donor",
        "genes": ["G1", "G2", "G3"],
        "extend_vocabulary": True,
        "device": "cpu",
    }
    assert {k: call[k] for k in expected} == expected
    assert seen["predict"]["args"][1] == ["G1", "G2", "G3"] and seen["predict"]["layer_added"] == "imp"
    # Without --reference-gene-key the reference is read by the spatial --gene-key.
    with pytest.raises(Recorded):
        main([a for a in args if a not in ("--reference-gene-key", "ref_ids")])
    assert seen["fit"]["reference_gene_key"] == "ids"


def test_every_perturb_fit_and_score_flag_reaches_the_api(tmp_path, monkeypatch):
    from opencellplm.tasks import PerturbationPredictor

    from .test_perturbation import simulated, tiny_model

    tiny_model().save(tmp_path / "ckpt")
    simulated(n_single=4, n_combo=2, cells_per_perturbation=5).write_h5ad(tmp_path / "data.h5ad")
    seen: dict = {}
    _record(monkeypatch, PerturbationPredictor, "fit", seen)
    _record(monkeypatch, PerturbationPredictor, "score", seen)
    options = ["--checkpoint", str(tmp_path / "ckpt"), "--perturbation-key", "guide", "--control", "ctrl"]
    options += ["--default-direction", "up", "--extend-vocabulary", "--steps", "8", "--layer", "counts"]
    options += ["--gene-key", "ids", "--sample-key", "batch", "--device", "cpu"]
    expected = {
        "perturbation_key": "guide",
        "control": "ctrl",
        "default_direction": "up",
        "extend_vocabulary": True,
        "device": "cpu",
        "layer": "counts",
        "gene_key": "ids",
        "sample_key": "batch",
    }
    data = str(tmp_path / "data.h5ad")
    with pytest.raises(Recorded):
        main(["perturb", "fit", data, "--out", str(tmp_path / "p"), *options, "--start", "scratch", "--seed", "9"])
    call = seen["fit"]
    assert {k: call[k] for k in expected} == expected
    assert call["self"].recipe.steps == 8 and call["self"].pretrained is False and call["self"].recipe.seed == 9
    with pytest.raises(Recorded):
        main(["perturb", "score", data, "--out", str(tmp_path / "s.json"), *options, "--seeds", "3", "4",
              "--from-scratch"])  # fmt: skip
    call = seen["score"]
    assert {k: call[k] for k in expected} == expected
    assert list(call["seeds"]) == [3, 4] and call["from_scratch"] is True and call["self"].pretrained is True


def test_every_benchmark_flag_reaches_the_api(tmp_path, monkeypatch):
    import opencellplm.benchmark as benchmark

    seen: dict = {}

    def run_benchmark(out, **kwargs):
        seen.update(out=out, **kwargs)
        raise Recorded("run_benchmark")

    monkeypatch.setattr(benchmark, "run_benchmark", run_benchmark)
    args = ["benchmark", "--out", str(tmp_path / "b"), "--tasks", "denoising", "clustering", "--datasets", "pbmc3k"]
    with pytest.raises(Recorded):
        main([*args, "--n-seeds", "2", "--checkpoint", "cellplm-small", "--quick"])
    assert seen == {
        "out": str(tmp_path / "b"),
        "tasks": ["denoising", "clustering"],
        "datasets": ["pbmc3k"],
        "seeds": 2,
        "checkpoint": "cellplm-small",
        "profile": "quick",
    }
    with pytest.raises(Recorded):
        main(args)
    assert seen["profile"] == "full" and seen["seeds"] is None


def test_every_demo_flag_reaches_run_demo(tmp_path, monkeypatch):
    import opencellplm.demo as demo

    seen: dict = {}

    def run_demo(out, **kwargs):
        seen.update(out=out, **kwargs)
        raise Recorded("run_demo")

    monkeypatch.setattr(demo, "run_demo", run_demo)
    with pytest.raises(Recorded):
        main(["demo", "--out", str(tmp_path / "d"), "--seed", "7", "--overwrite"])
    assert seen == {"out": str(tmp_path / "d"), "overwrite": True, "seed": 7}


def test_every_perturb_predict_flag_reaches_the_api(tmp_path, monkeypatch):
    import pandas as pd

    from opencellplm.tasks import PerturbationPredictor

    seen: dict = {}

    class Saved:
        def predict(self, labels):
            seen["labels"] = labels
            return pd.DataFrame({"G": [0.0] * len(labels)}, index=labels)

    def load(folder, *, device):
        seen.update(folder=folder, device=device)
        return Saved()

    monkeypatch.setattr(PerturbationPredictor, "load", staticmethod(load))
    (tmp_path / "labels.txt").write_text("A+B\nC:up\n")
    out = tmp_path / "p.csv"
    assert main(["perturb", "predict", "pred", "--out", str(out), "--labels-file", str(tmp_path / "labels.txt"),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert seen == {"folder": "pred", "device": "cpu", "labels": ["A+B", "C:up"]} and out.is_file()
    assert main(["perturb", "predict", "pred", "--out", str(out), "--labels", "X", "--overwrite"]) == 0
    assert seen["labels"] == ["X"]


def test_every_pretrain_flag_reaches_the_api(tmp_path, monkeypatch):
    import importlib

    import opencellplm.train as train

    pretrain_module = importlib.import_module("opencellplm.train.pretrain")  # the attribute is the function

    seen: dict = {}

    def pretrain(corpus, out, **kwargs):
        seen.update(corpus=corpus, out=out, **kwargs)
        raise Recorded("pretrain")

    monkeypatch.setattr(train, "pretrain", pretrain)
    monkeypatch.setattr(pretrain_module, "decoder_bias_from_corpus", lambda corpus, seed: ("bias", corpus, seed))
    args = ["pretrain", "--corpus", "c", "--config", "tiny", "--out", str(tmp_path / "run"), "--steps", "12"]
    args += ["--seed", "8", "--precision", "fp32", "--device", "cpu", "--init-decoder-bias", "corpus"]
    with pytest.raises(Recorded):
        main(args)
    config = seen["train"]
    assert (config.steps, config.seed, config.precision) == (12, 8, "fp32")
    assert seen["corpus"] == "c" and seen["out"] == str(tmp_path / "run") and seen["device"] == "cpu"
    assert seen["resume"] is False and seen["decoder_bias"] == ("bias", "c", 8)
    with pytest.raises(Recorded):
        main([*args[:-2], "--init-decoder-bias", "random"])
    assert seen["decoder_bias"] is None


def test_every_convert_official_flag_reaches_the_api(tmp_path, monkeypatch):
    from opencellplm.model import CellPLM

    seen: dict = {}

    class Converted:
        def save(self, out, **kwargs):
            seen.update(out=out, **kwargs)

    monkeypatch.setattr(
        CellPLM, "from_official", classmethod(lambda cls, prefix: seen.update(prefix=prefix) or Converted())
    )
    assert main(["convert-official", "ckpt/x", "--out", str(tmp_path / "m"), "--overwrite"]) == 0
    assert seen["prefix"] == "ckpt/x" and seen["out"] == str(tmp_path / "m") and seen["overwrite"] is True


def test_every_verify_corpus_and_info_flag_reaches_the_api(tmp_path, monkeypatch, capsys):
    import opencellplm.data.corpus as corpus

    seen: dict = {}

    class Opened:
        manifest = {"n_cells": 3, "n_sets": 1, "datasets": ["d"], "n_genes": 5}
        shards, checksums = ["s"], True

        def __init__(self, directory):
            seen["corpus"] = directory

        def verify(self):
            return []

    monkeypatch.setattr(corpus, "Corpus", Opened)
    assert main(["verify-corpus", "folder"]) == 0 and seen["corpus"] == "folder"
    assert "intact: yes" in capsys.readouterr().out
    small_model(vocabulary(10)).save(tmp_path / "m")
    assert main(["info", str(tmp_path / "m")]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["genes"] == {"n": 10, "first": vocabulary(10)[:3]}  # the checkpoint named, not the default


#: Each subcommand and the test above (or in test_cli.py) that passes every one of its flags.
FLAG_TESTS = {
    "embed": "test_cli.py::test_every_embed_flag_reaches_the_api",
    "validate": "test_cli.py::test_validate_prints_the_report_and_exits_by_usability",
    "prepare-corpus": "test_cli.py::test_every_prepare_corpus_flag_reaches_the_api",
    "verify-corpus": "test_every_verify_corpus_and_info_flag_reaches_the_api",
    "convert-official": "test_every_convert_official_flag_reaches_the_api",
    "pretrain": "test_every_pretrain_flag_reaches_the_api",
    "annotate fit": "test_every_annotate_fit_and_predict_flag_reaches_the_api",
    "annotate predict": "test_every_annotate_fit_and_predict_flag_reaches_the_api",
    "annotate score": "test_every_annotate_score_flag_reaches_the_api",
    "denoise": "test_every_denoise_flag_reaches_the_api",
    "impute": "test_every_impute_flag_reaches_the_api",
    "perturb fit": "test_every_perturb_fit_and_score_flag_reaches_the_api",
    "perturb score": "test_every_perturb_fit_and_score_flag_reaches_the_api",
    "perturb predict": "test_every_perturb_predict_flag_reaches_the_api",
    "benchmark": "test_every_benchmark_flag_reaches_the_api",
    "demo": "test_every_demo_flag_reaches_run_demo",
    "info": "test_every_verify_corpus_and_info_flag_reaches_the_api",
}


def test_every_subcommand_has_a_flag_test():
    from pathlib import Path

    from opencellplm.cli import _leaf_parsers, build_parser

    commands = {parser.prog.removeprefix("opencellplm ") for parser in _leaf_parsers(build_parser())}
    assert commands == set(FLAG_TESTS), "a new subcommand needs a test that each of its flags reaches the API"
    here = Path(__file__).parent
    for test in FLAG_TESTS.values():
        file, _, name = test.rpartition("::")
        assert f"def {name}(" in (here / (file or Path(__file__).name)).read_text(), test
