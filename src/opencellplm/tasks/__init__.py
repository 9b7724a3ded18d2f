"""Downstream tasks on a CellPLM backbone, each with fit / predict / score / save / load."""

from .annotation import AnnotationRecipe, AnnotationScores, CellTypeAnnotator
from .clustering import ClusteringResult, score_clustering
from .denoising import Denoiser, DenoisingRecipe, DenoisingResult
from .perturbation import PerturbationPredictor, PerturbationRecipe, PerturbationResult

__all__ = [
    "AnnotationRecipe",
    "AnnotationScores",
    "CellTypeAnnotator",
    "ClusteringResult",
    "Denoiser",
    "DenoisingRecipe",
    "DenoisingResult",
    "PerturbationPredictor",
    "PerturbationRecipe",
    "PerturbationResult",
    "score_clustering",
]
