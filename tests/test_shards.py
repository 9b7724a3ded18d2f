"""Embedding shared out over processes: dealing sets to ranks, parts, assembly, resuming after a kill; and
results written to zarr stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from opencellplm.cli import main
from opencellplm.model.shards import assemble, deal_sets, fingerprint, part_path, read_part, write_part

from .conftest import REPO
from .official_files import official_config, write_official

TORCHRUN = Path(sys.executable).with_name("torchrun")
#: Run by torchrun in place of ``-m opencellplm``: logs each rank's embedding calls to $EMBED_LOG, and with
#: $KILL_RANK set, that rank dies (as if killed) where it would write its part.
DRIVER = """
import os, sys
from pathlib import Path
from opencellplm.cli import main
from opencellplm.model import cellplm, shards

rank = int(os.environ["RANK"])
real = cellplm.CellPLM._embed
def logged(self, *args, **kwargs):
    with open(Path(os.environ["EMBED_LOG"]) / f"rank{rank}", "a") as log:
        log.write("embedded\\n")
    return real(self, *args, **kwargs)
cellplm.CellPLM._embed = logged
if os.environ.get("KILL_RANK") == str(rank):
    shards.write_part = lambda *args, **kwargs: os._exit(9)
sys.exit(main(sys.argv[1:]))
"""


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
        write_part(tmp_path, rank, 3, stamp, rows, full[rows], '{"n_cell_sets": 3}' if rank == 0 else "")
    out, record = assemble(tmp_path, 3, stamp, n, dim)
    assert record == '{"n_cell_sets": 3}'  # rank 0's, kept in its part: written with it, atomically
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


@pytest.fixture
def checkpoint_and_input(tmp_path, tiny_adata):
    prefix = write_official(tmp_path / "official" / "tiny", official_config(n_genes=50))
    assert main(["convert-official", str(prefix), "--out", str(tmp_path / "ckpt")]) == 0
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    return tmp_path / "ckpt", tmp_path / "in.h5ad"


def _torchrun(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "log").mkdir(exist_ok=True)
    variables = os.environ | {"OMP_NUM_THREADS": "1", "EMBED_LOG": str(tmp_path / "log")} | env
    variables["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    command = [str(TORCHRUN), "--nproc_per_node", "2", str(tmp_path / "driver.py"), *args]
    return subprocess.run(command, env=variables, capture_output=True, text=True, timeout=600)


def test_a_killed_run_resumes_from_the_parts_written(tmp_path, checkpoint_and_input):
    checkpoint, source = checkpoint_and_input
    flags = ["--checkpoint", str(checkpoint), "--max-cells", "15", "--precision", "fp32"]
    assert main(["embed", str(source), "--out", str(tmp_path / "one.h5ad"), *flags]) == 0
    embed = ["embed", str(source), "--out", str(tmp_path / "two.h5ad"), *flags]
    killed = _torchrun(embed, tmp_path, KILL_RANK="1")
    assert killed.returncode != 0 and not (tmp_path / "two.h5ad").exists()
    parts = tmp_path / ".two.h5ad.parts"
    assert [p.name for p in parts.glob("part-*")] == ["part-00000-of-00002.npz"], "rank 0's part was kept"
    for log in (tmp_path / "log").iterdir():
        log.unlink()
    done = _torchrun(embed, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["rank1"], "rank 0 kept its part, rank 1 redid"
    one, two = ad.read_h5ad(tmp_path / "one.h5ad"), ad.read_h5ad(tmp_path / "two.h5ad")
    assert np.array_equal(one.obsm["X_cellplm"], two.obsm["X_cellplm"], equal_nan=True)
    assert not parts.exists()


def test_a_second_run_into_the_same_output_fails_at_once_on_every_rank(tmp_path, checkpoint_and_input, held_elsewhere):
    checkpoint, source = checkpoint_and_input
    held_elsewhere(tmp_path / "two.h5ad")
    done = _torchrun(["embed", str(source), "--out", str(tmp_path / "two.h5ad"), "--checkpoint", str(checkpoint)],
                     tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert "two.h5ad is being written by another run" in done.stderr
    assert not list((tmp_path / "log").iterdir()), "no rank embedded anything"
    assert not (tmp_path / "two.h5ad").exists() and not (tmp_path / ".two.h5ad.parts").exists()


def test_embedding_into_a_zarr_store(tmp_path, checkpoint_and_input):
    checkpoint, source = checkpoint_and_input
    flags = ["--checkpoint", str(checkpoint), "--precision", "fp32"]
    assert main(["embed", str(source), "--out", str(tmp_path / "out.h5ad"), *flags]) == 0
    assert main(["embed", str(source), "--out", str(tmp_path / "out.zarr"), *flags]) == 0
    h5ad, zarr_store = ad.read_h5ad(tmp_path / "out.h5ad"), ad.read_zarr(tmp_path / "out.zarr")
    np.testing.assert_array_equal(zarr_store.obsm["X_cellplm"], h5ad.obsm["X_cellplm"])
    np.testing.assert_array_equal(zarr_store.X, ad.read_h5ad(source).X)  # dense here: copied block by block
    assert zarr_store.obs.equals(h5ad.obs) and zarr_store.var.equals(h5ad.var)
    assert zarr_store.uns["cellplm"]["X_cellplm"]["n_cell_sets"] == h5ad.uns["cellplm"]["X_cellplm"]["n_cell_sets"]
    assert main(["embed", str(source), "--out", str(tmp_path / "out.zarr"), *flags]) == 2  # exists
    assert main(["embed", str(source), "--out", str(tmp_path / "out.zarr"), *flags, "--overwrite"]) == 0
    (tmp_path / "out.zarr" / "notes.txt").write_text("mine")  # a file of the user's inside: never deleted
    assert main(["embed", str(source), "--out", str(tmp_path / "out.zarr"), *flags, "--overwrite"]) == 2
    assert (tmp_path / "out.zarr" / "notes.txt").read_text() == "mine"
    ad.read_h5ad(source).write_zarr(tmp_path / "theirs.zarr")  # a store another program wrote: never replaced
    assert main(["embed", str(source), "--out", str(tmp_path / "theirs.zarr"), *flags, "--overwrite"]) == 2
    assert "X_cellplm" not in ad.read_zarr(tmp_path / "theirs.zarr").obsm


def test_two_processes_under_torchrun_write_the_one_process_embedding_bit_for_bit(tmp_path, tiny_adata):
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


def test_a_zarr_copy_streams_sparse_matrices_and_layers_block_by_block(tmp_path, checkpoint_and_input, monkeypatch):
    import scipy.sparse as sp

    from opencellplm import CellPLM
    from opencellplm.data import output

    checkpoint, source = checkpoint_and_input
    adata = ad.read_h5ad(source)
    adata.X = sp.csr_matrix(adata.X)
    adata.layers["counts"] = sp.csc_matrix(adata.X)
    adata.layers["dense"] = adata.X.toarray()
    adata.raw = adata.copy()
    adata.write_h5ad(tmp_path / "sparse.h5ad")
    monkeypatch.setattr(output, "_COPY_BLOCK", 7)  # many blocks for a small matrix
    import anndata.io

    real = anndata.io.read_elem

    def never_whole(element):
        assert not element.name.endswith("/X") and "/layers/" not in element.name, f"read {element.name} whole"
        return real(element)

    monkeypatch.setattr(anndata.io, "read_elem", never_whole)
    model = CellPLM.from_pretrained(checkpoint)
    model.embed_file(tmp_path / "sparse.h5ad", tmp_path / "out.zarr", precision="fp32")
    monkeypatch.setattr(anndata.io, "read_elem", real)
    copy = ad.read_zarr(tmp_path / "out.zarr")
    assert sp.issparse(copy.X) and sp.issparse(copy.layers["counts"]) and sp.issparse(copy.raw.X)
    pairs = [(copy.X, adata.X), (copy.layers["counts"], adata.layers["counts"]), (copy.raw.X, adata.raw.X)]
    for ours, theirs in pairs:
        assert ours.format == theirs.format
        np.testing.assert_array_equal(ours.toarray(), theirs.toarray())
    np.testing.assert_array_equal(copy.layers["dense"], adata.layers["dense"])
    assert copy.obsm["X_cellplm"].shape == (adata.n_obs, model.config.latent.dim)


def test_a_part_is_kept_only_for_the_same_weights_as_they_are_in_memory(tmp_path, checkpoint_and_input):
    import torch

    from opencellplm import CellPLM
    from opencellplm.model.shards import _stamp

    checkpoint, source = checkpoint_and_input
    model = CellPLM.from_pretrained(checkpoint)
    settings = {"precision": "fp32", "seed": 0}
    first = _stamp(model, source, 2, "X_cellplm", settings)
    assert _stamp(CellPLM.from_pretrained(checkpoint), source, 2, "X_cellplm", settings) == first
    assert _stamp(model, source, 2, "X_cellplm", settings | {"seed": 1}) != first
    assert _stamp(model, source, 4, "X_cellplm", settings) != first
    with torch.no_grad():
        next(model.module.parameters()).add_(1e-3)  # edited after loading: the file's sha256 is unchanged
    assert _stamp(model, source, 2, "X_cellplm", settings) != first
