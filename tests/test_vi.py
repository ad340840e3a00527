"""Mean-field and low-rank VI: closed-form Gaussian targets and the real model path."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from helpers import LinearNet
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal, init_to_value

import bayesresnet as brn
from bayesresnet.inference.base import MethodResult, seeded_generator
from bayesresnet.inference.flat_vi import fit_flat_gaussian
from bayesresnet.inference.vi import (
    BACKENDS,
    LowRank,
    MeanField,
    _fit_guide,
    _map_values,
    default_rank,
)

# ---------------------------------------------------------------- closed-form Gaussian target

SD = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
CORR = torch.tensor([[1.0, 0.9, 0.5], [0.9, 1.0, 0.7], [0.5, 0.7, 1.0]], dtype=torch.float64)
SIGMA = CORR * SD.outer(SD)
PRECISION = torch.linalg.inv(SIGMA)
SCALE_TRIL = torch.linalg.cholesky(SIGMA)


def gaussian_model():
    pyro.sample("z", dist.MultivariateNormal(torch.zeros(3, dtype=torch.float64),
                                             scale_tril=SCALE_TRIL))


def _fit_gaussian(guide_class, **guide_kwargs):
    # Many cheap particles (vectorized) and a short, fast-decaying schedule: across seeds the
    # fitted variances scatter by about 3% around the optimum and the means by < 0.01, so the
    # tolerances below (10%, 0.05) are about three times that scatter. The alternatives they
    # must exclude are far away: the true marginal variances are 4-9 times the mean-field ones.
    init = {"z": torch.ones(3, dtype=torch.float64)}
    return _fit_guide(gaussian_model, guide_class, (),
                      guide_kwargs={"init_loc_fn": init_to_value(values=init), "init_scale": 0.1,
                                    **guide_kwargs},
                      steps=400, lr=0.1, num_particles=256, num_draws=4000, seed=0)


def _check_draws_follow(z, log_q, q):
    """log_q is the density of the fitted q at the draws z, and their mean is q's mean."""
    assert z.shape == (4000, 3)
    assert torch.allclose(log_q, q.log_prob(z), atol=1e-10)
    standard_error = q.variance.sqrt() / math.sqrt(z.shape[0])
    assert ((z.mean(0) - q.mean).abs() < 5 * standard_error).all()


def test_meanfield_variances_are_inverse_precision_diagonal():
    fit = _fit_gaussian(AutoNormal)
    loc, scale = fit.params["AutoNormal.locs.z"], fit.params["AutoNormal.scales.z"]
    assert loc.abs().max() < 0.05
    ratio = scale**2 * torch.diag(PRECISION)  # KL(q||p)-optimal mean field: var_i = 1/Lambda_ii
    assert ((ratio - 1).abs() < 0.10).all(), ratio
    _check_draws_follow(fit.draws["z"], fit.log_q, dist.Normal(loc, scale).to_event(1))


def test_lowrank_at_full_rank_recovers_the_covariance():
    fit = _fit_gaussian(AutoLowRankMultivariateNormal, rank=3)
    name = "AutoLowRankMultivariateNormal"
    loc, scale = fit.params[f"{name}.loc"], fit.params[f"{name}.scale"]
    factor = fit.params[f"{name}.cov_factor"]
    cov = scale[:, None] * (factor @ factor.T + torch.eye(3)) * scale[None, :]
    assert loc.abs().max() < 0.05
    assert ((torch.diag(cov) / torch.diag(SIGMA) - 1).abs() < 0.10).all()
    sd = torch.diag(cov).sqrt()
    assert (cov / sd.outer(sd) - CORR).abs().max() < 0.05
    q = dist.LowRankMultivariateNormal(loc, factor * scale[:, None], scale**2)
    _check_draws_follow(fit.draws["z"], fit.log_q, q)


def test_fit_guide_elbo_history_and_isolation():
    pyro.param("user_param", torch.tensor(2.0))
    state = torch.random.get_rng_state()
    fit = _fit_gaussian(AutoNormal)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert list(pyro.get_param_store().keys()) == ["user_param"]
    assert fit.elbo.shape == (400,)
    # At the optimum, ELBO = log Z - KL(q||p) with log Z = 0 and the Gaussian KL in closed form.
    var = 1 / torch.diag(PRECISION)
    kl = 0.5 * (torch.logdet(SIGMA) - var.log().sum())  # tr(Lambda diag(var)) = 3 cancels -3
    assert abs(fit.elbo[-100:].mean() + kl.item()) < 0.05


