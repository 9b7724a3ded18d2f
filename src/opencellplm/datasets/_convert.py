"""One converter per data set: from the files extracted out of a package archive to an AnnData.

Each converter reads the files in their shipped format and returns a :class:`Converted`: the AnnData with the
source's cells, genes and annotations, what its ``X`` holds, and the transformations applied. The uniform
conventions (float32 CSR ``X``, ``obs['sample']``, unique gene symbols as ``var_names``, provenance in
``uns['dataset']``) are applied afterwards, in one place, by :func:`standardize`.
"""

from __future__ import annotations

import logging
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._files import sha256_of
from ._fetch import DatasetError

logger = logging.getLogger(__name__)

RAW_COUNTS = "raw counts"

# Largest distance from an integer tolerated before values are rounded to counts. The shipped values are
# rounded (to 3 decimals for pbmc68k_reduced and the Drosophila file), so recovered counts sit near, not on,
# integers; a deviation this large would make the rounding ambiguous.
INTEGER_TOLERANCE = 0.25


@dataclass
class Converted:
    """What a converter returns.

    Attributes
    ----------
    adata
        Cells x genes. ``var`` may carry ``gene_symbol`` and ``ensembl_id``; ``obs`` may carry ``sample`` and
        ``cell_type``.
    x
        What ``X`` holds, e.g. ``"raw counts"``.
    transformations
        Each change made to the shipped values or annotations, in words.
    extra
        Further provenance to record in ``uns['dataset']``.
    """

    adata: ad.AnnData
    x: str = RAW_COUNTS
    transformations: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# --- shared helpers -------------------------------------------------------------------------------------------------


def to_float32_csr(x: Any) -> sp.csr_matrix:
    """``x`` (dense or sparse) as a float32 CSR matrix with explicit zeros removed."""
    out = sp.csr_matrix(x, dtype=np.float32)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def distance_to_integers(x: Any) -> float:
    """Largest distance of an entry of ``x`` (dense or sparse) from the nearest integer (0 when empty)."""
    values = x.data if sp.issparse(x) else np.asarray(x)
    return float(np.max(np.abs(values - np.rint(values)))) if values.size else 0.0


def round_to_counts(x: Any, what: str) -> tuple[sp.csr_matrix, float]:
    """Round near-integer values to counts, after checking they are near-integer and non-negative.

    Parameters
    ----------
    x
        Dense or sparse values.
    what
        Name used in the error message.

    Returns
    -------
    tuple
        The counts as float32 CSR, and the largest distance from an integer before rounding.

    Raises
    ------
    DatasetError
        When a value lies more than :data:`INTEGER_TOLERANCE` from an integer, or is negative.
    """
    x = sp.csr_matrix(x, dtype=np.float64)
    deviation = distance_to_integers(x)
    if deviation > INTEGER_TOLERANCE or (x.data.size and x.data.min() < 0):
        raise DatasetError(
            f"{what}: values are not counts (largest distance from an integer {deviation:.3g}, "
            f"minimum {x.data.min() if x.data.size else 0:.3g})"
        )
    x.data = np.rint(x.data)
    return to_float32_csr(x), deviation


def _read_table(path: Path, sep: str, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DatasetError(f"cannot read {path.name}: {error}") from error


# --- converters -----------------------------------------------------------------------------------------------------


def convert_pbmc68k_reduced(files: Mapping[str, Path]) -> Converted:
    """scanpy's ``10x_pbmc68k_reduced.h5ad``: counts recovered from ``.raw`` (log1p of counts per 10k).

    ``.raw.X`` holds ``log1p(counts / n_counts * 1e4)`` rounded to 3 decimals, with ``n_counts`` the cell's total
    over all genes of the original matrix, so ``rint(expm1(raw.X) * n_counts / 1e4)`` gives back the counts.
    """
    source = ad.read_h5ad(files["h5ad"])
    if source.raw is None or "n_counts" not in source.obs:
        raise DatasetError("10x_pbmc68k_reduced.h5ad lacks .raw or obs['n_counts']")
    scaled = sp.csr_matrix(source.raw.X, dtype=np.float64)
    scaled.data = np.expm1(scaled.data)
    totals = source.obs["n_counts"].to_numpy(dtype=np.float64)
    counts, deviation = round_to_counts(sp.diags(totals / 1e4) @ scaled, "pbmc68k_reduced")
    obs = source.obs.rename(columns={"bulk_labels": "cell_type"})
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=source.raw.var_names.astype(str)))
    adata.var["gene_symbol"] = adata.var_names
    return Converted(
        adata,
        transformations=[
            "X = rint(expm1(raw.X) * obs['n_counts'] / 1e4) "
            f"(largest distance from an integer before rounding: {deviation:.4f})",
            "obs['bulk_labels'] renamed to obs['cell_type']; the shipped scaled X, PCA, UMAP and graphs dropped",
        ],
        extra={"max_deviation_before_rounding": deviation},
    )


