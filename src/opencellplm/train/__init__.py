"""Pretraining: masked cell modelling on a prepared corpus, one process or many (torchrun)."""

from .loop import pretrain

__all__ = ["pretrain"]
