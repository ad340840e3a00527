"""Microcanonical Langevin ensembles: MCLMC chains begun at distinct optimized networks.

The recipe of Sommer, Robnik, Nozadze, Seljak & Ruegamer (MILE, ICLR 2025): each chain starts
at a MAP fit from its own network initialization (the points ``NUTS(init='map')`` starts from,
for the same seed), tunes its own step size, decoherence length and diagonal preconditioner
(:mod:`bayesresnet.inference.mclmc_adaptation`), then runs microcanonical Langevin dynamics
(:mod:`bayesresnet.inference.mclmc_kernel`) for a fixed number of steps, keeping every
``thinning``-th state. The cost is fixed in advance: ``1 + (num_warmup + num_samples *
thinning) * g`` gradient evaluations per chain, with g = 2 for the default minimal-norm
integrator and 1 for leapfrog, all chains of a unit batched into one gradient per evaluation.

MCLMC has no accept/reject step: its draws carry a discretization bias that the step-size
tuning holds at a small energy-error variance per dimension (``desired_energy_variance``). The
diagnostics check that variance over the sampling run, besides each chain's mixing.

Per-draw statistics (arrays of shape (chain, draw))
---------------------------------------------------
``energy_change``
    Energy error of the step that produced the draw.
``diverging``
    A step since the previous draw ended in a non-finite state and was undone.
``step_size``, ``decoherence_length``
    The chain's tuned step size and momentum decoherence length L (constant over the run).
``log_density``
    Log density of the draw in z (log joint plus log-Jacobian).
``log_joint``
    ``model.log_joint`` of the constrained draw.

Extras: ``initial_position`` (C, D), ``scale`` (C, D) the diagonal preconditioner,
``energy_variance`` (C,) the mean squared energy error per dimension over all sampling steps,
``num_gradients`` (C,) gradient evaluations per chain, ``tuning_rejections`` (C,) tuning steps
undone, ``compiled_at_step`` (C,) the step (counted from 1, tuning included) from which the
chain's unit ran the compiled step, -1 if it never did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..model import BayesianResNet
from . import mclmc_adaptation, mclmc_kernel
from .base import (
    InferenceMethod,
    MethodResult,
    check_positive_float,
    check_positive_int,
    check_seed,
    make_progress,
    seeded_generator,
)
from .chains import (
    LogDensity,
    chain_group_plan,
    check_chain_settings,
    constrained_draws,
    start_positions,
)
from .executor import Plan, derived_seed, run_plan, span, split_range

__all__ = ["ENERGY_VARIANCE_LIMIT", "MCLMC", "sample"]

ENERGY_VARIANCE_LIMIT = 5e-3
"""The largest mean squared energy error per dimension over a chain's sampling steps that the
diagnostics accept (see :meth:`MCLMC.add_checks`).

