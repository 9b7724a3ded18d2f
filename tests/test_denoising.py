"""Denoising: count-scale predictions, fine-tuning with hidden validation entries, the score protocols and baselines,
save/load, input errors that write nothing, and the command line."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from opencellplm import CellPLM, testing
from opencellplm.baselines import knn_smoothing
from opencellplm.cli import main
from opencellplm.config import ConfigError
from opencellplm.metrics import denoising_scores, hide_counts, mcv_scores, molecular_split
from opencellplm.tasks import Denoiser, DenoisingRecipe, DenoisingResult
from opencellplm.tasks.denoising import fit_gene_levels, scaled_profiles
from opencellplm.testing.synthetic import synthetic_adata

VOCABULARY = [f"ENSG{i:011d}" for i in range(200)]
#: Few steps, fp32 (the same numbers on every CPU), a high rate so that a few steps move the weights.
QUICK = DenoisingRecipe(steps=12, eval_every=3, warmup_steps=2, lr=5e-3, precision="fp32")
#: Where a fit only has to run.
SHORT = replace(QUICK, steps=3)


def tiny_model(*, decoder: bool = True) -> CellPLM:
    # seed 1234, not the recipe's: a model from scratch starts elsewhere
    return testing.tiny_model(VOCABULARY, seed=1234, dropout=0.1, n_heads=4, decoder=decoder, n_batches=3, n_datasets=2)


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


def test_gene_levels_are_fitted_to_the_data_s_gene_totals(model, partly_known):
    """Default "data": each gene's denoised total over the cells is its input total, each cell keeps its library;
    "model" keeps the decoder's own gene levels, which the input's totals do not constrain."""
    adata, known = partly_known, np.arange(145)
    x = adata.X.toarray()[:, known]
    denoiser = Denoiser.from_pretrained(model)
    fitted = denoiser.get_denoised(adata, sample_key="sample")[:, known]
    own = denoiser.get_denoised(adata, sample_key="sample", gene_levels="model")[:, known]
    for layer in (fitted, own):
        np.testing.assert_allclose(layer.sum(1), x.sum(1), rtol=1e-4)
    np.testing.assert_allclose(fitted.sum(0), x.sum(0), rtol=2e-3, atol=1e-3)
    assert np.abs(own.sum(0) / x.sum(0) - 1).max() > 0.5  # the untrained decoder's levels are far off
    assert np.abs(fitted - x).max() > 0.1  # fitted levels, not the input copied
    # The factor is a gene's fitted level over the decoder's own: the same cell-to-cell pattern within each gene.
    denoiser.predict(adata, sample_key="sample")
    record = adata.uns["cellplm"]["cellplm_denoised"]
    assert record["params"]["gene_levels"] == "data"
    assert list(record["genes_denoised"]) == list(adata.var_names[known])
    factors = record["gene_level_factors"]
    ratio = fitted / own / factors  # per cell, one constant (the cell's renormalisation) over its genes
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-3)
    del adata.uns["cellplm"], adata.layers["cellplm_denoised"]
    denoiser.predict(adata, sample_key="sample", gene_levels="model")
    record = adata.uns["cellplm"]["cellplm_denoised"]
    assert record["params"]["gene_levels"] == "model" and "gene_level_factors" not in record
    np.testing.assert_array_equal(adata.layers["cellplm_denoised"][:, known], own)


def test_fit_gene_levels_recovers_the_levels_that_made_the_data():
    """Counts whose expectation is the decoded shares times known gene levels give those levels back (relative to
    the median gene), in a few iterations."""
    rng = np.random.default_rng(0)
    shares = rng.dirichlet(np.ones(40), size=300).astype(np.float32)
    truth = np.exp(rng.normal(0.0, 1.5, 40))
    library = rng.uniform(500, 5000, 300)
    expected = shares * truth
    expected = expected / expected.sum(1, keepdims=True) * library[:, None]
    factors, iterations = fit_gene_levels(shares, library, expected.sum(0))
    np.testing.assert_allclose(factors, truth / np.median(truth), rtol=5e-3)
    assert np.median(factors) == pytest.approx(1.0) and iterations < 100
    # A gene never observed gets factor 0, and so 0 in every denoised cell.
    observed = expected.sum(0)
    observed[3] = 0.0
    factors, _ = fit_gene_levels(shares, library, observed)
    assert factors[3] == 0.0
    denoised = scaled_profiles(shares.copy(), factors, library)
    assert (denoised[:, 3] == 0).all()
    np.testing.assert_allclose(denoised.sum(1), library, rtol=1e-4)


def test_gene_levels_fitted_on_few_cells_are_warned_about(model, adata, caplog):
    """The cells' own counts take part in the fit: one cell comes back as its input, and a warning says so."""
    one = adata[:1].copy()
    with caplog.at_level(logging.WARNING, logger="opencellplm"):
        denoised = Denoiser.from_pretrained(model).get_denoised(one)
    np.testing.assert_allclose(denoised, one.X.toarray(), rtol=2e-3, atol=1e-3)
    assert "gene levels fitted on 1 cells follow those cells' own counts (fewer than 50)" in caplog.text
    assert "gene_levels='model' (--gene-levels model)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="opencellplm"):
        Denoiser.from_pretrained(model).get_denoised(adata)  # 200 cells
    assert "gene levels fitted" not in caplog.text


