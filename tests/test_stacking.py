"""Chain stacking: per-chain PSIS-LOO, the stacking optimizer, and chain-weighted predictions."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import bayesresnet as brn
from bayesresnet.data import Standardizer
from bayesresnet.inference.nuts import NUTS
from bayesresnet.posterior import Posterior
from bayesresnet.stacking import (
    apportion_draws,
    chain_elpd,
    stacking_objective,
    stacking_weights,
)

pytestmark = pytest.mark.arviz


def em_weights(elpd, iterations=200_000, tol=1e-13):
    """Reference optimizer: the EM fixed point w_k <- w_k mean_i p_ik / sum_j w_j p_ij, which
    increases the (concave) objective at every step and converges to its maximum."""
    p = np.exp(elpd - elpd.max(axis=0))
    w = np.full(elpd.shape[0], 1.0 / elpd.shape[0])
    for _ in range(iterations):
        new = w * (p / (w @ p)).mean(axis=1)
        if np.abs(new - w).max() < tol:
            return new
        w = new
    return w


# ---------------------------------------------------------------------------------- optimizer
def test_two_chains_agree_with_a_brute_force_grid():
    """The objective is concave in w, so the grid's best point (spacing 1e-5) is within a grid
    step of the optimum wherever the curvature is not tiny; the optimizer's objective must be
    at least the grid's best (up to rounding), and its weight within 1e-3 of the grid's."""
    rng = np.random.default_rng(0)
    grid = np.linspace(0.0, 1.0, 100_001)
    for trial in range(5):
        elpd = rng.normal(size=(2, 40)) - 1.0
        elpd[trial % 2] += 0.2 * trial  # from balanced to one-sided problems
        w = stacking_weights(elpd)
        values = np.array([stacking_objective([g, 1.0 - g], elpd) for g in grid])
        best = int(values.argmax())
        assert stacking_objective(w, elpd) >= values[best] - 1e-9
        assert w[0] == pytest.approx(grid[best], abs=1e-3)


def test_many_chains_agree_with_em_and_satisfy_the_optimality_conditions():
    """At the maximum on the simplex, g_k = mean_i p_ik / mix_i is 1 for chains with weight
    and at most 1 for chains without (the KKT conditions of the concave problem)."""
    rng = np.random.default_rng(1)
    for chains in (3, 5, 8):
        elpd = rng.normal(size=(chains, 60)) - 2.0
        elpd[0] -= 1.0  # a chain that belongs at zero weight
        w = stacking_weights(elpd)
        np.testing.assert_allclose(w, em_weights(elpd), atol=1e-5)
        p = np.exp(elpd - elpd.max(axis=0))
        g = (p / (w @ p)).mean(axis=1)
        assert (g <= 1.0 + 1e-6).all()
        np.testing.assert_allclose(g[w > 1e-4], 1.0, atol=1e-6)


def test_weights_are_on_the_simplex_and_invariant_to_per_point_shifts_and_order():
    rng = np.random.default_rng(2)
    for chains in (2, 3, 6):
        elpd = 3.0 * rng.normal(size=(chains, 25))
        w = stacking_weights(elpd)
        assert w.shape == (chains,) and (w >= 0).all() and w.sum() == pytest.approx(1.0)
        # adding a constant per point (e.g. a change of units of y_i) changes nothing
        shifted = stacking_weights(elpd + rng.normal(size=25) * 100.0)
        np.testing.assert_allclose(shifted, w, atol=1e-6)
        order = rng.permutation(chains)
        np.testing.assert_allclose(stacking_weights(elpd[order]), w[order], atol=1e-6)


def test_closed_forms():
    # A chain that predicts every point better takes all the weight: at w = (1, 0) the
    # gradient toward chain 1 is mean_i exp(elpd_i1 - elpd_i0) - 1 < 0.
    rng = np.random.default_rng(3)
    base = rng.normal(size=30)
    w = stacking_weights(np.stack([base, base - 0.5 - rng.uniform(size=30)]))
    assert w[0] > 1 - 1e-6
    # Each chain predicts its own group of points and the other's not at all (exp(-60) is
    # 1e-26): the objective is n0 log w + n1 log(1 - w), maximal at w = n0 / (n0 + n1).
    n0, n1 = 7, 13
    elpd = np.zeros((2, n0 + n1))
    elpd[1, :n0] = elpd[0, n0:] = -60.0
    np.testing.assert_allclose(stacking_weights(elpd), [n0 / 20, n1 / 20], atol=1e-7)
    # Identical chains: the equal weights the optimizer starts from are already optimal.
    same = np.tile(rng.normal(size=30), (4, 1))
    np.testing.assert_array_equal(stacking_weights(same), np.full(4, 0.25))
    assert stacking_weights(rng.normal(size=(1, 5))).tolist() == [1.0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 dimensions"):
        stacking_weights(np.zeros(5))
    with pytest.raises(ValueError, match="NaN or inf"):
        stacking_weights(np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="empty"):
        stacking_weights(np.zeros((2, 0)))
    with pytest.raises(ValueError, match="3 dimensions"):
        chain_elpd(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="at least 2 draws"):
        chain_elpd(np.zeros((2, 1, 5)))
    with pytest.raises(ValueError, match="shape"):
        stacking_objective([1.0], np.zeros((2, 3)))


# ---------------------------------------------------------------------------------- PSIS-LOO
def test_chain_elpd_matches_exact_leave_one_out_of_a_normal_mean():
    """y_i ~ N(mu, 1) with a flat prior: mu | y ~ N(ybar, 1/n), and the exact leave-one-out
    predictive of y_i is N(mean of the others, 1 + 1/(n-1)). Each chain holds 4000 exact
    posterior draws; its PSIS-LOO estimate of point i is off by Monte Carlo error, whose SD is
    about sd(1/p) / (mean(1/p) sqrt(S)) (the delta method for the importance-sampling mean of
    1/p(y_i | mu)). Allowed: 6 such SDs (about 0.03 here; max over 40 values of |z| is ~3)."""
    rng = np.random.default_rng(4)
    n, draws = 20, 4000
    y = rng.normal(size=n)
    mu = y.mean() + rng.normal(size=(2, draws)) / math.sqrt(n)
    log_lik = norm.logpdf(y, mu[..., None], 1.0)  # (chain, draw, N)
    elpd, khat = chain_elpd(log_lik)
    assert elpd.shape == khat.shape == (2, n)
    assert (khat < 0.5).all()
    exact = norm.logpdf(y, (y.sum() - y) / (n - 1), math.sqrt(1 + 1 / (n - 1)))
    inverse = np.exp(-log_lik)
    se = inverse.std(axis=1) / (inverse.mean(axis=1) * math.sqrt(draws))
    assert (np.abs(elpd - exact) < 6 * se).all()
    # a chain whose likelihood does not vary: the estimate is that likelihood, exactly
    flat = np.broadcast_to(log_lik[:1, :1], (1, 50, n))
    np.testing.assert_allclose(chain_elpd(flat)[0][0], log_lik[0, 0], rtol=1e-12)


# ---------------------------------------------------------------------------------- posterior
@pytest.fixture(scope="module")
def problem():
    """A tiny network, data made by one of its parameter points (unit scaling), and draws:
    chain 0 jittered around that point (0.01), chain 1 around another point (+1 in every
    network coordinate), which predicts the data far worse."""
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=2, depth=2, basis=brn.Constant()))
    gen = torch.Generator().manual_seed(0)
    truth = {site: torch.randn(shape, generator=gen, dtype=torch.float64)
             for site, shape in model.latent_shapes.items()}
    truth["noise"] = torch.full((1,), 0.1, dtype=torch.float64)
    x = torch.linspace(-2, 2, 40, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        loc, _ = model.loc_scale(truth, x)
    y = loc + 0.1 * torch.randn(loc.shape, generator=gen, dtype=torch.float64)
    draws = 200
    values = {}
    for site, value in truth.items():
        jitter = torch.randn((2, draws, *value.shape), generator=gen, dtype=torch.float64)
        if site == "noise":
            values[site] = value * (1.0 + 0.05 * jitter.abs())
        else:
            values[site] = value + 0.01 * jitter
            values[site][1] += 1.0
    return model, x.numpy(), y.numpy(), values


def make_posterior(problem, values=None, seed=0):
    model, x, y, default = problem
    values = default if values is None else values
    unit = Standardizer(np.zeros(1), np.ones(1))
    return Posterior(model=model, draws={k: v.clone() for k, v in values.items()}, stats={},
                     method=NUTS(), x_scaler=unit, y_scaler=unit, seed=seed, fit_seconds=1.0,
                     x_train=x, y_train=y)


def test_the_chain_that_predicts_the_data_gets_the_weight(problem):
    post = make_posterior(problem)
    # chain 1 predicts the data so badly that its leave-one-out importance ratios are wild
    with pytest.warns(UserWarning, match="k-hat above 0.7") as record:
        w = post.stacking_weights()
    assert record[0].filename == __file__
    assert w.shape == (2,) and w[0] > 0.999
    # chains that are copies of each other share the weight exactly
    _, _, _, values = problem
    copies = {k: torch.stack([v[0], v[0]]) for k, v in values.items()}
    np.testing.assert_array_equal(make_posterior(problem, copies).stacking_weights(), [0.5, 0.5])


def test_weighted_predictions(problem):
    post = make_posterior(problem)
    x_new = np.linspace(-3, 3, 7)[:, None]
    plain = post.predict(x_new)
    # None and equal weights give the unweighted prediction, bit for bit
    for weights in (None, [0.5, 0.5], np.array([0.5, 0.5]), torch.tensor([0.5, 0.5])):
        pred = post.predict(x_new, weights=weights)
        np.testing.assert_array_equal(pred.samples, plain.samples)
        assert pred.num_chains == 2
    # all the weight on chain 0: its draws, each twice, and nothing of chain 1
    loc, _, _ = post.evaluate(x_new)
    only = post.predict(x_new, weights=[1.0, 0.0])
    assert only.num_draws == plain.num_draws and only.num_chains == 1
    np.testing.assert_allclose(only.mean, loc[0].mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.sort(only.f_samples[:, 0, 0]),
                               np.sort(np.repeat(loc[0, :, 0, 0].numpy(), 2)), rtol=1e-12)
    # stacking: here chain 0 has nearly all the weight
    with pytest.warns(UserWarning, match="k-hat") as record:
        stacked = post.predict(x_new, weights="stacking")
    assert record[0].filename == __file__
    np.testing.assert_allclose(stacked.mean, only.mean, rtol=1e-6)
    # shares of a subset, reproducible from the seed
    a = post.predict(x_new, num_draws=100, seed=3, weights=[0.3, 0.7])
    b = post.predict(x_new, num_draws=100, seed=3, weights=[0.3, 0.7])
    c = post.predict(x_new, num_draws=100, seed=4, weights=[0.3, 0.7])
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.f_samples, c.f_samples)
    chain0 = np.isin(a.f_samples[:, 0, 0], loc[0, :, 0, 0].numpy())
    assert a.num_draws == 100 and int(chain0.sum()) == 30


def test_weights_are_validated(problem):
    post = make_posterior(problem)
    x_new = np.zeros((2, 1))
    bad = [("stack", "'stacking'"), ([0.5, 0.25, 0.25], r"shape \(2,\)"),
           ([[0.5, 0.5]], r"shape \(2,\)"), ([1.5, -0.5], "non-negative"),
           ([np.nan, 1.0], "finite"), ([0.5, 0.6], "sum to 1"), ([True, False], "numbers"),
           (["a", "b"], "numbers")]
    for weights, message in bad:
        with pytest.raises(ValueError, match=message):
            post.predict(x_new, weights=weights)


def test_apportion_draws():
    idx = apportion_draws([0.5, 0.3, 0.2], draws=10, total=30, seed=0)
    counts = np.bincount(idx // 10, minlength=3)
    assert counts.tolist() == [15, 9, 6] and (np.diff(idx) >= 0).all()
    # each chain's draws are used evenly: at most once more than any other of its draws
    per_draw = np.bincount(idx, minlength=30)
    for chain in range(3):
        used = per_draw[chain * 10:(chain + 1) * 10]
        assert used.max() - used.min() <= 1
    # largest remainders: 10 * (1/3, 1/3, 1/3) -> 4, 3, 3 (ties go to the first chain)
    idx = apportion_draws(np.full(3, 1 / 3), draws=5, total=10, seed=0)
    assert np.bincount(idx // 5, minlength=3).tolist() == [4, 3, 3]
    np.testing.assert_array_equal(apportion_draws(np.full(4, 0.25), 6, 24, seed=1), np.arange(24))
    for weights in ([0.5, 0.6], [1.5, -0.5], [np.nan, 1.0]):
        with pytest.raises(ValueError, match="sum to 1"):
            apportion_draws(weights, 5, 10, seed=0)
