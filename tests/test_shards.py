"""Embedding shared out over processes: dealing sets to ranks, parts, assembly (issue 24)."""

from __future__ import annotations

import numpy as np
import pytest

from opencellplm.model.shards import assemble, deal_sets, fingerprint, part_path, read_part, write_part


def test_sets_are_dealt_once_each_balanced_and_the_same_every_time():
    sizes = [400, 100, 300, 300, 50, 250, 4000, 10]
    dealt = deal_sets(sizes, 3)
    assert sorted(i for rank in dealt for i in rank) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in rank) for rank in dealt]
    assert max(loads) == 4000  # the one large set alone; the rest spread over the other two ranks
    assert sorted(loads)[:2] == [700, 710]
    assert dealt == deal_sets(sizes, 3) and all(rank == sorted(rank) for rank in dealt)
    assert deal_sets(sizes, 1) == [list(range(len(sizes)))]
    assert deal_sets([5, 5], 4) == [[0], [1], [], []]  # more ranks than sets: some have none
    with pytest.raises(ValueError, match="world_size must be at least 1"):
        deal_sets(sizes, 0)


def test_parts_assemble_in_input_order_and_a_part_of_other_settings_is_never_read(tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 20, 4
    full = rng.normal(size=(n, dim)).astype(np.float32)
    stamp = fingerprint({"precision": "fp32", "seed": 0})
    shares = [
        np.array([5, 1, 17, 3]),
        np.array([0, 2, 4, 6, 8, 10]),
        np.array([19, 11, 12]),
    ]  # cells 7, 9, ... left out
    for rank, rows in enumerate(shares):
        write_part(tmp_path, rank, 3, stamp, rows, full[rows])
    out = assemble(tmp_path, 3, stamp, n, dim)
    done = np.concatenate(shares)
    np.testing.assert_array_equal(out[done], full[done])
    assert np.isnan(np.delete(out, done, axis=0)).all()
    other = fingerprint({"precision": "bf16", "seed": 0})
    assert read_part(tmp_path, 0, 3, other) is None
    with pytest.raises(RuntimeError, match="rank 0 is missing or of other settings"):
        assemble(tmp_path, 3, other, n, dim)
    part_path(tmp_path, 2, 3).write_bytes(b"cut short")
    assert read_part(tmp_path, 2, 3, stamp) is None  # a broken part is embedded again
    write_part(tmp_path, 2, 3, stamp, np.array([5]), full[[5]])
    with pytest.raises(RuntimeError, match="repeats cells"):
        assemble(tmp_path, 3, stamp, n, dim)


def test_two_processes_under_torchrun_write_the_one_process_embedding_bit_for_bit(tmp_path, tiny_adata):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import anndata as ad

    from opencellplm.cli import main

    from .official_files import official_config, write_official

    prefix = write_official(tmp_path / "official" / "tiny", official_config(n_genes=50))
    assert main(["convert-official", str(prefix), "--out", str(tmp_path / "ckpt")]) == 0
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    flags = ["--checkpoint", str(tmp_path / "ckpt"), "--max-cells", "15", "--precision", "fp32"]
    assert main(["embed", str(tmp_path / "in.h5ad"), "--out", str(tmp_path / "one.h5ad"), *flags]) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [str(torchrun), "--nproc_per_node", "2", "-m", "opencellplm", "embed", str(tmp_path / "in.h5ad")]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "two.h5ad"), *flags], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = ad.read_h5ad(tmp_path / "one.h5ad"), ad.read_h5ad(tmp_path / "two.h5ad")
    assert np.array_equal(one.obsm["X_cellplm"], two.obsm["X_cellplm"], equal_nan=True)
    assert two.uns["cellplm"]["X_cellplm"]["n_cell_sets"] == one.uns["cellplm"]["X_cellplm"]["n_cell_sets"] > 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "in.h5ad", "official", "one.h5ad", "two.h5ad"]
