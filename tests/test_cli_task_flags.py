"""Every flag of the task subcommands and of benchmark reaches the API: recorders stand in for the task methods,
so nothing is trained, and each test fails if the command line drops or renames a flag on its way (REDESIGN.md,
mutations M1-M5)."""

from __future__ import annotations

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
    assert call["self"].recipe.steps == 4
    with pytest.raises(Recorded):
        main(["denoise", str(files / "in.h5ad"), "--score", *common, "--from-scratch", "--protocol", "mcv",
              "--fraction", "0.2", "--seed", "5", "--baselines", "unchanged,knn_smoothing"])  # fmt: skip
    call = seen["score"]
    assert call["protocol"] == "mcv" and call["fraction"] == 0.2 and call["seed"] == 5
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
    assert (call["layer"], call["gene_key"], call["sample_key"]) == ("counts", "ids", "sample")
    held_out = ad.read_h5ad(files / "in.h5ad").obs["held_out"].to_numpy()
    np.testing.assert_array_equal(call["train_cells"], ~held_out)
    assert (call["self"].recipe.steps, call["self"].recipe.seed, call["self"].pretrained) == (7, 2, True)
    with pytest.raises(Recorded):
        main([*args, "--scratch"])
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
        main(["perturb", "fit", data, "--out", str(tmp_path / "p"), *options, "--scratch"])
    call = seen["fit"]
    assert {k: call[k] for k in expected} == expected
    assert call["self"].recipe.steps == 8 and call["self"].pretrained is False
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
