"""What pretraining taught a model: does its decoder depend on the cell, does it use its latent, and which loss
term dominates.

Each function takes a :class:`~opencellplm.CellPLM` and cells with raw counts (never trained on), and returns
plain numbers:

- :func:`decoder_dependence`: the spread across cells of the decoded gene shares against the observed ones,
  and the per-gene Pearson r between the two. A decoder that ignores the cell gives a tiny spread and r near 0.
- :func:`latent_usage`: how much the reconstruction loss rises when each cell's latent is swapped with another
  cell's; how many latent dimensions vary across cells (against the posterior noise and the prior); how many
  mixture components the cells use.
- :func:`loss_terms`: the size of every term of the pretraining loss on these cells, before and after the
  GMVAE floors and weights.

``benchmarks/pretraining_diagnostics.py`` runs them over the saved steps of a pretraining run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from anndata import AnnData

from ..config import MaskingConfig
from ..data import InputSpec
from ..distributions import nb_log_prob
from ..model import CellPLM
from ..module.latent import gaussian_log_density
from ..module.masking import hide_genes
from ..module.outputs import CellBatch

#: Components used by more than this share of the cells count as used.
COMPONENT_SHARE = 0.01
#: A latent dimension is active when its posterior mean varies across cells by more than this share of the
#: prior variance (Burda et al. 2016 use 0.01 against a unit prior).
ACTIVE_VARIANCE = 0.01


def _one_set(model: CellPLM, adata: AnnData, max_cells: int, seed: int) -> tuple[CellBatch, np.ndarray]:
    """At most ``max_cells`` cells of ``adata`` (seeded, in file order) as one cell set, and their rows."""
    rows = np.arange(adata.n_obs)
    if adata.n_obs > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
        adata = adata[rows].copy()
    sets = model.cell_sets(adata, InputSpec(max_cells=None))
    cell_set = next(iter(sets))
    return cell_set.batch.to(model.device), rows


def _per_cell_nll(counts: torch.Tensor, mean: torch.Tensor, dispersion: torch.Tensor) -> torch.Tensor:
    """NB negative log-likelihood summed over genes, per cell, the means scaled to each cell's total (as in the
    pretraining loss)."""
    scaled = mean / mean.sum(1, keepdim=True) * counts.sum(1, keepdim=True)
    return -nb_log_prob(counts, scaled, dispersion).sum(1)


@dataclass(frozen=True)
class DecoderDependence:
    """How much the decoded gene shares vary with the cell.

    Attributes
    ----------
    spread_decoded, spread_observed
        Coefficient of variation across cells of each gene's share of the cell's decoded NB means (of its
        observed counts), averaged over genes.
    spread_ratio
        ``spread_observed / spread_decoded``: 1 when the decoder varies as much as the data, large when it
        gives every cell the same profile.
    gene_r
        Mean over genes of the Pearson r across cells between decoded and observed shares.
    n_cells, n_genes
        Cells and genes scored (genes detected in at least one cell).
    """

    spread_decoded: float
    spread_observed: float
    spread_ratio: float
    gene_r: float
    n_cells: int
    n_genes: int


@torch.no_grad()
def decoder_dependence(model: CellPLM, adata: AnnData, *, max_cells: int = 3000, seed: int = 0) -> DecoderDependence:
    """Decode the cells of ``adata`` (eval mode, one cell set, nothing hidden) and compare the decoded gene shares
    with the observed ones (see :class:`DecoderDependence`)."""
    batch, _ = _one_set(model, adata, max_cells, seed)
    module = model.module.eval()
    decoded = module(batch, decode_genes=batch.gene_index).nb.mean.double()
    return _dependence(decoded, batch.dense_counts().double())


def label_mean_dependence(
    model: CellPLM, adata: AnnData, labels_key: str, *, max_cells: int = 3000, seed: int = 0
) -> DecoderDependence:
    """The figures of :func:`decoder_dependence` for a reference decoder that gives each cell the mean observed
    profile of its labelled cell type (the same cells and genes): what knowing the type alone reaches. The observed
    shares carry counting noise no decoder can predict, so this is a yardstick for the per-gene r, not a ceiling."""
    batch, rows = _one_set(model, adata, max_cells, seed)
    counts = batch.dense_counts().double()
    shares = counts / counts.sum(1, keepdim=True).clamp_min(1.0)
    labels = np.asarray(adata.obs[labels_key].astype(str))[rows]
    decoded = torch.zeros_like(shares)
    for label in np.unique(labels):
        cells = torch.as_tensor(labels == label)
        decoded[cells] = shares[cells].mean(0)
    return _dependence(decoded, counts)


def _dependence(decoded: torch.Tensor, counts: torch.Tensor) -> DecoderDependence:
    """Spread and per-gene r of decoded means (any scale per cell) against observed counts, over the genes detected
    in at least one cell."""
    keep = (counts > 0).any(0)
    counts, decoded = counts[:, keep], decoded[:, keep]
    decoded = decoded / decoded.sum(1, keepdim=True).clamp_min(1e-300)
    observed = counts / counts.sum(1, keepdim=True).clamp_min(1.0)

    def spread(shares: torch.Tensor) -> float:
        return float((shares.std(0) / shares.mean(0).clamp_min(1e-30)).mean())

    dc, oc = decoded - decoded.mean(0), observed - observed.mean(0)
    denominator = dc.norm(dim=0) * oc.norm(dim=0)
    r = (dc * oc).sum(0)[denominator > 0] / denominator[denominator > 0]
    spread_decoded, spread_observed = spread(decoded), spread(observed)
    return DecoderDependence(
        spread_decoded=spread_decoded,
        spread_observed=spread_observed,
        spread_ratio=spread_observed / spread_decoded if spread_decoded > 0 else math.inf,
        gene_r=float(r.mean()) if len(r) else math.nan,
        n_cells=int(counts.shape[0]),
        n_genes=int(counts.shape[1]),
    )


@dataclass(frozen=True)
class LatentUsage:
    """How much the decoder and the cells use the latent space.

    Attributes
    ----------
    swap_nll_increase
        Rise of the NB reconstruction loss (nats per cell, genes summed, nothing hidden) when each cell is decoded
        from another cell's latent (a seeded permutation) instead of its own: 0 when the decoder ignores the latent.
    swap_nll_increase_share
        The same rise as a share of the loss with the cells' own latents.
    active_dims
        Latent dimensions whose posterior mean varies across cells by more than ``ACTIVE_VARIANCE`` times the mean
        prior variance (GMVAE) or times the mean variance of all dimensions (a latent without a prior).
    signal_to_noise
        Mean over dimensions of the variance across cells of the posterior mean over the mean posterior variance
        (the noise the decoder sees in training); NaN for a latent without noise.
    components_used, component_entropy
        Mixture components that are the most likely one for more than ``COMPONENT_SHARE`` of the cells, and the
        entropy (nats) of that assignment; None without a mixture.
    depth_share
        Share of the posterior mean's variance across cells that is linear in the log of each cell's total count
        over the model's genes (variance-weighted R^2 over dimensions). The NB decoder rescales every cell to its
        own total, so depth is not needed for reconstruction; but where depth follows cell type (PBMC 68k reduced,
        whose counts cover 765 variable genes) it is signal as well as nuisance: regressing it out of
        ``cellplm-small``'s latent there lowered the best Leiden ARI from 0.56 to 0.35.
    dim
        Latent dimensions.
    """

    swap_nll_increase: float
    swap_nll_increase_share: float
    active_dims: int
    signal_to_noise: float
    components_used: int | None
    component_entropy: float | None
    depth_share: float
    dim: int


def _posterior(module, batch: CellBatch) -> dict[str, torch.Tensor]:
    """The latent layer's posterior mean and variance (and the prior and the component probabilities of the GMVAE),
    in eval mode: the most likely component of each cell."""
    h = module.embedder(batch.counts, batch.gene_index, batch.coords)
    h = module.pre_latent_norm(module.encoder(h))
    latent = module.latent
    if not hasattr(latent, "gaussians"):  # the linear 'ae' latent: no noise, no prior
        return {"mean": latent(h).embedding.float()}
    logits = latent.cluster_logits(h).float()
    y = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(h.dtype)
    mean, var, prior_mean, prior_var = latent.gaussians(h, y)
    return {"mean": mean, "var": var, "prior_mean": prior_mean, "prior_var": prior_var, "prob": F.softmax(logits, -1)}


@torch.no_grad()
def latent_usage(model: CellPLM, adata: AnnData, *, max_cells: int = 3000, seed: int = 0) -> LatentUsage:
    """Measure :class:`LatentUsage` on the cells of ``adata`` (eval mode, one cell set)."""
    batch, _ = _one_set(model, adata, max_cells, seed)
    module = model.module.eval()
    posterior = _posterior(module, batch)
    z = posterior["mean"]
    counts = batch.dense_counts().float()
    decoder = module.decoder
    own = decoder(z, batch, genes=batch.gene_index)
    order = torch.as_tensor(np.random.default_rng(seed).permutation(z.shape[0]), device=z.device)
    swapped = decoder(z[order], batch, genes=batch.gene_index)
    nll_own = _per_cell_nll(counts, own.mean, own.dispersion).mean()
    nll_swapped = _per_cell_nll(counts, swapped.mean, swapped.dispersion).mean()
    spread = z.var(0)  # (D,) variance across cells of the posterior mean
    depth = counts.sum(1).clamp_min(1).log()
    centred, depth = z - z.mean(0), depth - depth.mean()
    explained = (centred.T @ depth) ** 2 / (depth @ depth).clamp_min(1e-12) / (len(depth) - 1)  # (D,) variance
    depth_share = float(explained.sum() / spread.sum().clamp_min(1e-12))
    if "var" in posterior:
        reference = posterior["prior_var"].mean()
        signal_to_noise = float((spread / posterior["var"].mean(0)).mean())
        assignment = posterior["prob"].argmax(1)
        shares = torch.bincount(assignment, minlength=posterior["prob"].shape[1]).double() / len(assignment)
        used = int((shares > COMPONENT_SHARE).sum())
        entropy = float(-(shares[shares > 0] * shares[shares > 0].log()).sum())
    else:
        reference, signal_to_noise, used, entropy = spread.mean(), math.nan, None, None
    return LatentUsage(
        swap_nll_increase=float(nll_swapped - nll_own),
        swap_nll_increase_share=float((nll_swapped - nll_own) / nll_own),
        active_dims=int((spread > ACTIVE_VARIANCE * reference).sum()),
        signal_to_noise=signal_to_noise,
        components_used=used,
        component_entropy=entropy,
        depth_share=depth_share,
        dim=int(z.shape[1]),
    )


@dataclass(frozen=True)
class LossTerms:
    """The terms of the pretraining loss on held-out cells (eval mode: no dropout, fixed masks; the GMVAE terms at
    a posterior sample, as in training).

    Attributes
    ----------
    nb_masked_entries, nb_visible_entries
        NB loss (nats per masked cell) of the hidden entries, and of the entries the model saw, of the cells with
        hidden genes; their sum is the main reconstruction term.
    nb_masked_term
        The extra term on the hidden entries alone (``masked_term``), its means scaled to the hidden total.
    gaussian, categorical
        The GMVAE terms before the floor: ``E[log q(z|x,y) - log p(z|y)]`` and ``KL(q(y|x) || uniform)``, nats per
        cell.
    latent_loss
        The latent loss the optimiser sees: ``w_g * max(floor, gaussian) + w_c * max(floor, categorical)``; a term
        at its floor gives no gradient (``gaussian_active``, ``categorical_active`` say whether each is above it).
    total
        The pretraining loss: reconstruction terms + latent loss.
    """

    nb_masked_entries: float
    nb_visible_entries: float
    nb_masked_term: float
    gaussian: float
    categorical: float
    latent_loss: float
    gaussian_active: bool
    categorical_active: bool
    total: float


@torch.no_grad()
def loss_terms(
    model: CellPLM, adata: AnnData, masking: MaskingConfig, *, max_cells: int = 500, seed: int = 0
) -> LossTerms:
    """Split the pretraining loss of a cell set of ``adata`` (at most ``max_cells`` cells, the corpus's set size)
    into its terms (see :class:`LossTerms`), with the masking of the model's pretraining (no cells dropped)."""
    batch, _ = _one_set(model, adata, max_cells, seed)
    module = model.module.eval()
    torch.manual_seed(seed)
    out = module(batch, corrupt=replace(masking, drop_cell_rate=0.0, thin_rate=0.0), decode_genes=batch.gene_index)
    counts = out.cells.dense_counts().float()
    mean, dispersion = out.nb.mean, out.nb.dispersion
    mask = out.input_mask
    cells = mask.any(1)
    scaled = mean / mean.sum(1, keepdim=True) * counts.sum(1, keepdim=True)
    nll = -nb_log_prob(counts, scaled, dispersion)[cells]
    hidden = mask[cells].float()
    masked_entries = float((nll * hidden).sum(1).mean())
    visible_entries = float((nll * (1 - hidden)).sum(1).mean())
    t, mu = counts[cells] * hidden, mean[cells] * hidden
    mu = mu / mu.sum(1, keepdim=True).clamp_min(1e-30) * t.sum(1, keepdim=True)
    masked_term = float((-nb_log_prob(t, mu, dispersion[cells] * hidden) * hidden).sum(1).mean())
    config = module.config.latent
    gaussian = categorical = math.nan
    latent_loss = float(out.latent.loss)
    if config.kind == "gmvae":  # the terms at a posterior sample, of the input the encoder saw, as in training
        seen = replace(out.cells, counts=hide_genes(out.cells.counts, mask))
        posterior = _posterior(module, seen)
        z = posterior["mean"] + torch.randn_like(posterior["mean"]) * posterior["var"].sqrt()
        gaussian = float(
            (
                gaussian_log_density(z, posterior["mean"], posterior["var"])
                - gaussian_log_density(z, posterior["prior_mean"], posterior["prior_var"])
            ).mean()
        )
        prob = posterior["prob"]
        categorical = float((prob * prob.clamp_min(1e-30).log()).sum(-1).mean() + math.log(config.n_clusters))
        latent_loss = config.gaussian_weight * max(config.loss_floor, gaussian) + config.categorical_weight * max(
            config.loss_floor, categorical
        )
    return LossTerms(
        nb_masked_entries=masked_entries,
        nb_visible_entries=visible_entries,
        nb_masked_term=masked_term,
        gaussian=gaussian,
        categorical=categorical,
        latent_loss=latent_loss,
        gaussian_active=bool(gaussian > config.loss_floor),
        categorical_active=bool(categorical > config.loss_floor),
        total=masked_entries + visible_entries + masked_term + latent_loss,
    )


def as_row(**parts: Any) -> dict[str, float]:
    """Flatten diagnostics dataclasses into one ``{prefix_field: value}`` row (prefix = the keyword)."""
    row: dict[str, float] = {}
    for prefix, part in parts.items():
        values = part if isinstance(part, dict) else part.__dict__
        row |= {f"{prefix}_{key}": value for key, value in values.items()}
    return row
