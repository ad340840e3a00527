"""Unit tests of the NUTS kernel's parts: metric, leapfrog integrator, U-turn checks, proposal."""

from __future__ import annotations

import math

import pytest
import torch

from bayesresnet.inference import proposal, turning
from bayesresnet.inference.integrator import (
    IntegratorState,
    leapfrog,
    leapfrog_coefficients,
    value_and_grad,
)
from bayesresnet.inference.metric import DenseMetric, DiagonalMetric, make_metric

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random, well-conditioned, far-from-identity SPD matrices ``(n, dim, dim)``."""
    a = torch.randn(n, dim, dim, dtype=DT, generator=gen)
    return a @ a.mT / dim + 0.3 * torch.eye(dim, dtype=DT)


# ---------------------------------------------------------------------------------- metric


def test_make_metric_picks_the_kind_and_broadcasts():
    m = make_metric(torch.ones(1, 3), 4, 3, DT, torch.device("cpu"))
    assert isinstance(m, DiagonalMetric) and m.inverse_mass.shape == (4, 3)
    assert m.inverse_mass.dtype == DT
    m = make_metric(torch.eye(3).expand(1, 3, 3), 4, 3, DT, torch.device("cpu"))
    assert isinstance(m, DenseMetric) and m.inverse_mass.shape == (4, 3, 3)
    with pytest.raises(ValueError):
        make_metric(torch.ones(3), 4, 3, DT, torch.device("cpu"))


def test_velocity_kinetic_energy_and_drift_against_explicit_formulas():
    gen = _gen(0)
    n, d = 5, 3
    minv = _spd(n, d, gen)
    diag = torch.rand(n, d, dtype=DT, generator=gen) + 0.5
    p = torch.randn(n, d, dtype=DT, generator=gen)
    q = torch.randn(n, d, dtype=DT, generator=gen)
    eps = torch.rand(n, 1, dtype=DT, generator=gen)
    dense, diagonal = DenseMetric(minv), DiagonalMetric(diag)
    v_dense = torch.einsum("cij,cj->ci", minv, p)
    assert torch.allclose(dense.velocity(p), v_dense, rtol=1e-13)
    assert torch.allclose(dense.kinetic_energy(p), 0.5 * (p * v_dense).sum(-1), rtol=1e-13)
    assert torch.allclose(dense.drift(q, dense.drift_coefficient(eps), p), q + eps * v_dense,
                          rtol=1e-13)
    assert torch.allclose(diagonal.velocity(p), diag * p, rtol=1e-15)
    assert torch.allclose(diagonal.kinetic_energy(p), 0.5 * (diag * p * p).sum(-1), rtol=1e-13)
    assert torch.allclose(diagonal.drift(q, diagonal.drift_coefficient(eps), p),
                          q + eps * diag * p, rtol=1e-13)
    # a dense metric with diagonal matrices is the diagonal metric
    as_dense = DenseMetric(torch.diag_embed(diag))
    assert torch.allclose(as_dense.kinetic_energy(p), diagonal.kinetic_energy(p), rtol=1e-13)
    # the given velocity is used as is
    assert torch.equal(diagonal.kinetic_energy(p, diagonal.velocity(p)),
                       diagonal.kinetic_energy(p))


@pytest.mark.parametrize("dense", [False, True])
def test_momentum_draws_have_covariance_mass_matrix(dense):
    """p ~ N(0, M) with M = (M^{-1})^{-1}: the sample covariance of N draws agrees with M
    within 5 Monte Carlo standard errors, sqrt((M_ij^2 + M_ii M_jj) / N) for entry ij of a
    Gaussian sample covariance (known zero mean)."""
    gen = _gen(1)
    d, n = 3, 40_000
    if dense:
        minv = _spd(1, d, gen)[0]
        metric = DenseMetric(minv.expand(n, d, d))
    else:
        minv = torch.tensor([0.2, 1.0, 6.0], dtype=DT)
        metric = DiagonalMetric(minv.expand(n, d))
    mass = torch.linalg.inv(minv) if dense else torch.diag(1.0 / minv)
    p = metric.sample_momentum(gen)
    assert p.shape == (n, d) and p.dtype == DT
    cov = p.T @ p / n
    se = torch.sqrt((mass**2 + torch.outer(mass.diagonal(), mass.diagonal())) / n)
    assert ((cov - mass).abs() < 5 * se).all(), (cov, mass)
    # M^{-1} is far enough from M for the check to tell them apart
    assert ((minv - mass).abs() > 10 * se).any()


# ------------------------------------------------------------------------------ integrator


@pytest.mark.parametrize("dense", [False, True])
def test_leapfrog_on_a_gaussian_is_the_exact_linear_map(dense):
    """For log p(q) = -q^T A q / 2 one leapfrog step is the linear map
    p_h = p - (e/2) A q,  q' = q + e M^{-1} p_h,  p' = p_h - (e/2) A q';
    the step, run with negative e, returns to the start (reversibility)."""
    gen = _gen(2)
    n, d = 6, 3
    a = _spd(1, d, gen)[0]

    def logp(x):
        return -0.5 * ((x @ a) * x).sum(-1)

    if dense:
        minv = _spd(n, d, gen)
        metric = DenseMetric(minv)
        apply_minv = lambda v: torch.einsum("cij,cj->ci", minv, v)  # noqa: E731
    else:
        diag = torch.rand(n, d, dtype=DT, generator=gen) + 0.5
        metric = DiagonalMetric(diag)
        apply_minv = lambda v: diag * v  # noqa: E731
    q = torch.randn(n, d, dtype=DT, generator=gen)
    p = torch.randn(n, d, dtype=DT, generator=gen)
    eps = torch.linspace(-0.4, 0.4, n, dtype=DT).unsqueeze(-1)
    calls = []

    def grad_fn(x):
        calls.append(x.shape)
        return value_and_grad(logp, x)

    lp, g = value_and_grad(logp, q)
    start = IntegratorState(q, p, lp, g, metric.velocity(p))
    new = leapfrog(start, leapfrog_coefficients(metric, eps), metric, grad_fn)
    assert calls == [(n, d)]  # one batched gradient per step
    p_h = p - 0.5 * eps * (q @ a)
    q1 = q + eps * apply_minv(p_h)
    p1 = p_h - 0.5 * eps * (q1 @ a)
    assert torch.allclose(new.position, q1, rtol=1e-12, atol=1e-14)
    assert torch.allclose(new.momentum, p1, rtol=1e-12, atol=1e-14)
    assert torch.allclose(new.log_density, logp(q1), rtol=1e-12)
    assert torch.allclose(new.grad, -(q1 @ a), rtol=1e-12, atol=1e-14)
    assert torch.allclose(new.velocity, apply_minv(p1), rtol=1e-12, atol=1e-14)
    back = leapfrog(new, leapfrog_coefficients(metric, -eps), metric, grad_fn)
    assert torch.allclose(back.position, q, rtol=1e-10, atol=1e-12)
    assert torch.allclose(back.momentum, p, rtol=1e-10, atol=1e-12)
    # a zero step holds a chain in place
    held = leapfrog(start, leapfrog_coefficients(metric, torch.zeros_like(eps)), metric,
                    grad_fn)
    assert torch.equal(held.position, q) and torch.equal(held.momentum, p)


def test_value_and_grad_engine_call_equals_torch_autograd_grad(monkeypatch):
    """The direct call of the autograd engine gives the gradient of torch.autograd.grad bit
    for bit, and the public fallback is used when the engine entry point is missing."""
    from bayesresnet.inference import integrator

    gen = _gen(9)
    a = _spd(1, 4, gen)[0]

    def logp(x):
        return -0.5 * ((x @ a) * x).sum(-1) + torch.sin(x).sum(-1)

    x = torch.randn(5, 4, dtype=DT, generator=gen)
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(logp(xr), xr, torch.ones(5, dtype=DT))
    lp, g = integrator.value_and_grad(logp, x)
    assert integrator._RUN_BACKWARD is not None  # the engine path ran
    assert torch.equal(g, ref) and torch.equal(lp, logp(x)) and not lp.requires_grad
    monkeypatch.setattr(integrator, "_RUN_BACKWARD", None)
    lp2, g2 = integrator.value_and_grad(logp, x)
    assert torch.equal(g2, ref) and torch.equal(lp2, lp)


def test_value_and_grad_of_a_constant_density():
    lp, g = value_and_grad(lambda x: torch.zeros(x.shape[0], dtype=x.dtype),
                           torch.ones(2, 3, dtype=DT))
    assert torch.equal(lp, torch.zeros(2, dtype=DT)) and torch.equal(g, torch.zeros(2, 3, dtype=DT))


# --------------------------------------------------------------------------- U-turn checks


def _turns(vf, vl, rho) -> torch.Tensor:
    return ((vf * rho).sum(-1) <= 0) | ((vl * rho).sum(-1) <= 0)


def _block_turns(ps, vs, a, b, extended=True):
    """Brute force, leaves a..b-1 in time order (lists of (C, D)): the block, split into
    halves L and R, turns on L+R, or (extended) on L+first(R) or last(L)+R."""
    half = (a + b) // 2
    total = sum(ps[a:b])
    out = _turns(vs[a], vs[b - 1], total)
    if extended and b - a > 2:
        out = out | _turns(vs[a], vs[half], sum(ps[a:half + 1]))
        out = out | _turns(vs[half - 1], vs[b - 1], sum(ps[half - 1:b]))
    return out


def _run_subtree(ps, vs, depth):
    """The iterative check over a subtree's leaves; returns the U-turn mask at every leaf
    (None where no block ends) and the final bookkeeping."""
    n_chains, d = ps[0].shape
    ckpt = turning.checkpoint_memory(depth + 1, ps[0])
    memory = turning.subtree_start(ckpt, torch.zeros(n_chains, d, dtype=DT))
    masks = []
    for n, (p, v) in enumerate(zip(ps, vs, strict=True)):
        memory, turned = turning.subtree_leaf(memory, n, depth, p, v)
        masks.append(turned)
    return masks, memory


def _random_leaves(n_leaves, n_chains, d, gen, drift=0.0):
    """Random momenta (a common drift plus noise) and velocities v = M^{-1} p."""
    minv = _spd(n_chains, d, gen)
    base = torch.randn(n_chains, d, dtype=DT, generator=gen)
    ps = [drift * base + torch.randn(n_chains, d, dtype=DT, generator=gen)
          for _ in range(n_leaves)]
    vs = [torch.einsum("cij,cj->ci", minv, p) for p in ps]
    return ps, vs


def test_subtree_checks_match_brute_force_on_every_block():
    """At each leaf, the iterative checks from the named checkpoints give exactly the U-turn
    verdict of all aligned blocks ending there (whole block and both extended halves), on
    random trajectories of 16 leaves in 400 chains; some verdicts come from the extended
    halves alone, so an implementation without those checks fails."""
    depth, n_chains, d = 4, 400, 3
    ps, vs = _random_leaves(2**depth, n_chains, d, _gen(3), drift=1.5)
    masks, memory = _run_subtree(ps, vs, depth)
    only_extended = 0
    for n in range(2**depth):
        if n % 2 == 0:
            assert masks[n] is None
            continue
        expect = torch.zeros(n_chains, dtype=torch.bool)
        plain = torch.zeros(n_chains, dtype=torch.bool)
        k = 1
        while (n + 1) % 2**k == 0 and k <= depth:
            expect |= _block_turns(ps, vs, n + 1 - 2**k, n + 1)
            plain |= _block_turns(ps, vs, n + 1 - 2**k, n + 1, extended=False)
            k += 1
        assert torch.equal(masks[n], expect), n
        only_extended += int((expect & ~plain).sum())
        assert 0 < int(expect.sum()) < n_chains  # both verdicts occur
    assert only_extended > 0
    assert torch.allclose(memory.momentum_sum, sum(ps), rtol=1e-12)
    assert torch.equal(memory.first_momentum, ps[0]) and torch.equal(memory.velocity, vs[-1])


def test_hand_built_trajectories_straight_line_and_circle():
    """A straight line (constant momentum) never turns. Momenta around a circle, 30 degrees
    apart: blocks spanning at most 90 degrees do not turn, the 8 leaves spanning 210 degrees
    do (the first velocity points against the total momentum)."""
    depth = 3
    line = [torch.tensor([[1.0, 0.5]], dtype=DT)] * 8
    masks, _ = _run_subtree(line, line, depth)
    assert not any(bool(m.any()) for m in masks if m is not None)

    angles = [math.radians(30 * i) for i in range(8)]
    circle = [torch.tensor([[math.cos(a), math.sin(a)]], dtype=DT) for a in angles]
    masks, _ = _run_subtree(circle, circle, depth)
    assert [None if m is None else bool(m) for m in masks] == [
        None, False, None, False, None, False, None, True]
    # the trajectory-level check: a one-leaf trajectory, momentum (1, 0), merged with a
    # subtree of one leaf of momentum 3 at 150 degrees turns (rho = (-1.60, 1.5) points
    # against the first velocity), at 60 degrees it does not
    for deg, expect in ((150, True), (60, False)):
        p = 3 * torch.tensor([[math.cos(math.radians(deg)), math.sin(math.radians(deg))]],
                             dtype=DT)
        _, mem = _run_subtree([p], [p], 0)
        turned, rho = turning.trajectory_turning(circle[0], circle[0], circle[0], circle[0],
                                                 mem, single_leaves=True)
        assert bool(turned) is expect and torch.allclose(rho, circle[0] + p)


@pytest.mark.parametrize("right", [True, False])
def test_trajectory_merge_check_matches_brute_force(right):
    """Merging a subtree of 4 leaves into a trajectory of 4: the merged segment and both
    extended halves, in time order, for both directions."""
    n_chains, d = 400, 3
    gen = _gen(4)
    old_p, old_v = _random_leaves(4, n_chains, d, gen, drift=2.0)
    new_p, new_v = _random_leaves(4, n_chains, d, gen, drift=2.0)
    _, memory = _run_subtree(new_p, new_v, 2)
    if right:  # integrated forward from the old trajectory's last leaf
        near, far = 3, 0
        ps, vs = old_p + new_p, old_v + new_v
    else:  # integrated backward from its first leaf: time order is reversed(new) + old
        near, far = 0, 3
        ps, vs = new_p[::-1] + old_p, new_v[::-1] + old_v
    turned, rho = turning.trajectory_turning(sum(old_p), old_v[far], old_p[near], old_v[near],
                                             memory)
    expect = _block_turns(ps, vs, 0, 8)
    assert torch.equal(turned, expect)
    assert 0 < int(expect.sum()) < n_chains
    assert not torch.equal(expect, _block_turns(ps, vs, 0, 8, extended=False))
    assert torch.allclose(rho, sum(ps), rtol=1e-12)


# -------------------------------------------------------------------------------- proposal


def test_log_weight_is_minus_the_energy_error_and_nonfinite_is_minus_inf():
    gen = _gen(5)
    n, d = 6, 4
    metric = DenseMetric(_spd(n, d, gen))
    p0, p = torch.randn(2, n, d, dtype=DT, generator=gen)
    lp0, lp = torch.randn(2, n, dtype=DT, generator=gen)
    h0 = metric.kinetic_energy(p0) - lp0
    v = metric.velocity(p)
    lw = proposal.log_weight(h0, lp, p, v)
    # bit for bit (log p + H0) - K with the metric's kinetic energy K (scaling by 0.5 is
    # exact, so the fused subtraction rounds the same way)
    assert torch.equal(lw, (lp + h0) - metric.kinetic_energy(p, v))
    assert torch.allclose(lw, h0 - (metric.kinetic_energy(p, v) - lp), rtol=1e-14)
    lp_bad = lp.clone()
    lp_bad[0], lp_bad[1], lp_bad[2] = math.nan, math.inf, -math.inf
    lw = proposal.log_weight(h0, lp_bad, p, v)
    assert (lw[:3] == -math.inf).all() and torch.isfinite(lw[3:]).all()


def test_biased_merge_takes_the_subtree_with_probability_min_one_weight_ratio():
    """Over 10 000 chains per weight ratio r = W_sub / W_old the subtree's state is taken with
    frequency min(1, r), within 5 binomial standard errors (uniform progressive sampling,
    r / (1 + r), is 15 or more standard errors away for r = 0.5 and 1); invalid subtrees are
    never taken; the total weight adds up."""
    gen = _gen(6)
    ratios = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=DT)
    m = 10_000
    n = m * len(ratios)
    old_lw = torch.randn(n, dtype=DT, generator=gen)
    sub_lw = old_lw + ratios.log().repeat_interleave(m)
    old = proposal.Proposal(torch.zeros(2, n, 2, dtype=DT), torch.zeros(2, n, dtype=DT), old_lw)
    sub = proposal.Proposal(torch.ones(2, n, 2, dtype=DT), torch.ones(2, n, dtype=DT), sub_lw)
    log_u = torch.rand(n, dtype=DT, generator=gen).log()
    valid = torch.ones(n, dtype=torch.bool)
    valid[::7] = False
    merged = proposal.biased_merge(old, sub, log_u, valid)
    took = merged.scalars[0] == 1.0
    assert torch.equal(took.unsqueeze(-1).expand(n, 2), merged.states[0] == 1.0)
    assert not took[~valid].any()
    assert torch.allclose(merged.log_sum_weight, torch.logaddexp(old_lw, sub_lw))
    for i, r in enumerate(ratios.tolist()):
        sl = slice(i * m, (i + 1) * m)
        freq = took[sl][valid[sl]].double().mean().item()
        k = int(valid[sl].sum())
        p = min(1.0, r)
        se = math.sqrt(max(p * (1 - p), 1.0 / k) / k)
        assert abs(freq - p) < 5 * se, (r, freq)


def test_fold_chunk_progressive_across_chunks_keeps_leaf_probabilities():
    """Leaves folded one at a time (chunks of one: only the progressive step) and all at once
    (one chunk: only the Gumbel-max draw) are both selected in proportion to their weights
    (per-leaf frequency within 5 binomial standard errors over 20 000 chains)."""
    n, k = 20_000, 5
    gen = _gen(7)
    logw = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5], dtype=DT)
    prob = torch.softmax(logw, 0)
    qs = [torch.full((n, 1), float(i), dtype=DT) for i in range(k)]
    lps = [torch.zeros(n, dtype=DT) for _ in range(k)]
    lws = [logw[i].expand(n).clone() for i in range(k)]
    for chunks in ([(i, i + 1) for i in range(k)], [(0, k)]):
        sub = None
        for a, b in chunks:
            sub = proposal.fold_chunk(sub, qs[a:b], qs[a:b], lps[a:b], lws[a:b], gen,
                                      torch.arange(n))
        freq = torch.bincount(sub.states[0, :, 0].long(), minlength=k).double() / n
        se = torch.sqrt(prob * (1 - prob) / n)
        assert ((freq - prob).abs() < 5 * se).all(), (chunks, freq, prob)
        assert torch.allclose(sub.log_sum_weight, torch.logsumexp(logw, 0).expand(n))
