"""Priors over depth (issue 24): RandomWalk, Decaying, Horseshoe.

The densities are checked against references written here with torch.distributions and scipy,
not with the library's own formulas; the random walk's covariance and the horseshoe's marginal
against theory on prior draws, with tolerances set by the Monte Carlo error (see each test).
"""

import math

import numpy as np
import pyro.poutine as poutine
import pytest
import scipy.stats as st
import torch
import torch.distributions as td

import bayesresnet as brn
from bayesresnet import priors
from bayesresnet.convert import identifiable_names

PRIORS = {
    "walk": lambda: priors.RandomWalk(step_hyper_scale=0.7, scale=0.9, stationary=False),
    "stationary": lambda: priors.RandomWalk(step_hyper_scale=1.5, scale=0.8, stationary=True),
    "decaying": lambda: priors.Decaying(decay_hyper_scale=1.5, scale=1.2),
    "horseshoe": lambda: priors.Horseshoe(global_scale=0.3, slab_scale=1.5, slab_df=5.0,
                                          scale=0.7),
}

HYPER = {  # the scalar hyperparameter sites of each prior, per structured network site
    "walk": ["step_scale"], "stationary": ["step_scale"], "decaying": ["decay_scale"],
    "horseshoe": ["global_scale", "slab_scale"],
}

BASES = {"piecewise": brn.Piecewise(), "legendre": brn.Legendre(3)}


def _model(key, basis="piecewise", width=3, depth=5):
    net = brn.ResNet(2, 1, width=width, depth=depth, basis=BASES[basis])
    return brn.BayesianResNet(net, prior=PRIORS[key]())


def _data(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 2, generator=g, dtype=torch.float64),
            torch.randn(n, generator=g, dtype=torch.float64))


# ------------------------------------------------------------------ hand-written references
def _f64(value):
    return torch.as_tensor(value, dtype=torch.float64)


def _walk_covariance(size, scale, step, stationary):
    """Cov(w_i, w_j): scale^2 + step^2 min(i, j) / K, or scale^2 rho^|i-j| with
    rho = exp(-step^2 / (2 scale^2 K)) for the stationary walk."""
    i = np.arange(size)
    if stationary:
        rho = math.exp(-step**2 / (2 * scale**2 * size))
        return scale**2 * rho ** np.abs(i[:, None] - i[None, :])
    return scale**2 + step**2 * np.minimum(i[:, None], i[None, :]) / size


def _reference_log_prior(key, prior, values, param_shapes):
    """log p of every latent site at ``values`` (one draw), each term written out here."""
    normal = lambda v, s: td.Normal(0.0, _f64(s)).log_prob(v).sum()  # noqa: E731
    total = torch.zeros((), dtype=torch.float64)
    for name in param_shapes:
        if not name.endswith("_coef"):
            total = total + normal(values[name], prior.scale)
            continue
        total = total + normal(values[f"{name}_raw"], 1.0)
        if key in ("walk", "stationary"):
            total = total + td.HalfNormal(_f64(prior.step_hyper_scale)).log_prob(
                values[f"{name}_step_scale"])
        elif key == "decaying":
            total = total + td.HalfNormal(_f64(prior.decay_hyper_scale)).log_prob(
                values[f"{name}_decay_scale"])
        else:
            tau, c = values[f"{name}_global_scale"], values[f"{name}_slab_scale"]
            df, s = prior.slab_df, prior.slab_scale
            total = total + float(st.halfcauchy.logpdf(float(tau), scale=prior.global_scale))
            total = total + float(st.halfcauchy.logpdf(values[f"{name}_local_scale"]).sum())
            # c^2 ~ InvGamma(df / 2, scale = df s^2 / 2); p(c) = p(c^2) * 2c.
            total = total + float(st.invgamma.logpdf(float(c) ** 2, df / 2, scale=df * s**2 / 2)
                                  + math.log(2 * float(c)))
    return total


