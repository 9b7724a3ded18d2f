"""Matching the genes of a data set to a model's vocabulary."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

LOW_OVERLAP = 0.5  # warn when fewer than this share of the input genes match


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
    """

    columns: np.ndarray
    gene_index: np.ndarray
    n_input: int
    n_vocabulary: int
    warnings: tuple[str, ...] = ()

    @property
    def n_matched(self) -> int:
        return int(self.columns.size)

    @property
    def share_of_input(self) -> float:
        return self.n_matched / self.n_input if self.n_input else 0.0


def _looks_like_ensembl(genes: Sequence[str]) -> bool:
    sample = [str(g) for g in list(genes)[:200]]
    return bool(sample) and sum(g.startswith("ENS") for g in sample) > 0.8 * len(sample)


def align_genes(input_genes: Sequence[str], vocabulary: Sequence[str], *, source: str = "var_names") -> GeneAlignment:
    """Match ``input_genes`` to ``vocabulary`` by exact id.

    Raises
    ------
    ValueError
        When no gene matches, with examples from both sides and a hint about symbols vs Ensembl ids.
        Fewer than half matching is reported in ``warnings`` of the result.
    """
    input_genes = [str(g) for g in input_genes]
    position = {g: i for i, g in enumerate(vocabulary)}
    columns = np.array([j for j, g in enumerate(input_genes) if g in position], dtype=np.int64)
    gene_index = np.array([position[input_genes[j]] for j in columns], dtype=np.int64)
    n_matched = len(columns)
    if n_matched == 0:
        hint = ""
        if _looks_like_ensembl(vocabulary) and not _looks_like_ensembl(input_genes):
            hint = (
                " The model's vocabulary uses Ensembl ids while these look like gene symbols: pass a var column "
                "of Ensembl ids (gene_key=...), or map the symbols to Ensembl ids first."
            )
        elif _looks_like_ensembl(input_genes) and not _looks_like_ensembl(vocabulary):
            hint = " These look like Ensembl ids while the vocabulary does not: pass a var column of gene symbols."
        raise ValueError(
            f"none of the {len(input_genes)} genes in {source} is in the model's vocabulary of {len(position)} genes. "
            f"Input examples: {input_genes[:5]}; vocabulary examples: {list(vocabulary)[:5]}.{hint}"
        )
    share = n_matched / len(input_genes)
    notes = ()
    if share < LOW_OVERLAP:
        notes = (
            f"only {n_matched} of {len(input_genes)} genes ({100 * share:.1f}%) are in the model's vocabulary; "
            "the rest are ignored",
        )
    alignment = GeneAlignment(columns, gene_index, len(input_genes), len(position), notes)
    logger.info(
        "%d of %d input genes (%.1f%%) are in the vocabulary of %d genes",
        n_matched,
        alignment.n_input,
        100 * share,
        alignment.n_vocabulary,
    )
    return alignment
