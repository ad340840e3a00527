"""Deep ensembles and MAP: the batched optimizer, batching correctness, and the methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bayesresnet as brn
from bayesresnet.data import Standardizer, cubic
from bayesresnet.inference.base import seeded_generator
from bayesresnet.inference.ensemble import (
    MAP,
    Ensemble,
    anchor_draws,
    default_batch_size,
    initial_points,
    train_members,
)
from bayesresnet.inference.optim import adam_maximize, map_objective
from bayesresnet.ode import jacobian_penalty

STEPS = 150
MEMBERS = 4


def _standardized(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x_t = torch.as_tensor(x, dtype=torch.float64)
    y_t = torch.as_tensor(y, dtype=torch.float64).reshape(len(x), -1)
    return Standardizer().fit(x_t).transform(x_t), Standardizer().fit(y_t).transform(y_t)


@pytest.fixture(scope="module")
def toy():
    x, y = _standardized(*cubic(20, seed=0))
    net = brn.ResNet(1, 1, width=10, depth=8, basis=brn.Linear())
    return brn.BayesianResNet(net), x, y


@pytest.fixture(scope="module")
def small_toy():
    x, y = _standardized(*cubic(20, seed=0))
    net = brn.ResNet(1, 1, width=6, depth=4, basis=brn.Linear())
    return brn.BayesianResNet(net), x, y


@pytest.fixture(scope="module")
def runs(toy):
    model, x, y = toy

    def run(seed: int, **settings):
        method = Ensemble(members=MEMBERS, steps=STEPS, **settings)
        return method.run(model, x, y, seed, progress=False)

    return {
        "a": run(0),
        "a_again": run(0),
        "b": run(1),
        "anchored": run(0, anchored=True),
        "minibatch": run(0, batch_size=5),
    }


def _grad_norm(objective, z: torch.Tensor) -> torch.Tensor:
    z = z.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(z, None).sum(), z)
    return grad.norm(dim=-1)


# ---------------------------------------------------------------- optimizer on a closed form
def test_adam_maximize_finds_conjugate_linear_regression_modes():
    # C = 3 Bayesian linear regressions y_c = X w_c + N(0, s^2), w_c ~ N(0, a^2 I), each with
    # its own data, solved as one batched program. The posterior mode is
    # (X'X / s^2 + I / a^2)^{-1} X'y_c / s^2.
    g = torch.Generator().manual_seed(0)
    n, d, c, s, a = 30, 4, 3, 0.5, 2.0
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = w_true @ x.T + s * torch.randn(c, n, generator=g, dtype=torch.float64)

    def objective(z, batch):
        assert batch is None
        return -0.5 * ((y - z @ x.T) ** 2).sum(-1) / s**2 - 0.5 * (z**2).sum(-1) / a**2

    precision = x.T @ x / s**2 + torch.eye(d, dtype=torch.float64) / a**2
    mode = torch.linalg.solve(precision, (y @ x / s**2).T).T
    z0 = 3.0 * torch.randn(c, d, generator=g, dtype=torch.float64)
    z, history = adam_maximize(objective, z0, 1000, 0.1)
    assert history.shape == (1000, c)
    # Strongly convex quadratic: Adam with the decayed schedule lands within 1e-8 of the mode.
    torch.testing.assert_close(z, mode, atol=1e-6, rtol=0)
    assert (history[-1] <= objective(mode, None) + 1e-9).all()
    assert (history[-1] > history[0]).all()


def test_map_objective_minibatches_are_unbiased(toy):
    # The rescaled likelihood of the batches of a partition averages to the full-data one.
    model, x, y = toy
    objective = map_objective(model, x, y)
    z = initial_points(model, seeded_generator(3), 2)
    full = objective(z, None)
    parts = torch.randperm(20, generator=seeded_generator(4)).reshape(4, 5)
    average = torch.stack([objective(z, part) for part in parts]).mean(0)
    torch.testing.assert_close(average, full, atol=1e-10, rtol=1e-12)
    torch.testing.assert_close(objective(z, torch.arange(20)), full, atol=1e-10, rtol=1e-12)


# ---------------------------------------------------------------- batching is exact
def test_members_trained_together_equal_members_trained_alone(toy):
    model, x, y = toy
    z0 = initial_points(model, seeded_generator(1), 3)
    together, history, final = train_members(model, x, y, z0, steps=100, lr=0.01)
    for m in range(3):
        alone, history_m, final_m = train_members(model, x, y, z0[m:m + 1], steps=100, lr=0.01)
        assert (alone[0] - z0[m]).abs().max() > 0.1  # it did move
        torch.testing.assert_close(alone[0], together[m], atol=1e-10, rtol=0)
        torch.testing.assert_close(history_m[:, 0], history[:, m], atol=1e-9, rtol=1e-12)
        torch.testing.assert_close(final_m[0], final[m], atol=1e-9, rtol=1e-12)


def test_anchored_members_trained_together_equal_members_trained_alone(toy):
    model, x, y = toy
    z0 = initial_points(model, seeded_generator(2), 2)
    anchor = anchor_draws(model, 5, 2)
    together, _, _ = train_members(model, x, y, z0, steps=60, lr=0.01, anchor=anchor)
    for m in range(2):
        own = {k: v[m:m + 1] for k, v in anchor.items()}
        alone, _, _ = train_members(model, x, y, z0[m:m + 1], steps=60, lr=0.01, anchor=own)
        torch.testing.assert_close(alone[0], together[m], atol=1e-10, rtol=0)


# ---------------------------------------------------------------- MAP
def test_map_beats_random_starts_and_ends_near_a_stationary_point(small_toy):
    model, x, y = small_toy
    result = MAP(steps=1000, lr=0.03).run(model, x, y, 0, progress=False)
    for name, shape in model.latent_shapes.items():
        assert tuple(result.draws[name].shape) == (1, 1, *shape)
    values = {k: v[0] for k, v in result.draws.items()}
    map_log_joint = model.log_joint(values, x, y)
    torch.testing.assert_close(torch.as_tensor(result.stats["log_joint"]),
                               map_log_joint.unsqueeze(0))
    # Many random points: the optimizer's own initializations and draws from the prior.
    starts = initial_points(model, seeded_generator(11), 300)
    prior = model.unconstrain(model.sample_prior(12, (300,)))
    random_points = torch.cat([starts, prior])
    random_log_joint = model.log_joint(model.constrain(random_points)[0], x, y)
    assert map_log_joint.item() >= random_log_joint.max().item()

    objective = map_objective(model, x, y)
    end = _grad_norm(objective, model.unconstrain(values))
    start = _grad_norm(objective, starts).median()
    # The Adam iterate jitters at the final learning rate, so its gradient is not zero, but it
    # is two orders of magnitude below a typical starting gradient (measured: ~0.6 vs ~200).
    assert end.item() < 1e-2 * start.item()
    torch.testing.assert_close(torch.as_tensor(result.stats["final_loss"]),
                               -objective(model.unconstrain(values), None).detach())


def test_map_equals_an_ensemble_of_one(toy):
    model, x, y = toy
    single = MAP(steps=30).run(model, x, y, 7, progress=False)
    ensemble = Ensemble(members=1, steps=30, noise="map").run(model, x, y, 7, progress=False)
    for name in model.latent_sites:
        torch.testing.assert_close(single.draws[name], ensemble.draws[name], atol=0, rtol=0)
    assert MAP().config() == {"name": "map", "steps": 3000, "lr": 0.01, "batch_size": None,
                              "stiffness_penalty": 0.0}


# ---------------------------------------------------------------- Ensemble
def test_ensemble_draws_and_stats(toy, runs):
    model, x, y = toy
    result = runs["a"]
    for name, shape in model.latent_shapes.items():
        assert tuple(result.draws[name].shape) == (1, MEMBERS, *shape)
    assert result.stats["loss"].shape == (STEPS, MEMBERS)
    assert result.stats["final_loss"].shape == (MEMBERS,)
    assert result.stats["log_joint"].shape == (1, MEMBERS)
    assert (result.stats["final_loss"] < result.stats["loss"][0]).all()
    assert np.isfinite(result.stats["loss"]).all()
    values = {k: v[0] for k, v in result.draws.items()}
    np.testing.assert_allclose(result.stats["log_joint"][0],
                               model.log_joint(values, x, y).numpy(), rtol=1e-12)
    # Unanchored and unpenalized: the final loss is the negative log joint at the trained
    # point, whose noise is the members' MAP noise (the draws hold a draw of its posterior).
    at_map = {**values, "noise": torch.as_tensor(result.stats["map_noise"])}
    np.testing.assert_allclose(result.stats["final_loss"],
                               -model.log_joint(at_map, x, y).numpy(), rtol=1e-12)
    assert result.extra["batch_size"] == 20


def test_ensemble_members_are_distinct(toy, runs):
    model, _, _ = toy
    values = {k: v[0] for k, v in runs["a"].draws.items()}
    grid = torch.linspace(-2.5, 2.5, 51, dtype=torch.float64).unsqueeze(-1)
    loc, _ = model.loc_scale(values, grid)
    spread = loc.std(0)
    assert spread.min() > 1e-3
    assert spread.mean() > 0.02


def test_ensemble_is_reproducible_from_the_seed(toy, runs):
    model, _, _ = toy
    for name in model.latent_sites:
        assert torch.equal(runs["a"].draws[name], runs["a_again"].draws[name])
    np.testing.assert_array_equal(runs["a"].stats["loss"], runs["a_again"].stats["loss"])
    assert not torch.allclose(runs["a"].draws["W_coef"], runs["b"].draws["W_coef"])


def test_ensemble_leaves_the_global_rng_alone(toy):
    model, x, y = toy
    state = torch.get_rng_state()
    Ensemble(members=2, steps=5, anchored=True, batch_size=4).run(model, x, y, 0, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_anchored_ensemble_differs_from_plain_one(runs):
    plain, anchored = runs["a"], runs["anchored"]
    # Same seed, so the same initializations; only the anchoring differs.
    assert (plain.draws["W_coef"] - anchored.draws["W_coef"]).abs().max() > 1e-2
    # The final loss is the anchored objective, not the log joint.
    assert np.abs(anchored.stats["final_loss"] + anchored.stats["log_joint"][0]).min() > 1e-6
    assert np.isfinite(anchored.stats["log_joint"]).all()


def test_anchors_cover_normal_sites_only(toy):
    model, _, _ = toy
    anchor = anchor_draws(model, 0, 3)
    assert set(anchor) == set(model.latent_sites) - {"noise"}
    for name, value in anchor.items():
        assert tuple(value.shape) == (3, *model.latent_shapes[name])
    hierarchical = brn.BayesianResNet(model.net, prior=brn.priors.Hierarchical())
    anchor = anchor_draws(hierarchical, 0, 2)
    assert anchor and all(name.endswith("_raw") for name in anchor)
    assert set(anchor) == {n for n in hierarchical.latent_sites if n.endswith("_raw")}


def test_minibatch_training_decreases_the_loss(toy, runs):
    model, x, y = toy
    result = runs["minibatch"]
    assert result.extra["batch_size"] == 5
    z0 = initial_points(model, seeded_generator(0), MEMBERS)
    initial_loss = -map_objective(model, x, y)(z0, None).detach().numpy()
    assert (result.stats["final_loss"] < initial_loss - 10).all()
    # The minibatch stream differs from full batch, so the result does too.
    assert not torch.allclose(result.draws["W_coef"], runs["a"].draws["W_coef"])


def test_default_batch_size():
    assert default_batch_size(20) is None
    assert default_batch_size(1024) is None
    assert default_batch_size(1025) == 256


def test_progress_bar_runs(toy):
    model, x, y = toy
    result = Ensemble(members=2, steps=7).run(model, x, y, 0, progress=True)
    assert result.stats["loss"].shape == (7, 2)


# ---------------------------------------------------------------- stiffness penalty
def test_stiffness_penalty_is_applied(toy):
    model, x, y = toy
    weight = 5.0
    plain = Ensemble(members=2, steps=100).run(model, x, y, 0, progress=False)
    stiff = Ensemble(members=2, steps=100, stiffness_penalty=weight, noise="map").run(
        model, x, y, 0, progress=False)

    def penalty(result):
        values = {k: v[0] for k, v in result.draws.items()}
        return jacobian_penalty(model.net, model.net_params(values), x)

    assert (penalty(stiff) < penalty(plain)).all()
    expected = -(stiff.stats["log_joint"][0] - weight * penalty(stiff).detach().numpy())
    np.testing.assert_allclose(stiff.stats["final_loss"], expected, rtol=1e-10)


def test_stiffness_penalty_needs_a_resnet():
    mlp_model = brn.BayesianResNet(brn.MLP(1, 1, width=4, depth=2))
    with pytest.raises(ValueError, match="stiffness_penalty needs a ResNet"):
        Ensemble(stiffness_penalty=1.0).validate(mlp_model)
    with pytest.raises(ValueError, match="stiffness_penalty needs a ResNet"):
        MAP(stiffness_penalty=1.0).validate(mlp_model)
    Ensemble().validate(mlp_model)  # no penalty: an MLP is fine


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize(("settings", "name"), [
    ({"members": 0}, "members"),
    ({"members": 2.5}, "members"),
    ({"steps": 0}, "steps"),
    ({"steps": True}, "steps"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"stiffness_penalty": -1.0}, "stiffness_penalty"),
    ({"stiffness_penalty": float("inf")}, "stiffness_penalty"),
    ({"anchored": "yes"}, "anchored"),
])
def test_invalid_ensemble_settings(settings, name):
    with pytest.raises(ValueError, match=name):
        Ensemble(**settings)


@pytest.mark.parametrize(("settings", "name"), [
    ({"steps": -3}, "steps"),
    ({"lr": 0}, "lr"),
    ({"batch_size": -1}, "batch_size"),
    ({"stiffness_penalty": -0.5}, "stiffness_penalty"),
])
def test_invalid_map_settings(settings, name):
    with pytest.raises(ValueError, match=name):
        MAP(**settings)
