"""Unit tests of the warmup parts: Welford estimates, the window schedule, dual averaging and
the window adapter stepped from outside."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from bayesresnet.inference import nuts_kernel as nk
from bayesresnet.inference.adaptation import run_warmup
from bayesresnet.inference.metric import (
    welford_covariance,
    welford_init,
    welford_inverse_mass,
    welford_update,
)
from bayesresnet.inference.warmup import (
    WarmupInfo,
    WindowAdaptation,
    dual_averaging_init,
    dual_averaging_step_size,
    dual_averaging_update,
    find_reasonable_step_size,
    warmup_schedule,
)

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------- Welford


@pytest.mark.parametrize("dense", [False, True])
def test_welford_against_np_cov(dense):
    gen = _gen(0)
    n_chains, n, d = 3, 37, 4
    x = 5.0 + torch.randn(n_chains, n, d, dtype=DT, generator=gen) @ torch.randn(
        d, d, dtype=DT, generator=gen)
    state = welford_init(x[:, 0], dense)
    for i in range(n):
        state = welford_update(state, x[:, i])
    assert state.count == n
    for c in range(n_chains):
        ref = np.cov(x[c].numpy(), rowvar=False)
        if not dense:
            ref = np.diag(ref)
        np.testing.assert_allclose(welford_covariance(state)[c].numpy(), ref, rtol=1e-11)
        np.testing.assert_allclose(state.mean[c].numpy(), x[c].mean(0).numpy(), rtol=1e-12)
        shrunk = n / (n + 5.0) * ref + 1e-3 * 5.0 / (n + 5.0) * (np.eye(d) if dense else 1.0)
        np.testing.assert_allclose(welford_inverse_mass(state)[c].numpy(), shrunk, rtol=1e-11)
    if dense:
        est = welford_inverse_mass(state)
        assert torch.equal(est, est.mT)


# ---------------------------------------------------------------------------- the schedule


def _stan_windows(num_warmup: int, init_buffer: int, term_buffer: int, base_window: int):
    """Transcription of the state machine of Stan's ``windowed_adaptation`` (counter, window
    size, next window end) run over every iteration; returns the slow windows it adapts in."""
    if num_warmup < 20:
        return []
    if init_buffer + base_window + term_buffer > num_warmup:
        init_buffer = int(0.15 * num_warmup)
        term_buffer = int(0.1 * num_warmup)
        base_window = num_warmup - (init_buffer + term_buffer)
    size = base_window
    next_end = init_buffer + size - 1
    windows, first = [], None
    for counter in range(num_warmup):
        in_window = init_buffer <= counter < num_warmup - term_buffer
        if in_window and first is None:
            first = counter
        if counter == next_end:  # end_adaptation_window()
            windows.append((first, counter + 1))
            first = None
            if next_end != num_warmup - term_buffer - 1:  # compute_next_window()
                size *= 2
                next_end = counter + size
                if next_end != num_warmup - term_buffer - 1 and \
                        next_end + 2 * size >= num_warmup - term_buffer:
                    next_end = num_warmup - term_buffer - 1
    return windows


def test_schedule_is_stans_published_schedule_for_1000_iterations():
    # Stan reference manual: 75 initial, windows of 25, 50, 100, 200, 500, terminal 50
    windows = warmup_schedule(1000)
    assert windows == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert [e - s for s, e in windows] == [25, 50, 100, 200, 500]
    assert warmup_schedule(1000, 75, 25, 50) == windows


@pytest.mark.parametrize(("init_buffer", "base_window", "term_buffer"),
                         [(75, 25, 50), (75, 25, 25), (10, 7, 3)])
def test_schedule_matches_stans_state_machine(init_buffer, base_window, term_buffer):
    for n in range(0, 1500):
        assert warmup_schedule(n, init_buffer, base_window, term_buffer) == \
            _stan_windows(n, init_buffer, term_buffer, base_window), n


# -------------------------------------------------------------------------- dual averaging


def test_dual_averaging_finds_the_step_size_of_a_known_acceptance_curve():
    """With acceptance exp(-eps) (decreasing in the step size) the averaged iterate approaches
    the step size whose acceptance is the target, -log(target), for every chain whatever
    its start (the shrinkage towards mu = log(10 eps0) fades like 1/sqrt(t)); a wrong sign
    in the update would run away from it."""
    for target in (0.6, 0.8, 0.95):
        state = dual_averaging_init(torch.tensor([1e-3, 0.3, 10.0], dtype=DT))
        errors = []
        for t in range(3000):
            state = dual_averaging_update(state, torch.exp(-state.step_size), target)
            if t in (299, 2999):
                errors.append((torch.exp(-dual_averaging_step_size(state)) - target).abs())
        assert (errors[1] < 0.01).all(), (target, errors)
        assert (errors[1] < errors[0]).all()


def test_dual_averaging_restart_state_and_first_update():
    eps0 = torch.tensor([0.5, 2.0], dtype=DT)
    state = dual_averaging_init(eps0)
    assert state.count == 0 and torch.equal(dual_averaging_step_size(state), eps0)
    assert torch.allclose(state.mu, torch.log(10 * eps0))
    # first update: h_bar = (target - a) / (1 + t0); log eps = mu - sqrt(1) / gamma * h_bar;
    # the average puts weight 1**-kappa = 1 on it
    new = dual_averaging_update(state, torch.tensor([0.9, 0.5], dtype=DT), 0.8)
    h = (0.8 - torch.tensor([0.9, 0.5], dtype=DT)) / 11.0
    assert torch.allclose(new.h_bar, h, rtol=1e-14)
    assert torch.allclose(new.step_size.log(), state.mu - h / 0.05, rtol=1e-14)
    assert torch.allclose(new.log_step_size_avg, new.step_size.log(), rtol=1e-14)


# ----------------------------------------------------------------------------- the adapter


def _problem(n_chains=4, d=3):
    scales = torch.tensor([0.1, 1.0, 5.0], dtype=DT)[:d]

    def logp(x):
        return -0.5 * ((x / scales) ** 2).sum(-1)

    x0 = torch.randn(n_chains, d, dtype=DT, generator=_gen(5)) * scales
    return logp, nk.init(x0, logp)


def _drive(adapter, logp, state, adapt, gen, iterations):
    """The loop of run_warmup, stepped from outside."""
    for _ in range(iterations):
        state, info = nk.step(state, logp, adapt.dual_averaging.step_size,
                              adapt.inverse_mass, gen, 6)
        adapt = adapter.update(adapt, WarmupInfo(state.position, info.accept_prob))
        if adapt.metric_updated:
            eps = find_reasonable_step_size(state, logp, adapt.inverse_mass, gen,
                                            adapt.dual_averaging.step_size)
            adapt = adapter.restart_step_size(adapt, eps)
    return state, adapt


@pytest.mark.parametrize("dense", [False, True])
def test_adapter_stepped_from_outside_and_resumed_equals_run_warmup(dense):
    """Warmup stepped from outside with the adapter equals run_warmup bit for bit; stopping
    after 37 iterations, saving adapter state, chain state and generator, and resuming with a
    new adapter object gives the same result again. The window index lives in the state:
    it counts the windows closed so far."""
    num_warmup = 80
    logp, state0 = _problem()
    ref_state, ref_eps, ref_minv, _ = run_warmup(state0, logp, num_warmup, _gen(6),
                                                 max_tree_depth=6, dense_mass=dense)

    def start(gen):
        adapter = WindowAdaptation(num_warmup, dense_mass=dense)
        eps0 = find_reasonable_step_size(state0, logp,
                                         adapter.initial_inverse_mass(state0.position), gen)
        return adapter, adapter.init(state0.position, eps0)

    gen = _gen(6)
    adapter, adapt = start(gen)
    windows = adapter.windows
    assert windows == [(12, 72)]  # 80 iterations: 15% / 10% buffers, one window
    state, adapt = _drive(adapter, logp, state0, adapt, gen, 37)
    assert adapt.iteration == 37 and adapt.window == 0 and adapt.welford.count == 37 - 12
    buffer = io.BytesIO()
    torch.save({"adapt": adapt, "state": state, "gen": gen.get_state()}, buffer)
    state, adapt = _drive(adapter, logp, state, adapt, gen, num_warmup - 37)
    assert adapt.window == 1 and adapt.welford.count == 0
    assert torch.equal(state.position, ref_state.position)
    eps, minv = adapter.final(adapt)
    assert torch.equal(eps, ref_eps) and torch.equal(minv, ref_minv)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    gen2 = torch.Generator().set_state(saved["gen"])
    adapter2 = WindowAdaptation(num_warmup, dense_mass=dense)
    state2, adapt2 = _drive(adapter2, logp, saved["state"], saved["adapt"], gen2,
                            num_warmup - 37)
    eps2, minv2 = adapter2.final(adapt2)
    assert torch.equal(state2.position, ref_state.position)
    assert torch.equal(eps2, ref_eps) and torch.equal(minv2, ref_minv)


def test_adapter_updates_the_metric_exactly_at_window_ends():
    """With Stan's 1000-iteration schedule (fed synthetic draws, no sampler), the metric
    changes after iterations 99, 149, 249, 449 and 949 and nowhere else, each time to the
    regularized (co)variance of that window's draws alone."""
    gen = _gen(7)
    adapter = WindowAdaptation(1000)
    draws = torch.randn(1000, 2, 3, dtype=DT, generator=gen) * torch.tensor([1.0, 2.0, 3.0],
                                                                            dtype=DT)
    adapt = adapter.init(draws[0], torch.ones(2, dtype=DT))
    updated_at = []
    for i in range(1000):
        adapt = adapter.update(adapt, WarmupInfo(draws[i], torch.full((2,), 0.8, dtype=DT)))
        if adapt.metric_updated:
            updated_at.append(i)
            s, e = adapter.windows[adapt.window - 1]
            x = draws[s:e]
            n = e - s
            ref = n / (n + 5.0) * x.var(0) + 1e-3 * 5.0 / (n + 5.0)
            assert torch.allclose(adapt.inverse_mass, ref, rtol=1e-11)
    assert updated_at == [99, 149, 249, 449, 949]
    assert adapt.iteration == 1000 and adapt.window == 5
