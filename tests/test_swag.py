"""SWAG and MultiSWAG: the moments of SGD iterates, the Gaussians, and the method.

The statistical test runs SGD with Gaussian gradient noise on a known quadratic, where the
iterates form a linear autoregression whose stationary covariance and lagged covariances are
known exactly, so the expected SWAG mean and covariance are known too. Its learning rate comes
from the curvature rule, whose lambda_max on a quadratic is known exactly.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import assert_identical

import bayesresnet as brn
from bayesresnet.arviz_compat import import_arviz
from bayesresnet.arviz_compat import loo as compat_loo
from bayesresnet.data import Standardizer, cubic
from bayesresnet.diagnostics import Diagnostics
from bayesresnet.export import load, save
from bayesresnet.inference.base import seeded_generator
from bayesresnet.inference.ensemble import (
    Ensemble,
    default_batch_size,
    initial_points,
    train_members,
)
from bayesresnet.inference.optim import map_objective
from bayesresnet.inference.swag import (
    SWAG,
    SwagGaussian,
    SwagMoments,
    max_curvature,
    swa_batch_size,
    swa_sgd,
)
from bayesresnet.posterior import Posterior
from bayesresnet.registry import method_class

# Tiny runs: the point is shapes, seeds and bookkeeping, not good posteriors.
TINY = {"members": 3, "pretrain_steps": 40, "swa_steps": 60, "collect_every": 3, "rank": 5,
        "num_draws": 10}


@pytest.fixture(scope="module")
def toy():
    x, y = cubic(20, seed=0)
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=4, depth=3, basis=brn.Linear()))
    return model, x, y


def _fit(toy, method, seed=5, **kwargs):
    model, x, y = toy
    return brn.fit(model, x, y, method=method, seed=seed, progress=False, check=False, **kwargs)


@pytest.fixture(scope="module")
def post(toy):
    return _fit(toy, SWAG(**TINY, members_per_unit=2))


def _standardized(toy):
    model, x, y = toy
    x_t = torch.as_tensor(x, dtype=torch.float64)
    y_t = torch.as_tensor(y, dtype=torch.float64).reshape(len(x), -1)
    return model, Standardizer().fit(x_t).transform(x_t), Standardizer().fit(y_t).transform(y_t)


# ---------------------------------------------------------------- SGD on a quadratic: theory
def _rotation(dim: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q


def _expected_swag(sigma, m_collect, steps_between, collected, rank):
    """Exact expectations of the SWAG mean's covariance and of the SWAG covariance.

    Collected iterates x_1..x_T of a stationary AR(1) process z_{t+1} = M z_t + noise with
    stationary covariance ``sigma``, taken every ``steps_between`` steps, have lagged
    covariances Cov(x_{n+h}, x_n) = G(h) = (M^steps_between)^h sigma. Then, with xbar the mean
    of all T:
        Cov(xbar)             = V = (1/T^2) sum_{n,m} G(n - m)
        E[variance estimate]  = diag(sigma - V)          (second central moment over all T)
        E[d_n d_n^T]          = sigma - (C_n + C_n^T) + V,  C_n = Cov(x_n, xbar)
                              = (1/T) sum_m G(n - m),
    for the deviations d_n = x_n - xbar of the last K iterates.
    """
    step = np.linalg.matrix_power(m_collect, steps_between)
    lag = [sigma]
    for _ in range(1, collected):
        lag.append(step @ lag[-1])

    def g(h):
        return lag[h] if h >= 0 else lag[-h].T

    total = collected
    cov_mean = sum(g(n - m) for n in range(total) for m in range(total)) / total**2
    dd = np.zeros_like(sigma)
    for n in range(total - rank, total):
        c_n = sum(g(n - m) for m in range(total)) / total
        dd += sigma - c_n - c_n.T + cov_mean
    swag = 0.5 * (np.diag(np.diag(sigma - cov_mean)) + dd / (rank - 1))
    return cov_mean, swag


def test_swag_of_sgd_with_gaussian_gradient_noise_on_a_quadratic_matches_theory():
    # C independent SGD runs, one batched program, on the per-point objective
    # -0.5 (z - mu)' A (z - mu) + xi' z with fresh xi ~ N(0, S) at every call: each step is
    # z <- z + lr (A (mu - z) + xi), a linear AR(1) with M = I - lr A and noise lr^2 S, whose
    # stationary covariance solves Sigma = M Sigma M' + lr^2 S. Runs start from N(mu, Sigma), so
    # every collected iterate is stationary and the SWAG expectations are exact (no burn-in).
    # The learning rate is SWAG's curvature rule, 0.3 / lambda_max(A) = 0.3 / 6 = 0.05, one per
    # member from its own Lanczos run.
    gen = torch.Generator().manual_seed(20261206)
    dim, members, num_data = 3, 4000, 7
    lr, collect_every, collected, rank = 0.05, 10, 40, 10
    rot = _rotation(dim, gen)
    a = rot @ torch.diag(torch.tensor([1.0, 2.5, 6.0], dtype=torch.float64)) @ rot.T
    s = torch.tensor([[1.0, 0.3, 0.0], [0.3, 2.0, -0.4], [0.0, -0.4, 0.5]], dtype=torch.float64)
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    noise_factor = torch.linalg.cholesky(s)

    m = np.eye(dim) - lr * a.numpy()
    q = lr**2 * s.numpy()
    sigma = np.linalg.solve(np.eye(dim * dim) - np.kron(m, m), q.reshape(-1)).reshape(dim, dim)
    cov_mean, expected = _expected_swag(sigma, m, collect_every, collected, rank)

    def objective(z, batch):
        assert batch is None  # batch_size=None: full batch, the noise comes from xi alone
        xi = torch.randn(members, dim, generator=gen, dtype=torch.float64) @ noise_factor.T
        diff = z - mu
        per_point = -0.5 * ((diff @ a) * diff).sum(-1) + (xi * z).sum(-1)
        return num_data * per_point

    start = mu + torch.randn(members, dim, generator=gen, dtype=torch.float64) @ \
        torch.linalg.cholesky(torch.as_tensor(sigma)).T
    lambda_max = max_curvature(objective, start, num_data=num_data, iterations=20, generator=gen)
    torch.testing.assert_close(lambda_max, torch.full((members,), 6.0, dtype=torch.float64),
                               rtol=1e-12, atol=0.0)
    member_lr = 0.3 / lambda_max
    gaussian, history = swa_sgd(objective, start, steps=collect_every * collected, lr=member_lr,
                                collect_every=collect_every, rank=rank, num_data=num_data,
                                batch_size=None)
    assert history.shape == (collect_every * collected, members)

    # Members are independent, so each estimate's Monte Carlo standard error is the spread of
    # the members' estimates over sqrt(C). 4.5 standard errors on each of the 3 + 6 numbers
    # below: a false alarm has probability about 9 * 7e-6 whatever the seed. At this size one
    # standard error of a covariance entry is under 1% of sigma's diagonal, so e.g. dividing
    # D D' by K instead of K - 1 (11% on the low-rank half) fails the test.
    means = gaussian.mean.numpy()
    z_mean = (means.mean(0) - mu.numpy()) / (means.std(0, ddof=1) / math.sqrt(members))
    assert np.abs(z_mean).max() < 4.5, z_mean
    # The variance of C = 4000 member means has a relative standard error of sqrt(2 / C) = 2.2%;
    # 15% is about 7 of them.
    np.testing.assert_allclose(means.std(0, ddof=1) ** 2, np.diag(cov_mean), rtol=0.15)

    covs = gaussian.covariance().numpy()
    upper = np.triu_indices(dim)
    estimate = covs.mean(0)[upper]
    error = covs.std(0, ddof=1)[upper] / math.sqrt(members)
    z_cov = (estimate - expected[upper]) / error
    assert np.abs(z_cov).max() < 4.5, (z_cov, estimate, expected[upper])
    # For nearly independent, numerous iterates this is the paper's 0.5 (diag + full) of sigma.
    np.testing.assert_allclose(np.diag(expected), np.diag(sigma), rtol=0.2)


def _quadratic(a, mu, num_data):
    """N times the per-point objective -0.5 (z - mu_c)' A_c (z - mu_c) + sum(z) of each member
    c, for A (C, D, D) and mu (C, D)."""
    def objective(z, batch):
        diff = z - mu
        return num_data * (-0.5 * (diff * (a @ diff.unsqueeze(-1)).squeeze(-1)).sum(-1)
                           + z.sum(-1))
    return objective


def test_max_curvature_is_exact_on_quadratics_member_by_member():
    gen = torch.Generator().manual_seed(4)
    # D = 3 <= iterations: the Krylov space is the whole space, the estimate exact, and later
    # steps find it invariant. Members have their own Hessians (scaled copies of one).
    rot = _rotation(3, gen)
    base = rot @ torch.diag(torch.tensor([0.5, 2.0, 6.0], dtype=torch.float64)) @ rot.T
    factors = torch.tensor([1.0, 10.0, 1e-3, 250.0], dtype=torch.float64)
    a = factors[:, None, None] * base
    z = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    estimate = max_curvature(_quadratic(a, torch.zeros(4, 3, dtype=torch.float64), 11), z,
                             num_data=11, iterations=20, generator=gen)
    torch.testing.assert_close(estimate, 6.0 * factors, rtol=1e-12, atol=0.0)
    # D = 200 > iterations, a spread spectrum with a gap at the top: 20 Lanczos steps converge
    # to roundoff where 20 power-iteration steps would be off by (5.5 / 6)^40 = 3%.
    dim = 200
    spectrum = torch.cat([torch.logspace(-3, math.log10(5.5), dim - 1, dtype=torch.float64),
                          torch.tensor([6.0], dtype=torch.float64)])
    rot = _rotation(dim, gen)
    a = (rot @ torch.diag(spectrum) @ rot.T).expand(2, dim, dim)
    mu = torch.randn(2, dim, generator=gen, dtype=torch.float64)
    estimate = max_curvature(_quadratic(a, mu, 5), mu + 1.0, num_data=5, iterations=20,
                             generator=gen)
    torch.testing.assert_close(estimate, torch.full((2,), 6.0, dtype=torch.float64),
                               rtol=1e-9, atol=0.0)
    # Indefinite and negative definite Hessians: the largest eigenvalue, whatever its sign.
    signs = torch.diag(torch.tensor([-3.0, 1.0, 2.0], dtype=torch.float64))
    a = torch.stack([signs, -torch.eye(3, dtype=torch.float64)])
    estimate = max_curvature(_quadratic(a, torch.zeros(2, 3, dtype=torch.float64), 1),
                             torch.zeros(2, 3, dtype=torch.float64), num_data=1, generator=gen)
    torch.testing.assert_close(estimate, torch.tensor([2.0, -1.0], dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="not finite"):
        max_curvature(lambda z, batch: -(z * z).sum(-1) / 0.0, z, num_data=1)


def test_swa_sgd_with_one_learning_rate_per_member_runs_each_at_its_own():
    v = torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]], dtype=torch.float64)
    z0 = torch.zeros(3, 2, dtype=torch.float64)
    lr = torch.tensor([0.1, 0.02, 0.5], dtype=torch.float64)

    def toward(target):
        return lambda z, batch: -((z - target) ** 2).sum(-1)

    objective = toward(v)
    together, _ = swa_sgd(objective, z0, steps=12, lr=lr, collect_every=3, rank=3,
                          num_data=4, batch_size=None)
    for c in range(3):
        alone, _ = swa_sgd(toward(v[c:c + 1]), z0[c:c + 1], steps=12, lr=float(lr[c]),
                           collect_every=3, rank=3, num_data=4, batch_size=None)
        assert torch.equal(together.mean[c], alone.mean[0])
        assert torch.equal(together.deviations[c], alone.deviations[0])
    for bad in (torch.tensor([0.1, 0.0, 0.1]), torch.tensor([0.1, float("inf"), 0.1]),
                torch.tensor([0.1, 0.1])):
        with pytest.raises(ValueError, match="lr"):
            swa_sgd(objective, z0, steps=12, lr=bad.double(), collect_every=3, rank=3,
                    num_data=4, batch_size=None)


def test_swa_sgd_steps_and_collection_on_a_linear_objective():
    # objective = N v'z: every step moves z by lr v exactly, so the collected iterates are
    # x_n = z0 + n c lr v (n = 1..T) and every SWAG quantity has a closed form.
    num_data, lr, collect_every, collected, rank = 5, 0.1, 3, 8, 4
    v = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    z0 = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    gaussian, history = swa_sgd(lambda z, batch: num_data * (v * z).sum(-1), z0,
                                steps=collect_every * collected, lr=lr,
                                collect_every=collect_every, rank=rank, num_data=num_data,
                                batch_size=None)
    n = torch.arange(1, collected + 1, dtype=torch.float64)
    iterates = z0 + (n * collect_every * lr)[:, None, None] * v  # (T, C, D)
    torch.testing.assert_close(gaussian.mean, iterates.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gaussian.variance, iterates.var(0, unbiased=False),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gaussian.deviations,
                               (iterates[-rank:] - iterates.mean(0)).permute(1, 2, 0),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(history[0], num_data * (v * z0).sum(-1))


def test_swa_sgd_minibatches_are_seeded_subsets():
    seen = []

    def objective(z, batch):
        seen.append(batch)
        return -(z * z).sum(-1)

    z0 = torch.zeros(2, 3, dtype=torch.float64)
    swa_sgd(objective, z0, steps=6, lr=0.1, collect_every=2, rank=2, num_data=8, batch_size=3,
            generator=torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    for batch in seen:
        assert torch.equal(batch, torch.randperm(8, generator=replay)[:3])
    seen.clear()
    swa_sgd(objective, z0, steps=4, lr=0.1, collect_every=2, rank=2, num_data=8, batch_size=8)
    assert seen == [None] * 4


def test_swa_sgd_reports_divergence_and_too_few_iterates():
    def objective(z, batch):
        return -1e3 * (z * z).sum(-1)

    z0 = torch.ones(1, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="swa_lr"):
        swa_sgd(objective, z0, steps=400, lr=1.0, collect_every=1, rank=2, num_data=1,
                batch_size=None)
    with pytest.raises(ValueError, match="fewer than rank"):
        swa_sgd(objective, z0, steps=10, lr=1e-4, collect_every=4, rank=3, num_data=1,
                batch_size=None)


# ---------------------------------------------------------------- the Gaussians
@pytest.fixture(scope="module")
def iterates():
    gen = torch.Generator().manual_seed(1)
    # T = 11 iterates of C = 2 members in D = 4 dimensions, correlated and of unequal scales.
    mix = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    return torch.randn(11, 2, 4, generator=gen, dtype=torch.float64) @ mix.T + 3.0


def test_covariance_is_half_diagonal_plus_half_low_rank(iterates):
    rank = 3
    moments = SwagMoments(2, 4, rank)
    for z in iterates:
        moments.update(z)
    gaussian = moments.gaussian()
    x = iterates.numpy()
    mean = x.mean(0)
    for c in range(2):
        d = (x[-rank:, c] - mean[c]).T  # (D, K): the last K iterates, oldest first
        explicit = 0.5 * (np.diag(x[:, c].var(0)) + d @ d.T / (rank - 1))
        np.testing.assert_allclose(gaussian.covariance()[c].numpy(), explicit, rtol=1e-12)
        np.testing.assert_allclose(gaussian.deviations[c].numpy(), d, rtol=1e-12, atol=1e-14)
    # The low-rank distribution holds the same matrix, and its density is the Gaussian's.
    dist = gaussian.distribution()
    torch.testing.assert_close(dist.covariance_matrix, gaussian.covariance(), rtol=1e-10,
                               atol=1e-12)
    point = torch.tensor([2.5, 3.0, 3.5, 4.0], dtype=torch.float64)
    full = torch.distributions.MultivariateNormal(gaussian.mean, gaussian.covariance())
    torch.testing.assert_close(gaussian.log_prob(point), full.log_prob(point), rtol=1e-10,
                               atol=1e-10)
    mixture = torch.logsumexp(full.log_prob(point), 0) - math.log(2)
    torch.testing.assert_close(gaussian.mixture_log_prob(point), mixture, rtol=1e-10,
                               atol=1e-10)


def test_samples_have_the_swag_covariance(iterates):
    moments = SwagMoments(2, 4, 3)
    for z in iterates:
        moments.update(z)
    gaussian = moments.gaussian()
    num = 40000
    draws = gaussian.sample(num, torch.Generator().manual_seed(2))
    assert draws.shape == (2, num, 4)
    cov = gaussian.covariance().numpy()
    for c in range(2):
        x = draws[c].numpy()
        # Standard errors of Gaussian sample means and covariances: sqrt(S_ii / n) and
        # sqrt((S_ii S_jj + S_ij^2) / n); 4.5 of them on 4 + 16 numbers per member.
        se_mean = np.sqrt(np.diag(cov[c]) / num)
        assert np.all(np.abs(x.mean(0) - gaussian.mean[c].numpy()) < 4.5 * se_mean)
        se_cov = np.sqrt((np.outer(np.diag(cov[c]), np.diag(cov[c])) + cov[c] ** 2) / num)
        assert np.all(np.abs(np.cov(x.T) - cov[c]) < 4.5 * se_cov)


def test_moments_keep_the_last_iterates_in_order_and_need_enough_of_them():
    moments = SwagMoments(1, 1, 3)
    with pytest.raises(ValueError, match="at least 3"):
        moments.gaussian()
    for value in range(7):
        moments.update(torch.tensor([[float(value)]], dtype=torch.float64))
    gaussian = moments.gaussian()
    assert gaussian.deviations.flatten().tolist() == [1.0, 2.0, 3.0]  # 4, 5, 6 minus mean 3
    assert gaussian.variance.item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="shape"):
        moments.update(torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2"):
        SwagMoments(1, 1, 1)
    with pytest.raises(ValueError, match="at least K = 2"):
        SwagGaussian(torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2, 1))


def test_a_coordinate_that_never_moves_keeps_a_finite_density():
    moments = SwagMoments(1, 2, 2)
    for value in (0.0, 1.0, 3.0):
        moments.update(torch.tensor([[value, 5.0]], dtype=torch.float64))
    gaussian = moments.gaussian()
    draws = gaussian.sample(5, torch.Generator().manual_seed(0))
    assert torch.all(draws[..., 1] == 5.0)
    assert torch.isfinite(gaussian.log_prob(draws)).all()


def test_swa_batch_size():
    assert [swa_batch_size(n) for n in (1, 4, 5, 20, 1000, 5000)] == [1, 1, 2, 5, 250, 256]


# ---------------------------------------------------------------- the method
def test_registered_under_its_name():
    assert method_class("swag") is SWAG
    assert SWAG.kind == "variational" and SWAG.thread_safe


def test_draws_stats_and_extra(toy, post):
    model, x, _ = toy
    members, num_draws = TINY["members"], TINY["num_draws"]
    total = members * num_draws
    assert (post.num_chains, post.num_draws) == (1, total)
    for name, shape in model.latent_shapes.items():
        assert post.draws[name].shape == (1, total, *shape)
    assert post.stats["loss"].shape == (TINY["pretrain_steps"], members)
    assert post.stats["swa_loss"].shape == (TINY["swa_steps"], members)
    for key in ("log_joint", "log_q"):
        assert post.stats[key].shape == (1, total) and np.isfinite(post.stats[key]).all()
    assert post.extra["swag_mean"].shape == (members, model.dim)
    assert post.extra["swag_variance"].shape == (members, model.dim)
    assert post.extra["swag_deviations"].shape == (members, model.dim, TINY["rank"])
    assert post.extra["collected"] == TINY["swa_steps"] // TINY["collect_every"]
    assert post.extra["batch_size"] == swa_batch_size(len(x))
    # The default rule: each member's rate is swa_lr_scale / its own lambda_max.
    lambda_max, lr = post.extra["swa_lambda_max"], post.extra["swa_lr"]
    assert lambda_max.shape == lr.shape == (members,) and np.all(lambda_max > 0)
    np.testing.assert_allclose(lr * lambda_max, post.method.swa_lr_scale, rtol=1e-12)
    assert len(np.unique(lr)) == members


def test_curvature_is_taken_at_each_members_map_point(toy):
    model, x_std, y_std = _standardized(toy)
    seed, n = 3, x_std.shape[0]
    result = SWAG(**TINY).run(model, x_std, y_std, seed=seed, progress=False)
    generator = seeded_generator(seed)
    z_map, _, _ = train_members(model, x_std, y_std, initial_points(model, generator,
                                                                    TINY["members"]),
                                steps=TINY["pretrain_steps"], lr=0.01,
                                batch_size=default_batch_size(n), generator=generator)
    expected = max_curvature(map_objective(model, x_std, y_std, jacobian=True), z_map,
                             num_data=n, iterations=60, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(result.extra["swa_lambda_max"], expected.numpy(), rtol=1e-6)


def test_an_explicit_swa_lr_gives_the_draws_of_a_constant_rate(toy):
    # swa_lr=3e-4 set explicitly is the former default: MAP phase, SWA phase at 3e-4 and draws,
    # all from the seed's one stream. The curvature, computed and recorded for either rule, draws
    # from a stream of its own, so the draws are exactly those of this constant-rate pipeline.
    model, x_std, y_std = _standardized(toy)
    seed, n, members = 3, x_std.shape[0], TINY["members"]
    result = SWAG(**TINY, swa_lr=3e-4).run(model, x_std, y_std, seed=seed, progress=False)
    generator = seeded_generator(seed)
    z_map, _, _ = train_members(model, x_std, y_std, initial_points(model, generator, members),
                                steps=TINY["pretrain_steps"], lr=0.01,
                                batch_size=default_batch_size(n), generator=generator)
    gaussian, history = swa_sgd(map_objective(model, x_std, y_std, jacobian=True), z_map,
                                steps=TINY["swa_steps"], lr=3e-4,
                                collect_every=TINY["collect_every"], rank=TINY["rank"],
                                num_data=n, batch_size=swa_batch_size(n), generator=generator)
    values, _ = model.constrain(gaussian.sample(TINY["num_draws"], generator))
    for name, value in values.items():
        expected = value.reshape(1, members * TINY["num_draws"], *value.shape[2:])
        assert torch.equal(result.draws[name], expected), name
    np.testing.assert_array_equal(result.stats["swa_loss"], (-history).numpy())
    np.testing.assert_array_equal(result.extra["swa_lr"], np.full(members, 3e-4))
    assert np.all(result.extra["swa_lambda_max"] > 0)
    # The curvature rule runs on the same minibatches from the same MAP points: only the rate
    # differs.
    curvature = SWAG(**TINY).run(model, x_std, y_std, seed=seed, progress=False)
    np.testing.assert_array_equal(curvature.stats["loss"], result.stats["loss"])
    np.testing.assert_array_equal(curvature.extra["swa_lambda_max"],
                                  result.extra["swa_lambda_max"])
    assert not np.array_equal(curvature.stats["swa_loss"], result.stats["swa_loss"])


def test_divergence_names_the_relative_step(toy):
    model, x_std, y_std = _standardized(toy)
    with pytest.raises(RuntimeError, match=r"swa_lr \* lambda_max"):
        SWAG(**{**TINY, "members": 1}, swa_lr=1e3).run(model, x_std, y_std, seed=0,
                                                        progress=False)


def test_log_q_is_the_mixture_density_of_the_constrained_draws(toy, post):
    model, x_std, y_std = _standardized(toy)
    gaussian = SwagGaussian(post.extra["swag_mean"], post.extra["swag_variance"],
                            post.extra["swag_deviations"])
    values = post.flat_draws()
    z = model.unconstrain(values)
    _, log_det = model.constrain(z)
    expected = gaussian.mixture_log_prob(z) - log_det
    np.testing.assert_allclose(post.stats["log_q"][0], expected.numpy(), rtol=1e-8)
    log_joint = model.log_joint(values, x_std, y_std)
    np.testing.assert_allclose(post.stats["log_joint"][0], log_joint.numpy(), rtol=1e-10)
    # So log p - log q is the importance weight of z: log_density(z) - log q(z).
    np.testing.assert_allclose(
        post.stats["log_joint"][0] - post.stats["log_q"][0],
        (model.log_density(z, x_std, y_std) - gaussian.mixture_log_prob(z)).numpy(),
        rtol=1e-8)
    # Member-major blocks: each draw is most probable under its own member's Gaussian.
    owner = gaussian.log_prob(z).argmax(-1)
    assert owner.tolist() == [m for m in range(TINY["members"]) for _ in range(TINY["num_draws"])]


def test_map_phase_is_the_ensembles_training(toy):
    # Same seed, starts, objective and schedule: the full-batch MAP phase equals an Ensemble.
    model, x_std, y_std = _standardized(toy)
    swag = SWAG(**TINY).run(model, x_std, y_std, seed=3, progress=False)
    ensemble = Ensemble(members=TINY["members"], steps=TINY["pretrain_steps"]).run(
        model, x_std, y_std, seed=3, progress=False)
    np.testing.assert_array_equal(swag.stats["loss"], ensemble.stats["loss"])


def test_same_seed_same_draws_and_the_global_rng_is_left_alone(toy, post):
    state = torch.get_rng_state()
    again = _fit(toy, SWAG(**TINY, members_per_unit=2))
    assert torch.equal(torch.get_rng_state(), state)
    assert_identical(post.draws, again.draws, "draws")
    assert_identical(post.stats, again.stats, "stats")
    assert_identical(post.extra, again.extra, "extra")
    other = _fit(toy, SWAG(**TINY, members_per_unit=2), seed=6)
    assert not torch.equal(other.draws["noise"], post.draws["noise"])


def test_thread_pool_gives_the_local_draws(toy, post):
    with cf.ThreadPoolExecutor(2) as pool:
        remote = _fit(toy, SWAG(**TINY, members_per_unit=2), executor=pool)
    assert_identical(post.draws, remote.draws, "draws")
    assert_identical(post.stats, remote.stats, "stats")
    assert_identical(post.extra, remote.extra, "extra")


def test_one_unit_on_an_executor_warns(toy):
    with cf.ThreadPoolExecutor(1) as pool, pytest.warns(UserWarning, match="members_per_unit"):
        _fit(toy, SWAG(**TINY), executor=pool)


def test_full_batch_is_recorded(toy):
    model, x_std, y_std = _standardized(toy)
    result = SWAG(**{**TINY, "members": 1}, batch_size=100).run(model, x_std, y_std, seed=0,
                                                                progress=False)
    assert result.extra["batch_size"] is None


def test_diagnostics(toy, post):
    diag = post.diagnose()
    checks = {c.check: c for c in diag.checks}
    assert {"PSIS k-hat", "MAP loss trend (last 10%)", "SWA loss trend (whole phase)"} <= \
        set(checks)
    assert diag.details["swa_loss_trend"].shape == (TINY["members"],)
    # SWAG optimizes no ELBO, so its diagnostics do not report one as missing; a VI run without
    # its ELBO history does.
    assert not any("elbo" in note for note in diag.notes)
    vi_like = Posterior(model=post.model, draws=post.draws,
                        stats={k: v for k, v in post.stats.items() if k != "elbo"},
                        method=brn.MeanField(), x_scaler=post.x_scaler, y_scaler=post.y_scaler,
                        seed=post.seed, fit_seconds=post.fit_seconds, x_train=post.x_train,
                        y_train=post.y_train)
    assert any("lack 'elbo'" in note for note in vi_like.diagnose().notes)
    # A SWA phase whose objective still climbs fails the stationarity check.
    steps = TINY["swa_steps"]
    drifting = dict(post.stats)
    drifting["swa_loss"] = np.linspace(100.0, 0.0, steps)[:, None] + \
        np.random.default_rng(0).normal(size=(steps, TINY["members"]))
    moved = Posterior(model=post.model, draws=post.draws, stats=drifting, method=post.method,
                      x_scaler=post.x_scaler, y_scaler=post.y_scaler, seed=post.seed,
                      fit_seconds=post.fit_seconds, x_train=post.x_train, y_train=post.y_train,
                      extra=post.extra)
    own = Diagnostics("swag", (1, 1))
    post.method.add_checks(moved, own)
    failed = {c.check for c in own.checks if not c.passed}
    assert "SWA loss trend (whole phase)" in failed
    assert any("lower swa_lr" in w for w in own.warnings)


@pytest.mark.parametrize("settings, name", [
    ({"members": 0}, "members"),
    ({"members": True}, "members"),
    ({"pretrain_steps": 0}, "pretrain_steps"),
    ({"swa_steps": 2.5}, "swa_steps"),
    ({"collect_every": 0}, "collect_every"),
    ({"rank": 1}, "rank"),
    ({"num_draws": -1}, "num_draws"),
    ({"lr": 0.0}, "lr"),
    ({"swa_lr": float("nan")}, "swa_lr"),
    ({"swa_lr": "1e-4"}, "swa_lr"),
    ({"swa_lr": 0.0}, "swa_lr"),
    ({"swa_lr_scale": 0.0}, "swa_lr_scale"),
    ({"swa_lr_scale": 2.0}, "stability limit"),
    ({"swa_lr_scale": None}, "swa_lr_scale"),
    ({"curvature_iterations": 0}, "curvature_iterations"),
    ({"batch_size": 0}, "batch_size"),
    ({"members_per_unit": 0}, "members_per_unit"),
    ({"swa_steps": 100, "collect_every": 10, "rank": 20}, "fewer than rank"),
])
def test_invalid_settings(settings, name):
    with pytest.raises(ValueError, match=name):
        SWAG(**settings)


def test_settings_changed_after_construction_are_checked_by_fit(toy):
    method = SWAG(**TINY)
    method.rank = 100
    with pytest.raises(ValueError, match="fewer than rank"):
        _fit(toy, method)


# ---------------------------------------------------------------- export and files
@pytest.mark.arviz
def test_to_arviz(post):
    az = import_arviz()
    idata = post.to_arviz()
    stats = idata["sample_stats"]
    assert {"lp", "log_q"} <= set(stats.data_vars)
    assert stats["log_q"].shape == (1, post.num_draws)
    np.testing.assert_array_equal(np.asarray(stats["log_q"]), post.stats["log_q"])
    assert idata["posterior"].attrs["inference_kind"] == "variational"
    assert json.loads(idata["posterior"].attrs["inference_settings"]) == post.method.config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about the k-hats of a tiny run
        result = compat_loo(idata)
        assert np.isfinite(result.elpd) and result.elpd_i.shape == (20,)
        assert len(az.summary(idata, var_names=["noise"])) == 1


@pytest.mark.arviz
def test_save_and_load_round_trip(post, tmp_path):
    path = tmp_path / "swag.nc"
    save(post, path)
    back = load(path)
    assert type(back.method) is SWAG and back.method.config() == post.method.config()
    assert_identical(post.draws, back.draws, "draws")
    assert_identical(post.stats, back.stats, "stats")
    assert_identical(post.extra, back.extra, "extra")
    x_new = np.linspace(-6, 6, 7)[:, None]
    a, b = post.predict(x_new), back.predict(x_new)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.interval(0.95), b.interval(0.95))
    assert back.diagnose().table.equals(post.diagnose().table)
