"""Gene-expression embedder: a cell's token is the log1p-weighted sum of its genes' embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import make_norm
from .positional import SinusoidalPositionalEncoding


def log1p_gene_sum(counts: torch.Tensor, gene_index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``h[c] = sum_g log1p(counts[c, g]) * table[gene_index[g]]``, computed sparsely.

    Parameters
    ----------
    counts
        (N, G_in) raw counts, sparse CSR (dense is converted); never densified.
    gene_index
        (G_in,) row of ``table`` for each input column.
    table
        (G, d) gene embeddings.

    Returns
    -------
    (N, d) tensor.
    """
    if not counts.is_sparse_csr:
        counts = counts.to_sparse_csr()
    if gene_index.ndim != 1 or gene_index.shape[0] != counts.shape[1]:
        raise ValueError(
            f"gene_index must have one entry per input column ({counts.shape[1]}), got shape {tuple(gene_index.shape)}"
        )
    rows = gene_index[counts.col_indices()]  # (nnz,) vocabulary row of each stored value
    if not torch.is_grad_enabled() and torch.is_autocast_enabled(table.device.type) and table.dtype == torch.float32:
        # Inference under autocast: this sum is memory-bound, so the table is read in the autocast dtype (half the
        # bytes of fp32). Training keeps fp32 rows, so that gradients do not accumulate in bf16.
        table = table.to(torch.get_autocast_dtype(table.device.type))
    weights = torch.log1p(counts.values().to(table.dtype))  # (nnz,)
    return F.embedding_bag(
        rows, table, counts.crow_indices(), mode="sum", per_sample_weights=weights, include_last_offset=True
    )


class CellEmbedder(nn.Module):
    """Counts -> (N, d) cell tokens: gene sum, optional positional code, Linear-ReLU-Dropout-Norm."""

    def __init__(self, n_genes: int, dim: int, *, dropout: float, norm: str, positional: bool, pe_grid_size: int = 100):
        super().__init__()
        self.gene_embedding = nn.Parameter(torch.randn(n_genes, dim) * 0.005)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = make_norm(norm, dim)
        self.positional = SinusoidalPositionalEncoding(dim, pe_grid_size) if positional else None

    def forward(
        self,
        counts: torch.Tensor,
        gene_index: torch.Tensor,
        coords: torch.Tensor | None = None,
        *,
        use_positional: bool = True,
    ) -> torch.Tensor:
        if gene_index.numel() and (int(gene_index.min()) < 0 or int(gene_index.max()) >= len(self.gene_embedding)):
            raise ValueError(
                f"gene_index must lie in [0, {len(self.gene_embedding)}) (the vocabulary), "
                f"got range [{int(gene_index.min())}, {int(gene_index.max())}]"
            )
        x = log1p_gene_sum(counts, gene_index, self.gene_embedding)  # (N, d)
        if self.positional is not None and use_positional:
            x = x + self.positional(coords, x.shape[0])
        return self.norm(self.dropout(F.relu(self.proj(x))))
