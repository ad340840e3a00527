"""Microcanonical Langevin Monte Carlo for ``C`` chains in lock-step, as small pure functions.

MCLMC (Robnik, De Luca, Silverstein & Seljak 2023; Robnik & Seljak 2024) moves a position x
with a velocity u of unit length. Between refreshes the pair follows the energy-sampling
Hamiltonian (ESH) dynamics

    dx/dt = u,        du/dt = (I - u u^T) g(x) / (d - 1),        g = grad log p,

whose time average over x is the target p in d dimensions. The velocity equation has a closed
form for a constant gradient, so an integrator alternates exact velocity updates ("B") with
position drifts ("A"). After each integration step the velocity is partly refreshed with
Gaussian noise, which turns the deterministic dynamics into an ergodic Langevin process with a
momentum decoherence length L. No Metropolis test follows: the step size is kept small enough
that the energy error, which measures the discretization bias, stays at a set variance (see
:mod:`bayesresnet.inference.mclmc_adaptation`).

Preconditioning: with a diagonal scale s (the square root of a diagonal posterior covariance
estimate), the dynamics run in y = x / s, where the gradient is s * g and a drift of y by
t u moves x by t s u.

Everything is batched over chains: positions (C, D), one log density and gradient evaluation
per "A" drift over all chains at once, and per-chain step sizes (C,), decoherence lengths (C,)
and scales (C, D).

:func:`advance` is one step as a pure function of the state, the parameters and the refresh
noise, with no data-dependent Python branch, so that ``torch.compile`` can make the whole step
one program; :class:`Stepper` draws the noise, counts gradients and switches from the eager
step to the compiled one (:mod:`bayesresnet.inference.compilation`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .compilation import TieredFunction
from .integrator import GradFn, LogDensityFn, functional_value_and_grad, value_and_grad

__all__ = ["INTEGRATORS", "MCLMCInfo", "MCLMCState", "Parameters", "StepFn", "Stepper", "advance",
           "gradients_per_step", "init", "partially_refresh", "refresh_noise", "step",
           "velocity_update"]

# Position weight of the first and last velocity updates of the minimal-norm integrator
# (Omelyan, Mryglod & Folk 2003; McLachlan 1995), which minimizes its leading error term.
_MINIMAL_NORM_LAMBDA = 0.1931833275037836


class MCLMCState(NamedTuple):
    """State of ``C`` chains between steps.

    Attributes
    ----------
    position : Tensor
        ``(C, D)`` positions x.
    velocity : Tensor
        ``(C, D)`` unit velocities u (in the preconditioned coordinates).
    log_density : Tensor
        ``(C,)`` log density at ``position``.
    grad : Tensor
        ``(C, D)`` gradient of the log density at ``position`` (in x).
    """

    position: Tensor
    velocity: Tensor
    log_density: Tensor
    grad: Tensor


class Parameters(NamedTuple):
    """Each chain's settings.

    Attributes
    ----------
    step_size : Tensor
        ``(C,)`` integration time per step.
    decoherence_length : Tensor
        ``(C,)`` momentum decoherence length L: the velocity keeps a fraction
        ``exp(-step_size / L)`` of itself at each refresh.
    scale : Tensor
        ``(C, D)`` diagonal preconditioner s (ones: none).
    """

    step_size: Tensor
    decoherence_length: Tensor
    scale: Tensor


class MCLMCInfo(NamedTuple):
    """What one step did, per chain.

    Attributes
    ----------
    energy_change : Tensor
        ``(C,)`` change of the ESH energy (kinetic change minus log-density change) over the
        integration step; its variance per dimension is what the step-size tuning targets.
        Zero for a chain whose step was rejected.
    diverging : Tensor
        ``(C,)`` bool: the step produced a non-finite position, log density, gradient or energy;
        the chain kept its previous state.
    """

    energy_change: Tensor
    diverging: Tensor


def init(logdensity_fn: LogDensityFn, position: Tensor, generator: torch.Generator
         ) -> MCLMCState:
    """Start ``C`` chains at ``position`` (C, D) with uniformly random unit velocities."""
    position = position.detach().clone()
    log_density, grad = value_and_grad(logdensity_fn, position)
    # Drawn on the generator's device (the CPU), so a seed gives the same chains on any device.
    velocity = torch.randn(position.shape, generator=generator, dtype=position.dtype,
                           device=generator.device).to(position.device)
    velocity = velocity / velocity.norm(dim=-1, keepdim=True)
    return MCLMCState(position, velocity, log_density, grad)


def velocity_update(velocity: Tensor, grad: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
    """Exact ESH velocity update for a constant gradient over ``time``.

    Parameters
    ----------
    velocity : Tensor
        ``(C, D)`` unit velocities.
    grad : Tensor
        ``(C, D)`` gradient of the log density in the coordinates the velocity lives in.
    time : Tensor
        ``(C,)`` integration time.

    Returns
    -------
    velocity : Tensor
        ``(C, D)`` updated unit velocities.
    kinetic_change : Tensor
        ``(C,)`` change of the kinetic energy, ``(d - 1)`` times the log of the factor by which
        the velocity's unnormalized length grew.
    """
    dim = velocity.shape[-1]
    grad_norm = grad.norm(dim=-1, keepdim=True)
    direction = grad / grad_norm.clamp_min(torch.finfo(grad.dtype).tiny)
    along = (velocity * direction).sum(-1, keepdim=True)
    delta = time.unsqueeze(-1) * grad_norm / (dim - 1)
    zeta = torch.exp(-delta)
    raw = direction * (1 - zeta) * (1 + zeta + along * (1 - zeta)) + 2 * zeta * velocity
    kinetic = delta - math.log(2) + torch.log(1 + along + (1 - along) * zeta ** 2)
    return raw / raw.norm(dim=-1, keepdim=True), (dim - 1) * kinetic.squeeze(-1)


def _drift(gradient_fn: GradFn, position: Tensor, velocity: Tensor, scale: Tensor,
           time: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Move x by ``time * scale * u`` and evaluate the log density and gradient there."""
    position = position + time.unsqueeze(-1) * scale * velocity
    log_density, grad = gradient_fn(position)
    return position, log_density, grad


