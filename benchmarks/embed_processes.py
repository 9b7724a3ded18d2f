"""Embedding cells/s with 1 process and with N processes under torchrun (`opencellplm embed`, the 85M architecture
with random weights), and whether the outputs agree.

    python benchmarks/embed_processes.py --cells 20000 --work /tmp/embed_procs            # this CPU: 1 and 2
    python benchmarks/embed_processes.py --cells 48082 --device cuda --procs 1 --work DIR  # a GPU (paper: 0.85 s)

Writes a simulated h5ad (raw counts of ``--genes`` genes of the official vocabulary, ``--density`` non-zero) and an
85M checkpoint in the official layout (converted with ``opencellplm convert-official``, as a user would), once, in
``--work``. Each run is a fresh ``opencellplm embed`` (or ``torchrun --nproc_per_node N -m opencellplm embed``);
the figure is the wall time of the whole command (start-up, model load and writing the output included). On a CPU
each process gets cores / N threads. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_85M = HERE.parent / "tests" / "data" / "official" / "20230926_85M.config.json"


def make_input(path: Path, n_cells: int, n_genes: int, density: float) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    vocabulary = json.loads(CONFIG_85M.read_text())["gene_list"]
    genes = [vocabulary[i] for i in np.random.default_rng(0).permutation(len(vocabulary))[:n_genes]]
    rng = np.random.default_rng(1)
    blocks = []
    for start in range(0, n_cells, 2000):
        n = min(2000, n_cells - start)
        rows, cols = np.nonzero(rng.random((n, n_genes), dtype=np.float32) < density)
        values = (1 + rng.geometric(0.45, size=rows.shape[0])).astype(np.float32)
        blocks.append(sp.csr_matrix((values, (rows, cols)), shape=(n, n_genes)))
    obs = pd.DataFrame({"sample": rng.choice([f"s{i}" for i in range(8)], n_cells)},
                       index=[f"c{i}" for i in range(n_cells)])  # fmt: skip
    ad.AnnData(sp.vstack(blocks).tocsr(), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)


def make_checkpoint(folder: Path) -> Path:
    import torch

    from opencellplm import CellPLMModule
    from opencellplm.io import config_from_official, official_state_dict_from

    raw = json.loads(CONFIG_85M.read_text())
    (folder / "official").mkdir(exist_ok=True)
    (folder / "official" / "85m.config.json").write_text(json.dumps(raw))
    torch.manual_seed(0)
    state = official_state_dict_from(CellPLMModule(config_from_official(raw)[0]))
    torch.save({"model_state_dict": state}, folder / "official" / "85m.best.ckpt")
    subprocess.run([sys.executable, "-m", "opencellplm", "convert-official", str(folder / "official" / "85m"),
                    "--out", str(folder / "ckpt")], check=True)  # fmt: skip
    return folder / "ckpt"


def run(args, procs: int, out: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // procs) if args.device == "cpu" else 1
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    embed = ["embed", str(args.work / "input.h5ad"), "--out", str(out), "--overwrite",
             "--checkpoint", str(args.work / "ckpt"), "--sample-key", "sample", "--max-cells", str(args.max_cells),
             "--precision", args.precision, "--device", args.device]  # fmt: skip
    launcher = [sys.executable] if procs == 1 else [str(Path(sys.executable).with_name("torchrun")),
                                                    "--nproc_per_node", str(procs)]  # fmt: skip
    command = [*launcher, "-m", "opencellplm", *embed]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return {"processes": procs, "threads_each": threads, "wall_s": round(wall, 1),
            "cells_per_s": round(args.cells / wall)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--max-cells", type=int, default=4000)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (each process its own GPU)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the best is kept")
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()

    import anndata as ad
    import numpy as np

    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "input.h5ad").exists():
        make_input(args.work / "input.h5ad", args.cells, args.genes, args.density)
    if not (args.work / "ckpt").exists():
        make_checkpoint(args.work)
    runs: dict[int, list[dict]] = {p: [] for p in args.procs}
    for _ in range(args.repeats):
        for procs in args.procs:
            runs[procs].append(run(args, procs, args.work / f"out_{procs}.h5ad"))
    best = {p: min(r, key=lambda x: x["wall_s"]) for p, r in runs.items()}
    outputs = {p: ad.read_h5ad(args.work / f"out_{p}.h5ad").obsm["X_cellplm"] for p in args.procs}
    first = outputs[args.procs[0]]
    same = {p: bool(np.array_equal(first, o, equal_nan=True)) for p, o in outputs.items()}
    gap = {p: float(np.nanmax(np.abs(first - o))) for p, o in outputs.items()}
    device = args.device
    if device.startswith("cuda"):
        import torch

        device = torch.cuda.get_device_name(0)
    print(json.dumps({"cells": args.cells, "genes": args.genes, "density": args.density, "max_cells": args.max_cells,
                      "precision": args.precision, "device": device, "cpus": os.cpu_count(),
                      "runs": runs, "best": best, "bit_identical_to_first": same, "max_abs_difference": gap},
                     indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
