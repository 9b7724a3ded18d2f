"""Pure torch modules of CellPLM: typed inputs and outputs, no AnnData, no I/O.

The backbone (:class:`CellPLMModule`) carries no task; each task's module and loss live beside it:
:mod:`.pretrain` (the reconstruction loss of pretraining and denoising), :mod:`.imputation`,
:mod:`.annotation` (:class:`~.annotation.AnnotationModule`) and :mod:`.perturbation`
(:class:`~.perturbation.PerturbationModule`).
"""

from .cellplm import CellPLMModule
from .outputs import CellBatch, CellPLMOutput, GMVAENoise, LatentOutput, NBOutput

__all__ = ["CellBatch", "CellPLMModule", "CellPLMOutput", "GMVAENoise", "LatentOutput", "NBOutput"]
