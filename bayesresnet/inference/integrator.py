"""The batched log density gradient and the leapfrog integrator, for ``C`` chains at once.

:func:`value_and_grad` evaluates a batched log density ``(C, D) -> (C,)`` and its gradient
with one autograd pass. :func:`leapfrog` advances an :class:`IntegratorState` by one
velocity-Verlet step of the Hamiltonian ``-log p(q) + p^T M^{-1} p / 2``:

    p_half = p + (eps / 2) grad log p(q)
    q'     = q + eps M^{-1} p_half
    p'     = p_half + (eps / 2) grad log p(q')

with per-chain step sizes ``eps`` (negative to integrate backward in time, zero to hold a
chain in place). The step-size-dependent factors are computed once per segment of constant
step size by :func:`leapfrog_coefficients`, so a step costs one gradient evaluation and five
small tensor operations. The metric (diagonal or dense, :mod:`.metric`) supplies the drift
and the velocity ``M^{-1} p``, which the state carries because the NUTS U-turn criterion and
the kinetic energy both need it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .metric import Metric

__all__ = [
    "GradFn",
    "IntegratorState",
    "LeapfrogCoefficients",
    "LogDensityFn",
    "functional_value_and_grad",
    "leapfrog",
    "leapfrog_coefficients",
    "value_and_grad",
]

LogDensityFn = Callable[[Tensor], Tensor]
"""Batched unnormalized log density: ``(C, D) -> (C,)``, differentiable with autograd."""

GradFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``(C, D)`` positions to their ``(C,)`` log density and ``(C, D)`` gradient."""


def _engine_run_backward() -> Callable[..., tuple[Tensor, ...]] | None:
    """The C++ autograd engine's ``run_backward``, or ``None`` where torch lacks it.

    This is torch's private entry point, the one ``torch.autograd.grad`` ends in; it is the
    only private torch API the samplers use, and only here. Calling it directly skips
    ``torch.autograd.grad``'s Python layer (argument checks, ``_make_grads``, stashing the
    context in thread-local storage), measured 2026-12-06 on this machine (2 loaded cores,
    torch 2.13, one thread, float64, 32 chains, CPU time, median of 11 interleaved blocks): a
    gradient of the cubic benchmark network's log density took 1.50-1.81 ms through the engine
    and 0.05-0.06 ms more through ``torch.autograd.grad``, a trivial Gaussian's 23.5 us
    against 32.2 us; and ``torch.autograd.grad`` with ``grad_outputs`` imports sympy on first
    use (0.22-0.26 s CPU, once per process). ``benchmarks/nuts.py --compare-with`` measured the
    whole sampler 11% slower (median of 9 alternating rounds) with the public call. If the
    private call is missing or its signature changes, :func:`value_and_grad` falls back to
    ``torch.autograd.grad`` with the same result.
    """
    try:
        from torch.autograd import Variable

        return Variable._execution_engine.run_backward
    except (ImportError, AttributeError):  # pragma: no cover - other torch versions
        return None


_RUN_BACKWARD = _engine_run_backward()


