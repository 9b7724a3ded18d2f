"""Spatial imputation: joint fine-tuning on a spatial panel and a reference, count-scale predictions of unmeasured
genes, coordinates reaching the model, held-out genes never read, save/load, bad input, and the command line."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
import torch

from opencellplm import CellPLM, testing
from opencellplm.cli import main
from opencellplm.data import InputSpec
from opencellplm.tasks.imputation import ImputationRecipe, SpatialImputer
from opencellplm.testing.synthetic import synthetic_adata

VOCABULARY = [f"G{i}" for i in range(120)]
QUICK = ImputationRecipe(steps=12, eval_every=4, warmup_steps=2, lr=5e-3, max_cells=100, precision="fp32")


def tiny_model() -> CellPLM:
    return testing.tiny_model(VOCABULARY, seed=1234, dropout=0.1, n_heads=4, positional=True, n_batches=3, n_datasets=2)


@pytest.fixture
def reference() -> ad.AnnData:
    return synthetic_adata(240, 100, gene_names=VOCABULARY[:100], seed=1)


@pytest.fixture
def spatial() -> ad.AnnData:
    """300 cells with 2-D coordinates measuring the first 40 of the reference's genes."""
    return synthetic_adata(300, 100, gene_names=VOCABULARY[:100], spatial=True, seed=2)[:, :40].copy()


@pytest.fixture
def fitted(spatial, reference) -> SpatialImputer:
    return SpatialImputer.from_pretrained(tiny_model(), recipe=QUICK).fit(spatial, reference)


def test_imputes_every_reference_gene_outside_the_panel_on_the_count_scale(fitted, spatial):
    imputed = fitted.impute(spatial)
    assert list(imputed.columns) == VOCABULARY[40:100]
    assert list(imputed.index) == list(spatial.obs_names)
    values = imputed.to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all()
    # the size factor puts the panel's predicted total at the observed one, so imputed genes scale with the library
    library = np.asarray(spatial.X.sum(1)).ravel()
    big, small = np.argmax(library), np.argmin(library)
    assert values[big].sum() > values[small].sum()
    summary = fitted.summary
    assert summary.positional and summary.n_panel_genes == 40 and summary.n_reference_genes == 100
    assert summary.spatial_sets == 3 and summary.reference_sets == 3  # 100-cell sets


def test_fitting_lowers_the_validation_loss(fitted):
    history = fitted.summary.history
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert {"val_spatial_nll", "val_reference_nll"} <= set(history[0])


def test_target_genes_are_never_read_from_the_spatial_data(fitted, spatial):
    before = fitted.impute(spatial, ["G5", "G60"])
    changed = spatial.copy()
    changed.X = changed.X.toarray()
    changed.X[:, 5] = 1000.0  # G5 is in the panel but is a target: its values must not matter
    after = fitted.impute(changed, ["G5", "G60"])
    np.testing.assert_array_equal(before.to_numpy(), after.to_numpy())
    # a panel gene that is not a target does reach the model
    changed.X[:, 6] = 1000.0
    assert not np.array_equal(before.to_numpy(), fitted.impute(changed, ["G5", "G60"]).to_numpy())


def test_coordinates_reach_the_model_only_with_the_encoding(spatial, reference):
    shuffled = spatial.copy()
    shuffled.obsm["spatial"] = np.random.default_rng(0).permutation(spatial.obsm["spatial"])
    results = {}
    for positional in (True, False):
        recipe = replace(QUICK, positional=positional, partition="random", steps=2)
        imputer = SpatialImputer.from_pretrained(tiny_model(), recipe=recipe).fit(spatial, reference)
        results[positional] = (imputer.impute(spatial, ["G60"]), imputer.impute(shuffled, ["G60"]))
    on, off = results[True], results[False]
    assert not np.allclose(on[0].to_numpy(), on[1].to_numpy())
    np.testing.assert_allclose(off[0].to_numpy(), off[1].to_numpy(), rtol=1e-5)


