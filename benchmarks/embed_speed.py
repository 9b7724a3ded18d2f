"""Cell-embedding speed, ours against the official CellPLM pipeline, side by side (issue 10).

Usage:
    bash ../shared/tools/official_cellplm_env.sh /tmp/official-cellplm      # once: the official package
    python benchmarks/embed_speed.py --official-python /tmp/official-cellplm/bin/python \\
        [--configs 2000x2000 2000x19374 5000x19374 20000x19374] [--reps 3] [--json OUT] \\
        [--gene-token-python PY --gene-token-cells 256]

Without ``--official-python`` only our rows are measured (said so in the output).

``--gene-token-python PY`` adds the gene-token anchor (issue 23): scGPT and Geneformer with random weights at their
published sizes embed the same ``--gene-token-cells`` cells x 19,374 genes as CellPLM-85M (ours, fp32 and bf16),
each in a fresh process of ``PY``, which needs ``pip install --no-deps scgpt`` (its model module needs torch
alone; the package's other parts need torchtext and more, so it is imported without them) and ``transformers``:

* scGPT, the package's ``TransformerModel`` as its whole-human model (12 layers, 512 wide, 8 heads, 512
  feed-forward, 60,697 tokens, continuous values of 51 per-cell quantile bins): each cell's counted genes, 1,200
  sampled where it has more, behind a ``<cls>`` token whose output is the embedding;
* Geneformer V1, a ``transformers`` BERT (6 layers, 256 wide, 4 heads, 512 intermediate, 25,426 tokens, 2,048
  positions): each cell's genes ranked by count / total x 10,000 / the gene's corpus median (random stand-ins),
  the top 2,048, the embedding the mean of the last layer over them (its extractor reads the layer before by
  default: every layer runs either way).

Both in batches of 64 cells, tokenization timed with the forward; "bf16" casts their weights to bf16 (torch's
fused encoder layer refuses autocast's mixed inputs), ours runs bf16 autocast. The table gives cells/s and how
many times faster CellPLM-85M is at the same precision.

Both sides run the real 85M configuration (``tests/data/official/20230926_85M.config.json``, 19,374
genes) with IDENTICAL random weights: one official-format checkpoint (``PREFIX.config.json`` +
``PREFIX.best.ckpt``, NB-decoder layout as released) is written once into a temporary folder, by
the official ``OmicsFormer`` (seed 0) when the official package is given, else by our exporter
(:func:`opencellplm.io.official_state_dict_from`). The official ``CellEmbeddingPipeline`` loads it
(its loader silently skips missing or mis-shaped keys, so the worker checks that every tensor of its
model came from the file), ours loads it with ``CellPLM.from_official``.

Input per configuration, generated once and shared by all runs: counts with 7% non-zeros, values
1 + Geometric(0.45), the genes a seeded random subset of the 19,374 in shuffled order (as in
``tools/bench_official.py``), in an in-memory AnnData with CSR ``X``.

Each repetition runs every method once, each in a FRESH process (so ``ru_maxrss`` is that run's
peak RSS), the methods alternating and their order rotating between repetitions. torch threads =
``--threads`` (2; also OMP/MKL env). Only the embedding call is timed, after an untimed warm-up
call on the first ``--warmup-cells`` cells (one-time kernel and allocator set-up):

* official: ``CellEmbeddingPipeline.predict(adata, device="cpu")`` (default ``batch_size=0``: one
  forward over all cells; includes its gene filtering, AnnData copies and CSR -> COO conversion);
* ours fp32 / bf16: ``CellPLM.get_latent_representation(adata, max_cells=None, precision=...)``
  (``max_cells=None``: one cell set, like the official call; includes our input checks).

Model loading is not timed. Reported per configuration: cells/s (median over repetitions), ratio to the
official median, peak RSS in the call (median; Linux ``clear_refs`` resets the peak mark just before it,
so it counts the model and data already held), peak RSS of the whole run (it includes loading the
checkpoint, which holds the NB decoder), RSS just before the call, and the per-cell cosine of the bf16
embedding to our fp32 one (min / mean; the JSON adds the 1st percentile). A sanity check on 64 cells
first compares ours with the official pipeline on the same weights: ours with ``official_compat=True``
replaying the official run's GMVAE draws (recorded from its ``torch.rand_like`` / ``torch.randn_like``
calls) must agree to float rounding; our deterministic fp32 embedding differs only where the official
random component choice does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_85M = HERE.parent / "tests" / "data" / "official" / "20230926_85M.config.json"
SRC = HERE.parent / "src"
PREFIX = "bench"
METHODS = ("official", "ours fp32", "ours bf16")
GENE_TOKEN_METHODS = ("scGPT fp32", "scGPT bf16", "Geneformer fp32", "Geneformer bf16")
DEFAULT_CONFIGS = ("2000x2000", "2000x19374", "5000x19374", "20000x19374")


# ------------------------------------------------------------------------------------ helpers
def rss_mb() -> tuple[float, float]:
    """(peak RSS, current RSS) of this process in MB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return peak, current


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux ``clear_refs``), so that the next :func:`call_peak_rss_mb` is the
    peak of what runs in between; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def call_peak_rss_mb() -> float:
    """Peak RSS in MB since :func:`reset_peak_rss` (``VmHWM``)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def set_threads(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


def make_input(n_cells: int, n_genes: int, density: float, folder: Path) -> Path:
    """Counts as ``tools/bench_official.py`` makes them; written once, read by every run."""
    import numpy as np
    import scipy.sparse as sp

    vocabulary = json.loads(CONFIG_85M.read_text())["gene_list"]
    order = np.random.default_rng(0).permutation(len(vocabulary))
    genes = [vocabulary[i] for i in order[: min(n_genes, len(vocabulary))]]
    rng = np.random.default_rng(1)
    blocks = []
    for start in range(0, n_cells, 1000):
        n = min(1000, n_cells - start)
        rows, cols = np.nonzero(rng.random((n, len(genes)), dtype=np.float32) < density)
        values = (1 + rng.geometric(0.45, size=rows.shape[0])).astype(np.float32)
        blocks.append(sp.csr_matrix((values, (rows, cols)), shape=(n, len(genes))))
    path = folder / f"input_{n_cells}x{n_genes}.npz"
    sp.save_npz(path, sp.vstack(blocks).tocsr())
    path.with_suffix(".genes.json").write_text(json.dumps(genes))
    return path


def load_adata(data: Path):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    X = sp.load_npz(data).tocsr().astype("float32")
    genes = json.loads(data.with_suffix(".genes.json").read_text())
    obs = pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


# ------------------------------------------------------------------------ worker: checkpoint
def make_checkpoint(folder: Path, seed: int) -> dict:
    """Random 85M weights in the official layout: official OmicsFormer if importable, else ours."""
    import torch

    raw = json.loads(CONFIG_85M.read_text())
    (folder / f"{PREFIX}.config.json").write_text(json.dumps(raw))
    torch.manual_seed(seed)
    try:
        from CellPLM.model.cellformer import OmicsFormer
    except ImportError:
        from opencellplm import CellPLMModule
        from opencellplm.io import config_from_official, official_state_dict_from

        state = official_state_dict_from(CellPLMModule(config_from_official(raw)[0]))
        made_by = "opencellplm exporter (official package not importable)"
    else:
        state = OmicsFormer(**raw).state_dict()
        made_by = "official OmicsFormer"
    torch.save({"model_state_dict": state}, folder / f"{PREFIX}.best.ckpt")
    n = sum(v.numel() for v in state.values())
    return {"made_by": made_by, "seed": seed, "tensors": len(state), "numbers": n}


# ---------------------------------------------------------------------------- worker: embed
def run_official(args, adata) -> tuple:
    import contextlib
    import io
    import warnings

    import torch
    from CellPLM.pipeline.cell_embedding import CellEmbeddingPipeline

    warnings.filterwarnings("ignore")
    pipe = CellEmbeddingPipeline(pretrain_prefix=PREFIX, pretrain_directory=str(args.ckpt_dir))
    # its loader keeps the random init of any key that is missing or mis-shaped: make sure none is
    saved = torch.load(args.ckpt_dir / f"{PREFIX}.best.ckpt", weights_only=True)["model_state_dict"]
    not_loaded = [k for k, v in pipe.model.state_dict().items() if k not in saved or not torch.equal(v, saved[k])]
    del saved
    if not_loaded:
        raise RuntimeError(f"the official pipeline did not load these tensors from the checkpoint: {not_loaded[:8]}")

    def call(a):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the number of genes kept
            return pipe.predict(a, device="cpu").numpy()

    if args.record_noise:  # the GMVAE's random draws of the timed call, for ours to replay them exactly
        import numpy as np

        draws: list = []
        rand_like, randn_like = torch.rand_like, torch.randn_like

        def recorded(draw):
            return lambda *a, **k: draws.append(draw(*a, **k)) or draws[-1]

        def call_recording(a):  # saves the draws of its last call (the timed one)
            draws.clear()
            torch.rand_like, torch.randn_like = recorded(rand_like), recorded(randn_like)
            try:
                return call(a)
            finally:
                torch.rand_like, torch.randn_like = rand_like, randn_like
                np.savez(args.record_noise, *[d.numpy() for d in draws])

        return call_recording, {"pipeline_tensors_checked": len(pipe.model.state_dict())}

    return call, {"pipeline_tensors_checked": len(pipe.model.state_dict())}


def run_ours(args, adata) -> tuple:
    import inspect

    from opencellplm import CellPLM

    model = CellPLM.from_official(args.ckpt_dir / PREFIX)
    kwargs = {"max_cells": None, "official_compat": args.method == "ours compat"}
    if args.replay_noise:  # the official run's draws: (Gumbel uniforms, Gaussian eps) per forward call
        import numpy as np
        import torch

        from opencellplm import GMVAENoise

        with np.load(args.replay_noise) as f:
            draws = [torch.from_numpy(f[f"arr_{i}"]) for i in range(len(f.files))]
        noise = [GMVAENoise(draws[i], draws[i + 1]) for i in range(0, len(draws), 2)]
        kwargs["noise"] = noise
    has_precision = "precision" in inspect.signature(CellPLM.get_latent_representation).parameters
    if args.method == "ours bf16" and not has_precision:
        raise SystemExit("SKIP get_latent_representation has no precision= keyword yet")
    if has_precision and args.method in ("ours fp32", "ours bf16", "ours compat"):
        kwargs["precision"] = "bf16" if args.method == "ours bf16" else "fp32"
    info = {"kwargs": {k: v for k, v in kwargs.items() if k != "noise"}, "noise_replayed": "noise" in kwargs}
    return (lambda a: model.get_latent_representation(a, **kwargs)), info


# ---------------------------------------------------------------- worker: gene-token models (random weights)
#: scGPT's whole-human model (12 layers, 512 wide, 8 heads, 512 feed-forward, 60,697 tokens, 51 value bins, 1,200
#: genes per cell) and Geneformer V1 (BERT, 6 layers, 256 wide, 4 heads, 512 intermediate, 25,426 tokens, the 2,048
#: top-ranked genes of a cell); a batch of 64 cells each, as their embedding utilities.
SCGPT = {"vocab": 60697, "d_model": 512, "nhead": 8, "d_hid": 512, "nlayers": 12, "bins": 51, "genes": 1200}
GENEFORMER = {"vocab": 25426, "hidden": 256, "layers": 6, "heads": 4, "intermediate": 512, "genes": 2048}
GENE_TOKEN_BATCH = 64


def load_scgpt_transformer():
    """The ``scgpt`` package's ``TransformerModel``, imported without the package's ``__init__`` (which needs
    torchtext, scvi-tools and more for its other parts; the model module needs torch alone)."""
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec("scgpt")
    if spec is None:
        raise SystemExit("SKIP the scgpt package is not installed (pip install --no-deps scgpt)")
    root = Path(spec.submodule_search_locations[0])
    for name, path in (("scgpt", root), ("scgpt.model", root / "model")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules.setdefault(name, package)
    return importlib.import_module("scgpt.model.model").TransformerModel


def gene_token_embedder(method: str, bf16: bool):
    """``(tokenize(csr rows) -> inputs, embed(inputs) -> (cells, dim))`` of a gene-token model with random weights;
    ``bf16``: the weights in bf16 (torch's fused encoder layer refuses autocast's mixed inputs)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if bf16 else torch.float32
    if method == "scGPT":
        c = SCGPT
        model = load_scgpt_transformer()(
            ntoken=c["vocab"], d_model=c["d_model"], nhead=c["nhead"], d_hid=c["d_hid"], nlayers=c["nlayers"],
            vocab={"<pad>": 0}, pad_token="<pad>", pad_value=-2, input_emb_style="continuous", n_input_bins=c["bins"],
            cell_emb_style="cls", dropout=0.2,
        ).eval().to(dtype)  # fmt: skip
        token_of_gene = rng.permutation(np.arange(2, c["vocab"]))  # 0: <pad>, 1: <cls>

        def tokenize(x):  # each cell's counted genes (1,200 sampled when more), values in per-cell quantile bins
            genes, values = [], []
            for i in range(x.shape[0]):
                cols, vals = x.indices[x.indptr[i] : x.indptr[i + 1]], x.data[x.indptr[i] : x.indptr[i + 1]]
                if len(cols) > c["genes"]:
                    keep = rng.choice(len(cols), c["genes"], replace=False)
                    cols, vals = cols[keep], vals[keep]
                edges = np.quantile(vals, np.linspace(0, 1, c["bins"] - 1))
                genes.append(np.concatenate([[1], token_of_gene[cols]]))
                values.append(np.concatenate([[0.0], np.digitize(vals, edges)]))
            width = max(len(g) for g in genes)
            ids = torch.zeros(len(genes), width, dtype=torch.long)
            vals = torch.full((len(genes), width), -2.0)
            for i, (g, v) in enumerate(zip(genes, values)):
                ids[i, : len(g)], vals[i, : len(v)] = torch.from_numpy(g), torch.from_numpy(v)
            return ids, vals, ids.eq(0)

        def embed(inputs):
            ids, values, padding = inputs
            return model._encode(ids, values.to(dtype), padding)[:, 0, :]  # <cls>: scGPT's cell embedding

        return tokenize, embed
    from transformers import BertConfig, BertModel

    c = GENEFORMER
    config = BertConfig(
        vocab_size=c["vocab"], hidden_size=c["hidden"], num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
        intermediate_size=c["intermediate"], max_position_embeddings=c["genes"], hidden_act="relu", pad_token_id=0,
    )  # fmt: skip
    model = BertModel(config, add_pooling_layer=False).eval().to(dtype)
    token_of_gene = rng.permutation(np.arange(2, c["vocab"]))
    gene_median = rng.uniform(0.5, 2.0, size=len(token_of_gene))  # stands for the corpus medians it divides by

    def tokenize(x):  # rank value encoding: genes by normalised expression, the top 2,048 of each cell
        ranked = []
        for i in range(x.shape[0]):
            cols, vals = x.indices[x.indptr[i] : x.indptr[i + 1]], x.data[x.indptr[i] : x.indptr[i + 1]]
            scaled = vals / vals.sum() * 1e4 / gene_median[cols]
            ranked.append(token_of_gene[cols[np.argsort(-scaled, kind="stable")][: c["genes"]]])
        width = max(len(r) for r in ranked)
        ids = torch.zeros(len(ranked), width, dtype=torch.long)
        for i, r in enumerate(ranked):
            ids[i, : len(r)] = torch.from_numpy(r)
        return ids, ids.ne(0).long()

    def embed(inputs):
        ids, mask = inputs
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # the mean over its genes

    return tokenize, embed


