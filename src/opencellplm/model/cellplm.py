"""CellPLM: the AnnData-facing model (load, save, embed)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from .._files import new_folders_removed_on_failure, output_lock, sha256_of
from .._precision import Precision, autocast_dtype
from .._threads import thread_settings
from ..data.cellsets import Partition
from ..data.genes import GENE_ID_RULES, GeneIdRule, alias_problems
from ..data.output import write_result_copy
from ..data.sets import CellSets, InputSpec
from ..data.validate import InputReport, require_anndata, validate
from ..io import load_checkpoint, load_official, save_checkpoint
from ..io.checkpoint import WEIGHTS_FILE
from ..io.errors import check_duplicates
from ..io.official import official_paths
from ..module import CellPLMModule, GMVAENoise

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
        Provenance and metrics carried with the checkpoint; ``meta["gene_id_rule"]`` says how input
        gene ids are normalised before matching ``genes``, and the optional ``meta["gene_aliases"]``
        (normalised input id -> vocabulary id, e.g. mouse symbols -> human orthologs) what they are then
        mapped to (see :mod:`opencellplm.data.genes`; a checkpoint keeps them in ``gene_aliases.tsv``).
    source
        Where the weights were read from: ``name``, ``path`` and ``sha256`` of the weights file
        (recorded with every embedding). Set by the loaders.
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
        source: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ):
        if len(genes) != module.config.n_genes:
            raise ValueError(f"{len(genes)} genes given for a model with {module.config.n_genes} gene embeddings")
        check_duplicates(genes, "the vocabulary")
        meta = dict(meta or {})
        if meta.get("gene_id_rule", "exact") not in GENE_ID_RULES:
            raise ValueError(f"meta['gene_id_rule'] is {meta['gene_id_rule']!r}; known rules: {list(GENE_ID_RULES)}")
        aliases = meta.get("gene_aliases") or {}
        problems = alias_problems(aliases, genes) if isinstance(aliases, dict) else ["it is not a dict"]
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ValueError("meta['gene_aliases'] cannot be used: " + "; ".join(problems[:5]) + more)
        self.device = _device(device)
        self.module = module.to(self.device).eval()
        self.genes = list(genes)
        self.meta = meta
        self.source = dict(source or {"name": "in memory"})

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> CellPLM:
        """Load a checkpoint directory written by :meth:`save`, or a shipped model by name
        (:func:`opencellplm.pretrained.available`, e.g. ``"cellplm-small"``)."""
        from .. import pretrained

        name = Path(directory).name
        if not Path(directory).exists() and str(directory) in pretrained.available():
            name, directory = str(directory), pretrained.path(str(directory))
        module, genes, meta = load_checkpoint(directory)
        source = {
            "name": name,
            "path": str(Path(directory).resolve()),
            "sha256": sha256_of(Path(directory) / WEIGHTS_FILE),
        }
        logger.info("loaded %s: %d genes, %s parameters", directory, len(genes), f"{module.n_parameters():,}")
        return cls(module, genes, meta=meta, source=source, device=device)

    @classmethod
    def from_official(cls, prefix: str | Path, *, device: str | torch.device = "cpu") -> CellPLM:
        """Load an official release, ``PREFIX.config.json`` + ``PREFIX.best.ckpt``."""
        module, genes = load_official(prefix)
        weights = official_paths(prefix)[1]
        source = {"name": Path(prefix).name, "path": str(weights.resolve()), "sha256": sha256_of(weights)}
        meta = {"source": f"official checkpoint {Path(prefix).name}", "gene_id_rule": "exact"}
        return cls(module, genes, meta=meta, source=source, device=device)

    def save(self, directory: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
        """Write the model in our checkpoint format (see :mod:`opencellplm.io.checkpoint`).

        ``overwrite`` replaces only a checkpoint this package wrote (nothing else in the folder);
        ``inputs``, files the model was read from, must not be inside ``directory``.
        """
        return save_checkpoint(directory, self.module, self.genes, meta=self.meta, overwrite=overwrite, inputs=inputs)

    @property
    def config(self):
        return self.module.config

    @property
    def gene_id_rule(self) -> GeneIdRule:
        """How input gene ids are normalised before matching :attr:`genes` (``"exact"`` or ``"upper"``)."""
        return self.meta.get("gene_id_rule", "exact")

    @property
    def gene_aliases(self) -> dict[str, str]:
        """Input ids (after :attr:`gene_id_rule`) read as another vocabulary id, e.g. the mouse orthologs of the
        corpus (``{"INS1": "INS"}``); empty for most checkpoints."""
        return dict(self.meta.get("gene_aliases") or {})

    def __repr__(self) -> str:
        c = self.config
        return (
            f"CellPLM({len(self.genes)} genes, hidden {c.hidden_dim}, {c.encoder.n_layers} layers, "
            f"latent {c.latent.kind}:{c.latent.dim}, {self.module.n_parameters():,} parameters, device {self.device})"
        )

    # ---------------------------------------------------------------------------- inference
    def extend_vocabulary(self, genes: Iterable[str]) -> list[str]:
        """Add the genes not yet in the vocabulary, with fresh embedding (and decoder) rows to fine-tune.

        Returns the genes added, in the order given.
        """
        known = set(self.genes)
        new = [g for g in dict.fromkeys(str(g) for g in genes) if g not in known]
        if new:
            self.module = self.module.with_extra_genes(len(new)).to(self.device)
            self.genes += new
            if hidden := [g for g in new if g in self.gene_aliases]:  # a gene added by its id is read as itself
                self.meta["gene_aliases"] = {k: v for k, v in self.gene_aliases.items() if k not in hidden}
                logger.info("%d gene alias(es) dropped: their input id is now a vocabulary gene", len(hidden))
            self.source["modified"] = f"{len(new)} genes added to the vocabulary"
            logger.info("added %d genes to the vocabulary (now %d)", len(new), len(self.genes))
        return new

    def validate(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        sample_key: str | None = None,
        spatial_key: str | None = "spatial",
        require_counts: bool = False,
        allow_low_overlap: bool = False,
    ) -> InputReport:
        """Check ``adata`` against this model (see :func:`opencellplm.data.validate`); writes nothing."""
        return validate(
            adata,
            layer=layer,
            sample_key=sample_key,
            spatial_key=spatial_key,
            gene_key=gene_key,
            vocabulary=self.genes,
            gene_id_rule=self.gene_id_rule,
            gene_aliases=self.gene_aliases,
            require_counts=require_counts,
            allow_low_overlap=allow_low_overlap,
        )

    def get_latent_representation(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        sample_key: str | None = None,
        spatial_key: str | None = "spatial",
        max_cells: int | None | Literal["auto"] = "auto",
        partition: Partition | None = None,
        seed: int = 0,
        official_compat: bool = False,
        allow_low_overlap: bool = False,
        noise: Iterable[GMVAENoise] | None = None,
        precision: Precision = "auto",
    ) -> np.ndarray:
        """Cell embeddings, (n_obs, latent dim), rows in ``adata.obs_names`` order; writes nothing.

        The input is checked first (:meth:`validate`): unusable input raises ``ValueError`` listing
        every problem; suspicious input warns. Cells with no counts in the model's genes are left out:
        their rows are NaN. Counts on disk (backed, or :func:`opencellplm.data.open_h5ad`) are read
        set by set. A non-finite embedding (broken weights or input) raises ``FloatingPointError``.

        Parameters
        ----------
        adata
            Raw counts in ``X`` or ``layers[layer]``; in memory or backed (only X is read lazily).
        layer
            Layer with raw counts (default ``X``).
        gene_key
            ``var`` column with the gene ids of the vocabulary (default: ``var_names``). Ids are
            normalised by the checkpoint's rule (:attr:`gene_id_rule`) before matching.
        sample_key
            ``obs`` column grouping cells that are embedded together (cells attend to the cells of
            their set). Default: all cells form one sample.
        spatial_key
            ``obsm`` key of 2-D or 3-D coordinates (used when present): they split large samples
            into spatial tiles and, for models with a positional encoding, are encoded after scaling
            each set to [0, 1]. None ignores coordinates.
        max_cells
            Largest cell set; larger samples are split (see :func:`opencellplm.data.cell_sets`).
            ``"auto"``: 4000, the official pretraining cap (with ``official_compat``: None, whole
            samples, as the official pipeline). None keeps samples whole.
        partition
            How to split: ``"auto"`` (tiles with coordinates, else seeded random), ``"tiles"``,
            ``"random"`` or ``"consecutive"``. Default: ``"auto"``, or ``"consecutive"`` (the official
            pipeline's chunks) with ``official_compat``.
        seed
            Seed of the random partition.
        official_compat
            Reproduce the official pipeline: its (random) eval embedding (see
            :class:`~opencellplm.module.CellPLMModule`), its cell sets, and cells without counts
            embedded rather than left out. Default: deterministic, our cell sets.
        allow_low_overlap
            Go on when the matched genes carry a negligible share of the counts (see
            :func:`opencellplm.data.validate`); by default that input is refused.
        noise
            With ``official_compat``, recorded GMVAE noise, one entry per forward call in call order
            (default: drawn from torch's generator).
        precision
            ``"auto"`` (the default): bf16 autocast on CUDA with bf16 and on CPUs with AVX512-BF16 or AMX, else
            fp32. ``"fp32"``: exact, equal to the official outputs. ``"bf16"``: bf16 autocast wherever asked.
            bf16 is 1.8-2.2x faster on a CPU with AVX512-BF16 and agrees with fp32 to a per-cell cosine above
            0.9999, except for cells whose two most likely mixture components are near tied (the embedding is
            the posterior mean of the most likely one, a choice rounding can flip). ``official_compat`` always
            runs in fp32. The precision used is recorded (``uns['cellplm'][key]['params']['precision']``).
        """
        embedding, _ = self._embed(
            adata,
            layer=layer,
            gene_key=gene_key,
            sample_key=sample_key,
            spatial_key=spatial_key,
            max_cells=max_cells,
            partition=partition,
            seed=seed,
            official_compat=official_compat,
            allow_low_overlap=allow_low_overlap,
            noise=noise,
            precision=precision,
        )
        return embedding

    @torch.inference_mode()
    def _embed(
        self,
        adata: AnnData,
        *,
        official_compat: bool = False,
        noise: Iterable[GMVAENoise] | None = None,
        precision: Precision = "auto",
        shard: tuple[int, int] | None = None,
        **spec: Any,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The embedding and what ``uns['cellplm'][key]`` keeps about it (the effective settings). ``shard``:
        ``(rank, world size)``, embed only the sets dealt to that rank (:func:`~opencellplm.model.shards.deal_sets`)
        and return ``(rows, embedding)`` of those cells in place of the embedding; the record describes the whole
        input."""
        if noise is not None and not official_compat:
            raise ValueError("noise= replays the official random draws; it needs official_compat=True")
        if official_compat and precision == "bf16":
            raise ValueError("official_compat reproduces the official outputs and runs in fp32; drop precision='bf16'")
        dtype = autocast_dtype(precision, self.device)  # checks the value first
        if official_compat:
            dtype = None

        def autocast():
            if dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type=self.device.type, dtype=dtype)

        sets = self.cell_sets(
            adata, InputSpec(**spec), official_compat=official_compat, left_out="their rows are NaN", warn_stacklevel=4
        )
        noise_iter: Iterator[GMVAENoise] | None = None if noise is None else iter(noise)
        embedded, rows_out = sets, None
        if shard is not None:  # only this rank's rows are held: an atlas's whole output would not fit each rank
            from .shards import deal_sets

            embedded = sets.subset(deal_sets([len(rows) for rows in sets.sets], shard[1])[shard[0]])
            rows_out = np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *embedded.sets]))
        out = np.full((adata.n_obs if rows_out is None else len(rows_out), self.config.latent.dim), np.nan, np.float32)
        was_training = self.module.training
        self.module.eval()
        try:
            # one autocast region for all sets: the weights are cast to bf16 once, not once per set; closing the sets
            # on an error stops a GPU run's thread building the next ones
            bar = tqdm(total=sum(len(rows) for rows in embedded.sets), desc="embedding", unit="cell", disable=None)
            with bar, autocast(), contextlib.closing(embedded.iterate(self.device)) as cell_sets:
                for cell_set in cell_sets:
                    step_noise = None
                    if noise_iter is not None:
                        step_noise = next(noise_iter, None)
                        if step_noise is None:
                            raise ValueError("fewer GMVAE noise entries than forward calls")
                    # the backbone alone: the embedding needs neither the NB decoder nor a head
                    latent = self.module.encode(cell_set.batch, official=official_compat, noise=step_noise)
                    at = cell_set.rows if rows_out is None else np.searchsorted(rows_out, cell_set.rows)
                    out[at] = embedding = latent.embedding.float().cpu().numpy()
                    _check_finite(embedding, adata.obs_names[cell_set.rows])
                    bar.update(len(cell_set.rows))
        finally:
            self.module.train(was_training)
        if noise_iter is not None and next(noise_iter, None) is not None:
            raise ValueError(f"more GMVAE noise entries than the {len(embedded)} forward calls")
        params = sets.params() | {
            "gene_id_rule": self.gene_id_rule,
            "official_compat": official_compat,
            "precision": "fp32" if dtype is None else "bf16",
            "n_genes_vocabulary": len(self.genes),
        }
        record = {
            "params": params,
            "checkpoint": self.source,
            "n_genes_matched": sets.report.alignment.n_matched,
            "n_cell_sets": len(sets),
            "n_cells_left_out": adata.n_obs - sets.n_cells,
            "threads": thread_settings(),
        }
        if self.gene_aliases:  # checkpoints without aliases record what they always did
            record["n_genes_matched_via_aliases"] = sets.report.alignment.n_via_aliases
        return (out if rows_out is None else (rows_out, out)), record

    def cell_sets(self, adata: AnnData, spec: InputSpec, *, official_compat: bool = False, **options: Any) -> CellSets:
        """``adata`` checked against this model and cut into cell sets (see :class:`~opencellplm.data.CellSets`)."""
        return CellSets(
            adata,
            spec,
            vocabulary=self.genes,
            gene_id_rule=self.gene_id_rule,
            gene_aliases=self.gene_aliases,
            positional=self.config.positional_encoding != "none",
            official_compat=official_compat,
            **options,
        )

    def embed(self, adata: AnnData, *, key_added: str = "X_cellplm", **kwargs: Any) -> CellPLM:
        """Write cell embeddings to ``adata.obsm[key_added]`` and what was done to
        ``adata.uns['cellplm'][key_added]``: ``params`` (every effective setting, defaults included),
        ``checkpoint`` (name, path and sha256 of the weights), genes matched, cell sets and cells left
        out. Takes the arguments of :meth:`get_latent_representation`; returns ``self``.
        """
        require_anndata(adata)
        if adata.is_view:
            raise ValueError("adata is a view; call adata.copy() first, or use get_latent_representation()")
        embedding, record = self._embed(adata, **kwargs)
        adata.obsm[key_added] = embedding
        adata.uns.setdefault("cellplm", {})[key_added] = record
        return self

    def embed_file(
        self,
        source: str | Path,
        target: str | Path,
        *,
        key_added: str = "X_cellplm",
        overwrite: bool = False,
        distributed: bool = False,
        **kwargs,
    ) -> Path:
        """Embed an h5ad file into a new one, streaming: the counts are read set by set from disk
        (every count matrix stays on disk) and ``target`` is a copy of ``source`` with ``obsm[key_added]`` and
        ``uns['cellplm'][key_added]`` (see :meth:`embed`) added. Takes the arguments of
        :meth:`get_latent_representation`. Whether ``target`` can be written is checked before any work: it is
        neither ``source`` nor inside this model's folder, and ``key_added`` replaces no coordinates read
        (``spatial_key``) nor any obsm entry this package did not write.

        ``distributed=True`` under torchrun (every process calls it): each process embeds its share of the cell
        sets and process 0 writes ``target`` (see :mod:`~opencellplm.model.shards`); the output is the one process
        gives. Without torchrun it changes nothing.
        """
        if distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from .shards import embed_file_sharded

            return embed_file_sharded(self, source, target, key_added=key_added, overwrite=overwrite, **kwargs)
        return write_result_copy(
            source,
            target,
            "obsm",
            key_added,
            lambda adata: self._embed(adata, **kwargs),
            overwrite=overwrite,
            inputs=[self.source.get("path")],
            reads=[kwargs.get("spatial_key", "spatial")],
        )

    def embed_soma(
        self,
        uri: str | Path | None,
        target: str | Path,
        *,
        census: str | None = None,
        organism: str = "homo_sapiens",
        measurement: str = "RNA",
        layer: str = "raw",
        obs_filter: str | None = None,
        gene_key: str = "feature_name",
        key_added: str = "X_cellplm",
        overwrite: bool = False,
        block_cells: int = 20_000,
        distributed: bool = False,
        **kwargs,
    ) -> Path:
        """Embed the cells an ``obs`` query of a TileDB-SOMA experiment selects (or of the CELLxGENE Census
        release ``census``) into ``target`` (an h5ad file, or a zarr store named ``*.zarr``): their ``obs``
        (``soma_joinid`` kept), the measurement's genes (``var[gene_key]``) and the ``layer``'s counts, with
        ``obsm[key_added]``. The query is first exported, in blocks of cells, to a file beside ``target`` (kept
        when a killed run is started again, removed at the end); then as :meth:`embed_file` (``distributed``: as
        there, under torchrun).
        The experiment, measurement, layer, filter, and the genes' overlap with the vocabulary are checked before
        anything is written. ``kwargs``: :meth:`get_latent_representation`'s (``sample_key`` names an ``obs``
        column of the experiment). Needs ``tiledbsoma`` (``pip install 'opencellplm[soma]'``)."""
        from ..data.genes import align_genes
        from ..data.output import check_result_target
        from ..data.soma import export_query
        from .shards import (
            discard_empty_parts_folder,
            embed_file_sharded,
            make_parts_folder,
            parts_folder,
            remove_parts_folder,
        )

        target = Path(target)
        local = [Path(uri)] if census is None and uri is not None and "://" not in str(uri) else []
        check_result_target(target, overwrite=overwrite, inputs=[*local, self.source.get("path")])
        exported = parts_folder(target) / "query.h5ad"

        def check_genes(genes: list[str]) -> None:
            align_genes(genes, self.genes, source=f"var[{gene_key!r}] of the experiment", rule=self.gene_id_rule,
                        aliases=self.gene_aliases)  # fmt: skip

        allowed = set(InputSpec.__dataclass_fields__) | {"official_compat", "noise", "precision"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:  # before the export, not after it
            raise TypeError(f"embed_soma() got unexpected keyword arguments {unknown}")
        autocast_dtype(kwargs.get("precision", "auto"), self.device)  # refuses an unknown precision
        spatial_key = kwargs.get("spatial_key", "spatial")
        if key_added == spatial_key:
            raise ValueError(f"obsm[{key_added!r}] holds the coordinates read; choose another key_added (--key-added)")

        def prepare() -> None:
            export_query(uri, exported, census=census, organism=organism, measurement=measurement, layer=layer,
                         obs_filter=obs_filter, gene_key=gene_key, spatial_key=spatial_key,
                         sample_key=kwargs.get("sample_key"), check_genes=check_genes,
                         block_cells=block_cells)  # fmt: skip

        if distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return embed_file_sharded(
                self, exported, target, key_added=key_added, overwrite=overwrite, prepare=prepare, **kwargs
            )
        with new_folders_removed_on_failure(target), output_lock(target):
            make_parts_folder(target)
            try:
                prepare()
                self.embed_file(exported, target, key_added=key_added, overwrite=overwrite, **kwargs)
            finally:
                discard_empty_parts_folder(target)  # a refused query leaves nothing; an exported one is kept
            remove_parts_folder(target)  # the exported query: this run wrote it
        return target


def _check_finite(embedding: np.ndarray, names) -> None:
    bad = ~np.isfinite(embedding).all(1)
    if bad.any():
        raise FloatingPointError(
            f"the model gave non-finite (NaN or infinite) embeddings for {int(bad.sum())} of {len(names)} cells of a "
            f"cell set, e.g. {list(names[bad][:5])}; these cells have counts, so the model's weights or the input "
            "values are broken (load the checkpoint again to have its weights checked, and run opencellplm validate)"
        )


def _device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available to this torch build; use device='cpu'")
    return device
