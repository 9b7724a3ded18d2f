"""Pretraining diagnostics: what they report for a decoder that ignores the cell, a decoder that does not, and the
loss split into its terms; the weights a run keeps for them; the baselines beside them."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from opencellplm import CellPLM, configs
from opencellplm.baselines import mean_profile
from opencellplm.config import MaskingConfig
from opencellplm.data import InputSpec
from opencellplm.data.corpus import prepare_corpus
from opencellplm.metrics import denoising_scores, hide_counts
from opencellplm.module.pretrain import reconstruction_loss
from opencellplm.train import diagnostics, pretrain

from .conftest import small_model, vocabulary


@pytest.fixture
def cells() -> ad.AnnData:
    """60 cells of two kinds: the first 30 express the first 10 genes highly, the others the next 10."""
    rng = np.random.default_rng(0)
    rates = np.full((60, 40), 2.0)
    rates[:30, :10] = 30.0
    rates[30:, 10:20] = 30.0
    x = rng.poisson(rates).astype(np.float32)
    return ad.AnnData(x, var=pd.DataFrame(index=vocabulary(40)))


def _blind(model: CellPLM) -> CellPLM:
    """The model with its decoder's output weights zeroed: every cell decodes to the same profile."""
    with torch.no_grad():
        model.module.decoder.mean.weight.zero_()
    return model


def test_a_decoder_that_ignores_the_cell_shows_no_spread_and_no_use_of_the_latent(cells):
    model = _blind(small_model(vocabulary(40)))
    dependence = diagnostics.decoder_dependence(model, cells)
    assert dependence.spread_decoded == pytest.approx(0.0, abs=1e-6)
    assert dependence.spread_ratio > 1e4 and dependence.spread_observed > 0.3
    usage = diagnostics.latent_usage(model, cells)
    assert usage.swap_nll_increase == pytest.approx(0.0, abs=1e-3)


def test_a_decoder_that_follows_the_cell_correlates_with_what_was_observed(cells):
    model = small_model(vocabulary(40))
    with torch.no_grad():  # decode each cell from its own counts: the latent's first unit says which kind it is
        embedding = model.module.embedder.gene_embedding
        embedding.zero_()
        embedding[:10, 0], embedding[10:20, 0] = 1.0, -1.0
    blind = diagnostics.decoder_dependence(_blind(small_model(vocabulary(40))), cells)
    dependence = diagnostics.decoder_dependence(model, cells)
    assert dependence.spread_decoded > 100 * blind.spread_decoded
    assert dependence.n_cells == 60 and dependence.n_genes == 40
    usage = diagnostics.latent_usage(model, cells)
    assert usage.dim == 8 and 0 <= usage.active_dims <= 8 and usage.components_used >= 1


def test_depth_share_follows_depth_in_the_input_not_the_cell_type():
    """Two kinds of cells at depths spread a hundredfold: a model fed log1p of raw counts carries depth in its latent;
    the same weights fed counts per 10k carry much less (what is left is the noise of shallow cells)."""
    rng = np.random.default_rng(1)
    profile = np.full((2, 40), 1.0)
    profile[0, :10], profile[1, 10:20] = 20.0, 20.0
    kind = np.repeat([0, 1], 40)
    depth = np.tile(np.geomspace(100, 10000, 40), 2)
    x = rng.poisson(profile[kind] / profile[kind].sum(1, keepdims=True) * depth[:, None]).astype(np.float32)
    cells = ad.AnnData(x, var=pd.DataFrame(index=vocabulary(40)))
    raw = small_model(vocabulary(40))
    per_10k = CellPLM(raw.module.__class__(replace(raw.config, input_scaling="log1p_cp10k")), raw.genes)
    per_10k.module.load_state_dict(raw.module.state_dict())
    share_raw = diagnostics.latent_usage(raw, cells).depth_share
    share_10k = diagnostics.latent_usage(per_10k, cells).depth_share
    assert 0.5 < share_raw <= 1.0 and 0.0 <= share_10k < share_raw / 3