def _reference_conditional(key, prior, name, shape, values):
    """log p(w | hyperparameters) of the network site ``name``, written as a centered density,
    and log|det dw/dz| of the theory's map z -> w (so that p(w) = p(z) / |det|)."""
    w = values[name]
    size = shape[0]
    if key in ("walk", "stationary"):
        cov = torch.as_tensor(_walk_covariance(size, prior.scale,
                                               float(values[f"{name}_step_scale"]),
                                               key == "stationary"))
        columns = w.reshape(size, -1).T  # one walk per column
        log_p = td.MultivariateNormal(torch.zeros(size, dtype=torch.float64), cov
                                      ).log_prob(columns).sum()
        return log_p, 0.5 * columns.shape[0] * torch.logdet(cov)
    if key == "decaying":
        ell = float(values[f"{name}_decay_scale"])
        sd = torch.tensor([prior.scale * math.exp(-k / ell) for k in range(size)],
                          dtype=torch.float64).reshape((size,) + (1,) * (len(shape) - 1))
    else:
        tau, c = float(values[f"{name}_global_scale"]), float(values[f"{name}_slab_scale"])
        lam = values[f"{name}_local_scale"]
        lam_tilde = torch.sqrt(c**2 * lam**2 / (c**2 + tau**2 * lam**2))
        sd = tau * lam_tilde
    sd = sd.expand(shape)
    return td.Normal(_f64(0.0), sd).log_prob(w).sum(), sd.log().sum()


@pytest.mark.parametrize("basis", sorted(BASES))
@pytest.mark.parametrize("key", sorted(PRIORS))
def test_log_densities_equal_handwritten_reference(key, basis):
    model = _model(key, basis)
    x, y = _data()
    shapes = model.net.param_shapes
    draws = model.sample_prior(11, (3,))
    joint = model.log_joint(draws, x, y)
    z = model.unconstrain(draws)
    density = model.log_density(z, x, y)
    for s in range(3):
        values = {k: v[s] for k, v in draws.items()}
        net = model.net_params(values)
        ref_prior = _reference_log_prior(key, model.prior, values, shapes)
        loc = model.net.forward(net, x)[:, 0]
        noise_prior = td.HalfNormal(_f64(model.likelihood.noise_prior_scale))
        ref_lik = td.Normal(loc, values["noise"][0]).log_prob(y).sum() \
            + noise_prior.log_prob(values["noise"]).sum()
        assert torch.allclose(joint[s], ref_prior + ref_lik, rtol=1e-10, atol=1e-9)
        # The flat density adds log|dv/du| = log v for every positive site (v = exp(u)).
        log_jac = sum(values[name].log().sum() for name in model.latent_sites
                      if name == "noise" or name.endswith("_scale"))
        assert torch.allclose(density[s], ref_prior + ref_lik + log_jac, rtol=1e-10, atol=1e-9)
        # The implied prior of the network's weights given the hyperparameters is the centered
        # density of the theory: p(w | h) = p(z) / |det dw/dz|.
        for name in ("W_coef", "b_coef"):
            centered, log_det = _reference_conditional(key, model.prior, name, shapes[name],
                                                       {**values, **net})
            standard = td.Normal(_f64(0.0), _f64(1.0)).log_prob(values[f"{name}_raw"]).sum()
            assert torch.allclose(centered, standard - log_det, rtol=1e-9, atol=1e-8)
    # The Pyro model scores the same sites with the same density.
    values = {k: v[0] for k, v in draws.items()}
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(x, y)
    sampled = {n for n, node in trace.nodes.items()
               if node["type"] == "sample" and n not in ("obs", "data")}
    assert sampled == set(model.latent_sites)
    assert torch.allclose(trace.log_prob_sum(), joint[0], atol=1e-9)


