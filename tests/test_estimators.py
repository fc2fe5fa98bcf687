"""MMD and the beta-TCVAE decomposition against direct computations and known answers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vaelab.errors import ConfigError
from vaelab.distributions import log_normal as gaussian_log_density
from vaelab.models.estimators import WAE_SCALES, mmd, tc_decomposition

D64 = torch.float64


# ---------------------------------------------------------------- MMD
def mmd_by_loops(x, y, kernel, scales, sigma=1.0):
    """The unbiased MMD^2, written out pair by pair."""
    dim = x.shape[1]

    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        total = 0.0
        for s in scales:
            c = 2 * dim * sigma**2 * s
            total += c / (c + d2) if kernel == "imq" else math.exp(-d2 / c)
        return total

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
@pytest.mark.parametrize("scale", [1.0, 0.3, WAE_SCALES])
def test_mmd_against_a_double_loop(kernel, scale):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g, dtype=D64)
    y = torch.randn(5, 3, generator=g, dtype=D64) + 0.5
    scales = [scale] if isinstance(scale, float) else scale
    got = mmd(x, y, kernel=kernel, scale=scale, sigma=1.5)
    assert got.item() == pytest.approx(mmd_by_loops(x, y, kernel, scales, sigma=1.5), rel=1e-10)


def test_mmd_identical_and_separated_samples():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=D64)
    # Identical samples: the cross term keeps the 16 diagonal k(x_i, x_i) = 1 that the
    # within terms drop, so MMD^2_u = 2 (S - B (B - 1)) / (B^2 (B - 1)) <= 0, S = sum_{i != j} k.
    c = 2 * 4 * 1.0
    k = c / (c + torch.cdist(x, x) ** 2)
    s = k.sum() - k.diagonal().sum()
    assert mmd(x, x).item() == pytest.approx((2 * (s - 16 * 15) / (16**2 * 15)).item(), rel=1e-9)
    # Two tight clusters far apart: within-sample kernels are 1, cross kernels ~0,
    # so MMD^2 = 2 per kernel scale.
    a = 1e-6 * torch.randn(10, 4, generator=g, dtype=D64)
    b = 1e4 + 1e-6 * torch.randn(12, 4, generator=g, dtype=D64)
    for kernel in ("imq", "rbf"):
        assert mmd(a, b, kernel).item() == pytest.approx(2.0, abs=1e-6)
        assert mmd(a, b, kernel, scale=WAE_SCALES).item() == pytest.approx(2.0 * len(WAE_SCALES), abs=1e-5)


def test_mmd_is_unbiased_for_one_distribution():
    g = torch.Generator().manual_seed(2)
    draws = torch.stack([mmd(torch.randn(32, 5, generator=g, dtype=D64), torch.randn(32, 5, generator=g, dtype=D64),
                             kernel) for _ in range(200) for kernel in ("imq", "rbf")])
    assert abs(draws.mean().item()) < 3 * draws.std().item() / math.sqrt(len(draws))
    shifted = mmd(torch.randn(256, 5, generator=g), torch.randn(256, 5, generator=g) + 1.0)
    assert shifted.item() > 10 * draws.std().item()


def test_mmd_has_gradients_even_for_repeated_points():
    x = torch.zeros(4, 3, requires_grad=True)
    y = torch.randn(6, 3)
    mmd(x, y, "rbf", scale=WAE_SCALES).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kwargs, words", [({"scale": 0.0}, "scale must be positive"),
                                           ({"scale": [1.0, -2.0]}, "scale must be positive"),
                                           ({"sigma": 0.0}, "sigma must be positive"),
                                           ({"kernel": "cauchy"}, "kernel must be")])
def test_mmd_bad_settings_are_one_line(kwargs, words):
    with pytest.raises(ConfigError) as e:
        mmd(torch.randn(4, 2), torch.randn(4, 2), **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="at least 2"):
        mmd(torch.randn(1, 2), torch.randn(4, 2))
    with pytest.raises(ConfigError, match=r"\(n, D\) and \(m, D\)"):
        mmd(torch.randn(4, 2), torch.randn(4, 3))


# ---------------------------------------------------------------- beta-TCVAE
def posterior(batch, dim, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = spread * torch.randn(batch, dim, generator=g, dtype=D64)
    logvar = 0.5 * torch.randn(batch, dim, generator=g, dtype=D64) - 1.0
    z = mu + torch.exp(0.5 * logvar) * torch.randn(batch, dim, generator=g, dtype=D64)
    return z, mu, logvar


def exact_log_q(z, mu, logvar):
    """log q(z_i) and sum_d log q(z_id) over the data set of the given posteriors, one sample at a time."""
    n, _dim = mu.shape
    every = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))  # the N posteriors
    joint, marg = [], []
    for i in range(n):
        terms = every.log_prob(z[i])  # (N, D): log q(z_i[d] | x_n)
        joint.append(torch.logsumexp(terms.sum(1), 0) - math.log(n))
        marg.append((torch.logsumexp(terms, 0) - math.log(n)).sum())
    return torch.stack(joint), torch.stack(marg)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_the_three_terms_sum_to_the_kl_sample(estimator):
    z, mu, logvar = posterior(32, 5, 0)
    r = tc_decomposition(z, mu, logvar, 1000, estimator=estimator)
    assert set(r) == {"log_qz", "log_prod_qzj", "log_qz_x", "log_pz", "mi", "tc", "dwkl"}
    assert all(v.shape == (32,) for v in r.values())
    total = r["mi"] + r["tc"] + r["dwkl"]
    assert torch.allclose(total, r["log_qz_x"] - r["log_pz"], atol=1e-10)
    normal = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    assert torch.allclose(r["log_pz"], normal.log_prob(z).sum(1))
    assert torch.allclose(r["log_qz_x"], torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1))


def test_the_sum_estimates_the_analytic_kl():
    # E_{z ~ q(z|x)}[log q(z|x) - log p(z)] = KL(q(z|x) || N(0, I)), with no bias.
    _, mu, logvar = posterior(64, 4, 1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
    g = torch.Generator().manual_seed(3)
    draws = []
    for _ in range(300):
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g, dtype=D64)
        r = tc_decomposition(z, mu, logvar, 10_000)
        draws.append((r["mi"] + r["tc"] + r["dwkl"]).mean())
    draws = torch.stack(draws)
    assert draws.mean().item() == pytest.approx(kl.item(), abs=4 * draws.std().item() / math.sqrt(len(draws)))


def test_mws_on_the_whole_data_set_is_exact_minus_log_n():
    n, dim = 24, 3
    z, mu, logvar = posterior(n, dim, 2)
    joint, marg = exact_log_q(z, mu, logvar)
    r = tc_decomposition(z, mu, logvar, n, estimator="mws")
    assert torch.allclose(r["log_qz"] + math.log(n), joint, atol=1e-10)
    assert torch.allclose(r["log_prod_qzj"] + dim * math.log(n), marg, atol=1e-10)


def test_mss_weights_make_identical_posteriors_exact():
    # All posteriors equal: q(z) = q(z|x) exactly. MSS weights sum to 1 per row, so it
    # is exact; MWS is low by log N.
    z, mu, logvar = posterior(16, 3, 4)
    mu, logvar = mu[:1].expand(16, 3), logvar[:1].expand(16, 3)
    for n in (16, 5000):
        mss = tc_decomposition(z, mu, logvar, n, estimator="mss")
        assert torch.allclose(mss["log_qz"], mss["log_qz_x"], atol=1e-10)
        assert torch.allclose(mss["tc"], torch.zeros(16, dtype=D64), atol=1e-10)
        mws = tc_decomposition(z, mu, logvar, n, estimator="mws")
        assert torch.allclose(mws["log_qz"], mws["log_qz_x"] - math.log(n), atol=1e-10)


def grid_posterior(k: int, dim: int, correlated: bool, sd: float = 0.3, seed: int = 5):
    """Posteriors N(mu_n, sd^2) with means on a full k^dim grid (q(z) factorises exactly)
    or, correlated, on the diagonal mu_n = (a_n, ..., a_n)."""
    a = torch.linspace(-2, 2, k, dtype=D64)
    if correlated:
        mu = a.repeat_interleave(k ** (dim - 1))[:, None].expand(-1, dim).clone()
    else:
        mu = torch.tensor(list(itertools.product(a.tolist(), repeat=dim)), dtype=D64)
    logvar = torch.full_like(mu, 2 * math.log(sd))
    g = torch.Generator().manual_seed(seed)
    z = mu + sd * torch.randn(mu.shape, generator=g, dtype=D64)
    return z, mu, logvar


def test_tc_of_a_factorised_aggregate_posterior():
    k, dim = 5, 3
    n = k**dim
    z, mu, logvar = grid_posterior(k, dim, correlated=False)
    joint, marg = exact_log_q(z, mu, logvar)
    assert torch.allclose(joint, marg, atol=1e-10)  # truly factorised: TC is 0 for every sample
    mws = tc_decomposition(z, mu, logvar, n, estimator="mws")
    assert torch.allclose(mws["tc"], torch.full((n,), (dim - 1) * math.log(n), dtype=D64), atol=1e-9)
    mss = tc_decomposition(z, mu, logvar, n, estimator="mss")
    assert abs(mss["tc"].mean().item()) < 0.1
    # A batch of 100 from a data set of 20^2 such posteriors: MSS still reads ~0.
    z, mu, logvar = grid_posterior(20, 2, correlated=False, sd=0.2)
    pick = torch.randperm(400, generator=torch.Generator().manual_seed(0))[:100]
    tc = tc_decomposition(z[pick], mu[pick], logvar[pick], 400, estimator="mss")["tc"].mean().item()
    assert abs(tc) < 0.15


def test_tc_of_correlated_codes_is_clearly_positive():
    k, dim = 5, 3
    z, mu, logvar = grid_posterior(k, dim, correlated=True)  # 125 posteriors on the diagonal
    n = len(mu)
    joint, marg = exact_log_q(z, mu, logvar)
    true_tc = (joint - marg).mean().item()
    assert true_tc > 1.5
    mws = tc_decomposition(z, mu, logvar, n, estimator="mws")
    assert mws["tc"].mean().item() - (dim - 1) * math.log(n) == pytest.approx(true_tc, abs=1e-9)
    mss = tc_decomposition(z, mu, logvar, n, estimator="mss")
    assert mss["tc"].mean().item() > 1.5


def test_stable_for_very_narrow_posteriors():
    z, mu, _logvar = posterior(8, 4, 6, spread=50.0)
    r = tc_decomposition(z.float(), mu.float(), torch.full((8, 4), -30.0), 100, estimator="mss")
    assert all(torch.isfinite(v).all() for v in r.values())


def test_a_given_prior_log_density():
    z, mu, logvar = posterior(8, 2, 7)
    log_pz = torch.full((8,), -3.0, dtype=D64)
    r = tc_decomposition(z, mu, logvar, 50, prior=log_pz)
    assert torch.equal(r["log_pz"], log_pz)


@pytest.mark.parametrize("kwargs, words", [({"dataset_size": None}, "data set size N"),
                                           ({"dataset_size": 7}, "data set size N"),
                                           ({"estimator": "iwae"}, "'mws' or 'mss'"),
                                           ({"prior": "laplace"}, "prior must be"),
                                           ({"prior": torch.zeros(3)}, "shape (8,)")])
def test_tc_bad_settings_are_one_line(kwargs, words):
    z, mu, logvar = posterior(8, 2, 8)
    args = {"dataset_size": 100} | kwargs
    with pytest.raises(ConfigError) as e:
        tc_decomposition(z, mu, logvar, **args)
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="one shape"):
        tc_decomposition(z, mu[:, :1], logvar, 100)


def test_gaussian_log_density_matches_torch():
    z, mu, logvar = posterior(5, 3, 9)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z)
    assert torch.allclose(gaussian_log_density(z, mu, logvar), ref)
