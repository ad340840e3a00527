"""Laplace approximation: exactness on a conjugate linear model, the curvature, the GLM
predictive, seeds, executors, diagnostics and the file round trip."""

from __future__ import annotations

import concurrent.futures
import math

import numpy as np
import pytest
import torch
from helpers import LinearNet

import bayesresnet as brn
from bayesresnet.inference.laplace import (
    Laplace,
    NetworkLayout,
    curvature_matrix,
    glm_predictive,
    network_jacobian,
)

# Few Adam steps: the L-BFGS rounds after them find the mode.
STEPS = 300


@pytest.fixture(scope="module")
def linear_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    y = x @ w + 0.3 + 0.5 * torch.randn(40, generator=g, dtype=torch.float64)
    return x, y


def _design(x: torch.Tensor) -> torch.Tensor:
    """Columns in the layout's order: the weights, then the bias."""
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def _fit(model, x, y, seed=0, standardize=True, **settings):
    settings.setdefault("steps", STEPS)
    return brn.fit(model, x, y, method=Laplace(**settings), seed=seed, progress=False,
                   check=False, standardize=standardize)


def _small_resnet(out_dim: int = 1, **kwargs) -> brn.BayesianResNet:
    net = brn.ResNet(1, out_dim, width=4, depth=3, basis="linear")
    return brn.BayesianResNet(net, prior=brn.priors.Normal(1.0), **kwargs)


@pytest.fixture(scope="module")
def toy():
    x, y = brn.data.cubic(20, seed=2)
    return x, y


@pytest.fixture(scope="module")
def toy_post(toy):
    x, y = toy
    # Enough Adam steps for the loss to settle (the MAP-convergence check of the diagnostics).
    return _fit(_small_resnet(), x, y, num_draws=200, steps=2000)