# ------------------------------------------------------------------ random walk covariance
def _walk_draws(prior, size, draws, step=None):
    """w_{k} of every column of W_coef under prior draws, grouped per draw: (draws, K, R)."""
    net = brn.ResNet(1, 1, width=4, depth=size, basis="piecewise")
    model = brn.BayesianResNet(net, prior=prior)
    values = model.sample_prior(5, (draws,))
    if step is not None:
        values["W_coef_step_scale"] = torch.full((draws,), step, dtype=torch.float64)
    w = model.net_params(values)["W_coef"]
    return w.reshape(draws, size, -1)


def _covariance_z_scores(w, theory):
    """(empirical - theory) / standard error per entry. The R columns of one draw share its
    step scale, so the per-draw mean of w_i w_j over columns is the i.i.d. unit: its sample
    standard deviation over draws / sqrt(draws) is the Monte Carlo standard error."""
    per_draw = torch.einsum("dir,djr->dij", w, w).numpy() / w.shape[-1]
    mean = per_draw.mean(0)
    se = per_draw.std(0, ddof=1) / math.sqrt(per_draw.shape[0])
    return (mean - theory) / se


@pytest.mark.parametrize("stationary", [False, True])
def test_random_walk_covariance_matches_theory(stationary):
    size, scale, step = 6, 0.8, 1.3
    prior = priors.RandomWalk(step_hyper_scale=1.1, scale=scale, stationary=stationary)
    # Fixed step scale: Cov(w_i, w_j) per the formulas of _walk_covariance.
    theory = _walk_covariance(size, scale, step, stationary)
    draws = _walk_draws(prior, size, 4000, step=step)
    z = _covariance_z_scores(draws, theory)
    # 21 distinct entries; |z| > 5 has probability 6e-7 each for a correct implementation.
    assert np.abs(z).max() < 5, z
    # The same draws reject the covariance of a 10% larger step (expected max |z| above 15):
    # the test has power against errors of that size.
    wrong = _walk_covariance(size, scale, step * 1.1, stationary)
    assert np.abs(_covariance_z_scores(draws, wrong)).max() > 5
    if not stationary:
        # Marginalized over step ~ HalfNormal(h): Cov = scale^2 + h^2 min(i, j) / K.
        marginal = _walk_covariance(size, scale, 1.1, False)
        z = _covariance_z_scores(_walk_draws(prior, size, 6000), marginal)
        assert np.abs(z).max() < 5, z


def test_random_walk_limits_constant_and_independent():
    net = brn.ResNet(1, 1, width=2, depth=6, basis="piecewise")
    for stationary in (False, True):
        model = brn.BayesianResNet(net, prior=priors.RandomWalk(stationary=stationary))
        values = model.sample_prior(2)
        values["W_coef_step_scale"] = torch.tensor(1e-9, dtype=torch.float64)
        w = model.net_params(values)["W_coef"]
        # No step: every layer carries the first layer's coefficients.
        assert torch.allclose(w, w[:1].expand_as(w), atol=1e-8)
    # The stationary walk with a huge step: independent layers, w = scale * z.
    values["W_coef_step_scale"] = torch.tensor(1e3, dtype=torch.float64)
    assert torch.allclose(model.net_params(values)["W_coef"], values["W_coef_raw"], atol=1e-12)


def test_random_walk_default_is_stationary_and_saved_walks_keep_theirs():
    # The default is the stationary walk (benchmarks/results/depth_priors.md: the one that
    # matched the fixed bases on yacht); from_name("random_walk") follows it.
    assert priors.RandomWalk().stationary is True
    assert priors.from_name("random_walk").stationary is True
    size, step = 5, 1.3
    stationary = _walk_covariance(size, 1.0, step, True)
    plain = _walk_covariance(size, 1.0, step, False)
    assert np.allclose(priors.RandomWalk().covariance(step, size).numpy(), stationary)
    # A run saved with the plain walk records stationary=False and is rebuilt as the plain walk,
    # whatever the default.
    config = priors.RandomWalk(stationary=False).config()
    assert config["stationary"] is False
    rebuilt = priors.prior_from_config(config)
    assert type(rebuilt) is priors.RandomWalk and rebuilt.stationary is False
    assert rebuilt.config() == config
    assert np.allclose(rebuilt.covariance(step, size).numpy(), plain)
    assert not np.allclose(plain, stationary)
    assert priors.prior_from_config(priors.RandomWalk().config()).stationary is True


