import math

import pytest
import torch

import bayesresnet as brn


def _random_params(net, seed, sample_shape=()):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*sample_shape, *s, generator=g, dtype=torch.float64) * 0.5
            for k, s in net.param_shapes.items()}


def _per_layer_resnet(weights, biases, params, x, dt, act):
    """An ordinary ResNet with one matrix per layer, written out by hand."""
    h = x @ params["input_weight"].T + params["input_bias"]
    for weight, bias in zip(weights, biases, strict=True):
        h = h + dt * act(h @ weight.T + bias)
    return h @ params["output_weight"].T + params["output_bias"]


@pytest.mark.parametrize("depth", [6, 8, 16])
def test_piecewise_is_one_matrix_per_layer_and_every_layer_gets_gradient(depth):
    net = brn.ResNet(3, 2, width=5, depth=depth, basis=brn.Piecewise(), horizon=2.0)
    params = _random_params(net, depth)
    x = torch.randn(7, 3, dtype=torch.float64)
    expected = _per_layer_resnet(params["W_coef"], params["b_coef"], params, x,
                                 2.0 / depth, torch.tanh)
    assert torch.allclose(net.forward(params, x), expected, atol=1e-12)

    coef = params["W_coef"].clone().requires_grad_(True)
    bias = params["b_coef"].clone().requires_grad_(True)
    net.forward({**params, "W_coef": coef, "b_coef": bias}, x).sum().backward()
    assert (coef.grad.abs().sum(dim=(1, 2)) > 0).all()
    assert (bias.grad.abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("basis", [brn.Cubic(), brn.Legendre(2), brn.Linear(), brn.Constant()])
@pytest.mark.parametrize("activation", ["tanh", "relu", "silu", "identity"])
def test_forward_is_euler_integration_of_the_ode(basis, activation):
    depth, horizon = 9, 1.7
    net = brn.ResNet(2, 1, width=4, depth=depth, basis=basis, activation=activation,
                     horizon=horizon)
    params = _random_params(net, 1)
    x = torch.randn(5, 2, dtype=torch.float64)
    act = {"tanh": torch.tanh, "relu": torch.relu, "silu": torch.nn.functional.silu,
           "identity": lambda z: z}[activation]
    degree = params["W_coef"].shape[0]

    def phi(t):  # written independently of bayesresnet.basis
        s = t / horizon
        if isinstance(basis, brn.Legendre):
            u = 2 * s - 1
            return [1.0, u, 1.5 * u * u - 0.5][:degree]
        return [s**k for k in range(degree)]

    def field(t, h):
        p = phi(t)
        weight = sum(pk * a for pk, a in zip(p, params["W_coef"], strict=True))
        bias = sum(pk * c for pk, c in zip(p, params["b_coef"], strict=True))
        return act(h @ weight.T + bias)

    dt = horizon / depth
    h = x @ params["input_weight"].T + params["input_bias"]
    for n in range(depth):
        h = h + dt * field(n * dt, h)
    expected = h @ params["output_weight"].T + params["output_bias"]
    assert torch.allclose(net.forward(params, x), expected, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: brn.ResNet(3, 2, width=4, depth=5, basis=brn.Cubic()),
    lambda: brn.ResNet(3, 2, width=4, depth=5, basis=brn.Piecewise(), activation="relu"),
    lambda: brn.MLP(3, 2, width=4, depth=3),
])
def test_batched_forward_equals_loop(make):
    net = make()
    params = _random_params(net, 2, (3, 5))
    x = torch.randn(6, 3, dtype=torch.float64)
    out = net.forward(params, x)
    assert out.shape == (3, 5, 6, 2)
    for i in range(3):
        for j in range(5):
            single = {k: v[i, j] for k, v in params.items()}
            assert torch.allclose(out[i, j], net.forward(single, x), atol=1e-13)


