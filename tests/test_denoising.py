"""Denoising: count-scale predictions, fine-tuning with hidden validation entries, the score protocols and baselines,
save/load, input errors that write nothing, and the command line."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from opencellplm import CellPLM, CellPLMModule, DecoderConfig, EncoderConfig, LatentConfig, ModelConfig
from opencellplm.baselines import knn_smoothing
from opencellplm.cli import main
from opencellplm.metrics import denoising_scores, hide_counts, mcv_scores, molecular_split
from opencellplm.tasks import Denoiser, DenoisingRecipe, DenoisingResult
from opencellplm.testing.synthetic import synthetic_adata

VOCABULARY = [f"ENSG{i:011d}" for i in range(200)]
#: Few steps, fp32 (the same numbers on every CPU), a high rate so that a few steps move the weights.
QUICK = DenoisingRecipe(steps=12, eval_every=3, warmup_steps=2, lr=5e-3, precision="fp32")
#: Where a fit only has to run.
SHORT = replace(QUICK, steps=3)


def tiny_model(*, decoder: bool = True) -> CellPLM:
    config = ModelConfig(
        n_genes=len(VOCABULARY),
        hidden_dim=16,
        dropout=0.1,
        encoder=EncoderConfig(n_layers=1, n_heads=4),
        latent=LatentConfig(dim=8, n_clusters=4, hidden_dim=12),
        decoder=DecoderConfig(hidden_dim=16, n_batches=3, n_datasets=2) if decoder else None,
    )
    torch.manual_seed(1234)  # not the recipe's seed: a model from scratch starts elsewhere
    return CellPLM(CellPLMModule(config), VOCABULARY)


@pytest.fixture
def model() -> CellPLM:
    return tiny_model()


@pytest.fixture
def adata() -> ad.AnnData:
    """200 cells x 150 genes of NB counts, two samples; the genes are in the vocabulary, in another order."""
    return synthetic_adata(200, 150, gene_names=VOCABULARY[::-1][:150], seed=3)


@pytest.fixture
def partly_known(adata) -> ad.AnnData:
    """The same cells with 5 genes that are not in the vocabulary."""
    adata.var_names = [*adata.var_names[:145], *(f"NOTAGENE{i}" for i in range(5))]
    return adata


def nothing_written(adata: ad.AnnData) -> bool:
    return not adata.layers and "cellplm" not in adata.uns


# ------------------------------------------------------------------------------------------- predict
def test_predict_writes_a_count_scale_layer(model, partly_known):
    adata = partly_known
    before = adata.X.copy()
    denoiser = Denoiser.from_pretrained(model)
    assert denoiser.predict(adata, sample_key="sample") is denoiser
    layer = adata.layers["cellplm_denoised"]
    assert layer.shape == adata.shape and layer.dtype == np.float32 and np.isfinite(layer).all()
    x = before.toarray()
    known = np.arange(145)
    # Each cell keeps its observed library size over the model's genes; the other genes keep their input values.
    np.testing.assert_allclose(layer[:, known].sum(1), x[:, known].sum(1), rtol=1e-5)
    np.testing.assert_array_equal(layer[:, 145:], x[:, 145:])
    assert np.abs(layer[:, known] - x[:, known]).max() > 0.1  # denoised, not copied
    assert (adata.X != before).nnz == 0  # the input is untouched
    record = adata.uns["cellplm"]["cellplm_denoised"]
    assert record["params"]["sample_key"] == "sample" and record["params"]["fine_tuned"] is False
    assert record["params"]["checkpoint_name"] == "in memory"
    assert record["n_genes_denoised"] == 145 and record["n_genes_unchanged"] == 5
    assert "5 genes are not in the model's vocabulary" in record["note"]
    # The getter gives the same values and writes nothing.
    fresh = synthetic_adata(200, 150, gene_names=list(adata.var_names), seed=3)
    np.testing.assert_array_equal(denoiser.get_denoised(fresh, sample_key="sample"), layer)
    assert nothing_written(fresh)


def test_predict_records_the_checkpoint_hash(model, adata, tmp_path):
    model.save(tmp_path / "ckpt")
    denoiser = Denoiser.from_pretrained(tmp_path / "ckpt")
    denoiser.predict(adata, layer_added="smooth")
    params = adata.uns["cellplm"]["smooth"]["params"]
    assert params["checkpoint_name"] == "ckpt" and len(params["checkpoint_sha256"]) == 64


def test_dense_sparse_and_backed_input_agree(model, adata, tmp_path):
    from opencellplm.data import open_h5ad

    denoiser = Denoiser.from_pretrained(model)
    expected = denoiser.get_denoised(adata, sample_key="sample")
    dense = adata.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(denoiser.get_denoised(dense, sample_key="sample"), expected, rtol=1e-6)
    adata.write_h5ad(tmp_path / "x.h5ad")
    with open_h5ad(tmp_path / "x.h5ad") as backed:
        np.testing.assert_allclose(denoiser.get_denoised(backed, sample_key="sample"), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- fit
def test_fine_tuning_from_scratch_lowers_the_validation_error(model, adata):
    denoiser = Denoiser.from_scratch(model, recipe=QUICK)
    assert denoiser.fit(adata, sample_key="sample") is denoiser
    summary = denoiser.summary
    assert summary.n_validation_entries > 0 and summary.n_genes == 150 and summary.n_cells == 200
    assert summary.best_val_rmse < summary.start_val_rmse and summary.kept == "fine-tuned"
    assert summary.best_val_rmse == min(h["val_rmse"] for h in summary.history)
    denoiser.predict(adata)  # the fit's spec is reused
    assert adata.uns["cellplm"]["cellplm_denoised"]["params"]["sample_key"] == "sample"
    assert adata.uns["cellplm"]["cellplm_denoised"]["params"]["fine_tuned"] is True


def test_fine_tuning_that_does_not_help_keeps_the_starting_weights(model, adata):
    zero_shot = Denoiser.from_pretrained(model).get_denoised(adata)
    frozen = Denoiser.from_pretrained(model, recipe=DenoisingRecipe(steps=2, eval_every=1, lr=0.0, precision="fp32"))
    frozen.fit(adata)
    assert frozen.summary.kept == "start"
    np.testing.assert_array_equal(frozen.get_denoised(adata), zero_shot)
    assert next(model.module.parameters()).requires_grad  # the base model itself is not trained


# -------------------------------------------------------------------------------------------- score
def test_score_hidden_protocol_and_baselines_on_the_same_matrix(model, adata, monkeypatch):
    before = adata.X.copy()
    seen = []
    fit = Denoiser.fit

    def spy(self, data, **kwargs):
        seen.append(data.X.copy())
        return fit(self, data, **kwargs)

    monkeypatch.setattr(Denoiser, "fit", spy)
    result = Denoiser.from_pretrained(model, recipe=SHORT).score(
        adata, seed=7, baselines=("unchanged", "knn_smoothing", "magic"), sample_key="sample"
    )
    assert isinstance(result, DenoisingResult)
    corrupted, hidden = hide_counts(before, fraction=0.1, seed=7)
    # fine-tuning saw the corrupted matrix only: every test entry is 0 there
    assert len(seen) == 1 and (seen[0] != corrupted).nnz == 0
    direct = denoising_scores(before, corrupted, hidden)
    assert result["unchanged"].scores == direct.to_dict()
    smoothed = knn_smoothing(ad.AnnData(corrupted), seed=7).prediction
    assert result["knn_smoothing"].scores == denoising_scores(before, smoothed, hidden).to_dict()
    assert [m.method for m in result.methods][:2] == ["cellplm_zero_shot", "cellplm_fine_tuned"]
    for m in result.methods:
        assert m.scores["n_hidden"] == hidden.nnz and m.seconds >= 0
    tuned = result["cellplm_fine_tuned"]
    assert tuned.fit_seconds > 0 and tuned.predict_seconds > 0 and tuned.params["fit"]["steps"] >= 1
    try:
        import magic  # noqa: F401
    except ImportError:
        assert "magic extra" in result.skipped["magic"]
    assert (result.protocol, result.fraction, result.seed, result.n_genes) == ("hidden", 0.1, 7, 150)
    assert result.checkpoint["name"] == "in memory" and result.version
    frame = result.to_frame()
    assert {"rmse", "mae", "seconds", "fit_seconds", "predict_seconds"} <= set(frame.columns)
    assert frame.loc["unchanged", "rmse"] == pytest.approx(direct.rmse)
    json.dumps(result.to_dict())
    assert (adata.X != before).nnz == 0 and nothing_written(adata)


def test_score_mcv_protocol(model, adata):
    result = Denoiser.from_pretrained(model).score(
        adata, protocol="mcv", fine_tune=False, baselines=("unchanged",), seed=2
    )
    assert [m.method for m in result.methods] == ["cellplm_zero_shot", "unchanged"]
    train, held_out = molecular_split(adata.X, fraction=0.9, seed=2)
    assert result["unchanged"].scores == mcv_scores(train, held_out, train_fraction=0.9).to_dict()
    assert set(result["cellplm_zero_shot"].scores) == {"mse", "mse_normalized", "poisson", "train_fraction"}


def test_score_of_a_model_from_scratch_fits_it(model, adata):
    result = Denoiser.from_scratch(model, recipe=SHORT).score(adata, baselines=())
    assert [m.method for m in result.methods] == ["cellplm_from_scratch"]
    with pytest.raises(ValueError, match="nothing to score without fine_tune=True"):
        Denoiser.from_scratch(model).score(adata, fine_tune=False)
    with pytest.raises(ValueError, match="unknown baselines"):
        Denoiser.from_pretrained(model).score(adata, baselines=("dca",))


# ---------------------------------------------------------------------------------------- save/load
def test_save_load_round_trip(model, adata, tmp_path):
    denoiser = Denoiser.from_pretrained(model, recipe=SHORT).fit(adata, sample_key="sample")
    expected = denoiser.get_denoised(adata)
    denoiser.save(tmp_path / "denoiser")
    loaded = Denoiser.load(tmp_path / "denoiser")
    assert loaded.fitted and loaded.recipe == SHORT and loaded.spec.sample_key == "sample"
    np.testing.assert_array_equal(loaded.get_denoised(adata), expected)
    with pytest.raises(FileExistsError, match="overwrite"):
        denoiser.save(tmp_path / "denoiser")
    denoiser.save(tmp_path / "denoiser", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a denoiser written by opencellplm"):
        denoiser.save(tmp_path / "other", overwrite=True)
    with pytest.raises(ValueError, match="not fitted"):
        Denoiser.from_scratch(model).save(tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()


# ------------------------------------------------------------------------------------------- errors
def test_a_model_without_a_decoder_is_refused():
    with pytest.raises(ValueError, match="has no NB decoder"):
        Denoiser.from_pretrained(tiny_model(decoder=False))


def test_non_counts_are_refused(model, adata):
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray() / 3))
    denoiser = Denoiser.from_pretrained(model)
    with pytest.raises(ValueError, match="not raw counts"):
        denoiser.predict(adata)
    with pytest.raises(ValueError, match="not raw counts"):
        denoiser.fit(adata)
    assert nothing_written(adata) and not denoiser.fitted


def test_barely_overlapping_genes_are_refused(model, adata):
    x = adata.X.toarray()
    x[:, 0] = (x[:, 0] > 0) * 1.0  # one known gene with a few counts; the rest are unknown
    adata.X = sp.csr_matrix(x)
    adata.var_names = [VOCABULARY[0], *(f"OTHER{i}" for i in range(149))]
    with pytest.raises(ValueError, match="carry only"):
        Denoiser.from_pretrained(model).predict(adata)
    assert nothing_written(adata)


def test_a_view_is_refused(model, adata):
    view = adata[:50]
    with pytest.raises(ValueError, match="is a view"):
        Denoiser.from_pretrained(model).predict(view)
    assert nothing_written(adata)


def test_an_unfitted_model_from_scratch_is_refused(model, adata):
    with pytest.raises(ValueError, match="not fitted; call fit"):
        Denoiser.from_scratch(model).predict(adata)
    assert nothing_written(adata)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_writes_the_layer_and_refuses_an_existing_output(model, adata, tmp_path, caplog, capsys):
    model.save(tmp_path / "ckpt")
    adata.write_h5ad(tmp_path / "in.h5ad")
    args = ["denoise", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path / "ckpt"), "--sample-key", "sample"]
    assert main([*args, "--out", str(tmp_path / "out.h5ad")]) == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    expected = Denoiser.from_pretrained(tmp_path / "ckpt").get_denoised(adata, sample_key="sample")
    np.testing.assert_array_equal(out.layers["cellplm_denoised"], expected)
    assert (out.X != adata.X).nnz == 0
    assert out.uns["cellplm"]["cellplm_denoised"]["params"]["checkpoint_name"] == "ckpt"

    (tmp_path / "taken.h5ad").write_text("keep me")
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--out", str(tmp_path / "taken.h5ad")]) == 2
    assert "pass --overwrite" in caplog.text
    assert (tmp_path / "taken.h5ad").read_text() == "keep me"

    tuned = [*args, "--out", str(tmp_path / "tuned.h5ad"), "--fine-tune", "--steps", "2", "--layer-added", "tuned"]
    assert main(tuned) == 0
    written = ad.read_h5ad(tmp_path / "tuned.h5ad")
    assert written.uns["cellplm"]["tuned"]["params"]["fine_tuned"]

    capsys.readouterr()
    score = [*args, "--score", "--baselines", "unchanged", "--json", str(tmp_path / "score.json")]
    assert main(score) == 0
    printed = capsys.readouterr().out
    assert "cellplm_zero_shot" in printed and "unchanged" in printed
    saved = json.loads((tmp_path / "score.json").read_text())
    assert saved["protocol"] == "hidden" and saved["methods"][1]["method"] == "unchanged"
