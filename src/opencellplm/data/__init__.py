"""From AnnData to model inputs: reading and checking, gene alignment, cell sets."""

from .cellsets import cell_sets, normalize_coordinates, spatial_tiles
from .genes import GeneAlignment, align_genes
from .perturbations import (
    CONTROL,
    SPLIT_GROUPS,
    Direction,
    GenePerturbation,
    PerturbationLabelError,
    PerturbationSplit,
    gears_split,
    parse_labels,
    parse_perturbation,
    perturbation_genes,
    perturbation_label,
)
from .reader import counts_matrix, iter_row_blocks, open_h5ad, read_rows
from .sets import CellSet, CellSets, InputSpec
from .validate import InputReport, coordinates, validate

__all__ = [
    "CONTROL",
    "SPLIT_GROUPS",
    "Direction",
    "GenePerturbation",
    "PerturbationLabelError",
    "PerturbationSplit",
    "gears_split",
    "parse_labels",
    "parse_perturbation",
    "perturbation_genes",
    "perturbation_label",
    "CellSet",
    "CellSets",
    "InputSpec",
    "GeneAlignment",
    "InputReport",
    "align_genes",
    "cell_sets",
    "coordinates",
    "counts_matrix",
    "iter_row_blocks",
    "normalize_coordinates",
    "open_h5ad",
    "read_rows",
    "spatial_tiles",
    "validate",
]