# ------------------------------------------------------------------ horseshoe marginal
def _centered_horseshoe(n, tau0, slab_scale, slab_df, rng):
    """Draws of one coefficient from the regularized horseshoe in its centered form."""
    tau = tau0 * np.abs(rng.standard_cauchy(n))
    lam = np.abs(rng.standard_cauchy(n))
    c2 = st.invgamma.rvs(slab_df / 2, scale=slab_df * slab_scale**2 / 2, size=n,
                         random_state=rng)
    lam_tilde = np.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
    return rng.normal(0.0, tau * lam_tilde)


def test_horseshoe_noncentered_marginal_ks():
    n, tau0, slab_scale, slab_df = 20000, 1.0, 2.0, 4.0
    prior = priors.Horseshoe(global_scale=tau0, slab_scale=slab_scale, slab_df=slab_df)
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=2, depth=2, basis="constant"), prior=prior)
    # One coefficient per draw: coefficients of one draw share tau and c, draws are i.i.d.
    w = model.net_params(model.sample_prior(7, (n,)))["W_coef"][:, 0, 1, 0].numpy()
    rng = np.random.default_rng(2024)
    # Two-sample KS against the centered form at level 1e-3 (fixed seeds, one try).
    assert st.ks_2samp(w, _centered_horseshoe(n, tau0, slab_scale, slab_df, rng)).pvalue > 1e-3
    # Power: half the global scale, or twice the slab scale, is rejected by the same test
    # (p-values of order 1e-27 and 1e-17 here, far below the level).
    assert st.ks_2samp(w, _centered_horseshoe(n, 0.5 * tau0, slab_scale, slab_df, rng)
                       ).pvalue < 1e-3
    assert st.ks_2samp(w, _centered_horseshoe(n, tau0, 2 * slab_scale, slab_df, rng)
                       ).pvalue < 1e-3


def test_horseshoe_global_scale_from_nonzero_fraction():
    prior = priors.Horseshoe(nonzero_fraction=0.2, num_data=64)
    assert prior.tau0 == pytest.approx(0.2 / 0.8 / 8.0)
    assert priors.Horseshoe().tau0 == 0.1 and priors.Horseshoe(global_scale=0.5).tau0 == 0.5
    model = brn.BayesianResNet(brn.ResNet(1, 1, 2, 2), prior=prior)
    assert model.latent_sites["W_coef_global_scale"].prior.scale == pytest.approx(0.03125)


# ------------------------------------------------------------------ structure and config
@pytest.mark.parametrize("key", sorted(PRIORS))
def test_sites_config_and_initial_values(key):
    model = _model(key, "legendre")
    prior = model.prior
    assert priors.prior_from_config(prior.config()).config() == prior.config()
    names = list(model.latent_sites)
    for site in ("W_coef", "b_coef"):
        assert f"{site}_raw" in names and site not in names
        for hyper in HYPER[key]:
            assert model.latent_shapes[f"{site}_{hyper}"] == ()
    assert "input_weight" in names and "output_bias" in names
    # initial_values maps the network's initialization to latent values that reproduce it.
    init = model.net.init_params(torch.Generator().manual_seed(4))
    latent = model.initial_values(torch.Generator().manual_seed(4))
    for name, value in model.net_params(latent).items():
        assert torch.allclose(value, init[name], atol=1e-12)
    # Batched net_params equal a loop over draws.
    draws = model.sample_prior(3, (2, 3))
    batched = model.net_params(draws)
    single = model.net_params({k: v[1, 2] for k, v in draws.items()})
    for name in batched:
        assert torch.allclose(batched[name][1, 2], single[name], atol=1e-12)


