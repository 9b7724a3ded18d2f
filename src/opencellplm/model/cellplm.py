"""CellPLM: the AnnData-facing model (load, save, embed)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from .._sparse import csr_tensor
from ..data import align_genes, cell_sets
from ..io import load_checkpoint, load_official, save_checkpoint
from ..io.errors import check_duplicates
from ..module import CellBatch, CellPLMModule, GMVAENoise

logger = logging.getLogger(__name__)


class CellPLM:
    """A CellPLM model with its gene vocabulary.

    Parameters
    ----------
    module
        The torch network.
    genes
        Gene ids, one per row of the gene embedding table.
    meta
        Provenance and metrics carried with the checkpoint.
    device
        Where to run (``"cpu"``, ``"cuda"``, ...).

    Examples
    --------
    >>> model = CellPLM.from_official("ckpt/20230926_85M")          # doctest: +SKIP
    >>> model.embed(adata, sample_key="sample")                      # doctest: +SKIP
    >>> adata.obsm["X_cellplm"].shape                                # doctest: +SKIP
    """

    def __init__(
        self,
        module: CellPLMModule,
        genes: list[str],
        *,
        meta: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ):
        if len(genes) != module.config.n_genes:
            raise ValueError(f"{len(genes)} genes given for a model with {module.config.n_genes} gene embeddings")
        check_duplicates(genes, "the vocabulary")
        self.device = _device(device)
        self.module = module.to(self.device).eval()
        self.genes = list(genes)
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> CellPLM:
        """Load a checkpoint directory written by :meth:`save`."""
        module, genes, meta = load_checkpoint(directory)
        logger.info("loaded %s: %d genes, %s parameters", directory, len(genes), f"{module.n_parameters():,}")
        return cls(module, genes, meta=meta, device=device)

    @classmethod
    def from_official(cls, prefix: str | Path, *, device: str | torch.device = "cpu") -> CellPLM:
        """Load an official release, ``PREFIX.config.json`` + ``PREFIX.best.ckpt``."""
        module, genes = load_official(prefix)
        return cls(module, genes, meta={"source": f"official checkpoint {Path(prefix).name}"}, device=device)

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model in our checkpoint format (see :mod:`opencellplm.io.checkpoint`)."""
        return save_checkpoint(directory, self.module, self.genes, meta=self.meta, overwrite=overwrite)

    @property
    def config(self):
        return self.module.config

    def __repr__(self) -> str:
        c = self.config
        return (
            f"CellPLM({len(self.genes)} genes, hidden {c.hidden_dim}, {c.encoder.n_layers} layers, "
            f"latent {c.latent.kind}:{c.latent.dim}, {self.module.n_parameters():,} parameters, device {self.device})"
        )

    # ---------------------------------------------------------------------------- inference
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        sample_key: str | None = None,
        max_cells: int | None = None,
        official_compat: bool = False,
        noise: Iterable[GMVAENoise] | None = None,
    ) -> np.ndarray:
        """Cell embeddings, (n_obs, latent dim), rows in ``adata.obs_names`` order; writes nothing.

        Parameters
        ----------
        adata
            Raw counts in ``X`` or ``layers[layer]``; in memory or backed.
        layer
            Layer with raw counts (default ``X``).
        gene_key
            ``var`` column with the gene ids of the vocabulary (default: ``var_names``).
        sample_key
            ``obs`` column grouping cells that are embedded together (cells attend to the cells of
            their set). Default: all cells form one set.
        max_cells
            Split each sample into consecutive chunks of at most this many cells.
        official_compat
            Reproduce the official (random) eval embedding; see
            :class:`~opencellplm.module.CellPLMModule`. Default: deterministic.
        noise
            With ``official_compat``, recorded GMVAE noise, one entry per forward call in call order
            (default: drawn from torch's generator).
        """
        if noise is not None and not official_compat:
            raise ValueError("noise= replays the official random draws; it needs official_compat=True")
        if max_cells is not None and (not isinstance(max_cells, int) or max_cells < 1):
            raise ValueError(f"max_cells must be a positive integer or None, got {max_cells!r}")
        counts = _counts(adata, layer)
        genes = _gene_ids(adata, gene_key)
        alignment = align_genes(genes, self.genes, source=f"var[{gene_key!r}]" if gene_key else "var_names")
        samples = _samples(adata, sample_key)
        gene_index = torch.as_tensor(alignment.gene_index, device=self.device)
        noise_iter: Iterator[GMVAENoise] | None = None if noise is None else iter(noise)

        out = np.zeros((adata.n_obs, self.config.latent.dim), dtype=np.float32)
        sets = list(cell_sets(samples, adata.n_obs, max_cells))
        non_integer = False
        was_training = self.module.training
        self.module.eval()
        try:
            for rows in tqdm(sets, desc="embedding cell sets", unit="set", disable=None if len(sets) > 1 else True):
                x = _rows_csr(counts, rows, alignment.columns)
                non_integer |= _check_counts(x, adata.obs_names[rows], layer)
                batch = CellBatch(counts=_to_torch_csr(x, self.device), gene_index=gene_index)
                step_noise = None
                if noise_iter is not None:
                    step_noise = next(noise_iter, None)
                    if step_noise is None:
                        raise ValueError("fewer GMVAE noise entries than forward calls")
                result = self.module(batch, official=official_compat, noise=step_noise)
                out[rows] = result.embedding.float().cpu().numpy()
        finally:
            self.module.train(was_training)
        if noise_iter is not None and next(noise_iter, None) is not None:
            raise ValueError(f"more GMVAE noise entries than the {len(sets)} forward calls")
        if non_integer:
            where = f"layers[{layer!r}]" if layer else "X"
            warnings.warn(
                f"{where} holds non-integer values; CellPLM expects raw counts (pass layer= naming a layer of "
                "raw counts if X is normalised)",
                UserWarning,
                stacklevel=2,
            )
        return out

    def embed(self, adata: AnnData, *, key_added: str = "X_cellplm", **kwargs: Any) -> CellPLM:
        """Write cell embeddings to ``adata.obsm[key_added]`` and the call's parameters to
        ``adata.uns['cellplm'][key_added]['params']``. Takes the arguments of
        :meth:`get_latent_representation`; returns ``self``.
        """
        if adata.is_view:
            raise ValueError("adata is a view; call adata.copy() first, or use get_latent_representation()")
        embedding = self.get_latent_representation(adata, **kwargs)
        adata.obsm[key_added] = embedding
        params = {k: v for k, v in kwargs.items() if k != "noise" and v is not None}
        adata.uns.setdefault("cellplm", {})[key_added] = {"params": params | {"n_genes_vocabulary": len(self.genes)}}
        return self


