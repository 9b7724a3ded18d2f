"""Writing outputs whole, and only where that loses nothing: the one place every command's outputs are checked.

Every output, file or folder, is refused when it is, lies inside, or holds an input of the command
(:func:`refuse_inputs`), and ``overwrite`` replaces only what this package wrote: a folder with its marker
file (a ``recognise`` check), a file with its mark (:func:`written_file_problems`: an h5ad's root attribute
:data:`H5AD_MARK`, a JSON object's key :data:`JSON_MARK`). While one run writes an output, it holds a lock
on it (:func:`output_lock`): a second run into the same output fails at once. A write that the file system
refuses (read-only, full) is raised as :class:`CannotWriteError`, one line naming the place.

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

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: ``recognise(path)`` returns why ``path`` is not an output this package wrote (empty: it is).
Recogniser = Callable[[Path], list[str]]

#: Root attribute of every HDF5 (h5ad) file this package writes; files saved again by other software lose it.
H5AD_MARK = "opencellplm_output"
#: Key of every JSON object this package writes as a result file; its value starts with "opencellplm".
JSON_MARK = "written_by"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: What a file system says when it will not take a write: shown as one line, not a traceback.
_WRITE_ERRNOS = {
    getattr(errno, name) for name in ("EROFS", "EACCES", "EPERM", "ENOSPC", "EDQUOT") if hasattr(errno, name)
}


class CannotWriteError(OSError):
    """The file system refused to write an output (read-only, no permission, full); ``str()`` is the message."""

    def __init__(self, code: int | None, message: str):
        super().__init__(message)
        self.errno = code


class OutputInUseError(FileExistsError):
    """Another run is writing the same output."""


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def json_object(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None where it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def marker_problems(marker: Path, fmt: str) -> list[str]:
    """``[]`` when the JSON file ``marker`` declares ``"format": fmt`` (what this package writes into each
    directory it makes), else the reason: the recognisers of :func:`write_directory` start here."""
    if (json_object(marker) or {}).get("format") == fmt:
        return []
    return [f"no {marker.name} declaring format {fmt!r}"]


def resolve_output(target: str | Path) -> Path:
    """``target`` as an absolute path with a name (``.`` becomes the current folder's path)."""
    path = Path(target).expanduser().resolve()
    if path.parent == path:
        raise ValueError(f"cannot write a directory at {path}; choose a folder below it")
    return path


def written_mark() -> str:
    """The value of :data:`H5AD_MARK` / :data:`JSON_MARK`: the package and its version."""
    from . import __version__

    return f"opencellplm {__version__}"


def written_file_problems(path: Path) -> list[str]:
    """``[]`` when ``path`` is a file this package wrote and marked (an HDF5 file with the root attribute
    :data:`H5AD_MARK`, a JSON object with :data:`JSON_MARK`), else why it is not."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as err:
        return [f"it cannot be read: {err.strerror or err}"]
    if head == _HDF5_SIGNATURE:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if H5AD_MARK in f.attrs:
                    return []
        except OSError:
            return ["an HDF5 file that cannot be opened"]
        return [f"an HDF5 file without opencellplm's {H5AD_MARK!r} mark (saving a file again elsewhere removes it)"]
    if head.lstrip()[:1] == b"{" and str((json_object(path) or {}).get(JSON_MARK, "")).startswith("opencellplm"):
        return []
    return ["it carries no opencellplm mark"]


def mark_h5ad(path: Path) -> None:
    """Mark the HDF5 (h5ad) file ``path`` as written by this package (:data:`H5AD_MARK`)."""
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs[H5AD_MARK] = written_mark()


#: Extended attribute that marks a file with no room for a mark of its own (a CSV table) as this package's.
XATTR_MARK = "user.opencellplm"


def mark_by_attribute(path: Path) -> None:
    """Mark ``path`` with the extended attribute :data:`XATTR_MARK`; where the file system (or the platform)
    takes none, the file stays unmarked, and so is never replaced (the safe side)."""
    try:
        os.setxattr(path, XATTR_MARK, written_mark().encode())
    except (AttributeError, OSError):
        logger.debug("%s: no extended attributes here, so --overwrite will not replace it", path)


def attribute_mark_problems(path: Path) -> list[str]:
    """``[]`` when ``path`` carries :data:`XATTR_MARK` (see :func:`mark_by_attribute`), else why it counts as
    another program's file. Copies made without their attributes (``cp`` without ``-a``) count as such."""
    try:
        if os.getxattr(path, XATTR_MARK).decode(errors="replace").startswith("opencellplm"):
            return []
    except (AttributeError, OSError):
        pass
    return ["it carries no opencellplm mark (the extended attribute this package sets on the tables it writes)"]


def refuse_inputs(target: str | Path, inputs: Iterable[str | Path | None], *, kind: str = "output") -> Path:
    """Refuse ``target`` when it is an input of the command, lies inside an input folder, or holds an
    input (a folder that a replacement would delete). Returns ``target`` resolved; ``None`` inputs are skipped."""
    target = Path(target).expanduser().resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).expanduser().resolve()
        if source == target:
            elsewhere = "to another file" if kind == "output" else f"the {kind} elsewhere"
            raise ValueError(f"the {kind} {target} is an input of this command; write {elsewhere}")
        if source in target.parents:
            raise ValueError(
                f"the {kind} {target} lies inside {source}, an input of this command; write the {kind} elsewhere"
            )
        if target in source.parents:
            raise ValueError(f"{target} holds an input of this command ({source}); write the {kind} elsewhere")
    return target


