"""Ensembles on small data: the linearization, the members' noise posterior, the LOO-PIT check.

The statistical tests say in a comment why their tolerance holds for any seed: each compares
with the exact distribution of its statistic (uniform PIT values, binomial counts), and the
tolerance is a quantile of that distribution at a false-failure probability of 1e-4 or less.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats as sps
from scipy.integrate import quad

import bayesresnet as brn
from bayesresnet import diagnostics as diagnostics_module
from bayesresnet.data import Standardizer
from bayesresnet.diagnostics import (
    LOO_PIT_ALPHA,
    LOO_PIT_TAIL,
    LinearizedFit,
    diagnose,
    ensemble_loo_pit,
    gaussian_prior_scales,
    linearization_fits,
    linearize,
)
from bayesresnet.inference.base import seeded_generator
from bayesresnet.inference.ensemble import (
    MAP,
    Ensemble,
    initial_points,
    noise_posterior,
    train_members,
)
from bayesresnet.posterior import Posterior

CHECK = "LOO-PIT outside central 95%"


def _standardized(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x_t = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
    y_t = torch.as_tensor(y, dtype=torch.float64).reshape(len(x), -1)
    return Standardizer().fit(x_t).transform(x_t), Standardizer().fit(y_t).transform(y_t)


@pytest.fixture(scope="module")
def toy():
    """The cubic toy (20 points) with a small network: fits in about a second."""
    x, y = _standardized(*brn.data.cubic(20, seed=0))
    net = brn.ResNet(1, 1, width=5, depth=3, basis=brn.Linear())
    return brn.BayesianResNet(net), x, y


# ---------------------------------------------------------------------------- linear algebra
@pytest.mark.parametrize("shape", [(7, 12), (12, 5)])
def test_linearized_fit_is_bayesian_linear_regression(shape):
    """Both eigendecompositions (N <= P and N > P) give the hat matrix K (K + s2 I)^-1 and
    log det(I + K / s2) of K = A A^T, to rounding."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(shape, generator=gen, dtype=torch.float64)
    fit = LinearizedFit(a)
    eye = torch.eye(shape[0], dtype=torch.float64)
    for s2 in (0.01, 0.7, 5.0):
        hat = a @ a.T @ torch.linalg.inv(a @ a.T + s2 * eye)
        assert torch.allclose(fit.leverage(s2), torch.diagonal(hat), atol=1e-10)
        assert fit.effective_parameters(s2) == pytest.approx(float(torch.trace(hat)), abs=1e-9)
        assert float(fit.log_det(torch.tensor(s2, dtype=torch.float64))) == pytest.approx(
            float(torch.logdet(eye + a @ a.T / s2)), abs=1e-9)
    grid = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    assert fit.log_det(grid).shape == (3,)


def test_leverage_gives_the_leave_one_out_residual_of_the_linear_model():
    """Ridge regression refitted without point i predicts y_i - e_i / (1 - h_i): the identity the
    LOO-PIT check rests on."""
    gen = torch.Generator().manual_seed(1)
    n, p, s2 = 9, 4, 0.3
    a = torch.randn(n, p, generator=gen, dtype=torch.float64)
    y = torch.randn(n, generator=gen, dtype=torch.float64)

    def posterior_mean(rows):
        return torch.linalg.solve(a[rows].T @ a[rows] + s2 * torch.eye(p, dtype=torch.float64),
                                  a[rows].T @ y[rows])

    residual = y - a @ posterior_mean(torch.arange(n))
    h = LinearizedFit(a).leverage(s2)
    for i in range(n):
        rows = torch.tensor([j for j in range(n) if j != i])
        loo = y[i] - a[i] @ posterior_mean(rows)
        assert float(loo) == pytest.approx(float(residual[i] / (1 - h[i])), abs=1e-10)


