"""``opencellplm benchmark``: the runners and the report of their results."""

from .report import write_report

__all__ = ["write_report"]
