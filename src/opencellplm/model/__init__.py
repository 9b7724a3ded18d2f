from .cellplm import CellPLM

__all__ = ["CellPLM"]
