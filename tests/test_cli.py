"""The command line: convert an official checkpoint, embed an h5ad, describe a checkpoint."""

from __future__ import annotations

import json
import logging

import anndata as ad

from opencellplm import CellPLM
from opencellplm.cli import main

from .official_files import official_config, write_official


def test_convert_embed_info(tmp_path, tiny_adata, capsys):
    prefix = write_official(tmp_path / "official" / "tiny", official_config(n_genes=50))
    assert main(["convert-official", str(prefix), "--out", str(tmp_path / "ckpt")]) == 0
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    args = ["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out.h5ad"), "--sample-key", "sample"]
    code = main(["embed", str(tmp_path / "in.h5ad"), *args])
    assert code == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    expected = CellPLM.from_pretrained(tmp_path / "ckpt").get_latent_representation(tiny_adata, sample_key="sample")
    assert (abs(out.obsm["X_cellplm"] - expected) < 1e-6).all()
    assert (out.X == tiny_adata.X).all() and out.obs.equals(ad.read_h5ad(tmp_path / "in.h5ad").obs)
    assert out.uns["cellplm"]["X_cellplm"]["params"]["sample_key"] == "sample"
    # Embedding the output again keeps the earlier record and replaces the key.
    again = ["embed", str(tmp_path / "out.h5ad"), "--checkpoint", str(tmp_path / "ckpt"), "--key-added", "X_2"]
    assert main([*again, "--out", str(tmp_path / "again.h5ad")]) == 0
    twice = ad.read_h5ad(tmp_path / "again.h5ad")
    assert set(twice.obsm) == {"X_cellplm", "X_2"} and set(twice.uns["cellplm"]) == {"X_cellplm", "X_2"}
    capsys.readouterr()
    assert main(["info", str(tmp_path / "ckpt")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["genes"]["n"] == 50 and report["config"]["hidden_dim"] == 16


def test_errors_exit_2_with_the_message(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["convert-official", str(tmp_path / "none"), "--out", str(tmp_path / "ckpt")]) == 2
    assert "official config file not found" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(
            ["embed", str(tmp_path / "absent.h5ad"), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o.h5ad")]
        )
    assert code == 2
    assert "input file not found" in caplog.text


def test_embed_refuses_to_overwrite(tmp_path, tiny_adata, caplog):
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    (tmp_path / "out.h5ad").write_text("keep me")
    with caplog.at_level(logging.ERROR):
        code = main(
            ["embed", str(tmp_path / "in.h5ad"), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "out.h5ad")]
        )
    assert code == 2 and "pass overwrite=True (--overwrite)" in caplog.text
    assert (tmp_path / "out.h5ad").read_text() == "keep me"


def test_validate_prints_the_report_and_exits_by_usability(tmp_path, tiny_adata, capsys):
    prefix = write_official(tmp_path / "official" / "tiny", official_config(n_genes=50))
    assert main(["-q", "convert-official", str(prefix), "--out", str(tmp_path / "ckpt")]) == 0
    tiny_adata.write_h5ad(tmp_path / "ok.h5ad")
    capsys.readouterr()
    code = main(
        ["validate", str(tmp_path / "ok.h5ad"), "--sample-key", "sample", "--checkpoint", str(tmp_path / "ckpt")]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "40 cells x 30 genes, counts from X (backed, read in blocks)" in out
    assert "25 of 30 (83.3%) in the vocabulary of 50" in out and "samples: 2" in out and "usable: yes" in out
    tiny_adata.X[2, 2] = -1
    tiny_adata.write_h5ad(tmp_path / "bad.h5ad")
    assert main(["validate", str(tmp_path / "bad.h5ad"), "--sample-key", "donor"]) == 1
    out = capsys.readouterr().out
    assert "error: obs column 'donor' not found; adata.obs has ['sample']" in out
    assert "error: X has 1 NaN, infinite or negative entries, first in cells ['cell2']" in out
    assert "usable: no" in out
