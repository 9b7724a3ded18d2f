"""A saved task: a folder with the fine-tuned model (our checkpoint format, in ``model/``) and a JSON file of
the task's settings, written whole, and replaced with ``overwrite`` only when it is a saved task of that kind.

The settings file records the sha256 of every other file in the folder and a sha256 of its own content
(``"sha256": {"files": {...}, "settings": ...}``), checked on every load: a task edited after it was saved (a
class name swapped, weights replaced) is refused, naming the file, instead of giving wrong results. A folder
written before these checksums loads with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from .._files import marker_problems, sha256_of, write_directory
from ..io import load_checkpoint, save_checkpoint
from ..module import CellPLMModule

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
#: Key of the checksums in the settings file.
CHECKSUMS = "sha256"
D = TypeVar("D")


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
        document = json.loads(json.dumps({"format": fmt} | settings, default=str))  # as it will be read back
        files = {
            path.relative_to(folder).as_posix(): sha256_of(path)
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path != folder / settings_file
        }
        document[CHECKSUMS] = {"files": files, "settings": _digest(document, files)}
        (folder / settings_file).write_text(json.dumps(document, indent=2) + "\n")

    kind = fmt.removeprefix("opencellplm-").replace("-", " ")
    recognise = recogniser(settings_file, fmt, extra=tuple(extra))
    write_directory(directory, fill, overwrite=overwrite, recognise=recognise, kind=kind)
    logger.info("saved the %s to %s", kind, directory)
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
    """``(settings, module, genes, meta)`` of a folder written by :func:`save_task`, its checksums verified
    (``settings`` without them)."""
    directory = Path(directory)
    path = directory / settings_file
    kind = fmt.removeprefix("opencellplm-").replace("-", " ")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {directory} a saved {kind}?")
    try:
        settings = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path} as JSON: {err}") from None
    if not isinstance(settings, dict) or settings.get("format") != fmt:
        raise ValueError(f"{path} is not an {fmt} file")
    _verify(directory, path, settings, kind)
    module, genes, meta = load_checkpoint(directory / MODEL_DIR)
    return settings, module, genes, meta


def settings_dataclass(path: Path, settings: dict[str, Any], key: str, cls: type[D]) -> D:
    """``cls(**settings[key])``, or a ValueError naming ``path`` when that entry is not an object of ``cls``'s
    fields with values of their types (fields typed other than by None, bool, int, float, str and Literal
    are not checked here)."""
    value = settings.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {key!r} must be an object of settings, not {value!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{path}: {key!r} has unknown settings {unknown}; known: {sorted(known)}")
    wrong = [f"{name}={v!r}" for name, v in value.items() if not _fits(v, hints[name])]
    if wrong:
        raise ValueError(f"{path}: {key!r} has values of the wrong type: {', '.join(wrong)}")
    return cls(**value)


def setting(path: Path, settings: dict[str, Any], key: str, hint: Any) -> Any:
    """``settings[key]``, or a ValueError naming ``path`` when it is missing or not of type ``hint`` (checked as
    :func:`settings_dataclass` checks fields)."""
    if key not in settings:
        raise ValueError(f"{path}: the setting {key!r} is missing; the file was edited or damaged: save the task again")
    if not _fits(settings[key], hint):
        raise ValueError(f"{path}: {key!r} has a value of the wrong type: {settings[key]!r}")
    return settings[key]


@contextmanager
def reading_settings(path: Path) -> Iterator[None]:
    """Turn what a malformed settings file raises while a task is rebuilt from it (a missing key, a value of
    another shape) into one ValueError naming ``path``: the last guard behind the checks of each setting."""
    try:
        yield
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path} does not hold the settings opencellplm writes ({type(err).__name__}: {err}); the file was "
            "edited or damaged: save the task again"
        ) from None


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(hint))
    if origin is Literal:
        return any(value == option and type(value) is type(option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _digest(document: dict[str, Any], files: dict[str, str]) -> str:
    """sha256 of the settings (without their checksums) and the files' sha256, in a canonical JSON form."""
    text = json.dumps([document, files], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _verify(directory: Path, path: Path, settings: dict[str, Any], kind: str) -> None:
    """Check the checksums that ``path`` records (and remove them from ``settings``)."""
    recorded = settings.pop(CHECKSUMS, None)
    if recorded is None:
        warnings.warn(
            f"{path} records no checksums (it was saved by an earlier opencellplm), so changes made to the {kind} "
            f"since cannot be detected; to add them, fit it again, or load it in Python and save it to a new folder",
            UserWarning,
            stacklevel=4,
        )
        return
    files = recorded.get("files") if isinstance(recorded, dict) else None
    if not (
        isinstance(files, dict)
        and isinstance(recorded.get("settings"), str)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    ):
        raise ValueError(f"{path}: its {CHECKSUMS!r} entry is not the one opencellplm writes; save the {kind} again")
    if _digest(settings, files) != recorded["settings"]:
        raise ValueError(
            f"{path} was changed after the {kind} was saved (its content no longer matches the sha256 recorded "
            f"in it); restore the file or save the {kind} again"
        )
    root = directory.resolve()
    for name, expected in files.items():
        file = directory / name
        if root not in file.resolve().parents:
            raise ValueError(f"{path}: {name!r} is not a file inside {directory}")
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing from the saved {kind} in {directory}")
        actual = sha256_of(file)
        if actual != expected:
            raise ValueError(
                f"{file} was changed after the {kind} was saved (sha256 {actual[:12]}..., {path.name} records "
                f"{expected[:12]}...); restore the file or save the {kind} again"
            )
