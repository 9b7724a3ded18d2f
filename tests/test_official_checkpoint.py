"""Official checkpoints: strict key mapping, the 85M element count, and every bad input by its message."""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from opencellplm import CellPLM, CellPLMModule, CheckpointError, ConfigError
from opencellplm.io.official import config_from_official, official_state_dict_from, state_dict_from_official
from opencellplm.testing.official_fixtures import load_fixture, official_module

from .official_files import official_config, write_official


def test_round_trip_through_official_layout(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    model = CellPLM.from_official(prefix)
    written = torch.load(f"{prefix}.best.ckpt", weights_only=True)["model_state_dict"]
    assert official_state_dict_from(model.module).keys() == written.keys()
    for key, value in official_state_dict_from(model.module).items():
        if "norm0" not in key and "missing_pe" not in key:  # dead tensors are not kept
            assert torch.equal(value, written[key]), key


def test_mask_beta_is_not_carried_over(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="opencellplm.io.official"):
        config, _, _ = config_from_official(official_config(mask_beta=True))
    assert "mask_beta=True never took effect" in caplog.text  # the official code never switched it on
    assert "masking" not in config.to_dict()  # training-time masking is no part of the model config


def test_export_reproduces_official_keys_and_shapes(official_dir):
    fixture = load_fixture(official_dir / "gmvae_nbmlp.pt")
    module, _ = official_module(fixture, official_dir)
    exported = official_state_dict_from(module)
    official = dict(fixture["state_dict"])
    omitted = fixture["omitted_state_dict_key"]
    official[omitted["key"]] = torch.zeros(omitted["shape"])
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v.shape) for k, v in official.items()}


# The released 85M config (OFFICIAL_MODEL.md section 0), its gene list replaced by placeholder ids.
CONFIG_85M = official_config(n_genes=19374) | {
    "enc_hid": 1024, "enc_layers": 4, "post_latent_dim": 512, "dec_hid": 1024, "dec_layers": 2, "num_clusters": 16,
    "batch_num": 12596, "dataset_num": 484, "max_batch_size": 4000,
}  # fmt: skip


def test_85m_config_builds_with_official_element_count():
    config, genes, _ = config_from_official(CONFIG_85M)
    assert len(genes) == 19374
    module = CellPLMModule(config)
    official = official_state_dict_from(module)
    assert len(official) == 105
    assert sum(v.numel() for v in official.values()) == 82_402_543
    assert official["embedder.pe_enc.pe_enc.weight"].numel() == 10_240_000
    # Ours holds the same minus the dead tensors: norm0 (2 x 1024), missing_pe (1024), the fixed table.
    ours = sum(v.numel() for v in module.state_dict().values())
    assert ours == 82_402_543 - 2 * 1024 - 1024 - 10_240_000
    assert sum(p.numel() for p in module.parameters()) == ours


def test_85m_placeholder_config_matches_the_released_one(official_dir):
    released = json.loads((official_dir / "20230926_85M.config.json").read_text())
    assert config_from_official(released)[0] == config_from_official(CONFIG_85M)[0]


# ------------------------------------------------------------------------------ bad input
def test_missing_config_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"official config file not found: .*nothing\.config\.json"):
        CellPLM.from_official(tmp_path / "nothing")


