"""Matching the genes of a data set to a model's vocabulary, and the rules for gene id lists.

A vocabulary carries a *gene id rule*, recorded with its checkpoint, that says how input ids are
normalised before matching: ``"exact"`` (as given; the official checkpoints) or ``"upper"``
(upper-cased; vocabularies of symbols built from human and mouse data, where mouse ``Cd3e`` meets
human ``CD3E``). Inference applies the checkpoint's rule, as the corpus that trained it did.

A checkpoint may also carry *gene aliases*: normalised input id -> vocabulary id, applied after the rule (e.g.
mouse ``Ins1`` and ``Ins2``, upper-cased, -> human ``INS``: the orthologs its corpus was mapped with, see
:mod:`opencellplm.data.orthologs`). An alias never names a vocabulary id, so ids already in the vocabulary
match as they would without aliases.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

LOW_OVERLAP = 0.5  # warn when fewer than this share of the input genes match

GeneIdRule = Literal["exact", "upper"]
GENE_ID_RULES: tuple[str, ...] = ("exact", "upper")


#: Prefixes (any case) of the control probes and codewords that imaging panels list beside their genes: MERFISH
#: ``Blank-``, Xenium ``NegControlProbe_`` / ``NegControlCodeword_`` / ``UnassignedCodeword_`` / ``BLANK_`` /
#: ``DeprecatedCodeword_``, CosMx ``NegPrb`` / ``SystemControl``. They measure background, not a gene.
CONTROL_PROBE_PREFIXES: tuple[str, ...] = (
    "blank-",
    "blank_",
    "negcontrol",
    "negprb",
    "systemcontrol",
    "unassignedcodeword",
    "deprecatedcodeword",
)


def is_control_probe(gene: str) -> bool:
    """Whether ``gene`` names an imaging panel's control probe or codeword (:data:`CONTROL_PROBE_PREFIXES`)."""
    return str(gene).lower().startswith(CONTROL_PROBE_PREFIXES)


def normalise_gene_ids(genes: Sequence[str], rule: GeneIdRule, aliases: Mapping[str, str] | None = None) -> list[str]:
    """``genes`` as the vocabulary of a checkpoint with ``rule`` (and gene ``aliases``) sees them."""
    if rule == "exact":
        ids = [str(g) for g in genes]
    elif rule == "upper":
        ids = [str(g).upper() for g in genes]
    else:
        raise ValueError(f"unknown gene id rule {rule!r}; known: {list(GENE_ID_RULES)}")
    return [aliases.get(g, g) for g in ids] if aliases else ids


def alias_problems(aliases: Mapping[str, str], vocabulary: Collection[str]) -> list[str]:
    """Why ``aliases`` (input id -> vocabulary id) cannot go with ``vocabulary``: ids that are not non-blank
    strings without whitespace, targets outside the vocabulary, and input ids that are vocabulary ids (an alias
    would hide that gene)."""
    known = vocabulary if isinstance(vocabulary, (set, frozenset)) else set(vocabulary)
    problems = []
    for source, target in aliases.items():
        pair = f"{source!r} -> {target!r}"
        if not all(isinstance(g, str) and g.strip() and g == "".join(g.split()) for g in (source, target)):
            problems.append(f"{pair}: ids must be non-blank strings without whitespace")
        elif target not in known:
            problems.append(f"{pair}: {target!r} is not in the vocabulary")
        elif source in known:
            problems.append(f"{pair}: {source!r} is itself in the vocabulary, and an alias would hide it")
    return problems


def gene_list_problems(genes: Sequence[str], *, first_line: int = 1) -> list[str]:
    """Why ``genes`` cannot be a vocabulary: blank, whitespace-padded or repeated ids, by line
    (numbered from ``first_line``). A blank line would shift every later gene by one row."""
    problems = []
    first: dict[str, int] = {}
    for line, gene in enumerate(genes, first_line):
        if not gene.strip():
            problems.append(f"line {line} is blank")
        elif gene != gene.strip() or any(c in gene for c in "\t\r\n"):
            problems.append(f"line {line} ({gene!r}) has whitespace around or inside the id")
        elif gene in first:
            problems.append(f"line {line} repeats {gene!r} of line {first[gene]}")
        first.setdefault(gene, line)
    return problems


def whitespace_note(
    genes: Sequence[str], source: str, vocabulary: Sequence[str] | None = None, rule: GeneIdRule = "exact"
) -> str | None:
    """A sentence for input ids with leading or trailing whitespace (else None), such as ``'CD74 '`` or
    ``'FTL\\n'`` left by a hand-made table.

    They are reported, not stripped: a checkpoint's gene id rule (``exact``: as given, as the official pipeline
    matches) says how ids are matched, and ids padded this way usually come from a table read wrongly, which the
    user should see and mend.
    """
    padded = [g for g in genes if g != g.strip()]
    if not padded:
        return None
    note = f"{len(padded):,} gene id(s) in {source} have leading or trailing whitespace, e.g. {padded[:5]}"
    if vocabulary is not None:
        known = set(vocabulary)
        would = sum(g.strip() in known for g in normalise_gene_ids(padded, rule))
        note += f"; no vocabulary id has any, so they are not matched ({would:,} would be once stripped)"
    return f"{note}. Strip them first: adata.{source} = adata.{source}.str.strip()"


