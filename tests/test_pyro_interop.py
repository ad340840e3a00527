"""Pyro interop: a user's own Pyro MCMC or fitted guide as a Posterior (from_pyro), and the
units trap of running the model with Pyro's Predictive on raw inputs."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import bayesresnet as brn
from bayesresnet.pyro_interop import PyroGuide, PyroMCMC, from_pyro, standardize

# Run files and the ArviZ export of imported runs: also run on ArviZ 1.x (CONTRIBUTING.md).
pytestmark = pytest.mark.arviz

NUM_DRAWS = 12


@pytest.fixture(scope="module")
def problem():
    x, y = brn.data.cubic(20, seed=0)
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=2, depth=2, basis=brn.Cubic()))
    return model, x, y


@pytest.fixture(scope="module")
def mcmc(problem):
    """Pyro's own NUTS, two chains one after the other, on the standardized data."""
    model, x, y = problem
    x_std, y_std, _, _ = standardize(model, x, y)
    kernel = NUTS(model, jit_compile=False, max_tree_depth=3)
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(), \
            torch.random.fork_rng(devices=[]), pyro.get_param_store().scope():
        # Pyro runs chains in worker processes when there are spare cores: keep them here.
        patch.setattr(pyro.infer.mcmc.api.mp, "cpu_count", lambda: 1)
        warnings.filterwarnings("ignore", message="num_chains=2 is more than available_cpu")
        torch.manual_seed(0)
        run = MCMC(kernel, num_samples=NUM_DRAWS, warmup_steps=10, num_chains=2,
                   disable_progbar=True)
        run.run(x_std, y_std)
    return run


@pytest.fixture(scope="module")
def fitted_guide(problem):
    """An AutoNormal fitted for a few SVI steps, in a param store scope of its own (its
    parameters stay held by the guide module)."""
    model, x, y = problem
    x_std, y_std, _, _ = standardize(model, x, y)
    with torch.random.fork_rng(devices=[]), pyro.get_param_store().scope():
        torch.manual_seed(0)
        guide = AutoNormal(model, init_scale=0.05)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
        losses = [svi.step(x_std, y_std) for _ in range(40)]
    return guide, losses


def _flat(samples):
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in samples.items()}