# ---------------------------------------------------------------- conjugate linear model
@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_glm_laplace_equals_the_exact_posterior_of_a_linear_model(linear_data, curvature):
    # Fixed noise 0.5, prior N(0, 2^2): the posterior is N(m, S) with
    # S^{-1} = X'X / 0.25 + I / 4 and m = S X'y / 0.25; the network is linear, so the GGN and
    # the Hessian are X'X and the Laplace approximation is exact. Only rounding remains.
    x, y = linear_data
    model = brn.BayesianResNet(LinearNet(3), prior=brn.priors.Normal(2.0),
                               likelihood=brn.likelihoods.Gaussian(noise=0.5))
    post = _fit(model, x, y, curvature=curvature, prior_scale="fixed", noise_scale="fixed",
                standardize=False, num_draws=4000)
    design = _design(x)
    precision = design.T @ design / 0.25 + torch.eye(4, dtype=torch.float64) / 4.0
    cov = torch.linalg.inv(precision)
    mean = cov @ design.T @ y / 0.25
    torch.testing.assert_close(post.extra["theta_map"][0], mean, rtol=1e-8, atol=1e-10)
    x_new = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f_mean, f_var = glm_predictive(post, x_new)
    new = _design(x_new)
    np.testing.assert_allclose(f_mean[:, 0], (new @ mean).numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(f_var[:, 0], ((new @ cov) * new).sum(-1).numpy(), rtol=1e-8)
    # The draws are N(mean, cov): each coordinate's mean within 5 Monte Carlo standard errors
    # (sd / sqrt(4000)), each variance within 5 standard errors of a variance (sqrt(2 / 4000)
    # relative), whatever the seed (false alarm below 1e-5 per coordinate).
    theta = NetworkLayout.of(model).theta(post.flat_draws())
    sd = cov.diagonal().sqrt()
    assert ((theta.mean(0) - mean).abs() < 5 * sd / math.sqrt(4000)).all()
    assert ((theta.var(0) / cov.diagonal() - 1).abs() < 5 * math.sqrt(2 / 4000)).all()


def test_marginal_likelihood_optimum_equals_the_closed_form_evidence_optimum(linear_data):
    # Learned noise and prior scale: Laplace's type-II maximum likelihood must land on the
    # maximizer of the exact evidence log N(y | 0, X X' / c + sigma^2 I) over (c, sigma).
    x, y = linear_data
    model = brn.BayesianResNet(LinearNet(3), prior=brn.priors.Normal(1.0))
    post = _fit(model, x, y, standardize=False)
    design = _design(x)
    u = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # log c, log sigma
    optimizer = torch.optim.LBFGS([u], max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        cov = design @ design.T / u[0].exp() + (2 * u[1]).exp() * torch.eye(len(y),
                                                                            dtype=torch.float64)
        loss = -torch.distributions.MultivariateNormal(torch.zeros_like(y), cov).log_prob(y)
        loss.backward()
        return loss

    optimizer.step(closure)
    c_best, sigma_best = float(u[0].detach().exp()), float(u[1].detach().exp())
    assert post.extra["prior_precision"][0, 0].item() == pytest.approx(c_best, rel=1e-5)
    assert post.extra["noise"][0, 0].item() == pytest.approx(sigma_best, rel=1e-5)
    # The draws of the noise site are the fitted value.
    assert torch.all(post.draws["noise"] == post.extra["noise"][0, 0])


# ---------------------------------------------------------------- curvature
def _explicit_jacobian(model, theta, x):
    """J (N, out_dim, P) by one reverse pass per output value."""
    layout = NetworkLayout.of(model)
    theta = theta.clone().requires_grad_(True)
    out = model.net.forward(model.net_params(layout.values(theta)), x)
    rows = [torch.autograd.grad(out[i, o], theta, retain_graph=True)[0]
            for i in range(out.shape[0]) for o in range(out.shape[1])]
    return torch.stack(rows).reshape(out.shape[0], out.shape[1], -1)


def test_ggn_equals_an_explicit_jacobian_product():
    model = _small_resnet(out_dim=2)
    layout = NetworkLayout.of(model)
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(layout.size, generator=g, dtype=torch.float64)
    x = torch.randn(9, 1, generator=g, dtype=torch.float64)
    y = torch.randn(9, 2, generator=g, dtype=torch.float64)
    jac = _explicit_jacobian(model, theta, x)
    noise = torch.tensor([0.3, 0.7], dtype=torch.float64)
    h = torch.diag(1.0 / noise**2)  # Hessian of the Gaussian NLL in f
    explicit = torch.einsum("nop,oq,nqr->pr", jac, h, jac)
    ggn = curvature_matrix(model, theta, x, y, "ggn")
    torch.testing.assert_close((ggn / (noise**2)[:, None, None]).sum(0), explicit,
                               rtol=1e-10, atol=1e-12)
    ours, out = network_jacobian(model, theta, x)
    torch.testing.assert_close(ours, jac, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, model.net.forward(model.net_params(layout.values(theta)), x))


def test_hessian_equals_autograd_hessian():
    model = _small_resnet()
    layout = NetworkLayout.of(model)
    g = torch.Generator().manual_seed(4)
    theta = torch.randn(layout.size, generator=g, dtype=torch.float64)
    x = torch.randn(6, 1, generator=g, dtype=torch.float64)
    y = torch.randn(6, 1, generator=g, dtype=torch.float64)

    def half_rss(th):
        out = model.net.forward(model.net_params(layout.values(th)), x)
        return 0.5 * ((y - out) ** 2).sum()

    explicit = torch.autograd.functional.hessian(half_rss, theta)
    torch.testing.assert_close(curvature_matrix(model, theta, x, y, "hessian")[0], explicit,
                               rtol=1e-9, atol=1e-10)


def _precision(post, member=0):
    """The member's posterior precision (P, P), rebuilt from the stored factors."""
    gauss = {k: v[member] for k, v in post.extra["gaussian"].items()}
    if "precision_cholesky" in gauss:
        chol = gauss["precision_cholesky"]
        return chol @ chol.T
    assert post.method.curvature in ("ggn", "hessian")
    w = gauss["sqrt_prior_precision"].unsqueeze(-1) * gauss["eigenvectors"]
    return (w * gauss["eigenvalues"]) @ w.T


@pytest.mark.parametrize("out_dim", [1, 2])
def test_fitted_precision_is_ggn_over_noise_plus_prior(toy, out_dim):
    # One output: the eigenbasis form; two outputs: the dense Cholesky form.
    x, y = toy
    y = np.stack([y, -0.5 * y + x[:, 0]], axis=1)[:, :out_dim]
    post = _fit(_small_resnet(out_dim), x, y, num_draws=10)
    model = post.model
    theta = post.extra["theta_map"][0]
    x_std = post.x_scaler.transform(torch.as_tensor(x, dtype=torch.float64))
    jac = _explicit_jacobian(model, theta, x_std)
    noise = post.extra["noise"][0]
    expected = torch.einsum("nop,noq->pq", jac / noise[:, None], jac / noise[:, None]) \
        + torch.diag(post.extra["prior_precision"][0])
    torch.testing.assert_close(_precision(post), expected, rtol=1e-8, atol=1e-8)


def test_diag_and_kron_curvatures(toy):
    x, y = toy
    full = _fit(_small_resnet(), x, y, num_draws=10, prior_scale="fixed", noise_scale="fixed")
    diag = _fit(_small_resnet(), x, y, num_draws=10, curvature="diag", prior_scale="fixed",
                noise_scale="fixed")
    kron = _fit(_small_resnet(), x, y, num_draws=10, curvature="kron", prior_scale="fixed",
                noise_scale="fixed")
    # Same MAP (fixed hyperparameters, same seed; the polish may differ by its tolerance).
    torch.testing.assert_close(diag.extra["theta_map"], full.extra["theta_map"], atol=1e-5,
                               rtol=0)
    precision = _precision(full)
    gauss = {k: v[0] for k, v in diag.extra["gaussian"].items()}
    diag_precision = gauss["sqrt_prior_precision"] ** 2 * gauss["eigenvalues"]
    torch.testing.assert_close(diag_precision, precision.diagonal(), rtol=1e-4, atol=1e-6)
    # Kronecker blocks keep each block's trace (tr(R kron C) / s = tr R tr C / s = s), and a
    # one-column site (a bias: (R kron 1) / s with s = tr R) is its exact GGN block.
    layout = NetworkLayout.of(kron.model)
    gk = {k: v[0] for k, v in kron.extra["gaussian"].items()}
    eig = gk["sqrt_prior_precision"] ** 2 * gk["eigenvalues"]
    for name, (a, b) in zip(layout.names, layout.slices, strict=True):
        block = precision[a:b, a:b]
        assert eig[a:b].sum().item() == pytest.approx(block.trace().item(), rel=1e-4)
        if name == "input_bias":
            u = gk[f"rows.{name}"]
            rebuilt = (u * eig[a:b]) @ u.T
            torch.testing.assert_close(rebuilt, block, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def collinear_data():
    # Six strongly correlated features: the diagonal curvature is far from the GGN there.
    g = torch.Generator().manual_seed(0)
    common = torch.randn(200, 1, generator=g, dtype=torch.float64)
    x = common + 0.05 * torch.randn(200, 6, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    y = x @ w + 0.3 * torch.randn(200, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("curvature", ["diag", "kron"])
def test_diag_and_kron_marglik_does_not_collapse_off_the_mode(collinear_data, curvature):
    # Regression: after few (or minibatch) Adam steps theta is off the mode, and the evidence
    # of the quadratic model at its mode, with an approximate curvature C, grows like
    # (a^T C^{-1} a - rss) / (2 sigma^2) with a^T C^{-1} a > rss: the noise and the prior scale
    # ran to exp(-25) = 1.4e-11. The GGN's evidence is exact for this linear model (noise 0.297
    # for a true 0.3); the approximate curvatures' Laplace evidence at the MAP lands within
    # 20% of it (0.34-0.35). Minibatches change only the Adam path before the MAP is polished
    # on the full batch, so they agree with full batch to 1% (measured: 1e-4 on the noise,
    # 5e-3 on the prior precision).
    x, y = collinear_data

    def fit(cv, batch_size):
        model = brn.BayesianResNet(LinearNet(6), prior=brn.priors.Normal(1.0))
        post = _fit(model, x, y, curvature=cv, steps=50, batch_size=batch_size, num_draws=20,
                    standardize=False)
        return post.extra["noise"][0, 0].item(), post.extra["prior_precision"][0, 0].item()

    reference, _ = fit("ggn", None)
    assert reference == pytest.approx(0.3, rel=0.05)
    noise, prior = fit(curvature, None)
    noise_mb, prior_mb = fit(curvature, 25)
    assert noise == pytest.approx(reference, rel=0.2)
    assert noise_mb == pytest.approx(noise, rel=0.01)
    assert prior_mb == pytest.approx(prior, rel=0.01)


@pytest.mark.parametrize("curvature", ["diag", "kron"])
def test_curvature_accumulated_in_chunks_equals_one_chunk(monkeypatch, curvature):
    # The curvature is a sum over inputs: accumulated over chunks of 3 inputs it equals the one
    # from a single chunk up to rounding.
    from bayesresnet.inference import laplace
    x, y = brn.data.cubic(20, seed=2)
    x = torch.as_tensor(x, dtype=torch.float64).reshape(20, 1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(20, 1)
    model = _small_resnet()
    layout = NetworkLayout.of(model)
    theta = 0.5 * torch.randn(layout.size, generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64)
    one = laplace._local_model(model, layout, theta, x, y, curvature)
    monkeypatch.setattr(laplace, "_JACOBIAN_ENTRIES", 3 * layout.size)
    chunked = laplace._local_model(model, layout, theta, x, y, curvature)
    torch.testing.assert_close(chunked.curvature.lam, one.curvature.lam, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunked.a, one.a, rtol=1e-10, atol=1e-12)
    # The draws' log joints (network and linearized), in chunks of inputs, equal the unchunked.
    draws = theta + 0.1 * torch.randn(4, layout.size, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64)
    c, noise = torch.tensor(0.7, dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    output = laplace._linearized(model, layout, theta, draws, x)
    expected = laplace._log_joint(model, layout, draws, x, y, c, noise, output=output)
    got = laplace._chunked_log_joint(model, layout, draws, x, y, c, noise, mean=theta)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)
    expected = laplace._log_joint(model, layout, draws, x, y, c, noise)
    got = laplace._chunked_log_joint(model, layout, draws, x, y, c, noise)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)


# ---------------------------------------------------------------- predictive
def test_glm_draws_tend_to_the_closed_form_predictive(toy):
    # 2 members: a mixture of linearizations, each draw at its own member's mean. With 4000
    # draws per member the draws' mean is within 5 Monte Carlo standard errors (sd / sqrt(8000)
    # of the mixture) and the variance within 5 standard errors of a variance (about
    # sqrt((kurtosis - 1) / 8000) relative; a two-component mixture's kurtosis is below 6, so
    # 5 sqrt(5 / 8000) = 0.125) at every input, whatever the seed.
    x, y = toy
    post = _fit(_small_resnet(), x, y, members=2, num_draws=4000)
    assert post.num_chains == 2
    x_new = np.linspace(-6, 6, 13)[:, None]
    mean, var = glm_predictive(post, x_new)
    f = post.predict(x_new).f_samples[..., 0]
    assert np.all(np.abs(f.mean(0) - mean[:, 0]) < 5 * np.sqrt(var[:, 0] / f.shape[0]))
    assert np.all(np.abs(f.var(0) / var[:, 0] - 1) < 5 * np.sqrt(5 / f.shape[0]))
    # Each member's draws are linearized at that member's mean: the members differ.
    means = post.extra["theta_map"]
    assert (means[0] - means[1]).abs().max() > 1e-3


def test_glm_predictive_with_noise_adds_the_noise_variance(toy_post):
    x_new = np.linspace(-4, 4, 5)[:, None]
    _, f_var = glm_predictive(toy_post, x_new)
    _, y_var = glm_predictive(toy_post, x_new, include_noise=True)
    noise = toy_post.y_scaler.inverse_scale(toy_post.extra["noise"][0]).numpy()
    np.testing.assert_allclose(y_var - f_var, np.broadcast_to(noise**2, f_var.shape), rtol=1e-10)


def test_mc_predictive_runs_the_network(toy):
    x, y = toy
    post = _fit(_small_resnet(), x, y, predictive="mc", num_draws=20)
    x_new = np.linspace(-4, 4, 5)[:, None]
    loc, _, _ = post.evaluate(x_new, network_only=True)
    np.testing.assert_allclose(post.predict(x_new).f_samples, loc.reshape(20, 5, 1).numpy())
    assert "PSIS k-hat" in post.diagnose().table["check"].tolist()


def test_glm_predictive_needs_a_laplace_posterior(toy):
    x, y = toy
    post = brn.fit(_small_resnet(), x, y, method=brn.MAP(steps=20), seed=0, progress=False,
                   check=False)
    with pytest.raises(ValueError, match="Laplace posterior"):
        glm_predictive(post, x)


# ---------------------------------------------------------------- seeds and executors
def test_same_seed_same_draws_other_seed_other_draws(toy, toy_post):
    x, y = toy
    state = torch.get_rng_state()
    again = _fit(_small_resnet(), x, y, num_draws=200, steps=2000)
    assert torch.equal(state, torch.get_rng_state())
    for name, value in toy_post.draws.items():
        assert torch.equal(value, again.draws[name])
    other = _fit(_small_resnet(), x, y, seed=1, num_draws=200, steps=2000)
    assert not torch.equal(other.draws["W_coef"], toy_post.draws["W_coef"])


def test_members_are_units_and_executor_fits_equal_local_fits(toy):
    x, y = toy
    method = Laplace(members=2, members_per_unit=1, steps=STEPS, num_draws=50)
    local = brn.fit(_small_resnet(), x, y, method=method, seed=5, progress=False, check=False)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        remote = brn.fit(_small_resnet(), x, y, method=method, seed=5, progress=False,
                         check=False, executor=pool)
    for name, value in local.draws.items():
        assert value.shape[:2] == (2, 50)
        assert torch.equal(value, remote.draws[name])
    for name in ("log_joint", "log_q", "map_loss"):
        np.testing.assert_array_equal(local.stats[name], remote.stats[name])
    torch.testing.assert_close(local.extra["gaussian"], remote.extra["gaussian"], rtol=0,
                               atol=0)
    plan = method.plan(_small_resnet(), torch.zeros(3, 1, dtype=torch.float64),
                       torch.zeros(3, 1, dtype=torch.float64), 0)
    assert [unit.label for unit in plan.units] == ["Laplace member 0 of 2",
                                                   "Laplace member 1 of 2"]
    grouped = Laplace(members=3, steps=STEPS).plan(_small_resnet(), torch.zeros(3, 1),
                                                    torch.zeros(3, 1), 0)
    assert [unit.label for unit in grouped.units] == ["Laplace members 0-2 of 3"]


def test_grouped_members_are_independent_fits(toy):
    """Members batched in one unit are the members fitted one per unit: the same Adam runs
    (full batch here, so the same gradients; Adam is elementwise), each with its own
    hyperparameters; and member 0 of a one-per-unit fit is the one-member fit exactly."""
    x, y = toy
    settings = {"steps": STEPS, "num_draws": 20, "max_rounds": 0}
    grouped = _fit(_small_resnet(), x, y, seed=3, members=3, **settings)
    apart = _fit(_small_resnet(), x, y, seed=3, members=3, members_per_unit=1, **settings)
    single = _fit(_small_resnet(), x, y, seed=3, members=1, **settings)
    np.testing.assert_allclose(grouped.stats["map_loss"], apart.stats["map_loss"], rtol=1e-9)
    torch.testing.assert_close(grouped.extra["theta_map"], apart.extra["theta_map"],
                               rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(grouped.extra["noise"], apart.extra["noise"], rtol=1e-7, atol=0)
    torch.testing.assert_close(grouped.extra["prior_precision"],
                               apart.extra["prior_precision"], rtol=1e-7, atol=0)
    # Distinct members, distinct hyperparameters.
    assert len({round(float(v), 6) for v in grouped.extra["noise"].reshape(-1)}) == 3
    for name, value in single.draws.items():
        assert torch.equal(apart.draws[name][:1], value)
    np.testing.assert_array_equal(apart.stats["map_loss"][:, :1], single.stats["map_loss"])


# ---------------------------------------------------------------- diagnostics
def test_default_fit_passes_its_checks(toy_post):
    diag = toy_post.diagnose()
    assert diag.table["check"].tolist() == ["PSIS k-hat", "MAP loss trend (last 10%)",
                                            "curvature positive definite"]
    assert diag.ok, str(diag)
    assert any("linearized network" in note for note in diag.notes)


def test_an_indefinite_hessian_is_regularized_and_reported(toy):
    # Two Adam steps from a network initialization: far from a mode, the Hessian of the
    # squared error has negative eigenvalues beyond what the N(0, 1) prior outweighs.
    x, y = toy
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=4, depth=3, basis="linear"),
                               prior=brn.priors.Normal(10.0),
                               likelihood=brn.likelihoods.Gaussian(noise=0.05))
    post = brn.fit(model, x, y, method=Laplace(steps=2, curvature="hessian", max_rounds=0,
                                               prior_scale="fixed", num_draws=20),
                   seed=0, progress=False, check=False)
    assert post.stats["negative_eigenvalues"][0] > 0
    diag = post.diagnose()
    row = diag.table.set_index("check").loc["curvature positive definite"]
    assert not row["passed"] and row["value"] < 0
    assert any("regularized" in w for w in diag.warnings)
    # The regularized Gaussian is still proper: finite draws and predictions.
    assert np.isfinite(post.predict(x).mean).all()


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize("settings, match", [
    ({"members": 0}, "members"),
    ({"members_per_unit": 0}, "members_per_unit"),
    ({"steps": 1.5}, "steps"),
    ({"num_draws": 0}, "num_draws"),
    ({"lr": -1.0}, "lr"),
    ({"max_rounds": -1}, "max_rounds"),
    ({"curvature": "fisher"}, "curvature"),
    ({"predictive": "probit"}, "predictive"),
    ({"prior_scale": 1.0}, "prior_scale"),
    ({"noise_scale": "map"}, "noise_scale"),
    ({"batch_size": 0}, "batch_size"),
])
def test_invalid_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        Laplace(**settings)


@pytest.mark.parametrize("model, match", [
    (brn.BayesianResNet(brn.ResNet(1, 1, 3, 2), prior=brn.priors.Hierarchical()), "Normal"),
    (brn.BayesianResNet(brn.ResNet(1, 1, 3, 2),
                        likelihood=brn.likelihoods.Gaussian(heteroscedastic=True)),
     "heteroscedastic"),
])
def test_models_it_does_not_cover(model, match):
    with pytest.raises(ValueError, match=match):
        brn.fit(model, np.zeros((4, 1)), np.zeros(4), method=Laplace(), progress=False)


def test_kron_needs_one_output():
    model = _small_resnet(out_dim=2)
    with pytest.raises(ValueError, match="one output"):
        brn.fit(model, np.zeros((4, 1)), np.zeros((4, 2)), method=Laplace(curvature="kron"),
                progress=False)


def test_registered_by_name():
    from bayesresnet.registry import method_class

    assert method_class("laplace") is Laplace
    assert Laplace.kind == "variational"


# ---------------------------------------------------------------- files and ArviZ
@pytest.mark.arviz
def test_save_load_and_export(toy_post, tmp_path):
    path = toy_post.save(tmp_path / "laplace.nc")
    loaded = brn.load(path)
    assert isinstance(loaded.method, Laplace)
    x_new = np.linspace(-6, 6, 11)[:, None]
    np.testing.assert_array_equal(loaded.predict(x_new).f_samples,
                                  toy_post.predict(x_new).f_samples)
    for a, b in zip(glm_predictive(loaded, x_new), glm_predictive(toy_post, x_new),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.diagnose().table.equals(toy_post.diagnose().table)
    data = loaded.to_arviz(x_new=x_new)
    assert data is not None