def test_missing_weights_file(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    Path(f"{prefix}.best.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"official weights file not found: .*tiny\.best\.ckpt"):
        CellPLM.from_official(prefix)


def test_unreadable_weights_file(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    Path(f"{prefix}.best.ckpt").write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="cannot read .* as a torch checkpoint"):
        CellPLM.from_official(prefix)


def test_unreadable_config_file(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    Path(f"{prefix}.config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .* as JSON"):
        CellPLM.from_official(prefix)


class _Payload:
    """Unpickling this would create a file: proof that nothing was executed."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_is_not_a_state_dict_is_never_executed(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    payload = _Payload()
    payload.marker = tmp_path / "executed"
    with open(f"{prefix}.best.ckpt", "wb") as fh:
        pickle.dump({"model_state_dict": payload}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="not a state dict; it was not unpickled"):
        CellPLM.from_official(prefix)
    assert not payload.marker.exists()


def test_container_without_state_dict(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, f"{prefix}.best.ckpt")
    with pytest.raises(CheckpointError, match=r"expected a dict with 'model_state_dict'.*\['epoch', 'optimizer'\]"):
        CellPLM.from_official(prefix)


def _state(prefix: Path) -> dict:
    return torch.load(f"{prefix}.best.ckpt", weights_only=True)["model_state_dict"]


@pytest.mark.parametrize("key", ["encoder.layers.1.norm2.bias", "embedder.norm0.weight", "embedder.pe_enc.missing_pe"])
def test_missing_key_is_named(tmp_path, key):
    prefix = write_official(tmp_path / "tiny")
    state = _state(prefix)
    del state[key]
    write_official(prefix, state=state)
    with pytest.raises(CheckpointError, match=rf"missing key\(s\): \['{key}'\]"):
        CellPLM.from_official(prefix)


def test_unexpected_key_is_named(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    state = _state(prefix) | {"decoder.out_layer.dec_pi.weight": torch.zeros(3)}
    write_official(prefix, state=state)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): \['decoder.out_layer.dec_pi.weight'\]"):
        CellPLM.from_official(prefix)


def test_wrong_shape_is_named(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    state = _state(prefix)
    state["latent.layers.1.inference.y_mu.weight"] = torch.zeros(8, 5)
    write_official(prefix, state=state)
    with pytest.raises(
        CheckpointError, match=r"latent.layers.1.inference.y_mu.weight has shape \(8, 5\), expected \(8, 4\)"
    ):
        CellPLM.from_official(prefix)


def test_blank_or_repeated_official_gene_ids_are_named(tmp_path):
    genes = official_config(n_genes=40)["gene_list"]
    genes[5], genes[9] = "", genes[2]
    with pytest.raises(ConfigError, match=r"gene_list: entry 5 is blank; entry 9 repeats 'ENSG00000000002' of entry 2"):
        config_from_official(official_config(n_genes=40, gene_list=genes))


def test_non_finite_or_integer_weights_are_named(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    state = _state(prefix)
    state["encoder.layers.0.self_attn.key_projection.weight"][1, 1] = float("nan")
    state["latent.layers.1.inference.y_mu.weight"] = state["latent.layers.1.inference.y_mu.weight"].to(torch.int32)
    write_official(prefix, state=state)
    with pytest.raises(CheckpointError) as err:
        CellPLM.from_official(prefix)
    assert "wrong dtype: latent.layers.1.inference.y_mu.weight is torch.int32, expected torch.float32" in str(err.value)
    assert "non-finite values (NaN or infinite) in: encoder.layers.0.self_attn.key_projection.weight (1 of" in str(
        err.value
    )


def test_vocabulary_that_does_not_match_the_weights(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    raw = official_config(n_genes=41)  # one more gene than the weights hold
    Path(f"{prefix}.config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"embedder.feat_enc.emb has shape \(40, 16\), expected \(41, 16\)"):
        CellPLM.from_official(prefix)


def test_corrupted_sinusoid_table(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    state = _state(prefix)
    state["embedder.pe_enc.pe_enc.weight"][5, 3] += 1.0
    write_official(prefix, state=state)
    with pytest.raises(CheckpointError, match="not the fixed sinusoid table"):
        CellPLM.from_official(prefix)


def test_unknown_official_config_key(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    Path(f"{prefix}.config.json").write_text(json.dumps(official_config() | {"enc_hidden": 3}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in the official config: \['enc_hidden'\]"):
        CellPLM.from_official(prefix)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"enc_mod": "transformer"}, "enc_mod='transformer' is not supported"),
        ({"dsbn": True}, "dsbn=True is not supported"),
        ({"norm": "gropnorm"}, "silently replaces an unknown norm with Identity"),
        ({"out_dim": 7}, "out_dim=7 differs from the 40 genes"),
        ({"dec_mod": "zinb"}, "only the NB decoder"),
    ],
)
def test_unsupported_official_settings(override, message):
    with pytest.raises(ConfigError, match=message):
        config_from_official(official_config() | override)


def test_state_dict_mapping_is_strict_about_tensors(tmp_path):
    prefix = write_official(tmp_path / "tiny")
    state = _state(prefix) | {"embedder.norm0.bias": "not a tensor"}
    torch.save({"model_state_dict": state}, f"{prefix}.best.ckpt")
    with pytest.raises(CheckpointError, match=r"not tensors: \['embedder.norm0.bias'\]"):
        CellPLM.from_official(prefix)
    module = CellPLMModule(config_from_official(official_config())[0])
    with pytest.raises(CheckpointError, match="missing key"):
        state_dict_from_official(module, {})


def test_config_without_positional_module(tmp_path):
    """pe_type null: the official model then has no missing_pe and no sinusoid table."""
    raw = official_config(pe_type=None)
    config, _, _ = config_from_official(raw)
    state = official_state_dict_from(CellPLMModule(config))
    del state["embedder.pe_enc.missing_pe"], state["embedder.pe_enc.pe_enc.weight"]
    prefix = write_official(tmp_path / "nope", raw, state=state)
    assert CellPLM.from_official(prefix).config.positional_encoding == "none"


def test_weights_land_in_the_right_layers(tmp_path):
    """Not circular: a value placed under an official key must show up where that key acts."""
    prefix = write_official(tmp_path / "tiny")
    state = _state(prefix)
    state["latent.layers.1.inference.inference_qzyx.2.mu.weight"].zero_()
    state["latent.layers.1.inference.inference_qzyx.2.mu.bias"].copy_(torch.arange(8.0))
    state["decoder.out_layer.dec_disp"].fill_(0.5)
    write_official(prefix, state=state)
    model = CellPLM.from_official(prefix)
    from opencellplm import CellBatch

    batch = CellBatch(counts=torch.poisson(torch.rand(5, 40) * 3), gene_index=torch.arange(40))
    with torch.inference_mode():
        out = model.module(batch)
    torch.testing.assert_close(out.embedding, torch.arange(8.0).expand(5, 8))  # posterior mean = mu bias
    torch.testing.assert_close(out.nb.dispersion, torch.full((5, 40), 0.5).exp())


def test_a_decoder_with_a_cell_set_norm_is_not_exported_as_official():
    """The official decoder normalises each cell alone: a cell-set norm has no official counterpart."""
    config, _, _ = config_from_official(official_config())
    config = config.replace(decoder=replace(config.decoder, block_norm="cellset"))
    with pytest.raises(ConfigError, match="decoder.block_norm='cellset' cannot be exported"):
        official_state_dict_from(CellPLMModule(config))