def convert_pbmc3k(files: Mapping[str, Path]) -> Converted:
    """desc's ``pbmc.h5ad``: 10x PBMC 3k raw UMI counts with gene symbols and Ensembl ids."""
    source = ad.read_h5ad(files["h5ad"])
    counts, _ = round_to_counts(source.X, "pbmc3k")
    var = pd.DataFrame(index=source.var_names.astype(str))
    var["gene_symbol"] = (
        source.var["gene_symbols"].astype(str).to_numpy() if "gene_symbols" in source.var else var.index
    )
    var["ensembl_id"] = source.var["gene_ids"].astype(str).to_numpy()
    obs = source.obs.drop(columns=[c for c in ("barcode",) if c in source.obs])
    return Converted(ad.AnnData(X=counts, obs=obs, var=var), transformations=["obs['barcode'] (= obs_names) dropped"])


def convert_celltypist_sample(files: Mapping[str, Path]) -> Converted:
    """celltypist's ``sample_cell_by_gene.csv``: cells x genes, counts written as floats (e.g. 0.999999999999999)."""
    table = _read_table(files["csv"], ",", index_col=0)
    counts, deviation = round_to_counts(table.to_numpy(dtype=np.float64), "celltypist_sample")
    var = pd.DataFrame({"gene_symbol": table.columns.astype(str)}, index=table.columns.astype(str))
    obs = pd.DataFrame(index=table.index.astype(str))
    return Converted(
        ad.AnnData(X=counts, obs=obs, var=var),
        transformations=[f"values rounded to integers (largest distance before rounding: {deviation:.2g})"],
        extra={"max_deviation_before_rounding": deviation},
    )


def convert_merfish_u2os(files: Mapping[str, Path]) -> Converted:
    """novosparc's MERFISH U-2 OS samples: ``dge_<i>.txt`` (cells x genes, tab) with ``geometry_<i>.txt`` (x, y)."""
    parts, genes = [], None
    samples = sorted(k.removeprefix("dge_") for k in files if k.startswith("dge_"))
    for sample in samples:
        dge = _read_table(files[f"dge_{sample}"], "\t")
        geometry = _read_table(files[f"geometry_{sample}"], "\t")
        if len(dge) != len(geometry) or list(geometry.columns[:2]) != ["xcoord", "ycoord"]:
            raise DatasetError(
                f"MERFISH sample {sample}: {len(dge)} cells in dge but {len(geometry)} rows in geometry "
                f"(columns {list(geometry.columns)})"
            )
        if genes is not None and list(dge.columns) != genes:
            raise DatasetError(f"MERFISH sample {sample} lists other genes than sample {samples[0]}")
        genes = list(dge.columns)
        counts, _ = round_to_counts(dge.to_numpy(dtype=np.float64), f"MERFISH sample {sample}")
        name = f"sample_{sample}"
        obs = pd.DataFrame({"sample": name}, index=[f"{name}_{i}" for i in range(len(dge))])
        part = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
        part.obsm["spatial"] = geometry[["xcoord", "ycoord"]].to_numpy(dtype=np.float64)
        parts.append(part)
    adata = ad.concat(parts, merge="same")
    adata.var["gene_symbol"] = adata.var_names
    return Converted(adata, transformations=["the three samples concatenated; obs_names = <sample>_<row>"])


