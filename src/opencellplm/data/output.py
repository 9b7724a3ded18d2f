"""Writing results to h5ad files (a copy of the input with a result added, or a new file) and JSON files: checked
before any work (:func:`~opencellplm._files.check_output_file`), locked while written, written whole or not at all,
and marked as this package's (so that ``overwrite`` may replace them later, and nothing else)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._files import (
    JSON_MARK,
    Recogniser,
    check_output_file,
    mark_h5ad,
    output_lock,
    written_file_problems,
    written_mark,
)
from .reader import open_h5ad, open_hdf5

logger = logging.getLogger(__name__)

#: The argument (and flag) naming the key a result is written to, per group.
_KEY_OPTION = {
    "obsm": "key_added (--key-added)",
    "layers": "layer_added (--layer-added)",
    "obs": "key_added (--key-added)",
}


def write_result_copy(
    source: str | Path,
    target: str | Path,
    group: str,
    key: str,
    compute: Callable[[AnnData], tuple[Any, dict[str, Any]]],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    reads: Iterable[str | None] = (),
) -> Path:
    """Write ``target``: a copy of ``source`` with ``compute``'s result in ``group[key]`` (``obsm`` or
    ``layers``) and its record in ``uns['cellplm'][key]`` (other records kept).

    Before ``compute`` runs on ``source`` opened with its counts on disk (:func:`~opencellplm.data.open_h5ad`):
    ``target`` is checked (not ``source`` nor another of ``inputs``, e.g. the checkpoint folder; not a folder;
    absent unless ``overwrite`` and written by this package), locked and its folder proven writable, and ``key``
    is checked (:func:`check_result_key`; ``reads``: the keys of ``group`` the computation reads). The copy is
    written beside ``target`` and renamed into place.
    """
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"input file not found: {source}")
    inputs = [source, *inputs]
    check_output_file(target, overwrite=overwrite, inputs=inputs)
    check_result_key(source, group, key, reads=reads)
    shape = []

    def write(partial: Path) -> None:
        with open_h5ad(source) as adata:
            value, record = compute(adata)
        _write_into_copy(source, partial, group, key, value, record)
        mark_h5ad(partial)
        shape.append(getattr(value, "shape", None))

    target = write_new_file(target, write, overwrite=overwrite, inputs=inputs, log=False)
    logger.info("wrote %s with %s[%r] of shape %s", target, group, key, shape[0])
    return target


def check_result_key(
    source: str | Path | AnnData,
    group: str,
    key: str,
    *,
    reads: Iterable[str | None] = (),
    companions: Iterable[tuple[str, str]] = (),
) -> None:
    """Refuse to write ``group[key]`` (``obs``, ``obsm`` or ``layers``) into a copy of ``source`` (an h5ad file
    or an AnnData) where that would replace the input's own data: a key the command reads (``reads``, e.g. the
    counts layer or the coordinates), or an existing key that this package did not write (no
    ``uns['cellplm'][key]`` record). ``companions``: further ``(group, key)`` entries written with ``key``
    under its record (e.g. an annotation's ``obs[key + '_probability']``), refused on the same terms."""
    option = _KEY_OPTION.get(group, "the key")
    if key in set(reads) - {None}:
        raise ValueError(
            f"{group}[{key!r}] is read by this command as input; writing the result there would replace it. "
            f"Choose another {option}"
        )
    entries = [(group, key), *companions]
    if isinstance(source, AnnData):
        existing = [(g, k) for g, k in entries if k in getattr(source, g).keys()]
        ours = key in (source.uns.get("cellplm") or {})
    else:
        with open_hdf5(source) as f:
            existing = [(g, k) for g, k in entries if g in f and k in f[g]]
            ours = "uns/cellplm" in f and key in f["uns/cellplm"]
    if existing and not ours:
        g, k = existing[0]
        raise ValueError(
            f"the input already has {g}[{k!r}], which opencellplm did not write; writing the result there "
            f"would replace it. Choose another {option}"
        )


def write_new_h5ad(
    target: str | Path,
    compute: Callable[[], AnnData],
    *,
    overwrite: bool = False,
    inputs: Sequence[str | Path | None] = (),
) -> Path:
    """Write the AnnData that ``compute`` returns to ``target``, whole or not at all (see :func:`write_new_file`),
    marked as written by this package."""

    def write(path: Path) -> None:
        compute().write_h5ad(path)
        mark_h5ad(path)

    return write_new_file(target, write, overwrite=overwrite, inputs=inputs)


def write_json(
    target: str | Path, data: dict[str, Any], *, overwrite: bool = False, inputs: Sequence[str | Path | None] = ()
) -> Path:
    """Write ``data`` as a JSON object to ``target`` (see :func:`write_new_file`), marked as written by this
    package (its first key, ``"written_by"``)."""
    text = json.dumps({JSON_MARK: written_mark()} | data, indent=2, default=str) + "\n"
    return write_new_file(target, lambda path: path.write_text(text), overwrite=overwrite, inputs=inputs)


def write_new_file(
    target: str | Path,
    write: Callable[[Path], Any],
    *,
    overwrite: bool = False,
    inputs: Sequence[str | Path | None] = (),
    log: bool = True,
    recognise: Recogniser | None = written_file_problems,
) -> Path:
    """Run ``write(path)`` on a hidden file beside ``target``, then rename it into place: whole or not at all.

    ``target`` is checked (:func:`~opencellplm._files.check_output_file`: not one of ``inputs`` nor inside one,
    not a folder, absent unless ``overwrite`` and ``recognise`` finds it is this package's; ``recognise=None``:
    the caller has made sure), locked and its folder proven writable before ``write`` runs; if ``write`` fails,
    the hidden file is removed and ``target`` is untouched.
    """
    check_output_file(target, overwrite=overwrite, inputs=inputs, recognise=recognise)
    with output_lock(target):
        target = check_output_file(target, overwrite=overwrite, inputs=inputs, recognise=recognise)
        partial = _reserve_partial(target)
        try:
            write(partial)
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
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