def test_predict_returns_a_new_anndata_with_the_imputed_layer(fitted, spatial):
    original = spatial.copy()
    result = fitted.predict(spatial, ["G60", "G61"])
    assert list(result.var_names) == list(spatial.var_names) + ["G60", "G61"]
    assert result.var["cellplm_imputed"].tolist() == [False] * 40 + [True, True]
    layer = result.layers["cellplm_imputed"]
    np.testing.assert_array_equal(layer[:, :40], spatial.X.toarray())
    assert (layer[:, 40:] > 0).all()
    assert result.X[:, 40:].nnz == 0  # X holds only measured values
    record = result.uns["cellplm"]["cellplm_imputed"]
    assert list(record["genes"]) == ["G60", "G61"] and record["params"]["positional"]
    assert "spatial" in result.obsm
    np.testing.assert_array_equal(spatial.X.toarray(), original.X.toarray())  # the input is unchanged


def test_save_and_load_give_the_same_imputation(fitted, spatial, tmp_path):
    fitted.save(tmp_path / "imputer")
    loaded = SpatialImputer.load(tmp_path / "imputer")
    np.testing.assert_allclose(loaded.impute(spatial).to_numpy(), fitted.impute(spatial).to_numpy(), rtol=1e-6)
    with pytest.raises(FileExistsError):
        fitted.save(tmp_path / "imputer")
    fitted.save(tmp_path / "imputer", overwrite=True)


# ------------------------------------------------------------------------------------------- bad input
def test_genes_absent_from_the_reference_are_named(fitted, spatial):
    with pytest.raises(ValueError, match=r"2 of the 3 genes to impute are not in the reference .*\['G110', 'NOPE'\]"):
        fitted.impute(spatial, ["G60", "G110", "NOPE"])


def test_no_shared_gene_is_an_error(reference):
    other = synthetic_adata(50, 10, gene_names=VOCABULARY[100:110], spatial=True, seed=4)
    imputer = SpatialImputer.from_pretrained(tiny_model(), recipe=QUICK)
    with pytest.raises(ValueError, match=r"spatial data \(10 genes, e.g. \['G100'.*share no gene"):
        imputer.fit(other, reference)


def test_spatial_data_without_coordinates_run_without_the_encoding_and_say_so(spatial, reference):
    del spatial.obsm["spatial"]
    imputer = SpatialImputer.from_pretrained(tiny_model(), recipe=replace(QUICK, steps=2))
    with pytest.warns(UserWarning, match=r"no coordinates in obsm\['spatial'\]: imputing without the positional"):
        imputer.fit(spatial, reference)
    assert not imputer.summary.positional
    assert np.isfinite(imputer.impute(spatial, ["G60"]).to_numpy()).all()


