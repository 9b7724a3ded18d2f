"""Flowformer: linear-cost attention across the cells of one set (Wu et al., ICML 2022).

Every cell of a set is a token; attention mixes all of them, so a cell's embedding depends on the
set it is passed with. Cost is linear in the number of cells.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import Dropout

FLOW_EPS = 1e-6


class FlowAttention(nn.Module):
    """Flow attention with sigmoid feature maps, source competition and sink allocation."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.01, eps: float = FLOW_EPS):
        super().__init__()
        self.n_heads = n_heads
        self.eps = eps
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        return x.view(n, self.n_heads, d // self.n_heads).transpose(0, 1).contiguous()  # (N, d) -> (H, N, dh)

    def _flow(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Flow attention of (H, N, dh) non-negative queries and keys, and values -> (H, N, dh), in their dtype
        (the softmax over cells and the sigmoid in float32)."""
        n, eps = q.shape[1], self.eps
        # Incoming flow of each sink (query) and outgoing flow of each source (key): (H, N)
        sink_in = 1.0 / torch.einsum("hnd,hd->hn", q + eps, k.sum(dim=1) + eps)
        source_out = 1.0 / torch.einsum("hnd,hd->hn", k + eps, q.sum(dim=1) + eps)
        # Conservation: flows re-measured after normalising the other side.
        conserved_sink = torch.einsum("hnd,hd->hn", q + eps, (k * source_out[..., None]).sum(dim=1) + eps)
        conserved_source = torch.einsum("hnd,hd->hn", k + eps, (q * sink_in[..., None]).sum(dim=1) + eps)
        conserved_source = conserved_source.float().clamp(-1.0, 1.0)
        allocation = torch.sigmoid(conserved_sink.float())  # queries and keys are the same N cells: ratio 1
        competition = torch.softmax(conserved_source, dim=-1) * float(n)  # (H, N)
        kv = torch.einsum("hnd,hnm->hdm", k, v * competition[..., None].to(v.dtype))  # (H, dh, dh)
        out = torch.einsum("hnd,hdm->hnm", q * sink_in[..., None], kv)
        return out * allocation[..., None].to(out.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        q = self._heads(self.query(x))  # (H, N, dh); the projections may run in bfloat16 (autocast)
        k = self._heads(self.key(x))
        v = self._heads(self.value(x))
        if torch.is_grad_enabled() or q.dtype != torch.bfloat16:
            # Training (and float16, whose range the sums over cells can exceed): the attention in float32.
            # Inference in bfloat16 keeps it there: per-cell cosine to float32 above 0.99999, 2x faster.
            q, k, v = q.float(), k.float(), v.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self._flow(torch.sigmoid(q), torch.sigmoid(k), v)
        out = out.transpose(0, 1).reshape(n, d)  # (H, N, dh) -> (N, d)
        return self.dropout(self.out(out))


class FlowformerBlock(nn.Module):
    """Pre-norm block: ``h + Drop(Attn(LN(h)))`` then ``h + FF(LN(h))`` with a GELU MLP of width 2d."""

    def __init__(self, dim: int, n_heads: int, *, dropout: float, attention_dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = FlowAttention(dim, n_heads, dropout=attention_dropout)
        self.attn_dropout = Dropout(dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, 2 * dim)
        self.ff_out = nn.Linear(2 * dim, dim)
        self.ff_dropout = Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn_dropout(self.attn(self.attn_norm(h)))
        ff = self.ff_out(self.ff_dropout(F.gelu(self.ff_in(self.ff_norm(h)))))
        return h + self.ff_dropout(ff)


class FlowformerEncoder(nn.Module):
    """A stack of :class:`FlowformerBlock` over the (N, d) tokens of one cell set."""

    def __init__(self, dim: int, n_heads: int, n_layers: int, *, dropout: float, attention_dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            FlowformerBlock(dim, n_heads, dropout=dropout, attention_dropout=attention_dropout) for _ in range(n_layers)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)
        return h
