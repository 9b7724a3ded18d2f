"""A saved task: a folder with the fine-tuned model (our checkpoint format, in ``model/``) and a JSON file of
the task's settings, written whole, and replaced with ``overwrite`` only when it is a saved task of that kind."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._files import marker_problems, write_directory
from ..io import load_checkpoint, save_checkpoint
from ..module import CellPLMModule

logger = logging.getLogger(__name__)

MODEL_DIR = "model"


def save_task(
    directory: str | Path,
    settings_file: str,
    fmt: str,
    settings: dict[str, Any],
    module: CellPLMModule,
    genes: list[str],
    meta: dict[str, Any],
    *,
    overwrite: bool,
    extra: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write ``module`` to ``directory/model`` and ``settings`` (with ``"format": fmt``) to
    ``directory/settings_file``; ``extra`` maps further file names to functions writing them (given the path)."""
    extra = extra or {}

    def fill(folder: Path) -> None:
        save_checkpoint(folder / MODEL_DIR, module, genes, meta=meta)
        for name, write in extra.items():
            write(folder / name)
        (folder / settings_file).write_text(json.dumps({"format": fmt} | settings, indent=2, default=str) + "\n")

    kind = fmt.removeprefix("opencellplm-")
    recognise = recogniser(settings_file, fmt, extra=tuple(extra))
    write_directory(directory, fill, overwrite=overwrite, recognise=recognise, kind=kind)
    logger.info("saved the %s to %s", fmt.removeprefix("opencellplm-"), directory)
    return Path(directory)


def recogniser(settings_file: str, fmt: str, *, extra: tuple[str, ...] = ()) -> Callable[[Path], list[str]]:
    """Why a folder is not a saved task of format ``fmt`` holding nothing else (empty if it is); ``extra``
    names the further files such a task holds."""
    known = (settings_file, MODEL_DIR, *extra)

    def problems(folder: Path) -> list[str]:
        others = [f"it holds {p.name}" for p in sorted(folder.iterdir()) if p.name not in known]
        return marker_problems(folder / settings_file, fmt) + others

    return problems


def read_task(
    directory: str | Path, settings_file: str, fmt: str
) -> tuple[dict[str, Any], CellPLMModule, list[str], dict[str, Any]]:
    """``(settings, module, genes, meta)`` of a folder written by :func:`save_task`."""
    directory = Path(directory)
    path = directory / settings_file
    kind = fmt.removeprefix("opencellplm-")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {directory} a saved {kind}?")
    try:
        settings = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path} as JSON: {err}") from None
    if not isinstance(settings, dict) or settings.get("format") != fmt:
        raise ValueError(f"{path} is not an {fmt} file")
    module, genes, meta = load_checkpoint(directory / MODEL_DIR)
    return settings, module, genes, meta
