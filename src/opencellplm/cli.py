"""The ``opencellplm`` command line: thin wrappers over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

from . import __version__
from ._files import CannotWriteError, check_output_file, refuse_inputs
from ._threads import default_threads, set_threads
from .config import ConfigError
from .io import CheckpointError

logger = logging.getLogger("opencellplm")

#: The model ``embed`` uses without ``--checkpoint``: it ships inside the package.
DEFAULT_MODEL = "cellplm-small"
ALLOW_LOW_OVERLAP_HELP = "go on when the genes in the vocabulary carry a negligible share of the counts"
#: Why --steps defaults differ between commands: each is that task's recipe default (checked by a test).
STEPS_HELP = (
    "fine-tuning steps at most (default {steps}, {recipe}'s: each task's recipe sets its own, with its own "
    "learning rate and early stopping, which may end a run sooner)"
)
#: Why --max-cells is 4000 in embed, denoise and prepare-corpus (impute says why its default is smaller).
MAX_CELLS_HELP = "largest cell set; larger samples are split (default 4000: the official pretraining cap)"

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
    CannotWriteError,
)


def _model_path(checkpoint: str | None) -> Path:
    """What ``--checkpoint`` names (a folder, or a shipped model's folder): an input no output may touch."""
    from . import pretrained

    name = checkpoint or DEFAULT_MODEL
    if not Path(name).exists() and name in pretrained.available():
        return pretrained.path(name)
    return Path(name)


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
    inputs = [args.input, _model_path(args.checkpoint)]
    check_output_file(args.out, overwrite=args.overwrite, inputs=inputs)  # before loading the model
    if args.score_json:
        check_output_file(args.score_json, overwrite=args.overwrite, inputs=[*inputs, args.out])
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
        from .data.output import write_json

        write_json(args.score_json, result.to_dict(), overwrite=args.overwrite, inputs=[args.input, args.out])


def _validate(args: argparse.Namespace) -> int:
    from .data import validate
    from .data.reader import open_h5ad

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
            from .model import CellPLM

            model = CellPLM.from_pretrained(args.checkpoint)
            vocabulary = {
                "vocabulary": model.genes,
                "gene_id_rule": model.gene_id_rule,
                "gene_aliases": model.gene_aliases,
            }
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
    sys.stdout.write(f"{source}\n{in_flag_words(report.to_text(), args.cli_flags)}\n")
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
    from .train.pretrain import decoder_bias_from_corpus, recorded_init, recorded_settings

    overrides = {"steps": args.steps, "seed": args.seed, "precision": args.precision}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.resume:  # the run's recorded settings: none need repeating, and none may change
        model, train = recorded_settings(args.out)
        if args.config is not None:
            model = configs.load(args.config)[0]  # refused by the trainer unless it is the run's model
        changed = [
            f"--{k} {v} (the run's: {getattr(train, k)})" for k, v in overrides.items() if getattr(train, k) != v
        ]
        if changed:
            raise ConfigError(
                f"cannot resume {args.out} with {', '.join(changed)}: a resumed run keeps the settings it started "
                "with; drop the option"
            )
    elif args.config is None:
        raise ValueError("pretrain needs --config (a named configuration or a JSON file), or --resume")
    else:
        model, train = configs.load(args.config)
        train = replace(train, **overrides)
    bias_from_corpus = args.init_decoder_bias != "random"
    if args.resume:  # the start the run had (recorded by its fingerprint)
        started = "corpus" if "decoder_bias_sha256" in recorded_init(args.out) else "random"
        if args.init_decoder_bias not in (None, started):
            raise ConfigError(
                f"cannot resume {args.out} with --init-decoder-bias {args.init_decoder_bias}: the run started with "
                f"{started}; drop the option"
            )
        bias_from_corpus = started == "corpus"
    bias = decoder_bias_from_corpus(args.corpus, seed=train.seed) if bias_from_corpus else None
    pretrain(args.corpus, args.out, model=model, train=train, resume=args.resume, device=args.device, decoder_bias=bias)
    return 0


#: The CellPLM rows of ``denoise --score`` that run only when asked for, and the flag that asks.
_SCORE_ROW_FLAGS = {"cellplm_fine_tuned": "--fine-tune", "cellplm_from_scratch": "--from-scratch"}
#: ``denoise``'s options that only ``--score`` uses, with their defaults there.
_SCORE_OPTIONS = {
    "protocol": "hidden",
    "fraction": 0.1,
    "seed": 0,
    "baselines": "unchanged,knn_smoothing,magic,scvi",
    "json": None,
}


def _denoise(args: argparse.Namespace) -> int:
    from .data.reader import open_h5ad
    from .model import CellPLM
    from .tasks import Denoiser, DenoisingRecipe

    if not Path(args.input).is_file():  # before loading the model
        raise FileNotFoundError(f"input file not found: {args.input}")
    if args.score == (args.out is not None):
        raise ValueError("pass --out OUT.h5ad to write the denoised layer, or --score to score (one of the two)")
    inputs = [args.input, _model_path(args.checkpoint)]
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
        check_output_file(args.out, overwrite=args.overwrite, inputs=inputs)
    if args.json is not None:
        check_output_file(args.json, overwrite=args.overwrite, inputs=inputs)
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
            gene_levels=args.gene_levels,
            overwrite=args.overwrite,
            fine_tune=args.fine_tune,
            work=args.work,
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
        from .data.output import write_json

        write_json(args.json, result.to_dict(), overwrite=args.overwrite, inputs=inputs)
    return 0


def _impute(args: argparse.Namespace) -> int:
    import anndata as ad

    from .data.output import write_new_h5ad
    from .data.reader import read_h5ad
    from .model import CellPLM
    from .tasks.imputation import ImputationRecipe, SpatialImputer

    for path in (args.spatial, args.reference):
        if not Path(path).is_file():  # before loading the model
            raise FileNotFoundError(f"input file not found: {path}")
    if Path(args.spatial).samefile(args.reference):
        raise ValueError(
            f"--reference names the spatial input itself ({args.reference}); impute needs a separate scRNA-seq "
            "reference that measures the genes the spatial panel did not"
        )
    inputs = [args.spatial, args.reference, _model_path(args.checkpoint)]
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

    from .data.output import check_result_key, write_json, write_new_h5ad
    from .data.reader import read_h5ad
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

        check_output_directory(
            args.out,
            overwrite=args.overwrite,
            recognise=annotator_problems,
            kind="annotator",
            inputs=[source, _model_path(args.checkpoint)],
        )
        adata = read_h5ad(source)
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
    test_cells = None if args.test_key is None else _flag(adata, args.test_key)
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
    )
    sys.stdout.write(scores.to_frame().round(4).to_string() + "\n")
    if args.json:
        write_json(args.json, scores.to_dict(), overwrite=args.overwrite, inputs=inputs)
    return 0


