"""Pure torch modules of CellPLM: typed inputs and outputs, no AnnData, no I/O."""

from .cellplm import CellPLMModule
from .outputs import CellBatch, CellPLMOutput, GMVAENoise, LatentOutput, NBOutput

__all__ = ["CellBatch", "CellPLMModule", "CellPLMOutput", "GMVAENoise", "LatentOutput", "NBOutput"]
