"""Training-time corruption: drop whole cells, thin the counts of some (a new depth), then hide a share
of the genes of some cells."""

from __future__ import annotations

from dataclasses import replace

import torch

from .._sparse import csr_tensor
from ..config import MaskingConfig
from .outputs import CellBatch


def select_cells(batch: CellBatch, rows: torch.Tensor) -> CellBatch:
    """The cells ``rows`` of ``batch``; the CSR counts are sliced by their row pointers."""
    crow, col, values = batch.counts.crow_indices(), batch.counts.col_indices(), batch.counts.values()
    lengths = crow.diff()[rows]  # stored values per kept row
    new_crow = torch.zeros(len(rows) + 1, dtype=crow.dtype, device=crow.device)
    new_crow[1:] = lengths.cumsum(0)
    # Position of every kept value in the old arrays: its row's old start + its offset in the row.
    shift = torch.repeat_interleave(crow[:-1][rows] - new_crow[:-1], lengths)
    positions = shift + torch.arange(int(new_crow[-1]), device=crow.device)
    counts = csr_tensor(new_crow, col[positions], values[positions], (len(rows), batch.counts.shape[1]), crow.device)
    return replace(batch, counts=counts, **{k: v[rows] for k, v in batch.per_cell().items()})


def drop_cells(n_cells: int, config: MaskingConfig, device: torch.device) -> torch.Tensor:
    """Random rows to keep: ``min(max_cells, int(n * (1 - drop_cell_rate)))`` of them."""
    n_keep = min(config.max_cells, int(n_cells * (1.0 - config.drop_cell_rate)))
    return torch.randperm(n_cells, device=device)[: max(n_keep, min(n_cells, 2))]  # batch norms need 2 cells


def thin_counts(counts: torch.Tensor, config: MaskingConfig) -> torch.Tensor:
    """CSR counts with ``thin_rate`` of the cells binomially thinned: each count of a chosen cell becomes
    Binomial(count, p_cell), p_cell ~ Uniform(thin_min_keep, 1); the other cells are unchanged.

    The sparsity pattern stays (a count thinned to 0 is a stored 0, as :func:`hide_genes` leaves it). Counts
    are rounded to integers first: binomial thinning is defined for counts only.
    """
    n_cells = counts.shape[0]
    n_thinned = int(round(config.thin_rate * n_cells))
    if n_thinned == 0:
        return counts
    device = counts.device
    keep = torch.ones(n_cells, device=device)
    chosen = torch.randperm(n_cells, device=device)[:n_thinned]
    keep[chosen] = config.thin_min_keep + (1.0 - config.thin_min_keep) * torch.rand(n_thinned, device=device)
    rows = torch.repeat_interleave(torch.arange(n_cells, device=device), counts.crow_indices().diff())
    values = counts.values()
    thinned = torch.binomial(values.float().round(), keep[rows]).to(values.dtype)
    return csr_tensor(counts.crow_indices(), counts.col_indices(), thinned, counts.shape, device=device)


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
    n_masked_cells = max(int(config.cell_rate * n_cells), 1 if config.cell_rate > 0 else 0)  # tiny sets: >= 1
    unmasked = torch.randperm(n_cells, device=device)[n_masked_cells:]
    mask[unmasked] = False
    return mask


def hide_genes(counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CSR counts with the masked entries set to 0 (same sparsity pattern, nothing densified)."""
    rows = torch.repeat_interleave(
        torch.arange(counts.shape[0], device=counts.device), counts.crow_indices().diff()
    )  # (nnz,) row of each stored value
    values = counts.values().masked_fill(mask[rows, counts.col_indices()], 0)
    return csr_tensor(counts.crow_indices(), counts.col_indices(), values, counts.shape, device=counts.device)
