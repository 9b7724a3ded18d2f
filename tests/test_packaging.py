"""Packaging: what the code imports, a fresh install brings."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {"leidenalg", "igraph", "sklearn"}  # the benchmark extra, imported where used


def test_every_module_imported_by_the_package_is_a_declared_dependency():
    """A fresh install gets what the code imports (h5py was imported but not declared)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    declared = {
        d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower().replace("-", "_")
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    imported = set()
    for path in (ROOT / "src" / "opencellplm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "opencellplm"}
    assert third_party - OPTIONAL <= declared, sorted(third_party - OPTIONAL - declared)
