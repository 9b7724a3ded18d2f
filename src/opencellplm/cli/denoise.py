"""``opencellplm denoise``: CellPLM-denoised counts in a layer of a new h5ad, or the denoising score (``--score``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .._files import check_output_file, refuse_inputs
from ..data.output import check_result_target
from ._args import (
    DEFAULT_MODEL,
    STEPS_HELP,
    add_checkpoint,
    add_device,
    add_input_spec,
    add_overwrite,
    add_seed,
    model_path,
    spec_from,
)

logger = logging.getLogger("opencellplm")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "denoise", help="write CellPLM-denoised counts of an h5ad to a layer, or score denoising (--score)"
    )
    p.add_argument("input", help="h5ad file with raw counts")
    p.add_argument(
        "--out",
        help="h5ad file (or zarr store, a name ending .zarr) to write: the input with layers[LAYER_ADDED] added, "
        "dense (4 bytes per cell and gene: every gene the model knows gets a non-zero value) unless most entries "
        "stay zero",
    )
    add_checkpoint(p)
    p.add_argument("--fine-tune", action="store_true", help="fine-tune on the input first (with --score: add the row)")
    p.add_argument(
        "--steps",
        type=int,
        help="with --fine-tune: "
        + STEPS_HELP.format(steps=100, recipe="DenoisingRecipe")
        + "; fewer than the other tasks' 300, as each step reads a whole cell set of up to --max-cells cells: on "
        "700 PBMC cells the validation error levels off by step 100, at about 0.6 s a step on one CPU thread",
    )
    p.add_argument(
        "--work",
        help="with --fine-tune: folder for the fine-tuning run's checkpoints; running the same command again "
        "resumes there after a kill, and reads a finished run back (default: none, the run is kept in memory; "
        "the folder is kept, delete it when done)",
    )
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="--score: add the row of the same architecture fine-tuned from fresh weights (implies --fine-tune)",
    )
    add_input_spec(
        p,
        "layer",
        "gene_key",
        "sample_key",
        "max_cells",
        sample_key="obs column grouping the cells denoised together (default: all cells)",
    )
    p.add_argument("--layer-added", default="cellplm_denoised", help="layer to write (default: cellplm_denoised)")
    p.add_argument(
        "--gene-levels",
        choices=["data", "model"],
        default="data",
        help="each gene's level in the output: fitted to the input's gene totals (data, the default) or the "
        "decoder's own, learnt on its training data (model)",
    )
    p.add_argument("--score", action="store_true", help="score CellPLM and the baselines instead; prints a table")
    p.add_argument("--protocol", choices=["hidden", "mcv"], help="--score protocol (default hidden)")
    p.add_argument("--fraction", type=float, help="--score: share hidden or held out (default 0.1)")
    add_seed(
        p,
        help="seed of every random choice: the partition, the fine-tuning, and with --score the corruption and the "
        "baselines (default 0)",
    )
    p.add_argument(
        "--baselines",
        help="--score: comma-separated baselines (default: all four; magic and scvi need their extras)",
    )
    p.add_argument("--json", help="--score: also write the full result to this JSON file")
    add_device(p)
    add_overwrite(p, "replace --out (or --json) if it exists")
    p.set_defaults(run=_denoise)


#: The CellPLM rows of ``denoise --score`` that run only when asked for, and the flag that asks.
_SCORE_ROW_FLAGS = {"cellplm_fine_tuned": "--fine-tune", "cellplm_from_scratch": "--from-scratch"}
#: ``denoise``'s options that only ``--score`` uses, with their defaults there.
_SCORE_OPTIONS = {
    "protocol": "hidden",
    "fraction": 0.1,
    "baselines": "unchanged,knn_smoothing,magic,scvi",
    "json": None,
}


def _denoise(args: argparse.Namespace) -> int:
    from ..data.reader import open_h5ad
    from ..model import CellPLM
    from ..tasks import Denoiser, DenoisingRecipe

    if not Path(args.input).is_file():  # before loading the model
        raise FileNotFoundError(f"input file not found: {args.input}")
    if args.score == (args.out is not None):
        raise ValueError("pass --out OUT.h5ad to write the denoised layer, or --score to score (one of the two)")
    inputs = [args.input, model_path(args.checkpoint)]
    fine_tune = args.fine_tune or (args.score and args.from_scratch)
    if args.work is not None and args.score:
        raise ValueError("--work keeps the fine-tuning of --out resumable; --score fine-tunes in memory, drop --work")
    if args.from_scratch and not args.score:
        raise ValueError("--from-scratch adds a row to --score; denoising with --out starts from the checkpoint")
    for flag, value in (("--steps", args.steps), ("--work", args.work)):
        if value is not None and not fine_tune:
            raise ValueError(
                f"{flag} sets up fine-tuning, which runs only with --fine-tune (without it denoise is zero-shot); "
                f"add --fine-tune, or drop {flag}"
            )
    score_only = [f"--{name}" for name in _SCORE_OPTIONS if getattr(args, name) is not None]
    if score_only and not args.score:
        raise ValueError(f"{', '.join(score_only)} set up --score, and denoising into --out does not score; drop them")
    for name, default in _SCORE_OPTIONS.items():
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    if args.work is not None:  # an output folder as well: never over an input, nor around --out
        refuse_inputs(args.work, inputs, kind="work folder")
        refuse_inputs(args.out, [args.work])
    if args.out is not None:
        check_result_target(args.out, overwrite=args.overwrite, inputs=inputs)
    if args.json is not None:
        check_output_file(args.json, overwrite=args.overwrite, inputs=inputs)
    model = CellPLM.from_pretrained(args.checkpoint or DEFAULT_MODEL, device=args.device)
    logger.info("model: %s (weights sha256 %s)", model.source["path"], model.source["sha256"][:12])
    recipe = DenoisingRecipe(**({} if args.steps is None else {"steps": args.steps}), seed=args.seed)
    denoiser = Denoiser.from_pretrained(model, recipe=recipe)
    spec = spec_from(args)
    if args.out is not None:
        denoiser.denoise_file(
            args.input,
            args.out,
            layer_added=args.layer_added,
            gene_levels=args.gene_levels,
            overwrite=args.overwrite,
            fine_tune=args.fine_tune,
            work=args.work,
            device=args.device,
            **spec,
            seed=args.seed,
        )
        return 0
    baselines = [name for name in args.baselines.split(",") if name]
    with open_h5ad(args.input) as adata:  # count matrices stay on disk; score reads the model's genes
        result = denoiser.score(
            adata,
            protocol=args.protocol,
            fraction=args.fraction,
            seed=args.seed,
            fine_tune=fine_tune,
            from_scratch=args.from_scratch,
            baselines=baselines,
            device=args.device,
            gene_levels=args.gene_levels,
            **spec,
        )
    table = result.to_frame().to_string(float_format=lambda v: f"{v:.4g}")
    skipped = "".join(f"skipped {name}: {reason}\n" for name, reason in result.skipped.items())
    header = f"{args.input}: denoising, protocol {result.protocol}, fraction {result.fraction}, seed {result.seed}"
    missing = [f"{row} (add {flag})" for row, flag in _SCORE_ROW_FLAGS.items() if row not in result.to_frame().index]
    note = f"rows not run: {', '.join(missing)}\n" if missing else ""
    sys.stdout.write(f"{header}\n{table}\n{skipped}{note}")
    if args.json is not None:
        from ..data.output import write_json

        write_json(args.json, result.to_dict(), overwrite=args.overwrite, inputs=inputs)
    return 0
