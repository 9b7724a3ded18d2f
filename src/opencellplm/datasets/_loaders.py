"""One function per data set, each a thin, documented call of :func:`load_dataset`."""

from __future__ import annotations

import anndata as ad

from ._registry import PathLike, load_dataset

_PARAMETERS = """
    Parameters
    ----------
    cache_dir
        Cache folder; default ``$OPENCELLPLM_CACHE_DIR``, else ``~/.cache/opencellplm/datasets``. A package
        archive placed there by hand is used offline after its sha256 is checked.
    refresh
        Rebuild the cached h5ad from the archive.

    Raises
    ------
    DatasetError
        When the archive cannot be downloaded, a checksum does not match, or the files cannot be converted.
"""


def _document(function):
    function.__doc__ = function.__doc__.rstrip() + "\n" + _PARAMETERS
    return function


@_document
def pbmc68k_reduced(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """Human PBMCs: 700 cells x 765 genes, raw counts, 10 cell type labels.

    scanpy's ``scanpy/datasets/10x_pbmc68k_reduced.h5ad``: the installed scanpy's copy when it has one (no
    download, no cache; ``uns['dataset']`` names scanpy's version and the file's sha256), else the file in
    scanpy 1.11.5's wheel, fetched and cached as the other data sets. The counts are recovered from the
    shipped ``.raw`` as ``rint(expm1(raw.X) * obs['n_counts'] / 1e4)``; every value lies within 0.1 of an
    integer before rounding. ``obs['cell_type']`` holds ``bulk_labels`` (types assigned by correlation with
    bulk-sorted references);
    ``obs['louvain']`` and ``obs['phase']`` are kept. ``obs['n_counts']`` is each cell's total over all genes of
    the original matrix, not over the 765 kept here.

    Returns
    -------
    AnnData
        float32 CSR counts; ``var_names`` gene symbols.
    """
    return load_dataset("pbmc68k_reduced", cache_dir=cache_dir, refresh=refresh)


@_document
def pbmc3k(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """10x Genomics PBMC 3k: 2,700 cells x 32,738 genes, raw UMI counts, no labels.

    From desc 2.1.1's wheel (``desc/datasets/pbmc.h5ad``), read straight out of the wheel (desc is never
    imported).

    Returns
    -------
    AnnData
        float32 CSR counts; ``var_names`` gene symbols, ``var['ensembl_id']`` Ensembl ids.
    """
    return load_dataset("pbmc3k", cache_dir=cache_dir, refresh=refresh)


@_document
def celltypist_sample(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """celltypist's sample: 559 human cells x 32,786 genes, raw counts, no labels.

    From celltypist 1.7.1's wheel (``celltypist/data/samples/sample_cell_by_gene.csv``). The file writes counts
    as floats within 1e-10 of integers (``0.999999999999999``); they are rounded.

    Returns
    -------
    AnnData
        float32 CSR counts; ``var_names`` gene symbols (no Ensembl ids ship with it).
    """
    return load_dataset("celltypist_sample", cache_dir=cache_dir, refresh=refresh)


@_document
def merfish_u2os(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """MERFISH of U-2 OS cells: 1,368 cells (645 / 400 / 323 in three samples) x 12,903 genes, raw counts.

    From novosparc 0.4.4's source archive (``novosparc/datasets/osteosarcoma/dge_{1,2,3}.txt`` and
    ``geometry_{1,2,3}.txt``). ``obs['sample']`` is ``sample_1`` ... ``sample_3``; ``obsm['spatial']`` holds each
    cell's x, y in microns.

    Returns
    -------
    AnnData
        float32 CSR counts; ``var_names`` gene symbols.
    """
    return load_dataset("merfish_u2os", cache_dir=cache_dir, refresh=refresh)


@_document
def bdtnp_atlas(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """BDTNP Drosophila embryo atlas: 3,039 locations x 84 genes, normalized in-situ intensities (NOT counts).

    From novosparc 0.4.4's source archive (``novosparc/datasets/bdtnp/dge.txt`` and ``geometry.txt``; the
    first 3,039 of geometry's 6,078 rows are the locations' coordinates). ``obsm['spatial']`` is n x 3.

    Returns
    -------
    AnnData
        float32 CSR intensities in [0, ~2.4], as shipped; ``uns['dataset']['x']`` says so.
    """
    return load_dataset("bdtnp_atlas", cache_dir=cache_dir, refresh=refresh)


@_document
def drosophila_scrnaseq(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """Drosophila embryo Drop-seq: 1,297 cells x 8,924 genes, log2(1 + scaled counts) (NOT counts).

    From novosparc 0.4.4's source archive (``novosparc/datasets/drosophila_scRNAseq/dge_normalized.txt``, genes
    x cells, transposed here). The shipped values are rounded to 3 decimals; taking each cell's smallest value
    as one count, most entries come back as near-integers but some large ones do not (up to ~0.5 away), so the
    counts are not uniquely recoverable and the shipped values are kept. ``uns['dataset']['count_recovery_check']``
    holds the numbers. All 84 genes of :func:`bdtnp_atlas` are among the genes.

    Returns
    -------
    AnnData
        float32 CSR log2 values; ``uns['dataset']['x']`` says what they are.
    """
    return load_dataset("drosophila_scrnaseq", cache_dir=cache_dir, refresh=refresh)


@_document
def mouse_10k_subset(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """10x mouse cells: 10,000 cells x 1,000 genes, raw counts, no labels.

    From scanpy 1.11.5's source archive (``tests/_data/10x-10k-subset.zarr``). Duplicated gene symbols are made
    unique in ``var_names`` (``Rp1``, ``Rp1-1``); ``var['gene_symbol']`` keeps the original.

    Returns
    -------
    AnnData
        float32 CSR counts; ``var['ensembl_id']`` Ensembl ids.
    """
    return load_dataset("mouse_10k_subset", cache_dir=cache_dir, refresh=refresh)


@_document
def immune_control_stimulated(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """Human PBMCs, control and interferon-beta stimulated: 198 cells x 99 genes, raw UMI counts. Smoke test only.

    From scvi-tools 1.1.6's source archive (``tests/test_data/immune_control_expression_matrix.txt`` and
    ``immune_stimulated_expression_matrix.txt``): 99 cells of each condition from Kang et al. (2018), as used in
    Seurat's "immune alignment" tutorial, over 99 genes (10 markers such as CD3D, GNLY, CD79A, then the first genes
    of the original files, mostly unexpressed). The counts are very sparse (1.8% / 2.5% non-zero; median 2 / 15
    counts per cell over these genes; 28 control cells and 1 stimulated cell have none), so the data only exercise
    code paths.

    ``obs['condition']`` is ``"control"`` or ``"stimulated"`` (categorical) and ``obs['sample']`` the same. The
    stimulation is a treatment, not a gene perturbation: a perturbation task treats ``"stimulated"`` as one
    condition against the ``"control"`` cells. Each file's header lists one barcode more than its value columns;
    the values belong to the first 99 barcodes (``uns['dataset']['transformations']``).

    Returns
    -------
    AnnData
        float32 CSR counts; ``var_names`` gene symbols.
    """
    return load_dataset("immune_control_stimulated", cache_dir=cache_dir, refresh=refresh)


@_document
def baron_human_pancreas(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """Human pancreas (Baron et al. 2016, inDrop): 2,142 cells x 20,125 genes, raw UMI counts, 13 cell types.

    Homo sapiens, 4 donors (``human1`` ... ``human4``: 472 / 450 / 914 / 306 cells). From came 0.1.13's wheel:
    ``raw-Baron_human.h5ad`` inside ``came/sample_data.zip``, read straight out of the wheel (came is never
    imported). came calls it a 20% subsample of the original 8,569 cells; 2,142 is a quarter of them.

    ``obs['cell_type']`` holds the Cell Ontology labels (``cell_ontology_class``, 13 types, from
    ``type B pancreatic cell`` (623 cells) down to ``Schwann cell`` (2)). The shipped columns are kept:
    ``cell_ontology_class``, ``cell_ontology_id``, ``cell_type1`` (the authors' 14 labels, e.g. ``beta``,
    ``activated_stellate``), ``donor``, ``library``, ``platform``, ``organ``, ``organism``, ``dataset_name``.
    ``obs['sample']`` is the donor.

    Baron M. et al., "A Single-Cell Transcriptomic Map of the Human and Mouse Pancreas Reveals Inter- and
    Intra-cell Population Structure", Cell Systems 3(4):346-360 (2016).

    Returns
    -------
    AnnData
        float32 CSR counts; ``var_names`` gene symbols (no Ensembl ids ship with it).
    """
    return load_dataset("baron_human_pancreas", cache_dir=cache_dir, refresh=refresh)


@_document
def baron_mouse_pancreas(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """Mouse pancreas (Baron et al. 2016, inDrop): 1,886 cells x 14,877 genes, raw UMI counts, 12 cell types.

    Mus musculus, 2 donors (``mouse1``: 822 cells, ``mouse2``: 1,064), all the mouse cells of the study. From
    came 0.1.13's wheel: ``raw-Baron_mouse.h5ad`` inside ``came/sample_data.zip``, read straight out of the
    wheel (came is never imported).

    ``obs['cell_type']`` holds the Cell Ontology labels (``cell_ontology_class``, 12 types, from
    ``type B pancreatic cell`` (894 cells) down to ``Schwann cell`` (6)). The shipped columns are kept:
    ``cell_ontology_class``, ``cell_ontology_id``, ``cell_type1`` (the authors' 13 labels, e.g. ``beta``,
    ``immune_other``), ``donor``, ``library``, ``platform``, ``organ``, ``organism``, ``dataset_name``.
    ``obs['sample']`` is the donor.

    Baron M. et al., "A Single-Cell Transcriptomic Map of the Human and Mouse Pancreas Reveals Inter- and
    Intra-cell Population Structure", Cell Systems 3(4):346-360 (2016).

    Returns
    -------
    AnnData
        float32 CSR counts; ``var_names`` gene symbols (no Ensembl ids ship with it).
    """
    return load_dataset("baron_mouse_pancreas", cache_dir=cache_dir, refresh=refresh)


@_document
def palantir_marrow(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """Human bone marrow (Setty et al. 2019, 10x): 4,142 cells x 16,106 genes, raw UMI counts, no labels.

    Homo sapiens. From palantir 1.4.2's source archive: ``palantir-1.4.2/data/marrow_sample_scseq_counts.h5ad``
    (palantir is never imported), the marrow sample of palantir's tutorial. The shipped file holds only the
    counts (float32 CSR, all integers) with gene symbols; the cells come from two runs, kept in ``obs['run']``
    (``Run4``: 1,984 cells, ``Run5``: 2,158) from the cell names. The genes are those kept by the authors'
    filtering (16,106, not a whole reference). Median 8,435 counts per cell.

    Setty M. et al., "Characterization of cell fate probabilities in single-cell data with Palantir",
    Nature Biotechnology 37:451-460 (2019).

    Returns
    -------
    AnnData
        float32 CSR counts; ``var_names`` gene symbols (no Ensembl ids ship with it); ``obs['sample']`` is
        ``palantir_marrow`` for every cell.
    """
    return load_dataset("palantir_marrow", cache_dir=cache_dir, refresh=refresh)


@_document
def zeisel_brain_subset(*, cache_dir: PathLike | None = None, refresh: bool = False) -> ad.AnnData:
    """Mouse nervous system (Zeisel et al. 2018, 10x): 1,099 cells x 27,998 genes, raw UMI counts, 3 cell types.

    Mus musculus. From cellex 1.2.2's source archive (cellex is never imported): its benchmark subset
    ``tests/_benchmark/zeisel2018_mousebrain_subset_data.csv.gz`` (genes x cells, Ensembl ids, transposed here)
    and ``..._metadata.csv.gz``. ``obs['cell_type']`` is the metadata's ``cell_type`` (Zeisel et al.'s cluster
    names: ``PVM2`` 639 cells, ``DEINH3`` 323, ``ABC`` 137); ``obs['library']`` is the 10x sample in the cell
    name (``10X57_6``); ``obs['sample']`` is ``zeisel_brain_subset`` for every cell. Median 1,998 counts per cell.

    The file has Ensembl ids only: ``var_names`` are symbols from cellex's Ensembl 90 mouse map in the same
    archive (``cellex/utils/mapping/maps/Mus_musculus.GRCm38.ens_v90.gene_name_version2ensembl.txt.gz``), for
    27,748 of the 27,998 ids (all distinct); the 250 ids not in that map keep the id as their name, with an
    empty ``var['gene_symbol']``.

    Zeisel A. et al., "Molecular Architecture of the Mouse Nervous System", Cell 174(4):999-1014 (2018).

    Returns
    -------
    AnnData
        float32 CSR counts; ``var['ensembl_id']`` Ensembl ids, ``var['gene_symbol']`` symbols.
    """
    return load_dataset("zeisel_brain_subset", cache_dir=cache_dir, refresh=refresh)
