"""Downstream tasks on a CellPLM backbone, each with fit / predict / score / save / load."""

from .annotation import AnnotationRecipe, AnnotationScores, CellTypeAnnotator
from .clustering import ClusteringResult, score_clustering

__all__ = ["AnnotationRecipe", "AnnotationScores", "CellTypeAnnotator", "ClusteringResult", "score_clustering"]