An unadjusted sampler's bias grows with that figure, whatever step-size target produced it. On
a 100-dimensional standard Gaussian (``benchmarks/mclmc_bias.py``) it biased the variances by
2% at 4.5e-4, 4% at 2.7e-3 and 9% at 6.0e-3. So 5e-3 allows about 7% in a variance (3.5% in
a standard deviation). That is the Monte Carlo error of a standard deviation estimated from the
400 effective draws the ESS check asks of four chains, so the check fails a run whose bias would
show above its own noise. On the demo problem the check failed the run whose posterior
standard deviations were 12-26% too wide (0.013) and passed two that agreed with a NUTS
reference (0.0008, 0.0021)."""

# Streams derived from the fit's seed; chain group k > 0 uses (seed, _STREAM_UNIT, k).
_STREAM_CHAIN, _STREAM_UNIT = 21, 22


@dataclass
class MCLMC(InferenceMethod):
    """Microcanonical Langevin Monte Carlo from optimized starts (a MILE ensemble of chains).

    Parameters
    ----------
    num_samples : int
        Draws kept per chain.
    thinning : int
        Sampling steps per kept draw.
    num_warmup : int
        Steps of the three tuning phases per chain, discarded (see
        :mod:`bayesresnet.inference.mclmc_adaptation`). Formerly ``tune_steps``, a name that
        still works, with a DeprecationWarning.
    chains : int
        Number of chains; they run in lock-step, one batched gradient for all of a unit's
        chains per evaluation, so on a CPU more chains cost little extra time.
    init : {'map', 'network', 'prior', 'prior-map'}
        Where each chain starts, as in :class:`~bayesresnet.inference.nuts.NUTS`; ``'map'``
        (each chain's own network initialization optimized for ``init_steps`` Adam steps) is
        the MILE recipe.
    init_steps : int
        Adam steps of the MAP initialization.
    integrator : {'minimal_norm', 'leapfrog'}
        ``'minimal_norm'``: a two-gradient splitting whose energy error is about ten times
        smaller than leapfrog's at the same cost per unit of time (Robnik et al. 2023 use it
        by default). ``'leapfrog'``: one gradient per step.
    desired_energy_variance : float
        Target variance per dimension of the energy error of a step; smaller means smaller
        steps and less bias. The default, 1e-4, is a fifth of BlackJAX's: on the demo
        network's posterior the energy error is heavy-tailed (the largest 0.1% of the steps
        carry 70-100% of its mean square), and at 5e-4 the sampling steps' variance reached 26
        times the target and the posterior standard deviations of f came out 12-26% too wide
        against a NUTS reference (the noise's 83%); at 1e-4 every mean and sd agreed with the
        reference within 2.3 Monte Carlo standard errors (``benchmarks/results/mclmc_bias.md``).
    diagonal_preconditioning : bool
        Tune a diagonal preconditioner from the chain's own variances.
    decoherence_factor : float
        Sets the decoherence length to this fraction of the mean time between effectively
        independent draws of a coordinate, measured in the last tuning phase.
    compile_after : int or None
        Gradient evaluations per chain before the whole step (gradients, integrator and
        refresh) is compiled with ``torch.compile`` into one program; None never compiles.
        Compiling costs 10-40 s once per unit and made a step 2-8 times faster on the
        benchmark networks, so it pays after about 4 000-16 000 steps
        (``benchmarks/results/mclmc_step.md``); a run known to be longer gains most with 0
        (compiled from the first step). If the compiler fails, the run warns once and goes on
        eagerly.
    chains_per_unit : int, optional
        Chains per unit of work (default: all chains in one unit); an executor runs the units
        on separate workers (see :func:`bayesresnet.fit`).

    Notes
    -----
    Seeds: chain starting draws come from the same stream as NUTS's; chain group 0 refreshes
    its velocities from a stream of the fit's seed, group k > 0 from one derived from
    (seed, k), so a fit on an executor gives the same draws as a local one.
    """

    name: ClassVar[str] = "mclmc"
    kind: ClassVar[str] = "mcmc"
    thread_safe: ClassVar[bool] = True
    sampler_stats: ClassVar[frozenset[str] | None] = frozenset({
        "energy_change", "diverging", "step_size", "decoherence_length", "log_density",
        "log_joint"})
    renamed_settings: ClassVar[Mapping[str, str]] = {"tune_steps": "num_warmup"}

    num_samples: int = 1000
    thinning: int = 5
    num_warmup: int = 2000
    chains: int = 4
    init: str = "map"
    init_steps: int = 1000
    integrator: str = "minimal_norm"
    desired_energy_variance: float = 1e-4
    diagonal_preconditioning: bool = True
    decoherence_factor: float = 0.4
    compile_after: int | None = 20_000
    chains_per_unit: int | None = None

    def check_settings(self) -> None:
        for name in ("num_samples", "thinning", "chains", "init_steps"):
            check_positive_int("MCLMC", name, getattr(self, name))
        if isinstance(self.num_warmup, bool) or not isinstance(
                self.num_warmup, (int, np.integer)) or self.num_warmup < 10:
            raise ValueError(f"MCLMC: num_warmup must be an integer of at least 10, "
                             f"got {self.num_warmup!r}")
        check_positive_float("MCLMC", "desired_energy_variance", self.desired_energy_variance)
        check_positive_float("MCLMC", "decoherence_factor", self.decoherence_factor)
        check_chain_settings("MCLMC", self.chains_per_unit, self.compile_after, self.init)
        if not isinstance(self.diagonal_preconditioning, bool):
            raise ValueError(f"MCLMC: diagonal_preconditioning must be True or False, "
                             f"got {self.diagonal_preconditioning!r}")
        if self.integrator not in mclmc_kernel.INTEGRATORS:
            raise ValueError(f"MCLMC: unknown integrator {self.integrator!r}; expected one of "
                             f"{list(mclmc_kernel.INTEGRATORS)}")

    def validate(self, model: BayesianResNet) -> None:
        if model.dim < 2:
            raise ValueError(f"MCLMC: the model has {model.dim} parameter; the microcanonical "
                             "dynamics need at least 2")

    def chains_start_apart(self) -> bool:
        """Whether the chains start at distinct optimized points (``init`` 'map' or
        'prior-map'), so that they are judged chain by chain."""
        return self.init in ("map", "prior-map")

    def add_checks(self, posterior: Any, diag: Any) -> None:
        """"Energy error variance": the worst chain's mean squared energy error per dimension
        over the sampling steps, against :data:`ENERGY_VARIANCE_LIMIT`.

        The limit is on the figure itself, not on its ratio to ``desired_energy_variance``:
        on network posteriors the energy error is heavy-tailed, the largest 0.1% of the steps
        carry most of the mean, and a longer run meets more of them, so the mean can exceed
        the tuned target many times over while the draws stay within Monte Carlo error of a
        reference (``benchmarks/results/mclmc_bias.md``).
        """
        variance = np.asarray(posterior.extra.get("energy_variance", []), dtype=np.float64)
        if variance.size == 0:
            diag.notes.append("no energy_variance recorded; energy error check skipped")
            return
        worst = int(np.argmax(variance))
        diag.details["energy_variance"] = variance
        diag.add_check(
            "max energy error variance / dim", float(variance[worst]), "<=",
            ENERGY_VARIANCE_LIMIT,
            f"chain {worst}'s energy error has variance {variance[worst]:.3g} per dimension over "
            f"the sampling steps, more than {ENERGY_VARIANCE_LIMIT:g}: its unadjusted steps are "
            f"too long for the curvature it met (the tuning aimed at "
            f"{self.desired_energy_variance:g}), so its draws may be biased by more than their "
            "Monte Carlo error; lower desired_energy_variance")

    def num_gradients(self) -> int:
        """Gradient evaluations per chain of a run, fixed by the settings."""
        per_step = mclmc_kernel.gradients_per_step(self.integrator)
        return 1 + (self.num_warmup + self.num_samples * self.thinning) * per_step

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        """Sample the posterior of ``model`` given standardized ``x`` (N, in_dim), ``y``
        (N, out_dim).

        Returns
        -------
        MethodResult
            ``draws``: site -> (chains, num_samples, *site_shape), constrained; ``stats``: the
            module docstring's per-draw statistics, each (chains, num_samples); ``extra``: as
            listed there.
        """
        return run_plan(self.plan(model, x, y, seed), progress=progress)

    def chain_groups(self) -> list[range]:
        """The chains of each unit of work, in unit order."""
        return split_range(self.chains, self.chains_per_unit or self.chains)

    def plan(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int) -> Plan:
        """The run as independent chain groups and their merge (see
        :func:`bayesresnet.inference.executor.run_plan`)."""
        self.validate(model)
        seed = check_seed(seed)
        return chain_group_plan("MCLMC", self, model, x, y, seed, self.chain_groups(),
                                _sample_chain_group)


def _sample_chain_group(method: MCLMC, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
                        unit: int, chains: range, z_start: Tensor, *,
                        progress: bool) -> MethodResult:
    """One unit of work: start, tune, sample and constrain the chains ``chains``."""
    z0 = start_positions(model, x, y, z_start, method.init, method.init_steps, chains.start,
                         owner="MCLMC")

    def log_density(z: Tensor) -> Tensor:
        return model.log_density(z, x, y)

    stream = derived_seed(seed, _STREAM_CHAIN) if unit == 0 else \
        derived_seed(seed, _STREAM_UNIT, unit)
    samples, stats, extra = sample(
        log_density, z0, seeded_generator(stream), method, progress=progress,
        desc=f"MCLMC {span(chains, 'chain')}")
    draws, log_joint = constrained_draws(model, x, y, samples)
    stats["log_joint"] = log_joint
    return MethodResult(draws=draws, stats=stats, extra={"initial_position": z0, **extra})


def sample(logdensity_fn: LogDensity, z0: Tensor, generator: torch.Generator, method: MCLMC,
           *, progress: bool = False, desc: str = "MCLMC"
           ) -> tuple[Tensor, dict[str, np.ndarray], dict[str, Any]]:
    """Tune and run MCLMC on a batched flat log density from starting points ``z0`` (C, D).

    Parameters
    ----------
    logdensity_fn : callable
        ``(C, D) -> (C,)``, differentiable; the steps switch to one compiled program after
        ``method.compile_after`` gradient evaluations
        (:class:`~bayesresnet.inference.mclmc_kernel.Stepper`).
    z0 : Tensor
        ``(C, D)`` starting points.
    generator : torch.Generator
        Source of all the run's randomness.
    method : MCLMC
        The settings.
    progress : bool
        Show a progress bar.

    Returns
    -------
    samples : Tensor
        ``(C, num_samples, D)`` kept positions.
    stats : dict name -> ndarray (C, num_samples)
        The module docstring's per-draw statistics except ``log_joint``.
    extra : dict
        ``scale``, ``energy_variance``, ``num_gradients``, ``tuning_rejections``.
    """
    chains, dim = z0.shape
    steps = mclmc_adaptation.schedule(method.num_warmup, method.diagonal_preconditioning)
    total = steps.total + method.num_samples * method.thinning
    with make_progress(progress, total, desc) as bar:

        def callback(i: int, info: mclmc_kernel.MCLMCInfo) -> None:
            bar.update(1)

        state = mclmc_kernel.init(logdensity_fn, z0, generator)
        step_fn = mclmc_kernel.Stepper(logdensity_fn, generator, method.integrator,
                                       method.compile_after)
        tuned = mclmc_adaptation.tune(
            step_fn, state, steps, desired_energy_variance=method.desired_energy_variance,
            diagonal_preconditioning=method.diagonal_preconditioning,
            decoherence_factor=method.decoherence_factor,
            callback=callback if progress else None)
        state, params = tuned.state, tuned.params
        kept, energy, diverging, log_density = [], [], [], []
        squared_error = torch.zeros(chains, dtype=z0.dtype, device=z0.device)
        diverged = torch.zeros(chains, dtype=torch.bool, device=z0.device)
        for i in range(method.num_samples * method.thinning):
            state, info = step_fn(state, params)
            squared_error += info.energy_change ** 2
            diverged |= info.diverging
            if (i + 1) % method.thinning == 0:
                kept.append(state.position)
                energy.append(info.energy_change)
                diverging.append(diverged)
                log_density.append(state.log_density)
                diverged = torch.zeros(chains, dtype=torch.bool, device=z0.device)
            if progress:
                bar.update(1)
    per_chain = {"step_size": params.step_size, "decoherence_length": params.decoherence_length}
    stats = {
        "energy_change": torch.stack(energy, 1).cpu().numpy(),
        "diverging": torch.stack(diverging, 1).cpu().numpy(),
        "log_density": torch.stack(log_density, 1).cpu().numpy(),
        **{name: value.unsqueeze(1).expand(chains, method.num_samples).cpu().numpy().copy()
           for name, value in per_chain.items()},
    }
    steps_run = method.num_samples * method.thinning
    extra = {
        "scale": params.scale,
        "energy_variance": (squared_error / (steps_run * dim)).cpu().numpy(),
        "num_gradients": np.full(chains, method.num_gradients(), dtype=np.int64),
        "tuning_rejections": tuned.rejected.cpu().numpy(),
        "compiled_at_step": np.full(chains, -1 if step_fn.advance.compiled_at is None
                                    else step_fn.advance.compiled_at, dtype=np.int64),
    }
    return torch.stack(kept, 1), stats, extra
