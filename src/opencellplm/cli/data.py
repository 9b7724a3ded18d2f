"""``opencellplm validate``, ``prepare-corpus`` and ``verify-corpus``: checking inputs and building corpora."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

from ._args import (
    ALLOW_LOW_OVERLAP_HELP,
    add_input_spec,
    add_overwrite,
    add_seed,
    add_soma_source,
    soma_settings,
    soma_source,
    spec_from,
)
from ._flag_words import in_flag_words


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("validate", help="check an h5ad before use; exits 1 when it cannot be used")
    p.add_argument("input", help="h5ad file")
    add_input_spec(p, "layer", "gene_key", "sample_key", "spatial_key", sample_key="obs column of sample labels")
    p.add_argument("--checkpoint", help="also match genes against this checkpoint's vocabulary")
    p.add_argument("--require-counts", action="store_true", help="treat non-integer values as an error")
    p.add_argument("--allow-low-overlap", action="store_true", help=ALLOW_LOW_OVERLAP_HELP)
    p.set_defaults(run=_validate)

    p = commands.add_parser(
        "prepare-corpus", help="turn h5ad files, or a SOMA experiment (the CELLxGENE Census), into training shards"
    )
    p.add_argument("files", nargs="*", help="h5ad files of raw counts (scRNA-seq and spatial, own gene sets)")
    p.add_argument("--out", required=True, help="corpus directory to write")
    add_input_spec(
        p,
        "layer",
        "sample_key",
        "spatial_key",
        "max_cells",
        layer="layer with raw counts (default: X; raw with --soma or --census)",
        sample_key="obs column of samples (cell sets never mix samples)",
    )
    p.add_argument("--batch-key", help="obs column of batches (default: the sample, else the file or data set)")
    p.add_argument("--shard-cells", type=int, default=100_000, help="cells per shard (default 100000)")
    soma = add_soma_source(p, "from a TileDB-SOMA experiment instead of files")
    soma.add_argument(
        "--dataset-key",
        help="obs column of data sets, each with its own genes (default: all one; dataset_id with --census)",
    )
    soma.add_argument("--gene-key", help="var column of gene ids (default feature_name)")
    add_seed(p, help="seed of the random partition of large samples, the only random choice here (default 0)")
    add_overwrite(p, "replace --out if it is not empty")
    p.set_defaults(run=_prepare_corpus)

    p = commands.add_parser(
        "verify-corpus", help="check every file of a corpus against its manifest; exits 1 when one differs"
    )
    p.add_argument("directory", help="corpus directory (see prepare-corpus)")
    p.set_defaults(run=_verify_corpus)


def _validate(args: argparse.Namespace) -> int:
    from ..data import validate
    from ..data.reader import open_h5ad

    source = Path(args.input)
    with contextlib.ExitStack() as stack:
        try:  # a file that cannot be read is a file that cannot be used: exit 1, as documented, not 2
            if source.exists() and not source.is_file():
                raise IsADirectoryError(f"{source} is not a file")
            adata = stack.enter_context(open_h5ad(source))  # the counts are read in blocks, never whole
        except (OSError, ValueError) as err:
            sys.stdout.write(f"{source}\nerror: {err}\nusable: no\n")
            return 1
        vocabulary = {}
        if args.checkpoint:
            from ..model import CellPLM

            model = CellPLM.from_pretrained(args.checkpoint)
            vocabulary = {
                "vocabulary": model.genes,
                "gene_id_rule": model.gene_id_rule,
                "gene_aliases": model.gene_aliases,
            }
        report = validate(
            adata,
            **spec_from(args),
            require_counts=args.require_counts,
            allow_low_overlap=args.allow_low_overlap,
            **vocabulary,
        )
    sys.stdout.write(f"{source}\n{in_flag_words(report.to_text(), args.cli_flags)}\n")
    return 0 if report.ok else 1


def _prepare_corpus(args: argparse.Namespace) -> int:
    from ..data.corpus import prepare_corpus

    from_soma = soma_source(args, files=bool(args.files), own=["dataset_key", "gene_key"])
    if from_soma:
        from ..data.soma import prepare_corpus_from_soma

        spec = spec_from(args)
        prepare_corpus_from_soma(
            args.soma,
            args.out,
            **soma_settings(args, spec),
            dataset_key=args.dataset_key,
            gene_key=args.gene_key or "feature_name",
            batch_key=args.batch_key,
            shard_cells=args.shard_cells,
            seed=args.seed,
            overwrite=args.overwrite,
            **spec,
        )
        return 0
    prepare_corpus(
        args.files,
        args.out,
        **spec_from(args),
        batch_key=args.batch_key,
        shard_cells=args.shard_cells,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    return 0


def _verify_corpus(args: argparse.Namespace) -> int:
    from ..data.corpus import Corpus

    lines = [str(args.directory)]
    try:
        with warnings.catch_warnings(record=True) as caught:  # reported below, with the rest
            warnings.simplefilter("always")
            corpus = Corpus(args.directory)  # a folder without a manifest is not a corpus: exit 2
    except ValueError as err:  # a corpus that does not even open
        problems = [str(err)]
    else:
        m = corpus.manifest
        lines.append(
            f"{m['n_cells']:,} cells in {m['n_sets']:,} sets, {len(corpus.shards)} shards, "
            f"{len(m['datasets'])} data sets, {m['n_genes']:,} genes"
        )
        lines.append(
            "checked: the sha256 of every file, the arrays of every shard"
            if corpus.checksums
            else "checked: the arrays of every shard (the manifest records no checksums)"
        )
        problems = corpus.verify()
    lines += [f"warning: {w.message}" for w in caught]
    lines += [f"error: {line}" for problem in problems for line in problem.splitlines()]
    lines.append("intact: no" if problems else "intact: yes")
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if problems else 0
