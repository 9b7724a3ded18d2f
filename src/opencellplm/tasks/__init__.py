"""Downstream tasks on a CellPLM backbone, each with fit / predict / score / save / load."""

from .annotation import AnnotationRecipe, CellTypeAnnotator
from .denoising import Denoiser, DenoisingRecipe, DenoisingResult

__all__ = ["AnnotationRecipe", "CellTypeAnnotator", "Denoiser", "DenoisingRecipe", "DenoisingResult"]
