"""NUTS with Pyro's kernel as backend: closed form, per-draw statistics, and agreement with
Pyro's own NUTS run on the Pyro model (for every backend of ``NUTS``).

Tolerances are Monte Carlo errors: estimate +- 4 MCSE, with the MCSE from ArviZ's ESS of the
draws (or of the per-draw quantity whose mean is tested).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import arviz as az
import numpy as np
import pyro
import pytest
import torch

import bayesresnet as brn
from bayesresnet.inference.executor import derived_seed
from bayesresnet.inference.nuts import (
    _STREAM_INIT,
    BACKENDS,
    NUTS,
    initial_positions,
    sample_pyro,
)

# A correlated 3-D Gaussian target.
MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
_CHOL = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.3, -0.5, 0.4]], dtype=torch.float64)
SIGMA = _CHOL @ _CHOL.T
PRECISION = torch.linalg.inv(SIGMA)
LOG_NORM = -0.5 * (3 * math.log(2 * math.pi) + torch.logdet(SIGMA).item())


def gaussian_logp(z: torch.Tensor) -> torch.Tensor:
    d = z - MU
    return -0.5 * ((d @ PRECISION) * d).sum(-1) + LOG_NORM


def mcse_mean(values: np.ndarray) -> float:
    """Monte Carlo standard error of the mean of values (chain, draw), from ArviZ's ESS."""
    return float(values.std(ddof=1) / math.sqrt(az.ess(values)))


def assert_mean_within_mcse(values: np.ndarray, expected: float, k: float = 4.0) -> None:
    se = mcse_mean(values)
    assert abs(values.mean() - expected) < k * se, (values.mean(), expected, se)


@pytest.mark.parametrize("dense_mass, chains", [(False, 2), (True, 1)])
def test_gaussian_moments_and_energy(dense_mass, chains):
    out = sample_pyro(gaussian_logp, torch.zeros(chains, 3, dtype=torch.float64), num_warmup=80,
                      num_samples=200, seed=1, dense_mass=dense_mass)
    samples, stats = out.samples, out.stats
    assert samples.shape == (chains, 200, 3)
    assert out.inverse_mass.shape == ((chains, 3, 3) if dense_mass else (chains, 3))
    draws = samples.numpy()
    centred = draws - MU.numpy()
    for i in range(3):
        assert_mean_within_mcse(draws[..., i], MU[i].item())
        for j in range(i, 3):
            assert_mean_within_mcse(centred[..., i] * centred[..., j], SIGMA[i, j].item())
    # The recorded log density is that of the returned draw (no off-by-one in the record).
    np.testing.assert_allclose(stats["log_density"], gaussian_logp(samples).numpy(), rtol=1e-12)
    # energy = potential + kinetic of the selected point; under the canonical distribution the
    # kinetic energy (of the unit-normal unscaled momentum) has mean D / 2 = 1.5.
    kinetic = stats["energy"] + stats["log_density"]
    assert (kinetic >= 0).all()
    assert_mean_within_mcse(kinetic, 1.5)


def test_sample_pyro_validates_init_shape():
    with pytest.raises(ValueError, match="chains, dim"):
        sample_pyro(gaussian_logp, torch.zeros(3, dtype=torch.float64), 10, 10, 0)


# ---------------------------------------------------------------------------------- on a model
def _toy_model(noise=None, width=3, activation="tanh"):
    net = brn.ResNet(1, 1, width=width, depth=2, basis=brn.Constant(), activation=activation)
    return brn.BayesianResNet(net, likelihood=brn.likelihoods.Gaussian(noise=noise))


def _toy_data(n=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1.5, 1.5, n, dtype=torch.float64).unsqueeze(-1)
    y = torch.sin(2 * x) + 0.1 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return x, y


@pytest.fixture(scope="module", params=BACKENDS)
def toy_run(request):
    model = _toy_model()
    x, y = _toy_data()
    # max_tree_depth=4 caps a transition at 15 leapfrog steps: enough to exercise the
    # statistics (including saturated trees) at a small cost.
    method = NUTS(num_samples=20, num_warmup=30, chains=2, max_tree_depth=4, init_steps=100,
                  backend=request.param)
    rng_before = torch.get_rng_state()
    result = method.run(model, x, y, seed=3, progress=False)
    rng_after = torch.get_rng_state()
    return SimpleNamespace(model=model, x=x, y=y, method=method, result=result,
                           rng_before=rng_before, rng_after=rng_after)