@dataclass(frozen=True)
class GeneAlignment:
    """Which input columns a model can read, and where they sit in its vocabulary.

    Attributes
    ----------
    columns
        Input columns whose gene is in the vocabulary, in input order.
    gene_index
        Vocabulary row of each of those columns.
    n_input
        Number of input genes.
    n_vocabulary
        Size of the vocabulary.
    warnings
        What looks wrong but does not stop the work (low overlap).
    rule
        How the input ids were normalised before matching.
    n_via_aliases
        Matched columns whose id reached the vocabulary through the checkpoint's gene aliases (orthologs).
    """

    columns: np.ndarray
    gene_index: np.ndarray
    n_input: int
    n_vocabulary: int
    warnings: tuple[str, ...] = ()
    rule: GeneIdRule = "exact"
    n_via_aliases: int = 0

    @property
    def n_matched(self) -> int:
        return int(self.columns.size)

    @property
    def share_of_input(self) -> float:
        return self.n_matched / self.n_input if self.n_input else 0.0


def _looks_like_ensembl(genes: Sequence[str]) -> bool:
    sample = [str(g) for g in list(genes)[:200]]
    return bool(sample) and sum(g.startswith("ENS") for g in sample) > 0.8 * len(sample)


def align_genes(
    input_genes: Sequence[str],
    vocabulary: Sequence[str],
    *,
    source: str = "var_names",
    rule: GeneIdRule = "exact",
    aliases: Mapping[str, str] | None = None,
) -> GeneAlignment:
    """Match ``input_genes``, normalised by ``rule`` then ``aliases`` (normalised id -> vocabulary id), to
    ``vocabulary`` by id.

    Raises
    ------
    ValueError
        When no gene matches, with examples from both sides and a hint about symbols vs Ensembl ids.
        Fewer than half matching is reported in ``warnings`` of the result.
    """
    input_genes = normalise_gene_ids(input_genes, rule)
    aliased = np.array([g in aliases for g in input_genes], dtype=bool) if aliases else None
    input_genes = normalise_gene_ids(input_genes, "exact", aliases)
    position = {g: i for i, g in enumerate(vocabulary)}
    columns = np.array([j for j, g in enumerate(input_genes) if g in position], dtype=np.int64)
    gene_index = np.array([position[input_genes[j]] for j in columns], dtype=np.int64)
    n_via_aliases = 0 if aliased is None else int(aliased[columns].sum())
    n_matched = len(columns)
    if n_matched == 0:
        hint = case_hint(input_genes, vocabulary)
        if not hint and _looks_like_ensembl(vocabulary) and not _looks_like_ensembl(input_genes):
            hint = (
                " The model's vocabulary uses Ensembl ids while these look like gene symbols: pass a var column "
                "of Ensembl ids (gene_key=...), or map the symbols to Ensembl ids first."
            )
        elif not hint and _looks_like_ensembl(input_genes) and not _looks_like_ensembl(vocabulary):
            hint = " These look like Ensembl ids while the vocabulary does not: pass a var column of gene symbols."
        padding = whitespace_note(input_genes, source, vocabulary)
        raise ValueError(
            f"none of the {len(input_genes)} genes in {source} is in the model's vocabulary of {len(position)} genes. "
            f"Input examples: {input_genes[:5]}; vocabulary examples: {list(vocabulary)[:5]}.{hint}"
            + (f" {padding}" if padding else "")
        )
    share = n_matched / len(input_genes)
    notes = [note] if (note := whitespace_note(input_genes, source, vocabulary)) else []
    if share < LOW_OVERLAP:
        notes.append(
            f"only {n_matched} of {len(input_genes)} genes ({100 * share:.1f}%) are in the model's vocabulary; "
            f"the rest are ignored.{case_hint(input_genes, vocabulary)}"
        )
    repeated = [g for g, n in Counter(input_genes[j] for j in columns).items() if n > 1]
    if repeated and (rule != "exact" or aliases):
        how = " and the checkpoint's gene aliases" if aliases else ""
        notes.append(
            f"{len(repeated)} vocabulary gene(s) are matched by several input genes once ids are normalised "
            f"({rule}{how}), e.g. {repeated[:5]}; each column is embedded separately (sum them first to merge "
            "them)"
        )
    notes = tuple(notes)
    alignment = GeneAlignment(columns, gene_index, len(input_genes), len(position), notes, rule, n_via_aliases)
    logger.info(
        "%d of %d input genes (%.1f%%) are in the vocabulary of %d genes%s",
        n_matched,
        alignment.n_input,
        100 * share,
        alignment.n_vocabulary,
        f" ({n_via_aliases} through the checkpoint's gene aliases)" if aliases else "",
    )
    return alignment


def case_hint(input_genes: Sequence[str], vocabulary: Sequence[str]) -> str:
    """A sentence for when the ids would match far better with case ignored (else empty)."""
    exact = set(vocabulary)
    folded = {str(g).upper() for g in vocabulary}
    n_exact = sum(g in exact for g in input_genes)
    n_folded = sum(str(g).upper() in folded for g in input_genes)
    if n_folded < max(2 * n_exact, n_exact + 10):
        return ""
    example = next(str(g) for g in input_genes if g not in exact and str(g).upper() in folded)
    return (
        f" Ignoring case, {n_folded} would match: the ids differ in case from the vocabulary's (e.g. {example!r}). "
        "Map them to the vocabulary's ids (for mouse data, a column of human ortholog symbols as gene_key=)."
    )
