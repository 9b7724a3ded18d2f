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
