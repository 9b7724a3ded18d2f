"""Downstream tasks on a CellPLM backbone, each with fit / predict / score / save / load."""

from .annotation import AnnotationRecipe, CellTypeAnnotator

__all__ = ["AnnotationRecipe", "CellTypeAnnotator"]
