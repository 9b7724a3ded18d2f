"""Perturbation labels: parsing, canonical form, and the GEARS "simulation" split.

Label grammar
-------------
A label names what was done to the cells of one condition of a Perturb-seq experiment:

- the control label (``"ctrl"`` by default, configurable with ``control=``) marks unperturbed control cells;
- any other label is one or more *tokens* joined by ``+``;
- a token is a gene id, optionally followed by a direction suffix: ``:down`` (knock-down, CRISPRi) or ``:up``
  (activation, CRISPRa); a token without a suffix takes ``default_direction`` (``"down"`` unless told);
- a token equal to the control label inside a combination is ignored (GEARS writes singles as ``"GENE+ctrl"``),
  so ``"A+ctrl"`` means ``"A"``;
- whitespace around tokens and around the suffix is stripped.

Refused (:class:`PerturbationLabelError`, a ``ValueError``): a label that is not a string (or is NaN/None), an
empty label, the text of a missing value (``"nan"``, ``"None"``, ``"NA"``, ``"<NA>"``, ``"null"``: never a gene), an
empty token (``"A++B"``, ``"+A"``, ``"A+"``), an empty gene (``":up"``), an unknown suffix (``"A:sideways"``) and
the same gene twice in one label (``"A+A"``, ``"A:up+A"``). Each message quotes the bad label and states the
expected form. A task reading labels from an ``obs`` column leaves cells with a missing label out
(:func:`label_values`).

The canonical label of a set of gene perturbations (:func:`perturbation_label`) lists the genes sorted by name,
joined by ``+``, with ``:up`` written for activations and no suffix for knock-downs: ``"B+A:up"`` becomes
``"A:up+B"``. Parsing gives the same sorted tuple for every spelling of one perturbation.

Splits
------
:func:`gears_split` implements the GEARS "simulation" split (Roohani et al. 2023, ``DataSplitter``): test
perturbations are never seen in training, and the test labels fall into the groups ``single_unseen``,
``combo_seen0``, ``combo_seen1`` and ``combo_seen2``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd

from .labels import MISSING_TEXTS

logger = logging.getLogger(__name__)

Direction = Literal["down", "up"]
#: The default control label.
CONTROL = "ctrl"
#: The groups of test labels of :func:`gears_split`.
SPLIT_GROUPS: tuple[str, ...] = ("single_unseen", "combo_seen0", "combo_seen1", "combo_seen2")
_DIRECTIONS: tuple[str, ...] = get_args(Direction)
_SHOWN = 5


@dataclass(frozen=True, order=True)
class GenePerturbation:
    """One perturbed gene and the direction of its perturbation.

    Attributes
    ----------
    gene
        The gene id, as written in the label.
    direction
        ``"down"`` (knock-down / CRISPRi) or ``"up"`` (activation / CRISPRa).
    """

    gene: str
    direction: Direction = "down"

    def __post_init__(self) -> None:
        if not isinstance(self.gene, str) or not self.gene:
            raise ValueError(f"gene must be a non-empty string, got {self.gene!r}")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'down' or 'up', got {self.direction!r}")


class PerturbationLabelError(ValueError):
    """A perturbation label that does not follow the grammar of :mod:`opencellplm.data.perturbations`."""


def _expected(control: str) -> str:
    return (
        f'expected "{control}" or genes joined by "+", each optionally suffixed ":down" or ":up" '
        '(e.g. "KLF1+MAP2K6:up")'
    )


def _check_options(control: str, default_direction: str) -> None:
    if not isinstance(control, str) or not control.strip() or any(c in control for c in "+:"):
        raise ValueError(f'control must be a non-empty string without "+" or ":", got {control!r}')
    if default_direction not in _DIRECTIONS:
        raise ValueError(f"default_direction must be 'down' or 'up', got {default_direction!r}")


def _parse(label, control: str, default_direction: str) -> tuple[GenePerturbation, ...]:
    """Parse one label, raising :class:`PerturbationLabelError` with the reason (without the expected form)."""
    if not isinstance(label, str):
        raise PerturbationLabelError(f"label {label!r} is not a string (type {type(label).__name__})")
    text = label.strip()
    if not text:
        raise PerturbationLabelError(f"label {label!r} is empty")
    if text.lower() in MISSING_TEXTS:
        raise PerturbationLabelError(f"label {label!r} is the text of a missing value, not a perturbation")
    if text == control:
        return ()
    genes: dict[str, GenePerturbation] = {}
    for token in text.split("+"):
        token = token.strip()
        if not token:
            raise PerturbationLabelError(f"label {label!r} has an empty token (check the '+' signs)")
        if token == control:
            continue
        gene, colon, suffix = token.partition(":")
        gene, suffix = gene.strip(), suffix.strip()
        if not gene:
            raise PerturbationLabelError(f"label {label!r} has a token without a gene ({token!r})")
        if colon and suffix not in _DIRECTIONS:
            raise PerturbationLabelError(f"label {label!r} has an unknown suffix {':' + suffix!r} in {token!r}")
        if gene in genes:
            raise PerturbationLabelError(f"label {label!r} names gene {gene!r} twice")
        genes[gene] = GenePerturbation(gene, suffix if colon else default_direction)
    return tuple(sorted(genes.values()))


def parse_perturbation(
    label: str, *, control: str = CONTROL, default_direction: Direction = "down"
) -> tuple[GenePerturbation, ...]:
    """Parse one perturbation label.

    Parameters
    ----------
    label
        A label in the grammar of this module, e.g. ``"ctrl"``, ``"KLF1"``, ``"KLF1+MAP2K6:up"``, ``"KLF1+ctrl"``.
    control
        The control label.
    default_direction
        Direction of a token without a suffix.

    Returns
    -------
    tuple of GenePerturbation
        Sorted by gene name (so ``"B+A"`` and ``"A+B"`` give the same tuple); ``()`` for the control label (and for
        a label made only of control tokens, such as ``"ctrl+ctrl"``).

    Raises
    ------
    PerturbationLabelError
        For a label outside the grammar; the message quotes it and states the expected form.
    """
    _check_options(control, default_direction)
    try:
        return _parse(label, control, default_direction)
    except PerturbationLabelError as error:
        raise PerturbationLabelError(f"{error}; {_expected(control)}") from None


def parse_labels(
    labels: Iterable | np.ndarray | pd.Series, *, control: str = CONTROL, default_direction: Direction = "down"
) -> dict[str, tuple[GenePerturbation, ...]]:
    """Parse the unique labels of an array, Series or list.

    Parameters
    ----------
    labels
        Labels, one per cell or per condition; repeats are parsed once.
    control, default_direction
        As in :func:`parse_perturbation`.

    Returns
    -------
    dict of str to tuple of GenePerturbation
        Each unique label (as given) -> its parsed form, in order of first appearance.

    Raises
    ------
    PerturbationLabelError
        Listing up to 5 of the bad labels with the reason for each, how many there are in all, and the expected
        form; every label is checked before raising.
    """
    _check_options(control, default_direction)
    if isinstance(labels, str):
        raise ValueError(f"labels must be a collection of labels, got the string {labels!r}; use parse_perturbation")
    values = labels.tolist() if isinstance(labels, pd.Series | pd.Index | np.ndarray | pd.Categorical) else labels
    parsed: dict[str, tuple[GenePerturbation, ...]] = {}
    bad: dict[str, str] = {}  # repr of the label -> reason
    for value in values:
        if isinstance(value, str) and value in parsed:
            continue
        try:
            parsed[value] = _parse(value, control, default_direction)
        except PerturbationLabelError as error:
            bad.setdefault(repr(value), str(error))
    if bad:
        shown = "; ".join(list(bad.values())[:_SHOWN])
        more = f" (showing {_SHOWN})" if len(bad) > _SHOWN else ""
        raise PerturbationLabelError(f"{len(bad)} bad perturbation label(s){more}: {shown}. {_expected(control)}")
    return parsed


def perturbation_label(genes: Sequence[GenePerturbation], *, control: str = CONTROL) -> str:
    """The canonical label of a set of gene perturbations.

    Parameters
    ----------
    genes
        Gene perturbations (any order); empty for the control.
    control
        The control label, returned for an empty ``genes``.

    Returns
    -------
    str
        Genes sorted by name, joined by ``+``; ``:up`` written for activations, no suffix for knock-downs
        (``"A:up+B"``). ``parse_perturbation(perturbation_label(g)) == tuple(sorted(g))`` for knock-down default.

    Raises
    ------
    ValueError
        When an entry is not a :class:`GenePerturbation`, a gene appears twice, or a gene name holds ``+`` or
        ``:`` or equals the control label (it could not be parsed back).
    """
    _check_options(control, "down")
    items = list(genes)
    for item in items:
        if not isinstance(item, GenePerturbation):
            raise ValueError(f"expected GenePerturbation entries, got {item!r}")
        if any(c in item.gene for c in "+:") or item.gene.strip() != item.gene or item.gene == control:
            raise ValueError(
                f"gene {item.gene!r} cannot be written in a label: gene ids hold no '+' or ':', no surrounding "
                f"whitespace, and differ from the control label {control!r}"
            )
    names = [item.gene for item in items]
    if len(set(names)) != len(names):
        raise ValueError(f"a gene appears twice in {names}")
    if not items:
        return control
    return "+".join(g.gene + (":up" if g.direction == "up" else "") for g in sorted(items))


def perturbation_genes(parsed: Mapping[str, tuple[GenePerturbation, ...]]) -> list[str]:
    """The perturbed genes of parsed labels (from :func:`parse_labels`), sorted and unique."""
    return sorted({g.gene for genes in parsed.values() for g in genes})


# ---------------------------------------------------------------------------------------------------------------
# the GEARS "simulation" split


@dataclass(frozen=True)
class PerturbationSplit:
    """Training and test perturbation labels (GEARS "simulation" split).

    Attributes
    ----------
    train
        Training labels (single-gene perturbations of the seen genes and the held-in ``combo_seen2``
        combinations), sorted. The control label is in neither list.
    test
        Test labels, sorted; none of them is in ``train``.
    groups
        Test label -> ``"single_unseen"``, ``"combo_seen0"``, ``"combo_seen1"`` or ``"combo_seen2"``.
    seed
        Seed of the split.
    control
        The labels parsed as the control (in neither list).
    """

    train: list[str]
    test: list[str]
    groups: dict[str, str]
    seed: int
    control: list[str] = field(default_factory=list)

    def group_sizes(self) -> dict[str, int]:
        """Number of test labels in each group (every group listed, 0 when empty)."""
        sizes = dict.fromkeys(SPLIT_GROUPS, 0)
        for group in self.groups.values():
            sizes[group] += 1
        return sizes


def gears_split(
    parsed: Mapping[str, tuple[GenePerturbation, ...]],
    *,
    test_fraction: float = 0.25,
    combo_seen2_test_fraction: float = 0.25,
    seed: int = 0,
) -> PerturbationSplit:
    """Split perturbation labels the GEARS "simulation" way: test perturbations never seen in training.

    GEARS (Roohani et al. 2023, ``DataSplitter.get_simulation_split``) holds out a share of the perturbed genes;
    here (as the group names say) a gene counts as *seen* when its single-gene perturbation is trained on alone:

    1. a seeded ``test_fraction`` of the single-gene labels is held out (``round``, at least 1 and at most all
       but 1 when there are 2 or more): ``single_unseen``;
    2. each combination is classified by how many of its genes are seen (their single label is in training):
       ``combo_seen0``, ``combo_seen1``, ``combo_seen2``. A gene that has no single label at all is unseen;
    3. as in GEARS, every ``combo_seen0`` and ``combo_seen1`` combination goes to test (so an unseen gene occurs in
       no training label at all), and a seeded ``combo_seen2_test_fraction`` of the ``combo_seen2`` combinations
       goes to test (at least 1 when there are 2 or more, at least 1 kept for training); the rest train.

    Singles and combinations are matched with their direction: ``A:up`` alone does not make ``A`` (down) seen.

    Parameters
    ----------
    parsed
        Label -> parsed genes (from :func:`parse_labels`); the control (``()``) is set aside.
    test_fraction
        Share of single-gene labels held out, in (0, 1) (GEARS: ``1 - train_gene_set_size`` = 0.25).
    combo_seen2_test_fraction
        Share of ``combo_seen2`` combinations held out, in [0, 1) (GEARS: ``1 - combo_seen2_train_frac`` = 0.25).
    seed
        Seed of both draws.

    Returns
    -------
    PerturbationSplit

    Raises
    ------
    ValueError
        For fractions out of range, a label with more than 2 genes (the groups are defined for pairs), or when
        there is no single-gene label.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    if not 0.0 <= combo_seen2_test_fraction < 1.0:
        raise ValueError(f"combo_seen2_test_fraction must lie in [0, 1), got {combo_seen2_test_fraction!r}")
    too_many = sorted(label for label, genes in parsed.items() if len(genes) > 2)
    if too_many:
        raise ValueError(
            f"gears_split handles single genes and pairs; {len(too_many)} label(s) perturb more than 2 genes: "
            f"{too_many[:_SHOWN]}"
        )
    control = sorted(label for label, genes in parsed.items() if len(genes) == 0)
    singles = sorted(label for label, genes in parsed.items() if len(genes) == 1)
    combos = sorted(label for label, genes in parsed.items() if len(genes) == 2)
    if not singles:
        raise ValueError("gears_split needs single-gene labels to hold out; none found among the parsed labels")
    rng = np.random.default_rng(seed)
    n_hold = _share(len(singles), test_fraction)
    held = set(rng.choice(singles, size=n_hold, replace=False).tolist()) if n_hold else set()
    seen = {parsed[label][0] for label in singles if label not in held}

    groups = {label: "single_unseen" for label in held}
    by_group: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for label in combos:
        by_group[sum(g in seen for g in parsed[label])].append(label)
    for k in (0, 1):
        groups.update(dict.fromkeys(by_group[k], f"combo_seen{k}"))
    seen2 = by_group[2]
    n_seen2_test = _share(len(seen2), combo_seen2_test_fraction) if combo_seen2_test_fraction > 0 else 0
    if n_seen2_test:
        groups.update(dict.fromkeys(rng.choice(seen2, size=n_seen2_test, replace=False).tolist(), "combo_seen2"))
    train = sorted(label for label in singles + combos if label not in groups)
    split = PerturbationSplit(
        train=train, test=sorted(groups), groups=dict(sorted(groups.items())), seed=seed, control=control
    )
    logger.info(
        "gears_split (seed %d): %d train, %d test labels %s", seed, len(train), len(groups), split.group_sizes()
    )
    return split


def _share(n: int, fraction: float) -> int:
    """``round(fraction * n)`` (half up), at least 1 and at most ``n - 1`` when ``n >= 2``; 0 below."""
    if n < 2:
        return 0
    return min(max(math.floor(fraction * n + 0.5), 1), n - 1)