def test_linearize_uses_the_jacobian_and_the_prior_scales():
    prior = brn.priors.Normal(0.8, site_scales={"output_weight": 0.3})
    model = brn.BayesianResNet(brn.ResNet(2, 2, width=3, depth=2, basis=brn.Linear()), prior)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    values = {k: v[0] for k, v in model.sample_prior(3, (1,)).items()}
    scales = gaussian_prior_scales(model)
    assert set(scales) == set(model.latent_sites) - {"noise"}
    assert float(scales["output_weight"].max()) == 0.3 and float(scales["W_coef"].max()) == 0.8
    names = list(scales)
    theta = torch.cat([values[k].reshape(-1) for k in names])
    sizes = [scales[k].numel() for k in names]

    def mean(flat):
        point = dict(values)
        for k, part in zip(names, torch.split(flat, sizes), strict=True):
            point[k] = part.reshape(scales[k].shape)
        return model.loc_scale(point, x)[0]

    jac = torch.autograd.functional.jacobian(mean, theta)  # (6, 2, P)
    sd = torch.cat([scales[k].reshape(-1) for k in names])
    fits = linearize(model, values, x)
    assert len(fits) == 2
    for k, fit in enumerate(fits):
        direct = LinearizedFit(jac[:, k] * sd)
        for s2 in (0.05, 1.0):
            assert torch.allclose(fit.leverage(s2), direct.leverage(s2), atol=1e-10)
            assert float(fit.log_det(torch.tensor(s2, dtype=torch.float64))) == pytest.approx(
                float(direct.log_det(torch.tensor(s2, dtype=torch.float64))), abs=1e-9)


def test_linearization_size_limits(monkeypatch, toy):
    model, x, _ = toy
    assert linearization_fits(model, x.shape[0])
    monkeypatch.setattr(diagnostics_module, "LINEARIZE_MAX_JACOBIAN", 10)
    assert not linearization_fits(model, x.shape[0])
    with pytest.raises(ValueError, match="too many"):
        linearize(model, {k: v[0] for k, v in model.sample_prior(0, (1,)).items()}, x)


