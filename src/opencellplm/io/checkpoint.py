"""Our checkpoint format: a directory with four files, and an optional fifth.

* ``config.json``: :class:`~opencellplm.config.ModelConfig` (hyperparameters only);
* ``genes.txt``: the gene vocabulary, one id per line, in embedding-row order;
* ``model.safetensors``: the weights (no pickle anywhere);
* ``meta.json``: format version, package version, provenance, free-form metrics;
* ``gene_aliases.tsv`` (optional): ``meta["gene_aliases"]``, input ids read as another vocabulary id after the
  gene id rule (e.g. mouse symbols -> the human orthologs the corpus was mapped with), a header line
  ``input_id<TAB>vocabulary_id`` then one pair per line. Without it, ids match through the rule alone.

Saving is atomic (written beside, then moved into place) and loading is strict.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._files import check_output_directory, marker_problems, write_directory
from ..config import ConfigError, ModelConfig
from ..data.genes import GENE_ID_RULES, alias_problems, gene_list_problems
from ..module import CellPLMModule
from ..module.annotation import build_module, module_config, read_module_config
from .errors import CheckpointError, key_mismatches, tensor_problems

logger = logging.getLogger(__name__)

FORMAT = "opencellplm-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE, GENES_FILE, WEIGHTS_FILE, META_FILE = "config.json", "genes.txt", "model.safetensors", "meta.json"
CHECKPOINT_FILES = (CONFIG_FILE, GENES_FILE, WEIGHTS_FILE, META_FILE)
ALIASES_FILE = "gene_aliases.tsv"
ALIASES_HEADER = "input_id\tvocabulary_id"

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(
    directory: str | Path,
    module: CellPLMModule,
    genes: list[str],
    *,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Write ``module`` and its vocabulary to ``directory``; ``meta["gene_aliases"]``, when not empty, goes to
    ``gene_aliases.tsv``.

    An existing non-empty ``directory`` is replaced only with ``overwrite``, and only when it is a
    checkpoint this package wrote holding nothing else, and none of ``inputs`` (the files the
    model came from) is inside it.
    """
    from .. import __version__

    if len(genes) != module.config.n_genes:
        raise CheckpointError(f"{len(genes)} genes given for a model with {module.config.n_genes} gene embeddings")
    problems = gene_list_problems(genes)
    if problems:
        raise CheckpointError("the vocabulary cannot be written one id per line: " + "; ".join(problems[:5]))
    aliases = dict((meta or {}).get("gene_aliases") or {})
    problems = alias_problems(aliases, genes)
    if problems:
        raise CheckpointError("the gene aliases do not fit the vocabulary: " + "; ".join(problems[:5]))
    target = {"overwrite": overwrite, "recognise": checkpoint_problems, "kind": "checkpoint", "inputs": inputs}
    directory = check_output_directory(directory, **target)
    info = {k: v for k, v in (meta or {}).items() if k != "gene_aliases"} | {  # this save's facts win
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "opencellplm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_parameters": module.n_parameters(),
    }

    def fill(folder: Path) -> None:
        (folder / CONFIG_FILE).write_text(json.dumps(module_config(module), indent=2) + "\n")
        (folder / GENES_FILE).write_text("".join(f"{g}\n" for g in genes))
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        (folder / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if aliases:
            lines = [ALIASES_HEADER, *(f"{k}\t{v}" for k, v in sorted(aliases.items()))]
            (folder / ALIASES_FILE).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    write_directory(directory, fill, **target)
    logger.info("saved checkpoint to %s", directory)
    return directory


def checkpoint_problems(folder: Path) -> list[str]:
    """Why ``folder`` is not a checkpoint written by this package holding nothing else (empty if it is)."""
    known = (*CHECKPOINT_FILES, ALIASES_FILE)
    extra = [f"it holds {p.name}" for p in sorted(folder.iterdir()) if p.name not in known]
    return marker_problems(folder / META_FILE, FORMAT) + extra


def load_checkpoint(directory: str | Path) -> tuple[CellPLMModule, list[str], dict[str, Any]]:
    """Read a checkpoint directory; returns ``(module in eval mode, genes, meta)``, with ``meta["gene_aliases"]``
    read from ``gene_aliases.tsv`` where there is one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    absent = [f for f in CHECKPOINT_FILES if not (directory / f).is_file()]
    if absent:
        present = sorted(p.name for p in directory.iterdir())
        raise CheckpointError(f"{directory} is not a checkpoint: missing {absent} (found {present})")
    try:
        config, head = read_module_config(_read_json(directory / CONFIG_FILE))
    except ConfigError as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {err}") from None
    meta = _read_json(directory / META_FILE)
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / META_FILE} declares format {meta.get('format')!r} version {meta.get('format_version')!r}; "
            f"this opencellplm reads {FORMAT!r} up to version {FORMAT_VERSION}"
        )
    if meta.get("gene_id_rule", "exact") not in GENE_ID_RULES:
        raise CheckpointError(
            f"{directory / META_FILE}: gene_id_rule {meta['gene_id_rule']!r} is not one of {list(GENE_ID_RULES)}"
        )
    genes = read_genes_file(directory / GENES_FILE)
    if "gene_aliases" in meta:
        raise CheckpointError(
            f"{directory / META_FILE} holds gene_aliases; a checkpoint keeps them in {ALIASES_FILE} (input_id, "
            "vocabulary_id), beside meta.json"
        )
    if (directory / ALIASES_FILE).exists():
        meta["gene_aliases"] = read_aliases_file(directory / ALIASES_FILE, genes)
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {directory / WEIGHTS_FILE}: {err}") from None
    _check_vocabulary(genes, config, state, directory)
    module = build_module(config, head)  # with the cell-type head of an annotator
    _check_keys(module.state_dict(), state, directory / WEIGHTS_FILE)
    module.load_state_dict(state, strict=True)
    return module.eval(), genes, meta


def read_genes_file(path: Path) -> list[str]:
    """One gene id per line, in embedding-row order; blank, padded or repeated ids are refused by line."""
    try:
        genes = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    problems = gene_list_problems(genes)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(
            f"{path}: " + "; ".join(problems[:5]) + more + ". Each line must hold one gene id, the id of the "
            "embedding row of the same number: a blank or extra line shifts every later gene"
        )
    return genes


def read_aliases_file(path: Path, genes: list[str]) -> dict[str, str]:
    """``input_id<TAB>vocabulary_id`` pairs after a header line; malformed or repeated lines, and aliases
    that do not fit the vocabulary ``genes``, are refused by line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not lines or lines[0] != ALIASES_HEADER:
        first = repr(lines[0]) if lines else "nothing"
        raise CheckpointError(f"{path} must start with the header line {ALIASES_HEADER!r}, found {first}")
    aliases: dict[str, str] = {}
    problems = []
    known = set(genes)
    for number, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != 2:
            problems.append(f"line {number} ({line!r}) is not two tab-separated ids")
        elif fields[0] in aliases:
            problems.append(f"line {number} repeats the input id {fields[0]!r}")
        else:
            problems += [f"line {number}: {p}" for p in alias_problems({fields[0]: fields[1]}, known)]
            aliases[fields[0]] = fields[1]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(
            f"{path}: " + "; ".join(problems[:5]) + more + f". Each line maps an input id (after the gene id rule) "
            f"to an id of {GENES_FILE}"
        )
    return aliases


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path} as JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _check_vocabulary(genes: list[str], config: ModelConfig, state: dict[str, torch.Tensor], directory: Path) -> None:
    rows = state.get("embedder.gene_embedding")
    n_rows = None if rows is None else rows.shape[0]
    if len(genes) != config.n_genes or (n_rows is not None and n_rows != len(genes)):
        raise CheckpointError(
            f"the vocabulary does not match the weights in {directory}: {GENES_FILE} lists {len(genes)} genes, "
            f"config.json says n_genes={config.n_genes}, the gene embedding has {n_rows} rows"
        )


def _check_keys(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: Path) -> None:
    problems = key_mismatches({k: v.shape for k, v in expected.items()}, {k: v.shape for k, v in found.items()})
    problems += tensor_problems({k: v.dtype for k, v in expected.items()}, found)
    if problems:
        raise CheckpointError(f"{path} does not match its config: " + "; ".join(problems))