def _counts(adata: AnnData, layer: str | None):
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer with raw counts")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found; adata.layers has {sorted(adata.layers.keys())}")
    return adata.layers[layer]


def _gene_ids(adata: AnnData, gene_key: str | None) -> list[str]:
    if gene_key is None:
        return list(adata.var_names)
    if gene_key not in adata.var:
        raise KeyError(f"var column {gene_key!r} not found; adata.var has {list(adata.var.columns)}")
    return adata.var[gene_key].astype(str).tolist()


def _samples(adata: AnnData, sample_key: str | None):
    if sample_key is None:
        return None
    if sample_key not in adata.obs:
        raise KeyError(f"obs column {sample_key!r} not found; adata.obs has {list(adata.obs.columns)}")
    samples = adata.obs[sample_key]
    n_missing = int(samples.isna().sum())
    if n_missing:
        raise ValueError(f"{n_missing} cells have no {sample_key!r} label; fill or drop them first")
    return samples


def _device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available to this torch build; use device='cpu'")
    return device


def _check_counts(x: sp.csr_matrix, names, layer: str | None) -> bool:
    """Refuse NaN, infinite and negative entries (naming cells); return whether any value is non-integer."""
    bad = ~np.isfinite(x.data) | (x.data < 0)
    if bad.any():
        where = f"layers[{layer!r}]" if layer else "X"
        cells = np.unique(np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))[bad])
        raise ValueError(
            f"{where} has {int(bad.sum())} NaN, infinite or negative entries, in cells {list(names[cells[:5]])}"
            f"{' and more' if len(cells) > 5 else ''}; CellPLM needs raw counts"
        )
    return bool(np.any(x.data != np.round(x.data)))


def _rows_csr(matrix, rows: np.ndarray, columns: np.ndarray) -> sp.csr_matrix:
    """Rows (any order) and columns of an in-memory or backed matrix as float32 CSR."""
    order = np.argsort(rows)
    sorted_rows = rows[order]
    block = matrix[sorted_rows]  # backed datasets need increasing row indices
    if sp.issparse(block):
        block = sp.csr_matrix(block, dtype=np.float32)
    else:
        block = sp.csr_matrix(np.asarray(block, dtype=np.float32))
    block = block[:, columns]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return block[inverse]


def _to_torch_csr(x: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    x.sort_indices()
    return csr_tensor(
        torch.from_numpy(x.indptr.astype(np.int64)),
        torch.from_numpy(x.indices.astype(np.int64)),
        torch.from_numpy(x.data),
        x.shape,
        device=device,
    )