# ---------------------------------------------------------------------------- noise posterior
def test_noise_posterior_is_the_exact_posterior_of_a_fixed_functions_noise(toy):
    """Simulation-based calibration. With a prior scale of 1e-6 the weights cannot move (K is
    1e-12 of the noise variance), and the noise posterior is exactly that of the noise of a
    fixed function: draw s from the noise prior and y = f + s eps, and the posterior CDF at s
    is uniform. R = 150 replicates; a Kolmogorov-Smirnov test of uniformity fails with
    probability 1e-4 when the posterior is right, whatever the seed."""
    model = brn.BayesianResNet(toy[0].user_net, prior=brn.priors.Normal(1e-6))
    x = toy[1]
    values = model.initial_values(torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = model.loc_scale(values, x)[0]
    gen = torch.Generator().manual_seed(11)
    ranks = []
    for _ in range(150):
        s = abs(float(torch.randn((), generator=gen, dtype=torch.float64)))
        y = f + s * torch.randn(f.shape, generator=gen, dtype=torch.float64)
        grid, cdf, _ = noise_posterior(model, values, x, y)
        ranks.append(float(np.interp(math.log(s), grid[0].numpy(), cdf[0].numpy())))
    assert sps.kstest(ranks, "uniform").pvalue > 1e-4


def test_noise_posterior_is_the_laplace_evidence_and_its_mode_is_mackays(toy):
    """The tabulated CDF integrates p(s) s^-N exp(-RSS / 2 s^2) det(I + K / s^2)^-1/2 (checked
    against quadrature), and its mode in log s solves the stationarity condition
    s^2 = RSS / (N - 1 - gamma(s) + s^2 / s0^2) (to the grid's resolution)."""
    model, x, y = toy
    values = {k: v[0, 0] for k, v in Ensemble(members=1, steps=200, noise="map").run(
        model, x, y, 0, progress=False).draws.items()}
    fit = linearize(model, values, x)[0]
    with torch.no_grad():
        rss = float(((y - model.loc_scale(values, x)[0]) ** 2).sum())
    n, s0 = x.shape[0], model.likelihood.noise_prior_scale

    def log_density(t):  # of log s, unnormalized
        s2 = math.exp(2 * t)
        return (-s2 / (2 * s0 ** 2) + (1 - n) * t - rss / (2 * s2)
                - 0.5 * float(fit.log_det(torch.tensor(s2, dtype=torch.float64))))

    grid, cdf, gammas = noise_posterior(model, values, x, y)
    # The table of gamma(s) is the fit's effective parameters along the grid.
    assert float(gammas[0, 1000]) == pytest.approx(
        fit.effective_parameters(math.exp(2 * float(grid[0, 1000]))), rel=1e-9)
    grid, cdf = grid[0].numpy(), cdf[0].numpy()
    peak = max(log_density(t) for t in grid)
    total = quad(lambda t: math.exp(log_density(t) - peak), grid[0], grid[-1], limit=200)[0]
    for q in (0.1, 0.5, 0.9):
        t = float(np.interp(q, cdf, grid))
        quad_cdf = quad(lambda u: math.exp(log_density(u) - peak), grid[0], t, limit=200)[0]
        assert quad_cdf / total == pytest.approx(q, abs=1e-4)
    mode = grid[int(np.argmax(np.diff(cdf) / np.diff(grid)))]
    s2 = math.exp(2 * mode)
    gamma = fit.effective_parameters(s2)
    assert s2 == pytest.approx(rss / (n - 1 - gamma + s2 / s0 ** 2), rel=0.03)
    assert gamma > 1  # the network did fit parameters: the MAP noise sqrt(RSS / N) is lower
    assert rss / n < s2


def test_noise_posterior_grid_is_a_cdf_and_needs_a_learned_noise(toy):
    model, x, y = toy
    values = {k: v[0] for k, v in model.sample_prior(0, (1,)).items()}
    grid, cdf, gammas = noise_posterior(model, values, x, y)
    assert grid.shape == cdf.shape == gammas.shape == (1, 2001)
    assert bool((torch.diff(gammas) <= 0).all())  # more noise, fewer parameters determined
    assert bool((torch.diff(grid) > 0).all()) and bool((torch.diff(cdf) >= 0).all())
    assert float(cdf[0, 0]) == 0.0 and float(cdf[0, -1]) == pytest.approx(1.0)
    fixed = brn.BayesianResNet(model.user_net, likelihood=brn.likelihoods.Gaussian(noise=0.5))
    with pytest.raises(ValueError, match="learned noise"):
        noise_posterior(fixed, {k: v for k, v in values.items() if k != "noise"}, x, y)


# ---------------------------------------------------------------------------- Ensemble(noise=)
@pytest.fixture(scope="module")
def fits(toy):
    model, x, y = toy

    def run(**settings):
        return Ensemble(members=6, steps=300, **settings).run(model, x, y, 3, progress=False)

    return {"predictive": run(), "posterior": run(noise="posterior"), "map": run(noise="map"),
            "again": run(), "grouped": run(members_per_unit=4)}


def test_noise_map_reproduces_the_members_of_earlier_versions(toy, fits):
    """noise='map' is the earlier Ensemble: members trained from initial_points(seed), with the
    MAP noise; the other modes train the same networks and replace only the noise."""
    model, x, y = toy
    z0 = initial_points(model, seeded_generator(3), 6)
    z, _, _ = train_members(model, x, y, z0, steps=300, lr=0.01)
    values, _ = model.constrain(z)
    old = fits["map"]
    for name, value in values.items():
        assert torch.equal(old.draws[name][0], value)
    assert "map_noise" not in old.stats and "noise" not in old.extra
    for mode in ("posterior", "predictive"):
        new = fits[mode]
        for name in values:
            if name != "noise":
                assert torch.equal(new.draws[name], old.draws[name])
        assert new.extra["noise"] == mode
        assert np.array_equal(new.stats["map_noise"], old.draws["noise"][0].numpy())
        assert not torch.equal(new.draws["noise"], old.draws["noise"])
        # log_joint belongs to the draws; final_loss to the training objective.
        with torch.no_grad():
            expected = model.log_joint({k: v[0] for k, v in new.draws.items()}, x, y)
        assert np.allclose(new.stats["log_joint"][0], expected.numpy(), atol=1e-9)
        assert np.allclose(new.stats["final_loss"], old.stats["final_loss"])
    assert set(fits["posterior"].stats) == {"final_loss", "loss", "log_joint", "map_noise",
                                            "effective_parameters"}


def test_predictive_noise_is_the_posterior_draw_widened_by_the_effective_parameters(toy, fits):
    model, x, _ = toy
    posterior, predictive = fits["posterior"], fits["predictive"]
    # The same draws from the same stream; the predictive noise widens each by
    # sqrt(N / (N - gamma)) with gamma at the drawn noise.
    assert np.array_equal(predictive.stats["posterior_noise"],
                          posterior.draws["noise"][0].numpy())
    gamma = predictive.stats["effective_parameters"]
    n = x.shape[0]
    assert np.allclose(predictive.draws["noise"][0].numpy(),
                       posterior.draws["noise"][0].numpy() * np.sqrt(n / (n - gamma)),
                       rtol=1e-12)
    for m in range(6):
        member = {k: v[0, m] for k, v in posterior.draws.items()}
        noise = float(member["noise"][0])
        fit = linearize(model, member, x)[0]
        assert gamma[m, 0] == pytest.approx(fit.effective_parameters(noise ** 2), rel=1e-3)
    assert bool((gamma > 0).all() and (gamma < n).all())


def test_noise_draws_are_reproducible_stratified_and_independent_of_grouping(toy, fits):
    model, x, y = toy
    new = fits["posterior"]
    assert torch.equal(fits["predictive"].draws["noise"], fits["again"].draws["noise"])
    # Full-batch members are the same in any grouping (up to rounding), and so are their draws.
    assert torch.allclose(fits["predictive"].draws["noise"], fits["grouped"].draws["noise"],
                          rtol=1e-6)
    # Each draw lies in its own M-quantile stratum of its member's posterior.
    strata = []
    for m in range(6):
        grid, cdf, _ = noise_posterior(model, {k: v[0, m] for k, v in fits["map"].draws.items()},
                                       x, y)
        u = np.interp(math.log(float(new.draws["noise"][0, m, 0])), grid[0].numpy(),
                      cdf[0].numpy())
        strata.append(int(u * 6))
    assert sorted(strata) == list(range(6))


def test_map_is_an_ensemble_of_one_with_map_noise(toy):
    model, x, y = toy
    single = MAP(steps=30).run(model, x, y, 7, progress=False)
    ensemble = Ensemble(members=1, steps=30, noise="map").run(model, x, y, 7, progress=False)
    for name in single.draws:
        assert torch.equal(single.draws[name], ensemble.draws[name])
    assert "noise" not in single.extra


def test_noise_setting_without_a_learned_noise_or_too_large(monkeypatch, toy):
    model, x, y = toy
    fixed = brn.BayesianResNet(model.user_net, likelihood=brn.likelihoods.Gaussian(noise=0.3))
    a = Ensemble(members=2, steps=20).run(fixed, x, y, 0, progress=False)
    b = Ensemble(members=2, steps=20, noise="map").run(fixed, x, y, 0, progress=False)
    assert all(torch.equal(a.draws[k], b.draws[k]) for k in a.draws) and "noise" not in a.extra
    monkeypatch.setattr(diagnostics_module, "LINEARIZE_MAX_JACOBIAN", 10)
    with pytest.warns(UserWarning, match="too large"):
        big = Ensemble(members=2, steps=20).run(model, x, y, 0, progress=False)
    plain = Ensemble(members=2, steps=20, noise="map").run(model, x, y, 0, progress=False)
    assert big.extra["noise"] == "map" and torch.equal(big.draws["noise"], plain.draws["noise"])


def test_anchored_members_get_a_noise_posterior(toy):
    model, x, y = toy
    run = Ensemble(members=3, steps=50, anchored=True).run(model, x, y, 1, progress=False)
    assert run.extra["noise"] == "predictive"
    assert bool((run.draws["noise"] > 0).all())


@pytest.mark.parametrize("noise", ["loo", None, 1, "MAP"])
def test_invalid_noise_setting(noise):
    with pytest.raises(ValueError, match="noise must be one of"):
        Ensemble(noise=noise)
    assert Ensemble().noise == "predictive"
    assert Ensemble(noise="map").config()["noise"] == "map"


# ---------------------------------------------------------------------------- LOO-PIT check
def _synthetic_posterior(model, x, y, members, noise):
    """An Ensemble posterior with the given member draws (1, M, ...), identity scalers."""
    identity = Standardizer(mean=[0.0], std=[1.0])
    steps = np.arange(500)[:, None]
    loss = 10 + 100 * np.exp(-steps / 30) + np.zeros((1, noise.shape[1]))
    draws = {**members, "noise": noise}
    stats = {"loss": loss, "final_loss": loss[-1], "log_joint": np.zeros((1, loss.shape[1]))}
    return Posterior(model=model, draws=draws, stats=stats, method=Ensemble(), x_scaler=identity,
                     y_scaler=identity, seed=0, fit_seconds=1.0, x_train=x.numpy(),
                     y_train=y.numpy())


@pytest.fixture(scope="module")
def frozen():
    """Members whose weights the data cannot move: prior scale 1e-3 makes the leverage of every
    point at most ~1e-4, so their leave-one-out predictive is their predictive. Members: one
    Glorot initialization, output biases shifted by N(0, 0.1^2); noise 0.5."""
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=4, depth=2, basis=brn.Linear()),
                               prior=brn.priors.Normal(1e-3))
    gen = torch.Generator().manual_seed(0)
    base = model.initial_values(gen)
    members = {k: v.expand(1, 4, *v.shape).clone() for k, v in base.items() if k != "noise"}
    members["output_bias"] = members["output_bias"] + 0.1 * torch.randn(
        1, 4, 1, generator=gen, dtype=torch.float64)
    return model, members, torch.full((1, 4, 1), 0.5, dtype=torch.float64)


