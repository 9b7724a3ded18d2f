"""``opencellplm pretrain`` and ``convert-official``: making a model."""

from __future__ import annotations

import argparse

from ..config import ConfigError
from ._args import add_device, add_overwrite, add_seed


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "convert-official",
        help="convert an official CellPLM checkpoint (PREFIX.config.json + PREFIX.best.ckpt) to our format",
    )
    p.add_argument("prefix", help="path prefix of the official files, e.g. ckpt/20230926_85M")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    add_overwrite(p)
    p.set_defaults(run=_convert_official)

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
    add_seed(p, help="override the configuration's seed (every random choice of the run)", default=None)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="override the configuration's precision")
    add_device(p, default=None)
    p.add_argument(
        "--init-decoder-bias",
        choices=["corpus", "random"],
        help="start the NB decoder's output bias at the log of the corpus's mean gene shares ('corpus', the default "
        "of a new run) or at random (the official initialisation); a resumed run keeps its own",
    )
    # the run folder is locked by the trainer, shared by the processes of one run
    p.set_defaults(run=_pretrain, locks_out=False)


def _convert_official(args: argparse.Namespace) -> int:
    from ..io.official import official_paths
    from ..model import CellPLM

    model = CellPLM.from_official(args.prefix)
    model.save(args.out, overwrite=args.overwrite, inputs=official_paths(args.prefix))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .. import configs
    from ..train import pretrain
    from ..train.pretrain import decoder_bias_from_corpus, recorded_init, recorded_settings

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
