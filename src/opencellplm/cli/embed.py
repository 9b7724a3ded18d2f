"""``opencellplm embed``: cell embeddings of an h5ad, streamed from disk, optionally scored by clustering."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .._files import check_output_file
from ..data.output import check_result_target
from ._args import (
    ALLOW_LOW_OVERLAP_HELP,
    DEFAULT_MODEL,
    add_checkpoint,
    add_device,
    add_input_spec,
    add_overwrite,
    add_seed,
    add_soma_source,
    model_path,
    soma_settings,
    soma_source,
    spec_from,
)

logger = logging.getLogger("opencellplm")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("embed", help="write cell embeddings of an h5ad to obsm (streams X from disk)")
    p.add_argument("input", nargs="?", help="h5ad file with raw counts (or --soma / --census instead)")
    add_checkpoint(p)
    p.add_argument(
        "--out",
        required=True,
        help="h5ad file, or zarr store (a name ending .zarr), to write: the input with obsm[KEY_ADDED] added",
    )
    add_input_spec(
        p,
        "layer",
        "gene_key",
        "sample_key",
        "spatial_key",
        "max_cells",
        "partition",
        sample_key="obs column grouping the cells embedded together (default: all cells)",
        layer="layer with raw counts (default: X; raw with --soma or --census)",
        gene_key="var column with the vocabulary's gene ids (default: var_names; feature_name with --soma/--census)",
    )
    add_seed(p, help="seed of the random partition of large samples, embed's only random choice (default 0)")
    p.add_argument("--key-added", default="X_cellplm", help="obsm key to write (default: X_cellplm)")
    add_device(p)
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto (default: bf16 where the hardware has it, else fp32), fp32 (exact: equal to the official "
        "outputs), or bf16",
    )
    p.add_argument("--allow-low-overlap", action="store_true", help=ALLOW_LOW_OVERLAP_HELP)
    p.add_argument("--score-labels", help="then cluster the embedding and score it against this obs column, beside PCA")
    p.add_argument("--score-json", help="with --score-labels: also write the scores as JSON here")
    add_overwrite(p)
    add_soma_source(p, "the cells of a TileDB-SOMA experiment instead of a file")
    p.set_defaults(run=_embed)


def _embed(args: argparse.Namespace) -> int:
    from ..model import CellPLM

    from_soma = soma_source(args, files=args.input is not None)
    if not from_soma and not Path(args.input).is_file():  # before loading the model
        raise FileNotFoundError(f"input file not found: {args.input}")
    inputs = [args.input or args.soma, model_path(args.checkpoint)]
    check_result_target(args.out, overwrite=args.overwrite, inputs=inputs)  # before loading the model
    if args.score_json:
        check_output_file(args.score_json, overwrite=args.overwrite, inputs=[*inputs, args.out])
    if args.checkpoint is None:
        logger.info("no --checkpoint given: using the shipped model %s", DEFAULT_MODEL)
    model = CellPLM.from_pretrained(args.checkpoint or DEFAULT_MODEL, device=args.device)
    logger.info("model: %s (weights sha256 %s)", model.source["path"], model.source["sha256"][:12])
    spec = spec_from(args)
    settings = {"seed": args.seed, "allow_low_overlap": args.allow_low_overlap, "precision": args.precision}
    settings["distributed"] = int(os.environ.get("WORLD_SIZE", "1")) > 1  # under torchrun: the sets shared out
    if from_soma:
        model.embed_soma(
            args.soma,
            args.out,
            **soma_settings(args, spec),
            gene_key=spec.pop("gene_key") or "feature_name",
            overwrite=args.overwrite,
            key_added=args.key_added,
            **spec,
            **settings,
        )
    else:
        model.embed_file(args.input, args.out, overwrite=args.overwrite, key_added=args.key_added, **spec, **settings)
    if args.score_labels and int(os.environ.get("RANK", "0")) == 0:  # under torchrun, process 0 scores
        _score_embedding(args, layer=None if from_soma else args.layer)  # a SOMA query's counts are its X
    return 0


def _score_embedding(args: argparse.Namespace, layer: str | None) -> None:
    """Cluster the embedding just written and score it against a label column, beside PCA (and scVI)."""
    import anndata as ad

    from ..data.output import is_zarr
    from ..tasks import score_clustering

    adata = ad.read_zarr(args.out) if is_zarr(args.out) else ad.read_h5ad(args.out)
    result = score_clustering(adata, args.score_labels, embedding_key=args.key_added, layer=layer)
    sys.stdout.write(
        f"clustering against obs[{args.score_labels!r}], mean ± sd over Leiden seeds {result.settings['seeds']}:\n"
        + result.to_markdown()
        + "\n"
    )
    if args.score_json:
        from ..data.output import write_json

        write_json(args.score_json, result.to_dict(), overwrite=args.overwrite, inputs=[args.input, args.out])
