"""Stability under posterior uncertainty (bayesresnet.ode.stability, posterior_stability,
Posterior.stability, the report's stability section).

The closed-form case: with the identity activation the vector field is f(h) = W h + b, whose
Jacobian is W everywhere. For W = diag(-1, -10) an explicit Euler step multiplies the modes by
1 - dt and 1 - 10 dt, so it is stable (|1 + dt lambda| <= 1 for both) exactly when dt <= 0.2,
and the stiffness ratio is 10.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import xarray as xr

import bayesresnet as brn
from bayesresnet import ode
from bayesresnet.data import Standardizer
from bayesresnet.posterior import Posterior
from bayesresnet.report import _stability_section

DIAG = torch.tensor([-1.0, -10.0], dtype=torch.float64)


def _x(n, in_dim, seed):
    return np.random.default_rng(seed).normal(size=(n, in_dim))


def _posterior(net, hidden, seed=0, method=None):
    """A Posterior of ``net`` whose draws are random except the hidden weight sites, which
    ``hidden`` (site -> tensor (chain, draw, *shape)) sets."""
    model = brn.BayesianResNet(net)
    chains, draws = next(iter(hidden.values())).shape[:2]
    gen = torch.Generator().manual_seed(seed)
    values = {name: 0.5 * torch.randn(chains, draws, *shape, generator=gen, dtype=torch.float64)
              for name, shape in model.latent_shapes.items()}
    values["noise"] = values["noise"].abs() + 0.1
    values.update(hidden)
    x = _x(12, net.in_dim, seed + 1) * 3.0 + 1.0
    y = _x(12, 1, seed + 2)
    return Posterior(model=model, draws=values, stats={}, method=method or brn.Ensemble(),
                     x_scaler=Standardizer().fit(torch.as_tensor(x)),
                     y_scaler=Standardizer().fit(torch.as_tensor(y)), seed=0, fit_seconds=1.0,
                     x_train=x, y_train=y)


def _linear_posterior(depth, horizon=1.0, chains=2, draws=3):
    net = brn.ResNet(2, 1, 2, depth, basis="constant", activation="identity", horizon=horizon)
    w = torch.diag(DIAG).expand(chains, draws, 1, 2, 2).clone()
    return _posterior(net, {"W_coef": w})


@pytest.mark.parametrize(("horizon", "depth"), [
    (1.0, 4), (1.0, 5), (1.0, 6), (1.0, 10), (2.0, 9), (2.0, 10), (0.5, 2), (0.5, 3)])
def test_euler_stability_of_diag_minus_1_minus_10_is_dt_at_most_0_2(horizon, depth):
    post = _linear_posterior(depth, horizon)
    data = post.stability(_x(5, 2, 7))
    dt = horizon / depth
    expected = 1.0 if dt <= 0.2 + 1e-12 else 0.0  # dt = 0.2 itself: |1 - 10 dt| = 1, stable
    assert data.attrs["dt"] == pytest.approx(dt)
    assert float(data["stability_probability"]) == expected
    np.testing.assert_array_equal(data["layer_stability_probability"], np.full(depth, expected))
    assert bool(data["stable"].all()) == bool(expected)
    np.testing.assert_allclose(data["amplification"],
                               max(abs(1 - dt), abs(1 - 10 * dt)) + np.zeros((2, 3, 5, depth)),
                               rtol=1e-12)
    np.testing.assert_allclose(data["eigenvalues"].values,
                               np.broadcast_to([-10.0, -1.0], (2, 3, 5, depth, 2)), atol=1e-12)
    np.testing.assert_allclose(data["stiffness_ratio"], 10.0, rtol=1e-12)
    np.testing.assert_allclose(data["stiffness_ratio_interval"], [10.0, 10.0, 10.0], rtol=1e-12)
    np.testing.assert_allclose(data["spectral_abscissa"], -1.0, rtol=1e-12)


@pytest.mark.parametrize(("depth", "expected"), [(12, 0.0), (13, 1.0), (14, 1.0), (40, 1.0)])
def test_complex_eigenvalues_use_the_disc_not_the_step_size(depth, expected):
    # W = [[-1, -5], [5, -1]] has lambda = -1 +- 5i: |1 + dt lambda|^2 = (1 - dt)^2 + 25 dt^2,
    # at most 1 exactly when dt <= 1/13, although dt |lambda| = 0.39 < 2 already at dt = 1/13.
    net = brn.ResNet(2, 1, 2, depth, basis="constant", activation="identity")
    w = torch.tensor([[-1.0, -5.0], [5.0, -1.0]], dtype=torch.float64)
    data = _posterior(net, {"W_coef": w.expand(1, 2, 1, 2, 2)}).stability(_x(3, 2, 17))
    dt = 1.0 / depth
    assert float(data["stability_probability"]) == expected
    np.testing.assert_allclose(data["amplification"], np.hypot(1 - dt, 5 * dt), rtol=1e-12)
    np.testing.assert_allclose(data["eigenvalues"].values[0, 0, 0, 0],
                               [-1 - 5j, -1 + 5j], rtol=1e-12)
    np.testing.assert_allclose(data["stiffness_ratio"], 1.0, rtol=1e-12)


def test_the_scheme_sets_the_stability_region():
    # R(z) = 1 + z (Euler), 1 + z + z^2/2 (midpoint), the degree-4 Taylor polynomial of e^z
    # (rk4). At dt = 0.25 the modes have z = -0.25 and -2.5: the largest |R| is 1.5 (the fast
    # mode), 1.625 (fast) and 0.7788 (slow; the fast mode's is 0.6484).
    assert ode.stability_polynomial("euler") == (1.0, 1.0)
    assert ode.stability_polynomial("midpoint") == (1.0, 1.0, 0.5)
    assert ode.stability_polynomial("rk4") == pytest.approx((1, 1, 1 / 2, 1 / 6, 1 / 24))
    post = _linear_posterior(4)
    x = _x(3, 2, 8)
    def rk4(z):
        return 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24

    for scheme, amplification in (("euler", 1.5), ("midpoint", 1.625),
                                  ("rk4", max(rk4(-0.25), rk4(-2.5)))):
        data = post.stability(x, scheme=scheme)
        np.testing.assert_allclose(data["amplification"], amplification, rtol=1e-12)
        assert float(data["stability_probability"]) == (1.0 if scheme == "rk4" else 0.0)
        assert data.attrs["scheme"] == scheme
    # Midpoint at dt = 0.2: R(-2) = 1 exactly, on the boundary.
    assert float(_linear_posterior(5).stability(x, scheme="midpoint")["stability_probability"]) \
        == 1.0
    with pytest.raises(ValueError, match="unknown scheme"):
        post.stability(x, scheme="heun")


# Draws (chain-major, chain 2 x draw 4) whose layer is diag(-3, -30) instead of
# diag(-1, -10): at dt = 0.1, 1 - 30 dt = -2 is unstable while 1 - 3 dt, 1 - dt, 1 - 10 dt are
# stable.
UNSTABLE = {1: [2], 4: [2, 7], 6: [0]}


def _mixture_posterior():
    depth = 10
    net = brn.ResNet(2, 1, 2, depth, activation="identity")  # piecewise: one W per layer
    scale = torch.ones(8, depth, dtype=torch.float64)
    for draw, layers in UNSTABLE.items():
        scale[draw, layers] = 3.0
    w = scale[..., None, None] * torch.diag(DIAG)
    return _posterior(net, {"W_coef": w.reshape(2, 4, depth, 2, 2)}, seed=3)


def test_mixture_of_stable_and_unstable_draws_gives_the_known_fractions():
    data = _mixture_posterior().stability(_x(4, 2, 9))
    assert float(data["stability_probability"]) == 5 / 8
    expected = np.ones(10)
    expected[[0, 2, 7]] = [7 / 8, 6 / 8, 7 / 8]
    np.testing.assert_array_equal(data["layer_stability_probability"], expected)
    stable = np.ones(8, bool)
    stable[list(UNSTABLE)] = False
    np.testing.assert_array_equal(data["stable"].values.reshape(-1), stable)
    layer_stable = np.ones((8, 10), bool)
    for draw, layers in UNSTABLE.items():
        layer_stable[draw, layers] = False
    np.testing.assert_array_equal(data["layer_stable"].values.reshape(8, 10), layer_stable)
    # The ratio is over the whole trajectory: a draw with a diag(-3, -30) layer has eigenvalues
    # from -1 to -30 along it, though every single step's ratio is 10.
    np.testing.assert_allclose(data["stiffness_ratio"].values.reshape(-1),
                               np.where(stable, 10.0, 30.0), rtol=1e-12)
    # Quantiles 0.025, 0.5, 0.975 of five 10s and three 30s (each a draw's value).
    np.testing.assert_allclose(data["stiffness_ratio_interval"], [10.0, 10.0, 30.0])
    half = _mixture_posterior().stability(_x(4, 2, 9), level=0.5)  # 0.25, 0.5, 0.75
    np.testing.assert_allclose(half["quantile"], [0.25, 0.5, 0.75])
    np.testing.assert_allclose(half["stiffness_ratio_interval"], [10.0, 10.0, 30.0])


def test_dataset_dims_coords_and_thinning():
    post = _mixture_posterior()
    x = _x(4, 2, 10)
    data = post.stability(x, thin=3)
    assert dict(data.sizes) == {"chain": 2, "draw": 2, "point": 4, "layer": 10, "eigen": 2,
                                "quantile": 3, "input": 2}
    assert data["eigenvalues"].dims == ("chain", "draw", "point", "layer", "eigen")
    assert data["eigenvalues"].dtype == np.complex128
    for name in ("amplification", "spectral_abscissa", "step_stable"):
        assert data[name].dims == ("chain", "draw", "point", "layer")
    assert data["layer_stable"].dims == ("chain", "draw", "layer")
    assert data["stable"].dims == data["stiffness_ratio"].dims == ("chain", "draw")
    assert data["layer_stability_probability"].dims == ("layer",)
    assert data["stability_probability"].dims == ()
    assert data["stiffness_ratio_interval"].dims == ("quantile",)
    assert data["x"].dims == ("point", "input")
    np.testing.assert_array_equal(data["x"], x)
    np.testing.assert_array_equal(data["chain"], [0, 1])
    np.testing.assert_array_equal(data["draw"], [0, 3])  # draws 0 and 3 of each chain
    np.testing.assert_allclose(data["time"], 0.1 * np.arange(10))
    assert data["time"].dims == ("layer",)
    np.testing.assert_allclose(data["quantile"], [0.025, 0.5, 0.975])
    assert data.attrs["thin"] == 3 and data.attrs["draws"] == 4
    assert data.attrs["method"] == "ensemble" and data.attrs["integrator"] == "euler"
    # Kept draws: chain 0 draws 0, 3 and chain 1 draws 0 (flat 4, unstable), 3: 3 of 4 stable.
    assert float(data["stability_probability"]) == 3 / 4
    lean = post.stability(x, thin=3, eigenvalues=False)
    assert "eigenvalues" not in lean
    xr.testing.assert_identical(lean, data.drop_vars("eigenvalues"))


def _random_params(net, sample_shape, seed, scale=0.8):
    gen = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(*sample_shape, *shape, generator=gen, dtype=torch.float64)
            for k, shape in net.param_shapes.items()}


def test_nonlinear_network_matches_stiffness_and_chunking_changes_nothing(monkeypatch):
    # V(t) = -s U(t): the eigenvalues of J = D U V^T (D = diag(tanh') > 0) are those of
    # -s U^T D U, real and negative, so a small s gives stable steps and a large one unstable.
    net = brn.ResNet(2, 1, 4, 6, basis="cubic", rank=4)
    params = _random_params(net, (3, 5), seed=11)
    scale = torch.logspace(-1.0, 1.5, 15, dtype=torch.float64).reshape(3, 5, 1, 1, 1)
    params["V_coef"] = -scale * params["U_coef"]
    x = torch.as_tensor(_x(7, 2, 12))
    data = ode.stability(net, params, x, sample_dims=("a", "b"))
    eig = ode.stiffness(net, params, x).eigenvalues
    np.testing.assert_array_equal(data["eigenvalues"], eig.numpy())
    amplification = (1.0 + net.dt * eig).abs().amax(-1).numpy()
    np.testing.assert_allclose(data["amplification"], amplification)
    np.testing.assert_array_equal(data["spectral_abscissa"], eig.real.amax(-1).numpy())
    stable = (amplification <= 1 + 1e-9).all(axis=(-1, -2))
    assert 0 < stable.sum() < 15  # both kinds of draws occur
    assert float(data["stability_probability"]) == stable.mean()
    real = np.abs(eig.real.numpy()).reshape(3, 5, -1)
    with np.errstate(divide="ignore"):  # saturated units (tanh' = 0) of the steepest draws
        np.testing.assert_allclose(data["stiffness_ratio"], real.max(-1) / real.min(-1))
    monkeypatch.setattr(ode, "_STABILITY_CHUNK_BYTES", 1)  # one draw per chunk
    chunked = ode.stability(net, params, x, sample_dims=("a", "b"))
    # LAPACK's rounding may differ between batch sizes: equal to 1e-10.
    xr.testing.assert_allclose(chunked, data, rtol=1e-10, atol=1e-12)
    assert chunked.attrs == data.attrs


def test_inputs_are_standardized_and_the_prior_maps_the_draws():
    net = brn.ResNet(3, 1, 3, 4, basis="linear")
    model = brn.BayesianResNet(net, prior=brn.priors.Hierarchical())
    gen = torch.Generator().manual_seed(13)
    values = {k: torch.randn(1, 2, *shape, generator=gen, dtype=torch.float64).abs()
              for k, shape in model.latent_shapes.items()}
    x = _x(10, 3, 14) * 5.0 - 2.0
    post = Posterior(model=model, draws=values, stats={}, method=brn.Ensemble(),
                     x_scaler=Standardizer().fit(torch.as_tensor(x)),
                     y_scaler=Standardizer().fit(torch.as_tensor(x[:, :1])), seed=0,
                     fit_seconds=1.0, x_train=x, y_train=x[:, :1])
    data = post.stability(x[:4])
    params = model.net_params(values)
    x_std = post.x_scaler.transform(torch.as_tensor(x[:4]))
    np.testing.assert_array_equal(data["eigenvalues"],
                                  ode.stiffness(net, params, x_std).eigenvalues.numpy())


def test_invalid_uses_are_clear_value_errors():
    post = _linear_posterior(4)
    x = _x(3, 2, 15)
    for options, match in (({"thin": 0}, "thin"), ({"thin": 1.5}, "thin"),
                           ({"level": 1.0}, "level"), ({"tolerance": -1.0}, "tolerance"),
                           ({"scheme": None}, "scheme")):
        with pytest.raises(ValueError, match=match):
            post.stability(x, **options)
    with pytest.raises(ValueError, match="features"):
        post.stability(_x(3, 3, 16))
    mlp = brn.MLP(2, 1, 3, 2)
    mlp_post = _posterior(mlp, {"hidden_bias": torch.zeros(1, 2, 2, 3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="needs a ResNet"):
        mlp_post.stability(x)
    net = post.model.net
    params = {k: v[0] for k, v in post.draws.items() if k in net.param_shapes}
    with pytest.raises(ValueError, match="sample_dims"):
        ode.stability(net, params, torch.as_tensor(x), sample_dims=("chain", "draw"))
    with pytest.raises(ValueError, match="distinct"):
        ode.stability(net, params, torch.as_tensor(x), sample_dims=("layer",))
    assert _stability_section(mlp_post) is None


def test_report_section_shows_the_probabilities_of_the_draws():
    html = _stability_section(_mixture_posterior())
    assert html.count('src="data:image/png;base64,') == 1
    rows = re.findall(r"<tr><td>([^<]+)</td>.*?<td class=\"num\">([0-9.]+)</td>"
                      r"<td class=\"num\">([0-9.e-]+)</td></tr>", html)
    cells = {name: float(p) for name, p, _ in rows}
    errors = {name: float(e) for name, _, e in rows}
    assert cells["every layer"] == pytest.approx(5 / 8)
    assert cells["layer 2"] == pytest.approx(6 / 8)
    assert cells["layer 5"] == 1.0
    assert errors["layer 5"] == 0.0 and errors["every layer"] > 0.0
    assert "MC standard error" in html
    assert "median 10, central 95% interval [10, 30]" in html
    assert "In 0.0% of the steps shown some eigenvalue has a positive real part" in html


def test_report_has_the_section_for_resnets_only(tmp_path):
    x, y = brn.data.cubic(12, seed=0)
    for net, present in ((brn.ResNet(1, 1, 3, 3, basis="linear"), True),
                         (brn.MLP(1, 1, 3, 2), False)):
        post = brn.fit(brn.BayesianResNet(net), x, y, method=brn.Ensemble(members=2, steps=20),
                       seed=0, progress=False, check=False)
        page = brn.report(post, tmp_path / type(net).__name__).read_text()
        assert ('<h2 id="stability">' in page) == present


def _pattern_posterior(unstable):
    """Draws (chain, draw) whose layer 0 is diag(-3, -30) (unstable at dt = 0.1) where
    ``unstable`` is True, diag(-1, -10) (stable) elsewhere."""
    depth = 10
    chains, draws = unstable.shape
    scale = torch.ones(chains, draws, depth, dtype=torch.float64)
    scale[..., 0] = torch.where(torch.as_tensor(unstable), 3.0, 1.0)
    w = scale[..., None, None] * torch.diag(DIAG)
    net = brn.ResNet(2, 1, 2, depth, activation="identity")
    return _posterior(net, {"W_coef": w}, seed=4)


@pytest.mark.arviz  # the ESS is ArviZ's
def test_probability_mcse_of_independent_draws_is_the_binomial_error():
    # 200 independent draws, unstable with probability 0.3. The ESS of independent draws is
    # estimated, not known: over 400 simulated sets of such draws the ratio of this MCSE to
    # sqrt(p (1 - p) / 200) had mean 0.98, sd 0.11 and range 0.76-1.89, so [0.6, 2.5] fails
    # far less often than once in 400.
    unstable = np.random.default_rng(0).uniform(size=(4, 50)) < 0.3
    post = _pattern_posterior(unstable)
    data = post.stability(_x(3, 2, 5), eigenvalues=False)
    p = 1.0 - unstable.mean()
    assert float(data["stability_probability"]) == pytest.approx(p)
    ratio = float(data["stability_probability_mcse"]) / np.sqrt(p * (1 - p) / 200)
    assert 0.6 < ratio < 2.5
    # Layers that every draw agrees on have no Monte Carlo error; layer 0 has the overall one.
    mcse = data["layer_stability_probability_mcse"].values
    np.testing.assert_array_equal(mcse[1:], 0.0)
    assert mcse[0] == pytest.approx(float(data["stability_probability_mcse"]))
    assert data["layer_stability_probability_mcse"].dims == ("layer",)
    # Without chains the draws count as independent: exactly the binomial error.
    params = {name: value.reshape(200, *value.shape[2:])
              for name, value in post.model.net_params(post.draws).items()}
    flat = ode.stability(post.model.net, params, torch.as_tensor(_x(3, 2, 5)),
                         eigenvalues=False)
    assert float(flat["stability_probability_mcse"]) == pytest.approx(
        np.sqrt(p * (1 - p) / 200), rel=1e-12)


@pytest.mark.arviz  # the ESS is ArviZ's
def test_probability_mcse_grows_when_chains_disagree():
    # Two chains stable throughout, two unstable throughout: p = 1/2 from what are in effect
    # 4 draws, not 200, so the error must be far above the independent-draws 0.035.
    unstable = np.zeros((4, 50), bool)
    unstable[2:] = True
    data = _pattern_posterior(unstable).stability(_x(3, 2, 5), eigenvalues=False)
    assert float(data["stability_probability"]) == 0.5
    assert float(data["stability_probability_mcse"]) > 3 * np.sqrt(0.25 / 200)
    agreed = _pattern_posterior(np.zeros((4, 50), bool)).stability(_x(3, 2, 5))
    assert float(agreed["stability_probability"]) == 1.0
    assert float(agreed["stability_probability_mcse"]) == 0.0
