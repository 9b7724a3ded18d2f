"""Helpers for tests, shipped so that downstream packages can use them too."""