def _fit_flat_gaussian(rank, seed=0):
    # The settings of _fit_gaussian, on the closed-form log density of the same target.
    target = dist.MultivariateNormal(torch.zeros(3, dtype=torch.float64), scale_tril=SCALE_TRIL)
    return fit_flat_gaussian(target.log_prob, torch.ones(3, dtype=torch.float64), rank=rank,
                             init_scale=0.1, steps=400, lr=0.1, num_particles=256,
                             num_draws=4000, seed=seed, clip=10.0, final_lr_fraction=0.1)


def test_flat_meanfield_variances_are_inverse_precision_diagonal():
    fit = _fit_flat_gaussian(rank=None)
    loc, scale = fit.params["loc"], fit.params["scale"]
    assert set(fit.params) == {"loc", "scale"}
    assert loc.abs().max() < 0.05
    ratio = scale**2 * torch.diag(PRECISION)
    assert ((ratio - 1).abs() < 0.10).all(), ratio
    _check_draws_follow(fit.draws, fit.log_q, dist.Normal(loc, scale).to_event(1))
    # The reported ELBO at the optimum is -KL(q||p) (log Z = 0), as for the Pyro backend.
    var = 1 / torch.diag(PRECISION)
    kl = 0.5 * (torch.logdet(SIGMA) - var.log().sum())
    assert abs(fit.elbo[-100:].mean() + kl.item()) < 0.05


def test_flat_lowrank_at_full_rank_recovers_the_covariance():
    fit = _fit_flat_gaussian(rank=3)
    loc, scale, factor = fit.params["loc"], fit.params["scale"], fit.params["cov_factor"]
    cov = scale[:, None] * (factor @ factor.T + torch.eye(3)) * scale[None, :]
    assert loc.abs().max() < 0.05
    assert ((torch.diag(cov) / torch.diag(SIGMA) - 1).abs() < 0.10).all()
    sd = torch.diag(cov).sqrt()
    assert (cov / sd.outer(sd) - CORR).abs().max() < 0.05
    # At full rank q can equal p, so the ELBO reaches log Z = 0.
    assert abs(fit.elbo[-100:].mean()) < 0.05
    q = dist.LowRankMultivariateNormal(loc, factor * scale[:, None], scale**2)
    _check_draws_follow(fit.draws, fit.log_q, q)


def test_flat_fit_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = _fit_flat_gaussian(3, seed=1), _fit_flat_gaussian(3, seed=1), _fit_flat_gaussian(3, 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.draws, b.draws) and np.array_equal(a.elbo, b.elbo)
    assert not torch.equal(a.draws, c.draws)


def test_flat_fit_reports_a_non_finite_elbo():
    with pytest.raises(RuntimeError, match="non-finite at step 0"):
        fit_flat_gaussian(lambda z: z.sum(-1) * float("nan"), torch.zeros(2, dtype=torch.float64),
                          rank=None, init_scale=0.1, steps=5, lr=0.1, num_particles=2,
                          num_draws=2, seed=0, clip=10.0, final_lr_fraction=0.1)


# ---------------------------------------------------------- conjugate linear regression, via fit()


