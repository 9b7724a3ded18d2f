"""Training-time corruption: drop whole cells, then hide a share of the genes of some cells."""

from __future__ import annotations

import torch

from .._sparse import csr_tensor
from ..config import MaskingConfig
from .outputs import CellBatch


def select_cells(batch: CellBatch, rows: torch.Tensor) -> CellBatch:
    """The cells ``rows`` of ``batch`` (counts stay sparse)."""
    counts = batch.counts
    if counts.is_sparse_csr:
        counts = counts.to_sparse_coo().index_select(0, rows).to_sparse_csr()
    else:
        counts = counts[rows]

    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[rows]

    return CellBatch(
        counts=counts,
        gene_index=batch.gene_index,
        coords=take(batch.coords),
        batch=take(batch.batch),
        dataset=take(batch.dataset),
        platform=take(batch.platform),
    )


def drop_cells(n_cells: int, config: MaskingConfig, device: torch.device) -> torch.Tensor:
    """Random rows to keep: ``min(max_cells, int(n * (1 - drop_cell_rate)))`` of them."""
    n_keep = min(config.max_cells, int(n_cells * (1.0 - config.drop_cell_rate)))
    return torch.randperm(n_cells, device=device)[: max(n_keep, 1)]


def gene_mask(n_cells: int, n_genes: int, config: MaskingConfig, device: torch.device) -> torch.Tensor:
    """(N, G_in) bool: True where a gene is hidden from the model.

    ``cell_rate`` of the cells are masked; in each, every gene is hidden with probability
    ``gene_rate`` (or a per-cell rate ~ Beta(5, 4/gene_rate - 3), capped at 0.9, with ``beta``).
    """
    if config.beta:
        beta = torch.distributions.Beta(torch.tensor(5.0), torch.tensor(4.0 / config.gene_rate - 3.0))
        rate = beta.sample((n_cells,)).clamp_max(0.9).to(device)[:, None]  # (N, 1)
    else:
        rate = torch.full((n_cells, 1), config.gene_rate, device=device)
    mask = torch.rand(n_cells, n_genes, device=device) <= rate
    n_masked_cells = int(config.cell_rate * n_cells)
    unmasked = torch.randperm(n_cells, device=device)[n_masked_cells:]
    mask[unmasked] = False
    return mask


def hide_genes(counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Counts with the masked entries set to 0 (sparse input stays sparse, with the same pattern)."""
    if not counts.is_sparse_csr:
        return counts.masked_fill(mask, 0)
    rows = torch.repeat_interleave(
        torch.arange(counts.shape[0], device=counts.device), counts.crow_indices().diff()
    )  # (nnz,) row of each stored value
    values = counts.values().masked_fill(mask[rows, counts.col_indices()], 0)
    return csr_tensor(counts.crow_indices(), counts.col_indices(), values, counts.shape, device=counts.device)
