"""Batch-effect removal: the scib metrics, the batch integrator (CellPLM's decoder given the batch), the baselines
and the score that puts them in one table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opencellplm import testing
from opencellplm.baselines.registry import REGISTRY
from opencellplm.metrics.integration import integration_scores, lisi
from opencellplm.tasks import BatchIntegrator, IntegrationRecipe, score_integration

VOCABULARY = [f"ENSG{i:011d}" for i in range(200)]
QUICK = IntegrationRecipe(steps=4, eval_every=2, warmup_steps=1, lr=5e-3, precision="fp32")


def _points(separate: bool, n: int = 400, seed: int = 0):
    """Three well-apart cell types in 10 dimensions, two batches, the second shifted when ``separate``."""
    rng = np.random.default_rng(seed)
    labels, batches = rng.integers(0, 3, n), rng.integers(0, 2, n)
    x = rng.normal(0, 6, (3, 10))[labels] + rng.normal(0, 1, (n, 10))
    if separate:
        x = x + 10 * batches[:, None]
    return x, labels.astype(str), batches.astype(str)


@pytest.fixture
def adata():
    data = testing.synthetic_adata(240, 150, n_types=3, n_batches=2, gene_names=VOCABULARY[:150], seed=2)
    return data


@pytest.fixture
def model():
    return testing.tiny_model(VOCABULARY, seed=1234, n_heads=4, n_batches=3)


# ------------------------------------------------------------------------------------------------ metrics
def test_mixed_batches_score_high_on_batch_correction_and_separated_ones_low():
    mixed = integration_scores(*_points(separate=False))
    apart = integration_scores(*_points(separate=True))
    assert mixed.ilisi > 0.8 and apart.ilisi < 0.05
    assert mixed.batch_asw > apart.batch_asw + 0.5
    assert mixed.graph_connectivity == pytest.approx(1.0) and apart.graph_connectivity < 0.7
    assert mixed.batch_correction > apart.batch_correction
    # the types stay apart in both: bio conservation is high either way
    assert mixed.nmi > 0.95 and mixed.ari > 0.95
    assert mixed.overall == pytest.approx(0.6 * mixed.bio_conservation + 0.4 * mixed.batch_correction)


def test_ilisi_of_one_batch_per_neighbourhood_is_exactly_zero(monkeypatch):
    """LISI 1 up to float rounding above (as the kernel's sums give on some sets) scores 0, not 2.2e-16."""
    from opencellplm.metrics import integration

    x, labels, batches = _points(separate=True)
    monkeypatch.setattr(integration, "lisi", lambda x, groups: np.full(len(x), 1 + 2**-52))
    assert integration_scores(x, labels, batches).ilisi == 0.0


def test_lisi_counts_the_groups_mixed_in_each_neighbourhood():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    even = np.tile(["a", "b", "c"], 100)
    assert np.median(lisi(x, even)) == pytest.approx(3.0, abs=0.4)  # three groups evenly mixed
    apart = np.repeat(["a", "b", "c"], 100)
    x_apart = x + 20 * np.repeat(np.arange(3), 100)[:, None]
    assert np.median(lisi(x_apart, apart)) == pytest.approx(1.0, abs=1e-6)


def test_missing_labels_of_any_kind_and_tiny_types_are_handled():
    import pandas as pd

    x, labels, batches = _points(separate=False)
    labels = pd.array(labels.tolist(), dtype="string")
    labels[:4] = pd.NA
    labels[4:6], batches[4:6] = "rare", ["0", "1"]  # two cells in two batches: no batch silhouette to take
    scores = integration_scores(x, labels, batches)
    assert scores.n_cells == len(x) - 4 and np.isfinite(scores.batch_asw)


def test_cells_without_an_embedding_or_a_label_are_left_out():
    x, labels, batches = _points(separate=False)
    x[:5] = np.nan
    labels = labels.astype(object)
    labels[5:10] = None
    scores = integration_scores(x, labels, batches)
    assert scores.n_cells == len(x) - 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y, b: (x, y, np.full(len(b), "one")), "at least 2 batches"),
        (lambda x, y, b: (x, np.full(len(y), "t"), b), "at least 2 cell types"),
        (lambda x, y, b: (x[:-1], y, b), "one row per cell"),
    ],
)
def test_unscorable_input_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        integration_scores(*change(*_points(separate=False)))


