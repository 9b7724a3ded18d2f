"""Writing results to h5ad files (a copy of the input with a result added, or a new file): checked before any work,
written whole or not at all."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._files import check_output_file
from .reader import open_h5ad

logger = logging.getLogger(__name__)


def write_result_copy(
    source: str | Path,
    target: str | Path,
    group: str,
    key: str,
    compute: Callable[[AnnData], tuple[Any, dict[str, Any]]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``target``: a copy of ``source`` with ``compute``'s result in ``group[key]`` (``obsm`` or
    ``layers``) and its record in ``uns['cellplm'][key]`` (other records kept).

    ``target`` is checked (not an input, not a folder, absent unless ``overwrite``) and its folder proven
    writable before ``compute`` runs on ``source`` opened with its counts on disk
    (:func:`~opencellplm.data.open_h5ad`). The copy is written beside ``target`` and renamed into place.
    """
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"input file not found: {source}")
    target = check_output_file(target, overwrite=overwrite, inputs=[source])
    partial = _reserve_partial(target)
    try:
        with open_h5ad(source) as adata:
            value, record = compute(adata)
        _write_into_copy(source, partial, group, key, value, record)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    logger.info("wrote %s with %s[%r] of shape %s", target, group, key, getattr(value, "shape", None))
    return target


def write_new_h5ad(
    target: str | Path, compute: Callable[[], AnnData], *, overwrite: bool = False, inputs: Sequence[str | Path] = ()
) -> Path:
    """Write the AnnData that ``compute`` returns to ``target``, whole or not at all (see :func:`write_new_file`)."""
    return write_new_file(target, lambda path: compute().write_h5ad(path), overwrite=overwrite, inputs=inputs)


def write_new_file(
    target: str | Path,
    write: Callable[[Path], Any],
    *,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    log: bool = True,
) -> Path:
    """Run ``write(path)`` on a hidden file beside ``target``, then rename it into place: whole or not at all.

    ``target`` is checked (not one of ``inputs``, not a folder, absent unless ``overwrite``) and its folder proven
    writable before ``write`` runs; if ``write`` fails, the hidden file is removed and ``target`` is untouched.
    """
    target = check_output_file(target, overwrite=overwrite, inputs=inputs)
    partial = _reserve_partial(target)
    try:
        write(partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    if log:
        logger.info("wrote %s", target)
    return target


def _reserve_partial(target: Path) -> Path:
    """Create the hidden file the output is written to, proving that ``target``'s folder is writable."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.open("wb").close()
    except OSError as err:
        raise PermissionError(f"cannot write the output {target}: {err.strerror or err}") from None
    return partial


def _write_into_copy(source: Path, copy: Path, group: str, key: str, value: Any, record: dict[str, Any]) -> None:
    import h5py
    from anndata.io import read_elem, write_elem

    shutil.copyfile(source, copy)
    with h5py.File(copy, "r+") as f:
        records = read_elem(f["uns/cellplm"]) if "uns/cellplm" in f else {}
        records[key] = record
        for path in (f"{group}/{key}", "uns/cellplm"):
            if path in f:
                del f[path]
        for parent, name, element in ((group, key, value), ("uns", "cellplm", records)):
            if parent in f:
                write_elem(f[parent], name, element)
            else:  # files written element by element may lack the group
                write_elem(f, parent, {name: element})