def test_chosen_sites_and_mlp():
    prior = priors.RandomWalk(sites=["W_coef"])
    model = brn.BayesianResNet(brn.ResNet(1, 1, 2, 3), prior=prior)
    assert "b_coef" in model.latent_sites and "b_coef_step_scale" not in model.latent_sites
    mlp = brn.BayesianResNet(brn.MLP(1, 1, width=2, depth=3), prior=priors.Decaying())
    assert {"hidden_weight_decay_scale", "hidden_bias_raw"} <= set(mlp.latent_sites)
    with pytest.raises(ValueError, match="unknown sites"):
        brn.BayesianResNet(brn.ResNet(1, 1, 2, 3), prior=priors.Horseshoe(sites=["nope"]))


@pytest.mark.parametrize("make, match", [
    (lambda: priors.RandomWalk(step_hyper_scale=0.0), "step_hyper_scale"),
    (lambda: priors.RandomWalk(stationary="yes"), "stationary"),
    (lambda: priors.Decaying(decay_hyper_scale=-1.0), "decay_hyper_scale"),
    (lambda: priors.Horseshoe(global_scale=0.1, nonzero_fraction=0.1, num_data=10), "not both"),
    (lambda: priors.Horseshoe(nonzero_fraction=0.1), "num_data"),
    (lambda: priors.Horseshoe(nonzero_fraction=1.5, num_data=10), "nonzero_fraction"),
    (lambda: priors.Horseshoe(slab_df=0), "slab_df"),
    (lambda: priors.Decaying(sites=[]), "sites"),
])
def test_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ------------------------------------------------------------------ every method
METHODS = {
    "map": lambda: brn.MAP(steps=30),
    "meanfield": lambda: brn.MeanField(steps=30, num_draws=8, backend="flat"),
    "ensemble": lambda: brn.Ensemble(members=2, steps=30),
    "nuts": lambda: brn.NUTS(num_samples=4, num_warmup=4, chains=2, init_steps=10,
                             max_tree_depth=3),
    "mclmc": lambda: brn.MCLMC(num_samples=4, thinning=1, num_warmup=10, chains=2,
                               init_steps=10),
}


@pytest.fixture(scope="module")
def cubic():
    return brn.data.cubic(12, seed=0)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("key", ["walk", "decaying", "horseshoe"])
def test_every_method_fits_and_predicts(cubic, key, method):
    x, y = cubic
    basis = "legendre" if key == "decaying" else "piecewise"
    model = brn.BayesianResNet(brn.ResNet(1, 1, 3, 3, basis=BASES[basis]), prior=PRIORS[key]())
    post = brn.fit(model, x, y, method=METHODS[method](), seed=1, progress=False)
    pred = post.predict(np.linspace(-4, 4, 5)[:, None])
    assert np.isfinite(pred.mean).all() and np.isfinite(pred.std).all()
    for hyper in HYPER[key]:
        draws = post.draws[f"W_coef_{hyper}"]
        assert draws.shape == (post.num_chains, post.num_draws) and bool((draws > 0).all())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("method", ["swag", "lowrank", "meanfield-pyro"])
@pytest.mark.parametrize("key", ["stationary", "decaying", "horseshoe"])
def test_other_methods_fit_and_predict(cubic, key, method):
    make = {"swag": lambda: brn.SWAG(members=2, pretrain_steps=40, swa_steps=60,
                                     collect_every=3, rank=5, num_draws=8),
            "lowrank": lambda: brn.LowRank(steps=30, num_draws=8),
            "meanfield-pyro": lambda: brn.MeanField(steps=30, num_draws=8, backend="pyro")}
    x, y = cubic
    model = brn.BayesianResNet(brn.ResNet(1, 1, 3, 3), prior=PRIORS[key]())
    post = brn.fit(model, x, y, method=make[method](), seed=1, progress=False)
    assert np.isfinite(post.predict(np.linspace(-4, 4, 5)[:, None]).mean).all()


