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

import numpy as np
from anndata import AnnData

from .._files import (
    H5AD_MARK,
    JSON_MARK,
    Recogniser,
    check_output_directory,
    check_output_file,
    mark_h5ad,
    output_lock,
    write_directory,
    written_file_problems,
    written_mark,
)
from .reader import open_h5ad, open_hdf5

logger = logging.getLogger(__name__)

ZARR = "zarr store"

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
    check_result_target(target, overwrite=overwrite, inputs=inputs)
    check_result_key(source, group, key, reads=reads)
    shape = []
    if is_zarr(target):

        def fill(folder: Path) -> None:
            with open_h5ad(source) as adata:
                value, record = compute(adata)
            _write_zarr_copy(source, folder, group, key, value, record)
            shape.append(getattr(value, "shape", None))

        target = Path(target)
        write_directory(target, fill, overwrite=overwrite, recognise=zarr_store_problems, kind=ZARR, inputs=inputs)
        logger.info("wrote %s with %s[%r] of shape %s", target, group, key, shape[0])
        return target

    def write(partial: Path) -> None:
        with open_h5ad(source) as adata:
            value, record = compute(adata)
        _write_into_copy(source, partial, group, key, value, record)
        mark_h5ad(partial)
        shape.append(getattr(value, "shape", None))

    target = write_new_file(target, write, overwrite=overwrite, inputs=inputs, log=False)
    logger.info("wrote %s with %s[%r] of shape %s", target, group, key, shape[0])
    return target


def is_zarr(target: str | Path) -> bool:
    """Whether a result goes to a zarr store (a folder named ``*.zarr``) rather than an h5ad file."""
    return Path(target).suffix == ".zarr"


def check_result_target(target: str | Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """:func:`~opencellplm._files.check_output_file` for an h5ad result, its folder counterpart for a zarr store
    (replaced only with ``overwrite`` and when this package wrote it)."""
    if is_zarr(target):
        inputs = [i for i in inputs if i is not None]
        return check_output_directory(target, overwrite=overwrite, recognise=zarr_store_problems, kind=ZARR,
                                      inputs=inputs)  # fmt: skip
    return check_output_file(target, overwrite=overwrite, inputs=inputs)


def zarr_store_problems(path: Path) -> list[str]:
    """``[]`` when ``path`` is a zarr store this package wrote (its root attribute :data:`H5AD_MARK`) that holds
    nothing but an AnnData's elements, else why it is not."""
    import zarr

    try:
        attributes = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as err:  # noqa: BLE001  zarr raises many kinds of errors for what is not a store
        return [f"not a zarr store ({type(err).__name__})"]
    if not str(attributes.get(H5AD_MARK, "")).startswith("opencellplm"):
        return [f"a zarr store without opencellplm's {H5AD_MARK!r} mark"]
    return [f"it holds {entry.name}" for entry in sorted(Path(path).iterdir()) if entry.name not in _ZARR_ENTRIES]


#: What a zarr store of an AnnData holds at its top: anndata's elements and zarr's metadata files (v2 and v3).
_ZARR_ENTRIES = {"X", "obs", "var", "obsm", "varm", "obsp", "varp", "layers", "uns", "raw"}
_ZARR_ENTRIES |= {".zattrs", ".zgroup", ".zmetadata", "zarr.json"}


#: Rows (or entries of a sparse matrix's arrays) copied at a time from the input into a zarr store.
_COPY_BLOCK = 1 << 22


def _write_zarr_copy(source: Path, folder: Path, group: str, key: str, value: Any, record: dict[str, Any]) -> None:
    """Write the h5ad ``source`` as the zarr store ``folder`` with ``value`` in ``group[key]`` and ``record`` in
    ``uns['cellplm'][key]``. Matrices (``X``, ``layers``) are copied block by block, never held whole."""
    import anndata
    import h5py
    import zarr
    from anndata.io import read_elem, write_elem

    try:  # the zarr format anndata writes (zarr 3 takes the choice; zarr 2 writes its own)
        root = zarr.open_group(str(folder), mode="w", zarr_format=getattr(anndata.settings, "zarr_write_format", 2))
    except TypeError:
        root = zarr.open_group(str(folder), mode="w")
    with h5py.File(source, "r") as f:
        root.attrs.update({k: _json_value(v) for k, v in f.attrs.items() if k != H5AD_MARK})
        records = read_elem(f["uns/cellplm"]) if "uns/cellplm" in f else {}
        for name, element in f.items():
            if name in ("layers", "raw") and isinstance(element, h5py.Group):  # matrices inside: X, layers
                copy = root.create_group(name)
                copy.attrs.update({k: _json_value(v) for k, v in element.attrs.items()})
                for entry, inner in element.items():
                    if name == "layers" or entry == "X":
                        _copy_matrix(inner, copy, entry)
                    else:
                        write_elem(copy, entry, read_elem(inner))
            elif name == "X":
                _copy_matrix(element, root, name)
            else:
                write_elem(root, name, read_elem(element))
    records[key] = record
    for parent, name, element in ((group, key, value), ("uns", "cellplm", records)):
        if parent in root:
            if name in root[parent]:
                del root[parent][name]
            write_elem(root[parent], name, element)
        else:
            write_elem(root, parent, {name: element})
    root.attrs[H5AD_MARK] = written_mark()


def _json_value(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _copy_matrix(element, parent, name: str) -> None:
    """Copy an h5ad matrix (dense, or CSR/CSC) into the zarr group ``parent`` in blocks."""
    import h5py
    from anndata.io import read_elem, write_elem

    if isinstance(element, h5py.Group) and set(element) >= {"data", "indices", "indptr"}:
        target = parent.create_group(name)
        target.attrs.update({k: _json_value(v) for k, v in element.attrs.items()})
        for part in ("data", "indices", "indptr"):
            _copy_array(element[part], target, part)
    elif isinstance(element, h5py.Dataset) and element.ndim == 2:
        _copy_array(element, parent, name)
        parent[name].attrs.update({k: _json_value(v) for k, v in element.attrs.items()})
    else:
        write_elem(parent, name, read_elem(element))


def _copy_array(dataset, parent, name: str) -> None:
    width = int(np.prod(dataset.shape[1:])) or 1
    step = max(1, _COPY_BLOCK // width)
    chunks = (min(max(dataset.shape[0], 1), step), *dataset.shape[1:])
    create = getattr(parent, "create_array", None) or parent.create_dataset  # zarr 3, zarr 2
    array = create(name, shape=dataset.shape, dtype=dataset.dtype, chunks=chunks)
    for start in range(0, dataset.shape[0], step):
        array[start : start + step] = dataset[start : start + step]


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
