"""Training: one trainer for pretraining and fine-tuning (one process, or many under torchrun)."""

from .pretrain import PretrainObjective, pretrain
from .trainer import Distributed, Objective, ParamGroup, Trainer

__all__ = ["Distributed", "Objective", "ParamGroup", "PretrainObjective", "Trainer", "pretrain"]
