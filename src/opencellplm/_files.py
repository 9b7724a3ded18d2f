"""Writing output directories whole, and only where that loses nothing.

Every directory this package writes (a checkpoint, a corpus) goes through :func:`write_directory`:

* it is filled in a hidden partial folder beside the target, then renamed into place, so readers
  see the old directory or the new one, never half of either;
* an existing target is replaced only with ``overwrite`` and only when it is recognisably one this
  package wrote and holds nothing else (its ``recognise`` check), never when it holds an input;
* partial folders left by a killed run are named after their process, so later runs remove them
  (or mention them, when that process may still be alive);
* modes follow the umask: some writers (safetensors) create private files, which a group could not read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: ``recognise(folder)`` returns why ``folder`` is not a directory this package wrote (empty: it is).
Recogniser = Callable[[Path], list[str]]


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def marker_problems(marker: Path, fmt: str) -> list[str]:
    """``[]`` when the JSON file ``marker`` declares ``"format": fmt`` (what this package writes into each
    directory it makes), else the reason: the recognisers of :func:`write_directory` start here."""
    try:
        declared = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        declared = None
    if isinstance(declared, dict) and declared.get("format") == fmt:
        return []
    return [f"no {marker.name} declaring format {fmt!r}"]


def resolve_output(target: str | Path) -> Path:
    """``target`` as an absolute path with a name (``.`` becomes the current folder's path)."""
    path = Path(target).expanduser().resolve()
    if path.parent == path:
        raise ValueError(f"cannot write a directory at {path}; choose a folder below it")
    return path


def check_output_directory(
    target: str | Path,
    *,
    overwrite: bool,
    recognise: Recogniser,
    kind: str,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Refuse ``target`` unless it is absent, an empty folder, or (with ``overwrite``) a ``kind``
    this package wrote that holds nothing else. Returns the resolved target.

    Call it before long work, so a refusal comes first; :func:`write_directory` checks again.
    """
    target = resolve_output(target)
    for source in inputs:
        source = Path(source).expanduser().resolve()
        if source == target or target in source.parents:
            raise ValueError(f"{target} holds an input of this command ({source}); write the {kind} elsewhere")
    if not target.exists():
        return target
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; choose another place for the {kind}")
    if not any(target.iterdir()):
        return target
    if not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    problems = recognise(target)
    if problems:
        article = "an" if kind[0] in "aeiou" else "a"
        raise FileExistsError(
            f"{target} is not {article} {kind} written by opencellplm, so overwrite will not replace it "
            f"({'; '.join(problems[:3])}); remove it yourself or choose another folder"
        )
    return target


def check_output_file(target: str | Path, *, overwrite: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse a ``target`` file that is an input, a folder, or (without ``overwrite``) exists."""
    target = Path(target)
    if target.exists() and any(target.resolve() == Path(s).resolve() for s in inputs):
        raise ValueError(f"the output {target} is an input of this command; write to another file")
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder; give --out the path of the file to write")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    return target


def write_directory(
    target: str | Path,
    fill: Callable[[Path], T],
    *,
    overwrite: bool,
    recognise: Recogniser,
    kind: str,
    inputs: Iterable[str | Path] = (),
) -> T:
    """Call ``fill`` on a fresh partial folder beside ``target``, then put it in ``target``'s place.

    ``target`` is checked by :func:`check_output_directory`. An existing ``target`` is moved aside
    first and removed only once the new one is in place, so a crash at any point leaves a complete
    directory. ``fill``'s result is returned; if it raises, the partial folder is removed and
    ``target`` is untouched.
    """
    target = resolve_output(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    _recover(target, old, recognise)
    _remove_stale_partials(target)
    target = check_output_directory(target, overwrite=overwrite, recognise=recognise, kind=kind, inputs=inputs)
    partial = _make_partial(target)
    try:
        result = fill(partial)
        follow_umask(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return result


def _recover(target: Path, old: Path, recognise: Recogniser) -> None:
    """Finish a swap that a crash interrupted: ``.NAME.old`` is the previous complete directory."""
    if not old.is_dir():
        return
    if recognise(old):
        logger.warning("%s is not ours to remove; leaving it", old)
    elif not target.exists():  # killed between the two renames: the old directory is the only one
        old.rename(target)
        logger.warning("restored %s from %s (an earlier write was interrupted)", target, old.name)
    else:
        shutil.rmtree(old)
        logger.info("removed %s, left by an interrupted write", old)


# ----------------------------------------------------------------------------- partial folders
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _partial_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.partial-(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)-[0-9a-f]{{8}}")


def _make_partial(target: Path) -> Path:
    # Named after host and process, so a later run can tell a killed writer's leftovers from live work.
    partial = target.with_name(f".{target.name}.partial-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir(mode=0o777)  # the umask applies
    return partial


def _remove_stale_partials(target: Path) -> None:
    pattern, host = _partial_pattern(target), _host_tag()
    for path in target.parent.glob(f".{target.name}.partial-*"):
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        if match["host"] == host and not _alive(int(match["pid"])):
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path, ignore_errors=True)
            logger.warning("removed %s (%.1f MB), left by a killed run", path, size / 1e6)
        else:
            logger.warning("%s belongs to a run that may still be going (another host or a live process)", path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


# ------------------------------------------------------------------------------------- modes
def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain ``open``/``mkdir`` would have."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
