"""Checkpoints: our own format and the official CellPLM release."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .official import config_from_official, load_official, official_state_dict_from, state_dict_from_official

__all__ = [
    "CheckpointError",
    "config_from_official",
    "load_checkpoint",
    "load_official",
    "official_state_dict_from",
    "save_checkpoint",
    "state_dict_from_official",
]