def convert_bdtnp_atlas(files: Mapping[str, Path]) -> Converted:
    """novosparc's BDTNP atlas: ``dge.txt`` (locations x 84 genes, tab) and ``geometry.txt`` (x y z, space).

    ``geometry.txt`` lists twice as many rows as ``dge.txt``; the first ones belong to the expression rows, as in
    novosparc's own tutorial.
    """
    dge = _read_table(files["dge"], "\t")
    geometry = _read_table(files["geometry"], " ")
    if len(geometry) < len(dge) or list(geometry.columns[:3]) != ["xcoord", "ycoord", "zcoord"]:
        raise DatasetError(f"BDTNP geometry has {len(geometry)} rows {list(geometry.columns)} for {len(dge)} cells")
    obs = pd.DataFrame(index=[f"location_{i}" for i in range(len(dge))])
    var = pd.DataFrame({"gene_symbol": dge.columns.astype(str)}, index=dge.columns.astype(str))
    adata = ad.AnnData(X=to_float32_csr(dge.to_numpy(dtype=np.float64)), obs=obs, var=var)
    adata.obsm["spatial"] = geometry[["xcoord", "ycoord", "zcoord"]].to_numpy(dtype=np.float64)[: len(dge)]
    return Converted(
        adata,
        x="normalized in-situ intensities (not counts)",
        transformations=[f"the first {len(dge)} of the {len(geometry)} rows of geometry.txt used as coordinates"],
    )


def count_recovery(values: np.ndarray) -> tuple[np.ndarray | None, dict[str, float]]:
    """Try to recover counts from ``log2(1 + scale_cell * counts)`` values (cells x genes).

    Assumes each cell's smallest non-zero value is one count, so ``(2**v - 1) / (2**v_min - 1)`` should be an
    integer. Counts are recovered only when every entry lies within :data:`INTEGER_TOLERANCE` of one.

    Returns
    -------
    tuple
        The counts (or None when not recoverable) and the check's numbers: the largest distance from an integer
        and the share of non-zero entries further than 0.1 from one.
    """
    scaled = np.exp2(values) - 1.0
    nonzero = scaled > 0
    smallest = np.where(nonzero, scaled, np.inf).min(axis=1)
    smallest[~np.isfinite(smallest)] = 1.0  # cells without any non-zero value
    ratio = scaled / smallest[:, None]
    deviation = np.abs(ratio - np.rint(ratio))[nonzero]
    check = {
        "max_deviation": float(deviation.max()) if deviation.size else 0.0,
        "share_nonzero_off_by_more_than_0.1": float(np.mean(deviation > 0.1)) if deviation.size else 0.0,
    }
    if check["max_deviation"] > INTEGER_TOLERANCE:
        return None, check
    return np.where(nonzero, np.rint(ratio), 0.0), check


def convert_drosophila_scrnaseq(files: Mapping[str, Path]) -> Converted:
    """novosparc's Drosophila embryo Drop-seq matrix ``dge_normalized.txt``: genes x cells, log2(1 + scaled counts).

    The values are rounded to 3 decimals, so counts come back only approximately for large counts; they are
    recovered only when :func:`count_recovery` finds every entry unambiguous, otherwise the shipped values are kept.
    """
    table = _read_table(files["dge"], "\t", index_col=0)
    values = table.to_numpy(dtype=np.float64).T
    counts, check = count_recovery(values)
    obs = pd.DataFrame(index=table.columns.astype(str))
    var = pd.DataFrame({"gene_symbol": table.index.astype(str)}, index=table.index.astype(str))
    if counts is not None:
        return Converted(
            ad.AnnData(X=to_float32_csr(counts), obs=obs, var=var),
            transformations=["counts recovered as (2**v - 1) / (2**v_min - 1) per cell, transposed to cells x genes"],
            extra={"count_recovery_check": check},
        )
    logger.info(
        "Drosophila values not turned into counts: largest distance from an integer %.3f", check["max_deviation"]
    )
    return Converted(
        ad.AnnData(X=to_float32_csr(values), obs=obs, var=var),
        x="log2(1 + library-size-scaled counts), as shipped (rounded to 3 decimals); not counts",
        transformations=[
            "transposed to cells x genes; counts not recovered: taking each cell's smallest value as one count, "
            f"entries lie up to {check['max_deviation']:.3f} from an integer "
            f"({check['share_nonzero_off_by_more_than_0.1']:.3%} of non-zero entries further than 0.1), "
            "so rounding would be ambiguous"
        ],
        extra={"count_recovery_check": check},
    )