def _perturb(args: argparse.Namespace) -> int:
    from .data.output import write_json
    from .data.reader import read_h5ad
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
    inputs = [source, _model_path(args.checkpoint)]
    if args.action == "fit":
        from ._files import check_output_directory
        from .tasks.perturbation import predictor_problems

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
    write_json(args.out, result.to_dict(), overwrite=args.overwrite, inputs=inputs)
    return 0


def _perturb_predict(args: argparse.Namespace) -> int:
    from ._files import attribute_mark_problems, mark_by_attribute
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
    refuse_inputs(args.out, [_model_path(args.checkpoint)], kind="benchmark folder")
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, subcommand=False)
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
    p.add_argument("--max-cells", type=int, default=4000, help=MAX_CELLS_HELP)
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
    p.add_argument("--max-cells", type=int, default=4000, help=MAX_CELLS_HELP)
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
    p.add_argument(
        "--config",
        help="a named configuration (tiny, small, cellplm-85m) or a JSON file (required, except with --resume)",
    )
    p.add_argument("--out", required=True, help="run directory: state.pt, metrics.jsonl, summary.json, model/")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with the settings it started with",
    )
    p.add_argument("--steps", type=int, help="override the configuration's number of steps")
    p.add_argument("--seed", type=int, help="override the configuration's seed")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="override the configuration's precision")
    p.add_argument("--device", help="torch device (default: this process's GPU if any, else cpu)")
    p.add_argument(
        "--init-decoder-bias",
        choices=["corpus", "random"],
        help="start the NB decoder's output bias at the log of the corpus's mean gene shares ('corpus', the default "
        "of a new run) or at random (the official initialisation); a resumed run keeps its own",
    )
    p.set_defaults(run=_pretrain)

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
    p.add_argument("--scratch", action="store_true", help="same architecture, weights trained from scratch")
    p.add_argument("--mode", default="inductive", choices=["inductive", "transductive"], help="(default inductive)")
    p.add_argument("--test-key", help="boolean obs column marking test cells, left out of the fit")
    p.add_argument("--steps", type=int, help=STEPS_HELP.format(steps=300, recipe="AnnotationRecipe"))
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--layer", help="layer with raw counts (default: X); saved with the annotator")
    p.add_argument("--gene-key", help="var column with gene ids (default: var_names); saved with the annotator")
    p.add_argument("--sample-key", help="obs column grouping cells into sets; saved with the annotator")
    p.add_argument("--overwrite", action="store_true", help="replace --out (only an annotator folder)")
    p.set_defaults(run=_annotate)
    # predict and score read the input with the layer, gene key and sample key saved by fit
    saved_spec = {"layer": None, "gene_key": None, "sample_key": None}
    p = actions.add_parser("predict", help="label cells with a saved annotator; writes a new h5ad")
    p.add_argument("input", help="h5ad file with raw counts (read as the annotator's fit read its input)")
    p.add_argument("--annotator", help="annotator folder written by annotate fit (required)")
    p.add_argument("--out", help="h5ad file to write (required)")
    p.add_argument("--key-added", default="cellplm_label", help="obs key to write (default cellplm_label)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_annotate, **saved_spec)
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
        default=["celltypist_style", "l1_logistic_cv", "knn_on_pca"],
        help="baselines to run beside CellPLM",
    )
    p.add_argument("--json", help="also write the scores as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists")
    p.set_defaults(run=_annotate, **saved_spec)

    p = commands.add_parser(
        "denoise", help="write CellPLM-denoised counts of an h5ad to a layer, or score denoising (--score)"
    )
    p.add_argument("input", help="h5ad file with raw counts")
    p.add_argument(
        "--out",
        help="h5ad file to write: the input with layers[LAYER_ADDED] added, dense (4 bytes per cell and gene: "
        "every gene the model knows gets a non-zero value) unless most entries stay zero",
    )
    p.add_argument(
        "--checkpoint",
        help=f"checkpoint directory (see convert-official) or shipped model name (default: {DEFAULT_MODEL})",
    )
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
    p.add_argument("--layer", help="layer with raw counts (default: X)")
    p.add_argument("--gene-key", help="var column with the vocabulary's gene ids (default: var_names)")
    p.add_argument("--sample-key", help="obs column grouping the cells denoised together (default: all cells)")
    p.add_argument("--max-cells", type=int, default=4000, help=MAX_CELLS_HELP)
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
    p.add_argument("--seed", type=int, help="--score: seed of the corruption (default 0)")
    p.add_argument(
        "--baselines",
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
        action="extend",  # a repeated --genes adds to the list instead of replacing it
        help="genes to impute, space- or comma-separated, and the flag may be repeated (default: every reference "
        "gene not in the panel)",
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
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning (default 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_impute)

    perturb = commands.add_parser(
        "perturb",
        help="perturbation prediction: fit a predictor on Perturb-seq counts, predict labels, score vs baselines",
        description="Perturbation prediction; `opencellplm perturb ACTION -h` lists an action's options.",
    )
    actions = perturb.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = actions.add_parser("fit", help="fine-tune a perturbation predictor on Perturb-seq counts and save it")
    fit.add_argument("input", help="h5ad file with raw counts and perturbation labels")
    fit.add_argument("--out", required=True, help="predictor folder to write")
    score = actions.add_parser("score", help="score CellPLM beside the baselines on held-out perturbations")
    score.add_argument("input", help="h5ad file with raw counts and perturbation labels")
    score.add_argument("--out", required=True, help="JSON file of the result to write")
    score.add_argument("--from-scratch", action="store_true", help="add the row of CellPLM trained from scratch")
    score.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one split per seed (default 0 1 2)")
    for p in (fit, score):
        p.add_argument("--checkpoint", help=f"model to fine-tune (shipped name or folder; default {DEFAULT_MODEL})")
        p.add_argument("--scratch", action="store_true", help="same architecture with untrained weights")
        p.add_argument("--perturbation-key", default="perturbation", help="obs column of labels (default perturbation)")
        p.add_argument("--control", default="ctrl", help="label of control cells (default ctrl)")
        p.add_argument(
            "--default-direction", default="down", choices=["down", "up"], help="direction of an unsuffixed gene"
        )
        p.add_argument("--extend-vocabulary", action="store_true", help="add perturbed genes outside the vocabulary")
        p.add_argument("--steps", type=int, help=STEPS_HELP.format(steps=300, recipe="PerturbationRecipe"))
        p.add_argument("--layer", help="layer with raw counts (default: X)")
        p.add_argument("--gene-key", help="var column with the vocabulary's gene ids (default: var_names)")
        p.add_argument("--sample-key", help="obs column grouping control cells into sets (default: all one sample)")
        p.add_argument("--device", help="torch device (default cpu)")
        p.set_defaults(run=_perturb)
    fit.add_argument("--overwrite", action="store_true", help="replace --out (only a predictor folder)")
    score.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p = actions.add_parser("predict", help="predict the mean profiles of perturbations with a saved predictor")
    p.add_argument("input", help="predictor folder written by perturb fit")
    p.add_argument("--out", required=True, help="CSV file of the predicted profiles to write")
    p.add_argument("--labels", nargs="+", help='perturbation labels, e.g. "A+B" "C:up"')
    p.add_argument("--labels-file", help="file with one perturbation label per line")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
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
    p.add_argument(
        "--n-seeds",
        dest="seeds",
        type=int,
        metavar="N",
        help="number of seeds, 0..N-1 (default: 1 with --quick, else 3)",
    )
    renamed = "a count; perturb score's --seeds lists the seeds themselves"
    p.add_argument(
        "--seeds", dest="seeds", type=int, action=_Renamed, new="--n-seeds", why=renamed, help=argparse.SUPPRESS
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
    p.add_argument("--overwrite", action="store_true", help="replace --out if an earlier demo wrote it")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.set_defaults(run=_demo)
    for command in _leaf_parsers(parser):  # the global options also work after the subcommand
        _add_global_options(command, subcommand=True)
        # the command's flags, in whose words its messages are shown
        command.set_defaults(cli_flags=frozenset(o for action in command._actions for o in action.option_strings))
    return parser


class _Renamed(argparse.Action):
    """An option's old spelling: still works, with a warning that names the new one."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, why: str, **kwargs):
        self.new, self.why = new, why
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        notes = getattr(namespace, "deprecations", [])
        namespace.deprecations = [*notes, f"{option_string} is deprecated: use {self.new} ({self.why})"]


def _add_global_options(parser: argparse.ArgumentParser, *, subcommand: bool) -> None:
    """-v, -q and --threads; a subcommand's copy sets nothing unless given (its defaults are SUPPRESS), so that
    ``opencellplm --threads 2 embed ...`` and ``opencellplm embed ... --threads 2`` both work."""
    unset = {"default": argparse.SUPPRESS} if subcommand else {}
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages", **unset)
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only", **unset)
    parser.add_argument(
        "--threads",
        type=_thread_count,
        metavar="N",
        help=f"CPU threads of torch and numba (default: $OMP_NUM_THREADS if set, else one fewer than the cores, "
        f"at least 1: {default_threads()} here; a busy core slows every thread's work to its pace)",
        **unset,
    )


def _thread_count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run a command (``annotate fit``, ``embed``, ...), below ``parser``."""
    children = [
        child
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for child in dict.fromkeys(action.choices.values())  # a parser once, whatever its aliases
    ]
    return [leaf for child in children for leaf in (_leaf_parsers(child) or [child])]


#: An API argument named in a library message (``layer=``, ``overwrite=True (--overwrite)``, ``precision='bf16'``).
_API_ARGUMENT = re.compile(
    r"(?<![\w-])([a-z][a-z0-9_]*)=(True\b|\.\.\.|'[^']*'|\"[^\"]*\"|[\w.]+)?(?: \((--[a-z0-9-]+)\))?"
)
_API_NAME = re.compile(r"(?<![\w-])([a-z][a-z0-9_]*) \((--[a-z0-9-]+)\)")


def in_flag_words(text: str, flags: Collection[str]) -> str:
    """``text`` with each API argument that is one of ``flags`` written as the flag: ``overwrite=True`` and
    ``overwrite=True (--overwrite)`` become ``--overwrite``, ``layer=`` ``--layer``, ``precision='bf16'``
    ``--precision bf16``, ``key_added (--key-added)`` ``--key-added``; other arguments are left as they are.
    The library speaks to Python callers, the command line to its users."""

    quotes = "'\""

    def flag(match: re.Match) -> str:
        name, value, named = match.groups()
        option = "--" + name.replace("_", "-")
        if option not in flags or value == "False" or (named and named != option):
            return match.group(0)
        return option if value in (None, "True", "...") else f"{option} {value.strip(quotes)}"

    def named(match: re.Match) -> str:  # "key_added (--key-added)": the name, then its flag
        name, option = match.groups()
        return option if option == "--" + name.replace("_", "-") and option in flags else match.group(0)

    return _API_NAME.sub(named, _API_ARGUMENT.sub(flag, text))


class _FlagWords(logging.Filter):
    """Writes the records shown by the command line in the flag words of the command that runs."""

    flags: Collection[str] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.flags:
            record.msg, record.args = in_flag_words(record.getMessage(), self.flags), ()
        return True


_FLAG_WORDS = _FlagWords()


def _setup_logging(level: int) -> None:
    """Show this package's log records on stderr (other loggers keep their configuration)."""
    logger.setLevel(level)
    if not any(getattr(h, "opencellplm_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handler.addFilter(_FLAG_WORDS)
        handler.opencellplm_cli = True
        logger.addHandler(handler)


def _command_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The lock on the command's ``--out``, held from before any work to the end: a second run into the same
    output fails at once, not after its fine-tuning (the writers take the same lock again, which a process may).
    Not for ``pretrain``, whose processes share one run folder under a lock of its own, nor where ``--out``'s
    folder does not exist yet (the writers lock once they have made it)."""
    from ._files import output_lock

    out = getattr(args, "out", None)
    # A new folder is made by the writers, after their checks: the lock creates none (nor inside an input).
    if out is None or args.run is _pretrain or not Path(out).expanduser().resolve().parent.is_dir():
        return contextlib.nullcontext()
    return output_lock(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 for unusable input)."""
    args = build_parser().parse_args(argv)
    _setup_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    for note in getattr(args, "deprecations", []):
        logger.warning("%s", note)
    threads = set_threads(args.threads)  # before any work; held through scanpy's numba code
    logger.debug("CPU threads: %d (%s)", threads, "--threads" if args.threads else "default")
    _FLAG_WORDS.flags = args.cli_flags
    try:
        with _command_lock(args):
            return args.run(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        logger.error("%s", message, exc_info=args.verbose)  # the traceback with -v
        return 2
    finally:
        _FLAG_WORDS.flags = ()


if __name__ == "__main__":
    sys.exit(main())
