"""The ``opencellplm`` command line: thin wrappers over the Python API, one module per command.

Each command module has a ``register(commands)`` that adds its parser; the arguments several commands share
(input spec, checkpoint, device, output, seed) are declared once in :mod:`._args`, with one meaning each.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from .._files import CannotWriteError
from .._threads import default_threads, set_threads
from ..config import ConfigError
from ..io import CheckpointError
from . import annotate, data, denoise, embed, impute, perturb, report, train
from ._args import DEFAULT_MODEL
from ._flag_words import _FLAG_WORDS, in_flag_words

__all__ = ["DEFAULT_MODEL", "USER_ERRORS", "build_parser", "in_flag_words", "main"]

logger = logging.getLogger("opencellplm")

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

#: The command modules, in the order ``opencellplm -h`` lists their commands.
COMMANDS = (embed, data, train, annotate, denoise, impute, perturb, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opencellplm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, subcommand=False)
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(commands)
    for command in _leaf_parsers(parser):  # the global options also work after the subcommand
        _add_global_options(command, subcommand=True)
        # the command's flags, in whose words its messages are shown
        command.set_defaults(cli_flags=frozenset(o for action in command._actions for o in action.option_strings))
    return parser


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
    from .._files import output_lock

    out = getattr(args, "out", None)
    if args.command == "embed" and int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 holds it
        return contextlib.nullcontext()
    # A new folder is made by the writers, after their checks: the lock creates none (nor inside an input).
    if out is None or not getattr(args, "locks_out", True) or not Path(out).expanduser().resolve().parent.is_dir():
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
