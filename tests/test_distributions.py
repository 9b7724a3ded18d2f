"""The negative binomial: log-likelihood against scipy, sampling moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from opencellplm.distributions import NegativeBinomial, nb_log_prob


@pytest.mark.parametrize("mu,theta", [(0.3, 0.5), (2.0, 1.0), (15.0, 4.0), (200.0, 30.0)])
def test_log_prob_matches_scipy(mu, theta):
    x = torch.arange(0, 60, dtype=torch.float64)
    ours = nb_log_prob(x, torch.full_like(x, mu), torch.full_like(x, theta), eps=0.0)
    # scipy's nbinom(n, p) counts failures before n successes: n = theta, p = theta / (theta + mu).
    expected = stats.nbinom.logpmf(x.numpy(), theta, theta / (theta + mu))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_default_eps_changes_little_in_float32():
    x = torch.tensor([0.0, 1.0, 5.0, 40.0])
    mu, theta = torch.tensor(3.0), torch.tensor(2.0)
    expected = stats.nbinom.logpmf(x.numpy(), 2.0, 2.0 / 5.0)
    np.testing.assert_allclose(NegativeBinomial(mu, theta).log_prob(x).numpy(), expected, rtol=1e-5)


def test_sampling_moments():
    torch.manual_seed(0)
    d = NegativeBinomial(torch.tensor([1.5, 20.0]), torch.tensor([0.7, 5.0]))
    draws = d.sample((200_000,))
    np.testing.assert_allclose(draws.mean(0).numpy(), d.mean.numpy(), rtol=0.02)
    np.testing.assert_allclose(draws.var(0).numpy(), d.variance.numpy(), rtol=0.05)


def test_validation_rejects_negative_counts():
    d = NegativeBinomial(torch.tensor(2.0), torch.tensor(1.0), validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor(-1.0))


@pytest.mark.parametrize("rate", [0.1, 3.0])  # mostly zeros (the lgamma terms gathered) and mostly counts (dense)
def test_log_prob_of_sparse_counts_equals_the_dense_formula_bit_for_bit(rate):
    """The lgamma terms are evaluated at the non-zero counts only; values and mean-gradients stay the dense
    formula's exactly, θ-gradients (summed over cells) to float rounding; θ broadcast over cells works."""
    from opencellplm.distributions import NB_EPS

    def dense(x, mu, theta, eps=NB_EPS):
        t1 = torch.lgamma(theta + eps) + torch.lgamma(x + 1.0) - torch.lgamma(x + theta + eps)
        t2 = (theta + x) * torch.log(1.0 + (mu / (theta + eps))) + (x * (torch.log(theta + eps) - torch.log(mu + eps)))
        return -(t1 + t2)

    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(300, 400, generator=g, dtype=torch.float64) * rate)
    grads = []
    for f in (dense, nb_log_prob):
        mu = torch.rand(300, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.01
        theta = torch.rand(400, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.3
        mu, theta = mu.requires_grad_(), theta.requires_grad_()
        value = f(x, mu, theta)
        value.sum().backward()
        grads.append((value.detach(), mu.grad, theta.grad))
    (a, mu_a, theta_a), (b, mu_b, theta_b) = grads
    assert torch.equal(a, b) and torch.equal(mu_a, mu_b)
    torch.testing.assert_close(theta_b, theta_a, rtol=1e-10, atol=1e-10)  # θ's sums over cells, in another order


def test_log_prob_keeps_the_gradient_in_the_counts():
    """Counts that need a gradient get the dense formula (at a zero count the x-gradient of the lgamma terms is not
    0), so their gradient is the dense one."""
    from opencellplm.distributions import NB_EPS

    mu, theta = torch.full((4,), 1.5), torch.full((4,), 0.7)
    grads = []
    for sparse in (True, False):
        x = torch.tensor([0.0, 0.0, 0.0, 2.0], requires_grad=True)
        if sparse:
            nb_log_prob(x, mu, theta).sum().backward()
        else:
            t1 = torch.lgamma(theta + NB_EPS) + torch.lgamma(x + 1.0) - torch.lgamma(x + theta + NB_EPS)
            t2 = (theta + x) * torch.log(1.0 + mu / (theta + NB_EPS)) + x * (
                torch.log(theta + NB_EPS) - torch.log(mu + NB_EPS)
            )
            (-(t1 + t2)).sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1]) and grads[0][0] != 0
