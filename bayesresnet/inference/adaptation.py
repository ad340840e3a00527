"""Warmup followed by sampling: the driver loops of the lock-step NUTS kernel.

:func:`run_warmup` runs the transitions of :func:`bayesresnet.inference.nuts_kernel.step`
under the window adapter of :mod:`bayesresnet.inference.warmup` (Stan's scheme, done
independently for every chain but with all chains advancing together):

* step size: dual averaging towards ``target_accept``, started from the step size heuristic
  and restarted (heuristic again) after every mass-matrix update; the final step size is the
  averaged iterate, each chain's own or, with ``pool_step_size`` (what :class:`~bayesresnet.NUTS`
  uses), their geometric mean for every chain: each chain's own average is noisy where
  trajectories are long, and in lock-step every iteration waits for the chain with the smallest
  step (measured in docs/methods.rst, "NUTS on the demo network"); each chain keeps its own
  mass matrix;
* mass matrix: Welford estimates of the (co)variance of the draws in each slow window of
  :func:`~bayesresnet.inference.warmup.warmup_schedule`, regularized toward the identity as in
  Stan: ``n / (n + 5) * var + 1e-3 * 5 / (n + 5)``.

:func:`sample` runs warmup and then the sampling transitions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .nuts_kernel import LogDensityFn, NUTSInfo, NUTSState, init, step
from .warmup import WarmupInfo, WindowAdaptation, find_reasonable_step_size, warmup_schedule

__all__ = [
    "find_reasonable_step_size",
    "run_warmup",
    "sample",
    "warmup_schedule",
]

_STAT_KEYS = ("diverging", "tree_depth", "num_steps", "accept_prob", "energy",
              "reached_max_tree_depth")


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
    *,
    init_buffer: int = 75,
    base_window: int = 25,
    term_buffer: int = 50,
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
    init_buffer, base_window, term_buffer : int
        The window schedule's buffers (:func:`~bayesresnet.inference.warmup.warmup_schedule`;
        Stan's 75, 25, 50 by default).

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
    position = state.position
    adapter = WindowAdaptation(num_warmup, target_accept, dense_mass, init_buffer=init_buffer,
                               base_window=base_window, term_buffer=term_buffer,
                               pool_step_size=pool_step_size)
    if initial_step_size is None:
        eps0 = find_reasonable_step_size(state, logdensity_fn,
                                         adapter.initial_inverse_mass(position), generator)
    else:
        eps0 = torch.as_tensor(initial_step_size, dtype=position.dtype,
                               device=position.device).expand(position.shape[0])
    adapt = adapter.init(position, eps0)
    rows: list[NUTSInfo] = []
    eps_used: list[Tensor] = []
    logps: list[Tensor] = []
    for i in range(num_warmup):
        eps = adapt.dual_averaging.step_size
        eps_used.append(eps)
        state, info = step(state, logdensity_fn, eps, adapt.inverse_mass, generator,
                           max_tree_depth, max_delta_energy)
        rows.append(info)
        logps.append(state.log_density)
        adapt = adapter.update(adapt, WarmupInfo(state.position, info.accept_prob))
        if adapt.metric_updated:  # Stan searches a new initial step for the new metric
            eps = find_reasonable_step_size(state, logdensity_fn, adapt.inverse_mass,
                                            generator, adapt.dual_averaging.step_size)
            adapt = adapter.restart_step_size(adapt, eps)
        if callback is not None:
            callback(i, info)
    step_size, inverse_mass = adapter.final(adapt)
    warmup_info = _stack_stats(rows, eps_used, logps) if num_warmup > 0 else {}
    return state, step_size, inverse_mass, warmup_info


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
    *,
    init_buffer: int = 75,
    base_window: int = 25,
    term_buffer: int = 50,
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
    init_buffer, base_window, term_buffer : int
        The warmup window schedule's buffers (see :func:`run_warmup`).

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
        init_buffer=init_buffer, base_window=base_window, term_buffer=term_buffer,
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
        empty = torch.empty((n_chains, 0), dtype=state.position.dtype,
                            device=state.position.device)
        stats = {k: empty for k in (*_STAT_KEYS, "step_size", "log_density")}
    stats["inverse_mass"] = inverse_mass
    stats["warmup_diverging"] = warmup_info.get(
        "diverging", torch.zeros((n_chains, 0), dtype=torch.bool, device=state.position.device))
    return samples, stats