def _linear_regression():
    """y = x w + b + N(0, 0.5^2) with correlated features (correlation 0.9), w, b ~ N(0, 2^2).

    The posterior of (w, b) is N(m, S) with S^-1 = Lambda = X'X / 0.25 + I / 4 and
    m = S X'y / 0.25 (X with a column of ones for b). Its weights correlate at -0.89, so the
    mean-field optimum, N(m, diag(1 / Lambda_ii)), has variances 0.11, 0.13 and 0.53 times the
    posterior's: the two families have distinct, known answers.
    """
    g = torch.Generator().manual_seed(0)
    u = 1.0 + torch.randn(40, generator=g, dtype=torch.float64)
    x = torch.stack([u, u + 0.5 * torch.randn(40, generator=g, dtype=torch.float64)], 1)
    y = x @ torch.tensor([1.0, -2.0], dtype=torch.float64) + 0.3 + 0.5 * torch.randn(
        40, generator=g, dtype=torch.float64)
    design = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1)
    precision = design.T @ design / 0.25 + torch.eye(3, dtype=torch.float64) / 4.0
    cov = torch.linalg.inv(precision)
    model = brn.BayesianResNet(LinearNet(2), prior=brn.priors.Normal(2.0),
                               likelihood=brn.likelihoods.Gaussian(noise=0.5))
    return model, x.numpy(), y.numpy(), cov @ design.T @ y / 0.25, cov, precision


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["meanfield", "lowrank"])
def test_fit_reaches_the_closed_form_optimum_on_linear_regression(family, backend):
    # The whole path (fit, the model's density, the guide, the draws of the Posterior) against
    # the KL(q||p) optimum of each family: mean-field, N(m, diag(1 / Lambda_ii)); low-rank at
    # full rank, N(m, S) itself. Tolerances: over seeds 0-4 of each family and backend the
    # draws' means were within 0.11 target standard deviations of m, their variances within 8%
    # and their correlations within 0.02 of the optimum's (the optimizer's scatter; the Monte
    # Carlo error of 20000 draws adds only 1% to a variance and 0.007 sd to a mean). The bounds
    # are about twice that. Wrong answers miss by far more: the other family's variances are
    # off by a factor 2-9 and its correlations by up to 0.89.
    model, x, y, mean, cov, precision = _linear_regression()
    settings = {"steps": 400, "lr": 0.1, "num_particles": 256, "num_draws": 20000,
                "backend": backend}
    method = MeanField(**settings) if family == "meanfield" else LowRank(rank=3, **settings)
    post = brn.fit(model, x, y, method=method, seed=0, progress=False, check=False,
                   standardize=False)
    draws = post.flat_draws()
    z = torch.cat([draws["output_weight"][:, 0], draws["output_bias"]], 1)  # (w, b), 20000 x 3
    target = torch.diag(1.0 / precision.diagonal()) if family == "meanfield" else cov
    sd = target.diagonal().sqrt()
    fitted = torch.cov(z.T)
    fitted_sd = fitted.diagonal().sqrt()
    assert ((z.mean(0) - mean).abs() / sd).max() < 0.25, (z.mean(0), mean, sd)
    assert ((fitted.diagonal() / target.diagonal() - 1).abs()).max() < 0.2, (fitted, target)
    assert (fitted / fitted_sd.outer(fitted_sd) - target / sd.outer(sd)).abs().max() < 0.05


# ---------------------------------------------------------------- the real model on the cubic toy


def _cubic_model():
    net = brn.ResNet(1, 1, width=10, depth=4, basis=brn.Linear())
    return brn.BayesianResNet(net)


def _standardized_cubic(n=20, seed=0):
    x, y = brn.data.cubic(n, seed)
    x, y = torch.tensor(x), torch.tensor(y)[:, None]
    return (x - x.mean()) / x.std(), (y - y.mean()) / y.std()


METHODS = {
    "meanfield": lambda **kw: MeanField(**kw),
    "lowrank": lambda **kw: LowRank(rank=6, **kw),
    "meanfield-pyro": lambda **kw: MeanField(backend="pyro", **kw),
    "lowrank-pyro": lambda **kw: LowRank(rank=6, backend="pyro", **kw),
}


@pytest.fixture(scope="module")
def cubic_runs():
    model = _cubic_model()
    x, y = _standardized_cubic()
    with pyro.get_param_store().scope():
        runs = {name: make(steps=200, num_particles=4, num_draws=500).run(model, x, y, 0, False)
                for name, make in METHODS.items()}
    return model, x, y, runs


@pytest.mark.parametrize("name", sorted(METHODS))
def test_cubic_run_shapes_and_elbo_improves(cubic_runs, name):
    model, x, y, runs = cubic_runs
    result = runs[name]
    assert isinstance(result, MethodResult)
    assert list(result.draws) == list(model.latent_sites)
    for site, shape in model.latent_shapes.items():
        assert result.draws[site].shape == (1, 500, *shape)
    assert (result.draws["noise"] > 0).all()
    elbo = result.stats["elbo"]
    assert elbo.shape == (200,) and np.isfinite(elbo).all()
    assert elbo[-20:].mean() > elbo[:20].mean()
    assert result.stats["log_q"].shape == result.stats["log_joint"].shape == (1, 500)
    values = {k: v[0] for k, v in result.draws.items()}
    assert np.allclose(result.stats["log_joint"][0], model.log_joint(values, x, y).numpy())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_cubic_elbo_agrees_with_draws(cubic_runs, name):
    """The ELBO that training reports is E_q[log p(theta, y) - log q(theta)] of the final guide,
    estimated independently from the draws with ``model.log_joint``: the Pyro path (guide,
    vectorized particles, model trace) and the batched density agree on what is optimized.
    (With a model that broadcast its likelihood across the particle plate this misses by
    about (num_particles - 1) * |log-likelihood|, 10-13 nats here.)"""
    _, _, _, runs = cubic_runs
    result = runs[name]
    log_w = result.stats["log_joint"][0] - result.stats["log_q"][0]
    estimate, standard_error = log_w.mean(), log_w.std() / math.sqrt(log_w.size)
    # The last 20 steps' ELBO (4 particles each) averages 80 draws at nearly final parameters.
    reported = result.stats["elbo"][-20:]
    tolerance = 4 * math.hypot(standard_error, reported.std() / math.sqrt(reported.size)) + 1.0
    assert abs(reported.mean() - estimate) < tolerance