def convert_mouse_10k_subset(files: Mapping[str, Path]) -> Converted:
    """scanpy's test matrix ``10x-10k-subset.zarr``: 10x mouse counts with gene symbols and Ensembl ids."""
    with warnings.catch_warnings():  # the duplicated symbols are made unique by standardize()
        warnings.filterwarnings("ignore", message="Variable names are not unique", category=UserWarning)
        try:
            source = ad.read_zarr(files["zarr"])
        except Exception as error:  # zarr raises many kinds of errors for a damaged store
            raise DatasetError(f"cannot read {files['zarr'].name}: {error}") from error
        counts, _ = round_to_counts(source.X, "mouse_10k_subset")
        var = pd.DataFrame(index=source.var_names.astype(str))
        var["gene_symbol"] = var.index
        var["ensembl_id"] = source.var["gene_ids"].astype(str).to_numpy()
        adata = ad.AnnData(X=counts, obs=pd.DataFrame(index=source.obs_names.astype(str)), var=var)
    return Converted(adata)


def _read_r_table(path: Path) -> tuple[list[str], pd.DataFrame, int]:
    """A tab-separated genes x cells table written by R (header: cell names only; rows: gene, then values).

    Returns the cell names of the value columns, the values (index genes) and how many header names were left
    over. A header with exactly one name more than the value columns is a file cut to a fixed number of fields
    per line: the names are the first ones.
    """
    try:
        with open(path) as handle:
            header = handle.readline().rstrip("\n").split("\t")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read {path.name}: {error}") from error
    table = _read_table(path, "\t", header=None, skiprows=1, index_col=0)
    n_values = table.shape[1]
    if len(header) not in (n_values, n_values + 1):
        raise DatasetError(f"{path.name}: {len(header)} cell names in the header for {n_values} value columns")
    return header[:n_values], table, len(header) - n_values


def convert_immune_control_stimulated(files: Mapping[str, Path]) -> Converted:
    """scvi-tools' ``immune_{control,stimulated}_expression_matrix.txt``: genes x cells, tab-separated counts.

    The two files are the first 99 genes and 99 cells of the Kang et al. (2018) PBMC matrices of the Seurat
    "immune alignment" tutorial, cut to 100 fields per line: the header lists 100 cell barcodes but each row holds
    a gene and 99 values, so the values belong to the first 99 barcodes (the 100th has none and is dropped).
    """
    parts, genes, dropped = [], None, {}
    for condition in ("control", "stimulated"):
        cells, table, dropped[condition] = _read_r_table(files[condition])
        if genes is not None and list(table.index) != genes:
            raise DatasetError(f"the {condition} matrix lists other genes than the control matrix")
        genes = [str(g) for g in table.index]
        counts, _ = round_to_counts(table.to_numpy(dtype=np.float64).T, f"immune {condition}")
        obs = pd.DataFrame({"condition": condition, "sample": condition}, index=pd.Index(cells, dtype=str))
        parts.append(ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str))))
    adata = ad.concat(parts, merge="same")
    if not adata.obs_names.is_unique:
        raise DatasetError("immune_control_stimulated: a barcode occurs in both conditions")
    adata.obs["condition"] = pd.Categorical(adata.obs["condition"], categories=["control", "stimulated"])
    adata.var["gene_symbol"] = adata.var_names
    transformations = [
        "genes x cells transposed to cells x genes; the two conditions concatenated, obs['condition'] and "
        "obs['sample'] = 'control' / 'stimulated'"
    ]
    if any(dropped.values()):
        transformations.append(
            "the header lists more barcodes than there are value columns (the file was cut to a fixed number of "
            f"fields per line); the values belong to the first barcodes, the others dropped ({dropped})"
        )
    return Converted(
        adata,
        transformations=transformations,
        extra={"smoke_test_only": True, "dropped_header_barcodes": dropped},
    )


