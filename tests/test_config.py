"""Config dataclasses: frozen, round-trip through JSON, reject unknown keys and bad values."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from opencellplm import ConfigError, MaskingConfig, ModelConfig


def test_round_trip_through_json(tiny_config):
    again = ModelConfig.from_dict(json.loads(json.dumps(tiny_config.to_dict())))
    assert again == tiny_config


def test_frozen(tiny_config):
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny_config.hidden_dim = 8


def test_unknown_top_level_key_is_named(tiny_config):
    data = tiny_config.to_dict() | {"hiden_dim": 32}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in the model config: \['hiden_dim'\]"):
        ModelConfig.from_dict(data)


def test_unknown_nested_key_is_named(tiny_config):
    data = tiny_config.to_dict()
    data["latent"]["n_cluster"] = 3
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in 'latent': \['n_cluster'\]"):
        ModelConfig.from_dict(data)


def test_missing_required_key():
    with pytest.raises(ConfigError, match="n_genes"):
        ModelConfig.from_dict({"hidden_dim": 16})


@pytest.mark.parametrize(
    "change,message",
    [
        ({"norm": "groupnrom"}, "norm='groupnrom' is not supported"),
        ({"hidden_dim": 30}, "not divisible by encoder.n_heads"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ({"positional_encoding": "learned"}, "positional_encoding='learned' is not supported"),
    ],
)
def test_bad_values_are_refused(tiny_config, change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(tiny_config.to_dict() | change)


def test_sections_and_numbers_are_type_checked(tiny_config):
    with pytest.raises(ConfigError, match="latent must be a LatentConfig"):
        tiny_config.replace(latent={"dim": 3})
    with pytest.raises(ConfigError, match="masking.cell_rate must be a number"):
        MaskingConfig(cell_rate="0.5")
    data = tiny_config.to_dict()
    data["latent"]["gaussian_weight"] = -1
    with pytest.raises(ConfigError, match="latent.gaussian_weight must be >= 0.0"):
        ModelConfig.from_dict(data)


def test_an_older_config_with_masking_still_loads(tiny_config, caplog):
    """Configs saved while the training-time masking sat in ModelConfig: the key is dropped, nothing else."""
    assert "masking" not in tiny_config.to_dict()
    old = tiny_config.to_dict() | {"masking": dataclasses.asdict(MaskingConfig(beta=True))}
    with caplog.at_level(logging.DEBUG, logger="opencellplm.config"):
        assert ModelConfig.from_dict(old) == tiny_config
    assert "ignoring the model config's 'masking'" in caplog.text
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in the model config: \['maskin'\]"):
        ModelConfig.from_dict(tiny_config.to_dict() | {"maskin": {}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in 'latent': \['masking'\]"):
        ModelConfig.from_dict(tiny_config.to_dict() | {"latent": {"masking": {}}})
    with pytest.raises(TypeError):
        tiny_config.replace(masking=MaskingConfig())