def test_the_loss_terms_add_up_to_the_objective_of_the_same_forward(cells):
    model = small_model(vocabulary(40))
    masking = MaskingConfig(cell_rate=0.5, gene_rate=0.3, drop_cell_rate=0.0)
    terms = diagnostics.loss_terms(model, cells, masking, seed=3)
    batch = next(iter(model.cell_sets(cells, InputSpec(max_cells=None)))).batch
    torch.manual_seed(3)
    module = model.module.eval()
    with torch.no_grad():
        out = module(batch, corrupt=masking, decode_genes=batch.gene_index)
        objective = reconstruction_loss(out, masked_term=True).objective
    assert terms.nb_masked_entries + terms.nb_visible_entries + terms.nb_masked_term == pytest.approx(
        float(objective), rel=1e-4
    )
    assert terms.latent_loss >= 2 * 5.0 * model.config.latent.loss_floor - 1e-6  # both floored terms, weight 5
    assert terms.gaussian_active == (terms.gaussian > model.config.latent.loss_floor)
    assert not terms.categorical_active  # KL to a uniform over 4 components is at most log 4 < the floor 5
    assert terms.categorical <= math.log(4) + 1e-6


def test_mean_profile_gives_every_cell_the_same_shares_at_its_own_depth(cells):
    result = mean_profile(cells)
    totals = cells.X.sum(1)
    np.testing.assert_allclose(result.prediction.sum(1), totals, rtol=1e-5)
    shares = result.prediction / result.prediction.sum(1, keepdims=True)
    np.testing.assert_allclose(shares, np.broadcast_to(shares[0], shares.shape), rtol=1e-5)
    expected = (cells.X / totals[:, None]).mean(0)
    np.testing.assert_allclose(shares[0], expected, rtol=1e-5)


def test_denoising_scores_report_the_pearson_r_of_the_hidden_entries(cells):
    corrupted, hidden = hide_counts(cells.X, fraction=0.25, seed=0)
    perfect = denoising_scores(cells.X, cells.X, hidden)
    assert perfect.pearson == pytest.approx(1.0) and perfect.rmse == 0.0
    flat = denoising_scores(cells.X, np.ones_like(cells.X), hidden)
    assert math.isnan(flat.pearson)  # a constant prediction has no correlation to report


def test_a_run_keeps_the_weights_of_every_evaluated_step_from_the_start(tmp_path):
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        rng.negative_binomial(2, 0.5, size=(60, 20)).astype(np.float32),
        var=pd.DataFrame(index=[f"G{j}" for j in range(20)]),
    )
    adata.write_h5ad(tmp_path / "a.h5ad")
    prepare_corpus([tmp_path / "a.h5ad"], tmp_path / "corpus", max_cells=10)
    model, train = configs.load("tiny")
    train = replace(train, steps=4, eval_every=2, checkpoint_every=2, precision="fp32", warmup_steps=1)
    pretrain(tmp_path / "corpus", tmp_path / "run", model=model, train=train, keep_steps=True)
    kept = sorted(p.name for p in (tmp_path / "run" / "steps").iterdir())
    assert kept == ["step-0000000", "step-0000002", "step-0000004"]
    first, last = (CellPLM.from_pretrained(tmp_path / "run" / "steps" / name) for name in (kept[0], kept[-1]))
    assert first.meta["step"] == 0 and last.meta["step"] == 4
    assert not torch.equal(first.module.decoder.mean.weight, last.module.decoder.mean.weight)
    without = pretrain(tmp_path / "corpus", tmp_path / "plain", model=model, train=train)
    assert without["steps"] == 4 and not (tmp_path / "plain" / "steps").exists()
    with pytest.raises(ValueError, match=r"decoder_bias has shape \(3,\), the model needs \(20,\)"):
        pretrain(tmp_path / "corpus", tmp_path / "bad", model=model, train=train, decoder_bias=np.zeros(3))