def read_h5ad_in_zip(zip_path: Path, member: str) -> tuple[ad.AnnData, str]:
    """Read the h5ad ``member`` of the zip ``zip_path``: copied beside the zip (under its base name), then read.

    Returns
    -------
    tuple
        The AnnData and the sha256 of the member.

    Raises
    ------
    DatasetError
        When ``zip_path`` is not a zip, lacks ``member``, or the member is not a readable h5ad.
    """
    target = zip_path.parent / PurePosixPath(member).name  # a base name: nothing lands outside the folder
    try:
        with zipfile.ZipFile(zip_path) as zf, zf.open(member) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except KeyError as error:
        raise DatasetError(f"{zip_path.name} lacks the member {member!r}") from error
    except (OSError, zipfile.BadZipFile) as error:
        raise DatasetError(f"cannot read {member} from {zip_path.name}: {error}") from error
    try:
        return ad.read_h5ad(target), sha256_of(target)
    except Exception as error:  # h5py raises several kinds of errors for a damaged file
        raise DatasetError(f"cannot read {member} from {zip_path.name}: {error}") from error


_BARON_OBS = ("cell_ontology_class", "cell_type1", "donor")


def _convert_baron_pancreas(files: Mapping[str, Path], species: str) -> Converted:
    """came's ``sample_data.zip`` member ``raw-Baron_<species>.h5ad``: CSR float32 UMI counts, gene symbols."""
    member = f"raw-Baron_{species}.h5ad"
    source, digest = read_h5ad_in_zip(files["zip"], member)
    missing = [column for column in _BARON_OBS if column not in source.obs]
    if missing:
        raise DatasetError(f"{member} lacks the obs column(s) {missing}")
    counts, _ = round_to_counts(source.X, f"baron_{species}_pancreas")
    obs = source.obs.copy()
    obs["cell_type"] = obs["cell_ontology_class"]
    obs["sample"] = obs["donor"].astype(str)
    genes = source.var_names.astype(str)
    var = pd.DataFrame({"gene_symbol": genes}, index=genes)
    return Converted(
        ad.AnnData(X=counts, obs=obs, var=var),
        transformations=[
            "obs['cell_type'] = obs['cell_ontology_class'] and obs['sample'] = obs['donor'] "
            "(cell_type1 and the other shipped columns kept)"
        ],
        extra={"inner_member": member, "inner_member_sha256": digest},
    )


def convert_baron_human_pancreas(files: Mapping[str, Path]) -> Converted:
    """came's ``raw-Baron_human.h5ad`` (inside ``came/sample_data.zip``)."""
    return _convert_baron_pancreas(files, "human")


def convert_baron_mouse_pancreas(files: Mapping[str, Path]) -> Converted:
    """came's ``raw-Baron_mouse.h5ad`` (inside ``came/sample_data.zip``)."""
    return _convert_baron_pancreas(files, "mouse")


def convert_palantir_marrow(files: Mapping[str, Path]) -> Converted:
    """palantir's ``data/marrow_sample_scseq_counts.h5ad``: human marrow UMI counts, gene symbols, no annotations.

    The cell names start with the run (``Run4_...``, ``Run5_...``), kept in ``obs['run']``.
    """
    try:
        source = ad.read_h5ad(files["h5ad"])
    except Exception as error:  # h5py raises several kinds of errors for a damaged file
        raise DatasetError(f"cannot read {files['h5ad'].name}: {error}") from error
    counts, _ = round_to_counts(source.X, "palantir_marrow")
    obs = pd.DataFrame(index=source.obs_names.astype(str))
    obs["run"] = obs.index.str.split("_").str[0]
    genes = source.var_names.astype(str)
    var = pd.DataFrame({"gene_symbol": genes}, index=genes)
    return Converted(
        ad.AnnData(X=counts, obs=obs, var=var),
        transformations=["obs['run'] = the cell name's prefix before the first '_' (Run4 / Run5)"],
    )


def ensembl_to_symbol(ids: pd.Index, table: Path) -> pd.Series:
    """Symbols of the Ensembl gene ids ``ids`` from a cellex map (tab-separated, with ``ensembl_gene_id`` and
    ``gene_name_version``); None where an id is not in the table."""
    mapping = _read_table(table, "\t", usecols=["ensembl_gene_id", "gene_name_version"])
    names = mapping.drop_duplicates("ensembl_gene_id").set_index("ensembl_gene_id")["gene_name_version"]
    return pd.Series(ids.map(names.to_dict()), index=ids, dtype=object)