@pytest.mark.parametrize("activation", ["tanh", "silu"])
@pytest.mark.parametrize("sample_shape", [(), (4,), (2, 3)])
def test_forward_and_its_gradient_equal_the_plain_euler_trajectory(activation, sample_shape):
    """forward() runs feature-major, with tanh through sigmoid; hidden_states() is the plain
    Euler loop. Both give the same output and the same gradient, up to rounding."""
    net = brn.ResNet(3, 2, width=5, depth=6, basis=brn.Legendre(3), activation=activation,
                     horizon=1.3)
    params = {k: v.requires_grad_(True) for k, v in _random_params(net, 3, sample_shape).items()}
    x = torch.randn(7, 3, dtype=torch.float64)
    fast = net.forward(params, x)
    plain = net.readout(params, net.hidden_states(params, x)[-1])
    assert fast.shape == (*sample_shape, 7, 2)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-13)
    with torch.no_grad():  # the in-place path of predictive passes
        torch.testing.assert_close(net.forward(params, x), fast.detach(), rtol=0, atol=1e-14)
    weights = torch.randn(fast.shape, dtype=torch.float64)
    grads_fast = torch.autograd.grad((fast * weights).sum(), list(params.values()))
    grads_plain = torch.autograd.grad((plain * weights).sum(), list(params.values()))
    for name, a, b in zip(params, grads_fast, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


def test_forward_keeps_the_dtype_of_its_parameters():
    net = brn.ResNet(2, 1, width=3, depth=4, basis=brn.Linear())
    params = _random_params(net, 4, (5,))
    x = torch.randn(6, 2, dtype=torch.float64)
    single = net.forward({k: v.float() for k, v in params.items()}, x)
    double = net.forward(params, x)
    assert single.dtype == torch.float32 and double.dtype == torch.float64
    torch.testing.assert_close(single.double(), double, rtol=0, atol=1e-5)


def test_param_shapes_and_counts():
    net = brn.ResNet(3, 2, width=4, depth=5, basis=brn.Cubic())
    assert list(net.param_shapes) == ["input_weight", "input_bias", "W_coef", "b_coef",
                                      "output_weight", "output_bias"]
    assert net.param_shapes["W_coef"] == (4, 4, 4)
    assert net.num_params == 4 * 3 + 4 + 64 + 16 + 8 + 2
    params = net.init_params(torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape) for k, v in params.items()} == dict(net.param_shapes)
    again = net.init_params(torch.Generator().manual_seed(0))
    assert all(torch.equal(params[k], again[k]) for k in params)
    mlp = brn.MLP(3, 1, width=4, depth=2)
    assert mlp.num_params == 12 + 4 + 32 + 8 + 4 + 1
    assert brn.resnet.network_from_config(net.config()).config() == net.config()
    assert brn.resnet.network_from_config(mlp.config()).config() == mlp.config()


def test_mlp_matches_hand_written():
    net = brn.MLP(2, 1, width=3, depth=2, activation="relu")
    p = _random_params(net, 3)
    x = torch.randn(4, 2, dtype=torch.float64)
    h = torch.relu(x @ p["input_weight"].T + p["input_bias"])
    for n in range(2):
        h = torch.relu(h @ p["hidden_weight"][n].T + p["hidden_bias"][n])
    assert torch.allclose(net.forward(p, x), h @ p["output_weight"].T + p["output_bias"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=0), "width"), (dict(depth=0), "depth"), (dict(activation="gelu"), "activation"),
    (dict(in_dim=-1), "in_dim"), (dict(horizon=math.inf), "horizon"),
])
def test_bad_arguments(kwargs, match):
    args = dict(in_dim=2, out_dim=1, width=3, depth=2) | kwargs
    with pytest.raises(ValueError, match=match):
        brn.ResNet(**args)


def test_wrong_feature_count():
    net = brn.ResNet(2, 1, width=3, depth=2)
    params = net.init_params()
    with pytest.raises(ValueError, match="features"):
        net.forward(params, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="missing"):
        net.forward({"input_weight": params["input_weight"]}, torch.zeros(4, 2))


@pytest.mark.parametrize("lead_shape", [(6,), (6, 2)])
@pytest.mark.parametrize("event_shape", [(4,), (4, 4)])
@pytest.mark.parametrize("sample_shape", [(), (3,), (2, 3)])
def test_combine_basis_is_the_same_sum_eager_and_compiled(lead_shape, event_shape, sample_shape):
    """combine_basis writes the sum over K as einsum eagerly and as a broadcast product inside
    compiled code; both are sum_k phi[..., k] coef[..., k, *event], and so are their gradients."""
    from bayesresnet.inference.compilation import compile_fresh
    from bayesresnet.resnet import combine_basis

    g = torch.Generator().manual_seed(0)
    phi = torch.randn(*lead_shape, 3, generator=g, dtype=torch.float64)
    coef = torch.randn(*sample_shape, 3, *event_shape, generator=g, dtype=torch.float64)
    flat_phi = phi.reshape(-1, 3)
    expected = (coef.movedim(len(sample_shape), -1).unsqueeze(-2) * flat_phi).sum(-1)
    expected = expected.movedim(-1, len(sample_shape)).reshape(*sample_shape, *lead_shape,
                                                               *event_shape)
    cotangent = torch.randn(expected.shape, generator=g, dtype=torch.float64)

    def value_and_grad(coef):
        return torch.func.grad_and_value(
            lambda c: (combine_basis(phi, c, len(event_shape)) * cotangent).sum())(coef)

    eager_grad, eager_value = value_and_grad(coef)
    torch.testing.assert_close(combine_basis(phi, coef, len(event_shape)), expected)
    compiled_grad, compiled_value = compile_fresh(value_and_grad, fullgraph=True)(coef)
    torch.testing.assert_close(compiled_value, eager_value)
    torch.testing.assert_close(compiled_grad, eager_grad)