# ------------------------------------------------------------------------------------------------ the fix
def test_a_cell_set_norm_standardises_each_feature_over_the_cells_of_the_set():
    from opencellplm.nn.norm import CellSetNorm

    x = torch.randn(50, 6) * torch.tensor([0.03, 0.1, 1.0, 10.0, 100.0, 3.0]) + 7.0
    out = CellSetNorm(6)(x)
    torch.testing.assert_close(out.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(6), atol=1e-2, rtol=0)
    kept = CellSetNorm(6, keep_mean=True)(x)
    torch.testing.assert_close(kept.mean(0), x.mean(0), atol=1e-4, rtol=1e-5)  # the set's level passes
    torch.testing.assert_close(kept - kept.mean(0), out, atol=1e-4, rtol=1e-5)  # the spread is standardised
    one = CellSetNorm(6)(x[:1])  # a one-cell set has no spread: the shift only, no NaN
    assert torch.isfinite(one).all() and torch.equal(one, torch.zeros(1, 6))
    assert CellSetNorm(6).eval()(x).equal(CellSetNorm(6).train()(x))  # no running statistics: eval = train


def test_a_decoder_with_a_cell_set_norm_keeps_the_differences_between_cells_when_they_shrink():
    """Scaling the latent's differences between cells down 10-fold changes nothing the decoder's norm passes on,
    while the official per-cell GroupNorm passes them on shrunk (what the collapsed pretraining exploited)."""
    from opencellplm import ModelConfig
    from opencellplm.module.decoder import NBDecoder
    from opencellplm.module.outputs import CellBatch

    config = ModelConfig.from_dict(
        {
            "n_genes": 30,
            "hidden_dim": 16,
            "encoder": {"n_layers": 1, "n_heads": 2},
            "latent": {"dim": 8, "n_clusters": 4, "hidden_dim": 8},
            "decoder": {"hidden_dim": 16, "bottleneck_dim": 8, "block_norm": "cellset"},
        }
    )
    batch = CellBatch(counts=torch.ones(40, 30).to_sparse_csr(), gene_index=torch.arange(30))
    z = torch.randn(40, 8)
    shrunk = z.mean(0) + (z - z.mean(0)) * 0.1
    spreads = {}
    for block_norm in ("cellset", None):
        torch.manual_seed(0)
        decoder_config = replace(config.decoder, block_norm=block_norm)
        decoder = NBDecoder(8, 30, decoder_config, dropout=0.0, norm="groupnorm").eval()
        with torch.no_grad():
            full, small = (decoder.blocks[0](x, batch, missing="mean").std(0).mean() for x in (z, shrunk))
        spreads[block_norm] = float(small / full)
    assert spreads["cellset"] == pytest.approx(1.0, rel=2e-2)
    assert spreads[None] < 0.5


def test_block_norm_is_checked_and_absent_in_the_official_configuration():
    from opencellplm import ConfigError, ModelConfig

    base = {"n_genes": 10, "hidden_dim": 16, "encoder": {"n_layers": 1, "n_heads": 2}}
    with pytest.raises(ConfigError, match="block_norm='batch' is not supported"):
        ModelConfig.from_dict(base | {"decoder": {"block_norm": "batch"}})
    assert configs.load("cellplm-85m")[0].get("decoder", {}).get("block_norm") is None
    assert configs.load("small")[0]["decoder"]["block_norm"] == "cellset_keep_mean"