def _mixture_data(model, members, noise, n, gen):
    """x ~ U[-2, 2], and y from the ensemble's own predictive (a random member plus its noise):
    PIT values of y under that predictive are exactly uniform."""
    x = 4 * torch.rand(n, 1, generator=gen, dtype=torch.float64) - 2
    with torch.no_grad():
        loc = model.loc_scale({k: v[0] for k, v in {**members, "noise": noise}.items()}, x)[0]
    pick = torch.randint(0, loc.shape[0], (n,), generator=gen)
    eps = torch.randn(n, generator=gen, dtype=torch.float64)
    y = loc[pick, torch.arange(n), 0] + noise[0, pick, 0] * eps
    return x, y.unsqueeze(-1)


def test_loo_pit_check_passes_calibrated_ensembles_at_its_false_alarm_rate(frozen):
    """Data drawn from the ensemble's own predictive: LOO-PIT values are uniform, so the count
    outside the central 95% of N = 40 is Binomial(40, 0.05) and the check fails with probability
    p = P(count > limit) <= LOO_PIT_ALPHA (limit 6, p = 0.0034).

    Over R = 40 data sets the failures are Binomial(R, p): more than 3 has probability < 1e-4
    (computed below from p). The pooled PIT values pass a Kolmogorov-Smirnov test of
    uniformity except with probability 1e-4.
    """
    model, members, noise = frozen
    gen = torch.Generator().manual_seed(1)
    n, replicates = 40, 40
    limit = int(sps.binom.ppf(1 - LOO_PIT_ALPHA, n, LOO_PIT_TAIL))
    p_fail = sps.binom.sf(limit, n, LOO_PIT_TAIL)
    assert p_fail <= LOO_PIT_ALPHA
    allowed = int(sps.binom.isf(1e-4, replicates, p_fail))
    failures, pooled = 0, []
    for _ in range(replicates):
        x, y = _mixture_data(model, members, noise, n, gen)
        post = _synthetic_posterior(model, x, y, members, noise)
        diag = diagnose(post)
        row = diag.table[diag.table["check"] == CHECK]
        assert len(row) == 1 and float(row["threshold"].iloc[0]) == limit / n
        failures += not bool(row["passed"].iloc[0])
        pooled.append(diag.details["loo_pit"].reshape(-1))
    assert failures <= allowed
    assert sps.kstest(np.concatenate(pooled), "uniform").pvalue > 1e-4
    # The leave-one-out shift is negligible here: the check sees the predictive itself.
    fit = linearize(model, {k: v[0, 0] for k, v in {**members, "noise": noise}.items()}, x)[0]
    assert float(fit.leverage(0.25).max()) < 1e-3


