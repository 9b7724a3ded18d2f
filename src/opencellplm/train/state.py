"""The resumable training state: written atomically, read without unpickling objects."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
FORMAT = "opencellplm-train-state"


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically: a crash leaves the previous file intact."""
    target = directory / STATE_FILE
    partial = directory / f".{STATE_FILE}.partial"
    torch.save({"format": FORMAT} | state, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    return target


def load_state(directory: Path) -> dict[str, Any]:
    """Read ``directory/state.pt`` (tensors and plain containers only)."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume from: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an opencellplm training state")
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