def test_the_decoder_bias_starts_at_the_log_mean_share_of_each_gene(tmp_path):
    from opencellplm.train.pretrain import decoder_bias_from_corpus

    x = np.array([[1, 3, 0, 0], [2, 2, 0, 0], [0, 0, 5, 5]], dtype=np.float32)
    one = ad.AnnData(x[:2, :2], var=pd.DataFrame(index=["A", "B"]))
    two = ad.AnnData(x[2:, 2:], var=pd.DataFrame(index=["C", "A"]))  # gene A measured in both files
    for i, adata in enumerate((one, two)):
        adata.write_h5ad(tmp_path / f"{i}.h5ad")
    prepare_corpus([tmp_path / "0.h5ad", tmp_path / "1.h5ad"], tmp_path / "corpus", max_cells=10)
    bias = decoder_bias_from_corpus(tmp_path / "corpus")
    vocabulary = (tmp_path / "corpus" / "genes.txt").read_text().split()
    shares = dict(zip(vocabulary, np.exp(bias)))
    # A: (1/4 + 2/4 + 5/10) / 3 cells that measure it; B: (3/4 + 2/4) / 2; C: (5/10) / 1
    assert shares["A"] == pytest.approx(1.25 / 3, rel=1e-5)
    assert shares["B"] == pytest.approx(0.625, rel=1e-5)
    assert shares["C"] == pytest.approx(0.5, rel=1e-5)


def test_control_probes_stay_out_of_the_corpus_and_its_vocabulary(tmp_path):
    genes = ["GAPDH", "Blank-1", "ACTB", "BLANK_0042", "NegControlProbe_00031", "CD3E"]
    x = np.array([[3, 1, 2, 1, 0, 1], [0, 2, 0, 0, 1, 0], [1, 0, 4, 0, 0, 2]], dtype=np.float32)
    ad.AnnData(x, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "panel.h5ad")
    prepare_corpus([tmp_path / "panel.h5ad"], tmp_path / "corpus", max_cells=10)
    assert (tmp_path / "corpus" / "genes.txt").read_text().split() == ["GAPDH", "ACTB", "CD3E"]
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    entry = manifest["datasets"][0]
    assert entry["n_control_probes_left_out"] == 3 and entry["n_genes"] == 3
    assert entry["n_cells"] == 2 and entry["n_empty_cells_left_out"] == 1  # the second cell counted probes only
    from opencellplm.data.corpus import Corpus

    corpus = Corpus(tmp_path / "corpus")
    counts = corpus.cell_set(0, 0).dense_counts()
    assert sorted(counts.sum(1).tolist()) == [6.0, 7.0]  # the probes' counts are gone with them
    only = ad.AnnData(x[:, [1, 3]], var=pd.DataFrame(index=["Blank-1", "BLANK_0042"]))
    only.write_h5ad(tmp_path / "blank.h5ad")
    with pytest.raises(ValueError, match="every gene is a control probe"):
        prepare_corpus([tmp_path / "blank.h5ad"], tmp_path / "corpus2", max_cells=10)
    assert not (tmp_path / "corpus2").exists()


def test_the_cell_type_mean_reference_knows_the_two_kinds_of_cells(cells):
    cells.obs["kind"] = np.repeat(["a", "b"], 30)
    model = small_model(vocabulary(40))
    reference = diagnostics.label_mean_dependence(model, cells, "kind")
    blind = diagnostics.decoder_dependence(_blind(small_model(vocabulary(40))), cells)
    assert reference.gene_r > 0.5 > blind.gene_r  # the marker genes follow the kind
    assert reference.spread_observed == pytest.approx(blind.spread_observed)  # the same cells and genes
    assert reference.spread_ratio < 10 < blind.spread_ratio


def test_a_corpus_of_an_earlier_version_can_keep_its_control_probes(tmp_path):
    genes = ["GAPDH", "Blank-1", "ACTB"]
    x = np.array([[3, 1, 2], [0, 2, 1]], dtype=np.float32)
    ad.AnnData(x, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "panel.h5ad")
    prepare_corpus([tmp_path / "panel.h5ad"], tmp_path / "corpus", max_cells=10, keep_control_probes=True)
    assert (tmp_path / "corpus" / "genes.txt").read_text().split() == genes
