"""``opencellplm annotate fit | predict | score``: cell type annotation."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .._files import check_output_file
from ._args import (
    DEFAULT_MODEL,
    STEPS_HELP,
    add_input_spec,
    add_overwrite,
    add_seed,
    add_start,
    flag_column,
    model_path,
    spec_from,
)

logger = logging.getLogger("opencellplm")


def register(commands: argparse._SubParsersAction) -> None:
    annotate = commands.add_parser(
        "annotate",
        help="cell type annotation: fit an annotator, predict labels, score",
        description="Cell type annotation; `opencellplm annotate ACTION -h` lists an action's options.",
    )
    actions = annotate.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("fit", help="fine-tune an annotator on labelled cells and save it to a folder")
    p.add_argument("input", help="h5ad file with raw counts and cell type labels")
    p.add_argument("--labels-key", help="obs column of cell type labels (required)")
    p.add_argument("--out", help="annotator folder to write (required)")
    p.add_argument("--checkpoint", help=f"model to fine-tune (default {DEFAULT_MODEL})")
    add_start(p)
    p.add_argument("--mode", default="inductive", choices=["inductive", "transductive"], help="(default inductive)")
    p.add_argument("--test-key", help="boolean obs column marking test cells, left out of the fit")
    p.add_argument("--steps", type=int, help=STEPS_HELP.format(steps=300, recipe="AnnotationRecipe"))
    add_seed(
        p, help="seed of every random choice of the fit: validation split, head, masks, order, partition (default 0)"
    )
    add_input_spec(
        p,
        "layer",
        "gene_key",
        "sample_key",
        layer="layer with raw counts (default: X); saved with the annotator",
        gene_key="var column with gene ids (default: var_names); saved with the annotator",
        sample_key="obs column grouping cells into sets; saved with the annotator",
    )
    add_overwrite(p, "replace --out (only an annotator folder)")
    p.set_defaults(run=_annotate)
    # predict and score read the input with the layer, gene key and sample key saved by fit
    p = actions.add_parser("predict", help="label cells with a saved annotator; writes a new h5ad")
    p.add_argument("input", help="h5ad file with raw counts (read as the annotator's fit read its input)")
    p.add_argument("--annotator", help="annotator folder written by annotate fit (required)")
    p.add_argument("--out", help="h5ad file to write (required)")
    p.add_argument("--key-added", default="cellplm_label", help="obs key to write (default cellplm_label)")
    add_overwrite(p)
    p.set_defaults(run=_annotate)
    p = actions.add_parser("score", help="score a saved annotator on labelled cells, beside baselines")
    p.add_argument("input", help="h5ad file with raw counts and cell type labels")
    p.add_argument("--annotator", help="annotator folder written by annotate fit (required)")
    p.add_argument("--labels-key", help="obs column of cell type labels (required)")
    p.add_argument(
        "--test-key",
        help="boolean obs column marking the test cells to score (default: all cells); "
        "the other cells train the baselines unless --reference is given",
    )
    p.add_argument("--reference", help="labelled h5ad the baselines learn from (default: no baselines)")
    p.add_argument(
        "--baselines",
        nargs="*",
        default=["celltypist_style", "l1_logistic_cv", "knn_on_pca", "celltypist"],
        help="baselines to run beside CellPLM (celltypist, the package itself, needs the baselines extra; without "
        "it the row is skipped, saying so)",
    )
    add_seed(p, help="seed of the baselines (default 0)")
    p.add_argument("--json", help="also write the scores as JSON here")
    add_overwrite(p, "replace --json if it exists")
    p.set_defaults(run=_annotate)


def _annotate(args: argparse.Namespace) -> int:
    import anndata as ad

    from ..data.output import check_result_key, write_json, write_new_h5ad
    from ..data.reader import read_h5ad
    from ..tasks import AnnotationRecipe, CellTypeAnnotator

    source = Path(args.input)
    if not source.is_file():
        raise FileNotFoundError(f"input file not found: {source}")
    if args.action in ("fit", "score") and args.labels_key is None:
        raise ValueError(f"annotate {args.action} needs --labels-key, the obs column of cell type labels")
    if args.action == "fit":
        if args.out is None:
            raise ValueError("annotate fit needs --out, the folder to save the fitted annotator in")
        from .._files import check_output_directory
        from ..tasks.annotation import annotator_problems

        check_output_directory(
            args.out,
            overwrite=args.overwrite,
            recognise=annotator_problems,
            kind="annotator",
            inputs=[source, model_path(args.checkpoint)],
        )
        adata = read_h5ad(source)
        make = CellTypeAnnotator.from_scratch if args.start == "scratch" else CellTypeAnnotator.from_pretrained
        recipe = AnnotationRecipe(**{k: v for k, v in {"steps": args.steps}.items() if v is not None}, seed=args.seed)
        annotator = make(args.checkpoint or DEFAULT_MODEL, recipe=recipe)
        train_cells = None if args.test_key is None else ~flag_column(adata, args.test_key)
        spec = spec_from(args) | {"seed": args.seed}
        annotator.fit(adata, args.labels_key, mode=args.mode, train_cells=train_cells, **spec)
        annotator.save(args.out, overwrite=args.overwrite)
        return 0
    if args.annotator is None:
        raise ValueError(f"annotate {args.action} needs --annotator, a folder written by annotate fit")
    inputs = [source, args.annotator, getattr(args, "reference", None)]  # predict has no --reference
    if args.action == "score" and args.reference is not None:
        if not Path(args.reference).is_file():
            raise FileNotFoundError(f"--reference file not found: {args.reference}")
        if Path(args.reference).samefile(source):
            raise ValueError(
                f"--reference is the file being scored ({source}): the baselines would learn the test cells' labels "
                "and score near 1. Give labelled cells kept apart from the test cells, or --test-key alone (the "
                "baselines then learn from the other cells of the file)"
            )
    if args.action == "predict":
        if args.out is None:
            raise ValueError("annotate predict needs --out, the h5ad file to write")
        check_output_file(args.out, overwrite=args.overwrite, inputs=inputs)  # before loading the annotator
    elif args.json:
        check_output_file(args.json, overwrite=args.overwrite, inputs=inputs)
    annotator = CellTypeAnnotator.load(args.annotator)
    if args.action == "predict":

        def annotated() -> ad.AnnData:
            adata = read_h5ad(source)
            key = args.key_added
            check_result_key(
                adata, "obs", key, companions=[("obs", f"{key}_probability"), ("obsm", f"{key}_probabilities")]
            )
            annotator.predict(adata, key_added=args.key_added)
            return adata

        write_new_h5ad(args.out, annotated, overwrite=args.overwrite, inputs=inputs)
        logger.info("wrote %s with obs[%r]", args.out, args.key_added)
        return 0
    adata = read_h5ad(source)
    test_cells = None if args.test_key is None else flag_column(adata, args.test_key)
    if args.reference is not None:
        reference = read_h5ad(args.reference)
    elif test_cells is not None:  # the baselines learn from the cells that are not test cells
        reference = adata[~test_cells].copy()
    else:
        reference = None
        logger.warning("no --reference or --test-key: the baselines have no training cells and are not run")
    scores = annotator.score(
        adata,
        args.labels_key,
        test_cells=test_cells,
        reference=reference,
        baselines=() if reference is None else tuple(args.baselines),
        seed=args.seed,
    )
    skipped = "".join(f"skipped {name}: {reason}\n" for name, reason in scores.skipped.items())
    sys.stdout.write(scores.to_frame().round(4).to_string() + "\n" + skipped)
    if args.json:
        write_json(args.json, scores.to_dict(), overwrite=args.overwrite, inputs=inputs)
    return 0
