"""Tests of the lock-step vectorized NUTS kernel and its warmup adaptation."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from bayesresnet.inference import nuts_kernel as nk
from bayesresnet.inference import proposal
from bayesresnet.inference.adaptation import (
    find_reasonable_step_size,
    run_warmup,
    sample,
    warmup_schedule,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az

DT = torch.float64
C = 8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ess(x: np.ndarray) -> float:
    return float(az.ess(x, method="mean"))


def _check_mean_var(draws: np.ndarray, mean, var, n_se: float = 4.0) -> None:
    """Compare draw means/variances with exact values within ``n_se`` MCSE (from ESS)."""
    draws = np.asarray(draws)
    for i in range(draws.shape[-1]):
        x = draws[..., i]
        m = x.mean()
        se_m = x.std() / math.sqrt(_ess(x))
        assert abs(m - mean[i]) < n_se * se_m, (i, m, mean[i], se_m)
        sq = (x - m) ** 2
        se_v = sq.std() / math.sqrt(_ess(sq))
        assert abs(sq.mean() - var[i]) < n_se * se_v, (i, sq.mean(), var[i], se_v)


def _gauss_logdensity(mean: torch.Tensor, cov: torch.Tensor):
    prec = torch.linalg.inv(cov)

    def logp(x):
        z = x - mean
        return -0.5 * ((z @ prec) * z).sum(-1)

    return logp


# ---------------------------------------------------------------------------- targets


def test_isotropic_gaussian_10d():
    d = 10
    mean = torch.linspace(-1.0, 1.0, d, dtype=DT)

    def logp(x):
        return -0.5 * ((x - mean) ** 2).sum(-1)

    x0 = torch.randn(C, d, dtype=DT, generator=_gen(1))
    draws, stats = sample(logp, x0, 300, 400, _gen(2))
    assert draws.shape == (C, 400, d) and draws.dtype == DT
    for key in ("diverging", "tree_depth", "num_steps", "step_size", "accept_prob",
                "log_density", "energy", "reached_max_tree_depth"):
        assert stats[key].shape == (C, 400), key
    assert stats["inverse_mass"].shape == (C, d)
    assert not stats["diverging"].any()
    # The averaged step size of dual averaging gives an acceptance statistic somewhat
    # above the target (as in Stan); see also test_dual_averaging_reaches_target.
    assert 0.7 < stats["accept_prob"].mean().item() < 0.97
    _check_mean_var(draws.numpy(), mean.numpy(), np.ones(d))


def test_badly_scaled_gaussian_needs_mass_adaptation():
    scales = torch.logspace(-2, 2, 6, dtype=DT)

    def logp(x):
        return -0.5 * ((x / scales) ** 2).sum(-1)

    x0 = torch.randn(C, 6, dtype=DT, generator=_gen(3)) * 0.01
    draws, stats = sample(logp, x0, 800, 400, _gen(4), max_tree_depth=6)
    ratio = stats["inverse_mass"] / scales**2
    assert ((ratio > 0.4) & (ratio < 2.5)).all(), ratio
    assert stats["tree_depth"].float().mean() < 4  # well conditioned after adaptation
    _check_mean_var((draws / scales).numpy(), np.zeros(6), np.ones(6))


@pytest.mark.parametrize("dense", [False, True])
def test_correlated_gaussian_2d(dense):
    cov = torch.tensor([[1.0, 0.95], [0.95, 1.0]], dtype=DT)
    mean = torch.tensor([1.0, -2.0], dtype=DT)
    x0 = torch.randn(C, 2, dtype=DT, generator=_gen(5))
    draws, stats = sample(_gauss_logdensity(mean, cov), x0, 200, 300 if not dense else 400,
                          _gen(6), dense_mass=dense)
    assert stats["inverse_mass"].shape == ((C, 2, 2) if dense else (C, 2))
    x = draws.numpy()
    _check_mean_var(x, mean.numpy(), np.ones(2))
    # cross moment E[(x1 - m1)(x2 - m2)] = 0.95
    prod = (x[..., 0] - 1.0) * (x[..., 1] + 2.0)
    assert abs(prod.mean() - 0.95) < 4 * prod.std() / math.sqrt(_ess(prod))


B_MU, B_CURV, B_SD = 0.5, 1.0, 0.5


def _banana_logp(x):
    y = x[:, 1] - B_CURV * x[:, 0] ** 2
    return -0.5 * (x[:, 0] - B_MU) ** 2 - 0.5 * (y / B_SD) ** 2


def _banana_exact(n: int, gen: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, 2, dtype=DT, generator=gen)
    x1 = B_MU + z[:, 0]
    return torch.stack((x1, B_CURV * x1**2 + B_SD * z[:, 1]), dim=-1)


def test_banana():
    x0 = torch.randn(C, 2, dtype=DT, generator=_gen(7))
    draws, _ = sample(_banana_logp, x0, 200, 400, _gen(8))
    x = draws.numpy()
    y = x[..., 1] - B_CURV * x[..., 0] ** 2
    _check_mean_var(np.stack((x[..., 0], y), -1), [B_MU, 0.0], [1.0, B_SD**2])
    x2 = x[..., 1]  # E[x2] = b (1 + mu^2)
    assert abs(x2.mean() - B_CURV * (1 + B_MU**2)) < 4 * x2.std() / math.sqrt(_ess(x2))


def test_conjugate_linear_regression_dense():
    g = _gen(9)
    n, d, sigma, tau = 30, 4, 0.5, 2.0
    design = torch.randn(n, d, dtype=DT, generator=g)
    design[:, 1] = design[:, 0] + 0.3 * design[:, 1]  # correlated posterior
    beta = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=DT)
    y = design @ beta + sigma * torch.randn(n, dtype=DT, generator=g)
    post_cov = torch.linalg.inv(design.T @ design / sigma**2 + torch.eye(d, dtype=DT) / tau**2)
    post_mean = post_cov @ design.T @ y / sigma**2

    def logp(b):
        resid = y - b @ design.T
        return -0.5 * (resid**2).sum(-1) / sigma**2 - 0.5 * (b**2).sum(-1) / tau**2

    x0 = torch.randn(C, d, dtype=DT, generator=g)
    draws, stats = sample(logp, x0, 300, 400, g, dense_mass=True)
    assert stats["inverse_mass"].shape == (C, d, d)
    _check_mean_var(draws.numpy(), post_mean.numpy(), torch.diagonal(post_cov).numpy())


# ------------------------------------------------------------------- exactness checks


@pytest.mark.parametrize(("dense", "eps"), [(False, 0.45), (True, 0.45), (False, 0.08)])
def test_transition_leaves_exact_distribution_invariant(dense, eps):
    """Start many chains at exact draws of the banana; a few transitions with a fixed
    step size must keep them exactly distributed (KS test on both coordinates).  The
    large step size gives large energy errors, the small one long trajectories (several
    multinomial chunks per subtree)."""
    n = 4000
    gen = _gen(10)
    x = _banana_exact(n, gen)
    if dense:
        a = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=DT)
        minv = a.expand(n, 2, 2)
    else:
        minv = torch.tensor([1.0, 2.5], dtype=DT).expand(n, 2)
    state = nk.init(x, _banana_logp)
    step_size = torch.full((n,), eps, dtype=DT)
    for _ in range(3):
        state, info = nk.step(state, _banana_logp, step_size, minv, gen, max_tree_depth=7)
    if eps > 0.4:
        assert info.accept_prob.mean() < 0.9  # the step size is large enough to matter
        assert (info.tree_depth >= 2).float().mean() > 0.3
    else:
        assert (info.tree_depth >= 5).sum() > 300
    x = state.position
    y = (x[:, 1] - B_CURV * x[:, 0] ** 2) / B_SD
    assert scipy.stats.kstest((x[:, 0] - B_MU).numpy(), "norm").pvalue > 1e-3
    assert scipy.stats.kstest(y.numpy(), "norm").pvalue > 1e-3


def test_chunked_multinomial_selection_is_proportional_to_weights():
    """Leaves folded chunk by chunk into the subtree proposal are selected with
    probability proportional to their weights (chi-square over 20000 chains)."""
    n, k = 20000, 9
    gen = _gen(31)
    logw = 1.5 * torch.randn(k, dtype=DT, generator=gen)
    logw[3] = -math.inf  # a divergent leaf is never selected
    qs = [torch.full((n, 1), float(i), dtype=DT) for i in range(k)]
    gs = [-q for q in qs]
    lps = [torch.full((n,), 10.0 * i, dtype=DT) for i in range(k)]
    lws = [logw[i].expand(n).clone() for i in range(k)]
    sub = None
    for a, b in [(0, 4), (4, 5), (5, 9)]:
        sub = proposal.fold_chunk(sub, qs[a:b], gs[a:b], lps[a:b], lws[a:b], gen,
                                  torch.arange(n))
    qg, ll, log_sum_w = sub
    idx = qg[0, :, 0].long()
    assert torch.equal(qg[1], -qg[0]) and torch.equal(ll[0], 10.0 * qg[0, :, 0])
    assert torch.equal(ll[1], logw[idx])
    assert torch.allclose(log_sum_w, torch.logsumexp(logw, 0).expand(n))
    counts = torch.bincount(idx, minlength=k).numpy()
    prob = torch.softmax(logw, 0).numpy()
    assert counts[3] == 0
    keep = prob > 0
    assert scipy.stats.chisquare(counts[keep], n * prob[keep]).pvalue > 1e-3


def _reference_tree(q0, p0, f, eps, dirs, max_depth, max_de=1000.0):
    """Single-chain NUTS tree building written directly from the definition: the
    trajectory is kept as a time-ordered list; after every leaf each completed aligned
    block of the new subtree is split into halves L, R and checked on L+R, L+first(R)
    and last(L)+R.  Returns (tree_depth, num_steps, diverging)."""

    def vg(q):
        lp, g = nk.value_and_grad(f, q[None])
        return lp[0], g[0]

    def crit(pa, pb, rho):
        return bool((pa @ rho > 0) & (pb @ rho > 0))

    def merge_ok(left, right):
        # left/right: lists of momenta in time order (identity mass)
        rl, rr = sum(left), sum(right)
        return (crit(left[0], right[-1], rl + rr) and crit(left[0], right[0], rl + right[0])
                and crit(left[-1], right[-1], left[-1] + rr))

    lp0, g0 = vg(q0)
    h0 = 0.5 * p0 @ p0 - lp0
    traj = [(q0, p0, g0)]  # time order
    depth = n_steps = 0
    for d in range(max_depth):
        right = bool(dirs[d])
        q, p, g = traj[-1] if right else traj[0]
        e = eps if right else -eps
        new = []
        for i in range(2**d):
            p = p + 0.5 * e * g
            q = q + e * p
            lp, g = vg(q)
            p = p + 0.5 * e * g
            n_steps += 1
            h = 0.5 * p @ p - lp
            if not torch.isfinite(h) or h - h0 > max_de:
                return depth, n_steps, True
            new.append((q, p, g))
            k = 1
            while (i + 1) % (2**k) == 0:
                block = [pt[1] for pt in new[i + 1 - 2**k:i + 1]]
                if not right:
                    block = block[::-1]
                half = len(block) // 2
                if not merge_ok(block[:half], block[half:]):
                    return depth, n_steps, False
                k += 1
        old = [pt[1] for pt in traj]
        new_p = [pt[1] for pt in new]
        traj = traj + new if right else new[::-1] + traj
        depth += 1
        ok = merge_ok(old, new_p) if right else merge_ok(new_p[::-1], old)
        if not ok:
            break
    return depth, n_steps, False


def test_tree_building_matches_reference():
    """Tree depth and number of leapfrog steps of every chain equal those of a direct,
    single-chain implementation given the same momentum and directions."""
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=DT)
    f = _gauss_logdensity(torch.zeros(2, dtype=DT), cov)
    n, max_depth = 48, 8
    gen = _gen(11)
    x = torch.randn(n, 2, dtype=DT, generator=gen)
    eps = torch.linspace(0.05, 1.6, n, dtype=DT)
    state = nk.init(x, f)
    for _ in range(3):
        g_copy = torch.Generator().set_state(gen.get_state())
        # draw order inside step(): momenta (C, D), then directions (max_depth, C)
        p0 = torch.randn((n, 2), generator=g_copy, dtype=DT)
        dirs = torch.rand((max_depth, n), generator=g_copy, dtype=DT) < 0.5
        new_state, info = nk.step(state, f, eps, torch.ones(n, 2, dtype=DT), gen,
                                  max_tree_depth=max_depth)
        for c in range(n):
            ref = _reference_tree(state.position[c], p0[c], f, eps[c], dirs[:, c], max_depth)
            got = (int(info.tree_depth[c]), int(info.num_steps[c]), bool(info.diverging[c]))
            assert got == ref, (c, got, ref)
        state = new_state
    assert len(set(info.num_steps.tolist())) > 3


# ------------------------------------------------------------- kernel behaviour checks


def test_same_seed_same_draws_different_seed_differs():
    def logp(x):
        return -0.5 * (x**2).sum(-1) - 0.1 * (x**4).sum(-1)

    x0 = torch.randn(4, 3, dtype=DT, generator=_gen(0))
    a, sa = sample(logp, x0, 60, 30, _gen(123))
    b, sb = sample(logp, x0, 60, 30, _gen(123))
    c, _ = sample(logp, x0, 60, 30, _gen(124))
    assert torch.equal(a, b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a, c)


def test_divergence_flagged_with_huge_step_size():
    def logp(x):
        return -0.5 * (x**2).sum(-1)

    x0 = torch.randn(C, 5, dtype=DT, generator=_gen(12))
    state = nk.init(x0, logp)
    new, info = nk.step(state, logp, torch.full((C,), 200.0, dtype=DT),
                        torch.ones(C, 5, dtype=DT), _gen(13))
    assert info.diverging.all()
    assert (info.tree_depth == 0).all() and (info.num_steps == 1).all()
    assert torch.equal(new.position, x0)  # the divergent subtree is rejected
    assert (info.accept_prob == 0).all()


def test_funnel_diverges_but_never_crashes():
    d = 5

    def funnel(x):
        v, z = x[:, 0], x[:, 1:]
        return -0.5 * v**2 / 9.0 - 0.5 * (z**2).sum(-1) * torch.exp(-v) - 0.5 * (d - 1) * v

    gen = _gen(14)
    v = 3.0 * torch.randn(C, 1, dtype=DT, generator=gen)
    x0 = torch.cat((v, torch.exp(v / 2) * torch.randn(C, d - 1, dtype=DT, generator=gen)), 1)
    state = nk.init(x0, funnel)
    eps = torch.full((C,), 0.25, dtype=DT)
    n_div = 0
    for _ in range(30):
        state, info = nk.step(state, funnel, eps, torch.ones(C, d, dtype=DT), gen,
                              max_tree_depth=6)
        n_div += int(info.diverging.sum())
        assert torch.isfinite(state.position).all() and torch.isfinite(state.grad).all()
        assert torch.isfinite(state.log_density).all() and torch.isfinite(info.energy).all()
    assert n_div > 0


def test_nan_region_counts_as_divergence():
    def logp(x):
        lp = -0.5 * (x**2).sum(-1)
        return torch.where(x[:, 0] > 1.0, torch.full_like(lp, math.nan), lp)

    x0 = torch.full((C, 2), 0.9, dtype=DT)
    state = nk.init(x0, logp)
    inv_mass = torch.ones(C, 2, dtype=DT)
    n_div = 0
    gen = _gen(16)
    for _ in range(20):
        state, info = nk.step(state, logp, torch.full((C,), 0.7, dtype=DT), inv_mass, gen)
        n_div += int(info.diverging.sum())
        assert torch.isfinite(state.log_density).all()
        assert (state.position[:, 0] <= 1.0).all()
    assert n_div > 0


def test_infinite_log_density_counts_as_divergence():
    def logp(x):
        lp = -0.5 * (x**2).sum(-1)
        return torch.where(x[:, 0] > 0.0, torch.full_like(lp, math.inf), lp)

    state = nk.init(torch.full((C, 1), -0.05, dtype=DT), logp)
    _, info = nk.step(state, logp, torch.full((C,), 0.5, dtype=DT),
                      torch.ones(C, 1, dtype=DT), _gen(17))
    assert info.diverging.any()


def test_nonfinite_initial_log_density_raises():
    def logp(x):
        return torch.where(x[:, 0] > 0, -0.5 * (x**2).sum(-1), -math.inf)

    with pytest.raises(ValueError):
        nk.init(torch.tensor([[1.0], [-1.0]], dtype=DT), logp)
    with pytest.raises(ValueError):
        sample(logp, torch.tensor([[1.0], [-1.0]], dtype=DT), 5, 5, _gen(0))


def test_heterogeneous_chains_masked_per_chain_stats():
    """Chains on very different scales stop at different depths; per-chain statistics
    have shape (C,) and are mutually consistent."""
    scales = torch.logspace(-1, 1, C, dtype=DT)[:, None]

    def logp(x):
        return -0.5 * ((x / scales) ** 2).sum(-1)

    gen = _gen(18)
    state = nk.init(torch.randn(C, 3, dtype=DT, generator=gen) * scales, logp)
    eps = torch.full((C,), 0.08, dtype=DT)
    max_depth = 7
    depths = []
    for _ in range(10):
        state, info = nk.step(state, logp, eps, torch.ones(C, 3, dtype=DT), gen,
                              max_tree_depth=max_depth)
        for field in info:
            assert field.shape == (C,)
        assert info.tree_depth.dtype == torch.int64 and info.num_steps.dtype == torch.int64
        td, ns = info.tree_depth, info.num_steps
        assert (td <= max_depth).all()
        assert ((2**td - 1 <= ns) & (ns <= 2 ** (td + 1) - 1)).all()
        assert torch.equal(info.reached_max_tree_depth, td == max_depth)
        depths.append(td)
    mean_depth = torch.stack(depths).double().mean(0)
    assert mean_depth[0] < mean_depth[-1] - 2  # small scale: short trees
    assert info.reached_max_tree_depth[-1]  # largest scale needs > 2**7 steps
    assert len(set(info.num_steps.tolist())) > 3


def test_max_tree_depth_respected():
    def logp(x):
        return -0.5 * (x**2).sum(-1)

    state = nk.init(torch.randn(C, 2, dtype=DT, generator=_gen(19)), logp)
    _, info = nk.step(state, logp, torch.full((C,), 1e-3, dtype=DT),
                      torch.ones(C, 2, dtype=DT), _gen(20), max_tree_depth=4)
    assert (info.tree_depth == 4).all() and info.reached_max_tree_depth.all()
    assert (info.num_steps == 15).all()


def test_one_batched_density_call_per_leapfrog_step():
    shapes = []

    def logp(x):
        shapes.append(tuple(x.shape))
        return -0.5 * (x**2).sum(-1)

    d = 4
    state = nk.init(torch.randn(C, d, dtype=DT, generator=_gen(21)), logp)
    shapes.clear()
    inv_mass = torch.ones(C, d, dtype=DT)
    _, info = nk.step(state, logp, torch.full((C,), 0.3, dtype=DT), inv_mass, _gen(22),
                      max_tree_depth=1)
    assert shapes == [(C, d)]  # a single leapfrog step -> a single batched call
    assert (info.num_steps == 1).all()
    shapes.clear()
    eps = torch.linspace(0.05, 0.5, C, dtype=DT)  # different trajectory lengths
    _, info = nk.step(state, logp, eps, inv_mass, _gen(23), max_tree_depth=8)
    assert all(s == (C, d) for s in shapes)
    # lock-step: the number of batched calls is the number of leapfrog steps of the
    # doublings the slowest chains needed, at least the longest chain's step count
    assert int(info.num_steps.max()) <= len(shapes) <= 2**8 - 1
    assert int(info.num_steps.min()) < int(info.num_steps.max())


def test_float32_dtype_follows_input():
    def logp(x):
        return -0.5 * (x**2).sum(-1)

    x0 = torch.randn(C, 3, generator=_gen(24))
    draws, stats = sample(logp, x0, 30, 10, _gen(25))
    assert draws.dtype == torch.float32
    assert stats["log_density"].dtype == torch.float32
    assert stats["step_size"].dtype == torch.float32


def test_warmup_schedule_matches_stan():
    # Stan's defaults (init buffer 75, first window 25, terminal buffer 50)
    assert warmup_schedule(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert warmup_schedule(150) == [(75, 100)]
    # the terminal buffer of 25 used until 2026-12-06
    assert warmup_schedule(1000, term_buffer=25) == [(75, 100), (100, 150), (150, 250),
                                                     (250, 450), (450, 975)]
    assert warmup_schedule(150, term_buffer=25) == [(75, 100), (100, 125)]
    assert warmup_schedule(100) == [(15, 90)]
    assert warmup_schedule(10) == []
    for n in (20, 37, 124, 125, 200, 333, 2000):
        windows = warmup_schedule(n)
        assert windows[0][0] >= 1 and windows[-1][1] < n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))


def test_find_reasonable_step_size_and_warmup_callback():
    scales = torch.tensor([[0.01], [1.0], [100.0]], dtype=DT)

    def logp(x):
        return -0.5 * ((x / scales) ** 2).sum(-1)

    state = nk.init(torch.randn(3, 2, dtype=DT, generator=_gen(26)) * scales, logp)
    eps = find_reasonable_step_size(state, logp, torch.ones(3, 2, dtype=DT), _gen(27))
    assert eps.shape == (3,)
    assert (eps[0] < eps[1]) and (eps[1] < eps[2])
    calls = []
    _, step_size, inv_mass, info = run_warmup(state, logp, 40, _gen(28),
                                              callback=lambda i, inf: calls.append(i))
    assert calls == list(range(40))
    assert step_size.shape == (3,) and inv_mass.shape == (3, 2)
    assert info["accept_prob"].shape == (3, 40)


def test_pooled_step_size_is_the_chains_geometric_mean():
    # Chains with badly scaled targets: each keeps its own mass matrix, the pooled run gives
    # every chain the geometric mean of the step sizes the per-chain run adapts.
    scales = torch.tensor([[0.01], [1.0], [100.0]], dtype=DT)

    def logp(x):
        return -0.5 * ((x / scales) ** 2).sum(-1)

    state = nk.init(torch.randn(3, 2, dtype=DT, generator=_gen(31)) * scales, logp)
    _, own, own_mass, _ = run_warmup(state, logp, 150, _gen(32))
    _, pooled, pooled_mass, _ = run_warmup(state, logp, 150, _gen(32), pool_step_size=True)
    assert torch.equal(own_mass, pooled_mass)
    assert torch.allclose(pooled, own.log().mean().exp().expand(3), rtol=1e-12)
    draws, stats = sample(logp, state.position, 150, 300, _gen(33), pool_step_size=True)
    assert (stats["step_size"] == stats["step_size"][0, 0]).all()
    _check_mean_var((draws / scales.unsqueeze(1)).numpy(), np.zeros(2), np.ones(2))


def test_dual_averaging_reaches_target():
    def logp(x):
        return -0.5 * (x**2).sum(-1)

    state = nk.init(torch.randn(C, 10, dtype=DT, generator=_gen(29)), logp)
    for target in (0.65, 0.9):
        _, _, _, info = run_warmup(state, logp, 200, _gen(30), target_accept=target)
        assert abs(info["accept_prob"][:, 100:].mean().item() - target) < 0.06