def run_gene_token(args, adata) -> tuple:
    import torch

    tokenize, embed = gene_token_embedder(args.method.split()[0], bf16=args.method.endswith("bf16"))

    def call(a):
        out = []
        with torch.inference_mode():
            for start in range(0, a.n_obs, GENE_TOKEN_BATCH):  # tokenizing is timed too, as the host work it is
                out.append(embed(tokenize(a.X[start : start + GENE_TOKEN_BATCH])).float())
        return torch.cat(out).numpy()

    return call, {"batch": GENE_TOKEN_BATCH}


def worker(args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    torch = set_threads(args.threads)
    if args.make_checkpoint:
        print("RESULT " + json.dumps(make_checkpoint(args.ckpt_dir, args.seed)))
        return
    adata = load_adata(args.data)
    if args.method == "official":
        call, info = run_official(args, adata)
    elif args.method in GENE_TOKEN_METHODS:
        call, info = run_gene_token(args, adata)
    else:
        call, info = run_ours(args, adata)
    if args.warmup_cells > 0:
        call(adata[: min(args.warmup_cells, adata.n_obs)].copy())
    peak_before, rss_before = rss_mb()
    measured_call = reset_peak_rss()
    torch.manual_seed(args.seed)  # the official (and our official_compat) eval embedding is random
    start = time.perf_counter()
    embedding = call(adata)
    seconds = time.perf_counter() - start
    peak, _ = rss_mb()
    call_peak = call_peak_rss_mb() if measured_call else None
    import numpy as np

    embedding = np.asarray(embedding, dtype=np.float32)
    assert embedding.shape[0] == adata.n_obs, embedding.shape
    if args.out:
        np.save(args.out, embedding)
    result = {
        "method": args.method,
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "seconds": round(seconds, 4),
        "cells_per_s": round(adata.n_obs / seconds, 1),
        "peak_rss_mb": round(max(peak, peak_before), 1),  # resetting the mark resets ru_maxrss too
        "call_peak_rss_mb": None if call_peak is None else round(call_peak, 1),
        "peak_rss_before_call_mb": round(peak_before, 1),
        "rss_before_call_mb": round(rss_before, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print("RESULT " + json.dumps(result | info))


# ------------------------------------------------------------------------------------ driver
def spawn(python: str, args, extra: list[str]) -> dict:
    """Run this file as a worker in a fresh process; its RESULT line, or {'skipped': reason}."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    command = [python, __file__, "--worker", "--threads", str(args.threads), *extra]
    p = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines() + p.stderr.splitlines():
        if line.startswith("SKIP "):
            return {"skipped": line[5:]}
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker {' '.join(extra)} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")


def cosine_rows(a, b):
    import numpy as np

    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / den


def sanity_check(args, tmp: Path, ours_python: str) -> dict:
    """64 cells x 2,000 genes: ours against the official pipeline on the same weights and input."""
    import numpy as np

    data = make_input(64, 2000, args.density, tmp)
    out = {}
    noise = tmp / "sanity_noise.npz"
    for method in ("official", "ours compat", "ours fp32"):
        python = args.official_python if method == "official" else ours_python
        npy = tmp / f"sanity_{method.replace(' ', '_')}.npy"
        extra = ["--method", method, "--data", str(data), "--ckpt-dir", str(tmp), "--out", str(npy)]
        if method != "ours fp32":
            extra += ["--record-noise" if method == "official" else "--replay-noise", str(noise)]
        spawn(python, args, extra)
        out[method] = np.load(npy)
    with np.load(noise) as f:
        draws = [f[k].shape for k in f.files]
    official, compat, fp32 = out["official"], out["ours compat"], out["ours fp32"]
    diff = float(np.abs(compat - official).max())
    if diff > 1e-4:
        print(f"WARNING: ours (official_compat, replayed draws) differs from the official pipeline by {diff:.3g}")
    return {
        "ours_official_compat_equals_official": diff <= 1e-4,
        "cells": 64,
        "genes": 2000,
        "official_random_draws": draws,
        "ours_official_compat_vs_official_max_abs_diff": float(np.abs(compat - official).max()),
        "ours_official_compat_vs_official_cosine_min": float(cosine_rows(compat, official).min()),
        "ours_fp32_vs_official_cosine_min": float(cosine_rows(fp32, official).min()),
        "ours_fp32_vs_official_cosine_mean": float(cosine_rows(fp32, official).mean()),
        "embedding_scale_max_abs": float(np.abs(official).max()),
    }


def measure(args, tmp: Path, cells: int, genes: int, ours_python: str, methods: list[str] | None = None) -> dict:
    import numpy as np

    data = make_input(cells, genes, args.density, tmp)
    methods = methods or [m for m in METHODS if m != "official" or args.official_python]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    skipped: dict[str, str] = {}
    for rep in range(args.reps):
        order = methods[rep % len(methods) :] + methods[: rep % len(methods)]  # alternate, rotating the order
        for method in order:
            if method in skipped:
                continue
            python = args.official_python if method == "official" else ours_python
            warmup = args.warmup_cells
            if method in GENE_TOKEN_METHODS:  # a few cells: their warm-up would cost as much as the call
                python, warmup = args.gene_token_python, min(warmup, 8)
            extra = ["--method", method, "--data", str(data), "--ckpt-dir", str(tmp)]
            extra += ["--warmup-cells", str(warmup)]
            if method != "official":
                extra += ["--out", str(tmp / f"emb_{method.replace(' ', '_')}.npy")]
            r = spawn(python, args, extra)
            if "skipped" in r:
                skipped[method] = r["skipped"]
                print(f"  {cells}x{genes} {method}: skipped ({r['skipped']})", flush=True)
                continue
            runs[method].append(r)
            print(f"  {cells}x{genes} rep {rep + 1} {method}: {r['cells_per_s']} cells/s, "
                  f"peak RSS in the call {r['call_peak_rss_mb']} MB, of the run {r['peak_rss_mb']:.0f} MB",
                  flush=True)  # fmt: skip
    summary = {}
    for method, rs in runs.items():
        if not rs:
            continue
        summary[method] = {
            "cells_per_s": round(statistics.median(r["cells_per_s"] for r in rs), 1),
            "seconds": [r["seconds"] for r in rs],
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs), 1),
            "call_peak_rss_mb": _median_or_none([r["call_peak_rss_mb"] for r in rs]),
            "rss_before_call_mb": round(statistics.median(r["rss_before_call_mb"] for r in rs), 1),
        }
    if "official" in summary:
        for s in summary.values():
            s["ratio_to_official"] = round(s["cells_per_s"] / summary["official"]["cells_per_s"], 2)
    if "ours bf16" in summary:
        cos = cosine_rows(np.load(tmp / "emb_ours_bf16.npy"), np.load(tmp / "emb_ours_fp32.npy"))
        summary["ours bf16"]["cosine_to_fp32_min"] = round(float(cos.min()), 5)
        summary["ours bf16"]["cosine_to_fp32_mean"] = round(float(cos.mean()), 5)
        summary["ours bf16"]["cosine_to_fp32_p01"] = round(float(np.quantile(cos, 0.01)), 5)
        # a near-tie of the GMVAE component logits can flip the argmax: a few cells then move further
        summary["ours bf16"]["cells_cosine_below_0.999"] = int((cos < 0.999).sum())
    for f in tmp.glob(f"input_{cells}x{genes}*"):
        f.unlink()
    return {"cells": cells, "genes": genes, "reps": args.reps, "methods": summary, "skipped": skipped}


def gene_token_anchor(args, tmp: Path, ours_python: str) -> dict:
    """scGPT and Geneformer (random weights, published sizes) and CellPLM-85M embedding the same cells."""
    methods = [*GENE_TOKEN_METHODS, "ours fp32", "ours bf16"]
    result = measure(args, tmp, args.gene_token_cells, 19374, ours_python, methods=methods)
    for method, s in result["methods"].items():
        ours = result["methods"].get(f"ours {method.split()[-1]}")
        if method in GENE_TOKEN_METHODS and ours:
            s["cellplm_speedup"] = round(ours["cells_per_s"] / s["cells_per_s"], 1)
    return result


def print_anchor(result: dict) -> None:
    print(f"\ngene-token anchor: {result['cells']:,} cells x {result['genes']:,} genes, random weights "
          f"({result['reps']} repetitions, medians)")  # fmt: skip
    print("| method | cells/s | CellPLM-85M (ours) is ... x faster, same precision | peak RSS of the run MB |")
    print("|---|---|---|---|")
    for method, s in result["methods"].items():
        speedup = f"{s['cellplm_speedup']:,.1f}" if "cellplm_speedup" in s else "-"
        print(f"| {method} | {s['cells_per_s']:,.1f} | {speedup} | {s['peak_rss_mb']:,.0f} |")
    for method, why in result["skipped"].items():
        print(f"({method} skipped: {why})")


def _median_or_none(values: list) -> float | None:
    return None if None in values else round(statistics.median(values), 1)


def print_table(result: dict) -> None:
    print(f"\n{result['cells']:,} cells x {result['genes']:,} genes ({result['reps']} repetitions, medians)")
    print(
        "| method | cells/s | ratio to official | peak RSS in the call MB | peak RSS of the run MB "
        "| RSS before call MB | cosine to fp32 (min / mean) |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, s in result["methods"].items():
        ratio = f"{s['ratio_to_official']:.2f}" if "ratio_to_official" in s else "n/a"
        if "cosine_to_fp32_min" in s:
            cosine = f"{s['cosine_to_fp32_min']:.5f} / {s['cosine_to_fp32_mean']:.5f}"
        else:
            cosine = "1 (reference)" if method == "ours fp32" else "-"
        call_peak = "n/a" if s["call_peak_rss_mb"] is None else f"{s['call_peak_rss_mb']:,.0f}"
        print(f"| {method} | {s['cells_per_s']:,.0f} | {ratio} | {call_peak} | {s['peak_rss_mb']:,.0f} | "
              f"{s['rss_before_call_mb']:,.0f} | {cosine} |")  # fmt: skip
    for method, why in result["skipped"].items():
        print(f"({method} skipped: {why})")


def driver(args) -> int:
    ours_python = args.ours_python or sys.executable
    if args.official_python:
        print(f"official: {args.official_python}")
    else:
        print("official: not measured (no --official-python); ours only")
    tmp = Path(tempfile.mkdtemp(prefix="embed_speed_"))
    report: dict = {"threads": args.threads, "density": args.density, "warmup_cells": args.warmup_cells}
    try:
        start = time.perf_counter()
        made = spawn(args.official_python or ours_python, args, ["--make-checkpoint", "--ckpt-dir", str(tmp)])
        report["checkpoint"] = made
        seconds = time.perf_counter() - start
        print(f"checkpoint: 85M config, random weights (seed {made['seed']}) by {made['made_by']}, "
              f"{made['numbers']:,} numbers in {made['tensors']} tensors ({seconds:.0f} s)")  # fmt: skip
        if args.official_python:
            report["sanity"] = sanity = sanity_check(args, tmp, ours_python)
            print("sanity check (64 cells x 2,000 genes; ours replays the official GMVAE draws):")
            print("  " + json.dumps(sanity))
        if args.gene_token_python:
            report["gene_token_anchor"] = anchor = gene_token_anchor(args, tmp, ours_python)
            print_anchor(anchor)
        report["configs"] = []
        for config in args.configs:
            cells, genes = (int(v) for v in config.lower().split("x"))
            result = measure(args, tmp, cells, genes, ours_python)
            report["configs"].append(result)
            print_table(result)
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="CELLSxGENES, e.g. 2000x19374")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--official-python", help="python of the official package's venv")
    parser.add_argument("--ours-python", help="python that runs ours (default: this one; src/ is put on PYTHONPATH)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--density", type=float, default=0.07)
    parser.add_argument("--warmup-cells", type=int, default=256, help="untimed warm-up call on this many cells")
    # worker-only
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make-checkpoint", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gene-token-python", help="python with scgpt (--no-deps) and transformers: adds the anchor")
    parser.add_argument("--gene-token-cells", type=int, default=256, help="cells the gene-token anchor embeds")
    parser.add_argument("--method", choices=(*METHODS, *GENE_TOKEN_METHODS, "ours compat"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--record-noise", help=argparse.SUPPRESS)
    parser.add_argument("--replay-noise", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    if not CONFIG_85M.is_file():
        parser.error(f"the 85M config is not at {CONFIG_85M} (tests/data/official in the repository)")
    if args.official_python and not Path(args.official_python).exists():
        parser.error(f"--official-python {args.official_python} does not exist")
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
