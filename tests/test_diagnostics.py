"""Convergence diagnostics: NUTS, VI (ELBO trend, PSIS k-hat), ensembles, MAP; warnings."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats as sps

import bayesresnet as brn
from bayesresnet.arviz_compat import draws_dataset, import_arviz
from bayesresnet.arviz_compat import rhat as compat_rhat
from bayesresnet.data import Standardizer, cubic
from bayesresnet.diagnostics import (
    ConvergenceWarning,
    Diagnostics,
    diagnose,
    ebfmi,
    psis_khat,
    trend_ratio,
    warn_if_failed,
)
from bayesresnet.inference.fit import METHODS, fit
from bayesresnet.inference.nuts import NUTS
from bayesresnet.inference.vi import MeanField
from bayesresnet.posterior import Posterior

pytestmark = pytest.mark.arviz
az = import_arviz()

VI_DRAWS = 20000
LOO_PIT = "LOO-PIT outside central 95%"


@pytest.fixture(scope="module")
def data():
    return cubic(20, seed=0)


@pytest.fixture(scope="module")
def model():
    return brn.BayesianResNet(brn.ResNet(1, 1, width=3, depth=3, basis=brn.Linear()))


def iid_posterior(model, data, name="nuts", chains=4, draws=500, seed=0, stats=None):
    """Exact iid Gaussian draws of every site (positive sites shifted away from zero).

    NUTS draws are recorded as made with ``init='prior'`` (chains started from one
    distribution), so the pooled checks apply; the chain-wise rule of ``init='map'`` runs is
    tested in ``test_chainwise.py``.
    """
    x, y = data
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for site, shape in model.latent_shapes.items():
        value = 0.3 * torch.randn((chains, draws, *shape), generator=gen, dtype=torch.float64)
        values[site] = value + 1.0 if site == "noise" or site.endswith("_scale") else value
    if stats is None and name == "nuts":
        rng = np.random.default_rng(seed)
        size = (chains, draws)
        stats = {"diverging": np.zeros(size, bool), "reached_max_tree_depth": np.zeros(size, bool),
                 "energy": rng.normal(size=size), "tree_depth": np.full(size, 3)}
    method = NUTS(init="prior") if name == "nuts" else METHODS[name]()
    return Posterior(model=model, draws=values, stats=stats or {}, method=method,
                     x_scaler=Standardizer().fit(x), y_scaler=Standardizer().fit(y), seed=seed,
                     fit_seconds=1.0, x_train=x, y_train=y)


# ---------------------------------------------------------------------------------- statistics
def test_ebfmi_equals_arviz_and_its_iid_limit():
    rng = np.random.default_rng(0)
    white = rng.normal(size=(4, 20000))
    # iid energies: E[(E_t - E_{t-1})^2] / Var(E) = 2; SE about 0.01 per chain.
    np.testing.assert_allclose(ebfmi(white), 2.0, atol=0.06)
    walk = np.cumsum(rng.normal(size=(3, 500)), axis=1)  # slowly mixing energies
    for energy in (white, walk, rng.gamma(2.0, size=(2, 300))):
        np.testing.assert_allclose(ebfmi(energy), az.bfmi(energy), rtol=1e-12)
    assert (ebfmi(walk) < 0.3).all()
    with pytest.raises(ValueError, match="at least 3 draws"):
        ebfmi(np.zeros((2, 2)))


def test_psis_khat_flags_mean_field_on_a_correlated_gaussian():
    """p = N(0, Sigma), equicorrelated with rho = 0.95 in 4 dims.

    The KL(q||p)-optimal mean-field q has variances 1/Lambda_ii (Lambda = Sigma^-1): far too
    narrow along (1, 1, 1, 1), so the weights p/q have a Pareto tail with k = 1 - (q's variance /
    p's variance along it) = 0.98. Over 30 seeds, k-hat from 20000 draws ranged 0.74-1.0 (mean
    0.89). A full-rank q fitted to the target (the Gaussian of 2000 exact draws) is close to p:
    k-hat at most 0.18 over the same seeds.
    """
    mf = gaussian_vi_stats(mean_field=True)
    full = gaussian_vi_stats(mean_field=False)
    assert psis_khat(mf["log_joint"] - mf["log_q"]) > 0.7
    assert psis_khat(full["log_joint"] - full["log_q"]) < 0.5
    with pytest.raises(ValueError, match="finite"):
        psis_khat([0.0, np.inf, 1.0])


def test_trend_ratio_separates_converged_from_still_improving():
    rng = np.random.default_rng(0)
    steps = np.arange(2000)
    converged = -100 + 50 * np.exp(-steps / 100) + rng.normal(size=2000)
    rising = -100 + 0.05 * steps + rng.normal(size=2000)
    assert trend_ratio(converged) <= 1.0
    assert trend_ratio(rising) > 5.0
    # a deterministic, slowly flattening objective: judged against 1% of its total gain
    smooth = 1.0 / (1.0 + steps)
    assert trend_ratio(smooth) <= 1.0 and trend_ratio(smooth[:30]) > 1.0
    assert math.isnan(trend_ratio(np.zeros(10)))
    assert math.isnan(trend_ratio(np.r_[np.zeros(100), np.nan]))


# ---------------------------------------------------------------------------------- NUTS
def test_healthy_iid_posterior_passes(model, data):
    diag = iid_posterior(model, data).diagnose()
    assert isinstance(diag, Diagnostics)
    assert diag.ok, str(diag)
    table = diag.table
    assert list(table.columns) == ["check", "value", "rule", "threshold", "passed"]
    assert diag.rule == "pooled"
    assert set(table["check"]) == {"max R-hat", "min bulk ESS", "min tail ESS",
                                   "divergence fraction", "max tree depth fraction",
                                   "min E-BFMI", "max chain-wise R-hat"}
    # the chain-wise R-hat is shown, but not checked, under the pooled rule
    assert table.set_index("check").loc["max chain-wise R-hat", "rule"] == "info"
    assert table["passed"].all() and diag.warnings == []
    assert "all checks passed" in str(diag) and "max R-hat" in str(diag)
    # ESS of 2000 iid draws is about 2000; the threshold is 100 per chain
    row = table.set_index("check")
    assert row.loc["min bulk ESS", "threshold"] == 400
    assert 1000 < row.loc["min bulk ESS", "value"] < 4000


def reference_rhat(draws):
    """Rank-normalized split R-hat of one quantity, draws (chain, draw), written from Vehtari,
    Gelman, Simpson, Carpenter and Buerkner (2021), Bayesian Analysis 16(2), section 4.

    Each chain is split into its first and last halves (the middle draw of an odd count is
    dropped); the classic R-hat (their eq. 3-4) is computed on the normal scores of the pooled
    ranks, (r - 3/8) / (S + 1/4) (eq. 14), of the draws (bulk) and of their distances to the
    pooled median (folded, tails); the larger of the two is the R-hat.
    """
    draws = np.asarray(draws, dtype=np.float64)
    half = draws.shape[1] // 2
    split = np.concatenate([draws[:, :half], draws[:, draws.shape[1] - half:]])

    def classic(z):
        n = z.shape[1]
        within = z.var(axis=1, ddof=1).mean()
        between = n * z.mean(axis=1).var(ddof=1)
        return math.sqrt(((n - 1) / n * within + between / n) / within)

    def normal_scores(z):
        ranks = sps.rankdata(z, method="average").reshape(z.shape)
        return sps.norm.ppf((ranks - 0.375) / (z.size + 0.25))

    return max(classic(normal_scores(split)),
               classic(normal_scores(np.abs(split - np.median(split)))))


def test_rhat_is_the_rank_normalized_split_rhat():
    # Cases where the parts of the definition matter, each checked against the reference above
    # to rounding: both chains drift the same way (their means agree, so only splitting the
    # chains sees it); equal centres but different spreads (only the folded draws see it);
    # Cauchy draws with one chain shifted (the raw variances are dominated by a few draws, the
    # ranks are not).
    rng = np.random.default_rng(0)
    ramp = np.linspace(-1.0, 1.0, 200)
    cases = {"drift": rng.normal(size=(2, 200)) * 0.3 + ramp,
             "spread": rng.normal(size=(2, 200)) * np.array([[1.0], [4.0]]),
             "cauchy": rng.standard_cauchy(size=(2, 200)) + np.array([[0.0], [5.0]]),
             "iid": rng.normal(size=(4, 101))}
    ours = {name: float(compat_rhat(draws_dataset({"x": draws}))["x"])
            for name, draws in cases.items()}
    for name, draws in cases.items():
        assert ours[name] == pytest.approx(reference_rhat(draws), rel=1e-12), name
    # The failures are large under the full definition, and the chain means agree in the
    # first two cases, so an unsplit or unfolded R-hat would not see them.
    assert all(ours[name] > 1.1 for name in ("drift", "spread", "cauchy")), ours
    assert ours["iid"] < 1.05, ours


def test_rhat_is_computed_on_identifiable_quantities(model, data):
    post = iid_posterior(model, data, chains=2, draws=100)
    diag = diagnose(post)
    idata = post.to_arviz(predictive=False)
    posterior = idata.posterior
    values = {"noise": posterior["noise"].values,
              "f": posterior["f"].values.reshape(2, 100, -1)}
    assert set(diag.details["rhat"].data_vars) == {"noise", "f"}  # raw weights are not used
    expected = {}
    for name, draws in values.items():
        expected[name] = [reference_rhat(draws[..., i]) for i in range(draws.shape[-1])]
        np.testing.assert_allclose(diag.details["rhat"][name].values.ravel(), expected[name],
                                   rtol=1e-12)
    value = diag.table.set_index("check").loc["max R-hat", "value"]
    assert value == pytest.approx(max(max(v) for v in expected.values()), rel=1e-12)


def test_each_nuts_failure_is_caught(model, data):
    energies = {}

    def run(mutate):
        post = iid_posterior(model, data, chains=4, draws=300, seed=1)
        mutate(post)
        energies["last"] = post.stats["energy"]
        return diagnose(post)

    def shift_chain(post):  # one chain sampled a different region
        for site in post.draws:
            post.draws[site][0] += 1.0

    diag = run(shift_chain)
    assert not diag.ok and "max R-hat" in diag.failed
    assert any("R-hat" in w for w in diag.warnings)

    def diverge(post):
        post.stats["diverging"][:, :15] = True  # 5%

    diag = run(diverge)
    assert diag.failed == ["divergence fraction"]

    def diverge_once(post):
        post.stats["diverging"][0, 0] = True

    diag = run(diverge_once)
    assert diag.ok and any("1 divergent" in w for w in diag.warnings)

    def saturate(post):
        post.stats["reached_max_tree_depth"][:, ::2] = True

    assert run(saturate).failed == ["max tree depth fraction"]

    def slow_energy(post):
        post.stats["energy"] = np.cumsum(post.stats["energy"], axis=1)

    diag = run(slow_energy)
    assert diag.failed == ["min E-BFMI"]
    np.testing.assert_allclose(diag.details["ebfmi"], az.bfmi(energies["last"]), rtol=1e-12)

    def correlated(post):  # AR(1) draws with phi = 0.95: ESS about 2.6% of the draws
        for site, value in post.draws.items():
            out = value.clone()
            for t in range(1, value.shape[1]):
                out[:, t] = 0.95 * out[:, t - 1] + math.sqrt(1 - 0.95**2) * value[:, t]
            post.draws[site] = out

    diag = run(correlated)
    assert "min bulk ESS" in diag.failed

    def stuck(post):  # every chain stays at its starting point
        for site in post.draws:
            post.draws[site][:] = post.draws[site][:, :1]

    assert "max R-hat" in run(stuck).failed

    def frozen(post):  # every draw is the same point: no R-hat can be computed, which fails
        for site in post.draws:
            post.draws[site][:] = post.draws[site][:1, :1]

    diag = run(frozen)
    assert "max R-hat" in diag.failed
    assert math.isnan(diag.table.set_index("check").loc["max R-hat", "value"])
    assert any("not computable" in w for w in diag.warnings)


def test_broken_nuts_run_fails(model, data):
    """10 warmup steps and trees of at most 3 leapfrog steps on the cubic toy."""
    method = NUTS(num_samples=40, num_warmup=10, chains=2, max_tree_depth=2, init_steps=10)
    post = fit(model, *data, method, seed=0, progress=False)
    diag = post.diagnose()
    assert not diag.ok
    assert "max tree depth fraction" in diag.failed
    # init='map' (the default) starts the chains at distinct modes: ESS is judged per chain
    assert diag.rule == "chain-wise"
    assert {"min bulk ESS per chain", "min tail ESS per chain"} & set(diag.failed)
    energy = post.to_arviz(prior=False).sample_stats["energy"].values
    np.testing.assert_allclose(diag.details["ebfmi"], np.ravel(az.bfmi(energy)), rtol=1e-12)
    with pytest.warns(ConvergenceWarning, match="nuts failed"):
        assert warn_if_failed(diag)


@pytest.mark.statistical
def test_healthy_nuts_run_passes():
    """A small, well-conditioned model (a linear ResNet of width 1) with enough warmup.

    Even tiny tanh networks give NUTS deep trees and divergences (their posteriors have funnels
    and many modes), so the healthy reference is the linear one.
    """
    x, y = brn.data.sine(30, seed=0)
    net = brn.ResNet(1, 1, width=1, depth=2, basis=brn.Constant(), activation="identity")
    post = fit(brn.BayesianResNet(net), x, y, NUTS(num_samples=400, num_warmup=400, chains=4),
               seed=0, progress=False)
    diag = post.diagnose()
    assert diag.ok, str(diag)


# ---------------------------------------------------------------------------------- VI
def gaussian_vi_stats(mean_field, draws=VI_DRAWS, seed=0):
    """stats of a VI run whose guide is the mean-field or a fitted full-rank q of a Gaussian
    with correlation 0.95 (see test_psis_khat_flags_mean_field_on_a_correlated_gaussian)."""
    d, rho = 4, 0.95
    cov = np.full((d, d), rho) + (1 - rho) * np.eye(d)
    target = sps.multivariate_normal(np.zeros(d), cov)
    rng = np.random.default_rng(seed)
    if mean_field:
        q = sps.multivariate_normal(np.zeros(d), np.diag(1 / np.diag(np.linalg.inv(cov))))
    else:
        sample = target.rvs(2000, random_state=rng)
        q = sps.multivariate_normal(sample.mean(0), np.cov(sample.T))
    theta = q.rvs(draws, random_state=rng)
    steps = np.arange(3000)
    elbo = -50 - 40 * np.exp(-steps / 200) + rng.normal(size=3000)
    return {"elbo": elbo, "log_joint": target.logpdf(theta)[None], "log_q": q.logpdf(theta)[None]}


def test_vi_checks_flag_mean_field_and_pass_full_rank(model, data):
    bad = iid_posterior(model, data, "meanfield", 1, VI_DRAWS,
                        stats=gaussian_vi_stats(mean_field=True))
    diag = diagnose(bad)
    assert diag.failed == ["PSIS k-hat"] and diag.details["khat"] > 0.7
    assert any("k-hat" in w for w in diag.warnings)
    good = iid_posterior(model, data, "lowrank", 1, VI_DRAWS,
                         stats=gaussian_vi_stats(mean_field=False))
    diag = diagnose(good)
    assert diag.ok, str(diag)
    assert diag.details["khat"] < 0.5
    assert list(diag.table["check"]) == ["ELBO trend (last 10%)", "PSIS k-hat"]


def test_vi_still_improving_elbo_fails(model, data):
    stats = gaussian_vi_stats(mean_field=False)
    stats["elbo"] = np.linspace(-200, -50, 3000)
    diag = diagnose(iid_posterior(model, data, "meanfield", 1, VI_DRAWS, stats=stats))
    assert diag.failed == ["ELBO trend (last 10%)"]


def test_real_mean_field_run_is_diagnosed(model, data):
    post = fit(model, *data, MeanField(steps=30, num_draws=40, num_particles=1), seed=0,
               progress=False)
    diag = post.diagnose()
    assert math.isfinite(diag.details["khat"])
    assert "ELBO trend (last 10%)" in list(diag.table["check"])


# ---------------------------------------------------------------------------------- ensembles
def ensemble_posterior(model, data, spread, name="ensemble", members=6):
    x, y = data
    gen = torch.Generator().manual_seed(0)
    values = model.sample_prior(0, (1, 1))
    values = {k: v.expand(1, members, *v.shape[2:]).clone() for k, v in values.items()}
    values["output_bias"] = values["output_bias"] + spread * torch.randn(
        1, members, 1, generator=gen, dtype=torch.float64)
    steps = np.arange(500)[:, None]
    loss = 10 + 100 * np.exp(-steps / 30) + np.zeros((1, members))
    stats = {"loss": loss, "final_loss": loss[-1], "log_joint": np.zeros((1, members))}
    return Posterior(model=model, draws=values, stats=stats, method=METHODS[name](),
                     x_scaler=Standardizer().fit(x), y_scaler=Standardizer().fit(y), seed=0,
                     fit_seconds=1.0, x_train=x, y_train=y)


def test_ensemble_collapse_is_flagged(model, data):
    post = ensemble_posterior(model, data, spread=0.5)
    diverse = diagnose(post)
    # The members are prior draws, not fits to the data, so the LOO-PIT check (which refits
    # fitted members; tests in test_ensemble_calibration.py) says nothing useful about them.
    assert diverse.failed in ([], [LOO_PIT]), str(diverse)
    # Members differ only by their output bias b_m, so f_m(x) = f_0(x) + b_m * y_std at every
    # input: the spread is SD(b) * y_std and the noise scale noise * y_std.
    y_std = float(post.y_scaler.std[0])
    bias = post.draws["output_bias"][0, :, 0].numpy()
    assert diverse.details["member_spread"] == pytest.approx(bias.std(ddof=1) * y_std, rel=1e-9)
    assert diverse.details["noise_scale"] == pytest.approx(
        float(post.draws["noise"][0, 0, 0]) * y_std, rel=1e-12)
    collapsed = diagnose(ensemble_posterior(model, data, spread=0.0))
    assert [c for c in collapsed.failed if c != LOO_PIT] == ["member spread / noise"]
    assert any("collapsed" in w for w in collapsed.warnings)


def test_map_notes_no_uncertainty_and_checks_its_loss(model, data):
    diag = diagnose(ensemble_posterior(model, data, spread=0.0, name="map", members=1))
    assert diag.ok and list(diag.table["check"]) == ["loss trend (last 10%)"]
    assert any("no model (epistemic) uncertainty" in n for n in diag.notes)
    assert "MAP is one point" in str(diag)
    short = ensemble_posterior(model, data, spread=0.0, name="map", members=1)
    short.stats["loss"] = short.stats["loss"][:10]
    diag = diagnose(short)
    assert diag.failed == ["loss trend (last 10%)"]
    assert any("too few" in w for w in diag.warnings)


# ---------------------------------------------------------------------------------- warnings
def test_warn_if_failed(model, data):
    assert issubclass(ConvergenceWarning, UserWarning)
    healthy = diagnose(iid_posterior(model, data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_failed(healthy) is False
    broken = diagnose(ensemble_posterior(model, data, spread=0.0))
    with pytest.warns(ConvergenceWarning, match="collapsed") as record:
        assert warn_if_failed(broken) is True
    assert record[0].filename == __file__
    with pytest.raises(ValueError, match="Diagnostics"):
        warn_if_failed("ok")
    with pytest.raises(ValueError, match="Posterior"):
        diagnose("posterior")