def test_model_under_particle_plate_matches_batched_density():
    """What vectorized ELBO particles need from the model: under a plate left of the data plate,
    global sites carry a size-1 slot at the data dim and ``obs`` has batch shape (P, N), with
    the pointwise log-likelihood of each particle."""
    model = _cubic_model()
    x, y = _standardized_cubic()
    values = model.sample_prior(0, (5,))
    conditioned = poutine.condition(model, data={k: v.unsqueeze(1) for k, v in values.items()})
    with pyro.plate("particles", 5, dim=-2):
        trace = poutine.trace(conditioned).get_trace(x, y)
    trace.compute_log_prob()
    obs = trace.nodes["obs"]["log_prob"]
    assert obs.shape == (5, 20)
    assert torch.allclose(obs, model.log_likelihood(values, x, y), atol=1e-10)


def _fitted_q(result, model):
    """The fitted Gaussian over the flat unconstrained vector, from either backend's extra."""
    if result.extra["backend"] == "flat":
        loc, scale = result.extra["loc"], result.extra["scale"]
        factor = result.extra.get("cov_factor")
    else:
        params = result.extra["guide_params"]
        if result.extra["guide"] == "AutoNormal":
            loc = torch.cat([params[f"AutoNormal.locs.{s}"].reshape(-1)
                             for s in model.latent_sites])
            scale = torch.cat([params[f"AutoNormal.scales.{s}"].reshape(-1)
                               for s in model.latent_sites])
            factor = None
        else:
            name = "AutoLowRankMultivariateNormal"
            loc, scale = params[f"{name}.loc"], params[f"{name}.scale"]
            factor = params[f"{name}.cov_factor"]
    if factor is None:
        return dist.Normal(loc, scale).to_event(1)
    assert result.extra["rank"] == 6 and factor.shape == (model.dim, 6)
    return dist.LowRankMultivariateNormal(loc, factor * scale[:, None], scale**2)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_cubic_log_q_is_the_guide_density(cubic_runs, name):
    """log_q of the constrained draws = Gaussian density of the unconstrained values minus the
    log-Jacobian of the constraining map, with the guide's fitted parameters."""
    model, _, _, runs = cubic_runs
    result = runs[name]
    assert result.extra["backend"] == ("pyro" if name.endswith("pyro") else "flat")
    values = {k: v[0] for k, v in result.draws.items()}
    z = model.unconstrain(values)
    _, log_det = model.constrain(z)
    expected = _fitted_q(result, model).log_prob(z) - log_det
    assert np.allclose(result.stats["log_q"][0], expected.numpy(), atol=1e-8)