# ---------------------------------------------------------------------------------------------- baselines
def test_one_batch_or_a_missing_column_is_refused_by_every_baseline(adata):
    """Whether or not its package is installed: the input's faults come first."""
    for baseline in REGISTRY["integration"].values():
        with pytest.raises(KeyError, match="'donor' is not an obs column"):
            baseline.run(adata, batch_key="donor", layer=None, seed=0)
    adata.obs["batch"] = "only"
    for baseline in REGISTRY["integration"].values():
        with pytest.raises(ValueError, match="holds one batch"):
            baseline.run(adata, batch_key="batch", layer=None, seed=0)


def test_every_baseline_refuses_values_that_are_not_counts(adata):
    """Whether or not its package is installed."""
    adata.X = adata.X.copy()
    adata.X.data[:5] = -1.0
    for baseline in REGISTRY["integration"].values():
        with pytest.raises(ValueError, match="negative or non-finite values; the baselines need raw counts"):
            baseline.run(adata, batch_key="batch", layer=None, seed=0)


def test_a_baseline_whose_package_is_missing_is_a_row_saying_so(adata, model, monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError("Harmony needs the baselines extra: pip install ...")

    entry = REGISTRY["integration"]["harmony"]
    monkeypatch.setitem(REGISTRY["integration"], "harmony", type(entry)(entry.name, entry.task, missing, entry.extra))
    result = score_integration(adata, "batch", "cell_type", baselines=("pca", "harmony"))
    assert [m.method for m in result.methods] == ["pca"]
    assert "baselines extra" in result.skipped["harmony"]
    assert set(result.to_frame().columns) >= {"overall", "ilisi", "batch_asw", "seconds", "peak_mb"}
    assert result.methods[0].peak_mb is not None


# ------------------------------------------------------------------------------------------- the integrator
def test_fit_gives_the_decoder_one_row_per_batch_and_changes_the_embedding(adata, model):
    integrator = BatchIntegrator.from_pretrained(model, recipe=QUICK)
    before = integrator.get_latent_representation(adata)
    np.testing.assert_allclose(before, model.get_latent_representation(adata), rtol=1e-5, atol=1e-6)  # zero-shot
    integrator.fit(adata, "batch")
    table = integrator.module.decoder.blocks[0].covariates["batch"].embedding.weight
    assert table.shape[0] == 2 and integrator.batches == ["batch_0", "batch_1"]
    assert integrator.summary.steps == QUICK.steps
    after = integrator.get_latent_representation(adata)
    assert after.shape == before.shape and not np.allclose(after, before)
    assert model.module.decoder.blocks[0].covariates["batch"].embedding.weight.shape[0] == 3  # the base is untouched


def test_new_batch_rows_start_at_the_mean_of_the_pretrained_ones_and_fresh_tables_stay_fresh(model):
    from opencellplm.tasks.integration import _with_batch_rows

    pretrained = model.module.state_dict()
    key = "decoder.blocks.0.covariates.batch.embedding.weight"
    target = dict(pretrained) | {key: torch.zeros(5, pretrained[key].shape[1])}
    merged = _with_batch_rows(pretrained, target)
    assert merged[key].shape == (5, pretrained[key].shape[1])
    torch.testing.assert_close(merged[key][3], pretrained[key].mean(0))
    without = {k: v for k, v in pretrained.items() if ".covariates.batch." not in k}  # pretrained with no batch table
    fresh = dict(target) | {key: torch.randn(5, pretrained[key].shape[1])}
    torch.testing.assert_close(_with_batch_rows(without, fresh)[key], fresh[key])


def test_fit_gives_the_decoder_each_cell_s_batch_and_starts_the_rows_at_the_pretrained_mean(adata, model, monkeypatch):
    from opencellplm.tasks import integration

    seen, started = [], []

    class Spy(integration.CellPLMModule):
        def forward(self, batch, **kwargs):
            seen.append(None if batch.batch is None else batch.batch.tolist())
            return super().forward(batch, **kwargs)

        def load_state_dict(self, state, *args, **kwargs):
            started.append({k: v.clone() for k, v in state.items() if ".covariates.batch.embedding." in k})
            return super().load_state_dict(state, *args, **kwargs)

    monkeypatch.setattr(integration, "CellPLMModule", Spy)
    BatchIntegrator.from_pretrained(model, recipe=QUICK).fit(adata, "batch")
    assert seen and all(ids is not None and len(set(ids)) == 1 for ids in seen)  # one batch per set, always given
    assert {ids[0] for ids in seen} == {0, 1}
    pretrained = model.module.state_dict()["decoder.blocks.0.covariates.batch.embedding.weight"]
    (first,) = started[:1]
    table = first["decoder.blocks.0.covariates.batch.embedding.weight"]
    assert table.shape[0] == 2
    torch.testing.assert_close(table, pretrained.mean(0, keepdim=True).expand(2, -1))


def test_an_embedding_that_cannot_be_scored_is_a_row_saying_why(adata):
    left_out = np.zeros((adata.n_obs, 4))
    left_out[(adata.obs["batch"] == "batch_1").to_numpy()] = np.nan  # a model that left out a whole batch
    result = score_integration(adata, "batch", "cell_type", embeddings={"partial": left_out}, baselines=("pca",))
    assert [m.method for m in result.methods] == ["pca"]
    assert result.skipped["partial"].startswith("not scored: integration scores need cells of at least 2 batches")


def test_bad_embeddings_and_labels_are_refused_before_any_baseline_runs(adata, monkeypatch):
    ran = []
    entry = REGISTRY["integration"]["pca"]
    monkeypatch.setitem(
        REGISTRY["integration"], "pca", type(entry)("pca", "integration", lambda *a, **k: ran.append(1), None)
    )
    with pytest.raises(ValueError, match="embedding 'short' has shape"):
        score_integration(adata, "batch", "cell_type", embeddings={"short": np.zeros((3, 2))}, baselines=("pca",))
    adata.obs["one_type"] = "t"
    with pytest.raises(ValueError, match="holds 1 cell type"):
        score_integration(adata, "batch", "one_type", baselines=("pca",))
    assert not ran


def test_samples_that_mix_batches_are_refused(adata, model):
    adata.obs["mixed"] = "one"
    with pytest.raises(ValueError, match="hold cells of several batches"):
        BatchIntegrator.from_pretrained(model, recipe=QUICK).fit(adata, "batch", sample_key="mixed")


def test_with_batches_refuses_ids_that_do_not_fit(adata, model):
    from opencellplm.data.sets import InputSpec

    sets = model.cell_sets(adata, InputSpec())
    with pytest.raises(ValueError, match="one integer per cell"):
        sets.with_batches(np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="0 or more"):
        sets.with_batches(np.full(adata.n_obs, -1))


def test_save_and_load_keep_the_batches_and_the_embedding(adata, model, tmp_path):
    integrator = BatchIntegrator.from_pretrained(model, recipe=QUICK).fit(adata, "batch")
    expected = integrator.get_latent_representation(adata)
    integrator.save(tmp_path / "integrator")
    loaded = BatchIntegrator.load(tmp_path / "integrator")
    assert loaded.batches == ["batch_0", "batch_1"] and loaded.batch_key == "batch"
    np.testing.assert_allclose(loaded.get_latent_representation(adata), expected, rtol=1e-5, atol=1e-6)


def test_score_puts_cellplm_and_the_baselines_in_one_table(adata, model):
    integrator = BatchIntegrator.from_pretrained(model, recipe=QUICK).fit(adata, "batch")
    embeddings = {"cellplm_fine_tuned": integrator.get_latent_representation(adata)}
    result = score_integration(adata, "batch", "cell_type", embeddings=embeddings, baselines=("pca",))
    frame = result.to_frame()
    assert list(frame.index) == ["cellplm_fine_tuned", "pca"]
    assert frame.loc["pca", "ilisi"] == pytest.approx(result.detail["pca"].ilisi)
    assert result.n_batches == 2 and result.n_cell_types == 3
    assert "embeddings" not in result.to_dict()


def test_embed_writes_where_scverse_users_look_and_says_what_was_fitted(adata, model):
    integrator = BatchIntegrator.from_pretrained(model, recipe=QUICK).fit(adata, "batch")
    integrator.embed(adata)
    np.testing.assert_allclose(
        adata.obsm["X_cellplm_integrated"], integrator.get_latent_representation(adata), rtol=1e-5, atol=1e-6
    )
    record = adata.uns["cellplm"]["X_cellplm_integrated"]
    assert record["integration"] == {"fitted": True, "batch_key": "batch", "batches": ["batch_0", "batch_1"]}
    with pytest.raises(ValueError, match="adata is a view"):
        integrator.embed(adata[:10])