def _leapfrog(gradient_fn: GradFn, state: MCLMCState, params: Parameters
              ) -> tuple[MCLMCState, Tensor]:
    """Velocity Verlet, B(e/2) A(e) B(e/2): one gradient per step."""
    eps, scale = params.step_size, params.scale
    velocity, kinetic_1 = velocity_update(state.velocity, state.grad * scale, eps / 2)
    position, log_density, grad = _drift(gradient_fn, state.position, velocity, scale, eps)
    velocity, kinetic_2 = velocity_update(velocity, grad * scale, eps / 2)
    return MCLMCState(position, velocity, log_density, grad), kinetic_1 + kinetic_2


def _minimal_norm(gradient_fn: GradFn, state: MCLMCState, params: Parameters
                  ) -> tuple[MCLMCState, Tensor]:
    """The minimal-norm splitting B(le) A(e/2) B((1-2l)e) A(e/2) B(le): two gradients per
    step, with a much smaller energy error than leapfrog at the same cost per unit time."""
    eps, scale, lam = params.step_size, params.scale, _MINIMAL_NORM_LAMBDA
    velocity, kinetic = velocity_update(state.velocity, state.grad * scale, lam * eps)
    position, _, grad = _drift(gradient_fn, state.position, velocity, scale, eps / 2)
    velocity, change = velocity_update(velocity, grad * scale, (1 - 2 * lam) * eps)
    kinetic = kinetic + change
    position, log_density, grad = _drift(gradient_fn, position, velocity, scale, eps / 2)
    velocity, change = velocity_update(velocity, grad * scale, lam * eps)
    return MCLMCState(position, velocity, log_density, grad), kinetic + change


Integrator = Callable[[GradFn, MCLMCState, Parameters], tuple[MCLMCState, Tensor]]

INTEGRATORS: dict[str, tuple[Integrator, int]] = {
    "minimal_norm": (_minimal_norm, 2),
    "leapfrog": (_leapfrog, 1),
}
"""Integrator name -> (function, gradient evaluations per step)."""


def gradients_per_step(integrator: str) -> int:
    """Log-density gradient evaluations one step of ``integrator`` costs."""
    return INTEGRATORS[integrator][1]


