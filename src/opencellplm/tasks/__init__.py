"""Downstream tasks on a CellPLM backbone, each with fit / predict / score / save / load.

Every fine-tuned task is a :class:`~.base.FineTunedTask` with a :class:`~.base.FineTuneRecipe`, and every ``score``
returns a :class:`~.result.TaskResult` (one :class:`~.result.MethodScore` per method).
"""

from .annotation import AnnotationRecipe, AnnotationScores, CellTypeAnnotator
from .base import FineTunedTask, FineTuneRecipe
from .clustering import ClusteringResult, score_clustering
from .denoising import Denoiser, DenoisingRecipe, DenoisingResult
from .imputation import ImputationRecipe, ImputationResult, SpatialImputer
from .integration import BatchIntegrator, IntegrationRecipe, IntegrationResult, score_integration
from .perturbation import PerturbationPredictor, PerturbationRecipe, PerturbationResult
from .result import MethodScore, TaskResult

__all__ = [
    "AnnotationRecipe",
    "AnnotationScores",
    "BatchIntegrator",
    "CellTypeAnnotator",
    "ClusteringResult",
    "Denoiser",
    "DenoisingRecipe",
    "DenoisingResult",
    "FineTuneRecipe",
    "FineTunedTask",
    "ImputationRecipe",
    "ImputationResult",
    "IntegrationRecipe",
    "IntegrationResult",
    "MethodScore",
    "PerturbationPredictor",
    "PerturbationRecipe",
    "PerturbationResult",
    "SpatialImputer",
    "TaskResult",
    "score_clustering",
    "score_integration",
]
