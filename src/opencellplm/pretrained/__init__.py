"""Pretrained models shipped inside the package, loaded by name with no download.

``CellPLM.from_pretrained("cellplm-small")`` finds them here; each is a checkpoint directory
(see :mod:`opencellplm.io.checkpoint`) whose ``meta.json`` records its data, size, training time,
validation losses and the command that reproduces it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def available() -> list[str]:
    """Names of the shipped models."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "meta.json").is_file())


def path(name: str) -> Path:
    """The directory of shipped model ``name``."""
    if name not in available():
        raise KeyError(f"no shipped model named {name!r}; shipped: {available()}")
    return Path(str(resources.files(__name__).joinpath(name)))
