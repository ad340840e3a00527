"""The neural-ODE view: integrators, adjoint vs backprop gradients, stiffness, Jacobian penalty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import bayesresnet as brn
from bayesresnet import ode
from bayesresnet.resnet import ACTIVATIONS, network_from_config

INTEGRATORS = ["euler", "midpoint", "rk4"]
ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)


def _random_params(net: brn.ResNet, seed: int, sample_shape: tuple[int, ...] = (),
                   scale: float = 1.0) -> dict[str, torch.Tensor]:
    gen = _gen(seed)
    return {name: _randn(*sample_shape, *shape, gen=gen, scale=scale)
            for name, shape in net.param_shapes.items()}


def _rel(a: dict, b: dict) -> float:
    num = sum(((a[k] - b[k]) ** 2).sum() for k in a)
    den = sum((b[k] ** 2).sum() for k in b)
    return math.sqrt(float(num / den))


# ---------------------------------------------------------------------------- integrators
def test_integrators_share_sites_and_round_trip_config():
    nets = {name: brn.ResNet(2, 1, 4, 5, basis="cubic", integrator=name) for name in INTEGRATORS}
    params = _random_params(nets["euler"], seed=0)
    x = _randn(7, 2, gen=_gen(1))
    for name, net in nets.items():
        assert net.param_shapes == nets["euler"].param_shapes
        assert net.config()["integrator"] == name
        rebuilt = network_from_config(net.config())
        assert rebuilt.integrator == name
        torch.testing.assert_close(rebuilt.forward(params, x), net.forward(params, x))
        assert net.replace(out_dim=2).integrator == name
    assert brn.ResNet(2, 1, 4, 5).integrator == "euler"
    outputs = [nets[name].forward(params, x) for name in INTEGRATORS]
    assert not torch.allclose(outputs[0], outputs[2])


@pytest.mark.parametrize("bad", ["rk5", "Euler", "", None, 4])
def test_bad_integrator_raises_listing_valid_names(bad):
    with pytest.raises(ValueError, match="integrator") as info:
        brn.ResNet(1, 1, 2, 3, integrator=bad)
    assert all(name in str(info.value) for name in INTEGRATORS)


@pytest.mark.parametrize("integrator", INTEGRATORS)
@pytest.mark.parametrize("basis", ["piecewise", "linear"])
def test_batched_forward_equals_loop(integrator, basis):
    net = brn.ResNet(2, 3, 4, 6, basis=basis, integrator=integrator)
    params = _random_params(net, seed=3, sample_shape=(3, 5), scale=0.7)
    x = _randn(9, 2, gen=_gen(4))
    out = net.forward(params, x)
    assert out.shape == (3, 5, 9, 3)
    states = net.hidden_states(params, x)
    assert len(states) == net.depth + 1
    for i in range(3):
        for j in range(5):
            single = {k: v[i, j] for k, v in params.items()}
            torch.testing.assert_close(out[i, j], net.forward(single, x), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(states[-1][i, j], net.hidden_states(single, x)[-1],
                                       rtol=1e-12, atol=1e-12)


def _cubic_reference(params, x, horizon):
    """h(T) of dh/dt = tanh(W(t) h + b(t)), W(t) = sum_k (t/T)^k A_k, by DOP853 at 1e-12."""
    coef_w, coef_b = params["W_coef"].numpy(), params["b_coef"].numpy()
    h0 = (x @ params["input_weight"].T + params["input_bias"]).numpy()[0]

    def rhs(t, h):
        phi = (t / horizon) ** np.arange(coef_w.shape[0])
        weight = np.tensordot(phi, coef_w, axes=1)
        return np.tanh(weight @ h + phi @ coef_b)

    sol = solve_ivp(rhs, (0.0, horizon), h0, method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success
    return sol.y[:, -1]


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_convergence_order_against_scipy(integrator):
    horizon = 1.5
    template = brn.ResNet(2, 1, 3, 4, basis="cubic", horizon=horizon)
    params = _random_params(template, seed=1, scale=0.8)
    x = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    reference = _cubic_reference(params, x, horizon)
    depths = [4, 8, 16, 32]
    errors = []
    for depth in depths:
        net = brn.ResNet(2, 1, 3, depth, basis="cubic", horizon=horizon, integrator=integrator)
        h_final = net.hidden_states(params, x)[-1][0].numpy()
        errors.append(np.abs(h_final - reference).max())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 0), errors
    # Asymptotic regime: the finest pair of depths pins the order.
    assert abs(orders[-1] - ORDERS[integrator]) < 0.2, orders


@pytest.mark.parametrize("integrator", ["midpoint", "rk4"])
def test_piecewise_steps_use_the_layer_of_their_left_end(integrator):
    depth, dt = 5, 0.3
    net = brn.ResNet(1, 1, 3, depth, basis="piecewise", horizon=depth * dt,
                     integrator=integrator)
    params = _random_params(net, seed=5)
    x = _randn(4, 1, gen=_gen(6))
    h = x @ params["input_weight"].T + params["input_bias"]
    for n in range(depth):
        weight, bias = params["W_coef"][n], params["b_coef"][n]

        def f(state, weight=weight, bias=bias):
            return torch.tanh(state @ weight.T + bias)

        if integrator == "midpoint":
            h = h + dt * f(h + 0.5 * dt * f(h))
        else:
            k1 = f(h)
            k2 = f(h + 0.5 * dt * k1)
            k3 = f(h + 0.5 * dt * k2)
            k4 = f(h + dt * k3)
            h = h + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6
    torch.testing.assert_close(net.hidden_states(params, x)[-1], h, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("depth", [1, 2, 5, 40, 400])
def test_scalar_example_closed_forms(depth):
    w, x0, y0, horizon = -0.8, 1.3, 0.4, 2.0
    dt = horizon / depth
    net = brn.ResNet(1, 1, 1, depth, basis="constant", activation="identity", horizon=horizon)
    params = {
        "input_weight": torch.ones(1, 1, dtype=torch.float64),
        "input_bias": torch.zeros(1, dtype=torch.float64),
        "W_coef": torch.full((1, 1, 1), w, dtype=torch.float64),
        "b_coef": torch.zeros(1, 1, dtype=torch.float64),
        "output_weight": torch.ones(1, 1, dtype=torch.float64),
        "output_bias": torch.zeros(1, dtype=torch.float64),
    }
    x = torch.tensor([[x0]], dtype=torch.float64)
    y = torch.tensor([y0], dtype=torch.float64)
    growth = 1.0 + dt * w
    residual = 2.0 * (growth**depth * x0 - y0)
    backprop = ode.backprop_gradient(net, params, x, y)
    adjoint = ode.adjoint_gradient(net, params, x, y)
    assert backprop["W_coef"].item() == pytest.approx(
        residual * depth * dt * growth ** (depth - 1) * x0, rel=1e-12)
    assert adjoint["W_coef"].item() == pytest.approx(
        residual * depth * dt * growth**depth * x0, rel=1e-12)
    # The input layer is outside the ODE: a(0) = (1 + dt w)^L a(T) in both views.
    for grads in (backprop, adjoint):
        assert grads["input_weight"].item() == pytest.approx(residual * growth**depth * x0,
                                                             rel=1e-12)
    # Both tend to the continuous gradient 2 (e^{wT} x - y) T e^{wT} x, and to each other:
    # their ratio is exactly 1 + dt w.
    exact = 2.0 * (math.exp(w * horizon) * x0 - y0) * horizon * math.exp(w * horizon) * x0
    gap = abs(adjoint["W_coef"].item() - backprop["W_coef"].item())
    assert gap == pytest.approx(abs(w) * dt * abs(backprop["W_coef"].item()), rel=1e-9)
    if depth >= 40:
        assert abs(adjoint["W_coef"].item() - exact) < 2.0 * abs(exact) * abs(w) * dt * horizon
        assert abs(backprop["W_coef"].item() - exact) < 2.0 * abs(exact) * abs(w) * dt * horizon


def test_backprop_gradient_matches_finite_differences():
    net = brn.ResNet(2, 2, 3, 4, basis="linear", integrator="rk4")
    params = _random_params(net, seed=7, scale=0.6)
    x, y = _randn(5, 2, gen=_gen(8)), _randn(5, 2, gen=_gen(9))
    grads = ode.backprop_gradient(net, params, x, y)
    eps = 1e-6
    for name in ("W_coef", "input_weight", "output_bias"):
        flat = params[name].reshape(-1)
        for idx in (0, flat.numel() - 1):
            bumped = [dict(params), dict(params)]
            for sign, p in zip((1.0, -1.0), bumped, strict=True):
                value = flat.clone()
                value[idx] += sign * eps
                p[name] = value.reshape(params[name].shape)
            fd = (ode.squared_error(net, bumped[0], x, y)
                  - ode.squared_error(net, bumped[1], x, y)) / (2 * eps)
            assert grads[name].reshape(-1)[idx].item() == pytest.approx(fd.item(), rel=1e-6,
                                                                        abs=1e-8)


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_adjoint_converges_to_backprop_at_the_integrator_order(integrator):
    template = brn.ResNet(2, 1, 3, 4, basis="cubic")
    params = _random_params(template, seed=11, scale=0.8)
    x, y = _randn(6, 2, gen=_gen(12)), _randn(6, gen=_gen(13))
    gaps = []
    for depth in (8, 16, 32):
        net = brn.ResNet(2, 1, 3, depth, basis="cubic", integrator=integrator)
        grads_adj = ode.adjoint_gradient(net, params, x, y)
        grads_bp = ode.backprop_gradient(net, params, x, y)
        assert list(grads_adj) == list(net.param_shapes)
        for name, shape in net.param_shapes.items():
            assert grads_adj[name].shape == shape
        gaps.append(_rel(grads_adj, grads_bp))
    orders = np.log2(np.array(gaps[:-1]) / np.array(gaps[1:]))
    # The gap is O(dt^p); higher-order terms can make the observed order a bit larger.
    assert np.all(orders > ORDERS[integrator] - 0.3), (gaps, orders)
    assert gaps[-1] < 2.0 ** (-5 * ORDERS[integrator] + 2)


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_adjoint_with_piecewise_layers_pairs_each_step_with_its_own_layer(integrator):
    # Independent random layers: a step that borrowed its neighbour's weights would be off by
    # O(1) per layer (measured: 17% for Euler, 4% for RK4 at depth 64), the right pairing by
    # O(dt^p) (1.8% and 2e-8).
    depth = 64
    net = brn.ResNet(2, 1, 4, depth, integrator=integrator)
    params = _random_params(net, seed=14)
    x, y = _randn(6, 2, gen=_gen(15)), _randn(6, gen=_gen(16))
    grads_adj = ode.adjoint_gradient(net, params, x, y)
    grads_bp = ode.backprop_gradient(net, params, x, y)
    rel = (grads_adj["W_coef"] - grads_bp["W_coef"]).norm() / grads_bp["W_coef"].norm()
    assert rel < {"euler": 0.05, "rk4": 1e-6}[integrator]


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_gradients_batched_over_draws_equal_a_loop(integrator):
    net = brn.ResNet(1, 2, 3, 4, basis="linear", integrator=integrator)
    params = _random_params(net, seed=17, sample_shape=(2, 3), scale=0.7)
    x, y = _randn(5, 1, gen=_gen(18)), _randn(5, 2, gen=_gen(19))
    for fn in (ode.adjoint_gradient, ode.backprop_gradient):
        batched = fn(net, params, x, y)
        for i in range(2):
            for j in range(3):
                single = fn(net, {k: v[i, j] for k, v in params.items()}, x, y)
                for name in net.param_shapes:
                    torch.testing.assert_close(batched[name][i, j], single[name],
                                               rtol=1e-12, atol=1e-12)


def test_gradient_functions_reject_bad_input():
    net = brn.ResNet(1, 1, 2, 3)
    params = net.init_params(_gen(0))
    x = torch.zeros(4, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="y must have shape"):
        ode.adjoint_gradient(net, params, x, torch.zeros(3))
    with pytest.raises(ValueError, match="ResNet"):
        ode.backprop_gradient(brn.MLP(1, 1, 2, 3), params, x, torch.zeros(4))
    with pytest.raises(ValueError, match="missing sites"):
        ode.adjoint_gradient(net, {"W_coef": params["W_coef"]}, x, torch.zeros(4))
    bad = dict(params, b_coef=torch.zeros(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="b_coef"):
        ode.stiffness(net, bad, x)


# ---------------------------------------------------------------------------- stiffness
def test_stiffness_of_a_linear_field_is_exact():
    # W(t) = P diag(d0 + (t/T) d1) P^{-1} (Linear basis, identity activation): J_n = W(t_n) has
    # eigenvalues d0 + (t_n/T) d1. Two draws; the second has a complex pair a +- ib.
    width, depth, horizon = 3, 4, 2.0
    dt = horizon / depth
    net = brn.ResNet(2, 1, width, depth, basis="linear", activation="identity", horizon=horizon)
    gen = _gen(20)
    basis_change = torch.eye(width, dtype=torch.float64) + _randn(width, width, gen=gen,
                                                                  scale=0.3)
    inverse = torch.linalg.inv(basis_change)
    d0 = torch.tensor([-8.0, -1.0, -0.1], dtype=torch.float64)
    d1 = torch.tensor([4.0, 0.5, -0.2], dtype=torch.float64)
    rotation = torch.tensor([[-0.5, -3.0, 0.0], [3.0, -0.5, 0.0], [0.0, 0.0, -0.05]],
                            dtype=torch.float64)
    coef_w = torch.stack([
        torch.stack([basis_change @ torch.diag(d0) @ inverse,
                     basis_change @ torch.diag(d1) @ inverse]),
        torch.stack([basis_change @ rotation @ inverse, torch.zeros(width, width,
                                                                    dtype=torch.float64)]),
    ])
    params = _random_params(net, seed=21, sample_shape=(2,))
    params["W_coef"] = coef_w
    x = _randn(5, 2, gen=_gen(22))
    result = ode.stiffness(net, params, x)
    assert result.eigenvalues.shape == (2, 5, depth, width)
    assert result.eigenvalues.is_complex()
    for field in ("ratio", "euler_stability", "amplification"):
        assert getattr(result, field).shape == (2, 5, depth)

    times = torch.arange(depth, dtype=torch.float64) * dt
    expected = [
        (d0 + (times / horizon).unsqueeze(-1) * d1).to(torch.complex128),
        torch.tensor([-0.5 - 3.0j, -0.5 + 3.0j, -0.05 + 0j],
                     dtype=torch.complex128).expand(depth, 3),
    ]
    for draw in range(2):
        eig = expected[draw]
        order = torch.argsort(eig.real, dim=-1, stable=True)
        eig = torch.gather(eig, -1, order)
        torch.testing.assert_close(result.eigenvalues[draw],
                                   eig.expand(5, depth, width), rtol=1e-10, atol=1e-10)
        real = eig.real.abs()
        torch.testing.assert_close(result.ratio[draw],
                                   (real.amax(-1) / real.amin(-1)).expand(5, depth))
        torch.testing.assert_close(result.euler_stability[draw],
                                   (dt * eig.abs().amax(-1)).expand(5, depth))
        torch.testing.assert_close(result.amplification[draw],
                                   (1 + dt * eig).abs().amax(-1).expand(5, depth))
    # Spot values: at t = 0 the first draw has ratio 8 / 0.1 and dt max|lambda| = 0.5 * 8.
    assert result.ratio[0, 0, 0].item() == pytest.approx(80.0)
    assert result.euler_stability[0, 0, 0].item() == pytest.approx(4.0)
    assert result.ratio[1, 0, 0].item() == pytest.approx(10.0)


def _autograd_jacobians(net, params, x):
    """J_n(x_i) by autograd of the vector field at each trajectory state: (N, L, width, width)."""
    states = net.hidden_states(params, x)
    weights, biases = net.layer_weights(params)
    jac = torch.empty(x.shape[0], net.depth, net.width, net.width, dtype=torch.float64)
    for n in range(net.depth):
        for i in range(x.shape[0]):
            jac[i, n] = torch.autograd.functional.jacobian(
                lambda h, n=n: net.vector_field(h.unsqueeze(0), weights[n], biases[n])[0],
                states[n][i])
    return jac


@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_stiffness_and_penalty_match_autograd_jacobians(activation):
    net = brn.ResNet(2, 1, 4, 3, basis="cubic", activation=activation, integrator="midpoint")
    params = _random_params(net, seed=23)
    x = _randn(3, 2, gen=_gen(24))
    jac = _autograd_jacobians(net, params, x)
    eig = torch.linalg.eigvals(jac)
    result = ode.stiffness(net, params, x)
    # Compare as sorted multisets (sorting by real part, then imaginary part).
    key = lambda v: np.lexsort((v.imag.numpy(), v.real.numpy()), axis=-1)  # noqa: E731
    for i in range(3):
        for n in range(net.depth):
            ours = result.eigenvalues[i, n].numpy()
            ref = eig[i, n].numpy()
            np.testing.assert_allclose(ours[key(result.eigenvalues[i, n])],
                                       ref[key(eig[i, n])], rtol=1e-10, atol=1e-10)
    expected = net.dt * (jac**2).sum((-2, -1)).sum(-1).mean(-1)
    torch.testing.assert_close(ode.jacobian_penalty(net, params, x), expected)


def test_stiffness_batched_over_posterior_draws():
    net = brn.ResNet(1, 1, 3, 4, basis="linear")
    params = _random_params(net, seed=25, sample_shape=(3, 5))
    x = _randn(6, 1, gen=_gen(26))
    result = ode.stiffness(net, params, x)
    assert result.eigenvalues.shape == (3, 5, 6, 4, 3)
    single = ode.stiffness(net, {k: v[2, 1] for k, v in params.items()}, x)
    for field in result._fields:
        torch.testing.assert_close(getattr(result, field)[2, 1], getattr(single, field))


def test_jacobian_penalty_is_differentiable_and_batched():
    net = brn.ResNet(1, 1, 3, 4, basis="linear", integrator="rk4")
    params = _random_params(net, seed=27, sample_shape=(3, 5), scale=0.5)
    x = _randn(6, 1, gen=_gen(28))
    penalty = ode.jacobian_penalty(net, params, x)
    assert penalty.shape == (3, 5)
    assert (penalty >= 0).all()
    torch.testing.assert_close(
        penalty[1, 4], ode.jacobian_penalty(net, {k: v[1, 4] for k, v in params.items()}, x))
    names = list(net.param_shapes)
    single = [params[k][0, 0].clone().requires_grad_(True) for k in names]

    def penalty_of(*values):
        return ode.jacobian_penalty(net, dict(zip(names, values, strict=True)), x)

    assert torch.autograd.gradcheck(penalty_of, single)


def test_jacobian_penalty_converges_with_depth():
    template = brn.ResNet(1, 1, 3, 4, basis="cubic")
    params = _random_params(template, seed=29, scale=0.7)
    x = _randn(4, 1, gen=_gen(30))
    values = [ode.jacobian_penalty(brn.ResNet(1, 1, 3, depth, basis="cubic"), params, x).item()
              for depth in (16, 32, 64)]
    # A Riemann sum of a smooth integral: first-order differences shrink by about half.
    assert abs(values[2] - values[1]) < 0.6 * abs(values[1] - values[0])
    assert abs(values[2] - values[1]) < 0.05 * values[2]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_derivatives_match_autograd(activation):
    z = torch.linspace(-3.0, 3.0, 41, dtype=torch.float64).add(0.01).requires_grad_(True)
    (auto,) = torch.autograd.grad(ACTIVATIONS[activation](z).sum(), z)
    torch.testing.assert_close(ode.activation_derivative(activation, z.detach()), auto)
    with pytest.raises(ValueError, match="no derivative"):
        ode.activation_derivative("softplus", z)