def test_loo_pit_check_fails_an_ensemble_with_too_small_a_noise(frozen):
    """The same data, but the ensemble's noise is 0.1, a fifth of the data's: a point falls
    outside the central 95% of the predictive unless its noise is within about 0.2 + 0.1 (the
    members' spread) of the mean, probability below 0.55, so the count of 40 is at least
    Binomial(40, 0.45), above the limit of 6 except with probability 6e-5."""
    model, members, noise = frozen
    gen = torch.Generator().manual_seed(2)
    x, y = _mixture_data(model, members, noise, 40, gen)
    diag = diagnose(_synthetic_posterior(model, x, y, members, noise / 5))
    assert CHECK in diag.failed
    assert any("overconfident" in w for w in diag.warnings)
    assert diag.details["loo_pit_outside"] > 6


def test_loo_pit_check_fails_a_trained_ensemble_with_fixed_tiny_noise():
    """Members trained with the noise fixed at 0.01 on data with noise 0.3 fit the points they
    saw; refitted without a point, they miss it by about its noise, 30 times the ensemble's
    noise, so nearly every LOO-PIT value is in the tails (a point stays inside only when its
    noise is below about 0.02 + the members' spread: a few percent of points)."""
    gen = np.random.default_rng(0)
    x = gen.uniform(-2, 2, size=(30, 1))
    y = np.sin(2 * x[:, 0]) + 0.3 * gen.normal(size=30)
    net = brn.ResNet(1, 1, width=6, depth=3, basis=brn.Linear())
    model = brn.BayesianResNet(net, likelihood=brn.likelihoods.Gaussian(noise=0.01))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = brn.fit(model, x, y, method=Ensemble(members=4, steps=500), seed=0,
                       progress=False, check=False)
    diag = diagnose(post)
    assert CHECK in diag.failed
    assert diag.details["loo_pit_outside"] >= 20


