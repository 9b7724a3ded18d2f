"""Latent layers: the Gaussian-mixture VAE of pretraining and the linear 'ae' of fine-tuning."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LatentConfig
from .outputs import GMVAENoise, LatentOutput

GUMBEL_EPS = 1e-20
VAR_EPS = 1e-8  # added to variances in the Gaussian log-density
REPARAM_EPS = 1e-10  # added to the variance before its square root when sampling z


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension of log N(x; mean, var) (diagonal)."""
    var = var + VAR_EPS
    return -0.5 * torch.sum(math.log(2.0 * math.pi) + torch.log(var) + torch.pow(x - mean, 2) / var, dim=-1)


def gmvae_loss(
    z: torch.Tensor,
    z_mean: torch.Tensor,
    z_var: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_var: torch.Tensor,
    cluster_logits: torch.Tensor,
    config: LatentConfig,
) -> torch.Tensor:
    """Floored GMVAE terms: ``w_g * max(floor, E[log q(z|h,y) - log p(z|y)]) + w_c * max(floor, KL(q(y|h) || U))``.

    A term below the floor contributes the constant floor and no gradient (as in the official code).
    """
    gaussian = (gaussian_log_density(z, z_mean, z_var) - gaussian_log_density(z, prior_mean, prior_var)).mean()
    prob = F.softmax(cluster_logits, dim=-1)
    neg_entropy = torch.mean(torch.sum(prob * F.log_softmax(cluster_logits, dim=-1), dim=-1))
    categorical = neg_entropy - math.log(1.0 / config.n_clusters)  # KL to the uniform prior
    floor = config.loss_floor
    return config.gaussian_weight * gaussian.clamp_min(floor) + config.categorical_weight * categorical.clamp_min(floor)


class GMVAELatent(nn.Module):
    """q(y | h) categorical, q(z | h, y) Gaussian, p(z | y) Gaussian prior per component.

    Eval is deterministic by default: the component is ``argmax`` of its logits, the embedding is
    the posterior mean and no noise is drawn. With ``official=True`` the component comes from a
    Gumbel-noised argmax and ``z`` is sampled, as in the official code; pass ``noise`` to replay
    recorded draws instead of using torch's generator.
    """

    def __init__(self, in_dim: int, config: LatentConfig):
        super().__init__()
        self.config = config
        k, dim = config.n_clusters, config.dim
        self.cluster_logits = nn.Linear(in_dim, k)
        self.hidden = nn.Linear(in_dim + k, config.hidden_dim)
        self.z_mean = nn.Linear(config.hidden_dim, dim)
        self.z_var = nn.Linear(config.hidden_dim, dim)
        self.prior_mean = nn.Linear(k, dim)
        self.prior_var = nn.Linear(k, dim)

    def _cluster(self, logits: torch.Tensor, official: bool, noise: GMVAENoise | None) -> torch.Tensor:
        if not (self.training or official):
            return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        uniform = torch.rand_like(logits) if noise is None else noise.gumbel_uniform.to(logits)
        _check_noise_shape("gumbel_uniform", uniform, logits)
        gumbel = -torch.log(-torch.log(uniform + GUMBEL_EPS) + GUMBEL_EPS)
        soft = F.softmax(logits + gumbel, dim=-1)  # temperature 1
        if self.training:
            return soft
        hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return (hard - soft).detach() + soft  # straight-through, as the official eval computes it

    def gaussians(
        self, h: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_mean, z_var, prior_mean, prior_var)``, each (N, D) in float32, of cells ``h`` given components ``y``."""
        a = F.relu(self.hidden(torch.cat([h, y], dim=1)))  # (N, hidden)
        z_mean, z_var = self.z_mean(a).float(), F.softplus(self.z_var(a).float())
        return z_mean, z_var, self.prior_mean(y).float(), F.softplus(self.prior_var(y).float())

    def forward(self, h: torch.Tensor, *, official: bool = False, noise: GMVAENoise | None = None) -> LatentOutput:
        logits = self.cluster_logits(h).float()  # (N, K); densities and losses in float32 under autocast
        y = self._cluster(logits, official, noise)  # (N, K)
        z_mean, z_var, prior_mean, prior_var = self.gaussians(h, y)
        if self.training or official:
            eps = torch.randn_like(z_mean) if noise is None else noise.gaussian_eps.to(z_mean)
            _check_noise_shape("gaussian_eps", eps, z_mean)
            z = z_mean + eps * torch.sqrt(z_var + REPARAM_EPS)
        else:
            z = z_mean
        loss = gmvae_loss(z, z_mean, z_var, prior_mean, prior_var, logits, self.config)
        embedding = z if self.training else z_mean
        return LatentOutput(embedding=embedding, loss=loss, cluster_logits=logits, cluster=y)


class LinearLatent(nn.Module):
    """The 'ae' latent: one linear projection, no loss."""

    def __init__(self, in_dim: int, config: LatentConfig):
        super().__init__()
        self.proj = nn.Linear(in_dim, config.dim)

    def forward(self, h: torch.Tensor, *, official: bool = False, noise: GMVAENoise | None = None) -> LatentOutput:
        z = self.proj(h)
        return LatentOutput(embedding=z, loss=z.new_zeros(()))


def _check_noise_shape(name: str, noise: torch.Tensor, like: torch.Tensor) -> None:
    if noise.shape != like.shape:
        raise ValueError(f"GMVAE noise {name} has shape {tuple(noise.shape)}, expected {tuple(like.shape)}")


def make_latent(in_dim: int, config: LatentConfig) -> nn.Module:
    return GMVAELatent(in_dim, config) if config.kind == "gmvae" else LinearLatent(in_dim, config)
