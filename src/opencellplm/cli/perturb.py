"""``opencellplm perturb fit | score | predict``: perturbation prediction."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .._files import check_output_file
from ._args import (
    DEFAULT_MODEL,
    STEPS_HELP,
    add_device,
    add_input_spec,
    add_overwrite,
    add_seed,
    add_start,
    model_path,
    spec_from,
)

logger = logging.getLogger("opencellplm")


def register(commands: argparse._SubParsersAction) -> None:
    perturb = commands.add_parser(
        "perturb",
        help="perturbation prediction: fit a predictor on Perturb-seq counts, predict labels, score vs baselines",
        description="Perturbation prediction; `opencellplm perturb ACTION -h` lists an action's options.",
    )
    actions = perturb.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = actions.add_parser("fit", help="fine-tune a perturbation predictor on Perturb-seq counts and save it")
    fit.add_argument("input", help="h5ad file with raw counts and perturbation labels")
    fit.add_argument("--out", required=True, help="predictor folder to write")
    add_seed(fit, help="seed of every random choice of the fit: validation split, control sets, pairing (default 0)")
    score = actions.add_parser("score", help="score CellPLM beside the baselines on held-out perturbations")
    score.add_argument("input", help="h5ad file with raw counts and perturbation labels")
    score.add_argument("--out", required=True, help="JSON file of the result to write")
    score.add_argument(
        "--from-scratch", action="store_true", help="add the row of CellPLM fine-tuned from fresh weights"
    )
    score.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="one split (and fit) per seed (default 0 1 2)"
    )
    for p in (fit, score):
        p.add_argument("--checkpoint", help=f"model to fine-tune (shipped name or folder; default {DEFAULT_MODEL})")
        add_start(p)
        p.add_argument("--perturbation-key", default="perturbation", help="obs column of labels (default perturbation)")
        p.add_argument("--control", default="ctrl", help="label of control cells (default ctrl)")
        p.add_argument(
            "--default-direction", default="down", choices=["down", "up"], help="direction of an unsuffixed gene"
        )
        p.add_argument("--extend-vocabulary", action="store_true", help="add perturbed genes outside the vocabulary")
        p.add_argument("--steps", type=int, help=STEPS_HELP.format(steps=300, recipe="PerturbationRecipe"))
        add_input_spec(
            p,
            "layer",
            "gene_key",
            "sample_key",
            sample_key="obs column grouping control cells into sets (default: all one sample)",
        )
        add_device(p)
        p.set_defaults(run=_perturb)
    add_overwrite(fit, "replace --out (only a predictor folder)")
    add_overwrite(score)
    p = actions.add_parser("predict", help="predict the mean profiles of perturbations with a saved predictor")
    p.add_argument("input", help="predictor folder written by perturb fit")
    p.add_argument("--out", required=True, help="CSV file of the predicted profiles to write")
    p.add_argument("--labels", nargs="+", help='perturbation labels, e.g. "A+B" "C:up"')
    p.add_argument("--labels-file", help="file with one perturbation label per line")
    add_device(p)
    add_overwrite(p)
    p.set_defaults(run=_perturb)


def _perturb(args: argparse.Namespace) -> int:
    from ..data.output import write_json
    from ..data.reader import read_h5ad
    from ..tasks import PerturbationPredictor, PerturbationRecipe

    if args.action == "predict":
        return _perturb_predict(args)
    source = Path(args.input)
    if not source.is_file():  # before loading the model
        raise FileNotFoundError(f"input file not found: {source}")
    changes = {"steps": args.steps, "seed": getattr(args, "seed", None)}  # score seeds each split by --seeds
    recipe = PerturbationRecipe(**{k: v for k, v in changes.items() if v is not None})
    options = {
        "perturbation_key": args.perturbation_key,
        "control": args.control,
        "default_direction": args.default_direction,
        "extend_vocabulary": args.extend_vocabulary,
        "device": args.device,
    } | spec_from(args)
    inputs = [source, model_path(args.checkpoint)]
    if args.action == "fit":
        from .._files import check_output_directory
        from ..tasks.perturbation import predictor_problems

        check_output_directory(
            args.out,
            overwrite=args.overwrite,
            recognise=predictor_problems,
            kind="perturbation predictor",
            inputs=inputs,
        )
    else:
        check_output_file(args.out, overwrite=args.overwrite, inputs=inputs)

    adata = read_h5ad(source)
    make = PerturbationPredictor.from_scratch if args.start == "scratch" else PerturbationPredictor.from_pretrained
    predictor = make(args.checkpoint or DEFAULT_MODEL, recipe=recipe, device=args.device or "cpu")
    if args.action == "fit":
        predictor.fit(adata, **options).save(args.out, overwrite=args.overwrite)
        return 0
    result = predictor.score(adata, seeds=args.seeds, from_scratch=args.from_scratch, **options)
    label = "simulated" if result.simulated else "real"
    table = result.to_frame().to_string(float_format=lambda v: f"{v:.4g}")
    header = f"{args.input}: perturbation prediction ({label} data), seeds {result.seeds}, mean (and *_std) over seeds"
    sys.stdout.write(f"{header}\n{table}\n")
    write_json(args.out, result.to_dict(), overwrite=args.overwrite, inputs=inputs)
    return 0


def _perturb_predict(args: argparse.Namespace) -> int:
    from .._files import attribute_mark_problems, mark_by_attribute
    from ..data.output import write_new_file
    from ..tasks import PerturbationPredictor

    if (args.labels is None) == (args.labels_file is None):
        raise ValueError("perturb predict needs --labels A B+C ... or --labels-file FILE (one of the two)")
    labels = args.labels
    if args.labels_file is not None:
        if not Path(args.labels_file).is_file():
            raise FileNotFoundError(f"labels file not found: {args.labels_file}")
        labels = [line.strip() for line in Path(args.labels_file).read_text().splitlines() if line.strip()]
    if not labels:
        raise ValueError("no perturbation labels given")
    inputs = [args.input, args.labels_file]
    check_output_file(args.out, overwrite=args.overwrite, inputs=inputs, recognise=attribute_mark_problems)
    predictor = PerturbationPredictor.load(args.input, device=args.device or "cpu")
    prediction = predictor.predict(labels)

    def write(path: Path) -> None:
        prediction.to_csv(path)
        mark_by_attribute(path)  # a CSV has no room for a mark of its own

    write_new_file(args.out, write, overwrite=args.overwrite, inputs=inputs, recognise=attribute_mark_problems)
    logger.info("wrote the predicted mean profiles of %d perturbations to %s", len(labels), args.out)
    return 0