def test_draws_and_stats_layout(toy_run):
    model, method, result = toy_run.model, toy_run.method, toy_run.result
    for name, shape in model.latent_shapes.items():
        assert result.draws[name].shape == (2, 20, *shape)
        assert result.draws[name].dtype == torch.float64
    assert (result.draws["noise"] > 0).all()
    stats = result.stats
    expected = {"diverging", "tree_depth", "num_steps", "reached_max_tree_depth", "step_size",
                "accept_prob", "log_density", "log_joint", "energy"}
    assert set(stats) == expected
    for name in expected:
        assert stats[name].shape == (2, 20), name
    assert stats["diverging"].dtype == bool and stats["reached_max_tree_depth"].dtype == bool
    assert (stats["step_size"] > 0).all()
    depth, steps = stats["tree_depth"], stats["num_steps"]
    assert ((depth >= 0) & (depth <= method.max_tree_depth)).all()
    assert (depth[~stats["diverging"]] >= 1).all()  # depth 0 needs a divergent first step
    assert (steps >= 1).all()
    assert ((2 ** depth - 1 <= steps) & (steps <= 2 ** (depth + 1) - 1)).all()
    assert (stats["reached_max_tree_depth"] == (stats["tree_depth"] == method.max_tree_depth)).all()
    assert ((stats["accept_prob"] >= 0) & (stats["accept_prob"] <= 1)).all()
    # After warmup the step size is fixed within each chain.
    assert (stats["step_size"] == stats["step_size"][:, :1]).all()
    assert np.isfinite(stats["energy"]).all()
    assert (stats["energy"] >= -stats["log_density"]).all()
    assert result.extra["initial_position"].shape == (2, model.dim)
    assert result.extra["inverse_mass"].shape == (2, model.dim)
    assert (result.extra["inverse_mass"] > 0).all()
    assert result.extra["warmup_divergences"].shape == (2,)


def test_log_joint_and_log_density_match_model(toy_run):
    model, x, y, result = toy_run.model, toy_run.x, toy_run.y, toy_run.result
    log_joint = model.log_joint(result.draws, x, y).numpy()
    np.testing.assert_allclose(result.stats["log_joint"], log_joint, rtol=1e-10)
    z = model.unconstrain(result.draws)
    np.testing.assert_allclose(result.stats["log_density"], model.log_density(z, x, y).numpy(),
                               rtol=1e-8)


def test_global_rng_untouched(toy_run):
    assert torch.equal(toy_run.rng_before, toy_run.rng_after)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_draws(backend):
    model, (x, y) = _toy_model(), _toy_data()
    method = NUTS(num_samples=10, num_warmup=10, chains=2, max_tree_depth=3, init_steps=20,
                  backend=backend)
    first = method.run(model, x, y, seed=3, progress=False)
    torch.manual_seed(12345)  # the global RNG state must not matter
    again = method.run(model, x, y, seed=3, progress=False)
    for name in first.draws:
        assert torch.equal(first.draws[name], again.draws[name])
    for name in first.stats:
        np.testing.assert_array_equal(first.stats[name], again.stats[name])
    other = method.run(model, x, y, seed=4, progress=False)
    assert not torch.equal(first.draws["noise"], other.draws["noise"])


def test_no_warmup_runs():
    model, (x, y) = _toy_model(), _toy_data()
    method = NUTS(num_samples=5, num_warmup=0, chains=1, max_tree_depth=3, init="prior",
                  backend="pyro")
    result = method.run(model, x, y, seed=0, progress=False)
    assert result.draws["noise"].shape == (1, 5, 1)
    assert result.extra["warmup_divergences"].tolist() == [0]
    assert np.isfinite(result.stats["log_joint"]).all()


def test_map_init_starts_near_the_mode(toy_run):
    model, x, y, result = toy_run.model, toy_run.x, toy_run.y, toy_run.result
    prior = model.sample_prior(0, (200,))
    prior_log_joint = model.log_joint(prior, x, y)
    first = result.stats["log_joint"][:, :5]
    # The chains start in the bulk of the posterior, far above typical prior draws.
    assert first.min() > torch.quantile(prior_log_joint, 0.99).item()
    # The MAP starts improve on the draws they began at, for every chain (by 9-23 nats from
    # the network initializations, which already fit the toy far better than prior draws).
    for begin, optimized in (("network", "map"), ("prior", "prior-map")):
        z_begin = initial_positions(model, x, y, 4, seed=7, init=begin)
        z_map = initial_positions(model, x, y, 4, seed=7, init=optimized, init_steps=100)
        assert (model.log_density(z_map, x, y) > model.log_density(z_begin, x, y) + 5).all()


def test_network_starts_are_the_network_initializations():
    """init='network' starts chain c at the c-th network initialization drawn from the fit's
    init stream, the same draws whatever the chain grouping; 'prior' at prior draws."""
    model, (x, y) = _toy_model(), _toy_data()
    z_net = initial_positions(model, x, y, 3, seed=7, init="network")
    generator = torch.Generator().manual_seed(derived_seed(7, _STREAM_INIT))
    for chain in range(3):
        expected = model.unconstrain(model.initial_values(generator))
        assert torch.equal(z_net[chain], expected)
    assert not torch.equal(z_net[0], z_net[1])
    # Glorot weights are bounded by sqrt(6 / (fan_in + fan_out)) < 1.5; N(0, 1) prior draws
    # of 250-odd coefficients exceed that somewhere with near certainty.
    z_prior = initial_positions(model, x, y, 3, seed=7, init="prior")
    assert z_net.abs().max() < 1.5 < z_prior.abs().max()
    grouped = NUTS(chains=3, chains_per_unit=1, init="network").plan(model, x, y, 7)
    starts = torch.cat([unit.args[-1] for unit in grouped.units])
    assert torch.equal(starts, z_net)


