"""Low-rank hidden weights W(t) = U(t) V(t)^T (ResNet(rank=...)): forward, sites, ODE view,
every inference method, the file format."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

import bayesresnet as brn
from bayesresnet import ode
from bayesresnet.convert import site_dims
from bayesresnet.fileformat import PosteriorFileError
from bayesresnet.resnet import INTEGRATORS, network_from_config


def _params(net, seed, sample_shape=()):
    gen = torch.Generator().manual_seed(seed)
    return {name: 0.6 * torch.randn(*sample_shape, *shape, generator=gen, dtype=torch.float64)
            for name, shape in net.param_shapes.items()}


def _x(n, in_dim, seed):
    return torch.randn(n, in_dim, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _explicit_euler(net, params, x):
    """The Euler network written out layer by layer, with W_n = U(t_n) V(t_n)^T formed here
    from the basis values: one draw, no batching, no fast path."""
    phi = net.basis.matrix(torch.arange(net.depth, dtype=torch.float64) * net.dt, net.depth,
                           net.horizon)
    act = brn.resnet.ACTIVATIONS[net.activation]
    h = x @ params["input_weight"].T + params["input_bias"]
    for n in range(net.depth):
        u = sum(phi[n, k] * params["U_coef"][k] for k in range(net.num_basis))
        v = sum(phi[n, k] * params["V_coef"][k] for k in range(net.num_basis))
        b = sum(phi[n, k] * params["b_coef"][k] for k in range(net.num_basis))
        h = h + net.dt * act(h @ (u @ v.T).T + b)
    return h @ params["output_weight"].T + params["output_bias"]


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_forward_equals_the_explicit_product_u_v_transposed(activation):
    # A cubic basis: W(t) = U(t) V(t)^T is of degree 6 in t, not in the span of the basis, so
    # summing phi_k U_k V_k^T (or using V U^T) gives a different network.
    net = brn.ResNet(2, 3, 5, 6, basis="cubic", activation=activation, rank=2)
    params = _params(net, seed=0, sample_shape=(2, 3))
    x = _x(7, 2, seed=1)
    out = net(params, x)
    assert out.shape == (2, 3, 7, 3)
    for i in range(2):
        for j in range(3):
            one = {k: v[i, j] for k, v in params.items()}
            torch.testing.assert_close(out[i, j], _explicit_euler(net, one, x),
                                       rtol=1e-12, atol=1e-12)
    # The trajectory (used by the ODE tools) ends where the fast forward does.
    torch.testing.assert_close(net.readout(params, net.hidden_states(params, x)[-1]), out,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_piecewise_low_rank_net_is_the_dense_net_with_w_equal_u_v_transposed(integrator):
    # With the Piecewise basis layer n's W_n = U_n V_n^T is a dense coefficient of the same
    # basis, so the dense network with W_coef = U V^T is the same function for every scheme.
    low = brn.ResNet(3, 2, 4, 5, rank=1, integrator=integrator)
    dense = low.replace(rank=None)
    params = _params(low, seed=2, sample_shape=(4,))
    dense_params = {k: v for k, v in params.items() if k not in ("U_coef", "V_coef")}
    dense_params["W_coef"] = params["U_coef"] @ params["V_coef"].transpose(-1, -2)
    x = _x(6, 3, seed=3)
    torch.testing.assert_close(low(params, x), dense(dense_params, x), rtol=1e-12, atol=1e-12)
    weights, _ = low.layer_weights(params)
    u, v = low.layer_factors(params)
    assert u.shape == v.shape == (4, 5, 4, 1)
    torch.testing.assert_close(weights, dense_params["W_coef"])
    torch.testing.assert_close(weights, u @ v.transpose(-1, -2))


def test_sites_and_parameter_count():
    net = brn.ResNet(3, 2, 6, 8, basis="cubic", rank=2)
    k = net.num_basis
    assert list(net.param_shapes) == ["input_weight", "input_bias", "U_coef", "V_coef",
                                      "b_coef", "output_weight", "output_bias"]
    assert net.param_shapes["U_coef"] == net.param_shapes["V_coef"] == (k, 6, 2)
    hidden = 2 * k * 6 * 2
    assert net.num_params == 6 * 3 + 6 + hidden + k * 6 + 2 * 6 + 2
    dense = net.replace(rank=None)
    assert dense.num_params - net.num_params == k * 6 * 6 - hidden
    model = brn.BayesianResNet(net)
    assert model.dim == net.num_params + 2  # one noise scale per output
    assert set(model.latent_shapes) >= {"U_coef", "V_coef"} and "W_coef" not in model.latent_shapes
    dims, coords = site_dims(model)
    assert dims["U_coef"] == ("basis", "hidden_out", "rank")
    assert dims["V_coef"] == ("basis", "hidden_in", "rank")
    assert list(coords["rank"]) == [0, 1]


@pytest.mark.parametrize("rank", [0, -1, 7, 2.0, True, "2", [2]])
def test_a_bad_rank_is_a_clear_value_error(rank):
    with pytest.raises(ValueError, match=r"rank must be None .* from 1 to width=6"):
        brn.ResNet(1, 1, 6, 3, rank=rank)
    config = brn.ResNet(1, 1, 6, 3, rank=2).config()
    with pytest.raises(ValueError, match="rank"):
        network_from_config({**config, "rank": rank})


def test_dense_networks_have_no_factors_and_old_configs_load():
    net = brn.ResNet(1, 1, 3, 2)
    with pytest.raises(ValueError, match="dense hidden weights"):
        net.layer_factors(_params(net, seed=4))
    config = net.config()
    assert config["rank"] is None
    del config["rank"]  # a config written before the option existed
    assert network_from_config(config).rank is None
    low = brn.ResNet(1, 1, 3, 2, rank=3)
    assert network_from_config(low.config()).config() == low.config()
    assert "rank=3" in repr(low)


def test_initialization_gives_w_the_dense_glorot_variance():
    # Each entry of U V^T has variance r s^2 s^2 with s^2 the factors' entry variance; the
    # factors are scaled so that this is 1 / width, the Glorot variance of a dense W (Glorot
    # factors of shape (width, r) would give r (2 / (width + r))^2, 0.4 of it here).
    # 24 draws of a (4, 64, 64) W: the variance estimate's relative standard deviation,
    # measured over 100 repetitions, is 0.6%, so 3% is five of them.
    net = brn.ResNet(1, 1, 64, 4, basis="cubic", rank=8)
    values = []
    for seed in range(24):
        params = net.init_params(torch.Generator().manual_seed(seed))
        values.append(params["U_coef"] @ params["V_coef"].transpose(-1, -2))
    variance = torch.stack(values).var().item()
    assert variance == pytest.approx(1.0 / 64, rel=0.03)


def test_adjoint_gradient_of_factors_is_the_chain_rule_of_the_dense_one():
    # Piecewise basis: the low-rank net is the dense net at W_n = U_n V_n^T, whose adjoint
    # W-gradient G_n gives G_n V_n for U_n and G_n^T U_n for V_n.
    low = brn.ResNet(2, 1, 4, 5, rank=2, integrator="midpoint")
    params = _params(low, seed=5)
    dense_params = {k: v for k, v in params.items() if k not in ("U_coef", "V_coef")}
    dense_params["W_coef"] = params["U_coef"] @ params["V_coef"].transpose(-1, -2)
    x, y = _x(6, 2, seed=6), torch.randn(6, generator=torch.Generator().manual_seed(7),
                                          dtype=torch.float64)
    grads = ode.adjoint_gradient(low, params, x, y)
    dense = ode.adjoint_gradient(low.replace(rank=None), dense_params, x, y)
    assert list(grads) == list(low.param_shapes)
    torch.testing.assert_close(grads["U_coef"], dense["W_coef"] @ params["V_coef"])
    torch.testing.assert_close(grads["V_coef"],
                               dense["W_coef"].transpose(-1, -2) @ params["U_coef"])
    torch.testing.assert_close(grads["b_coef"], dense["b_coef"])
    # And backprop through the low-rank forward differs from it by O(dt) only.
    backprop = ode.backprop_gradient(low, params, x, y)
    rel = (grads["U_coef"] - backprop["U_coef"]).norm() / backprop["U_coef"].norm()
    assert rel < 0.5


@pytest.fixture(scope="module")
def cubic_data():
    return brn.data.cubic(16, seed=0)


@pytest.mark.parametrize("method", [
    brn.MAP(steps=40),
    brn.MeanField(steps=40, num_draws=20),
    brn.Ensemble(members=2, steps=40),
    brn.NUTS(num_samples=6, num_warmup=6, chains=2, max_tree_depth=3, init_steps=20),
], ids=lambda m: m.name)
def test_every_method_runs_on_a_low_rank_net(method, cubic_data):
    x, y = cubic_data
    net = brn.ResNet(1, 1, 4, 3, basis="linear", rank=1)
    post = brn.fit(brn.BayesianResNet(net), x, y, method=method, seed=0, progress=False,
                   check=False)
    chains, draws = post.num_chains, post.num_draws
    assert post.draws["U_coef"].shape == (chains, draws, 2, 4, 1)
    assert post.draws["V_coef"].shape == (chains, draws, 2, 4, 1)
    pred = post.predict(x)
    assert np.isfinite(pred.mean).all() and np.isfinite(pred.std).all()
    # The batched density the samplers use is the Pyro model's (through the low-rank forward).
    values = {k: v[0, :2] for k, v in post.draws.items()}
    x_std = post.x_scaler.transform(torch.as_tensor(x))
    y_std = post.y_scaler.transform(torch.as_tensor(y).reshape(-1, 1))
    import pyro.poutine as poutine

    trace = poutine.trace(poutine.condition(post.model, {k: v[0] for k, v in values.items()})
                          ).get_trace(x_std, y_std)
    assert post.model.log_joint(values, x_std, y_std)[0].item() == pytest.approx(
        trace.log_prob_sum().item(), rel=1e-10)


def test_save_load_round_trip_and_load_validation(cubic_data, tmp_path):
    x, y = cubic_data
    net = brn.ResNet(1, 1, 4, 3, basis="linear", rank=2)
    post = brn.fit(brn.BayesianResNet(net), x, y, method=brn.Ensemble(members=2, steps=30),
                   seed=0, progress=False, check=False)
    path = tmp_path / "run.nc"
    post.save(path)
    back = brn.load(path)
    assert back.model.user_net.rank == 2
    assert back.model.net.config() == post.model.net.config()
    for name, value in post.draws.items():
        torch.testing.assert_close(back.draws[name], value, rtol=0, atol=0)
    np.testing.assert_array_equal(back.predict(x).mean, post.predict(x).mean)

    def with_rank(rank, name):
        target = tmp_path / name
        target.write_bytes(path.read_bytes())
        with h5py.File(target, "a") as handle:
            model = json.loads(handle.attrs["bayesresnet_model"])
            model["net"]["rank"] = rank
            handle.attrs["bayesresnet_model"] = json.dumps(model)
        return target

    with pytest.raises(PosteriorFileError, match="rank must be"):
        brn.load(with_rank(0, "zero.nc"))
    with pytest.raises(PosteriorFileError, match="rank must be"):
        brn.load(with_rank("2", "text.nc"))
    # A valid rank that does not match the stored draws: the sites differ.
    with pytest.raises(PosteriorFileError):
        brn.load(with_rank(1, "other.nc"))
    assert math.isfinite(float(back.predict(x).mean.sum()))
