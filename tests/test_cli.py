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
            [
                "embed",
                str(tmp_path / "in.h5ad"),
                "--checkpoint",
                str(tmp_path / "ck"),
                "--out",
                str(tmp_path / "out.h5ad"),
            ]
        )
    assert code == 2 and "is not a marked opencellplm output" in caplog.text  # nor with --overwrite
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


def _spatial_copy(adata):
    """tiny_adata with a counts layer, a var column of ids, coordinates under another key."""
    import numpy as np

    adata = adata.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X * 0.5  # not what the flags point at
    adata.var["ids"] = list(adata.var_names)
    adata.var_names = [f"sym{i}" for i in range(adata.n_vars)]
    adata.obsm["coords"] = np.random.default_rng(0).random((adata.n_obs, 2))
    return adata


def test_every_embed_flag_reaches_the_api(tmp_path, tiny_adata):
    """The effective settings recorded in uns and the embedding itself show each flag arrived."""
    prefix = write_official(tmp_path / "official" / "tiny", official_config(n_genes=50))
    assert main(["-q", "convert-official", str(prefix), "--out", str(tmp_path / "ckpt")]) == 0
    adata = _spatial_copy(tiny_adata)
    adata.write_h5ad(tmp_path / "in.h5ad")
    flags = {
        "--layer": "counts",
        "--gene-key": "ids",
        "--sample-key": "sample",
        "--spatial-key": "coords",
        "--max-cells": "7",
        "--partition": "random",
        "--seed": "3",
        "--key-added": "X_flags",
    }
    args = [
        "embed",
        str(tmp_path / "in.h5ad"),
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--out",
        str(tmp_path / "o.h5ad"),
    ]
    assert main([*args, *[x for kv in flags.items() for x in kv], "--allow-low-overlap"]) == 0
    out = ad.read_h5ad(tmp_path / "o.h5ad")
    params = out.uns["cellplm"]["X_flags"]["params"]
    assert {
        k: params[k] for k in ("layer", "gene_key", "sample_key", "spatial_key", "max_cells", "partition", "seed")
    } == {
        "layer": "counts",
        "gene_key": "ids",
        "sample_key": "sample",
        "spatial_key": "coords",
        "max_cells": 7,
        "partition": "random",
        "seed": 3,
    }
    assert params["allow_low_overlap"] is True and out.uns["cellplm"]["X_flags"]["n_cell_sets"] == 6
    expected = CellPLM.from_pretrained(tmp_path / "ckpt").get_latent_representation(
        adata, layer="counts", gene_key="ids", sample_key="sample", spatial_key="coords", max_cells=7,
        partition="random", seed=3,
    )  # fmt: skip
    assert abs(out.obsm["X_flags"] - expected).max() < 1e-6


def test_every_prepare_corpus_flag_reaches_the_api(tmp_path, tiny_adata):
    adata = _spatial_copy(tiny_adata)
    adata.var_names = list(adata.var["ids"])
    adata.obs["lane"] = ["L1", "L2"] * 20
    adata.write_h5ad(tmp_path / "in.h5ad")
    flags = ["--layer", "counts", "--sample-key", "sample", "--batch-key", "lane", "--spatial-key", "coords"]
    flags += ["--max-cells", "7", "--shard-cells", "15", "--seed", "3"]
    assert main(["prepare-corpus", str(tmp_path / "in.h5ad"), "--out", str(tmp_path / "corpus"), *flags]) == 0
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert manifest["settings"] == {
        "layer": "counts",
        "sample_key": "sample",
        "spatial_key": "coords",
        "batch_key": "lane",
        "max_cells": 7,
        "seed": 3,
    }
    assert manifest["n_sets"] == 6 and manifest["datasets"][0]["spatial_dims"] == 2  # 2 samples of 20 -> 3 + 3
    assert set(manifest["batches"]) == {"0:in.h5ad/L1", "0:in.h5ad/L2"}
    assert len(manifest["shards"]) == 2  # a shard closes after the set that reaches 15 cells (default: 1 shard)


def test_embed_without_checkpoint_uses_the_shipped_model(tmp_path, caplog):
    import numpy as np
    import pandas as pd

    genes = CellPLM.from_pretrained("cellplm-small").genes[:100]
    counts = np.random.default_rng(0).negative_binomial(1, 0.7, size=(20, 100)).astype(np.float32)
    ad.AnnData(counts, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "in.h5ad")
    with caplog.at_level(logging.INFO):
        assert main(["embed", str(tmp_path / "in.h5ad"), "--out", str(tmp_path / "out.h5ad")]) == 0
    assert "no --checkpoint given: using the shipped model cellplm-small" in caplog.text
    record = ad.read_h5ad(tmp_path / "out.h5ad").uns["cellplm"]["X_cellplm"]
    assert record["checkpoint"]["name"] == "cellplm-small" and len(record["checkpoint"]["sha256"]) == 64


def test_embed_with_non_finite_weights_fails_and_writes_nothing(tmp_path, tiny_adata, caplog):
    from safetensors.torch import load_file, save_file

    prefix = write_official(tmp_path / "official" / "tiny", official_config(n_genes=50))
    assert main(["-q", "convert-official", str(prefix), "--out", str(tmp_path / "ckpt")]) == 0
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(weights))
    state["embedder.norm.weight"][0] = float("nan")
    save_file(state, str(weights))
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    with caplog.at_level(logging.ERROR):
        code = main(
            [
                "embed",
                str(tmp_path / "in.h5ad"),
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--out",
                str(tmp_path / "o.h5ad"),
            ]
        )
    assert code == 2 and "non-finite values (NaN or infinite) in: embedder.norm.weight (1 of 16)" in caplog.text
    assert not (tmp_path / "o.h5ad").exists()


def test_validate_allow_low_overlap_flag(tmp_path, tiny_adata, capsys):
    prefix = write_official(tmp_path / "official" / "tiny", official_config(n_genes=50))
    assert main(["-q", "convert-official", str(prefix), "--out", str(tmp_path / "ckpt")]) == 0
    tiny_adata.var_names = [tiny_adata.var_names[0]] + [f"GENE{i}" for i in range(29)]
    tiny_adata.X[:, 0] = 0
    tiny_adata.X[0, 0] = 1
    tiny_adata.write_h5ad(tmp_path / "few.h5ad")
    args = ["validate", str(tmp_path / "few.h5ad"), "--checkpoint", str(tmp_path / "ckpt")]
    assert main(args) == 1
    assert "error: the 1 gene(s) found in the vocabulary carry only" in capsys.readouterr().out
    assert main([*args, "--allow-low-overlap"]) == 0
    assert "(accepted: allow_low_overlap)" in capsys.readouterr().out