# ------------------------------------------------------------------------------ standardize
def test_standardize_gives_fits_data_and_scalers(problem):
    model, x, y = problem
    x_std, y_std, x_scaler, y_scaler = standardize(model, x, y)
    assert x_std.dtype == y_std.dtype == torch.float64
    assert x_std.shape == (20, 1) and y_std.shape == (20, 1)
    np.testing.assert_allclose(x_std.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y_std.std(0, unbiased=False), 1)
    np.testing.assert_allclose(y_scaler.inverse_transform(y_std)[:, 0], y)
    # the scalers fit() records for the same data
    post = brn.fit(model, x, y, method=brn.MAP(steps=2), seed=0, progress=False, check=False)
    np.testing.assert_array_equal(post.x_scaler.std, x_scaler.std)
    np.testing.assert_array_equal(post.y_scaler.mean, y_scaler.mean)
    raw_x, raw_y, ident_x, _ = standardize(model, x, y, standardize=False)
    np.testing.assert_array_equal(raw_x.numpy(), x)
    np.testing.assert_array_equal(raw_y[:, 0].numpy(), y)
    np.testing.assert_array_equal(ident_x.std, [1.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        standardize(model, x, np.where(np.arange(20) == 3, np.nan, y))
    with pytest.raises(ValueError, match="different numbers of rows"):
        standardize(model, x, y[:5])
    with pytest.raises(ValueError, match="BayesianResNet"):
        standardize(object(), x, y)


# ------------------------------------------------------------------------------ MCMC samples
def test_mcmc_samples_become_the_posteriors_draws(problem, mcmc):
    model, x, y = problem
    samples = mcmc.get_samples(group_by_chain=True)
    post = from_pyro(model, x, y, samples=samples, stats=mcmc.diagnostics(), seed=5,
                     check=False)
    assert (post.num_chains, post.num_draws) == (2, NUM_DRAWS)
    for name in model.latent_sites:
        torch.testing.assert_close(post.draws[name], samples[name], rtol=0, atol=0)
    assert post.method == PyroMCMC(chains=2, num_samples=NUM_DRAWS)
    assert post.method.kind == "mcmc" and post.seed == 5 and post.fit_seconds == 0.0
    np.testing.assert_array_equal(post.x_train, x)
    np.testing.assert_array_equal(post.y_train[:, 0], y)
    # Pyro's diagnostics list divergent draws per chain
    divergences = mcmc.diagnostics()["divergences"]
    assert post.stats["diverging"].shape == (2, NUM_DRAWS)
    for chain in range(2):
        assert list(np.flatnonzero(post.stats["diverging"][chain])) == \
            list(divergences[f"chain {chain}"])
    x_std, y_std, _, _ = standardize(model, x, y)
    lj = model.log_joint(_flat(samples), x_std, y_std).reshape(2, NUM_DRAWS)
    np.testing.assert_allclose(post.stats["log_joint"], lj.numpy(), rtol=1e-12)

    # predict is the model's mean at the standardized inputs, mapped back to original units
    x_new = np.linspace(-5, 5, 7)[:, None]
    pred = post.predict(x_new)
    loc, scale = model.loc_scale(_flat(samples), post.x_scaler.transform(torch.as_tensor(x_new)))
    np.testing.assert_allclose(pred.f_samples, post.y_scaler.inverse_transform(loc).numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(pred.noise_scale, post.y_scaler.inverse_scale(scale).numpy(),
                               rtol=1e-12)

    # samples without a chain axis are one chain; same draws in the same order
    flat = from_pyro(model, x, y, samples=mcmc.get_samples(), check=False)
    assert (flat.num_chains, flat.num_draws) == (1, 2 * NUM_DRAWS)
    torch.testing.assert_close(flat.draws["W_coef"][0], samples["W_coef"].reshape(
        -1, *samples["W_coef"].shape[2:]))


def test_numpy_samples_and_numpyro_style_stats(problem, mcmc):
    model, x, y = problem
    samples = {k: v.numpy() for k, v in mcmc.get_samples(group_by_chain=True).items()}
    samples["obs"] = np.zeros((2, NUM_DRAWS, 20, 1))  # other sites are ignored
    rng = np.random.default_rng(0)
    stats = {"diverging": np.zeros(2 * NUM_DRAWS, bool),  # flat (chains * draws,) is fine
             "potential_energy": rng.normal(size=(2, NUM_DRAWS)),
             "energy": rng.normal(size=(2, NUM_DRAWS)),
             "n_steps": np.full((2, NUM_DRAWS), 7)}
    post = from_pyro(model, x, y, samples=samples, stats=stats, check=False)
    assert post.stats["diverging"].dtype == bool and post.stats["diverging"].shape == (2, 12)
    np.testing.assert_array_equal(post.stats["log_density"], -stats["potential_energy"])
    assert post.stats["num_steps"].dtype == np.int64
    diag = post.diagnose()
    assert {"max R-hat", "divergence fraction", "min E-BFMI"} <= set(diag.table["check"])
    idata = post.to_arviz(prior=False)
    assert {"diverging", "energy", "n_steps", "log_density", "lp"} <= \
        set(idata["sample_stats"].data_vars)


def test_predictive_on_raw_inputs_is_the_trap_and_standardizing_is_the_fix(problem, mcmc):
    model, x, y = problem
    post = from_pyro(model, x, y, samples=mcmc.get_samples(group_by_chain=True), check=False)
    x_new = np.linspace(-4, 4, 9)[:, None]
    expected = post.predict(x_new).f_samples
    x_t = torch.as_tensor(x_new, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # the trap: raw inputs in, standardized outputs out, no error
        raw = Predictive(model, posterior_samples=post.flat_draws(),
                         return_sites=["_RETURN"])(x_t)["_RETURN"]
        # the documented recipe (model.py): standardize in, map back out
        out = Predictive(model, posterior_samples=post.flat_draws(),
                         return_sites=["_RETURN", "obs"])(post.x_scaler.transform(x_t))
        parallel = Predictive(model, posterior_samples=mcmc.get_samples(), parallel=True,
                              return_sites=["_RETURN"])(post.x_scaler.transform(x_t))
    assert raw.shape == expected.shape
    assert np.abs(raw.numpy() - expected).max() > 1.0
    f = post.y_scaler.inverse_transform(out["_RETURN"]).numpy()
    np.testing.assert_allclose(f, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(post.y_scaler.inverse_transform(parallel["_RETURN"]).numpy(),
                               expected, rtol=1e-10, atol=1e-10)
    y_rep = post.y_scaler.inverse_transform(out["obs"]).numpy()
    assert y_rep.shape == expected.shape and np.isfinite(y_rep).all()


# ------------------------------------------------------------------------------ guides
def _autonormal_log_q(guide, model, draws):
    """log q of constrained draws under an AutoNormal, by hand."""
    total = 0.0
    with torch.no_grad():
        for name, site in model.latent_sites.items():
            value = draws[name][0]
            u = site.transform.inv(value)
            loc, scale = getattr(guide.locs, name), getattr(guide.scales, name)
            log_prob = dist.Normal(loc, scale).log_prob(u).reshape(u.shape[0], -1).sum(-1)
            jacobian = site.transform.log_abs_det_jacobian(u, value)
            total = total + log_prob - jacobian.reshape(u.shape[0], -1).sum(-1)
    return total


def test_guide_draws_are_reproducible_and_leave_global_state_alone(problem, fitted_guide):
    model, x, y = problem
    guide, losses = fitted_guide
    store = pyro.get_param_store()
    with store.scope():
        # the user's store holds the guide's parameters (and one of their own)
        x_std, y_std, _, _ = standardize(model, x, y)
        with torch.no_grad():
            guide(x_std, y_std)
        pyro.param("mine", torch.ones(3))
        before = {name: (value, value.detach().clone())
                  for name, value in store.get_state()["params"].items()}
        rng = torch.get_rng_state()
        post = from_pyro(model, x, y, guide=guide, num_draws=200, seed=3,
                         stats={"loss": losses}, check=False)
        assert torch.equal(torch.get_rng_state(), rng)
        assert set(store.keys()) == set(before)
        after = store.get_state()["params"]
        for name, (tensor, value) in before.items():
            assert after[name] is tensor  # the same (unconstrained) tensors, unchanged
            torch.testing.assert_close(tensor.detach(), value, rtol=0, atol=0)
    again = from_pyro(model, x, y, guide=guide, num_draws=200, seed=3, check=False)
    other = from_pyro(model, x, y, guide=guide, num_draws=200, seed=4, check=False)
    assert not list(store.keys())  # the guide's parameters were not left in the empty store
    for name in model.latent_sites:
        torch.testing.assert_close(post.draws[name], again.draws[name], rtol=0, atol=0)
    assert not torch.equal(post.draws["W_coef"], other.draws["W_coef"])
    assert (post.num_chains, post.num_draws) == (1, 200)
    assert post.method == PyroGuide(guide="AutoNormal", num_draws=200, parallel=True)
    assert post.method.kind == "variational" and post.seed == 3 and post.fit_seconds > 0
    np.testing.assert_allclose(post.stats["elbo"], -np.asarray(losses))
    assert set(post.extra["guide_params"]) == {f"AutoNormal.{kind}.{name}" for name in
                                              model.latent_sites for kind in ("locs", "scales")}
    # log q of the constrained draws, by hand; log_joint at the standardized data
    np.testing.assert_allclose(post.stats["log_q"][0],
                               _autonormal_log_q(guide, model, post.draws).numpy(), rtol=1e-10)
    lj = model.log_joint({k: v[0] for k, v in post.draws.items()}, x_std, y_std)
    np.testing.assert_allclose(post.stats["log_joint"][0], lj.numpy(), rtol=1e-12)
    # drawn one at a time: other draws, the same density
    serial = from_pyro(model, x, y, guide=guide, num_draws=5, parallel=False, check=False)
    assert serial.num_draws == 5 and not serial.method.parallel
    np.testing.assert_allclose(serial.stats["log_q"][0],
                               _autonormal_log_q(guide, model, serial.draws).numpy(), rtol=1e-10)


def test_function_guides_and_unfitted_guides(problem):
    model, x, y = problem
    x_std, y_std, _, _ = standardize(model, x, y)

    def guide(x, y=None, extra=False):
        for name, site in model.latent_sites.items():
            loc = pyro.param(f"loc_{name}", torch.zeros(site.shape, dtype=torch.float64))
            base = dist.Normal(loc, 0.1).to_event(len(site.shape))
            if name == "noise":
                base = dist.LogNormal(loc, 0.1).to_event(len(site.shape))
            pyro.sample(name, base)
        if extra:
            pyro.sample("something_else", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))

    store = pyro.get_param_store()
    with store.scope():
        with pytest.raises(ValueError, match="not been fitted"):
            from_pyro(model, x, y, guide=guide, num_draws=4, check=False)
        assert not list(store.keys())
        with torch.no_grad():
            guide(x_std, y_std)  # its parameters are now in the store
        post = from_pyro(model, x, y, guide=guide, num_draws=30, check=False)
        assert post.method.guide == "guide" and post.stats["log_q"].shape == (1, 30)
        serial = from_pyro(model, x, y, guide=guide, num_draws=3, parallel=False, check=False)
        assert serial.stats["log_q"].shape == (1, 3)
        # a non-auxiliary site beyond the model's latents: q's density of the latents is unknown
        wider = from_pyro(model, x, y, guide=lambda *a: guide(*a, extra=True), num_draws=30,
                          check=False)
        assert "log_q" not in wider.stats
        assert any("k-hat check skipped" in note for note in wider.diagnose().notes)
    with pytest.raises(ValueError, match="has not been fitted"):
        from_pyro(model, x, y, guide=AutoNormal(model), check=False)


# ------------------------------------------------------------------------------ records
def test_both_kinds_save_load_export_and_diagnose(problem, mcmc, fitted_guide, tmp_path):
    model, x, y = problem
    guide, losses = fitted_guide
    posts = {
        "mcmc": from_pyro(model, x, y, samples=mcmc.get_samples(group_by_chain=True),
                          stats=mcmc.diagnostics(), check=False),
        "variational": from_pyro(model, x, y, guide=guide, num_draws=50,
                                 stats={"loss": losses}, check=False),
    }
    x_new = np.linspace(-3, 3, 5)[:, None]
    for kind, post in posts.items():
        loaded = brn.load(post.save(tmp_path / f"{kind}.nc"))
        assert loaded.method == post.method and type(loaded.method) is type(post.method)
        for name in model.latent_sites:
            torch.testing.assert_close(loaded.draws[name], post.draws[name], rtol=0, atol=0)
        np.testing.assert_array_equal(loaded.predict(x_new).samples, post.predict(x_new).samples)
        for key in post.stats:
            np.testing.assert_array_equal(np.asarray(loaded.stats[key]),
                                          np.asarray(post.stats[key]))
        idata = post.to_arviz(prior=False)
        assert idata["posterior"].attrs["inference_kind"] == kind
        assert idata["posterior"].attrs["inference_method"] == post.method.name
        diag = post.diagnose()
        assert len(diag.table) >= 2 and diag.method == post.method.name
        assert str(diag)
    mcmc_diag = posts["mcmc"].diagnose()
    assert {"max R-hat", "min bulk ESS", "divergence fraction"} <= set(mcmc_diag.table["check"])
    vi_diag = posts["variational"].diagnose()
    assert {"ELBO trend (last 10%)", "PSIS k-hat"} == set(vi_diag.table["check"])
    # the checks run by default, as after fit
    with pytest.warns(brn.ConvergenceWarning):
        from_pyro(model, x, y, samples=mcmc.get_samples(group_by_chain=True))


def test_fit_refuses_the_records_before_any_work(problem):
    model, x, y = problem
    for method in (PyroMCMC(), PyroGuide()):
        with pytest.raises(ValueError, match="from_pyro"):
            brn.fit(model, x, y, method=method, seed=0, progress=False)
        with pytest.raises(ValueError, match="cannot run"):
            method.run(model, torch.zeros(3, 1), torch.zeros(3, 1), 0, False)
    with pytest.raises(ValueError, match="num_samples"):
        PyroMCMC(num_samples=0)
    with pytest.raises(ValueError, match="guide"):
        PyroGuide(guide=3)


def test_pandas_names_and_raw_units(problem, mcmc):
    pd = pytest.importorskip("pandas")
    model, x, y = problem
    samples = mcmc.get_samples(group_by_chain=True)
    post = from_pyro(model, pd.DataFrame({"dose": x[:, 0]}), pd.Series(y, name="response"),
                     samples=samples, check=False)
    assert post.feature_names == ["dose"] and post.target_names == ["response"]
    raw = from_pyro(model, x, y, samples=samples, standardize=False, check=False)
    np.testing.assert_array_equal(raw.x_scaler.mean, [0.0])
    np.testing.assert_array_equal(raw.y_scaler.std, [1.0])
    loc, _ = model.loc_scale(_flat(samples), torch.as_tensor(x[:4]))
    np.testing.assert_allclose(raw.predict(x[:4]).f_samples, loc.numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------ validation
def test_invalid_samples_name_the_problem(problem, mcmc):
    model, x, y = problem
    good = mcmc.get_samples(group_by_chain=True)

    def changed(name, value):
        return {**good, name: value}

    missing = {k: v for k, v in good.items() if k != "noise"}
    cases = [
        (dict(samples=missing), r"lack latent site\(s\) \['noise'\]"),
        (dict(samples=changed("W_coef", good["W_coef"][..., :1])),
         r"samples\['W_coef'\] has shape"),
        (dict(samples=changed("noise", good["noise"][0])), "disagree on their leading"),
        (dict(samples=changed("noise", good["noise"][:, :3])), "disagree on their leading"),
        (dict(samples=changed("b_coef", good["b_coef"].clone().index_fill_(1, torch.tensor([4]),
                                                                         float("nan")))),
         r"samples\['b_coef'\] has NaN or inf values in 2 draw\(s\), first in chain 0, draw 4"),
        (dict(samples=changed("noise", -good["noise"])),
         r"samples\['noise'\] has values outside the support"),
        (dict(samples=changed("noise", good["noise"].to(torch.complex128))), "real numbers"),
        (dict(samples=changed("noise", np.array([["a"]]))), "numeric"),
        (dict(samples=[1, 2]), "dict site -> array"),
        (dict(samples={k: v[:, :0] for k, v in good.items()}), "no draws"),
        (dict(), "exactly one of samples= .* and guide="),
        (dict(samples=good, guide=lambda *a: None), "exactly one"),
        (dict(samples=good, num_draws=10), "num_draws applies to guide="),
        (dict(samples=good, stats={"divergent": np.zeros((2, NUM_DRAWS))}),
         r"stats\['divergent'\] is not a per-draw statistic"),
        (dict(samples=good, stats={"energy": np.zeros((2, 3))}), r"stats\['energy'\] has shape"),
        (dict(samples=good, stats={"loss": np.zeros(5)}), "applies to guide="),
        (dict(samples=good, stats={"divergences": {"chain 7": [0]}}), "points outside"),
        (dict(samples=good, stats={"diverging": np.zeros(24), "divergences": {"chain 0": []}}),
         "twice"),
        (dict(samples=good, seed=-1), "seed"),
        (dict(samples=good, standardize="yes"), "standardize"),
        (dict(guide="not callable"), "callable"),
        (dict(guide=lambda *a: None, num_draws=0), "num_draws"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            from_pyro(model, x, y, check=False, **kwargs)


def test_invalid_guide_stats_and_wrong_guides(problem, fitted_guide):
    model, x, y = problem
    guide, losses = fitted_guide
    with pytest.raises(ValueError, match="'elbo' or 'loss'"):
        from_pyro(model, x, y, guide=guide, stats={"diverging": [0]}, check=False)
    with pytest.raises(ValueError, match="not both"):
        from_pyro(model, x, y, guide=guide, stats={"loss": losses, "elbo": losses}, check=False)
    other = brn.BayesianResNet(brn.ResNet(1, 1, width=3, depth=2, basis=brn.Cubic()))
    with pytest.raises(ValueError, match="guide of this model"):
        from_pyro(other, x, y, guide=guide, num_draws=3, check=False)

    def partial_guide(x, y=None):
        pyro.sample("noise", dist.HalfNormal(torch.ones(1, dtype=torch.float64)).to_event(1))

    with pytest.raises(ValueError, match="does not sample latent site"):
        from_pyro(model, x, y, guide=partial_guide, num_draws=3, check=False)