def refuse_current_folder(target: Path, kind: str) -> None:
    """Refuse to replace the current folder or a folder holding it: the shell would be left in a deleted folder."""
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder is already gone
        return
    if target == here or target in here.parents:
        raise ValueError(
            f"{target} is the current folder or holds it; writing the {kind} there would replace it and leave "
            f"this shell in a deleted folder; name a new folder below it, or run from elsewhere"
        )


@contextmanager
def cannot_write(place: str | Path, what: str = "") -> Iterator[None]:
    """Turn a file system's refusal to write (read-only, no permission, full disk) into
    :class:`CannotWriteError`: one line naming ``place``."""
    place = Path(place)
    try:
        yield
    except CannotWriteError:
        raise
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS or not _written_there(err.filename, place):
            raise
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(place) else ""
        raise CannotWriteError(
            err.errno, f"cannot write {what + ' ' if what else ''}{place}: {err.strerror or err}{where}"
        ) from None


def _written_there(filename: object, place: Path) -> bool:
    """Whether an error's file is ``place``, in it, or a hidden file beside it (lock, partial): an error about
    an input read elsewhere is left as it is."""
    if not filename:
        return True
    path = Path(os.fsdecode(filename)).absolute()
    place = place.absolute()
    return (
        path == place
        or place in path.parents
        or (path.parent == place.parent and path.name.startswith(f".{place.name}."))
        or path == place.parent
        or path in place.parents
    )


# ----------------------------------------------------------------------------------- locks
_held: dict[Path, int] = {}


@contextmanager
def output_lock(target: str | Path, kind: str = "output") -> Iterator[Path]:
    """Hold an exclusive lock on writing ``target`` (its folder is created); yields ``target`` resolved.

    The lock is a ``flock`` on the hidden file ``.NAME.lock`` beside ``target``: a second run writing the
    same output fails at once with :class:`OutputInUseError`, and the kernel releases the lock when a run
    dies. The lock file is removed on release; a run that locked a removed file notices and locks the new
    one. Nested use in one process is allowed. Nothing is locked where there is no ``fcntl`` (Windows).
    """
    target = resolve_output(target)
    if target in _held:
        _held[target] += 1
        try:
            yield target
        finally:
            _held[target] -= 1
        return
    lock = target.with_name(f".{target.name}.lock")
    handle = _lock(lock, target, kind)
    _held[target] = 1
    try:
        yield target
    finally:
        del _held[target]
        if handle is not None:
            lock.unlink(missing_ok=True)  # while still held: a waiting run sees the file is gone
            os.close(handle)


def _lock(lock: Path, target: Path, kind: str) -> int | None:
    try:
        import fcntl
    except ImportError:
        logger.warning("no file locks on this platform: nothing stops two runs from writing %s at once", target)
        return None
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise CannotWriteError(err.errno, f"cannot write the {kind} {target}: {err.strerror or err}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 200, 0).decode(errors="replace").strip()
            os.close(handle)
            raise OutputInUseError(
                f"{target} is being written by another run{f' (process {holder})' if holder else ''}; "
                "wait for it to end or choose another output"
            ) from None
        try:
            current = os.stat(lock)
            opened = os.fstat(handle)
            if (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(handle)  # the holder removed this lock file as it finished: lock the current one
    os.ftruncate(handle, 0)  # who holds the lock, for the message above
    os.write(handle, f"{os.getpid()} on {socket.gethostname()}\n".encode())
    return handle


@contextmanager
def new_folders_removed_on_failure(target: str | Path) -> Iterator[None]:
    """Folders made for ``target`` inside this block (its missing parents) are removed again, where left empty,
    when the block fails: a refused run leaves no new folder behind."""
    parent = Path(target).expanduser().resolve().parent
    missing = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first
            with suppress(OSError):
                folder.rmdir()
        raise


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
    refuse_inputs(target, inputs, kind=kind)
    if not target.exists():
        return target
    refuse_current_folder(target, kind)
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


def check_output_file(
    target: str | Path,
    *,
    overwrite: bool,
    inputs: Iterable[str | Path | None] = (),
    recognise: Recogniser | None = written_file_problems,
) -> Path:
    """Refuse a ``target`` file that is, or lies inside, an input (:func:`refuse_inputs`), a folder, or
    that exists unless ``overwrite`` is given and ``recognise`` finds it is a file this package wrote
    (``recognise=None``: the caller has made sure the file is its own). Returns ``target``.
    """
    target = Path(target)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder; give --out the path of the file to write")
    refuse_inputs(target, inputs)
    if not target.exists():
        return target
    problems = [] if recognise is None else recognise(target)
    if problems:
        raise FileExistsError(
            f"{target} exists and is not a marked opencellplm output ({'; '.join(problems[:3])}): another program "
            "wrote it, or an opencellplm version that did not yet mark its outputs, so it is never replaced, even "
            "with overwrite=True (--overwrite); remove it yourself or choose another file"
        )
    if not overwrite:
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

    ``target`` is checked by :func:`check_output_directory` and locked (:func:`output_lock`) while it is
    written; a refusal of the file system is one line (:class:`CannotWriteError`). An existing ``target`` is moved aside
    first and removed only once the new one is in place, so a crash at any point leaves a complete
    directory. ``fill``'s result is returned; if it raises, the partial folder is removed and
    ``target`` is untouched.
    """
    target = check_output_directory(target, overwrite=overwrite, recognise=recognise, kind=kind, inputs=inputs)
    with cannot_write(target, f"the {kind}"), output_lock(target, kind):
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
