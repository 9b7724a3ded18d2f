"""Helpers for tests, shipped so that downstream packages can use them too."""

from .models import tiny_model
from .synthetic import synthetic_adata

__all__ = ["synthetic_adata", "tiny_model"]
