"""The model shipped inside the package loads by name, with its provenance."""

from __future__ import annotations

import numpy as np
import pytest

from opencellplm import CellPLM, pretrained


def test_shipped_model_loads_by_name_and_records_its_recipe():
    assert "cellplm-small" in pretrained.available()
    model = CellPLM.from_pretrained("cellplm-small")
    meta = model.meta
    assert meta["recipe"].startswith("python scripts/pretrain_shipped_model.py")
    assert meta["size_mb"] <= 25
    validation = meta["validation"]
    curve, selected_by = validation["curve"], validation["selected_by"]
    assert selected_by in ("val_loss", "val_label_agreement")
    pick = min if selected_by == "val_loss" else max
    best = pick(curve, key=lambda point: point[selected_by])
    assert len(curve) >= 2 and meta["step"] == best["step"]  # the weights shipped are the best validated
    flags = meta["recipe"].split()[2:]
    start = flags[flags.index("--init-gene-embedding") + 1] if "--init-gene-embedding" in flags else "pca_balanced"
    assert meta["gene_embedding_init"] == start and meta["input_scaling"] == model.config.input_scaling
    ratio = float(flags[flags.index("--encoder-lr-ratio") + 1]) if "--encoder-lr-ratio" in flags else 1.0
    assert meta["train"]["encoder_lr_ratio"] == ratio
    corpus = {"pbmc3k", "celltypist_sample", "merfish_u2os", "mouse_10k_subset"}
    corpus |= {"palantir_marrow", "zeisel_brain_subset", "baron_mouse_pancreas"}
    data = meta["data"]
    assert set(data["datasets"]) == corpus
    # The validation set's donors are split: one donor's cells train, the other's validate, never both.
    assert data["donors"] == {"baron_mouse_pancreas": {"corpus": ["mouse1"], "validation": ["mouse2"]}}
    assert data["datasets"]["baron_mouse_pancreas"]["cells"] == 822  # of 1,886: mouse2's 1,064 never train
    if selected_by == "val_label_agreement":  # mouse2's cells chose the step
        assert validation["probe"]["labelled"] == ["baron_mouse_pancreas"]
        assert data["labelled_validation"]["baron_mouse_pancreas"] == 1064
    held_out = {"pbmc68k_reduced", "baron_human_pancreas"}  # the test sets: never in the corpus
    assert not held_out & corpus and set(data["held_out_for_evaluation"]) == held_out
    assert model.config.positional_encoding == "sinusoidal"
    assert "CD3E" in model.genes  # upper-cased symbols
    # The recipe line names what differs from the recipe's defaults (see the README's shipped model section).
    from opencellplm.data.genes import is_control_probe

    assert (model.config.decoder.block_norm is None) == ("--decoder-block-norm" in flags)
    assert meta.get("decoder_bias_init", "random") == ("random" if "--init-decoder-bias" in flags else "corpus")
    assert any(is_control_probe(g) for g in model.genes) == ("--keep-control-probes" in flags)
    # Mouse symbols reach their human orthologs' rows through the aliases the recipe installs (Ins1, Ins2 -> INS).
    assert bool(model.gene_aliases) == ("--mouse-orthologs" in flags)
    if model.gene_aliases:
        assert model.gene_aliases["INS1"] == model.gene_aliases["INS2"] == "INS" and "INS" in model.genes


def test_shipped_model_embeds_cells():
    import anndata as ad
    import pandas as pd

    model = CellPLM.from_pretrained("cellplm-small")
    genes = model.genes[:200]
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        rng.negative_binomial(1, 0.7, size=(50, 200)).astype(np.float32),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(50)]),
        var=pd.DataFrame(index=genes),
    )
    embedding = model.get_latent_representation(adata)
    assert embedding.shape == (50, model.config.latent.dim) and np.isfinite(embedding).all()


def test_unknown_name():
    with pytest.raises(KeyError, match="no shipped model named 'nope'"):
        pretrained.path("nope")


def _mouse_like(model: CellPLM, n_genes: int = 200):
    """Cells over the shipped vocabulary's genes, named as mouse symbols are written (``Cd3e``)."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(1)
    genes = [g for g in model.genes if g.isalpha()][:n_genes]
    return ad.AnnData(
        rng.negative_binomial(1, 0.7, size=(30, len(genes))).astype(np.float32),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(30)]),
        var=pd.DataFrame(index=[g.capitalize() for g in genes]),
    )


def test_mouse_symbols_meet_the_upper_cased_vocabulary():
    """The shipped vocabulary is upper-cased symbols; its checkpoint says so and inference applies it."""
    model = CellPLM.from_pretrained("cellplm-small")
    assert model.gene_id_rule == "upper"
    mouse = _mouse_like(model)
    report = model.validate(mouse)
    assert report.ok and report.alignment.n_matched == mouse.n_vars and report.share_of_counts == 1.0
    upper = mouse.copy()
    upper.var_names = [g.upper() for g in mouse.var_names]
    np.testing.assert_array_equal(model.get_latent_representation(mouse), model.get_latent_representation(upper))
    assert "(ids matched by the checkpoint's rule: upper)" in report.to_text()


def _recipe():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_shipped_model.py"
    spec = importlib.util.spec_from_file_location("recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def test_the_recorded_recipe_leaves_out_where_the_work_went():
    argv = ["--work", "/some/where", "--steps", "300", "--no-install", "--work=/else", "--resume", "--thin-rate", "0.5"]
    assert _recipe().recipe_options(argv) == ["--steps", "300", "--thin-rate", "0.5"]


def test_the_recipe_resumes_only_a_run_with_its_settings(tmp_path):
    import json

    from opencellplm.config import TrainConfig

    recipe, train = _recipe(), TrainConfig(steps=600)
    model = {"hidden_dim": 128, "masking": {"thin_rate": 0.5}}
    assert recipe.finished_run(tmp_path, model, train) is None  # nothing there: train
    saved = {"model": {"hidden_dim": 128, "dropout": 0.1, "masking": {"thin_rate": 0.5}}, "train": train.to_dict()}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 300, "seconds": 60.0}))
    assert recipe.finished_run(tmp_path, model, train) is None  # stopped at step 300: resume it
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 600, "seconds": 60.0}))
    assert recipe.finished_run(tmp_path, model, train)["seconds"] == 60.0  # finished: install it as it is
    other = model | {"masking": {"thin_rate": 0.0}}
    with pytest.raises(SystemExit, match=r"trained with other settings \(masking.thin_rate\)"):
        recipe.finished_run(tmp_path, other, train)


def test_the_recipe_deletes_only_an_earlier_run_of_its_own(tmp_path):
    recipe = _recipe()
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds no pretraining run: pick another --work"):
        recipe.remove_earlier_run(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    for name in ("config.json", "metrics.jsonl"):
        (foreign / name).write_text("{}")
    recipe.remove_earlier_run(foreign)
    assert not foreign.exists()
