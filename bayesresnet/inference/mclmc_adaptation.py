"""Tuning of MCLMC's step size, decoherence length and diagonal preconditioner, per chain.

Three phases, after Robnik et al. (2023) and the ensemble recipe of Sommer et al. (MILE, 2025),
run on all chains in lock-step, each chain tuning its own parameters:

1. **Step size** (``phase1`` steps). MCLMC has no Metropolis test; its bias grows with the
   variance of the energy error per step. The step size is driven toward a target variance per
   dimension, ``desired_energy_variance``: each step's ratio ``xi = dE**2 / (d * target)`` is
   turned into an estimate of ``xi / eps**6`` (the energy error of a second-order integrator
   scales as eps**3), averaged with exponential forgetting (about 150 effective steps) and with
   weights that discount outliers, and eps is set where that estimate predicts ``xi = 1``. A
   step that fails (a non-finite state) or whose energy error is absurd (``xi`` above
   :data:`REJECT_XI`) is undone and caps the step size at 0.8 times its value: the chains start at
   optimized networks, and one huge unadjusted step would throw them far from there.
2. **Moments** (``phase2`` steps). The step size keeps adapting while a step-size-weighted
   running mean and variance of the position are collected. The decoherence length becomes the
   square root of the summed variances (the radius of the typical set); with
   ``diagonal_preconditioning`` the square roots of the variances become the preconditioner,
   the length becomes sqrt(D) in the rescaled coordinates, and the step size is adapted afresh
   for ``readjust`` steps.
3. **Effective sample size** (``phase3`` steps). With the parameters fixed, the chain runs and
   its positions are kept (thinned to a memory budget). The decoherence length is set to
   ``decoherence_factor * eps * mean_d(steps / ESS_d)``: a fraction of the mean number of
   steps, in units of time, between effectively independent draws of each coordinate. If the
   phase's mean squared energy error per dimension exceeded the target, the step size shrinks
   by the sixth root of the excess (our addition: chains begun at a mode keep moving into
   sharper regions after the adaptive phases, and the unadjusted steps must not outgrow them).

Phase 2's moments come from its second half only, for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .mclmc_kernel import MCLMCInfo, MCLMCState, Parameters, StepFn

__all__ = ["REJECT_XI", "Schedule", "StepSizeAdapter", "TuningResult", "effective_sample_size",
           "schedule", "step_size_init", "step_size_update", "tune"]

REJECT_XI = 1e4
"""During tuning, a step whose squared energy error exceeds this many times its target
(``d * desired_energy_variance``) is undone and shrinks the step size."""

# The exponential forgetting keeps about this many steps in the step-size estimate.
_EFFECTIVE_STEPS = 150
# How much one step's energy error is trusted: larger values discount outliers less.
_TRUST = 1.5
_SHRINK = 0.8
# Memory budget (bytes) for the positions kept in phase 3.
_PHASE3_BYTES = 1 << 27

StepCallback = Callable[[int, MCLMCInfo], None]


class Schedule(NamedTuple):
    """Steps of each tuning phase (see the module docstring)."""

    phase1: int
    phase2: int
    readjust: int
    phase3: int

    @property
    def total(self) -> int:
        return self.phase1 + self.phase2 + self.readjust + self.phase3


def schedule(num_warmup: int, diagonal_preconditioning: bool = True) -> Schedule:
    """Split ``num_warmup`` into the phases: 30% step size, 30% moments, 10% step-size
    readjustment after preconditioning (given to phase 2 without it), the rest ESS."""
    phase1 = round(0.3 * num_warmup)
    readjust = round(0.1 * num_warmup) if diagonal_preconditioning else 0
    phase2 = round(0.3 * num_warmup) + (0 if diagonal_preconditioning else round(0.1 * num_warmup))
    return Schedule(phase1, phase2, readjust, num_warmup - phase1 - phase2 - readjust)


class StepSizeAdapter(NamedTuple):
    """Per-chain state of the step-size adaptation.

    Attributes
    ----------
    step_size : Tensor
        ``(C,)`` current step sizes.
    step_size_max : Tensor
        ``(C,)`` caps, lowered after each rejected step.
    weighted_sum : Tensor
        ``(C,)`` discounted, weighted sum of ``xi / eps**6``.
    weight_total : Tensor
        ``(C,)`` discounted sum of the weights.
    """

    step_size: Tensor
    step_size_max: Tensor
    weighted_sum: Tensor
    weight_total: Tensor


def step_size_init(step_size: Tensor) -> StepSizeAdapter:
    """A fresh adapter starting at ``step_size`` (C,), with no cap."""
    zeros = torch.zeros_like(step_size)
    return StepSizeAdapter(step_size, torch.full_like(step_size, math.inf), zeros, zeros)


def step_size_update(adapter: StepSizeAdapter, energy_change: Tensor, rejected: Tensor, dim: int,
                     desired_energy_variance: float) -> StepSizeAdapter:
    """Update every chain's step size from its last step's energy error.

    Parameters
    ----------
    adapter : StepSizeAdapter
    energy_change : Tensor
        ``(C,)`` energy error of the last step (ignored where ``rejected``).
    rejected : Tensor
        ``(C,)`` bool: the step was undone; the cap drops to 0.8 times the step size used.
    dim : int
        Dimension D of the target.
    desired_energy_variance : float
        Target variance of the energy error per dimension.
    """
    eps = adapter.step_size
    decay = (_EFFECTIVE_STEPS - 1) / (_EFFECTIVE_STEPS + 1)
    energy_change = torch.where(rejected, torch.zeros_like(energy_change), energy_change)
    xi = energy_change ** 2 / (dim * desired_energy_variance) + 1e-8
    weight = torch.exp(-0.5 * (torch.log(xi) / (6.0 * _TRUST)) ** 2)
    weighted_sum = decay * adapter.weighted_sum + weight * xi / eps ** 6
    weight_total = decay * adapter.weight_total + weight
    cap = torch.where(rejected, _SHRINK * eps, adapter.step_size_max)
    new_eps = torch.minimum((weighted_sum / weight_total) ** (-1.0 / 6.0), cap)
    return StepSizeAdapter(new_eps, cap, weighted_sum, weight_total)


def effective_sample_size(samples: np.ndarray) -> np.ndarray:
    """Single-chain effective sample size of every coordinate of every chain.

    Autocorrelations by FFT, summed in pairs up to the first negative pair and made
    monotone (Geyer's initial monotone sequence).

    Parameters
    ----------
    samples : ndarray (C, N, D)

    Returns
    -------
    ndarray (C, D)
        ESS, bounded to [1, N log10 N] as ArviZ bounds it; a constant coordinate gets N.
    """
    n = samples.shape[1]
    centered = samples - samples.mean(axis=1, keepdims=True)
    size = 1 << math.ceil(math.log2(2 * n))
    spectrum = np.fft.rfft(centered, n=size, axis=1)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=1)[:, :n] / n
    variance = acov[:, :1]
    flat = variance[:, 0] <= 0
    rho = acov / np.where(variance > 0, variance, 1.0)
    pairs = n // 2
    pair_sums = rho[:, 0:2 * pairs:2] + rho[:, 1:2 * pairs:2]  # (C, pairs, D)
    positive = np.cumprod(pair_sums > 0, axis=1).astype(bool)
    monotone = np.minimum.accumulate(np.where(positive, pair_sums, 0.0), axis=1)
    tau = -1.0 + 2.0 * np.where(positive, monotone, 0.0).sum(axis=1)
    ess = n / np.maximum(tau, 1.0 / math.log10(max(n, 10)))
    return np.where(flat, float(n), np.maximum(ess, 1.0))


class TuningResult(NamedTuple):
    """Outcome of :func:`tune`.

    Attributes
    ----------
    state : MCLMCState
        The chains after tuning.
    params : Parameters
        The tuned parameters of every chain.
    steps : int
        Steps taken (each costs the integrator's gradient evaluations).
    rejected : Tensor
        ``(C,)`` steps undone per chain.
    """

    state: MCLMCState
    params: Parameters
    steps: int
    rejected: Tensor


def _adaptive_steps(step_fn: StepFn, state: MCLMCState, params: Parameters,
                    adapter: StepSizeAdapter, num_steps: int,
                    desired_energy_variance: float, moments: list[Tensor] | None,
                    rejected_total: Tensor, callback: StepCallback | None, offset: int
                    ) -> tuple[MCLMCState, StepSizeAdapter, Tensor]:
    """Steps with step-size adaptation; adds step-size-weighted position moments (sum of
    weights, of x, of x**2) of the second half of the steps into ``moments`` when given (the
    first half lets chains begun at a mode drift into the typical set first). Undoes steps
    with absurd energy errors."""
    dim = state.position.shape[-1]
    for i in range(num_steps):
        params = params._replace(step_size=adapter.step_size)
        new, info = step_fn(state, params)
        absurd = info.energy_change ** 2 > REJECT_XI * dim * desired_energy_variance
        rejected = info.diverging | absurd
        if bool(absurd.any()):
            keep = absurd.unsqueeze(-1)
            new = MCLMCState(torch.where(keep, state.position, new.position), new.velocity,
                             torch.where(absurd, state.log_density, new.log_density),
                             torch.where(keep, state.grad, new.grad))
        state = new
        adapter = step_size_update(adapter, info.energy_change, rejected, dim,
                                   desired_energy_variance)
        rejected_total = rejected_total + rejected.to(rejected_total.dtype)
        if moments is not None and 2 * i >= num_steps:
            weight = torch.where(rejected, torch.zeros_like(params.step_size), params.step_size)
            moments[0] += weight
            moments[1] += weight.unsqueeze(-1) * state.position
            moments[2] += weight.unsqueeze(-1) * state.position ** 2
        if callback is not None:
            callback(offset + i, info)
    return state, adapter, rejected_total


def tune(step_fn: StepFn, state: MCLMCState, steps: Schedule, *,
         desired_energy_variance: float = 1e-4, diagonal_preconditioning: bool = True,
         decoherence_factor: float = 0.4, callback: StepCallback | None = None
         ) -> TuningResult:
    """Run the three tuning phases (module docstring) on every chain.

    Parameters
    ----------
    step_fn : StepFn
        One step of every chain with given parameters, e.g. a
        :class:`~bayesresnet.inference.mclmc_kernel.Stepper`.
    state : MCLMCState
        The chains' starting state (:func:`~bayesresnet.inference.mclmc_kernel.init`).
    steps : Schedule
    desired_energy_variance : float
        Target variance of the energy error per dimension.
    diagonal_preconditioning : bool
        Estimate a diagonal preconditioner in phase 2.
    decoherence_factor : float
        The factor of phase 3 (0.4 in Robnik et al.).
    callback : callable(step, MCLMCInfo), optional
        Called after every step.

    Returns
    -------
    TuningResult
    """
    chains, dim = state.position.shape
    dtype, device = state.position.dtype, state.position.device
    ones = torch.ones(chains, dtype=dtype, device=device)
    params = Parameters(0.25 * math.sqrt(dim) * ones, math.sqrt(dim) * ones,
                        torch.ones(chains, dim, dtype=dtype, device=device))
    adapter = step_size_init(params.step_size)
    rejected = torch.zeros(chains, dtype=torch.int64, device=device)

    state, adapter, rejected = _adaptive_steps(step_fn, state, params, adapter, steps.phase1,
                                               desired_energy_variance, None, rejected, callback,
                                               0)
    moments = [torch.zeros(chains, dtype=dtype, device=device),
               torch.zeros(chains, dim, dtype=dtype, device=device),
               torch.zeros(chains, dim, dtype=dtype, device=device)]
    state, adapter, rejected = _adaptive_steps(step_fn, state, params, adapter, steps.phase2,
                                               desired_energy_variance, moments, rejected,
                                               callback, steps.phase1)
    done = steps.phase1 + steps.phase2
    params = params._replace(step_size=adapter.step_size)
    if steps.phase2 > 0:
        total = moments[0].clamp_min(torch.finfo(dtype).tiny).unsqueeze(-1)
        mean = moments[1] / total
        variance = (moments[2] / total - mean ** 2).clamp_min(torch.finfo(dtype).tiny)
        if diagonal_preconditioning:
            # Step sizes are in units of the scale: start where one step moves as far.
            typical = variance.mean(-1).sqrt()
            params = Parameters(params.step_size / typical, math.sqrt(dim) * ones,
                                variance.sqrt())
            adapter = step_size_init(params.step_size)
            state, adapter, rejected = _adaptive_steps(
                step_fn, state, params, adapter, steps.readjust, desired_energy_variance, None,
                rejected, callback, done)
            params = params._replace(step_size=adapter.step_size)
            done += steps.readjust
        else:
            params = params._replace(decoherence_length=variance.sum(-1).sqrt())

    if steps.phase3 > 1:
        stride = max(1, math.ceil(steps.phase3 * chains * dim * 8 / _PHASE3_BYTES))
        kept = []
        squared_error = torch.zeros(chains, dtype=dtype, device=device)
        for i in range(steps.phase3):
            state, info = step_fn(state, params)
            rejected = rejected + info.diverging.to(rejected.dtype)
            squared_error += info.energy_change ** 2
            if (i + 1) % stride == 0:
                kept.append(state.position)
            if callback is not None:
                callback(done + i, info)
        if len(kept) > 1:
            ess = effective_sample_size(torch.stack(kept, 1).cpu().numpy())  # (C, D)
            steps_per_draw = torch.as_tensor((len(kept) * stride / ess).mean(-1), dtype=dtype,
                                             device=device)
            params = params._replace(
                decoherence_length=decoherence_factor * params.step_size * steps_per_draw)
        # With the parameters fixed the chain may reach sharper curvature than the adaptive
        # phases saw; shrink the step to bring that phase's energy error variance (mean, so
        # rare large errors count) back to the target, using Var ~ eps**6. L is a time and
        # stays.
        variance = squared_error / (steps.phase3 * dim)
        shrink = (desired_energy_variance / variance.clamp_min(1e-300)) ** (1.0 / 6.0)
        params = params._replace(step_size=params.step_size * shrink.clamp(max=1.0))
    return TuningResult(state, params, steps.total, rejected)