def refresh_noise(velocity: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like ``velocity`` (C, D) for :func:`partially_refresh`.

    Drawn on the generator's device (the CPU), so a seed gives the same chains on any device,
    and in single precision whatever the velocity's: the noise only turns the velocity's
    direction, which needs no more resolution than 2**-24, and PyTorch draws single-precision
    normals on the CPU about four times faster than double (on the demo network 4 us against
    16 us per step, 5% of a compiled step). :func:`partially_refresh` converts it.
    """
    return torch.randn(velocity.shape, generator=generator, dtype=torch.float32,
                       device=generator.device).to(velocity.device)


def partially_refresh(velocity: Tensor, params: Parameters, noise: Tensor) -> Tensor:
    """Mix a fraction of fresh isotropic noise into each unit velocity.

    Keeps ``c = exp(-step_size / L)`` of the velocity and adds ``sqrt(1 - c**2)`` times the
    standard normal ``noise`` (C, D), of any floating dtype, divided by sqrt(D) (of expected
    unit length), then normalizes.
    """
    keep = torch.exp(-params.step_size / params.decoherence_length).unsqueeze(-1)
    noise = noise.to(velocity.dtype)
    mixed = keep * velocity + torch.sqrt(1 - keep ** 2) * noise / math.sqrt(velocity.shape[-1])
    return mixed / mixed.norm(dim=-1, keepdim=True)


def advance(gradient_fn: GradFn, state: MCLMCState, params: Parameters, noise: Tensor,
            integrator: str = "minimal_norm") -> tuple[MCLMCState, MCLMCInfo]:
    """One MCLMC step of every chain: an integration step, then a partial velocity refresh
    with ``noise``.

    A chain whose step ends in a non-finite state keeps its previous position (its velocity is
    still refreshed) and reports ``diverging``. Written without data-dependent branches, so
    that it compiles to one program.

    Parameters
    ----------
    gradient_fn : GradFn
        ``(C, D)`` positions to their ``(C,)`` log density and ``(C, D)`` gradient.
    state : MCLMCState
    params : Parameters
    noise : Tensor
        ``(C, D)`` standard normal draws for the refresh (:func:`refresh_noise`).
    integrator : {'minimal_norm', 'leapfrog'}

    Returns
    -------
    MCLMCState, MCLMCInfo
    """
    integrate, _ = INTEGRATORS[integrator]
    new, kinetic = integrate(gradient_fn, state, params)
    energy_change = kinetic - (new.log_density - state.log_density)
    ok = (torch.isfinite(energy_change) & torch.isfinite(new.position).all(-1)
          & torch.isfinite(new.grad).all(-1))
    keep = ok.unsqueeze(-1)
    new = MCLMCState(torch.where(keep, new.position, state.position),
                     torch.where(keep, new.velocity, state.velocity),
                     torch.where(ok, new.log_density, state.log_density),
                     torch.where(keep, new.grad, state.grad))
    energy_change = torch.where(ok, energy_change, torch.zeros_like(energy_change))
    velocity = partially_refresh(new.velocity, params, noise)
    return new._replace(velocity=velocity), MCLMCInfo(energy_change, ~ok)


def step(logdensity_fn: LogDensityFn, state: MCLMCState, params: Parameters,
         generator: torch.Generator, integrator: str = "minimal_norm"
         ) -> tuple[MCLMCState, MCLMCInfo]:
    """One eager MCLMC step of every chain (:func:`advance` with noise from ``generator``).

    Parameters
    ----------
    logdensity_fn : LogDensityFn
        Batched log density ``(C, D) -> (C,)``.
    state : MCLMCState
    params : Parameters
    generator : torch.Generator
        Source of the refresh noise.
    integrator : {'minimal_norm', 'leapfrog'}

    Returns
    -------
    MCLMCState, MCLMCInfo
    """
    noise = refresh_noise(state.velocity, generator)
    return advance(functools.partial(value_and_grad, logdensity_fn), state, params, noise,
                   integrator)


StepFn = Callable[[MCLMCState, Parameters], tuple[MCLMCState, MCLMCInfo]]
"""One step of every chain with given parameters, drawing its own noise."""


class Stepper:
    """:func:`step` as a :data:`StepFn` that switches to a compiled step.

    For its first ``compile_after`` gradient evaluations per chain it runs :func:`advance`
    eagerly with autograd gradients; then :func:`advance` with ``torch.func`` gradients,
    compiled by ``torch.compile`` into one program (gradients, integrator, finiteness guard and
    refresh), which on the demo network runs a step about 3 times faster
    (:mod:`bayesresnet.inference.compilation`). The refresh noise is drawn eagerly from
    ``generator`` either way, so the random stream is the same; the compiled program's
    rounding differs from the eager one's by about 1e-13.

    Parameters
    ----------
    logdensity_fn : LogDensityFn
        Batched log density ``(C, D) -> (C,)``; it must have been evaluated eagerly once (as
        :func:`init` does) before it is compiled, so that caches it fills hold plain tensors.
    generator : torch.Generator
    integrator : {'minimal_norm', 'leapfrog'}
    compile_after : int or None
        Gradient evaluations per chain before the switch; None never compiles.
    owner : str
        The sampler's name, for the warning when compiling fails.

    Attributes
    ----------
    advance : TieredFunction
        The eager and compiled steps; ``advance.compiled_at`` is the step that first ran
        compiled (None while eager).
    """

    def __init__(self, logdensity_fn: LogDensityFn, generator: torch.Generator,
                 integrator: str = "minimal_norm", compile_after: int | None = None,
                 owner: str = "MCLMC") -> None:
        self.generator = generator
        eager_gradient = functools.partial(value_and_grad, logdensity_fn)
        functional_gradient = functional_value_and_grad(logdensity_fn)

        def eager_step(state: MCLMCState, params: Parameters, noise: Tensor
                       ) -> tuple[MCLMCState, MCLMCInfo]:
            return advance(eager_gradient, state, params, noise, integrator)

        def compilable_step(state: MCLMCState, params: Parameters, noise: Tensor
                            ) -> tuple[MCLMCState, MCLMCInfo]:
            return advance(functional_gradient, state, params, noise, integrator)

        self.advance = TieredFunction(eager_step, compilable_step, compile_after,
                                      cost_per_call=gradients_per_step(integrator), owner=owner,
                                      what="step", fullgraph=True)

    def __call__(self, state: MCLMCState, params: Parameters) -> tuple[MCLMCState, MCLMCInfo]:
        return self.advance(state, params, refresh_noise(state.velocity, self.generator))
