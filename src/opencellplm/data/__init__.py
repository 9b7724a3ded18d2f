"""From AnnData to model inputs: gene alignment, counts, cell sets."""

from .cellsets import cell_sets
from .genes import GeneAlignment, align_genes

__all__ = ["GeneAlignment", "align_genes", "cell_sets"]
