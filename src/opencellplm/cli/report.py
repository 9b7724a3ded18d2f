"""``opencellplm benchmark``, ``demo`` and ``info``: what the model does, measured and described."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .._files import refuse_inputs
from ._args import Renamed, add_overwrite, add_seed, model_path

logger = logging.getLogger("opencellplm")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "benchmark",
        help="every task on every real data set that suits it, CellPLM beside every baseline: results.json, "
        "report.md and plots (resumable)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder to write (new or empty); a folder of an earlier run continues it, any other is refused",
    )
    p.add_argument("--tasks", nargs="+", help="tasks to run (default: all)")
    p.add_argument("--datasets", nargs="+", help="data sets to run (default: every one that suits each task)")
    p.add_argument(
        "--n-seeds",
        dest="seeds",
        type=int,
        metavar="N",
        help="number of seeds, 0..N-1 (default: 1 with --quick, else 3)",
    )
    renamed = "a count; perturb score's --seeds lists the seeds themselves"
    p.add_argument(
        "--seeds", dest="seeds", type=int, action=Renamed, new="--n-seeds", why=renamed, help=argparse.SUPPRESS
    )
    p.add_argument("--checkpoint", default="cellplm-small", help="shipped model name or checkpoint directory")
    p.add_argument("--quick", action="store_true", help="CI-sized run: one seed, small subsets, few steps")
    p.add_argument("--readme", help="also write the results tables into this README, between its markers")
    p.set_defaults(run=_benchmark)

    p = commands.add_parser("info", help="describe a checkpoint directory")
    p.add_argument("checkpoint")
    p.set_defaults(run=_info)

    p = commands.add_parser(
        "demo",
        help="the shipped model on PBMC 68k reduced (ships with scanpy): clustering, denoising, annotation, UMAPs, "
        "report",
    )
    p.add_argument("--out", default="opencellplm-demo", help="folder to write (default: opencellplm-demo)")
    add_overwrite(p, "replace --out if an earlier demo wrote it")
    add_seed(p)
    p.set_defaults(run=_demo)


def _benchmark(args: argparse.Namespace) -> int:
    from ..benchmark import run_benchmark
    from ..benchmark.report import check_readme, update_readme, write_report
    from ..benchmark.run import unit_outcomes

    if args.readme:
        check_readme(args.readme)  # a wrong --readme fails now, not after the benchmark
    refuse_inputs(args.out, [model_path(args.checkpoint)], kind="benchmark folder")
    results = run_benchmark(
        args.out,
        tasks=args.tasks,
        datasets=args.datasets,
        seeds=args.seeds,
        checkpoint=args.checkpoint,
        profile="quick" if args.quick else "full",
    )
    report = write_report(args.out, results)
    if args.readme:
        if results["profile"] != "full":
            logger.warning(
                "the README's results come from the full profile; writing the %s profile's", results["profile"]
            )
        update_readme(args.readme, results)
    outcome = unit_outcomes(results)
    units, failed = outcome["units"], outcome["failed"]
    if units and outcome["cellplm_failed"] == units:
        last = f"CellPLM gave no result in any of the {units} units (task, data set, seed), {failed} failed: "
        last += "see the report"
    elif failed:
        last = f"{failed} of {units} units (task, data set, seed) failed: see the report"
    else:
        last = f"all {units} units (task, data set, seed) ran"
    if results["profile"] == "quick":
        last += "; quick profile: a smoke run, its scores mean nothing"
    sys.stdout.write(f"report: {report}\n{last}\n")
    return 1 if units and outcome["cellplm_failed"] == units else 0


def _demo(args: argparse.Namespace) -> int:
    from ..demo import RESULTS_FILE, run_demo, verdict_lines

    report = run_demo(args.out, overwrite=args.overwrite, seed=args.seed)
    results = json.loads((report.parent / RESULTS_FILE).read_text())
    verdict = verdict_lines(results)
    truth = results.get("data", {}).get("ground_truth")
    lines = [f"ground truth: {truth}"] if truth else []
    lines += [f"{kind}: {line}" for kind in ("wins", "losses", "ties") for line in verdict[kind]]
    sys.stdout.write("".join(f"{line}\n" for line in lines) + f"report: {report}\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..model import CellPLM
    from ..module.annotation import module_config

    model = CellPLM.from_pretrained(args.checkpoint)
    report = {
        "model": repr(model),
        "genes": {"n": len(model.genes), "first": model.genes[:3]},
        "config": module_config(model.module),  # with an annotator's head
        "meta": model.meta,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0
