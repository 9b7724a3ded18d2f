"""The ``opencellplm`` command line: thin wrappers over the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ._files import check_output_file
from .config import ConfigError
from .io import CheckpointError

logger = logging.getLogger("opencellplm")

#: The model ``embed`` uses without ``--checkpoint``: it ships inside the package.
DEFAULT_MODEL = "cellplm-small"
ALLOW_LOW_OVERLAP_HELP = "go on when the genes in the vocabulary carry a negligible share of the counts"

#: Errors that are the input's or the environment's, shown as one message with exit status 2.
USER_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    FloatingPointError,
    CheckpointError,
    ConfigError,
)


def _convert_official(args: argparse.Namespace) -> int:
    from .io.official import official_paths
    from .model import CellPLM

    model = CellPLM.from_official(args.prefix)
    model.save(args.out, overwrite=args.overwrite, inputs=official_paths(args.prefix))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from .model import CellPLM

    if not Path(args.input).is_file():  # before loading the model
        raise FileNotFoundError(f"input file not found: {args.input}")
    check_output_file(args.out, overwrite=args.overwrite, inputs=[args.input])  # before loading the model
    if args.checkpoint is None:
        logger.info("no --checkpoint given: using the shipped model %s", DEFAULT_MODEL)
    model = CellPLM.from_pretrained(args.checkpoint or DEFAULT_MODEL, device=args.device)
    logger.info("model: %s (weights sha256 %s)", model.source["path"], model.source["sha256"][:12])
    model.embed_file(
        args.input,
        args.out,
        overwrite=args.overwrite,
        key_added=args.key_added,
        layer=args.layer,
        gene_key=args.gene_key,
        sample_key=args.sample_key,
        spatial_key=args.spatial_key,
        max_cells=args.max_cells,
        partition=args.partition,
        seed=args.seed,
        allow_low_overlap=args.allow_low_overlap,
        precision=args.precision,
    )
    if args.score_labels:
        _score_embedding(args)
    return 0


def _score_embedding(args: argparse.Namespace) -> None:
    """Cluster the embedding just written and score it against a label column, beside PCA (and scVI)."""
    import anndata as ad

    from .tasks import score_clustering

    adata = ad.read_h5ad(args.out)
    result = score_clustering(adata, args.score_labels, embedding_key=args.key_added, layer=args.layer)
    sys.stdout.write(
        f"clustering against obs[{args.score_labels!r}], mean ± sd over Leiden seeds {result.settings['seeds']}:\n"
        + result.to_markdown()
        + "\n"
    )
    if args.score_json:
        Path(args.score_json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")


def _validate(args: argparse.Namespace) -> int:
    from .data import validate
    from .data.reader import open_h5ad

    source = Path(args.input)
    if not source.is_file():
        raise FileNotFoundError(f"input file not found: {source}")
    vocabulary = {}
    if args.checkpoint:
        from .model import CellPLM

        model = CellPLM.from_pretrained(args.checkpoint)
        vocabulary = {"vocabulary": model.genes, "gene_id_rule": model.gene_id_rule}
    with open_h5ad(source) as adata:  # the counts are read in blocks, never whole
        report = validate(
            adata,
            layer=args.layer,
            sample_key=args.sample_key,
            spatial_key=args.spatial_key,
            gene_key=args.gene_key,
            require_counts=args.require_counts,
            allow_low_overlap=args.allow_low_overlap,
            **vocabulary,
        )
    sys.stdout.write(f"{source}\n{report.to_text()}\n")
    return 0 if report.ok else 1


def _prepare_corpus(args: argparse.Namespace) -> int:
    from .data.corpus import prepare_corpus

    prepare_corpus(
        args.files,
        args.out,
        layer=args.layer,
        sample_key=args.sample_key,
        batch_key=args.batch_key,
        spatial_key=args.spatial_key,
        max_cells=args.max_cells,
        shard_cells=args.shard_cells,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    return 0


def _verify_corpus(args: argparse.Namespace) -> int:
    from .data.corpus import Corpus

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


def _pretrain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from . import configs
    from .train import pretrain

    model, train = configs.load(args.config)
    overrides = {"steps": args.steps, "seed": args.seed, "precision": args.precision}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    pretrain(
        args.corpus, args.out, model=model, train=replace(train, **overrides), resume=args.resume, device=args.device
    )
    return 0


def _denoise(args: argparse.Namespace) -> int:
    from .data.reader import open_h5ad
    from .model import CellPLM
    from .tasks import Denoiser, DenoisingRecipe

    if not Path(args.input).is_file():  # before loading the model
        raise FileNotFoundError(f"input file not found: {args.input}")
    if args.score == (args.out is not None):
        raise ValueError("pass --out OUT.h5ad to write the denoised layer, or --score to score (one of the two)")
    if args.out is not None:
        check_output_file(args.out, overwrite=args.overwrite, inputs=[args.input])
    if args.json is not None:
        check_output_file(args.json, overwrite=args.overwrite, inputs=[args.input])
    model = CellPLM.from_pretrained(args.checkpoint or DEFAULT_MODEL, device=args.device)
    logger.info("model: %s (weights sha256 %s)", model.source["path"], model.source["sha256"][:12])
    recipe = DenoisingRecipe() if args.steps is None else DenoisingRecipe(steps=args.steps)
    denoiser = Denoiser.from_pretrained(model, recipe=recipe)
    spec = {"layer": args.layer, "gene_key": args.gene_key, "sample_key": args.sample_key, "max_cells": args.max_cells}
    if args.out is not None:
        denoiser.denoise_file(
            args.input,
            args.out,
            layer_added=args.layer_added,
            overwrite=args.overwrite,
            fine_tune=args.fine_tune,
            device=args.device,
            **spec,
        )
        return 0
    baselines = [name for name in args.baselines.split(",") if name]
    with open_h5ad(args.input) as adata:  # count matrices stay on disk; score reads the model's genes
        result = denoiser.score(
            adata,
            protocol=args.protocol,
            fraction=args.fraction,
            seed=args.seed,
            fine_tune=args.fine_tune,
            baselines=baselines,
            device=args.device,
            **spec,
        )
    table = result.to_frame().to_string(float_format=lambda v: f"{v:.4g}")
    skipped = "".join(f"skipped {name}: {reason}\n" for name, reason in result.skipped.items())
    header = f"{args.input}: denoising, protocol {result.protocol}, fraction {result.fraction}, seed {result.seed}"
    sys.stdout.write(f"{header}\n{table}\n{skipped}")
    if args.json is not None:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return 0


def _impute(args: argparse.Namespace) -> int:
    import anndata as ad

    from .data.output import write_new_h5ad
    from .model import CellPLM
    from .tasks.imputation import ImputationRecipe, SpatialImputer

    for path in (args.spatial, args.reference):
        if not Path(path).is_file():  # before loading the model
            raise FileNotFoundError(f"input file not found: {path}")
    check_output_file(args.out, overwrite=args.overwrite, inputs=[args.spatial, args.reference])
    model = CellPLM.from_pretrained(args.checkpoint or DEFAULT_MODEL, device=args.device)
    logger.info("model: %s (weights sha256 %s)", model.source["path"], model.source["sha256"][:12])
    changes = {"positional": not args.no_positional, "max_cells": args.max_cells, "seed": args.seed}
    if args.steps is not None:
        changes["steps"] = args.steps
    imputer = SpatialImputer.from_pretrained(model, recipe=ImputationRecipe(**changes))
    spatial, reference = ad.read_h5ad(args.spatial), ad.read_h5ad(args.reference)
    genes = None
    if args.genes:
        genes = [g for item in args.genes for g in item.split(",") if g]

    def compute() -> ad.AnnData:
        imputer.fit(
            spatial,
            reference,
            layer=args.layer,
            sample_key=args.sample_key,
            spatial_key=args.spatial_key,
            reference_layer=args.reference_layer,
            reference_sample_key=args.reference_sample_key,
            extend_vocabulary=args.extend_vocabulary,
            device=args.device,
        )
        return imputer.predict(spatial, genes, layer_added=args.layer_added)

    write_new_h5ad(args.out, compute, overwrite=args.overwrite, inputs=[args.spatial, args.reference])
    return 0


def _info(args: argparse.Namespace) -> int:
    from .model import CellPLM

    model = CellPLM.from_pretrained(args.checkpoint)
    report = {
        "model": repr(model),
        "genes": {"n": len(model.genes), "first": model.genes[:3]},
        "config": model.config.to_dict(),
        "meta": model.meta,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


def _annotate(args: argparse.Namespace) -> int:
    import anndata as ad

    from .data.output import write_new_file, write_new_h5ad
    from .tasks import AnnotationRecipe, CellTypeAnnotator

    source = Path(args.input)
    if not source.is_file():
        raise FileNotFoundError(f"input file not found: {source}")
    spec = {"layer": args.layer, "gene_key": args.gene_key, "sample_key": args.sample_key}
    if args.action in ("fit", "score") and args.labels_key is None:
        raise ValueError(f"annotate {args.action} needs --labels-key, the obs column of cell type labels")
    if args.action == "fit":
        if args.out is None:
            raise ValueError("annotate fit needs --out, the folder to save the fitted annotator in")
        from ._files import check_output_directory
        from .tasks.annotation import annotator_problems

        check_output_directory(args.out, overwrite=args.overwrite, recognise=annotator_problems, kind="annotator")
        adata = ad.read_h5ad(source)
        make = CellTypeAnnotator.from_scratch if args.scratch else CellTypeAnnotator.from_pretrained
        recipe = AnnotationRecipe(
            **{k: v for k, v in {"steps": args.steps, "seed": args.seed}.items() if v is not None}
        )
        annotator = make(args.checkpoint or DEFAULT_MODEL, recipe=recipe)
        train_cells = None if args.test_key is None else ~_flag(adata, args.test_key)
        annotator.fit(adata, args.labels_key, mode=args.mode, train_cells=train_cells, **spec)
        annotator.save(args.out, overwrite=args.overwrite)
        return 0
    if args.annotator is None:
        raise ValueError(f"annotate {args.action} needs --annotator, a folder written by annotate fit")
    annotator = CellTypeAnnotator.load(args.annotator)
    if args.action == "predict":
        if args.out is None:
            raise ValueError("annotate predict needs --out, the h5ad file to write")

        def annotated() -> ad.AnnData:
            adata = ad.read_h5ad(source)
            annotator.predict(adata, key_added=args.key_added)
            return adata

        write_new_h5ad(args.out, annotated, overwrite=args.overwrite, inputs=[source])
        logger.info("wrote %s with obs[%r]", args.out, args.key_added)
        return 0
    if args.json:  # checked before the work
        check_output_file(args.json, overwrite=args.overwrite, inputs=[source])
    adata = ad.read_h5ad(source)
    test_cells = None if args.test_key is None else _flag(adata, args.test_key)
    if args.reference is not None:
        reference = ad.read_h5ad(args.reference)
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
    )
    sys.stdout.write(scores.to_frame().round(4).to_string() + "\n")
    if args.json:
        text = json.dumps(scores.to_dict(), indent=2, default=str) + "\n"
        write_new_file(args.json, lambda path: path.write_text(text), overwrite=args.overwrite, inputs=[source])
    return 0


def _perturb(args: argparse.Namespace) -> int:
    from .data.output import write_new_file
    from .tasks import PerturbationPredictor, PerturbationRecipe

    if args.action == "predict":
        return _perturb_predict(args)
    source = Path(args.input)
    if not source.is_file():  # before loading the model
        raise FileNotFoundError(f"input file not found: {source}")
    recipe = PerturbationRecipe(**{k: v for k, v in {"steps": args.steps}.items() if v is not None})
    options = {
        "perturbation_key": args.perturbation_key,
        "control": args.control,
        "default_direction": args.default_direction,
        "extend_vocabulary": args.extend_vocabulary,
        "device": args.device,
        "layer": args.layer,
        "gene_key": args.gene_key,
        "sample_key": args.sample_key,
    }
    if args.action == "fit":
        from ._files import check_output_directory
        from .tasks.perturbation import predictor_problems

        check_output_directory(
            args.out, overwrite=args.overwrite, recognise=predictor_problems, kind="perturbation predictor"
        )
    else:
        check_output_file(args.out, overwrite=args.overwrite, inputs=[source])
    import anndata as ad

    adata = ad.read_h5ad(source)
    make = PerturbationPredictor.from_scratch if args.scratch else PerturbationPredictor.from_pretrained
    predictor = make(args.checkpoint or DEFAULT_MODEL, recipe=recipe, device=args.device or "cpu")
    if args.action == "fit":
        predictor.fit(adata, **options).save(args.out, overwrite=args.overwrite)
        return 0
    result = predictor.score(adata, seeds=args.seeds, from_scratch=args.from_scratch, **options)
    label = "simulated" if result.simulated else "real"
    table = result.to_frame().to_string(float_format=lambda v: f"{v:.4g}")
    header = f"{args.input}: perturbation prediction ({label} data), seeds {result.seeds}, mean (and *_std) over seeds"
    sys.stdout.write(f"{header}\n{table}\n")
    text = json.dumps(result.to_dict(), indent=2, default=str) + "\n"
    write_new_file(args.out, lambda path: path.write_text(text), overwrite=args.overwrite, inputs=[source])
    return 0


def _perturb_predict(args: argparse.Namespace) -> int:
    from .data.output import write_new_file
    from .tasks import PerturbationPredictor

    if (args.labels is None) == (args.labels_file is None):
        raise ValueError("perturb predict needs --labels A B+C ... or --labels-file FILE (one of the two)")
    labels = args.labels
    if args.labels_file is not None:
        if not Path(args.labels_file).is_file():
            raise FileNotFoundError(f"labels file not found: {args.labels_file}")
        labels = [line.strip() for line in Path(args.labels_file).read_text().splitlines() if line.strip()]
    if not labels:
        raise ValueError("no perturbation labels given")
    check_output_file(args.out, overwrite=args.overwrite, inputs=[p for p in [args.labels_file] if p])
    if Path(args.input).resolve() in Path(args.out).resolve().parents:
        raise ValueError(f"the output {args.out} is inside the predictor folder {args.input}; write it elsewhere")
    predictor = PerturbationPredictor.load(args.input, device=args.device or "cpu")
    prediction = predictor.predict(labels)
    inputs = [p for p in [args.labels_file] if p]
    write_new_file(args.out, prediction.to_csv, overwrite=args.overwrite, inputs=inputs)
    logger.info("wrote the predicted mean profiles of %d perturbations to %s", len(labels), args.out)
    return 0


def _flag(adata, key: str):
    """A boolean obs column as a mask (refused unless it holds booleans)."""
    if key not in adata.obs:
        raise KeyError(f"obs column {key!r} not found; adata.obs has {list(adata.obs.columns)}")
    values = adata.obs[key]
    if values.dtype != bool:
        raise ValueError(f"obs column {key!r} must hold True/False (the test cells), not {values.dtype}")
    return values.to_numpy()


def _demo(args: argparse.Namespace) -> int:
    from .demo import RESULTS_FILE, run_demo, verdict_lines

    report = run_demo(args.out, overwrite=args.overwrite, seed=args.seed)
    results = json.loads((report.parent / RESULTS_FILE).read_text())
    verdict = verdict_lines(results)
    truth = results.get("data", {}).get("ground_truth")
    lines = [f"ground truth: {truth}"] if truth else []
    lines += [f"{kind}: {line}" for kind in ("wins", "losses", "ties") for line in verdict[kind]]
    sys.stdout.write("".join(f"{line}\n" for line in lines) + f"report: {report}\n")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from .benchmark import run_benchmark
    from .benchmark.report import check_readme, update_readme, write_report
    from .benchmark.run import unit_outcomes

    if args.readme:
        check_readme(args.readme)  # a wrong --readme fails now, not after the benchmark
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opencellplm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "convert-official",
        help="convert an official CellPLM checkpoint (PREFIX.config.json + PREFIX.best.ckpt) to our format",
    )
    p.add_argument("prefix", help="path prefix of the official files, e.g. ckpt/20230926_85M")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_convert_official)

    p = commands.add_parser("embed", help="write cell embeddings of an h5ad to obsm (streams X from disk)")
    p.add_argument("input", help="h5ad file with raw counts")
    p.add_argument(
        "--checkpoint",
        help=f"checkpoint directory (see convert-official) or shipped model name (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--out", required=True, help="h5ad file to write (the input with obsm[KEY_ADDED] added)")
    p.add_argument("--layer", help="layer with raw counts (default: X)")
    p.add_argument("--gene-key", help="var column with the vocabulary's gene ids (default: var_names)")
    p.add_argument("--sample-key", help="obs column grouping the cells embedded together (default: all cells)")
    p.add_argument("--spatial-key", default="spatial", help="obsm key of 2-D/3-D coordinates (default: spatial)")
    p.add_argument(
        "--max-cells", type=int, default=4000, help="largest cell set; larger samples are split (default 4000)"
    )
    p.add_argument(
        "--partition",
        default="auto",
        choices=["auto", "tiles", "random", "consecutive"],
        help="how to split large samples (default auto: spatial tiles with coordinates, else seeded random)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random partition (default 0)")
    p.add_argument("--key-added", default="X_cellplm", help="obsm key to write (default: X_cellplm)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
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
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_embed)

    p = commands.add_parser("validate", help="check an h5ad before use; exits 1 when it cannot be used")
    p.add_argument("input", help="h5ad file")
    p.add_argument("--layer", help="layer with raw counts (default: X)")
    p.add_argument("--sample-key", help="obs column of sample labels")
    p.add_argument("--spatial-key", default="spatial", help="obsm key of coordinates (default: spatial, optional)")
    p.add_argument("--gene-key", help="var column with gene ids (default: var_names)")
    p.add_argument("--checkpoint", help="also match genes against this checkpoint's vocabulary")
    p.add_argument("--require-counts", action="store_true", help="treat non-integer values as an error")
    p.add_argument("--allow-low-overlap", action="store_true", help=ALLOW_LOW_OVERLAP_HELP)
    p.set_defaults(run=_validate)

    p = commands.add_parser("prepare-corpus", help="turn h5ad files into training shards and a manifest")
    p.add_argument("files", nargs="+", help="h5ad files of raw counts (scRNA-seq and spatial, own gene sets)")
    p.add_argument("--out", required=True, help="corpus directory to write")
    p.add_argument("--layer", help="layer with raw counts (default: X)")
    p.add_argument("--sample-key", help="obs column of samples (cell sets never mix samples)")
    p.add_argument("--batch-key", help="obs column of batches (default: the sample, else the file)")
    p.add_argument("--spatial-key", default="spatial", help="obsm key of coordinates (default: spatial, optional)")
    p.add_argument("--max-cells", type=int, default=4000, help="largest cell set (default 4000)")
    p.add_argument("--shard-cells", type=int, default=100_000, help="cells per shard (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random partition (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")
    p.set_defaults(run=_prepare_corpus)

    p = commands.add_parser(
        "verify-corpus", help="check every file of a corpus against its manifest; exits 1 when one differs"
    )
    p.add_argument("directory", help="corpus directory (see prepare-corpus)")
    p.set_defaults(run=_verify_corpus)

    p = commands.add_parser(
        "pretrain", help="pretrain a model on a corpus (one process, or many under torchrun -m opencellplm)"
    )
    p.add_argument("--corpus", required=True, help="corpus directory (see prepare-corpus)")
    p.add_argument("--config", required=True, help="a named configuration (tiny, small, cellplm-85m) or a JSON file")
    p.add_argument("--out", required=True, help="run directory: state.pt, metrics.jsonl, summary.json, model/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--steps", type=int, help="override the configuration's number of steps")
    p.add_argument("--seed", type=int, help="override the configuration's seed")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="override the configuration's precision")
    p.add_argument("--device", help="torch device (default: this process's GPU if any, else cpu)")
    p.set_defaults(run=_pretrain)

    p = commands.add_parser("annotate", help="cell type annotation: fit an annotator, predict labels, score")
    p.add_argument("action", choices=["fit", "predict", "score"])
    p.add_argument("input", help="h5ad file with raw counts")
    p.add_argument("--labels-key", help="obs column of cell type labels (fit, score)")
    p.add_argument("--out", help="fit: annotator folder to write; predict: h5ad file to write")
    p.add_argument("--annotator", help="annotator folder written by annotate fit (predict, score)")
    p.add_argument("--checkpoint", help=f"model to fine-tune (fit; default {DEFAULT_MODEL})")
    p.add_argument("--scratch", action="store_true", help="fit: same architecture, weights trained from scratch")
    p.add_argument("--mode", default="inductive", choices=["inductive", "transductive"], help="fit (default inductive)")
    p.add_argument("--test-key", help="boolean obs column marking test cells (left out of fit; scored by score)")
    p.add_argument("--reference", help="score: labelled h5ad the baselines learn from (default: no baselines)")
    p.add_argument(
        "--baselines",
        nargs="*",
        default=["celltypist_style", "l1_logistic_cv", "knn_on_pca"],
        help="score: baselines to run beside CellPLM",
    )
    p.add_argument("--steps", type=int, help="fit: optimizer steps at most (default 300)")
    p.add_argument("--seed", type=int, help="fit: seed (default 0)")
    p.add_argument("--layer", help="layer with raw counts (default: X)")
    p.add_argument("--gene-key", help="var column with gene ids (default: var_names)")
    p.add_argument("--sample-key", help="obs column grouping cells into sets")
    p.add_argument("--key-added", default="cellplm_label", help="predict: obs key to write (default cellplm_label)")
    p.add_argument("--json", help="score: also write the scores as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace --out (or --json) if it exists")
    p.set_defaults(run=_annotate)

    p = commands.add_parser(
        "denoise", help="write CellPLM-denoised counts of an h5ad to a layer, or score denoising (--score)"
    )
    p.add_argument("input", help="h5ad file with raw counts")
    p.add_argument("--out", help="h5ad file to write (the input with layers[LAYER_ADDED] added)")
    p.add_argument(
        "--checkpoint",
        help=f"checkpoint directory (see convert-official) or shipped model name (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--fine-tune", action="store_true", help="fine-tune on the input first (with --score: add the row)")
    p.add_argument("--steps", type=int, help="fine-tuning steps at most (default: DenoisingRecipe's, 500)")
    p.add_argument("--layer", help="layer with raw counts (default: X)")
    p.add_argument("--gene-key", help="var column with the vocabulary's gene ids (default: var_names)")
    p.add_argument("--sample-key", help="obs column grouping the cells denoised together (default: all cells)")
    p.add_argument("--max-cells", type=int, default=4000, help="largest cell set (default 4000)")
    p.add_argument("--layer-added", default="cellplm_denoised", help="layer to write (default: cellplm_denoised)")
    p.add_argument("--score", action="store_true", help="score CellPLM and the baselines instead; prints a table")
    p.add_argument("--protocol", default="hidden", choices=["hidden", "mcv"], help="--score protocol (default hidden)")
    p.add_argument("--fraction", type=float, default=0.1, help="--score: share hidden or held out (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="--score: seed of the corruption (default 0)")
    p.add_argument(
        "--baselines",
        default="unchanged,knn_smoothing,magic,scvi",
        help="--score: comma-separated baselines (default: all four; magic and scvi need their extras)",
    )
    p.add_argument("--json", help="--score: also write the full result to this JSON file")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace --out (or --json) if it exists")
    p.set_defaults(run=_denoise)

    p = commands.add_parser(
        "impute",
        help="impute genes a spatial panel did not measure, fine-tuning with an scRNA-seq reference; writes a new h5ad",
    )
    p.add_argument("spatial", help="h5ad file of the spatial panel (counts; coordinates in obsm)")
    p.add_argument("--reference", required=True, help="h5ad file of the scRNA-seq reference (counts)")
    p.add_argument(
        "--genes",
        nargs="+",
        help="genes to impute, space- or comma-separated (default: every reference gene not in the panel)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="h5ad file to write: the panel genes then the imputed ones, imputed values in layers[LAYER_ADDED]",
    )
    p.add_argument(
        "--checkpoint",
        help=f"checkpoint directory (see convert-official) or shipped model name (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--steps", type=int, help="fine-tuning steps at most (default: ImputationRecipe's, 300)")
    p.add_argument("--no-positional", action="store_true", help="do not encode the coordinates (the official setting)")
    p.add_argument("--max-cells", type=int, default=1000, help="largest cell set (spatial tiles) (default 1000)")
    p.add_argument("--layer", help="layer of the spatial file with counts (default: X)")
    p.add_argument("--sample-key", help="obs column of the spatial samples / fields of view")
    p.add_argument("--spatial-key", default="spatial", help="obsm key of the coordinates (default: spatial)")
    p.add_argument("--reference-layer", help="layer of the reference with counts (default: X)")
    p.add_argument("--reference-sample-key", help="obs column of the reference's samples")
    p.add_argument(
        "--extend-vocabulary",
        action="store_true",
        help="add genes missing from the model's vocabulary with fresh rows (e.g. another species)",
    )
    p.add_argument("--layer-added", default="cellplm_imputed", help="layer to write (default: cellplm_imputed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning (default 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_impute)

    p = commands.add_parser(
        "perturb",
        help="perturbation prediction: fit a predictor on Perturb-seq counts, predict labels, score vs baselines",
    )
    p.add_argument("action", choices=["fit", "predict", "score"])
    p.add_argument("input", help="fit, score: h5ad with raw counts and perturbation labels; predict: predictor folder")
    p.add_argument("--out", required=True, help="fit: predictor folder; predict: CSV of profiles; score: JSON result")
    p.add_argument("--labels", nargs="+", help='predict: perturbation labels, e.g. "A+B" "C:up"')
    p.add_argument("--labels-file", help="predict: file with one perturbation label per line")
    p.add_argument(
        "--checkpoint", help=f"model to fine-tune (fit, score; shipped name or folder; default {DEFAULT_MODEL})"
    )
    p.add_argument("--scratch", action="store_true", help="fit, score: same architecture with untrained weights")
    p.add_argument("--from-scratch", action="store_true", help="score: add the row of CellPLM trained from scratch")
    p.add_argument("--perturbation-key", default="perturbation", help="obs column of labels (default perturbation)")
    p.add_argument("--control", default="ctrl", help="label of control cells (default ctrl)")
    p.add_argument(
        "--default-direction", default="down", choices=["down", "up"], help="direction of an unsuffixed gene"
    )
    p.add_argument("--extend-vocabulary", action="store_true", help="add perturbed genes outside the vocabulary")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="score: one split per seed (default 0 1 2)")
    p.add_argument("--steps", type=int, help="fine-tuning steps at most (default: PerturbationRecipe's)")
    p.add_argument("--layer", help="layer with raw counts (default: X)")
    p.add_argument("--gene-key", help="var column with the vocabulary's gene ids (default: var_names)")
    p.add_argument("--sample-key", help="obs column grouping control cells into sets (default: all one sample)")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out (fit: only a predictor folder this package wrote)"
    )
    p.set_defaults(run=_perturb)

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
    p.add_argument("--seeds", type=int, help="number of seeds, 0..N-1 (default: 1 with --quick, else 3)")
    p.add_argument("--checkpoint", default="cellplm-small", help="shipped model name or checkpoint directory")
    p.add_argument("--quick", action="store_true", help="CI-sized run: one seed, small subsets, few steps")
    p.add_argument("--readme", help="also write the results tables into this README, between its markers")
    p.set_defaults(run=_benchmark)

    p = commands.add_parser("info", help="describe a checkpoint directory")
    p.add_argument("checkpoint")
    p.set_defaults(run=_info)

    p = commands.add_parser(
        "demo", help="the shipped model on PBMC 68k reduced (ships with scanpy): clustering, annotation, UMAPs, report"
    )
    p.add_argument("--out", default="opencellplm-demo", help="folder to write (default: opencellplm-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if an earlier demo wrote it")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.set_defaults(run=_demo)
    return parser


def _setup_logging(level: int) -> None:
    """Show this package's log records on stderr (other loggers keep their configuration)."""
    logger.setLevel(level)
    if not any(getattr(h, "opencellplm_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handler.opencellplm_cli = True
        logger.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 for unusable input)."""
    args = build_parser().parse_args(argv)
    _setup_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.run(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        logger.error("%s", message, exc_info=args.verbose)  # the traceback with -v
        return 2


if __name__ == "__main__":
    sys.exit(main())
