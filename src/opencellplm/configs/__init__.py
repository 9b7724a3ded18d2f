"""Named pretraining configurations: ``{"model": {...}, "train": {...}}`` JSON files."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import ConfigError, TrainConfig


def available() -> list[str]:
    """Names of the shipped configurations."""
    return sorted(p.name[: -len(".json")] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load(name_or_path: str | Path) -> tuple[dict[str, Any], TrainConfig]:
    """The model settings (a dict: the corpus completes it) and the training settings of a named
    configuration or of a JSON file."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text()
    elif str(name_or_path) in available():
        text = resources.files(__name__).joinpath(f"{name_or_path}.json").read_text()
    else:
        raise ConfigError(f"unknown configuration {str(name_or_path)!r}; choose one of {available()} or a JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{name_or_path}: not valid JSON: {err}") from None
    unknown = sorted(set(data) - {"model", "train", "description"})
    if unknown or "model" not in data:
        raise ConfigError(f"{name_or_path}: expected keys 'model' and 'train', found {sorted(data)}")
    return dict(data["model"]), TrainConfig.from_dict(data.get("train", {}))
