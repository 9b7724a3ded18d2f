"""Our model reproduces the official implementation's outputs on every reference fixture."""

from __future__ import annotations

import pytest

from opencellplm.testing.official_fixtures import compare_fixture, fixture_kind, load_fixture

from .conftest import official_fixture_dir

TOLERANCE = 1e-5  # absolute, float32
FIXTURES = sorted(p for p in official_fixture_dir().glob("*.pt")) if official_fixture_dir().is_dir() else []


@pytest.mark.parametrize("path", FIXTURES or [None], ids=lambda p: p.stem if p else "none")
def test_matches_official_reference(path, official_dir):
    if path is None:
        pytest.skip(f"no *.pt fixture in {official_dir}")
    differences = compare_fixture(path)
    kind = fixture_kind(load_fixture(path))
    assert differences, f"{path.name} produced no comparison"
    expected_outputs = {
        "decoder": {"embedding", "nb_mean", "nb_dispersion", "loss", "latent_loss", "target_loss"},
        "imputation": {"embedding", "nb_mean", "nb_dispersion", "prediction", "loss", "latent_loss", "target_loss"},
        "annotation": {"embedding", "logits", "prediction_mismatches", "loss", "latent_loss", "target_loss"},
        "pipeline": {"embedding"},
    }[kind]
    for case in {d.case for d in differences}:
        assert {d.output for d in differences if d.case == case} == expected_outputs
    too_far = [d for d in differences if d.max_abs_diff > TOLERANCE]
    assert not too_far, "\n".join(f"{d.case} {d.output}: {d.max_abs_diff:.3g}" for d in too_far)


def test_deterministic_mode_differs_from_noisy_official_choice(official_dir):
    """Sanity check that the comparison can fail: without the recorded noise the embedding differs."""
    import torch

    from opencellplm.testing.official_fixtures import _batch, official_module

    fixture = load_fixture(official_dir / "gmvae_nbmlp.pt")
    module, genes = official_module(fixture, official_dir)
    case = next(iter(fixture["inputs"]))
    with torch.inference_mode():
        out = module(_batch(fixture["inputs"][case], genes))  # deterministic: argmax component
        again = module(_batch(fixture["inputs"][case], genes))
    official = fixture["results"][case]["out"]["latent"]
    assert torch.equal(out.embedding, again.embedding)
    assert (out.embedding - official).abs().max() > 1e-3