@pytest.mark.parametrize("key", ["walk", "decaying", "horseshoe"])
def test_laplace_names_its_limitation(cubic, key):
    x, y = cubic
    model = brn.BayesianResNet(brn.ResNet(1, 1, 2, 2), prior=PRIORS[key]())
    with pytest.raises(ValueError, match=r"priors\.Normal"):
        brn.fit(model, x, y, method=brn.Laplace(), progress=False)


# ------------------------------------------------------------------ export and files
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("key", sorted(PRIORS))
def test_save_load_and_identifiable_hyperparameters(cubic, key, tmp_path):
    x, y = cubic
    model = brn.BayesianResNet(brn.ResNet(1, 1, 2, 3, basis=brn.Legendre(2)), prior=PRIORS[key]())
    post = brn.fit(model, x, y, method=brn.MeanField(steps=20, num_draws=6), seed=0,
                   progress=False)
    path = tmp_path / "run.nc"
    post.save(path)
    loaded = brn.load(path)
    assert loaded.model.prior.config() == model.prior.config()
    assert type(loaded.model.prior) is type(model.prior)
    x_new = np.linspace(-3, 3, 4)[:, None]
    assert np.array_equal(post.predict(x_new).samples, loaded.predict(x_new).samples)
    expected = {f"{site}_{hyper}" for site in ("W_coef", "b_coef") for hyper in HYPER[key]}
    for run in (post, loaded):
        names = identifiable_names(run)
        assert expected <= set(names) and not any(n.endswith(("_raw", "_local_scale"))
                                                  for n in names)
    assert expected <= set(post.summary().index)
    posterior = post.to_arviz(predictive=False, prior=False).posterior
    for name in expected:
        assert posterior[name].dims == ("chain", "draw")
    coefficient_dims = ("chain", "draw", "basis", "hidden_out", "hidden_in")
    assert posterior["W_coef_raw"].dims == coefficient_dims
    if key == "horseshoe":
        assert posterior["W_coef_local_scale"].dims == coefficient_dims


# ------------------------------------------------------------------ priors by name
@pytest.mark.parametrize("name, prior_class, scale_argument", [
    ("normal", priors.Normal, "scale"),
    ("hierarchical", priors.Hierarchical, "hyper_scale"),
    ("random_walk", priors.RandomWalk, "scale"),
    ("decaying", priors.Decaying, "scale"),
    ("horseshoe", priors.Horseshoe, "scale"),
])
def test_priors_by_name(name, prior_class, scale_argument):
    assert priors.NAMED[name] is prior_class
    prior = priors.from_name(name, 0.4)
    assert type(prior) is prior_class
    assert prior.config() == prior_class(**{scale_argument: 0.4}).config()
    assert priors.from_name(name.upper()).config() == prior_class().config()


def test_prior_names_are_one_registry():
    # The estimator and the command line take the names of priors.NAMED.
    pytest.importorskip("sklearn")
    from bayesresnet import cli, estimator

    assert estimator.PRIORS is priors.NAMED
    parser = cli.build_parser()
    for name in priors.NAMED:
        args = parser.parse_args(["fit", "data.csv", "--target", "y", "--out", "run",
                                  "--prior", name])
        assert args.prior == name


@pytest.mark.parametrize("name, scale, match", [
    ("laplace", 1.0, r"unknown prior 'laplace'; expected one of \['decaying', "),
    (None, 1.0, "unknown prior None"),
    ("normal", 0.0, "scale must be a positive"),
    ("hierarchical", -1.0, "hyper_scale must be a positive"),
    ("horseshoe", float("inf"), "scale must be a positive finite number"),
])
def test_prior_names_and_scales_are_checked(name, scale, match):
    with pytest.raises(ValueError, match=match):
        priors.from_name(name, scale)
