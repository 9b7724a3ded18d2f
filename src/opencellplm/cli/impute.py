"""``opencellplm impute``: genes a spatial panel did not measure, from a model fine-tuned with a reference."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .._files import check_output_file
from ._args import DEFAULT_MODEL, STEPS_HELP, add_checkpoint, add_device, add_overwrite, add_seed, model_path

logger = logging.getLogger("opencellplm")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "impute",
        help="impute genes a spatial panel did not measure, fine-tuning with an scRNA-seq reference; writes a new h5ad",
    )
    p.add_argument("spatial", help="h5ad file of the spatial panel (counts; coordinates in obsm)")
    p.add_argument("--reference", required=True, help="h5ad file of the scRNA-seq reference (counts)")
    p.add_argument(
        "--genes",
        nargs="+",
        action="extend",  # a repeated --genes adds to the list instead of replacing it
        help="genes to impute, space- or comma-separated, and the flag may be repeated (default: every reference "
        "gene not in the panel)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="h5ad file to write: the panel genes then the imputed ones, imputed values in layers[LAYER_ADDED]",
    )
    add_checkpoint(p)
    p.add_argument("--steps", type=int, help=STEPS_HELP.format(steps=300, recipe="ImputationRecipe"))
    p.add_argument("--no-positional", action="store_true", help="do not encode the coordinates (the official setting)")
    p.add_argument(
        "--max-cells",
        type=int,
        default=1000,
        help="largest cell set: spatial tiles, random groups of reference cells (default 1000, the recipe's; smaller "
        "than embed's 4000: fine-tuning holds out whole sets to keep its best state, and each set's loss covers "
        "every reference gene of every cell)",
    )
    p.add_argument("--layer", help="layer of the spatial file with counts (default: X)")
    p.add_argument(
        "--gene-key", help="var column of the spatial file with the vocabulary's gene ids (default: var_names)"
    )
    p.add_argument("--sample-key", help="obs column of the spatial samples / fields of view")
    p.add_argument("--spatial-key", default="spatial", help="obsm key of the coordinates (default: spatial)")
    p.add_argument("--reference-layer", help="layer of the reference with counts (default: X)")
    p.add_argument(
        "--reference-gene-key",
        help="var column of the reference with the vocabulary's gene ids (default: the --gene-key column when "
        "given, else var_names); imputed genes keep the reference's var_names, --genes may name either",
    )
    p.add_argument("--reference-sample-key", help="obs column of the reference's samples")
    p.add_argument(
        "--extend-vocabulary",
        action="store_true",
        help="add genes missing from the model's vocabulary with fresh rows (e.g. another species)",
    )
    p.add_argument("--layer-added", default="cellplm_imputed", help="layer to write (default: cellplm_imputed)")
    add_seed(p, help="seed of every random choice of the fine-tuning: partition, validation sets, masks (default 0)")
    add_device(p)
    add_overwrite(p)
    p.set_defaults(run=_impute)


def _impute(args: argparse.Namespace) -> int:
    import anndata as ad

    from ..data.output import write_new_h5ad
    from ..data.reader import read_h5ad
    from ..model import CellPLM
    from ..tasks.imputation import ImputationRecipe, SpatialImputer

    for path in (args.spatial, args.reference):
        if not Path(path).is_file():  # before loading the model
            raise FileNotFoundError(f"input file not found: {path}")
    if Path(args.spatial).samefile(args.reference):
        raise ValueError(
            f"--reference names the spatial input itself ({args.reference}); impute needs a separate scRNA-seq "
            "reference that measures the genes the spatial panel did not"
        )
    inputs = [args.spatial, args.reference, model_path(args.checkpoint)]
    check_output_file(args.out, overwrite=args.overwrite, inputs=inputs)
    model = CellPLM.from_pretrained(args.checkpoint or DEFAULT_MODEL, device=args.device)
    logger.info("model: %s (weights sha256 %s)", model.source["path"], model.source["sha256"][:12])
    changes = {"positional": not args.no_positional, "max_cells": args.max_cells, "seed": args.seed}
    if args.steps is not None:
        changes["steps"] = args.steps
    imputer = SpatialImputer.from_pretrained(model, recipe=ImputationRecipe(**changes))
    spatial, reference = read_h5ad(args.spatial), read_h5ad(args.reference)
    genes = None
    if args.genes:
        genes = [g for item in args.genes for g in item.split(",") if g]

    def compute() -> ad.AnnData:
        imputer.fit(  # checks both inputs and the genes to impute before fine-tuning
            spatial,
            reference,
            layer=args.layer,
            gene_key=args.gene_key,
            sample_key=args.sample_key,
            spatial_key=args.spatial_key,
            reference_layer=args.reference_layer,
            reference_gene_key=args.reference_gene_key or args.gene_key,
            reference_sample_key=args.reference_sample_key,
            genes=genes,
            extend_vocabulary=args.extend_vocabulary,
            device=args.device,
            names=(f"the spatial file {args.spatial}", f"the reference {args.reference}"),
        )
        return imputer.predict(spatial, genes, layer_added=args.layer_added)

    write_new_h5ad(args.out, compute, overwrite=args.overwrite, inputs=inputs)
    return 0