def test_a_bad_gene_levels_value_is_refused(model, adata):
    with pytest.raises(ValueError, match="gene_levels='both'; choose 'data' \\(fitted to the input\\) or 'model'"):
        Denoiser.from_pretrained(model).predict(adata, gene_levels="both")
    assert nothing_written(adata)
    with pytest.raises(ValueError, match="gene_levels='both'"):
        Denoiser.from_pretrained(model).score(adata, fine_tune=False, baselines=(), gene_levels="both")


def test_cli_gene_levels_reaches_the_denoiser(model, adata, tmp_path, monkeypatch):
    seen = []
    real = Denoiser._denoise

    def spy(self, adata, spec, gene_levels, **kwargs):
        seen.append(gene_levels)
        return real(self, adata, spec, gene_levels, **kwargs)

    monkeypatch.setattr(Denoiser, "_denoise", spy)
    model.save(tmp_path / "ckpt")
    adata.write_h5ad(tmp_path / "in.h5ad")
    args = ["denoise", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path / "ckpt")]
    assert main([*args, "--out", str(tmp_path / "a.h5ad")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.h5ad"), "--gene-levels", "model"]) == 0
    assert main([*args, "--score", "--baselines", "unchanged", "--gene-levels", "model"]) == 0
    assert seen == ["data", "model", "model"]
    assert ad.read_h5ad(tmp_path / "b.h5ad").uns["cellplm"]["cellplm_denoised"]["params"]["gene_levels"] == "model"


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
    with pytest.raises(ValueError, match=r"unknown baseline\(s\) \['dca'\] for denoising; choose among \['unchanged'"):
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
        assert main([*args, "--out", str(tmp_path / "taken.h5ad"), "--overwrite"]) == 2
    assert "is not a marked opencellplm output" in caplog.text  # so never replaced
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


# ------------------------------------------------------------------ genes outside the vocabulary, layer form
def test_genes_outside_the_vocabulary_are_warned_about_and_named(model, partly_known, caplog):
    with caplog.at_level(logging.WARNING, logger="opencellplm"):
        Denoiser.from_pretrained(model).predict(partly_known)
    x = partly_known.X.toarray()
    share = 100 * x[:, 145:].sum() / x.sum()
    assert (
        f"5 of 150 genes (3.3%), carrying {share:.1f}% of the counts, are not in the model's vocabulary and keep "
        "their input counts, not denoised (e.g. NOTAGENE0, NOTAGENE1, NOTAGENE2, NOTAGENE3, NOTAGENE4); all are "
        "listed in uns['cellplm']['cellplm_denoised']['genes_unchanged']"
    ) in caplog.text
    record = partly_known.uns["cellplm"]["cellplm_denoised"]
    assert list(record["genes_unchanged"]) == [f"NOTAGENE{i}" for i in range(5)]


def test_no_warning_when_every_gene_is_denoised(model, adata, caplog):
    with caplog.at_level(logging.WARNING, logger="opencellplm"):
        Denoiser.from_pretrained(model).predict(adata)
    assert "not in the model's vocabulary" not in caplog.text
    assert len(adata.uns["cellplm"]["cellplm_denoised"]["genes_unchanged"]) == 0


def mostly_unknown(adata: ad.AnnData) -> ad.AnnData:
    """The cells with 100 of their 150 genes renamed out of the vocabulary, those counted in one cell in ten: most
    entries of the result stay zero."""
    x = adata.X.toarray()
    x[np.arange(adata.n_obs) % 10 != 0, 50:] = 0
    adata.X = sp.csr_matrix(x)
    adata.var_names = [*adata.var_names[:50], *(f"NOTAGENE{i}" for i in range(100))]
    return adata


def test_the_layer_is_sparse_where_that_is_smaller(model, adata, tmp_path, caplog):
    data = mostly_unknown(adata)
    denoiser = Denoiser.from_pretrained(model)
    expected = denoiser.get_denoised(data)
    with caplog.at_level(logging.INFO, logger="opencellplm"):
        denoiser.predict(data)
    layer = data.layers["cellplm_denoised"]
    assert sp.issparse(layer) and layer.format == "csr"
    np.testing.assert_array_equal(layer.toarray(), expected)
    assert "layers['cellplm_denoised'] is sparse" in caplog.text
    # the same from a file: the written layer is sparse
    data.write_h5ad(tmp_path / "in.h5ad")
    denoiser.denoise_file(tmp_path / "in.h5ad", tmp_path / "out.h5ad")
    with h5py.File(tmp_path / "out.h5ad") as f:
        assert f["layers/cellplm_denoised"].attrs["encoding-type"] == "csr_matrix"
    # a dense input keeps a dense layer
    dense = data.copy()
    dense.X = dense.X.toarray()
    denoiser.predict(dense)
    assert isinstance(dense.layers["cellplm_denoised"], np.ndarray)


def test_the_layer_is_dense_when_the_model_knows_the_genes(model, partly_known, caplog):
    with caplog.at_level(logging.INFO, logger="opencellplm"):
        Denoiser.from_pretrained(model).predict(partly_known)
    assert isinstance(partly_known.layers["cellplm_denoised"], np.ndarray)
    assert "layers['cellplm_denoised'] is dense, 0.1 MB" in caplog.text
    assert "the NB mean is above zero for every gene in the model's vocabulary" in caplog.text


# --------------------------------------------------------------------------- fine-tuning: progress, resume
def test_fine_tuning_logs_its_progress_when_stderr_is_not_a_terminal(model, adata, caplog):
    with caplog.at_level(logging.INFO, logger="opencellplm"):  # pytest's stderr is not a terminal
        Denoiser.from_pretrained(model, recipe=replace(SHORT, eval_every=1)).fit(adata)
    assert [line for line in caplog.messages if line.startswith("step ")][0].startswith("step 1/3: loss ")
    assert "step 3/3: loss " in caplog.text and "val_rmse" in caplog.text


class Killed(Exception):
    """Stands for a kill part-way through fine-tuning."""


def test_fine_tuning_resumes_in_its_work_folder(model, adata, tmp_path, monkeypatch, caplog):
    from opencellplm.tasks.denoising import DenoisingObjective

    uninterrupted = Denoiser.from_pretrained(model, recipe=QUICK).fit(adata)
    loss, steps = DenoisingObjective.loss, []

    def dies_at_step_8(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 8:
            raise Killed
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(DenoisingObjective, "loss", dies_at_step_8)
    with pytest.raises(Killed):
        Denoiser.from_pretrained(model, recipe=QUICK).fit(adata, work=tmp_path / "run")
    monkeypatch.setattr(DenoisingObjective, "loss", loss)
    with caplog.at_level(logging.INFO, logger="opencellplm"):
        resumed = Denoiser.from_pretrained(model, recipe=QUICK).fit(adata, work=tmp_path / "run")
    assert "resuming at step 6" in caplog.text  # the checkpoint of the evaluation at step 6
    assert resumed.summary.history == uninterrupted.summary.history
    assert resumed.summary.kept == uninterrupted.summary.kept == "fine-tuned"
    np.testing.assert_allclose(resumed.get_denoised(adata), uninterrupted.get_denoised(adata), rtol=1e-5)
    # a finished run is read back, not trained again
    again = Denoiser.from_pretrained(model, recipe=QUICK).fit(adata, work=tmp_path / "run")
    np.testing.assert_array_equal(again.get_denoised(adata), resumed.get_denoised(adata))


def test_a_work_folder_of_something_else_is_refused(model, adata, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    denoiser = Denoiser.from_pretrained(model, recipe=SHORT)
    with pytest.raises(FileExistsError, match=r"\(--work\) holds files but no fine-tuning run \(state.pt\)"):
        denoiser.fit(adata, work=tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"] and not denoiser.fitted
    # a run killed before its first checkpoint left only its config and lock: it starts again
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {}, "train": {}}))  # a run's settings
    (tmp_path / "run" / ".lock").write_text("")
    denoiser.fit(adata, work=tmp_path / "run")
    assert (tmp_path / "run" / "state.pt").exists()
    other = synthetic_adata(200, 150, gene_names=VOCABULARY[::-1][:150], seed=4)
    with pytest.raises(ConfigError, match=r"cannot resume: the settings differ .*data\.counts"):
        denoiser.fit(other, work=tmp_path / "run")


# ---------------------------------------------------------------------------------- CLI: flags and table
def test_cli_refuses_fine_tuning_flags_without_fine_tune(model, adata, tmp_path, caplog):
    model.save(tmp_path / "ckpt")
    adata.write_h5ad(tmp_path / "in.h5ad")
    args = ["denoise", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path / "ckpt")]
    out = ["--out", str(tmp_path / "out.h5ad")]
    cases = {
        ("--steps", "5"): "--steps sets up fine-tuning, which runs only with --fine-tune (without it denoise is "
        "zero-shot); add --fine-tune, or drop --steps",
        ("--work", str(tmp_path / "w")): "--work sets up fine-tuning, which runs only with --fine-tune",
        ("--from-scratch",): "--from-scratch adds a row to --score",
    }
    for flags, message in cases.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main([*args, *out, *flags]) == 2
        assert message in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--score", "--fine-tune", "--work", str(tmp_path / "w")]) == 2
    assert "--score fine-tunes in memory, drop --work" in caplog.text
    assert not (tmp_path / "out.h5ad").exists() and not (tmp_path / "w").exists()


def test_cli_refuses_score_options_without_score(model, adata, tmp_path, caplog):
    model.save(tmp_path / "ckpt")
    adata.write_h5ad(tmp_path / "in.h5ad")
    args = ["denoise", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "o")]
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--json", str(tmp_path / "o.json"), "--protocol", "mcv"]) == 2
    assert "--protocol, --json set up --score, and denoising into --out does not score; drop them" in caplog.text
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.json").exists()


