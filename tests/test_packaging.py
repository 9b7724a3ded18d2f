"""Packaging: what the code imports, a fresh install brings."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Import names whose distribution is named differently.
DISTRIBUTION = {"sklearn": "scikit_learn", "scvi": "scvi_tools", "magic": "magic_impute", "tangram": "tangram_sc"}
#: Imported lazily where used, from an extra (``pip install 'opencellplm[scvi]'``).
OPTIONAL = {"scvi", "magic", "celltypist", "tangram", "tiledbsoma", "cellxgene_census"}


def _name(requirement: str) -> str:
    return requirement.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower().replace("-", "_")


def test_every_module_imported_by_the_package_is_a_declared_dependency():
    """A fresh install gets what the code imports (h5py was imported but not declared)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(d) for d in project["dependencies"]}
    extras = {_name(d) for group in project["optional-dependencies"].values() for d in group}
    imported = set()
    for path in (ROOT / "src" / "opencellplm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {DISTRIBUTION.get(m, m) for m in imported if m not in sys.stdlib_module_names and m != "opencellplm"}
    optional = {DISTRIBUTION.get(m, m) for m in OPTIONAL}
    assert third_party - optional <= declared, sorted(third_party - optional - declared)
    assert optional <= extras, sorted(optional - extras)  # each optional import has its extra
