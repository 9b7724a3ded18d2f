"""GPU checks: the official fixtures rerun on CUDA, the shipped model's CPU vs CUDA embeddings, and the
85M-configuration embedding time at 48,082 cells x 19,374 genes. Needs a CUDA device.

Usage: python benchmarks/gpu_checks.py [--fixtures tests/data/official] [--json checks.json]

Each check reports on its own (an error is recorded and the next check runs); one JSON document at the end.
- fixtures: every official reference fixture rerun on the CPU and on CUDA in fp32; the largest difference of
  each (the tests' tolerance is 1e-5 for tensors).
- shipped model: PBMC 68k reduced embedded on the CPU in fp32 and on CUDA in fp32, bf16 and the default;
  largest fp32 difference, mean bf16 cosine and the 15-NN Jaccard of bf16 vs CPU fp32.
- timing: the 85M configuration with random weights (19,374 genes) embeds 48,082 synthetic cells of 1,356
  counted genes each (density 0.07); wall time of ``get_latent_representation`` after a warm-up (the host's
  set preparation included) and peak GPU memory, fp32 then bf16, twice each (the second of each is kept); then
  again with the next set's input no longer built on a thread while the GPU runs (``no_prefetch_*``), and whether
  the fp32 embeddings of both ways are equal.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from opencellplm import datasets

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/official")
parser.add_argument("--json", type=Path, help="also write the results here")
args = parser.parse_args()
if not torch.cuda.is_available():
    sys.exit("gpu_checks.py needs a CUDA device: torch.cuda.is_available() is False")
results = {}


def save():
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def section(name):
    def wrap(fn):
        t = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as e:  # keep going: each check reports on its own
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        results[name + "_s"] = round(time.perf_counter() - t, 1)
        save()

    return wrap


@section("env")
def _():
    p = torch.cuda.get_device_properties(0)
    return {
        "torch": torch.__version__,
        "gpu": p.name,
        "mem_gb": round(p.total_memory / 2**30, 1),
        "bf16": torch.cuda.is_bf16_supported(),
        "python": sys.version.split()[0],
    }


@section("fixtures_cuda")
def _():
    from opencellplm.testing.official_fixtures import compare_fixture

    out = {}
    for path in sorted(args.fixtures.glob("*.pt")):
        for device in ("cpu", "cuda"):
            diffs = compare_fixture(path, device=device)
            worst = max(diffs, key=lambda d: d.max_abs_diff / max(d.reference_scale, 1.0))
            emb = max(d.max_abs_diff for d in diffs if d.output == "embedding")
            out[f"{path.stem}_{device}"] = {
                "max_embedding_abs_diff": emb,
                "worst": [worst.case, worst.output, worst.max_abs_diff, worst.reference_scale],
            }
    return out


@section("shipped_model_cpu_vs_cuda")
def _():
    from opencellplm import CellPLM
    from opencellplm.metrics import neighbourhood_agreement

    adata = datasets.pbmc68k_reduced()
    cpu = CellPLM.from_pretrained("cellplm-small").get_latent_representation(adata, precision="fp32")
    gpu_model = CellPLM.from_pretrained("cellplm-small", device="cuda")
    f32 = gpu_model.get_latent_representation(adata, precision="fp32")
    b16 = gpu_model.get_latent_representation(adata, precision="bf16")
    auto = gpu_model.get_latent_representation(adata)

    def cos(a, b):
        return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    return {
        "fp32_max_abs_diff": float(np.abs(cpu - f32).max()),
        "scale": float(np.abs(cpu).max()),
        "bf16_mean_cosine": cos(cpu, b16),
        "bf16_knn15_jaccard": neighbourhood_agreement(b16, cpu),
        "auto_equals_bf16": bool(np.array_equal(auto, b16)),
    }


@section("embed_timing_85m_48082")
def _():
    import anndata as ad
    import scipy.sparse as sp

    from opencellplm import CellPLM, CellPLMModule, ModelConfig, configs

    model_cfg, _ = configs.load("cellplm-85m")
    model_cfg = {k: v for k, v in model_cfg.items() if k != "masking"} | {"n_genes": 19374}
    torch.manual_seed(0)
    module = CellPLMModule(ModelConfig.from_dict(model_cfg))
    genes = [f"G{i}" for i in range(19374)]
    rng = np.random.default_rng(0)
    n, g, per_cell = 48082, 19374, 1356  # density 0.07, as benchmarks/embed_speed.py
    indptr = np.arange(0, (n + 1) * per_cell, per_cell, dtype=np.int64)
    idx = np.sort(rng.integers(0, g, size=(n, per_cell)).astype(np.int32), axis=1).ravel()
    x = sp.csr_matrix((rng.poisson(2.0, n * per_cell).astype(np.float32) + 1, idx, indptr), shape=(n, g))
    x.sum_duplicates()
    adata = ad.AnnData(x, var={"gene": genes})
    adata.var_names = genes
    model = CellPLM(module, genes, device="cuda")
    out = {"n_cells": n, "n_genes": g, "nnz": int(x.nnz), "parameters": module.n_parameters()}
    model.get_latent_representation(adata[:2000].copy(), precision="bf16")  # warm-up
    from opencellplm.data import sets as sets_module

    iterate = sets_module.CellSets.iterate
    embeddings = {}
    for prefetch in (True, False):  # the default (the next set built while the GPU runs this one), then without
        sets_module.CellSets.iterate = lambda self, device="cpu", prefetch=prefetch: iterate(
            self, device, prefetch=prefetch
        )
        tag = "" if prefetch else "no_prefetch_"
        try:
            for precision in ("fp32", "bf16", "fp32", "bf16"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                z = model.get_latent_representation(adata, precision=precision)
                torch.cuda.synchronize()
                out[f"{tag}{precision}_s"] = round(time.perf_counter() - t, 3)
                out[f"{tag}{precision}_peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                out[f"{tag}{precision}_finite"] = bool(np.isfinite(z).all())
                embeddings[tag + precision] = z
        finally:
            sets_module.CellSets.iterate = iterate
    out["prefetch_fp32_equals_without"] = bool(np.array_equal(embeddings["fp32"], embeddings["no_prefetch_fp32"]))
    return out


print(json.dumps(results, indent=1))
