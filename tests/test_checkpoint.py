"""Our checkpoint format: exact round trip, strict loading, every bad input by its message."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from opencellplm import CellPLM, CellPLMModule, CheckpointError

from .conftest import vocabulary


@pytest.fixture
def saved(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = CellPLM(CellPLMModule(tiny_config), vocabulary(tiny_config.n_genes), meta={"note": "test"})
    return model, model.save(tmp_path / "ckpt")


def test_round_trip_is_exact(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "genes.txt", "meta.json", "model.safetensors"]
    again = CellPLM.from_pretrained(path)
    assert again.config == model.config
    assert again.genes == model.genes
    assert again.meta["note"] == "test" and again.meta["format_version"] == 1
    ours, theirs = model.module.state_dict(), again.module.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_config_json_holds_hyperparameters_only(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    assert "gene_list" not in config and "lr" not in config
    assert config["n_genes"] == 50


def test_refuses_to_overwrite(saved):
    model, path = saved
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        model.save(path)
    model.save(path, overwrite=True)
    assert (path / "model.safetensors").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".ckpt")]  # no temporary left behind


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        CellPLM.from_pretrained(tmp_path / "absent")


def test_missing_file_is_listed(saved):
    _, path = saved
    (path / "genes.txt").unlink()
    with pytest.raises(CheckpointError, match=r"missing \['genes.txt'\]"):
        CellPLM.from_pretrained(path)


def test_unknown_config_key(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text()) | {"learning_rate": 1e-3}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) in the model config: \['learning_rate'\]"):
        CellPLM.from_pretrained(path)


def test_vocabulary_that_does_not_match_the_weights(saved):
    _, path = saved
    genes = (path / "genes.txt").read_text().splitlines()
    (path / "genes.txt").write_text("\n".join(genes[:-1]) + "\n")
    with pytest.raises(CheckpointError, match="genes.txt lists 49 genes, config.json says n_genes=50"):
        CellPLM.from_pretrained(path)


def test_duplicate_vocabulary_entries(saved):
    _, path = saved
    genes = (path / "genes.txt").read_text().splitlines()
    genes[3] = genes[2]
    (path / "genes.txt").write_text("\n".join(genes) + "\n")
    with pytest.raises(CheckpointError, match=r"genes.txt: line 4 repeats 'ENSG00000000002' of line 3"):
        CellPLM.from_pretrained(path)


def test_blank_line_that_shifts_genes_is_refused(saved):
    """A blank line inserted and the last line dropped keeps the count: every later gene would shift."""
    _, path = saved
    genes = (path / "genes.txt").read_text().splitlines()
    (path / "genes.txt").write_text("\n".join([*genes[:9], "", *genes[9:-1]]) + "\n")
    with pytest.raises(CheckpointError, match=r"genes.txt: line 10 is blank\. .*shifts every later gene"):
        CellPLM.from_pretrained(path)


def test_extra_blank_line_is_named_as_the_cause(saved):
    _, path = saved
    (path / "genes.txt").write_text((path / "genes.txt").read_text() + "\n")
    with pytest.raises(CheckpointError, match=r"genes.txt: line 51 is blank"):
        CellPLM.from_pretrained(path)


@pytest.mark.parametrize("padded", [" ENSG00000000007", "ENSG00000000007 ", "ENSG00000000007\t"])
def test_whitespace_padded_gene_id_is_refused(saved, padded):
    _, path = saved
    genes = (path / "genes.txt").read_text().splitlines()
    genes[7] = padded
    (path / "genes.txt").write_text("\n".join(genes) + "\n")
    with pytest.raises(CheckpointError, match=r"line 8 \(.*\) has whitespace around or inside the id"):
        CellPLM.from_pretrained(path)


def test_a_vocabulary_that_cannot_be_written_one_per_line_is_refused(tiny_config, tmp_path):
    genes = vocabulary(tiny_config.n_genes)
    genes[4] = "GENE\nSPLIT"
    with pytest.raises(CheckpointError, match=r"line 5 .* has whitespace"):
        CellPLM(CellPLMModule(tiny_config), genes).save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_non_finite_weight_is_a_load_error_naming_the_tensor(saved):
    _, path = saved
    state = load_file(str(path / "model.safetensors"))
    state["encoder.layers.1.ff_out.weight"][0, 0] = float("nan")
    state["decoder.bottleneck.bias"][2] = float("inf")
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        CellPLM.from_pretrained(path)
    assert "non-finite values (NaN or infinite) in: " in str(err.value)
    assert "decoder.bottleneck.bias (1 of 128)" in str(err.value) and "encoder.layers.1.ff_out.weight (1 of" in str(
        err.value
    )


def test_float_weight_stored_as_int_is_a_load_error(saved):
    _, path = saved
    state = load_file(str(path / "model.safetensors"))
    state["decoder.bottleneck.weight"] = state["decoder.bottleneck.weight"].round().to(torch.int32)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"wrong dtype: decoder.bottleneck.weight is torch.int32, expected torch.float32"
    ):
        CellPLM.from_pretrained(path)


def test_unknown_gene_id_rule_is_a_load_error(saved):
    _, path = saved
    meta = json.loads((path / "meta.json").read_text()) | {"gene_id_rule": "lower"}
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"gene_id_rule 'lower' is not one of \['exact', 'upper'\]"):
        CellPLM.from_pretrained(path)


def test_missing_and_unexpected_weights_are_named(saved):
    _, path = saved
    state = load_file(str(path / "model.safetensors"))
    state["encoder.layers.0.extra.weight"] = state.pop("encoder.layers.0.ff_in.weight")
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        CellPLM.from_pretrained(path)
    assert "missing key(s): ['encoder.layers.0.ff_in.weight']" in str(err.value)
    assert "unexpected key(s): ['encoder.layers.0.extra.weight']" in str(err.value)


def test_wrong_shape_is_named(saved):
    _, path = saved
    state = load_file(str(path / "model.safetensors"))
    state["decoder.bottleneck.weight"] = torch.zeros(128, 15)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"decoder.bottleneck.weight has shape \(128, 15\), expected \(128, 16\)"):
        CellPLM.from_pretrained(path)


def test_unreadable_weights(saved):
    _, path = saved
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read .*model.safetensors"):
        CellPLM.from_pretrained(path)


def test_foreign_meta_format(saved):
    _, path = saved
    (path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="declares format 'something-else'"):
        CellPLM.from_pretrained(path)


def test_resaving_refreshes_provenance_but_keeps_user_meta(saved, tmp_path):
    model, path = saved
    again = CellPLM.from_pretrained(path)
    again.meta["created"] = "1999-01-01"
    again.meta["format_version"] = 99
    again.save(tmp_path / "second")
    meta = json.loads((tmp_path / "second" / "meta.json").read_text())
    assert meta["note"] == "test" and meta["format_version"] == 1 and meta["created"] != "1999-01-01"
    CellPLM.from_pretrained(tmp_path / "second")
