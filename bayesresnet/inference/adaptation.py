"""Warmup adaptation and a complete sampling loop for the lock-step NUTS kernel.

Stan-style windowed adaptation, done independently for every chain but with all chains
advancing together through :func:`bayesresnet.inference.nuts_kernel.step`:

* step size: dual averaging (Hoffman & Gelman 2014, Alg. 5) towards ``target_accept``
  with ``gamma=0.05``, ``t0=10``, ``kappa=0.75``, ``mu=log(10 * eps0)``; restarted
  after every mass-matrix update; the final step size is the averaged iterate, each chain's
  own or, with ``pool_step_size`` (what :class:`~bayesresnet.NUTS` uses), their geometric
  mean for every chain: each chain's own average is noisy where trajectories are long, and in
  lock-step every iteration waits for the chain with the smallest step (measured in
  docs/methods.rst, "NUTS on the demo network"); each chain keeps its own mass matrix;
* mass matrix: Welford estimates of the (co)variance of the draws in each slow window
  of :func:`warmup_schedule`, regularized toward the identity as in Stan:
  ``n / (n + 5) * var + 1e-3 * 5 / (n + 5)``.

:func:`sample` (warmup followed by sampling) lives in this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from bayesresnet.inference.nuts_kernel import (
    LogDensityFn,
    NUTSInfo,
    NUTSState,
    init,
    sample_momentum,
    step,
    value_and_grad,
    velocity,
)

__all__ = [
    "AdaptationState",
    "adaptation_init",
    "dual_averaging_restart",
    "dual_averaging_update",
    "find_reasonable_step_size",
    "regularized_inverse_mass",
    "run_warmup",
    "sample",
    "warmup_schedule",
    "welford_update",
]

_GAMMA = 0.05
_T0 = 10.0
_KAPPA = 0.75
_STAT_KEYS = ("diverging", "tree_depth", "num_steps", "accept_prob", "energy",
              "reached_max_tree_depth")


class AdaptationState(NamedTuple):
    """Per-chain adaptation state.

    Attributes
    ----------
    step_size : Tensor
        ``(C,)`` step size to use for the next transition.
    log_step_size_avg : Tensor
        ``(C,)`` dual-averaging iterate average ``log(eps_bar)``.
    h_bar : Tensor
        ``(C,)`` running average of ``target_accept - accept_prob``.
    mu : Tensor
        ``(C,)`` shrinkage target ``log(10 * eps0)``.
    da_count : int
        Dual-averaging iterations since the last restart.
    inverse_mass : Tensor
        ``(C, D)`` diagonal or ``(C, D, D)`` dense inverse mass matrix in use.
    welford_mean : Tensor
        ``(C, D)`` running mean of the draws in the current window.
    welford_m2 : Tensor
        ``(C, D)`` (diagonal) or ``(C, D, D)`` (dense) running sum of squared deviations.
    welford_count : int
        Number of draws accumulated in the current window.
    """

    step_size: Tensor
    log_step_size_avg: Tensor
    h_bar: Tensor
    mu: Tensor
    da_count: int
    inverse_mass: Tensor
    welford_mean: Tensor
    welford_m2: Tensor
    welford_count: int


def adaptation_init(position: Tensor, step_size: Tensor, dense_mass: bool = False
                    ) -> AdaptationState:
    """Initial adaptation state with identity mass matrix.

    Parameters
    ----------
    position : Tensor
        ``(C, D)`` positions (sets shapes, dtype and device).
    step_size : Tensor
        ``(C,)`` initial step sizes ``eps0``.
    dense_mass : bool, default False
        Adapt a dense ``(C, D, D)`` instead of a diagonal ``(C, D)`` inverse mass.

    Returns
    -------
    AdaptationState
    """
    n_chains, dim = position.shape
    kw = {"dtype": position.dtype, "device": position.device}
    if dense_mass:
        inverse_mass = torch.eye(dim, **kw).expand(n_chains, dim, dim).clone()
    else:
        inverse_mass = torch.ones(n_chains, dim, **kw)
    zeros = torch.zeros(n_chains, **kw)
    return AdaptationState(
        step_size=step_size,
        log_step_size_avg=zeros,
        h_bar=zeros,
        mu=torch.log(10.0 * step_size),
        da_count=0,
        inverse_mass=inverse_mass,
        welford_mean=torch.zeros_like(position),
        welford_m2=torch.zeros_like(inverse_mass),
        welford_count=0,
    )


def dual_averaging_update(adapt: AdaptationState, accept_prob: Tensor, target_accept: float
                          ) -> AdaptationState:
    """One dual-averaging update of the per-chain step size.

    Parameters
    ----------
    adapt : AdaptationState
        Current state.
    accept_prob : Tensor
        ``(C,)`` mean acceptance statistic of the last transition.
    target_accept : float
        Target mean acceptance statistic.

    Returns
    -------
    AdaptationState
        State whose ``step_size`` is ``exp(log_eps_t)``.
    """
    t = adapt.da_count + 1
    w = 1.0 / (t + _T0)
    h_bar = (1.0 - w) * adapt.h_bar + w * (target_accept - accept_prob)
    log_eps = adapt.mu - (math.sqrt(t) / _GAMMA) * h_bar
    eta = t ** (-_KAPPA)
    log_avg = eta * log_eps + (1.0 - eta) * adapt.log_step_size_avg
    return adapt._replace(step_size=log_eps.exp(), log_step_size_avg=log_avg, h_bar=h_bar,
                          da_count=t)


def dual_averaging_restart(adapt: AdaptationState, step_size: Tensor) -> AdaptationState:
    """Restart dual averaging from ``step_size`` with ``mu = log(10 * step_size)``.

    Parameters
    ----------
    adapt : AdaptationState
        Current state.
    step_size : Tensor
        ``(C,)`` new initial step sizes.

    Returns
    -------
    AdaptationState
    """
    zeros = torch.zeros_like(step_size)
    return adapt._replace(step_size=step_size, log_step_size_avg=zeros, h_bar=zeros,
                          mu=torch.log(10.0 * step_size), da_count=0)


def welford_update(adapt: AdaptationState, position: Tensor) -> AdaptationState:
    """Add one draw per chain to the Welford (co)variance accumulators.

    Parameters
    ----------
    adapt : AdaptationState
        Current state.
    position : Tensor
        ``(C, D)`` draws.

    Returns
    -------
    AdaptationState
    """
    n = adapt.welford_count + 1
    delta = position - adapt.welford_mean
    mean = adapt.welford_mean + delta / n
    delta2 = position - mean
    if adapt.welford_m2.ndim == 3:
        m2 = adapt.welford_m2 + delta.unsqueeze(-1) * delta2.unsqueeze(-2)
    else:
        m2 = adapt.welford_m2 + delta * delta2
    return adapt._replace(welford_mean=mean, welford_m2=m2, welford_count=n)


def regularized_inverse_mass(adapt: AdaptationState) -> Tensor:
    """Stan's regularized estimate ``n/(n+5) * cov + 1e-3 * 5/(n+5) * I``.

    Parameters
    ----------
    adapt : AdaptationState
        State with at least two accumulated draws.

    Returns
    -------
    Tensor
        ``(C, D)`` or ``(C, D, D)`` inverse mass matrix.
    """
    n = adapt.welford_count
    cov = adapt.welford_m2 / (n - 1)
    shrink = 1e-3 * 5.0 / (n + 5.0)
    if cov.ndim == 3:
        cov = 0.5 * (cov + cov.mT)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return (n / (n + 5.0)) * cov + shrink * eye
    return (n / (n + 5.0)) * cov + shrink


def _welford_reset(adapt: AdaptationState) -> AdaptationState:
    return adapt._replace(welford_mean=torch.zeros_like(adapt.welford_mean),
                          welford_m2=torch.zeros_like(adapt.welford_m2), welford_count=0)


def find_reasonable_step_size(
    state: NUTSState,
    logdensity_fn: LogDensityFn,
    inverse_mass: Tensor,
    generator: torch.Generator,
    initial_step_size: Tensor | float = 1.0,
    max_iter: int = 60,
) -> Tensor:
    """Per-chain step-size heuristic (Hoffman & Gelman 2014, Alg. 4, Stan's variant).

    Starting from ``initial_step_size`` the step size of each chain is doubled (or
    halved) until the acceptance probability ``exp(H0 - H)`` of a single leapfrog step
    from the current state, with fresh momentum, crosses 0.8.

    Parameters
    ----------
    state : NUTSState
        Current state, positions ``(C, D)``.
    logdensity_fn : LogDensityFn
        Batched log density.
    inverse_mass : Tensor
        ``(C, D)`` or ``(C, D, D)`` inverse mass matrix.
    generator : torch.Generator
        Source of the momenta.
    initial_step_size : Tensor or float, default 1.0
        Starting value, scalar or ``(C,)``.
    max_iter : int, default 60
        Maximum number of doublings/halvings.

    Returns
    -------
    Tensor
        ``(C,)`` step sizes, clamped to ``[1e-12, 1e7]``.
    """
    q0, logp0, g0 = state
    n_chains = q0.shape[0]
    dtype = q0.dtype
    eps = torch.as_tensor(initial_step_size, dtype=dtype, device=q0.device)
    eps = eps.expand(n_chains).clone()
    log_target = math.log(0.8)

    def log_accept(eps: Tensor) -> Tensor:
        p = sample_momentum(inverse_mass, q0.shape, dtype, generator)
        h0 = 0.5 * torch.linalg.vecdot(p, velocity(inverse_mass, p)) - logp0
        e = eps.unsqueeze(-1)
        p = p + 0.5 * e * g0
        q = q0 + e * velocity(inverse_mass, p)
        logp, g = value_and_grad(logdensity_fn, q)
        p = p + 0.5 * e * g
        h = 0.5 * torch.linalg.vecdot(p, velocity(inverse_mass, p)) - logp
        return torch.nan_to_num(h0 - h, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)

    with torch.no_grad():
        direction = torch.where(log_accept(eps) > log_target, 2.0, 0.5).to(dtype)
        up = direction > 1.0
        done = torch.zeros(n_chains, dtype=torch.bool, device=q0.device)
        for _ in range(max_iter):
            la = log_accept(eps)
            crossed = torch.where(up, ~(la > log_target), ~(la < log_target))
            done = done | crossed
            at_bound = (eps >= 1e7) | (eps <= 1e-12)
            done = done | at_bound
            if bool(done.all()):
                break
            eps = torch.where(done, eps, eps * direction)
    return eps.clamp(1e-12, 1e7)


def warmup_schedule(num_warmup: int) -> list[tuple[int, int]]:
    """Stan's mass-matrix adaptation windows.

    An initial buffer of 75 iterations (step size only), slow windows of 25, 50, 100,
    ... iterations where draws are accumulated for the mass matrix (the last one is
    stretched to the terminal buffer), and a terminal buffer of 25 iterations.  When
    ``num_warmup < 150`` the buffers become 15% / 10% of ``num_warmup`` and a single
    window covers the rest; below 20 iterations no mass-matrix adaptation is done.

    Parameters
    ----------
    num_warmup : int
        Number of warmup iterations.

    Returns
    -------
    list of (int, int)
        ``[(start, end), ...]`` half-open iteration ranges of the slow windows; the mass
        matrix is updated after iteration ``end - 1`` of each window.
    """
    if num_warmup < 20:
        return []
    init_buffer, term_buffer, base_window = 75, 25, 25
    if init_buffer + base_window + term_buffer > num_warmup:
        init_buffer = int(0.15 * num_warmup)
        term_buffer = int(0.1 * num_warmup)
        base_window = num_warmup - (init_buffer + term_buffer)
    last_end = num_warmup - term_buffer
    windows = []
    start, size = init_buffer, base_window
    while start < last_end:
        end = min(start + size, last_end)
        # After the first window, stretch a window whose doubled successor would not fit.
        if windows and end + 2 * size > last_end:
            end = last_end
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


def _stack_stats(rows: list[NUTSInfo], step_sizes: list[Tensor], log_density: list[Tensor]
                 ) -> dict[str, Tensor]:
    stats = {k: torch.stack([getattr(r, k) for r in rows], dim=1) for k in _STAT_KEYS}
    stats["step_size"] = torch.stack(step_sizes, dim=1)
    stats["log_density"] = torch.stack(log_density, dim=1)
    return stats


def run_warmup(
    state: NUTSState,
    logdensity_fn: LogDensityFn,
    num_warmup: int,
    generator: torch.Generator,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    callback: Callable[[int, NUTSInfo], None] | None = None,
    initial_step_size: Tensor | float | None = None,
    max_delta_energy: float = 1000.0,
    pool_step_size: bool = False,
) -> tuple[NUTSState, Tensor, Tensor, dict[str, Tensor]]:
    """Warmup with per-chain step-size and windowed mass-matrix adaptation.

    Parameters
    ----------
    state : NUTSState
        Initial state from :func:`~bayesresnet.inference.nuts_kernel.init`, ``(C, D)``.
    logdensity_fn : LogDensityFn
        Batched log density.
    num_warmup : int
        Number of warmup transitions.
    generator : torch.Generator
        Source of all randomness.
    target_accept : float, default 0.8
        Target mean acceptance statistic for dual averaging.
    max_tree_depth : int, default 10
        Passed to :func:`~bayesresnet.inference.nuts_kernel.step`.
    dense_mass : bool, default False
        Adapt dense ``(C, D, D)`` instead of diagonal ``(C, D)`` inverse mass matrices.
    callback : callable, optional
        ``callback(i, info)`` after warmup iteration ``i`` (0-based).
    initial_step_size : Tensor or float, optional
        Skip the initial step-size heuristic and start dual averaging from this value.
    max_delta_energy : float, default 1000.0
        Divergence threshold.
    pool_step_size : bool, default False
        Give every chain the geometric mean of the chains' adapted step sizes (see the module
        docstring) instead of its own (Stan's per-chain adaptation).

    Returns
    -------
    state : NUTSState
        State after warmup.
    step_size : Tensor
        ``(C,)`` adapted step sizes.
    inverse_mass : Tensor
        ``(C, D)`` or ``(C, D, D)`` adapted inverse mass matrices.
    warmup_info : dict of str to Tensor
        ``(C, num_warmup)`` tensors with the keys of :func:`sample`'s statistics
        (``step_size`` being the step size used by each transition).
    """
    adapt = adaptation_init(state.position, torch.ones(state.position.shape[0],
                            dtype=state.position.dtype, device=state.position.device),
                            dense_mass)
    if initial_step_size is None:
        eps0 = find_reasonable_step_size(state, logdensity_fn, adapt.inverse_mass, generator)
    else:
        eps0 = torch.as_tensor(initial_step_size, dtype=state.position.dtype,
                               device=state.position.device).expand(state.position.shape[0])
    adapt = dual_averaging_restart(adapt, eps0)
    windows = warmup_schedule(num_warmup)
    window_start = {s for s, _ in windows}
    window_last = {e - 1 for _, e in windows}
    in_window = False
    rows: list[NUTSInfo] = []
    eps_used: list[Tensor] = []
    logps: list[Tensor] = []
    for i in range(num_warmup):
        eps_used.append(adapt.step_size)
        state, info = step(state, logdensity_fn, adapt.step_size, adapt.inverse_mass,
                           generator, max_tree_depth, max_delta_energy)
        rows.append(info)
        logps.append(state.log_density)
        adapt = dual_averaging_update(adapt, info.accept_prob, target_accept)
        if i in window_start:
            in_window = True
        if in_window:
            adapt = welford_update(adapt, state.position)
        if i in window_last:
            in_window = False
            adapt = _welford_reset(adapt._replace(inverse_mass=regularized_inverse_mass(adapt)))
            eps = find_reasonable_step_size(state, logdensity_fn, adapt.inverse_mass,
                                            generator, adapt.step_size)
            adapt = dual_averaging_restart(adapt, eps)
        if callback is not None:
            callback(i, info)
    if num_warmup > 0:
        step_size = adapt.log_step_size_avg.exp() if adapt.da_count else adapt.step_size
        if pool_step_size:
            step_size = step_size.log().mean().exp().expand_as(step_size).clone()
        warmup_info = _stack_stats(rows, eps_used, logps)
    else:
        step_size = adapt.step_size
        warmup_info = {}
    return state, step_size, adapt.inverse_mass, warmup_info


def sample(
    logdensity_fn: LogDensityFn,
    init_position: Tensor,
    num_warmup: int,
    num_samples: int,
    generator: torch.Generator,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    callback: Callable[[int, NUTSInfo], None] | None = None,
    max_delta_energy: float = 1000.0,
    pool_step_size: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run warmup and then draw ``num_samples`` samples from ``C`` chains in lock-step.

    Parameters
    ----------
    logdensity_fn : LogDensityFn
        Batched log density ``(C, D) -> (C,)``.
    init_position : Tensor
        ``(C, D)`` initial positions; their dtype is used throughout.
    num_warmup : int
        Number of adaptation transitions (discarded).
    num_samples : int
        Number of draws kept per chain.
    generator : torch.Generator
        Source of all randomness; the same seed gives identical draws.
    target_accept : float, default 0.8
        Dual-averaging target.
    max_tree_depth : int, default 10
        Maximum number of trajectory doublings.
    dense_mass : bool, default False
        Adapt dense mass matrices.
    callback : callable, optional
        ``callback(i, info)`` after every transition; ``i`` runs over
        ``0 .. num_warmup + num_samples - 1`` (warmup first).
    max_delta_energy : float, default 1000.0
        Divergence threshold.
    pool_step_size : bool, default False
        One adapted step size for all chains (see :func:`run_warmup`).

    Returns
    -------
    samples : Tensor
        ``(C, num_samples, D)`` draws.
    stats : dict of str to Tensor
        ``(C, num_samples)`` tensors ``diverging``, ``tree_depth``, ``num_steps``,
        ``step_size``, ``accept_prob``, ``log_density``, ``energy``,
        ``reached_max_tree_depth``; plus the final ``inverse_mass`` (``(C, D)`` or
        ``(C, D, D)``) and ``warmup_diverging`` ``(C, num_warmup)``.  All warmup statistics
        are available from :func:`run_warmup`.

    Raises
    ------
    ValueError
        If the log density is not finite at ``init_position``.
    """
    state = init(init_position, logdensity_fn)
    state, step_size, inverse_mass, warmup_info = run_warmup(
        state, logdensity_fn, num_warmup, generator, target_accept=target_accept,
        max_tree_depth=max_tree_depth, dense_mass=dense_mass, callback=callback,
        max_delta_energy=max_delta_energy, pool_step_size=pool_step_size,
    )
    n_chains, dim = state.position.shape
    samples = torch.empty((n_chains, num_samples, dim), dtype=state.position.dtype,
                          device=state.position.device)
    rows: list[NUTSInfo] = []
    logps: list[Tensor] = []
    for i in range(num_samples):
        state, info = step(state, logdensity_fn, step_size, inverse_mass, generator,
                           max_tree_depth, max_delta_energy)
        samples[:, i] = state.position
        rows.append(info)
        logps.append(state.log_density)
        if callback is not None:
            callback(num_warmup + i, info)
    if num_samples > 0:
        stats = _stack_stats(rows, [step_size] * num_samples, logps)
    else:
        empty = torch.empty((n_chains, 0))
        stats = {k: empty for k in (*_STAT_KEYS, "step_size", "log_density")}
    stats["inverse_mass"] = inverse_mass
    stats["warmup_diverging"] = warmup_info.get(
        "diverging", torch.zeros((n_chains, 0), dtype=torch.bool))
    return samples, stats
