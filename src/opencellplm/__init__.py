"""opencellplm: an open implementation of CellPLM, the single-cell cell language model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("opencellplm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from ._threads import set_threads, thread_settings
from .config import (
    AnnotationHeadConfig,
    ConfigError,
    DecoderConfig,
    EncoderConfig,
    LatentConfig,
    MaskingConfig,
    ModelConfig,
    TrainConfig,
)
from .io import CheckpointError
from .model import CellPLM
from .module import CellBatch, CellPLMModule, GMVAENoise

__all__ = [
    "AnnotationHeadConfig",
    "CellBatch",
    "CellPLM",
    "CellPLMModule",
    "CheckpointError",
    "ConfigError",
    "DecoderConfig",
    "EncoderConfig",
    "GMVAENoise",
    "LatentConfig",
    "MaskingConfig",
    "ModelConfig",
    "TrainConfig",
    "__version__",
    "set_threads",
    "thread_settings",
]
