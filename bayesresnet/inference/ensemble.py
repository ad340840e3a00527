"""Deep ensembles, anchored (randomized-MAP) ensembles, and the MAP point estimate.

Every member is a MAP fit of the model from its own random initialization. All members are
trained together as one batched tensor program: their flat unconstrained parameters are stacked
in a (members, dim) tensor and ``bayesresnet.inference.optim.adam_maximize`` ascends the sum
of their objectives. Adam is elementwise and member c's objective depends only on row c, so this
is exactly ``members`` independent Adam runs at the Python cost of one.

A run is planned as groups of members (``members_per_unit``), each a unit of work that runs here
or on an executor (:mod:`bayesresnet.inference.executor`) with the same result: the starting
points and anchors of all members are drawn from the fit's seed first, then each group trains
on its own; group 0 continues the seed's stream for its minibatches (exactly the stream of an
undivided run) and group k > 0 uses a stream derived from (seed, k).

The optimization runs in the unconstrained space z without the log-Jacobian term, so its optimum
is the mode of the posterior density of the constrained values (the usual MAP), reached through
a reparameterization that keeps the noise scale positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributions as tdist
from torch import Tensor

from ..model import BayesianResNet
from ..resnet import ResNet
from .base import (
    InferenceMethod,
    MethodResult,
    check_positive_float,
    check_positive_int,
    check_seed,
    make_progress,
    seeded_generator,
)
from .executor import (
    Plan,
    WorkUnit,
    derived_seed,
    global_state_lock,
    run_plan,
    span,
    split_range,
)
from .optim import adam_maximize, map_objective

__all__ = ["MAP", "Ensemble", "anchor_draws", "default_batch_size", "initial_points",
           "train_members"]

# Full-batch gradients up to this many training points; above it, minibatches of _BATCH_SIZE.
_FULL_BATCH_MAX = 1024
_BATCH_SIZE = 256

# Stream of the minibatch generators of member groups k > 0, derived from (seed, stream, k).
_STREAM_GROUP = 1


def default_batch_size(num_data: int) -> int | None:
    """The minibatch size used when ``batch_size=None``: full batch (None) for N <= 1024, else 256.

    On small data sets a full-batch gradient costs little more than a minibatch one (the cost is
    Python overhead, not arithmetic) and gives a deterministic, noise-free optimization.
    """
    return None if num_data <= _FULL_BATCH_MAX else _BATCH_SIZE


def _check_common(owner: str, steps: Any, lr: Any, batch_size: Any,
                  stiffness_penalty: Any) -> None:
    check_positive_int(owner, "steps", steps)
    check_positive_float(owner, "lr", lr)
    if batch_size is not None:
        check_positive_int(owner, "batch_size", batch_size)
    if isinstance(stiffness_penalty, bool) or not isinstance(stiffness_penalty, (int, float)) \
            or not (math.isfinite(stiffness_penalty) and stiffness_penalty >= 0):
        raise ValueError(f"{owner}: stiffness_penalty must be a non-negative number, "
                         f"got {stiffness_penalty!r}")


def _check_penalty_fits(owner: str, model: BayesianResNet, stiffness_penalty: float) -> None:
    if stiffness_penalty > 0 and not isinstance(model.net, ResNet):
        raise ValueError(f"{owner}: stiffness_penalty needs a ResNet (it penalizes the Jacobian "
                         f"of the ODE vector field); the model's network is a "
                         f"{type(model.net).__name__}")


def _is_zero_mean_normal(prior: tdist.Distribution) -> bool:
    while isinstance(prior, tdist.Independent):
        prior = prior.base_dist
    return isinstance(prior, tdist.Normal) and bool((prior.loc == 0).all())


def anchor_draws(model: BayesianResNet, seed: int, members: int) -> dict[str, Tensor]:
    """Prior draws that anchored members are pulled toward, one per member.

    Only sites with a zero-mean Normal prior are anchored (every network site under
    :class:`~bayesresnet.priors.Normal`, the ``*_raw`` sites under
    :class:`~bayesresnet.priors.Hierarchical`). Positive sites with half-normal priors (the noise
    scale, hierarchical scales) keep their ordinary prior term: shifting a half-normal by a draw
    is not a proper randomized-MAP prior, and these few scalars are well identified by the data.

    Returns
    -------
    dict site -> tensor (members, *site_shape)
    """
    # sample_prior seeds and draws from the global torch RNG (inside fork_rng).
    with global_state_lock():
        draws = model.sample_prior(seed, (members,))
    return {name: draws[name] for name, site in model.latent_sites.items()
            if _is_zero_mean_normal(site.prior)}


def initial_points(model: BayesianResNet, generator: torch.Generator, members: int) -> Tensor:
    """Flat unconstrained starting points, one per member, shape (members, dim).

    Member m starts from ``model.initial_values(generator)`` (Glorot initialization with its
    own draws from ``generator``), mapped to z with ``model.unconstrain``.
    """
    starts = [model.initial_values(generator) for _ in range(members)]
    stacked = {name: torch.stack([start[name] for start in starts]) for name in model.latent_sites}
    return model.unconstrain(stacked)


def _stiffness(model: BayesianResNet, weight: float
               ) -> Callable[[dict[str, Tensor], Tensor], Tensor] | None:
    if weight == 0:
        return None
    from ..ode import jacobian_penalty

    def penalty(values: dict[str, Tensor], xb: Tensor) -> Tensor:
        return weight * jacobian_penalty(model.net, model.net_params(values), xb)

    return penalty


def train_members(model: BayesianResNet, x: Tensor, y: Tensor, z0: Tensor, *, steps: int,
                  lr: float, batch_size: int | None = None,
                  anchor: dict[str, Tensor] | None = None, stiffness_penalty: float = 0.0,
                  generator: torch.Generator | None = None, progress: bool = False,
                  desc: str = "ensemble") -> tuple[Tensor, Tensor, Tensor]:
    """Train C MAP fits together from ``z0`` (C, dim).

    Parameters
    ----------
    model : BayesianResNet
    x, y : tensors (N, in_dim), (N, out_dim)
    z0 : tensor (C, dim)
        Flat unconstrained starting points.
    steps, lr : int, float
        Adam steps and initial learning rate (cosine-decayed).
    batch_size : int, optional
        Minibatch size; None or >= N means full batch.
    anchor : dict site -> tensor (C, *site_shape), optional
        Randomized-MAP anchors (see :func:`anchor_draws`).
    stiffness_penalty : float
        Weight of ``bayesresnet.ode.jacobian_penalty``, subtracted from the objective.
    generator : torch.Generator, optional
        Draws the minibatches.
    progress : bool
        Show a progress bar (updated about every 1% of the steps).

    Returns
    -------
    z : tensor (C, dim)
        Final parameters.
    history : tensor (steps, C)
        Objective at each step (on that step's minibatch, rescaled to N points).
    final : tensor (C,)
        Objective at ``z`` on the full training data.
    """
    objective = map_objective(model, x, y, anchor=anchor,
                              penalty=_stiffness(model, stiffness_penalty))
    every = max(1, steps // 100)
    with make_progress(progress, steps, desc) as bar:
        def callback(step: int, values: Tensor) -> None:
            if (step + 1) % every == 0 or step + 1 == steps:
                bar.update(step + 1 - bar.n)
                bar.set_postfix(loss=f"{-values.mean().item():.4g}", refresh=False)

        z, history = adam_maximize(objective, z0, steps, lr, num_data=x.shape[0],
                                   batch_size=batch_size, generator=generator,
                                   callback=callback if progress else None)
    # Outside no_grad: a stiffness penalty may differentiate the vector field with autograd.
    final = objective(z, None).detach()
    return z, history, final


def _plan(model: BayesianResNet, x: Tensor, y: Tensor, seed: int, *, members: int,
          members_per_unit: int | None, steps: int, lr: float, anchored: bool,
          batch_size: int | None, stiffness_penalty: float, title: str) -> Plan:
    """The member groups of a run as units of work, and their merge."""
    generator = seeded_generator(seed)
    z0 = initial_points(model, generator, members)
    # Drawn whether or not it is used, so anchored and plain ensembles with the same seed share
    # their initializations and minibatch streams and differ only by the anchoring.
    anchor_seed = int(torch.randint(0, 2**62, (), generator=generator))
    anchor = anchor_draws(model, anchor_seed, members) if anchored else None
    effective_batch = default_batch_size(x.shape[0]) if batch_size is None else batch_size
    groups = split_range(members, members if members_per_unit is None else members_per_unit)
    units = []
    for k, group in enumerate(groups):
        stream = generator if k == 0 else \
            seeded_generator(derived_seed(seed, _STREAM_GROUP, k))
        part = slice(group.start, group.stop)
        settings = {"steps": steps, "lr": lr, "batch_size": effective_batch,
                    "stiffness_penalty": stiffness_penalty,
                    "desc": f"{title.lower()} {span(group, 'member')}"}
        units.append(WorkUnit(
            f"{title} member group {k} of {len(groups)} ({span(group, 'member')})",
            _train_member_group,
            (model, x, y, z0[part], None if anchor is None else
             {name: value[part] for name, value in anchor.items()},
             stream.get_state(), settings)))
    used = x.shape[0] if effective_batch is None else min(effective_batch, x.shape[0])
    hint = ""
    if len(groups) == 1 and members > 1:
        hint = (f"{title}: all {members} members form one unit of work, so an executor trains "
                f"them on one worker; set {title}(members_per_unit=...) to spread them")
    return Plan(tuple(units), partial(_combine_member_groups, batch_size=used),
                desc=f"{title} ({len(groups)} member groups)", hint=hint)


def _train_member_group(model: BayesianResNet, x: Tensor, y: Tensor, z0: Tensor,
                        anchor: dict[str, Tensor] | None, generator_state: Tensor,
                        settings: dict[str, Any], *, progress: bool) -> MethodResult:
    """One unit of work: train the members starting at ``z0`` (C, dim)."""
    generator = torch.Generator()
    generator.set_state(generator_state)
    z, history, final = train_members(
        model, x, y, z0, steps=settings["steps"], lr=settings["lr"],
        batch_size=settings["batch_size"], anchor=anchor,
        stiffness_penalty=settings["stiffness_penalty"], generator=generator, progress=progress,
        desc=settings["desc"])
    with torch.no_grad():
        values, _ = model.constrain(z)
        log_joint = model.log_joint(values, x, y)
    draws = {name: value.unsqueeze(0) for name, value in values.items()}
    stats = {
        "final_loss": (-final).numpy(),
        "loss": (-history).numpy(),
        "log_joint": log_joint.unsqueeze(0).numpy(),
    }
    return MethodResult(draws, stats)


# Axis of the members in each statistic.
_MEMBER_AXIS = {"final_loss": 0, "loss": 1, "log_joint": 1}


def _combine_member_groups(results: list[MethodResult], *, batch_size: int) -> MethodResult:
    """One result with every group's members, in group order."""
    first = results[0]
    draws = {name: torch.cat([r.draws[name] for r in results], dim=1) for name in first.draws}
    stats = {name: np.concatenate([r.stats[name] for r in results], axis=_MEMBER_AXIS[name])
             for name in first.stats}
    return MethodResult(draws, stats, extra={"batch_size": int(batch_size)})


@dataclass
class Ensemble(InferenceMethod):
    """Deep ensemble: MAP fits from distinct random initializations, trained together.

    Parameters
    ----------
    members : int
        Number of members M (the draws of the result: one chain of M draws).
    steps : int
        Adam steps per member.
    lr : float
        Initial Adam learning rate, cosine-decayed to a tenth of it.
    anchored : bool
        Randomized-MAP anchored ensembling (Pearce et al. 2020): each member's prior term is
        centered at its own draw from the prior instead of at zero, which makes the members
        approximate posterior samples rather than a set of modes. Sites with a half-normal prior
        (the noise scale) keep their ordinary prior term (see :func:`anchor_draws`).
    batch_size : int, optional
        Minibatch size. None: full batch when N <= 1024, else 256 (:func:`default_batch_size`).
    stiffness_penalty : float
        Weight of a penalty on the Jacobian of the ResNet's vector field
        (``bayesresnet.ode.jacobian_penalty``); 0 disables it. Requires a ResNet.
    members_per_unit : int, optional
        Members per unit of work: consecutive groups of this size (the last may be smaller),
        each trained on its own and runnable on its own worker (see :func:`bayesresnet.fit`).
        Default: all members in one unit. Changing it changes the minibatches (and so the
        result) of every group but the first when ``batch_size`` is below the number of
        training points; full-batch training gives the same members for any grouping up to
        floating-point rounding.

    Notes
    -----
    ``MethodResult.draws`` holds every latent site as (1, members, *site_shape), constrained.
    ``stats``: ``final_loss`` (members,), the negative objective at the end on the full data;
    ``loss`` (steps, members), the negative objective during training (on each step's minibatch,
    rescaled to N points); ``log_joint`` (1, members), the unanchored, unpenalized log joint at
    the end on the full training data.
    """

    members: int = 8
    steps: int = 3000
    lr: float = 0.01
    anchored: bool = False
    batch_size: int | None = None
    stiffness_penalty: float = 0.0
    members_per_unit: int | None = None

    name: ClassVar[str] = "ensemble"
    kind: ClassVar[str] = "ensemble"
    thread_safe: ClassVar[bool] = True

    def check_settings(self) -> None:
        check_positive_int("Ensemble", "members", self.members)
        if self.members_per_unit is not None:
            check_positive_int("Ensemble", "members_per_unit", self.members_per_unit)
        _check_common("Ensemble", self.steps, self.lr, self.batch_size, self.stiffness_penalty)
        if not isinstance(self.anchored, (bool, np.bool_)):
            raise ValueError(f"Ensemble: anchored must be True or False, got {self.anchored!r}")

    def validate(self, model: BayesianResNet) -> None:
        _check_penalty_fits("Ensemble", model, self.stiffness_penalty)

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        return run_plan(self.plan(model, x, y, seed), progress=progress)

    def plan(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int) -> Plan:
        """The run as independent member groups (one unit of work each) and their merge;
        running every unit and combining is exactly :meth:`run`."""
        self.validate(model)
        return _plan(model, x, y, check_seed(seed), members=self.members,
                     members_per_unit=self.members_per_unit, steps=self.steps, lr=self.lr,
                     anchored=bool(self.anchored), batch_size=self.batch_size,
                     stiffness_penalty=float(self.stiffness_penalty), title="Ensemble")


@dataclass
class MAP(InferenceMethod):
    """Maximum a posteriori point estimate: the non-Bayesian baseline.

    An ensemble of one without anchoring; the result has one chain with one draw, so its
    predictive uncertainty is the noise alone. Parameters as in :class:`Ensemble`.
    """

    steps: int = 3000
    lr: float = 0.01
    batch_size: int | None = None
    stiffness_penalty: float = 0.0

    name: ClassVar[str] = "map"
    kind: ClassVar[str] = "optimization"
    thread_safe: ClassVar[bool] = True

    def check_settings(self) -> None:
        _check_common("MAP", self.steps, self.lr, self.batch_size, self.stiffness_penalty)

    def validate(self, model: BayesianResNet) -> None:
        _check_penalty_fits("MAP", model, self.stiffness_penalty)

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        return run_plan(self.plan(model, x, y, seed), progress=progress)

    def plan(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int) -> Plan:
        """The run as a single unit of work (see :meth:`Ensemble.plan`)."""
        self.validate(model)
        return _plan(model, x, y, check_seed(seed), members=1, members_per_unit=None,
                     steps=self.steps, lr=self.lr, anchored=False, batch_size=self.batch_size,
                     stiffness_penalty=float(self.stiffness_penalty), title="MAP")