def test_genes_outside_the_vocabulary_are_added_on_request(reference):
    foreign = [f"dmel:{g}" for g in VOCABULARY[:100]]
    reference.var_names = foreign
    spatial = synthetic_adata(120, 100, gene_names=foreign, spatial=True, seed=2)[:, :30].copy()
    imputer = SpatialImputer.from_pretrained(tiny_model(), recipe=replace(QUICK, steps=2))
    with pytest.raises(ValueError, match="share no gene|extend_vocabulary=True"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imputer.fit(spatial, reference)
    imputer.fit(spatial, reference, extend_vocabulary=True)
    assert imputer.summary.n_genes_added_to_vocabulary == 100
    assert len(imputer.base.genes) == 220 and len(imputer.base.genes) > len(VOCABULARY)
    assert imputer.impute(spatial).shape == (120, 70)


def test_an_imputer_from_scratch_must_be_fitted(spatial):
    with pytest.raises(ValueError, match="from scratch and is not fitted"):
        SpatialImputer.from_scratch(tiny_model()).impute(spatial, ["G60"])


# ---------------------------------------------------------------------------------------- command line
def test_cli_impute_writes_a_new_file_and_never_replaces_one(spatial, reference, tmp_path, monkeypatch, caplog):
    model_dir = tmp_path / "model"
    tiny_model().save(model_dir)
    spatial.write_h5ad(tmp_path / "spatial.h5ad")
    reference.write_h5ad(tmp_path / "reference.h5ad")
    out = tmp_path / "imputed.h5ad"
    args = ["impute", str(tmp_path / "spatial.h5ad"), "--reference", str(tmp_path / "reference.h5ad")]
    args += ["--checkpoint", str(model_dir), "--steps", "2", "--max-cells", "100", "--genes", "G60,G61", "G62"]
    assert main([*args, "--out", str(out)]) == 0
    result = ad.read_h5ad(out)
    assert result.var_names[-3:].tolist() == ["G60", "G61", "G62"]
    assert result.layers["cellplm_imputed"].shape == (300, 43)
    caplog.set_level(logging.ERROR)
    assert main([*args, "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in caplog.text
    assert main([*args, "--out", str(tmp_path / "spatial.h5ad"), "--overwrite"]) == 2
    assert "is an input of this command" in caplog.text
    assert ad.read_h5ad(tmp_path / "spatial.h5ad").shape == (300, 40)
    missing = ["impute", str(tmp_path / "spatial.h5ad"), "--reference", str(tmp_path / "nope.h5ad")]
    assert main([*missing, "--out", str(tmp_path / "x.h5ad")]) == 2
    assert "input file not found" in caplog.text and not (tmp_path / "x.h5ad").exists()


def test_score_runs_cellplm_and_the_baselines_on_the_same_held_out_genes(spatial, reference):
    imputer = SpatialImputer.from_pretrained(tiny_model(), recipe=replace(QUICK, steps=2))
    result = imputer.score(
        spatial, reference, n_folds=2, max_per_bin=5, variants=("fine_tuned", "chunks"), values="simulated counts"
    )
    frame = result.to_frame()
    assert list(frame.index) == ["cellplm_fine_tuned", "cellplm_chunks", "reference_mean", "spage_style"]
    assert frame["folds"].tolist() == [2, 2, 2, 2]
    assert frame[["pearson", "cosine", "rmse"]].notna().all().all()
    assert frame.loc["cellplm_fine_tuned", "fit_seconds"] > 0 and frame.loc["cellplm_fine_tuned", "predict_seconds"] > 0
    # a baseline timed as one call counts as fitting, as in every task
    assert frame.loc["spage_style", "fit_seconds"] > 0 and np.isnan(frame.loc["spage_style", "predict_seconds"])
    assert frame.loc["spage_style", "peak_memory_mb"] >= 0
    per_fold = result.per_fold()
    assert per_fold.loc[("cellplm_fine_tuned", 0), "n_genes"] == len(result.folds[0]) <= 20
    assert not set(result.folds[0]) & set(result.folds[1])
    assert result.values == "simulated counts" and result.to_dict()["recipe"]["steps"] == 2
    fits = {row["method"]: row["params"] for row in result.rows if row["fold"] == 0}
    assert fits["cellplm_fine_tuned"]["positional"] and not fits["cellplm_chunks"]["positional"]
    with pytest.raises(ValueError, match="unknown variants"):
        imputer.score(spatial, reference, variants=("nope",))


def test_hidden_columns_reach_neither_the_encoder_nor_escape_the_loss(reference):
    model = tiny_model().module.eval()
    sets = tiny_model().cell_sets(reference[:50].copy(), InputSpec())
    batch = next(iter(sets)).batch
    hide = torch.zeros(batch.counts.shape[1], dtype=torch.bool)
    hide[40:] = True
    hidden = model(batch, hide=hide)
    dense = batch.counts.to_dense()
    dense[:, 40:] = 0
    zeroed = model(replace(batch, counts=dense.to_sparse_csr()))
    torch.testing.assert_close(hidden.latent.embedding, zeroed.latent.embedding)
    assert hidden.input_mask[:, 40:].all() and not hidden.input_mask[:, :40].any()
    torch.testing.assert_close(hidden.cells.counts.to_dense(), batch.counts.to_dense())  # the truth is whole
    with pytest.raises(ValueError, match="hide needs one entry per input column"):
        model(batch, hide=hide[:10])


def test_panel_training_fits(spatial, reference):
    imputer = SpatialImputer.from_pretrained(tiny_model(), recipe=replace(QUICK, panel_rate=1.0, steps=4))
    imputer.fit(spatial, reference)
    assert np.isfinite(imputer.impute(spatial, ["G60"]).to_numpy()).all()
    with pytest.raises(ValueError, match=r"panel_rate must lie in \[0, 1\]"):
        ImputationRecipe(panel_rate=1.5)


def test_a_loaded_imputer_is_not_scored(fitted, spatial, reference, tmp_path):
    fitted.save(tmp_path / "imputer")
    with pytest.raises(ValueError, match="loaded with fine-tuned weights"):
        SpatialImputer.load(tmp_path / "imputer").score(spatial, reference)


def test_cells_without_panel_counts_get_zeros(fitted, spatial):
    spatial.X = spatial.X.toarray()
    spatial.X[:3] = 0
    with pytest.warns(UserWarning, match="3 cells have no counts.*their imputed values are 0"):
        imputed = fitted.impute(spatial, ["G60"])
    assert (imputed.iloc[:3] == 0).all().all() and (imputed.iloc[3:] > 0).all().all()


def test_score_reads_a_backed_spatial_file(spatial, reference, tmp_path):
    spatial.write_h5ad(tmp_path / "spatial.h5ad")
    backed = ad.read_h5ad(tmp_path / "spatial.h5ad", backed="r")
    imputer = SpatialImputer.from_pretrained(tiny_model(), recipe=replace(QUICK, steps=2))
    result = imputer.score(backed, reference, n_folds=2, max_per_bin=3, folds=[0], variants=("fine_tuned",))
    assert result.to_frame()["folds"].tolist() == [1, 1, 1]


# ------------------------------------------------------------------------ errors before fine-tuning (issue 19)
@pytest.fixture
def no_fine_tuning(monkeypatch):
    """Fails the test when fine-tuning starts: every error below must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("fine-tuning started before the input was refused")

    monkeypatch.setattr("opencellplm.tasks.base.Trainer", refuse)


def impute_files(spatial, reference, tmp_path):
    tiny_model().save(tmp_path / "model")
    spatial.write_h5ad(tmp_path / "spatial.h5ad")
    reference.write_h5ad(tmp_path / "reference.h5ad")
    args = ["impute", str(tmp_path / "spatial.h5ad"), "--reference", str(tmp_path / "reference.h5ad")]
    return [*args, "--checkpoint", str(tmp_path / "model"), "--steps", "2", "--out", str(tmp_path / "out.h5ad")]


def one_error(caplog) -> str:
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    caplog.clear()
    return message


def test_cli_impute_refuses_unknown_genes_and_the_spatial_file_as_reference_before_fine_tuning(
    spatial, reference, tmp_path, caplog, no_fine_tuning
):
    args = impute_files(spatial, reference, tmp_path)
    caplog.set_level(logging.ERROR)
    assert main([*args, "--genes", "G60,NOTAGENE", "G61", "ALSONOT"]) == 2
    assert one_error(caplog) == (
        f"2 of the 4 genes to impute are not in the reference {tmp_path / 'reference.h5ad'} (or not in the model's "
        "vocabulary): ['NOTAGENE', 'ALSONOT']; only genes the reference measured can be imputed"
    )
    itself = ["impute", str(tmp_path / "spatial.h5ad"), "--reference", str(tmp_path / "spatial.h5ad"), *args[4:]]
    assert main(itself) == 2
    assert one_error(caplog).startswith(
        f"--reference names the spatial input itself ({tmp_path / 'spatial.h5ad'}); impute needs a separate"
    )
    spatial.write_h5ad(tmp_path / "copy.h5ad")  # the same data under another name: nothing to impute
    copy = ["impute", str(tmp_path / "spatial.h5ad"), "--reference", str(tmp_path / "copy.h5ad"), *args[4:]]
    assert main(copy) == 2
    assert one_error(caplog).startswith(f"the reference {tmp_path / 'copy.h5ad'} measures no gene beyond the panel")
    with pytest.raises(ValueError, match="the reference is the spatial data itself"):
        SpatialImputer.from_pretrained(tiny_model(), recipe=QUICK).fit(spatial, spatial)
    assert not (tmp_path / "out.h5ad").exists()


def test_impute_input_errors_name_the_file_and_the_layer(spatial, reference, tmp_path, caplog, no_fine_tuning):
    reference.layers["counts"] = reference.X.toarray()
    reference.layers["counts"][0, :5] = np.nan
    args = impute_files(spatial, reference, tmp_path)
    caplog.set_level(logging.ERROR)
    assert main([*args, "--reference-layer", "counts"]) == 2
    message = one_error(caplog)
    assert message.startswith(
        f"the reference {tmp_path / 'reference.h5ad'} cannot be used (counts in layers['counts'])"
    )
    assert "layers['counts'] has 5 NaN, infinite or negative entries, first in cells ['cell_0']" in message
    assert main([*args, "--layer", "raw"]) == 2
    message = one_error(caplog)
    assert message.startswith(f"the spatial file {tmp_path / 'spatial.h5ad'} cannot be used (counts in layers['raw'])")
    assert "layer 'raw' not found" in message
    assert main([*args, "--reference-sample-key", "donor"]) == 2
    assert one_error(caplog).startswith(f"the reference {tmp_path / 'reference.h5ad'} cannot be used (counts in X)")
    with pytest.raises(ValueError, match=r"^the reference cannot be used \(counts in layers\['counts'\]\):\n- layers"):
        SpatialImputer.from_pretrained(tiny_model(), recipe=QUICK).fit(spatial, reference, reference_layer="counts")


ENSEMBL = [f"ENSG{i:011d}" for i in range(120)]


def symbols_with_id_column(adata: ad.AnnData) -> ad.AnnData:
    """The data with gene symbols in var_names and the Ensembl-like ids in var['gene_ids']."""
    adata.var["gene_ids"] = [ENSEMBL[VOCABULARY.index(g)] for g in adata.var_names]
    adata.var_names = [f"SYM{g[1:]}" for g in adata.var_names]
    return adata


def test_cli_impute_reads_gene_ids_from_a_column_for_an_ensembl_checkpoint(spatial, reference, tmp_path, caplog):
    args = impute_files(symbols_with_id_column(spatial), symbols_with_id_column(reference), tmp_path)
    model = tiny_model()
    CellPLM(model.module, ENSEMBL).save(tmp_path / "ensembl")  # a checkpoint whose vocabulary is Ensembl ids
    args[args.index("--checkpoint") + 1] = str(tmp_path / "ensembl")
    assert main([*args, "--gene-key", "gene_ids", "--genes", "SYM60", ENSEMBL[61]]) == 0
    result = ad.read_h5ad(tmp_path / "out.h5ad")
    assert result.var_names[-2:].tolist() == ["SYM60", "SYM61"]  # named as the reference names them
    assert result.var["cellplm_gene_id"].tolist() == ENSEMBL[:40] + ENSEMBL[60:62]
    assert list(result.uns["cellplm"]["cellplm_imputed"]["gene_ids"]) == ENSEMBL[60:62]
    assert np.isfinite(result.layers["cellplm_imputed"]).all()
    other = [*args[:-1], str(tmp_path / "out2.h5ad")]
    assert main([*other, "--gene-key", "gene_ids", "--reference-gene-key", "gene_ids"]) == 0
    assert ad.read_h5ad(tmp_path / "out2.h5ad").n_vars == 100  # every reference gene outside the panel
    caplog.set_level(logging.ERROR)
    assert main([*other[:-1], str(tmp_path / "out3.h5ad")]) == 2  # without the key: no shared vocabulary gene
    message = one_error(caplog)
    assert "is in the model's vocabulary (120 genes, e.g. ['ENSG00000000000'" in message
    assert "(--gene-key / --reference-gene-key)" in message


def test_an_imputer_fitted_with_gene_keys_keeps_the_reference_names_when_saved(spatial, reference, tmp_path):
    spatial, reference = symbols_with_id_column(spatial), symbols_with_id_column(reference)
    model = CellPLM(tiny_model().module, ENSEMBL)
    imputer = SpatialImputer.from_pretrained(model, recipe=replace(QUICK, steps=2))
    imputer.fit(spatial, reference, gene_key="gene_ids", reference_gene_key="gene_ids", genes=["SYM70"])
    imputer.save(tmp_path / "imputer")
    loaded = SpatialImputer.load(tmp_path / "imputer")
    by_name, by_id = loaded.impute(spatial, ["SYM70"]), loaded.impute(spatial, [ENSEMBL[70]])
    assert list(by_name.columns) == [ENSEMBL[70]]  # impute() speaks the model's ids
    np.testing.assert_array_equal(by_name.to_numpy(), by_id.to_numpy())
    with pytest.warns(UserWarning, match="1 requested gene.* measured by the panel"):
        result = loaded.predict(spatial, ["SYM70", "SYM5"])
    assert result.var_names[40:].tolist() == ["SYM70"]  # SYM5 is in the panel (by its id): kept, not added again


def test_genes_added_to_the_vocabulary_start_at_the_data_profile_not_at_noise_that_differs_between_cells():
    from opencellplm.module import CellBatch
    from opencellplm.tasks.imputation import _start_added_genes_at_data_profile

    from .conftest import small_model

    model = small_model(["A", "B", "C"])
    model.extend_vocabulary(["N1", "N2"])
    module, rows = model.module.eval(), [3, 4]
    rng = np.random.default_rng(0)
    n2 = rng.poisson(8, 50) + 1
    counts = np.column_stack([rng.poisson(20, 50), rng.poisson(5, 50), 2 * n2, n2]).astype(np.float32)
    reference = ad.AnnData(counts)
    reference.var_names = ["A", "B", "N1", "N2"]  # N1: twice N2's counts in every cell
    batch = CellBatch(torch.as_tensor(counts).to_sparse_csr(), torch.as_tensor([0, 1, 3, 4]))

    def added_shares():  # each added gene's share of the two, per cell
        with torch.no_grad():
            mean = module(batch).nb.mean[:, rows]
        return mean / mean.sum(1, keepdim=True)

    assert float(added_shares()[:, 0].std()) > 1e-4  # fresh rows: noise that differs between cells (3e-4 here)
    _start_added_genes_at_data_profile(module, model.genes, ["N1", "N2"], (reference,))
    assert torch.count_nonzero(module.decoder.mean.weight[rows]) == 0
    bias = module.decoder.mean.bias.detach().numpy()
    assert bias[3] - bias[4] == pytest.approx(np.log(2.0), abs=1e-5)
    shares = (counts / counts.sum(1, keepdims=True)).mean(0)  # the known genes set the level: the median gap
    gap = np.median(bias[[0, 1]] - np.log(shares[[0, 1]]))
    assert bias[3] == pytest.approx(np.log(shares[2]) + gap, abs=1e-5)
    np.testing.assert_allclose(added_shares().numpy(), np.tile([2 / 3, 1 / 3], (50, 1)), rtol=1e-5)