def convert_zeisel_brain_subset(files: Mapping[str, Path]) -> Converted:
    """cellex's ``zeisel2018_mousebrain_subset_{data,metadata}.csv.gz``: genes (Ensembl ids) x cells, integer counts,
    with one ``cell_type`` per cell.

    Symbols come from cellex's own Ensembl 90 mouse map (``Mus_musculus.GRCm38.ens_v90...txt.gz``, same archive);
    an id missing from the map keeps the id as its name, with an empty ``var['gene_symbol']``.
    """
    table = _read_table(files["data"], ",", index_col=0)
    metadata = _read_table(files["metadata"], ",", index_col=0)
    cells = table.columns.astype(str)
    if "cell_type" not in metadata or set(metadata.index.astype(str)) != set(cells):
        raise DatasetError(
            f"{files['metadata'].name}: expected a cell_type column and the {len(cells)} cells of the data "
            f"(found columns {list(metadata.columns)}, {len(metadata)} rows)"
        )
    counts, _ = round_to_counts(table.to_numpy(dtype=np.float64).T, "zeisel_brain_subset")
    obs = metadata.set_axis(metadata.index.astype(str)).loc[cells].copy()
    obs.index.name = None
    obs["library"] = obs.index.str.rsplit("_", n=1).str[0]
    ids = table.index.astype(str)
    symbols = ensembl_to_symbol(ids, files["genes"])
    mapped = symbols.notna().to_numpy()
    var = pd.DataFrame(
        {"gene_symbol": symbols.fillna("").to_numpy(), "ensembl_id": ids},
        index=pd.Index(np.where(mapped, symbols.to_numpy(), ids.to_numpy()), dtype=str),
    )
    return Converted(
        ad.AnnData(X=counts, obs=obs, var=var),
        transformations=[
            "genes x cells transposed to cells x genes; metadata rows aligned to the data's cells, "
            "obs['library'] = the cell name's prefix before the last '_' (the 10x sample, e.g. 10X57_6)",
            f"Ensembl ids mapped to symbols with cellex's Ensembl 90 mouse map ({int(mapped.sum())} of {len(ids)}); "
            f"the {int((~mapped).sum())} ids not in the map keep the id as their name (var['gene_symbol'] empty)",
        ],
        extra={"genes_without_symbol": int((~mapped).sum())},
    )


# --- uniform conventions --------------------------------------------------------------------------------------------


def standardize(converted: Converted, provenance: Mapping[str, Any], default_sample: str) -> ad.AnnData:
    """Apply the conventions shared by every data set and record the provenance.

    Parameters
    ----------
    converted
        A converter's result.
    provenance
        Entries for ``uns['dataset']`` (name, package, version, archive, ...); ``x``, ``transformations`` and the
        converter's extras are added here.
    default_sample
        ``obs['sample']`` where the converter set none.

    Returns
    -------
    AnnData
        float32 CSR ``X``; ``obs['sample']`` (and ``obs['cell_type']`` where present) categorical; unique
        ``var_names`` (gene symbols where known, the original symbol kept in ``var['gene_symbol']``).
    """
    adata = converted.adata
    transformations = list(converted.transformations)
    adata.X = to_float32_csr(adata.X)
    if "sample" not in adata.obs:
        adata.obs["sample"] = default_sample
    for column in ("sample", "cell_type"):
        if column in adata.obs:
            adata.obs[column] = adata.obs[column].astype(str).astype("category")
    adata.obs_names = adata.obs_names.astype(str)
    adata.var_names = adata.var_names.astype(str)
    duplicated = int(adata.var_names.duplicated().sum())
    if duplicated:
        adata.var_names_make_unique()
        transformations.append(
            f"{duplicated} duplicated gene symbol(s) made unique in var_names by appending -1, -2, ... "
            "(original symbols in var['gene_symbol'])"
        )
    if not adata.obs_names.is_unique:
        raise DatasetError(f"{provenance.get('name')}: duplicated cell names")
    adata.uns["dataset"] = {
        **provenance,
        "x": converted.x,
        "transformations": transformations or ["none"],
        "var_names_made_unique": duplicated,
        **converted.extra,
    }
    return adata
