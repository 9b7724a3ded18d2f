"""Arguments several commands share, declared once: the input spec, the model, the device, the output, the seed.

Each flag has one meaning wherever it appears: ``--seed`` seeds every random choice a command makes (its cell
partition, splits, masks, initial weights, baselines); ``--checkpoint`` names the model; ``--out`` and
``--overwrite`` the output, never touching an input.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The model a command uses without ``--checkpoint``: it ships inside the package.
DEFAULT_MODEL = "cellplm-small"
ALLOW_LOW_OVERLAP_HELP = "go on when the genes in the vocabulary carry a negligible share of the counts"
#: Why --steps defaults differ between commands: each is that task's recipe default (checked by a test).
STEPS_HELP = (
    "fine-tuning steps at most (default {steps}, {recipe}'s: each task's recipe sets its own, with its own "
    "learning rate and early stopping, which may end a run sooner)"
)
#: Why --max-cells is 4000 in embed, denoise and prepare-corpus (impute says why its default is smaller).
MAX_CELLS_HELP = "largest cell set; larger samples are split (default 4000: the official pretraining cap)"
SEED_HELP = "seed of every random choice the command makes (default 0)"

#: The input flags (InputSpec fields), their default help and settings; a command names those it takes.
_INPUT_FLAGS: dict[str, dict[str, Any]] = {
    "layer": {"help": "layer with raw counts (default: X)"},
    "gene_key": {"help": "var column with the vocabulary's gene ids (default: var_names)"},
    "sample_key": {"help": "obs column of samples: cells of one sample form cell sets together (default: all one)"},
    "spatial_key": {"default": "spatial", "help": "obsm key of 2-D/3-D coordinates (default: spatial, optional)"},
    "max_cells": {"type": int, "default": 4000, "help": MAX_CELLS_HELP},
    "partition": {
        "default": "auto",
        "choices": ["auto", "tiles", "random", "consecutive"],
        "help": "how to split large samples (default auto: spatial tiles with coordinates, else seeded random)",
    },
}


def add_input_spec(parser: argparse.ArgumentParser, *fields: str, **helps: str) -> None:
    """Add the input flags of ``fields`` (InputSpec field names: ``layer``, ``gene_key``, ``sample_key``,
    ``spatial_key``, ``max_cells``, ``partition``); ``helps`` replaces a flag's help where the command says more
    (``sample_key="..."``). :func:`spec_from` reads them back."""
    unknown = set(fields) - set(_INPUT_FLAGS) or set(helps) - set(fields)
    if unknown:
        raise ValueError(f"unknown input flags {sorted(unknown)}")
    for name in fields:
        settings = _INPUT_FLAGS[name] | ({"help": helps[name]} if name in helps else {})
        parser.add_argument("--" + name.replace("_", "-"), **settings)
    parser.set_defaults(spec_fields=tuple(fields))


def spec_from(args: argparse.Namespace) -> dict[str, Any]:
    """The input flags the command declared with :func:`add_input_spec`, as InputSpec keyword arguments."""
    return {name: getattr(args, name) for name in getattr(args, "spec_fields", ())}


def add_checkpoint(parser: argparse.ArgumentParser, help: str | None = None, **settings: Any) -> None:
    parser.add_argument(
        "--checkpoint",
        help=help or f"checkpoint directory (see convert-official) or shipped model name (default: {DEFAULT_MODEL})",
        **settings,
    )


def add_device(parser: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    what = "cpu" if default == "cpu" else "this process's GPU if any, else cpu"
    parser.add_argument("--device", default=default, help=f"torch device, e.g. cpu or cuda (default: {what})")


def add_seed(parser: argparse.ArgumentParser, help: str = SEED_HELP, **settings: Any) -> None:
    parser.add_argument("--seed", type=int, help=help, **({"default": 0} | settings))


def add_overwrite(parser: argparse.ArgumentParser, what: str = "replace --out if it exists") -> None:
    parser.add_argument("--overwrite", action="store_true", help=what)


def add_start(parser: argparse.ArgumentParser) -> None:
    """``--start pretrained|scratch``: where fine-tuning starts (``--scratch``, its old spelling, still works)."""
    parser.add_argument(
        "--start",
        choices=["pretrained", "scratch"],
        default="pretrained",
        help="the weights fine-tuning starts from: the checkpoint's (pretrained, the default) or fresh ones of its "
        "architecture (scratch: what pretraining adds)",
    )
    parser.add_argument(
        "--scratch",
        dest="start",
        action=Renamed,
        nargs=0,
        value="scratch",
        new="--start scratch",
        why="one flag for where fine-tuning starts",
        help=argparse.SUPPRESS,
    )


def model_path(checkpoint: str | None) -> Path:
    """What ``--checkpoint`` names (a folder, or a shipped model's folder): an input no output may touch."""
    from .. import pretrained

    name = checkpoint or DEFAULT_MODEL
    if not Path(name).exists() and name in pretrained.available():
        return pretrained.path(name)
    return Path(name)


def flag_column(adata, key: str):
    """A boolean obs column as a mask (refused unless it holds booleans)."""
    if key not in adata.obs:
        raise KeyError(f"obs column {key!r} not found; adata.obs has {list(adata.obs.columns)}")
    values = adata.obs[key]
    if values.dtype != bool:
        raise ValueError(f"obs column {key!r} must hold True/False (the test cells), not {values.dtype}")
    return values.to_numpy()


class Renamed(argparse.Action):
    """An option's old spelling: still works, with a warning that names the new one (``value``: what a flag
    without arguments stands for)."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, why: str, value: Any = None, **kwargs):
        self.new, self.why, self.value = new, why, value
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.value if self.nargs == 0 else values)
        notes = getattr(namespace, "deprecations", [])
        namespace.deprecations = [*notes, f"{option_string} is deprecated: use {self.new} ({self.why})"]


#: The SOMA flags' defaults, filled in once a command reads a SOMA experiment (given without one, they are refused).
SOMA_DEFAULTS = {"organism": "homo_sapiens", "measurement": "RNA", "block_cells": 20_000}


def add_soma_source(parser: argparse.ArgumentParser, what: str) -> argparse._ArgumentGroup:
    """The flags that make a command read a TileDB-SOMA experiment (or the CELLxGENE Census) instead of files;
    :func:`soma_source` reads them back. Returns the group, for a command's own SOMA flags."""
    soma = parser.add_argument_group(f"{what} (pip install 'opencellplm[soma]')")
    source = soma.add_mutually_exclusive_group()
    source.add_argument("--soma", metavar="URI", help="a SOMA experiment (a local folder or a tiledbsoma URI)")
    source.add_argument(
        "--census", metavar="VERSION", help="a CELLxGENE Census release, e.g. stable (network and opencellplm[census])"
    )
    soma.add_argument("--organism", help="the Census experiment (default homo_sapiens)")
    soma.add_argument("--measurement", help="measurement of the counts (default RNA; the layer: raw)")
    soma.add_argument("--obs-filter", help="tiledbsoma value filter on obs, e.g. \"tissue_general == 'lung'\"")
    soma.add_argument("--block-cells", type=int, help="cells read at a time (default 20000)")
    return soma


def soma_source(args: argparse.Namespace, *, files: bool, own: Sequence[str] = ()) -> bool:
    """Whether the command reads a SOMA experiment: exactly one of files (``files``: some were given) and
    ``--soma`` / ``--census``. The SOMA flags (and the command's ``own``) are refused without one; their defaults
    are filled in with one."""
    from_soma = args.soma is not None or args.census is not None
    if from_soma and files:
        raise ValueError("give input files, or --soma URI / --census VERSION, not both")
    if not from_soma and not files:
        raise ValueError("give the input files, or --soma URI / --census VERSION")
    given = [name for name in [*SOMA_DEFAULTS, "obs_filter", *own] if getattr(args, name, None) is not None]
    if not from_soma and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{flags} read a SOMA experiment: give --soma URI or --census VERSION, or drop them")
    for name, default in SOMA_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return from_soma


def soma_settings(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    """The SOMA source's keyword arguments (``prepare_corpus_from_soma``, ``CellPLM.embed_soma``) from the flags;
    takes ``layer`` out of ``spec`` (a SOMA measurement's counts are ``raw`` unless named)."""
    return {
        "census": args.census,
        "organism": args.organism,
        "measurement": args.measurement,
        "layer": spec.pop("layer", None) or "raw",
        "obs_filter": args.obs_filter,
        "block_cells": args.block_cells,
    }
