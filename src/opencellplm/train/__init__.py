"""Training: one trainer for pretraining and fine-tuning (one process, or many under torchrun)."""

from .pretrain import PretrainObjective, pretrain
from .probe import NeighbourhoodProbe
from .trainer import Distributed, Objective, ParamGroup, Trainer, TrainSummary

__all__ = [
    "Distributed",
    "NeighbourhoodProbe",
    "Objective",
    "ParamGroup",
    "PretrainObjective",
    "TrainSummary",
    "Trainer",
    "pretrain",
]