@pytest.mark.parametrize("kwargs, match", [
    ({"chains": 0}, "chains"),
    ({"num_samples": 0}, "num_samples"),
    ({"num_warmup": -1}, "num_warmup"),
    ({"num_warmup": 1.5}, "num_warmup"),
    ({"target_accept": 0.0}, "target_accept"),
    ({"target_accept": 1.0}, "target_accept"),
    ({"max_tree_depth": 0}, "max_tree_depth"),
    ({"init_steps": 0}, "init_steps"),
    ({"init": "uniform"}, "'map', 'network', 'prior', 'prior-map'"),
    ({"backend": "stan"}, "backend 'stan'.*'pyro'"),
    ({"dense_mass": "yes"}, "dense_mass"),
])
def test_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NUTS(**kwargs)


def test_config_is_json_able():
    import json

    config = NUTS(chains=2, backend="pyro").config()
    assert config["name"] == "nuts" and config["chains"] == 2 and config["backend"] == "pyro"
    json.dumps(config)


# ---------------------------------------------------------------------------------- vs Pyro
X_TEST = torch.tensor([[-2.0], [0.0], [1.0], [2.5]], dtype=torch.float64)


def _linear_problem():
    """Tiny identity-activation ResNet, fixed noise, 10 points of a noisy line.

    The noise is large enough that the prior still shapes the posterior: its weight-product
    ridges stay mild, which keeps NUTS trees short (depth about 3), while the data still move
    the predictive mean well away from the prior's (zero).
    """
    model = _toy_model(noise=2.0, width=2, activation="identity")
    generator = torch.Generator().manual_seed(11)
    x = torch.linspace(-2, 2, 10, dtype=torch.float64).unsqueeze(-1)
    y = 0.7 * x - 0.2 + 2.0 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return model, x, y


def _reference_pyro_nuts(model, x, y, chains, warmup, samples, seed):
    """Pyro's own NUTS on the Pyro model (trace-based potential), chains one after another."""
    draws = []
    for chain in range(chains):
        kernel = pyro.infer.NUTS(model, max_tree_depth=8)
        mcmc = pyro.infer.MCMC(kernel, num_samples=samples, warmup_steps=warmup,
                               num_chains=1, disable_progbar=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1000 * seed + chain)
            mcmc.run(x, y)
        draws.append(mcmc.get_samples())
    return {name: torch.stack([d[name] for d in draws]) for name in draws[0]}


def _predictive_f(model, draws):
    """Network mean at X_TEST for every draw, (chain, draw, point)."""
    with torch.no_grad():
        loc, _ = model.loc_scale(draws, X_TEST)
    return loc[..., 0].numpy()


def _compare_predictives(chains, warmup, samples, k):
    """Both backends against Pyro's NUTS on the Pyro model: predictive mean and spread of the
    network output at X_TEST within k Monte Carlo standard errors."""
    model, x, y = _linear_problem()
    reference = _reference_pyro_nuts(model, x, y, chains, warmup, samples, 5)
    f_ref = _predictive_f(model, reference)
    for backend in BACKENDS:
        method = NUTS(num_samples=samples, num_warmup=warmup, chains=chains, max_tree_depth=8,
                      init_steps=100, backend=backend)
        f_ours = _predictive_f(model, method.run(model, x, y, seed=5, progress=False).draws)
        for p in range(X_TEST.shape[0]):
            a, b = f_ours[..., p], f_ref[..., p]
            se_mean = math.hypot(mcse_mean(a), mcse_mean(b))
            assert abs(a.mean() - b.mean()) < k * se_mean, \
                (backend, p, a.mean(), b.mean(), se_mean)
            se_sd = math.hypot(float(az.mcse(a, method="sd")), float(az.mcse(b, method="sd")))
            assert abs(a.std() - b.std()) < k * se_sd, (backend, p, a.std(), b.std(), se_sd)


def test_agrees_with_pyro_nuts_on_pyro_model_fast():
    # One chain of 80 draws per sampler (ESS about 50-80): the ESS, hence the MCSE, is itself
    # uncertain by roughly +-30 % at that length, so the bound is 5 rather than 4 estimated
    # standard errors.
    _compare_predictives(chains=1, warmup=50, samples=80, k=5.0)


@pytest.mark.statistical
def test_agrees_with_pyro_nuts_on_pyro_model():
    _compare_predictives(chains=2, warmup=300, samples=700, k=4.0)