def value_and_grad(logdensity_fn: LogDensityFn, position: Tensor,
                   ones: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Evaluate a batched log density and its gradient with one autograd pass.

    Parameters
    ----------
    logdensity_fn : LogDensityFn
        Maps ``(C, D)`` positions to a ``(C,)`` log density; chain ``c``'s value must
        depend on row ``c`` only.
    position : Tensor
        ``(C, D)`` positions (no gradient is propagated to the caller's tensor).
    ones : Tensor, optional
        A ``(C,)`` tensor of ones of the log density's dtype, the seed of the backward pass;
        a caller that evaluates many times passes one to save an allocation per call.

    Returns
    -------
    log_density : Tensor
        ``(C,)`` detached log density.
    grad : Tensor
        ``(C, D)`` gradient of each chain's log density with respect to its position.
    """
    with torch.enable_grad():
        x = position.detach().requires_grad_(True)
        logp = logdensity_fn(x)
        if not logp.requires_grad:  # constant density
            return logp.detach(), torch.zeros_like(x)
        if ones is None or ones.shape != logp.shape or ones.dtype != logp.dtype:
            ones = torch.ones_like(logp)
        if _RUN_BACKWARD is not None and x.device.type == "cpu":
            try:  # see _engine_run_backward
                (grad,) = _RUN_BACKWARD((logp,), (ones,), False, False, (x,), False,
                                        accumulate_grad=False)
                return logp.detach(), grad
            except TypeError:  # pragma: no cover - engine signature changed
                pass
        (grad,) = torch.autograd.grad(logp, x, ones)
    return logp.detach(), grad


def functional_value_and_grad(logdensity_fn: LogDensityFn) -> GradFn:
    """:func:`value_and_grad` written with ``torch.func``, for code that ``torch.compile``
    traces whole (autograd's engine is a graph break there).

    Eagerly it is slower than :func:`value_and_grad` (1.7 ms against 0.9 ms for the demo
    network with 4 chains); compiled, forward and backward become one program.

    Parameters
    ----------
    logdensity_fn : LogDensityFn
        Maps ``(C, D)`` positions to a ``(C,)`` log density; chain ``c``'s value must depend on
        row ``c`` only, so the gradient of the sum is each chain's own gradient.

    Returns
    -------
    GradFn
        ``(C, D) -> ((C,) log density, (C, D) gradient)``.
    """

    def total(position: Tensor) -> tuple[Tensor, Tensor]:
        log_density = logdensity_fn(position)
        return log_density.sum(), log_density

    grad_and_value = torch.func.grad_and_value(total, has_aux=True)

    def gradient_fn(position: Tensor) -> tuple[Tensor, Tensor]:
        grad, (_, log_density) = grad_and_value(position)
        return log_density, grad

    return gradient_fn


class IntegratorState(NamedTuple):
    """A point of a Hamiltonian trajectory for ``C`` chains.

    Attributes
    ----------
    position : Tensor
        ``(C, D)`` positions ``q``.
    momentum : Tensor
        ``(C, D)`` momenta ``p``.
    log_density : Tensor
        ``(C,)`` ``log p(q)``.
    grad : Tensor
        ``(C, D)`` ``grad log p(q)``.
    velocity : Tensor
        ``(C, D)`` ``M^{-1} p`` (the metric's :meth:`velocity` of ``momentum``).
    """

    position: Tensor
    momentum: Tensor
    log_density: Tensor
    grad: Tensor
    velocity: Tensor


class LeapfrogCoefficients(NamedTuple):
    """Step-size factors of a leapfrog segment.

    Attributes
    ----------
    half_step : Tensor
        ``(C, 1)`` ``eps / 2``.
    drift : Tensor
        The metric's drift coefficient for ``eps`` (``(C, D)`` ``eps M^{-1}`` for a diagonal
        metric, ``(C, 1)`` ``eps`` for a dense one).
    """

    half_step: Tensor
    drift: Tensor


def leapfrog_coefficients(metric: Metric, step_size: Tensor) -> LeapfrogCoefficients:
    """The factors :func:`leapfrog` needs for per-chain step sizes ``step_size``.

    Parameters
    ----------
    metric : DiagonalMetric or DenseMetric
        The chains' metric.
    step_size : Tensor
        ``(C, 1)`` signed step sizes (``0`` holds a chain where it is).

    Returns
    -------
    LeapfrogCoefficients
    """
    return LeapfrogCoefficients(0.5 * step_size, metric.drift_coefficient(step_size))


def leapfrog(state: IntegratorState, coefficients: LeapfrogCoefficients, metric: Metric,
             grad_fn: GradFn) -> IntegratorState:
    """One leapfrog step of every chain, with one batched gradient evaluation.

    Parameters
    ----------
    state : IntegratorState
        ``(C, D)`` current point (its ``log_density`` and ``velocity`` are not read).
    coefficients : LeapfrogCoefficients
        From :func:`leapfrog_coefficients`.
    metric : DiagonalMetric or DenseMetric
        The chains' metric.
    grad_fn : GradFn
        ``(C, D) -> ((C,), (C, D))`` log density and gradient, e.g.
        ``functools.partial(value_and_grad, logdensity_fn)``.

    Returns
    -------
    IntegratorState
        The next point.
    """
    half = coefficients.half_step
    p_half = torch.addcmul(state.momentum, half, state.grad)
    q = metric.drift(state.position, coefficients.drift, p_half)
    logp, g = grad_fn(q)
    p = torch.addcmul(p_half, half, g)
    return IntegratorState(q, p, logp, g, metric.velocity(p))