def test_flat_and_pyro_backends_optimize_the_same_objective():
    """Our ELBO of a fixed q equals Pyro's Trace_ELBO of an AutoNormal guide holding the same
    parameters, within Monte Carlo error: the same model density, transforms and entropy."""
    model = _cubic_model()
    x, y = _standardized_cubic()
    generator = torch.Generator().manual_seed(0)
    loc = model.unconstrain(model.initial_values(generator))
    scale = torch.full_like(loc, 0.05)
    particles = 20_000
    q = dist.Normal(loc, scale).to_event(1)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        z = q.sample((particles,))
        log_density = model.log_density(z, x, y)
        ours = log_density.mean() + q.entropy()
        with pyro.get_param_store().scope():
            guide = AutoNormal(model, init_loc_fn=init_to_value(
                values=model.constrain(loc)[0]), init_scale=0.05)
            elbo = pyro.infer.Trace_ELBO(num_particles=particles, vectorize_particles=True,
                                         max_plate_nesting=1)
            theirs = -elbo.loss(model, guide, x, y)
    # Pyro averages log p - log q over its particles, we average log_density and add the exact
    # entropy: 4 standard errors of the difference, about 0.8 nats here, where the entropy of q
    # alone is about -1.6 nats per coordinate (-400 in all).
    their_spread = (log_density - q.log_prob(z)).std()
    tolerance = 4 * math.sqrt((log_density.var() + their_spread**2) / particles)
    assert abs(ours.item() - theirs) < tolerance, (ours.item(), theirs, tolerance)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_cubic_seeding_and_isolation(name):
    model = _cubic_model()
    x, y = _standardized_cubic()
    method = METHODS[name](steps=15, num_particles=2, num_draws=30)
    pyro.param("user_param", torch.tensor(1.0))
    state = torch.random.get_rng_state()
    a = method.run(model, x, y, 3, False)
    b = method.run(model, x, y, 3, False)
    c = method.run(model, x, y, 4, False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert list(pyro.get_param_store().keys()) == ["user_param"]
    assert all(torch.equal(a.draws[s], b.draws[s]) for s in model.latent_sites)
    assert np.array_equal(a.stats["elbo"], b.stats["elbo"])
    assert not torch.equal(a.draws["W_coef"], c.draws["W_coef"])


@pytest.mark.parametrize("make, setting", [
    (lambda: MeanField(steps=0), "steps"),
    (lambda: MeanField(lr=0.0), "lr"),
    (lambda: MeanField(lr=float("nan")), "lr"),
    (lambda: MeanField(num_particles=0), "num_particles"),
    (lambda: MeanField(num_draws=-1), "num_draws"),
    (lambda: MeanField(init_scale=-0.1), "init_scale"),
    (lambda: MeanField(steps=2.5), "steps"),
    (lambda: LowRank(rank=0), "rank"),
    (lambda: LowRank(rank=1.5), "rank"),
    (lambda: LowRank(steps=0), "steps"),
    (lambda: LowRank(num_particles=0), "num_particles"),
    (lambda: MeanField(backend="jax"), "backend"),
    (lambda: MeanField(init="median"), "init"),
    (lambda: LowRank(init_steps=0), "init_steps"),
    (lambda: LowRank(backend=None), "backend"),
])
def test_invalid_settings(make, setting):
    with pytest.raises(ValueError, match=setting):
        make()


def test_rank_validation_and_default():
    model = _cubic_model()
    with pytest.raises(ValueError, match="rank"):
        LowRank(rank=model.dim + 1).validate(model)
    LowRank(rank=model.dim).validate(model)
    assert default_rank(model.dim) == round(math.sqrt(model.dim))
    assert default_rank(1) == 1 and default_rank(3) == 2
    assert MeanField().config() == {"name": "meanfield", "steps": 5000, "lr": 0.01,
                                    "num_particles": 8, "num_draws": 1000, "init_scale": 0.01,
                                    "init": "network", "init_steps": 1000, "backend": "flat",
                                    "batch_size": None}
    assert LowRank(rank=4).config()["rank"] == 4 and LowRank.name == "lowrank"


def _log_density_and_gradient_norm(model, z, x, y):
    z = z.detach().clone().requires_grad_(True)
    value = model.log_density(z, x, y)
    value.backward()
    return value.item(), z.grad.norm().item()


def test_map_values_reach_a_mode_of_the_log_density():
    model = _cubic_model()
    x, y = _standardized_cubic()
    start = model.initial_values(torch.Generator().manual_seed(0))
    found = _map_values(model, x, y, start, 1000, 0.01)
    assert set(found) == set(start)
    before, slope_before = _log_density_and_gradient_norm(model, model.unconstrain(start), x, y)
    after, slope_after = _log_density_and_gradient_norm(model, model.unconstrain(found), x, y)
    # Measured: -332 -> -209 nats, gradient norm 370 -> 2.0.
    assert after > before + 50
    assert slope_after < 0.02 * slope_before


@pytest.mark.parametrize("backend", ["flat", "pyro"])
def test_map_init_starts_the_means_at_the_map_values(backend):
    """After one step, q's means are within one Adam step (at most ``lr`` per coordinate) of
    the MAP values that ``init='map'`` computes; with ``init='network'`` they are not."""
    model = _cubic_model()
    x, y = _standardized_cubic()
    lr, seed = 0.01, 5
    mode = model.unconstrain(_map_values(
        model, x, y, model.initial_values(seeded_generator(seed)), 300, lr))
    for init, near in (("map", True), ("network", False)):
        # A tiny init_scale makes every draw q's mean, up to 1e-6 per coordinate.
        method = MeanField(steps=1, lr=lr, num_particles=1, num_draws=4, init_scale=1e-6,
                           init=init, init_steps=300, backend=backend)
        with pyro.get_param_store().scope():
            result = method.run(model, x, y, seed, False)
        means = model.unconstrain({k: v[0] for k, v in result.draws.items()}).mean(0)
        distance = (means - mode).abs().max().item()
        assert (distance < 1.1 * lr) == near, (init, distance)
