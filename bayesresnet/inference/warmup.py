"""Stan-style windowed warmup as small parts: schedule, dual averaging, the window adapter.

* :func:`warmup_schedule`: the slow windows of a warmup of ``num_warmup`` iterations, a pure
  function of the iteration count and the three buffer sizes (Stan's rules and defaults:
  initial buffer 75, first window 25, terminal buffer 50).
* Dual averaging of the log step size (Hoffman & Gelman 2014, Alg. 5) towards a target mean
  acceptance statistic, with ``gamma = 0.05``, ``t0 = 10``, ``kappa = 0.75`` and the shrinkage
  target ``mu = log(10 * eps0)``: :class:`DualAveragingState`, :func:`dual_averaging_init`,
  :func:`dual_averaging_update`, :func:`dual_averaging_step_size`.
* :func:`find_reasonable_step_size`: the step size heuristic run before dual averaging starts
  and after every metric update (Hoffman & Gelman 2014, Alg. 4, in Stan's variant).
* :class:`WindowAdaptation`: the adapter that ties them together, with ``init`` and
  ``update(state, info)``. Its :class:`WarmupState` holds everything that changes, the index
  of the current slow window included, so warmup can be stepped from outside, saved and
  resumed.

Every quantity is per chain (``(C,)`` step sizes, ``(C, D)`` or ``(C, D, D)`` inverse mass
matrices), except the counters, which all chains share.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .integrator import LogDensityFn, value_and_grad
from .metric import (
    WelfordState,
    make_metric,
    welford_init,
    welford_inverse_mass,
    welford_update,
)
from .nuts_kernel import NUTSState

__all__ = [
    "DualAveragingState",
    "WarmupInfo",
    "WarmupState",
    "WindowAdaptation",
    "dual_averaging_init",
    "dual_averaging_step_size",
    "dual_averaging_update",
    "find_reasonable_step_size",
    "warmup_schedule",
]

_GAMMA = 0.05
_T0 = 10.0
_KAPPA = 0.75


# ------------------------------------------------------------------------------- the schedule
def warmup_schedule(num_warmup: int, init_buffer: int = 75, base_window: int = 25,
                    term_buffer: int = 50) -> list[tuple[int, int]]:
    """Stan's mass-matrix adaptation windows.

    An initial buffer (step size only), slow windows of ``base_window``, twice that, four
    times, ... iterations in which draws are accumulated for the mass matrix (the last one
    stretched to the terminal buffer when its doubled successor would not fit), and a terminal
    buffer (step size only). When ``init_buffer + base_window + term_buffer > num_warmup`` the
    buffers become 15% and 10% of ``num_warmup`` and one window covers the rest; below 20
    iterations there is no mass-matrix adaptation. With the defaults and 1000 iterations the
    windows end at 100, 150, 250, 450 and 950, as in Stan.

    Parameters
    ----------
    num_warmup : int
        Number of warmup iterations.
    init_buffer : int, default 75
        Iterations before the first window.
    base_window : int, default 25
        Length of the first window.
    term_buffer : int, default 50
        Iterations after the last window.

    Returns
    -------
    list of (int, int)
        ``[(start, end), ...]`` half-open iteration ranges of the slow windows; the mass
        matrix is updated after iteration ``end - 1`` of each window.
    """
    if num_warmup < 20:
        return []
    if init_buffer + base_window + term_buffer > num_warmup:
        init_buffer = int(0.15 * num_warmup)
        term_buffer = int(0.1 * num_warmup)
        base_window = num_warmup - (init_buffer + term_buffer)
    last_end = num_warmup - term_buffer
    windows: list[tuple[int, int]] = []
    start, size = init_buffer, base_window
    while start < last_end:
        end = min(start + size, last_end)
        # After the first window, stretch a window whose doubled successor would not fit.
        if windows and end + 2 * size > last_end:
            end = last_end
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


# ----------------------------------------------------------------------------- dual averaging
class DualAveragingState(NamedTuple):
    """Per-chain dual-averaging state of the log step size.

    Attributes
    ----------
    step_size : Tensor
        ``(C,)`` step size for the next transition, ``exp(log eps_t)``.
    log_step_size_avg : Tensor
        ``(C,)`` weighted average of the iterates, ``log(eps_bar)``.
    h_bar : Tensor
        ``(C,)`` running average of ``target_accept - accept_prob``.
    mu : Tensor
        ``(C,)`` shrinkage target ``log(10 * eps0)``.
    count : int
        Updates since the (re)start.
    """

    step_size: Tensor
    log_step_size_avg: Tensor
    h_bar: Tensor
    mu: Tensor
    count: int


def dual_averaging_init(step_size: Tensor) -> DualAveragingState:
    """Start (or restart) dual averaging at ``(C,)`` ``step_size`` with
    ``mu = log(10 * step_size)``.

    Parameters
    ----------
    step_size : Tensor
        ``(C,)`` initial step sizes ``eps0``.

    Returns
    -------
    DualAveragingState
    """
    zeros = torch.zeros_like(step_size)
    return DualAveragingState(step_size, zeros, zeros, torch.log(10.0 * step_size), 0)


def dual_averaging_update(state: DualAveragingState, accept_prob: Tensor,
                          target_accept: float) -> DualAveragingState:
    """One update from the ``(C,)`` mean acceptance statistic of the last transition.

    Parameters
    ----------
    state : DualAveragingState
        Current state.
    accept_prob : Tensor
        ``(C,)`` mean acceptance statistic.
    target_accept : float
        Target of the mean acceptance statistic.

    Returns
    -------
    DualAveragingState
    """
    t = state.count + 1
    w = 1.0 / (t + _T0)
    h_bar = (1.0 - w) * state.h_bar + w * (target_accept - accept_prob)
    log_eps = state.mu - (math.sqrt(t) / _GAMMA) * h_bar
    eta = t ** (-_KAPPA)
    log_avg = eta * log_eps + (1.0 - eta) * state.log_step_size_avg
    return DualAveragingState(log_eps.exp(), log_avg, h_bar, state.mu, t)


def dual_averaging_step_size(state: DualAveragingState) -> Tensor:
    """The adapted ``(C,)`` step size: the averaged iterate ``eps_bar`` (the last iterate if
    there has been no update yet).

    Parameters
    ----------
    state : DualAveragingState

    Returns
    -------
    Tensor
    """
    return state.log_step_size_avg.exp() if state.count else state.step_size


# -------------------------------------------------------------------------- step size search
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
        Current state ``(position (C, D), log_density (C,), grad (C, D))``.
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
    n_chains, dim = q0.shape
    dtype = q0.dtype
    metric = make_metric(inverse_mass, n_chains, dim, dtype, q0.device)
    eps = torch.as_tensor(initial_step_size, dtype=dtype, device=q0.device)
    eps = eps.expand(n_chains).clone()
    log_target = math.log(0.8)

    def log_accept(eps: Tensor) -> Tensor:
        # One leapfrog step written out (not integrator.leapfrog: a different but equivalent
        # rounding, kept so that seeded runs reproduce earlier ones to the last bit).
        p = metric.sample_momentum(generator)
        h0 = metric.kinetic_energy(p) - logp0
        e = eps.unsqueeze(-1)
        p = p + 0.5 * e * g0
        q = q0 + e * metric.velocity(p)
        logp, g = value_and_grad(logdensity_fn, q)
        p = p + 0.5 * e * g
        h = metric.kinetic_energy(p) - logp
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


# ------------------------------------------------------------------------------- the adapter
class WarmupInfo(NamedTuple):
    """What the adapter needs to know about the transition just made.

    Attributes
    ----------
    position : Tensor
        ``(C, D)`` the draws.
    accept_prob : Tensor
        ``(C,)`` their mean acceptance statistic.
    """

    position: Tensor
    accept_prob: Tensor


class WarmupState(NamedTuple):
    """Everything that changes during warmup.

    Attributes
    ----------
    iteration : int
        Transitions seen so far.
    window : int
        Index into the schedule of the slow window the next transition belongs to, or will
        (``len(windows)`` once all have closed).
    dual_averaging : DualAveragingState
        Step size adaptation; ``dual_averaging.step_size`` is the step size to use next.
    inverse_mass : Tensor
        ``(C, D)`` or ``(C, D, D)`` inverse mass matrix to use next.
    welford : WelfordState
        Draws of the current window so far.
    metric_updated : bool
        The last update closed a window and set a new ``inverse_mass``; the caller may then
        search a new initial step size and call :meth:`WindowAdaptation.restart_step_size`.
    """

    iteration: int
    window: int
    dual_averaging: DualAveragingState
    inverse_mass: Tensor
    welford: WelfordState
    metric_updated: bool


class WindowAdaptation:
    """Windowed adaptation of step size and metric (Stan's scheme), as ``init``/``update``.

    Parameters
    ----------
    num_warmup : int
        Warmup iterations.
    target_accept : float, default 0.8
        Dual averaging target.
    dense_mass : bool, default False
        Adapt dense ``(C, D, D)`` instead of diagonal ``(C, D)`` inverse mass matrices.
    init_buffer, base_window, term_buffer : int
        Of :func:`warmup_schedule` (Stan's 75, 25, 50 by default).
    pool_step_size : bool, default False
        :meth:`final` gives every chain the geometric mean of the chains' adapted step sizes
        instead of its own (see :mod:`bayesresnet.inference.adaptation`).

    Attributes
    ----------
    windows : list of (int, int)
        The schedule.
    """

    def __init__(self, num_warmup: int, target_accept: float = 0.8, dense_mass: bool = False,
                 *, init_buffer: int = 75, base_window: int = 25, term_buffer: int = 50,
                 pool_step_size: bool = False) -> None:
        self.num_warmup = int(num_warmup)
        self.target_accept = float(target_accept)
        self.dense_mass = bool(dense_mass)
        self.pool_step_size = bool(pool_step_size)
        self.windows = warmup_schedule(self.num_warmup, init_buffer, base_window, term_buffer)

    def initial_inverse_mass(self, position: Tensor) -> Tensor:
        """The identity metric for ``(C, D)`` ``position``: ``(C, D)`` ones or ``(C, D, D)``
        identities."""
        n_chains, dim = position.shape
        kw = {"dtype": position.dtype, "device": position.device}
        if self.dense_mass:
            return torch.eye(dim, **kw).expand(n_chains, dim, dim).clone()
        return torch.ones(n_chains, dim, **kw)

    def init(self, position: Tensor, step_size: Tensor) -> WarmupState:
        """Start: identity metric, dual averaging from ``(C,)`` ``step_size``.

        Parameters
        ----------
        position : Tensor
            ``(C, D)`` starting positions (shape, dtype, device).
        step_size : Tensor
            ``(C,)`` initial step sizes (e.g. from :func:`find_reasonable_step_size` with
            :meth:`initial_inverse_mass`).

        Returns
        -------
        WarmupState
        """
        return WarmupState(0, 0, dual_averaging_init(step_size),
                           self.initial_inverse_mass(position),
                           welford_init(position, self.dense_mass), False)

    def update(self, state: WarmupState, info: WarmupInfo) -> WarmupState:
        """Adapt after one transition.

        Dual averaging takes ``info.accept_prob``; inside a slow window the draws are
        accumulated, and after a window's last iteration the inverse mass matrix becomes the
        regularized estimate from its draws (``metric_updated`` is then set).

        Parameters
        ----------
        state : WarmupState
            Before the transition.
        info : WarmupInfo
            The transition's draws and acceptance statistics.

        Returns
        -------
        WarmupState
        """
        i = state.iteration
        da = dual_averaging_update(state.dual_averaging, info.accept_prob, self.target_accept)
        window, welford, inverse_mass, updated = state.window, state.welford, \
            state.inverse_mass, False
        if window < len(self.windows) and i >= self.windows[window][0]:
            welford = welford_update(welford, info.position)
            if i == self.windows[window][1] - 1:
                inverse_mass = welford_inverse_mass(welford)
                welford = welford_init(info.position, self.dense_mass)
                window, updated = window + 1, True
        return WarmupState(i + 1, window, da, inverse_mass, welford, updated)

    def restart_step_size(self, state: WarmupState, step_size: Tensor) -> WarmupState:
        """Restart dual averaging from ``(C,)`` ``step_size`` (after a metric update)."""
        return state._replace(dual_averaging=dual_averaging_init(step_size))

    def final(self, state: WarmupState) -> tuple[Tensor, Tensor]:
        """The adapted ``(C,)`` step sizes (pooled if ``pool_step_size``) and inverse mass
        matrices.

        Parameters
        ----------
        state : WarmupState

        Returns
        -------
        step_size : Tensor
        inverse_mass : Tensor
        """
        step_size = dual_averaging_step_size(state.dual_averaging)
        if self.pool_step_size and state.iteration > 0:
            step_size = step_size.log().mean().exp().expand_as(step_size).clone()
        return step_size, state.inverse_mass
