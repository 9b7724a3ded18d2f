"""The ablation study's variants (benchmarks/ablations.py): each is a valid model that differs from the shipped
configuration in the one component it switches off."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from opencellplm import configs
from opencellplm.config import ModelConfig
from opencellplm.train.pretrain import split_masking

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablations.py"


@pytest.fixture(scope="module")
def ablations():
    spec = importlib.util.spec_from_file_location("ablations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _built(ablations, variant: str):
    model, _ = configs.load("small")
    model = ablations._merge(model, ablations.VARIANTS[variant])
    model, masking = split_masking(model)
    decoder = {"n_batches": 3, "n_datasets": 2} | model.get("decoder", {})
    return ModelConfig.from_dict(model | {"n_genes": 50, "decoder": decoder}), masking


def test_each_variant_switches_off_its_one_component(ablations):
    full, full_masking = _built(ablations, "full")
    assert full.latent.kind == "gmvae" and full.positional_encoding == "sinusoidal"
    assert full.decoder.n_batches == 3 and full_masking.cell_rate == 0.75
    expected = {
        "ae_latent": lambda c, m: c.latent.kind == "ae",
        "no_positional": lambda c, m: c.positional_encoding == "none",
        "no_batch_decoder": lambda c, m: c.decoder.n_batches == 0 and c.decoder.n_datasets == 0,
        "gene_masking": lambda c, m: m.cell_rate == 1.0,
    }
    assert set(expected) | {"full"} == set(ablations.VARIANTS)
    for variant, switched in expected.items():
        config, masking = _built(ablations, variant)
        assert switched(config, masking), variant
        others = {k for k in expected if k != variant}
        assert not any(expected[k](config, masking) for k in others), variant  # nothing else changed
        # the same share of entries masked, so the variants differ in where the masks fall, not how many
        assert masking.cell_rate * masking.gene_rate == pytest.approx(full_masking.cell_rate * full_masking.gene_rate)
        assert config.hidden_dim == full.hidden_dim and config.encoder == full.encoder


def test_the_table_gives_each_variant_its_mean_sd_and_difference_from_full(ablations):
    keys = [key for key, _, _ in ablations.COLUMNS]
    rows = [
        {"variant": "full", "seed": s, "pretrain_minutes": 1.0} | {k: 0.5 + 0.1 * s for k in keys} for s in (0, 1)
    ] + [{"variant": "ae_latent", "seed": s, "pretrain_minutes": 1.0} | {k: 0.4 for k in keys} for s in (0, 1)]
    text = ablations.table(rows, ["full", "ae_latent"])
    assert "| full | 2 | 0.550 ± 0.071 |" in text
    assert "| ae_latent | 2 | 0.400 ± 0.000 (-0.150) |" in text
