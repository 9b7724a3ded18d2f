"""The negative binomial distribution, the one place where its likelihood is written."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, constraints

#: Stabiliser of the official CellPLM objectives, kept so that losses match them exactly.
NB_EPS = 1e-10


def nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = NB_EPS) -> torch.Tensor:
    """Element-wise log-likelihood of counts ``x`` under NB(mean ``mu``, inverse dispersion ``theta``).

    ``log p = lgamma(x+θ) - lgamma(θ) - lgamma(x+1) + θ log(θ/(θ+μ)) + x log(μ/(θ+μ))``, written with
    ``eps`` in the same places as the official objectives so their values are reproduced.
    """
    # Same operation order as the official objectives: their loss values are float32-exact targets.
    t1 = _lgamma_terms(x, theta, eps)
    t2 = (theta + x) * torch.log(1.0 + (mu / (theta + eps))) + (x * (torch.log(theta + eps) - torch.log(mu + eps)))
    nll = t1 + t2
    return -nll


#: Above this share of non-zero counts the lgamma terms are evaluated densely (gathering would cost more).
DENSE_SHARE = 0.5


def _lgamma_terms(x: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """``lgamma(θ+eps) + lgamma(x+1) - lgamma(x+θ+eps)``, which is exactly 0 where ``x`` is 0 (and so is its
    gradient in θ): evaluated at the non-zero counts only, most of a single-cell matrix being zeros. Every value is
    the dense formula's, bit for bit. Counts that need a gradient keep the dense formula (its x-gradient at 0 is not
    0)."""
    x, theta = torch.broadcast_tensors(x, theta)
    nonzero = x != 0
    if x.requires_grad or x.dim() == 0 or nonzero.float().mean() > DENSE_SHARE:
        return torch.lgamma(theta + eps) + torch.lgamma(x + 1.0) - torch.lgamma(x + theta + eps)
    where = nonzero.nonzero(as_tuple=True)
    xs, th = x[where], theta[where]
    values = torch.lgamma(th + eps) + torch.lgamma(xs + 1.0) - torch.lgamma(xs + th + eps)
    return torch.zeros(x.shape, dtype=values.dtype, device=values.device).index_put(where, values)


class NegativeBinomial(Distribution):
    """Negative binomial parameterised by its mean ``mu`` and inverse dispersion ``theta``.

    The variance is ``mu + mu**2 / theta``.
    """

    arg_constraints = {"mu": constraints.nonnegative, "theta": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor, validate_args: bool | None = None):
        self.mu, self.theta = torch.broadcast_tensors(mu, theta)
        super().__init__(batch_shape=self.mu.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def variance(self) -> torch.Tensor:
        return self.mu + self.mu.pow(2) / self.theta

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return nb_log_prob(value, self.mu, self.theta)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        # Gamma-Poisson mixture: rate ~ Gamma(theta, theta / mu).
        sample_shape = torch.Size(sample_shape)
        shape = self._extended_shape(sample_shape)
        rate = torch.distributions.Gamma(self.theta, self.theta / self.mu.clamp_min(1e-12)).sample(sample_shape)
        return torch.poisson(rate.expand(shape))
