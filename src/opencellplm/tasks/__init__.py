"""Downstream tasks on a CellPLM backbone, each with fit / predict / score / save / load."""

from .annotation import AnnotationRecipe, AnnotationScores, CellTypeAnnotator
from .clustering import ClusteringResult, score_clustering
from .denoising import Denoiser, DenoisingRecipe, DenoisingResult

__all__ = [
    "AnnotationRecipe",
    "AnnotationScores",
    "CellTypeAnnotator",
    "ClusteringResult",
    "Denoiser",
    "DenoisingRecipe",
    "DenoisingResult",
    "score_clustering",
]
