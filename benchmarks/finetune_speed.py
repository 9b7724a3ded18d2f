"""Fine-tuning speed, ours against the official pipelines, on the same data and starting weights (issue 23).

Usage:
    bash ../shared/tools/official_cellplm_env.sh /tmp/official-cellplm      # once: the official package
    python benchmarks/finetune_speed.py --official-python /tmp/official-cellplm/bin/python \\
        [--sizes 85m small] [--tasks annotation imputation] [--steps 6] [--reps 3] [--json OUT]

Without ``--official-python`` only our rows are measured (said so in the output).

Tasks, each as the official pipeline runs it and as ours does:

* annotation: ``CellTypeAnnotationPipeline.fit`` (its default model and training settings, ``hvg=0`` so both
  see the same genes) against ``CellTypeAnnotator.fit(mode="transductive")``, the official protocol (every cell
  in the forward, the loss on the training cells). One cell set of ``--cells`` cells (one official "batch"),
  8 cell types; the same training and validation cells on both sides.
* imputation: ``ImputationPipeline.fit`` on the spatial panel and the reference concatenated, each measuring its
  own genes (``batch_gene_list``), against ``SpatialImputer.fit(spatial, reference)`` without coordinates (the
  official model has no positional encoding). Each data set is two sets of ``--cells / 2`` cells, one trained
  on and one held out on both sides; a step is one set. ``--panel`` of the ``--genes`` genes are in the panel.
  The official pipeline keeps the checkpoint's cell dropping (``drop_node_rate``, 0.3 in the 85M release: 30% of
  a set's cells left out of each step); ours, which drops none by default, is given the same rate here.

Sizes: ``85m`` is the released configuration (``tests/data/official/20230926_85M.config.json``: 19,374-gene
vocabulary, 1,024 wide, 4 layers); ``small`` the same with 128 wide, 2 layers and a 32-dim latent. Starting
weights are identical: the official ``OmicsFormer`` (seed 0) writes them once as an official checkpoint that
both sides load (ours through ``CellPLM.from_official``); the annotation head and latent, which a pretrained
checkpoint lacks, are also written by the official model, and ours is given them, so that both start from
the same network.

Counts: ``--genes`` genes of the vocabulary (seeded), 7% non-zero at 1 + Geometric(0.45), a fifth of them per
cell type at five times the density so that the labels can be learnt.

Each repetition runs every method once, each in a fresh process (``ru_maxrss`` is that run's peak), methods
alternating and their order rotating. torch threads = ``--threads`` (also OMP/MKL). Per run:

* ``step s``: one optimizer step (forward, loss, backward, clipping, AdamW), the mean over the steps after the
  first. Ours: the trainer's step, reading the cell set included. Official: from the training forward to the
  end of ``optimizer.step`` (its per-step training scores included; the loader's batch is built beforehand and
  not timed).
* ``fit s``: the whole fit call for ``--steps`` steps, as a user waits for it: preprocessing, the steps and
  each pipeline's own validation (the official pipelines validate after every epoch, ours every
  ``eval_every`` steps and at the end). The one-time imports of a process (torch's dynamo, which the first
  optimizer imports, and scikit-learn) are made before it on both sides.
* the training loss of every step.

Reported: medians over repetitions, ratios to the official medians. Ours runs in fp32 (the official precision)
and in its default precision (``auto``: bf16 autocast where the CPU has AVX512-BF16 or AMX).

``--trajectory`` adds the fp32 loss check: annotation at ``--trajectory-size`` with every random part off on
both sides (no cell dropping, no masking, dropout 0), so the forward is deterministic and the two fits can
be compared step by step. The schedules differ: the official pipeline warms the learning rate up over 30 steps
and gives the gene embedder ``lr * 0.1`` from the first step; ours warms every group up over
``min(warmup_steps, steps - 1)`` steps, then decays it. For this check ours is given the official schedule, and
the official optimizer's choice of tensors (it leaves the pre-latent norm untrained). Left different: the
official weight decay is 1e-7 on every tensor (1e-10 on the embedder), ours (set to 1e-7 here) skips biases and
norms; a change of about ``lr * 1e-7`` per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_85M = HERE.parent / "tests" / "data" / "official" / "20230926_85M.config.json"
SRC = HERE.parent / "src"
SIZES = {"85m": {}, "small": {"enc_hid": 128, "enc_layers": 2, "post_latent_dim": 32, "dec_hid": 128}}
N_TYPES = 8
ANNOTATION_MODEL = {  # the official CellTypeAnnotationDefaultModelConfig, minus the sizes
    "drop_node_rate": 0.3, "dec_layers": 1, "model_dropout": 0.5, "mask_node_rate": 0.75, "mask_feature_rate": 0.25,
    "dec_mod": "mlp", "latent_mod": "ae", "head_type": "annotation", "max_batch_size": 70000, "out_dim": N_TYPES,
}  # fmt: skip
# the deterministic check: no cell dropping or masking; dropout 1e-9 keeps the head's layout (a rate of 0 removes the
# official head's Dropout layers and shifts its keys), then every Dropout module is set to 0 on both sides (at 1e-9
# torch still drops elements)
DETERMINISTIC = {"drop_node_rate": 0.0, "mask_node_rate": 0.0, "mask_feature_rate": 0.0, "model_dropout": 1e-9}
BACKBONE = ("embedder.", "encoder.", "pre_latent_norm.")


# ---------------------------------------------------------------------------------------------- data
def make_counts(n_cells: int, genes: list[str], types, seed: int):
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    density = np.full((N_TYPES, len(genes)), 0.07, dtype=np.float32)
    for t, block in enumerate(np.array_split(rng.permutation(len(genes)), 5 * N_TYPES)[:N_TYPES]):
        density[t, block] = 0.35
    on = rng.random((n_cells, len(genes)), dtype=np.float32) < density[types]
    rows, cols = np.nonzero(on)
    values = (1 + rng.geometric(0.45, size=rows.size)).astype(np.float32)
    return sp.csr_matrix((values, (rows, cols)), shape=(n_cells, len(genes)))


def make_data(folder: Path, n_cells: int, n_genes: int, n_panel: int) -> dict:
    """The h5ad files of both tasks, and the split each side uses."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from opencellplm.tasks.annotation import _stratified_holdout

    vocabulary = json.loads(CONFIG_85M.read_text())["gene_list"]
    rng = np.random.default_rng(0)
    genes = [vocabulary[i] for i in rng.permutation(len(vocabulary))[:n_genes]]
    types = rng.integers(0, N_TYPES, n_cells)
    names = np.array([f"type{t}" for t in types])

    # annotation: 80% candidates, 10% of them (stratified, as ours draws it) validation, the rest training
    candidates = rng.random(n_cells) < 0.8
    codes = np.where(candidates, types, -1)
    validation = _stratified_holdout(codes, candidates, 0.1, 0)
    split = np.where(validation, "valid", np.where(candidates, "train", "test"))
    obs = pd.DataFrame({"batch": "s0", "cell_type": names, "split": split}, index=[f"c{i}" for i in range(n_cells)])
    x = make_counts(n_cells, genes, types, seed=1)
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(folder / "annotation.h5ad")

    # imputation: a panel of the first genes in space, the reference measuring them all; two sets each
    half = n_cells // 2
    part = np.repeat(["0", "1"], [half, n_cells - half])
    spatial = ad.AnnData(
        make_counts(n_cells, genes, types, seed=2)[:, :n_panel],
        obs=pd.DataFrame({"fov": np.char.add("sp", part)}, index=[f"s{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=genes[:n_panel]),
    )
    reference = ad.AnnData(
        make_counts(n_cells, genes, rng.integers(0, N_TYPES, n_cells), seed=3),
        obs=pd.DataFrame({"sample": np.char.add("rf", part)}, index=[f"r{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=genes),
    )
    spatial.write_h5ad(folder / "spatial.h5ad")
    reference.write_h5ad(folder / "reference.h5ad")
    both = ad.concat([spatial, reference], join="outer", fill_value=0)[:, genes].copy()
    both.obs["batch"] = np.concatenate([spatial.obs["fov"], reference.obs["sample"]])
    both.obs["split"] = np.where(both.obs["batch"].str.endswith("0"), "train", "valid")
    both.write_h5ad(folder / "imputation_official.h5ad")
    panels = {b: (genes[:n_panel] if b.startswith("sp") else genes) for b in ("sp0", "sp1", "rf0", "rf1")}
    (folder / "imputation_panels.json").write_text(json.dumps(panels))
    return {"cells": n_cells, "genes": n_genes, "panel": n_panel, "train_cells": int((split == "train").sum()),
            "validation_cells": int(validation.sum())}  # fmt: skip


# ---------------------------------------------------------------------------------- worker: weights
def official_config(size: str) -> dict:
    return json.loads(CONFIG_85M.read_text()) | SIZES[size]


def make_weights(folder: Path, size: str, deterministic: bool) -> dict:
    """Official-layout checkpoints of ``size`` by the official model (seed 0): ``base`` (the pretrained layout,
    NB decoder) and ``annotation`` (the same backbone, with the annotation model's latent and head)."""
    import torch
    from CellPLM.model.cellformer import OmicsFormer

    raw = official_config(size)
    torch.manual_seed(0)
    base = OmicsFormer(**raw).state_dict()
    torch.manual_seed(1)
    annotation = OmicsFormer(**raw | ANNOTATION_MODEL | (DETERMINISTIC if deterministic else {})).state_dict()
    annotation |= {k: v for k, v in base.items() if k.startswith(BACKBONE)}
    for name, state in (("base", base), ("annotation", annotation)):
        (folder / f"{name}.config.json").write_text(json.dumps(raw))
        torch.save({"model_state_dict": state}, folder / f"{name}.best.ckpt")
    return {"base_numbers": sum(v.numel() for v in base.values()), "size": size}


def no_dropout(model):
    import torch

    for layer in model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    return model


# --------------------------------------------------------------------------------- worker: official
def run_official(args) -> dict:
    import contextlib
    import io
    import warnings

    import anndata as ad
    import torch

    warnings.filterwarnings("ignore")
    times: list[list[float]] = []
    losses: list[float] = []

    def timed_forward(forward):
        def wrapped(*a, **k):
            if not model.training:
                return forward(*a, **k)
            times.append([time.perf_counter()])
            out, loss = forward(*a, **k)
            losses.append(float(loss.detach()))
            return out, loss

        return wrapped

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *_: times[-1].append(time.perf_counter()))
    if args.task == "annotation":
        from CellPLM.pipeline.cell_type_annotation import CellTypeAnnotationDefaultModelConfig as model_config
        from CellPLM.pipeline.cell_type_annotation import CellTypeAnnotationPipeline as Pipeline

        overwrite = model_config | {"out_dim": N_TYPES} | (DETERMINISTIC if args.deterministic else {})
        adata = ad.read_h5ad(args.data / "annotation.h5ad")
        fit = {"label_fields": ["cell_type"], "split_field": "split"}
        train = {"epochs": args.steps, "hvg": 0} | ({"wd": 1e-7} if args.deterministic else {})
        prefix = "annotation"
    else:
        from CellPLM.pipeline.imputation import ImputationDefaultModelConfig as model_config
        from CellPLM.pipeline.imputation import ImputationPipeline as Pipeline

        overwrite = dict(model_config)
        adata = ad.read_h5ad(args.data / "imputation_official.h5ad")
        panels = json.loads((args.data / "imputation_panels.json").read_text())
        fit = {"split_field": "split", "batch_gene_list": panels}
        train = {"epochs": max(1, args.steps // 2)}  # two training sets per epoch
        prefix = "base"
    pipe = Pipeline(pretrain_prefix=prefix, overwrite_config=overwrite, pretrain_directory=str(args.ckpt_dir))
    # its loader keeps the random init of a missing or mis-shaped key: check that every tensor came from the file
    saved = torch.load(args.ckpt_dir / f"{prefix}.best.ckpt", weights_only=True)["model_state_dict"]
    own = pipe.model.state_dict()
    not_loaded = [k for k, v in own.items() if k not in saved or not torch.equal(v, saved[k])]
    if not_loaded:
        raise RuntimeError(f"the official pipeline did not load these tensors from the checkpoint: {not_loaded[:8]}")
    model = pipe.model
    if args.deterministic:
        no_dropout(model)
    model.forward = timed_forward(model.forward)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pipe.fit(adata, train_config=train, device="cpu", **fit)
    return {"fit_s": time.perf_counter() - start, "step_s": [b - a for a, b in times], "losses": losses}


# -------------------------------------------------------------------------------------- worker: ours
def run_ours(args) -> dict:
    import anndata as ad
    import numpy as np

    from opencellplm import CellPLM
    from opencellplm.train import trainer as trainer_module

    times: list[float] = []
    losses: list[float] = []
    train_step = trainer_module.Trainer._train_step

    def timed_step(self):
        start = time.perf_counter()
        metrics = train_step(self)
        times.append(time.perf_counter() - start)
        losses.append(metrics["loss"])
        return metrics

    trainer_module.Trainer._train_step = timed_step
    if args.deterministic:  # the official schedule (ours cuts its warm-up to fit the steps, and warms the embedder)
        import torch

        init = trainer_module.Trainer.__init__

        def official_schedule(self, *a, **k):
            init(self, *a, **k)

            def warm_up(step):
                return min(1, (step + 1) / 30)

            factor = [
                (lambda step: 1.0) if group["name"].startswith("gene embedder") else warm_up
                for group in self.optimizer.param_groups
            ]
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

        trainer_module.Trainer.__init__ = official_schedule
    base = CellPLM.from_official(args.ckpt_dir / "base")
    precision = "fp32" if args.method == "ours fp32" else "auto"
    if args.task == "annotation":
        from opencellplm.io.official import read_official_weights, state_dict_from_official
        from opencellplm.tasks import annotation as task

        official_start = read_official_weights(args.ckpt_dir / "annotation.best.ckpt")
        build = task.annotation_module

        def same_start_as_official(backbone, config, head, *, seed):  # the official model's latent and head too
            module = build(backbone, config, head, seed=seed)
            module.load_state_dict(state_dict_from_official(module, official_start))
            return no_dropout(module) if args.deterministic else module

        task.annotation_module = same_start_as_official
        if args.deterministic:  # the official optimizer leaves the pre-latent norm out (it keeps its start)
            groups = task.AnnotationObjective.param_groups

            def official_groups(self, module):
                skip = {id(p) for p in module.pre_latent_norm.parameters()}
                return [replace(g, params=[p for p in g.params if id(p) not in skip]) for g in groups(self, module)]

            task.AnnotationObjective.param_groups = official_groups
        recipe = task.AnnotationRecipe(steps=args.steps, patience=0, precision=precision)
        if args.deterministic:
            recipe = task.AnnotationRecipe(
                steps=args.steps, patience=0, precision=precision, dropout=1e-9, drop_cell_rate=0.0,
                mask_cell_rate=0.0, mask_gene_rate=0.0, weight_decay=1e-7,
            )  # fmt: skip
        adata = ad.read_h5ad(args.data / "annotation.h5ad")
        split = adata.obs["split"].to_numpy()
        annotator = task.CellTypeAnnotator.from_pretrained(base, recipe=recipe)
        start = time.perf_counter()
        annotator.fit(
            adata, "cell_type", mode="transductive", train_cells=np.isin(split, ["train", "valid"]),
            sample_key="batch", max_cells=None,
        )  # fmt: skip
        n_loss = annotator.summary.n_train
        if n_loss != int((split == "train").sum()):
            raise RuntimeError(f"ours trained on {n_loss} cells, the official pipeline on {(split == 'train').sum()}")
    else:
        from opencellplm.tasks import ImputationRecipe, SpatialImputer

        # the official pipeline keeps the checkpoint's cell dropping (0.3 in the 85M release), ours none by default
        dropped = json.loads((args.ckpt_dir / "base.config.json").read_text())["drop_node_rate"]
        recipe = ImputationRecipe(
            steps=args.steps, patience=0, precision=precision, max_cells=args.cells // 2, drop_cell_rate=dropped
        )
        spatial = ad.read_h5ad(args.data / "spatial.h5ad")
        reference = ad.read_h5ad(args.data / "reference.h5ad")
        imputer = SpatialImputer.from_pretrained(base, recipe=recipe)
        start = time.perf_counter()
        imputer.fit(spatial, reference, sample_key="fov", reference_sample_key="sample")
    return {"fit_s": time.perf_counter() - start, "step_s": times, "losses": losses}


def worker(args) -> None:
    import resource

    import sklearn.metrics  # noqa: F401  one-time imports, made before the timed fit on both sides: the first
    import torch
    import torch._dynamo  # noqa: F401  optimizer imports dynamo, ours imports sklearn when it first evaluates

    torch.set_num_threads(args.threads)
    if args.make_weights:
        print("RESULT " + json.dumps(make_weights(args.ckpt_dir, args.size, args.deterministic)))
        return
    result = (run_official if args.method == "official" else run_ours)(args)
    steps = result["step_s"]
    result |= {
        "method": args.method,
        "steps": len(steps),
        "mean_step_s": statistics.mean(steps[1:] if len(steps) > 1 else steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(result))


# -------------------------------------------------------------------------------------------- driver
def spawn(python: str, args, extra: list[str]) -> dict:
    """Run this file as a worker in a fresh process and return its RESULT line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    common = ["--threads", str(args.threads), "--steps", str(args.steps), "--cells", str(args.cells)]
    p = subprocess.run([python, __file__, "--worker", *common, *extra], capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker {' '.join(extra)} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")


def measure(args, folder: Path, size: str, task: str, ours_python: str) -> dict:
    methods = (["official"] if args.official_python else []) + ["ours fp32", "ours auto"]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for rep in range(args.reps):
        for method in methods[rep % len(methods) :] + methods[: rep % len(methods)]:
            python = args.official_python if method == "official" else ours_python
            extra = ["--method", method, "--task", task, "--data", str(folder), "--ckpt-dir", str(folder / size)]
            r = spawn(python, args, extra)
            runs[method].append(r)
            print(f"  {size} {task} rep {rep + 1} {method}: step {r['mean_step_s']:.3f} s, fit {r['fit_s']:.1f} s "
                  f"({r['steps']} steps), peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    summary = {}
    for method, rs in runs.items():
        summary[method] = {
            "step_s": statistics.median(r["mean_step_s"] for r in rs),
            "fit_s": statistics.median(r["fit_s"] for r in rs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
            "steps": rs[0]["steps"],
            "cells_per_s": statistics.median(cells_per_step(args, task) / r["mean_step_s"] for r in rs),
            "runs_step_s": [round(r["mean_step_s"], 4) for r in rs],
            "losses_first_run": [round(v, 5) for v in rs[0]["losses"]],
        }
    if "official" in summary:
        for s in summary.values():
            s["step_speedup"] = summary["official"]["step_s"] / s["step_s"]
            s["fit_speedup"] = summary["official"]["fit_s"] / s["fit_s"]
    return {"size": size, "task": task, "reps": args.reps, "methods": summary}


def cells_per_step(args, task: str) -> int:
    """Cells in a step's cell set, before the cells a step drops (annotation: all; imputation: one half-set)."""
    return args.cells if task == "annotation" else args.cells // 2


def trajectory(args, folder: Path, ours_python: str) -> dict:
    """The fp32 annotation losses of both fits with every random part off (see the module docstring)."""
    ckpt = folder / f"{args.trajectory_size}_deterministic"
    ckpt.mkdir()
    spawn(args.official_python, args, ["--make-weights", "--deterministic", "--size", args.trajectory_size,
                                       "--ckpt-dir", str(ckpt)])  # fmt: skip
    out = {}
    for method in ("official", "ours fp32"):
        python = args.official_python if method == "official" else ours_python
        extra = ["--method", method, "--task", "annotation", "--deterministic", "--data", str(folder)]
        out[method] = spawn(python, args, extra + ["--ckpt-dir", str(ckpt)])["losses"]
    official, ours = out["official"], out["ours fp32"]
    relative = [abs(a - b) / abs(a) for a, b in zip(official, ours)]
    return {"size": args.trajectory_size, "official": official, "ours_fp32": ours, "relative_difference": relative}


def print_table(result: dict) -> None:
    print(f"\n{result['task']} / {result['size']} ({result['reps']} repetitions, medians)")
    print("| method | s per step | cells/s | speed-up per step | fit s | speed-up of the fit | peak RSS MB | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for method, s in result["methods"].items():
        step_x = f"{s['step_speedup']:.2f}x" if "step_speedup" in s else "n/a"
        fit_x = f"{s['fit_speedup']:.2f}x" if "fit_speedup" in s else "n/a"
        print(f"| {method} | {s['step_s']:.3f} | {s['cells_per_s']:,.0f} | {step_x} | {s['fit_s']:.1f} | {fit_x} "
              f"| {s['peak_rss_mb']:,.0f} "
              f"| {s['steps']} |")  # fmt: skip


def driver(args) -> int:
    ours_python = args.ours_python or sys.executable
    print(f"official: {args.official_python}" if args.official_python else "official: not measured (ours only)")
    if not CONFIG_85M.is_file():
        raise SystemExit(f"the 85M configuration is missing: {CONFIG_85M}")
    report: dict = {"threads": args.threads, "steps": args.steps, "reps": args.reps}
    with tempfile.TemporaryDirectory(prefix="finetune_speed_") as tmp:
        folder = Path(tmp)
        report["data"] = make_data(folder, args.cells, args.genes, args.panel)
        print("data: " + json.dumps(report["data"]))
        maker = args.official_python or None
        if maker is None:
            raise SystemExit("the starting weights are written by the official model: pass --official-python")
        report["results"] = []
        for size in args.sizes:
            (folder / size).mkdir()
            spawn(maker, args, ["--make-weights", "--size", size, "--ckpt-dir", str(folder / size)])
            for task in args.tasks:
                result = measure(args, folder, size, task, ours_python)
                report["results"].append(result)
                print_table(result)
        if args.trajectory:
            report["trajectory"] = t = trajectory(args, folder, ours_python)
            print(f"\nfp32 annotation losses, {t['size']}, random parts off (official / ours / relative difference):")
            for i, (a, b, r) in enumerate(zip(t["official"], t["ours_fp32"], t["relative_difference"])):
                print(f"  step {i + 1}: {a:.6f} / {b:.6f} / {r:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-python", help="python of the official package's venv")
    parser.add_argument("--ours-python", help="python for our runs (default: this one)")
    parser.add_argument("--sizes", nargs="+", default=["85m", "small"], choices=list(SIZES))
    tasks = ["annotation", "imputation"]
    parser.add_argument("--tasks", nargs="+", default=tasks, choices=tasks)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--panel", type=int, default=200)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trajectory", action="store_true", help="add the fp32 loss check (annotation)")
    parser.add_argument("--trajectory-size", default="85m", choices=list(SIZES))
    parser.add_argument("--json", help="write every figure here")
    # worker
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make-weights", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="85m", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
