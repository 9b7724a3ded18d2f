"""Reusable torch blocks (no AnnData, no I/O)."""