def test_cli_work_folder_is_never_over_an_input_nor_the_output(model, adata, tmp_path, caplog):
    model.save(tmp_path / "ckpt")
    adata.write_h5ad(tmp_path / "in.h5ad")
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    args = ["denoise", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path / "ckpt"), "--fine-tune"]
    cases = {
        (str(tmp_path / "ckpt" / "ft"), str(tmp_path / "o.h5ad")): "lies inside",
        (str(tmp_path / "d.h5ad"), str(tmp_path / "d.h5ad")): "is an input of this command",
        (str(tmp_path / "w"), str(tmp_path / "w" / "o.h5ad")): "lies inside",
    }
    for (work, out), message in cases.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main([*args, "--steps", "2", "--work", work, "--out", out]) == 2
        assert message in caplog.text
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "in.h5ad"]
    with pytest.raises(ValueError, match="lies inside"):  # the library call alike
        Denoiser.from_pretrained(CellPLM.from_pretrained(tmp_path / "ckpt")).denoise_file(
            tmp_path / "in.h5ad", tmp_path / "o.h5ad", fine_tune=True, work=tmp_path / "ckpt" / "ft"
        )


def test_cli_score_prints_every_row_and_names_those_not_run(model, adata, tmp_path, capsys):
    model.save(tmp_path / "ckpt")
    adata.write_h5ad(tmp_path / "in.h5ad")
    args = ["denoise", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path / "ckpt"), "--score"]
    assert main([*args, "--baselines", "unchanged"]) == 0
    printed = capsys.readouterr().out
    assert "rows not run: cellplm_fine_tuned (add --fine-tune), cellplm_from_scratch (add --from-scratch)" in printed
    assert main([*args, "--baselines", "unchanged,knn_smoothing", "--from-scratch", "--steps", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows = [line.split()[0] for line in table[3:] if line.strip()]
    expected = ["cellplm_zero_shot", "cellplm_fine_tuned", "cellplm_from_scratch", "unchanged", "knn_smoothing"]
    assert rows == expected and "rows not run" not in "\n".join(table)


def test_cli_fine_tunes_resumably_with_work(model, adata, tmp_path):
    model.save(tmp_path / "ckpt")
    adata.write_h5ad(tmp_path / "in.h5ad")
    args = ["denoise", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path / "ckpt"), "--fine-tune"]
    run = [*args, "--steps", "2", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out.h5ad")]
    assert main(run) == 0
    assert (tmp_path / "w" / "state.pt").exists() and (tmp_path / "w" / "summary.json").exists()
    assert ad.read_h5ad(tmp_path / "out.h5ad").uns["cellplm"]["cellplm_denoised"]["params"]["fine_tuned"]


def test_the_steps_default_in_the_help_is_the_recipe_s():
    from opencellplm.cli import build_parser

    denoise = build_parser()._subparsers._group_actions[0].choices["denoise"]
    steps = next(a for a in denoise._actions if a.dest == "steps")
    assert f"default {DenoisingRecipe().steps}," in steps.help