def test_loo_pit_check_is_skipped_where_it_does_not_apply(frozen, monkeypatch):
    model, members, noise = frozen
    gen = torch.Generator().manual_seed(3)
    x, y = _mixture_data(model, members, noise, 10, gen)
    monkeypatch.setattr(diagnostics_module, "LINEARIZE_MAX_JACOBIAN", 10)
    diag = diagnose(_synthetic_posterior(model, x, y, members, noise))
    assert CHECK not in list(diag.table["check"])
    assert any("too large" in note for note in diag.notes)
    monkeypatch.undo()
    hetero = brn.BayesianResNet(model.user_net, likelihood=brn.likelihoods.Gaussian(
        heteroscedastic=True))
    values = {k: v[0] for k, v in hetero.sample_prior(0, (1, 2)).items()}
    identity = Standardizer(mean=[0.0], std=[1.0])
    loss = np.zeros((50, 2)) + 1.0
    post = Posterior(model=hetero, draws={k: v.unsqueeze(0) for k, v in values.items()},
                     stats={"loss": loss, "final_loss": loss[-1]}, method=Ensemble(),
                     x_scaler=identity, y_scaler=identity, seed=0, fit_seconds=1.0,
                     x_train=x.numpy(), y_train=y.numpy())
    diag = diagnose(post)
    assert CHECK not in list(diag.table["check"])
    assert any("heteroscedastic" in note for note in diag.notes)
    with pytest.raises(ValueError, match="homoscedastic"):
        ensemble_loo_pit(post)
