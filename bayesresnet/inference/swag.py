"""SWAG and MultiSWAG: Gaussians fitted to the iterates of stochastic gradient descent.

SWAG (Maddox, Garipov, Izmailov, Vetrov & Wilson 2019, "A Simple Baseline for Bayesian
Uncertainty in Deep Learning") runs SGD with a constant learning rate from a trained network and
fits a Gaussian to the iterates: their mean, and a covariance that is half the diagonal of their
second central moment plus half a low-rank estimate from the last K deviations. MultiSWAG
(Wilson & Izmailov 2020, "Bayesian Deep Learning and a Probabilistic Perspective of
Generalization") does this from several independently trained networks and predicts with the
equal-weight mixture of their Gaussians.

Every member here goes through three phases, all members together as one batched program:

1. **MAP phase.** Adam from the member's own Glorot initialization, exactly as an
   :class:`~bayesresnet.inference.ensemble.Ensemble` member
   (:func:`~bayesresnet.inference.ensemble.train_members`): same starting points from the same
   seed, same objective, same schedule, same full-batch default. With full-batch training the
   members at the end of this phase are the ensemble's members.
2. **SWA phase** (:func:`swa_sgd`). Plain SGD with a constant learning rate on minibatches of
   the log density of the flat unconstrained vector z (``BayesianResNet.log_density``, the
   log-Jacobian included, since the Gaussian is a density of z). The minibatch noise is what
   spreads the iterates: full-batch gradient descent at a stable learning rate converges to the
   mode and leaves the Gaussian with almost no width, which is why this phase uses minibatches
   even on small data sets (:func:`swa_batch_size`). Every ``collect_every`` steps the iterate is
   collected (:class:`SwagMoments`). Each member's learning rate is by default a fixed fraction
   of SGD's stability limit at its MAP point, ``swa_lr_scale / lambda_max`` with lambda_max the
   largest Hessian eigenvalue of the loss per data point there (:func:`max_curvature`, a few
   Lanczos steps of Hessian-vector products), or one constant ``swa_lr`` for all.
3. **Draws.** ``num_draws`` independent draws from each member's Gaussian (:class:`SwagGaussian`).

Space. The moments are taken of z, the vector samplers move in: network coefficients as they
are, the noise scale through its log. So the noise scale is part of the Gaussian and of the
draws, and stays positive.

Importance weights. ``stats["log_q"]`` is the log density of each draw under the mixture of all
members' Gaussians, mapped to the constrained values: ``log q(z) - log|det J(z)|`` with J the
Jacobian of ``BayesianResNet.constrain``. Since ``log_joint(constrain(z)) + log|det J(z)|`` is
``log_density(z)``, ``log_joint - log_q = log_density(z) - log q(z)``: the log importance weight
of the draw either way, which the diagnostics' PSIS k-hat uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.distributions import LowRankMultivariateNormal

from ..model import BayesianResNet
from ..posterior import draws_per_chunk
from .base import (
    InferenceMethod,
    MethodResult,
    check_positive_float,
    check_positive_int,
    check_seed,
    make_progress,
    seeded_generator,
)
from .ensemble import default_batch_size, initial_points, train_members
from .executor import Plan, WorkUnit, derived_seed, run_plan, span, split_range
from .optim import map_objective

if TYPE_CHECKING:
    from ..diagnostics import Diagnostics
    from ..posterior import Posterior

__all__ = ["SWAG", "SwagGaussian", "SwagMoments", "max_curvature", "swa_batch_size", "swa_sgd"]

# Stream of the generators of member groups k > 0, derived from (seed, stream, k).
_STREAM_GROUP = 1
# Stream of group k's Lanczos starting vectors, derived from (seed, stream, k): the curvature
# draws nothing from the stream of the minibatches and the draws.
_STREAM_CURVATURE = 2

# Above this many training points the SWA phase uses minibatches of at most this size.
_MAX_SWA_BATCH = 256


def swa_batch_size(num_data: int) -> int:
    """The SWA phase's minibatch size when ``batch_size=None``: ``ceil(N / 4)``, at most 256.

    The minibatch gradient's noise is what spreads the SWA iterates: its covariance is
    ``(N - B) / (B (N - 1))`` times that of one point's gradient (rescaled to N points) for
    minibatches of B of N points drawn without replacement, so it vanishes at B = N. A quarter of
    the data keeps it substantial on small data sets; 256 is the usual minibatch on large ones.

    Parameters
    ----------
    num_data : int
        Number of training points N.

    Returns
    -------
    int
    """
    check_positive_int("swa_batch_size", "num_data", num_data)
    return min(_MAX_SWA_BATCH, math.ceil(num_data / 4))


@dataclass(frozen=True)
class SwagGaussian:
    """The SWAG Gaussians of C members over D-dimensional vectors.

    Member c's Gaussian is N(mean_c, Sigma_c) with (Maddox et al. 2019, eq. 3-4)

        Sigma_c = 0.5 * (diag(variance_c) + D_c D_c^T / (K - 1)),

    D_c = ``deviations[c]`` (D, K). Together they form the equal-weight mixture of MultiSWAG.

    Attributes
    ----------
    mean : tensor (C, D)
        Mean of each member's collected iterates.
    variance : tensor (C, D)
        Their variance per coordinate (second central moment, over all collected iterates).
    deviations : tensor (C, D, K)
        The last K collected iterates minus ``mean``, oldest first.
    """

    mean: Tensor
    variance: Tensor
    deviations: Tensor

    def __post_init__(self) -> None:
        if self.mean.dim() != 2 or self.variance.shape != self.mean.shape or \
                self.deviations.dim() != 3 or self.deviations.shape[:2] != self.mean.shape:
            raise ValueError(f"SwagGaussian needs mean and variance (C, D) and deviations "
                             f"(C, D, K); got {tuple(self.mean.shape)}, "
                             f"{tuple(self.variance.shape)}, {tuple(self.deviations.shape)}")
        if self.deviations.shape[-1] < 2:
            raise ValueError("SwagGaussian needs at least K = 2 deviations")

    @property
    def members(self) -> int:
        """Number of members C."""
        return self.mean.shape[0]

    @property
    def rank(self) -> int:
        """Number of deviation columns K."""
        return self.deviations.shape[-1]

    def covariance(self) -> Tensor:
        """Each member's covariance matrix, (C, D, D), assembled explicitly.

        Meant for checks and small D; sampling and densities use the low-rank form.
        """
        low_rank = self.deviations @ self.deviations.transpose(-1, -2) / (self.rank - 1)
        return 0.5 * (torch.diag_embed(self.variance) + low_rank)

    def distribution(self) -> LowRankMultivariateNormal:
        """The C Gaussians as one ``LowRankMultivariateNormal`` of batch shape (C,).

        Its diagonal is ``0.5 * variance``, floored at the dtype's smallest normal number so that
        a coordinate the iterates never moved in keeps a (degenerate-looking but) valid density.
        """
        tiny = torch.finfo(self.variance.dtype).tiny
        return LowRankMultivariateNormal(
            self.mean, self.deviations / math.sqrt(2.0 * (self.rank - 1)),
            (0.5 * self.variance).clamp_min(tiny), validate_args=False)

    def sample(self, num: int, generator: torch.Generator) -> Tensor:
        """``num`` draws from each member's Gaussian, (C, num, D), from ``generator``.

        z = mean + sqrt(variance / 2) * e1 + D e2 / sqrt(2 (K - 1)), e1 ~ N(0, I_D),
        e2 ~ N(0, I_K) (Maddox et al. 2019, eq. 5).
        """
        check_positive_int("SwagGaussian.sample", "num", num)
        c, d = self.mean.shape
        # Drawn on the generator's device (the CPU), then moved to the moments' device.
        like = {"dtype": self.mean.dtype, "device": generator.device}
        e1 = torch.randn((c, num, d), generator=generator, **like).to(self.mean.device)
        e2 = torch.randn((c, num, self.rank), generator=generator, **like).to(self.mean.device)
        factor = self.deviations / math.sqrt(2.0 * (self.rank - 1))
        return (self.mean.unsqueeze(1) + (0.5 * self.variance).sqrt().unsqueeze(1) * e1
                + e2 @ factor.transpose(-1, -2))

    def log_prob(self, z: Tensor) -> Tensor:
        """Log density of z (*S, D) under each member's Gaussian, shape (*S, C)."""
        return self.distribution().log_prob(z.unsqueeze(-2))

    def mixture_log_prob(self, z: Tensor) -> Tensor:
        """Log density of z (*S, D) under the equal-weight mixture of the members, (*S,)."""
        return torch.logsumexp(self.log_prob(z), dim=-1) - math.log(self.members)

    @classmethod
    def concatenate(cls, parts: list[SwagGaussian]) -> SwagGaussian:
        """The members of several SwagGaussians (of equal D and K), in order."""
        return cls(torch.cat([p.mean for p in parts]), torch.cat([p.variance for p in parts]),
                   torch.cat([p.deviations for p in parts]))


class SwagMoments:
    """Running SWAG moments of C members' iterates, collected one (C, D) iterate at a time.

    The mean and the per-coordinate variance are updated with Welford's algorithm (no
    cancellation when the spread is tiny next to the values); the last K iterates are kept, and
    :meth:`gaussian` turns them into deviations from the mean of *all* collected iterates.

    Maddox et al.'s Algorithm 1 takes each deviation from the running mean at the time it was
    collected; here all K are taken from the final mean, so they do not depend on when the
    collection began and the K columns are exchangeable. The covariance keeps the paper's
    normalization, ``D D^T / (K - 1)``.

    Parameters
    ----------
    members, dim, rank : int
        C, D and K.
    dtype : torch.dtype
    device : torch.device or str
        Where the moments live (the iterates' device).
    """

    def __init__(self, members: int, dim: int, rank: int,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> None:
        for name, value in (("members", members), ("dim", dim), ("rank", rank)):
            check_positive_int("SwagMoments", name, value)
        if rank < 2:
            raise ValueError(f"SwagMoments: rank must be at least 2, got {rank}")
        self.count = 0
        self.rank = int(rank)
        self.mean = torch.zeros((members, dim), dtype=dtype, device=device)
        self._sum_squares = torch.zeros((members, dim), dtype=dtype, device=device)
        self._recent = torch.zeros((rank, members, dim), dtype=dtype, device=device)

    def update(self, z: Tensor) -> None:
        """Collect one iterate per member, ``z`` (C, D)."""
        if z.shape != self.mean.shape:
            raise ValueError(f"expected an iterate of shape {tuple(self.mean.shape)}, "
                             f"got {tuple(z.shape)}")
        z = z.detach().to(self.mean.dtype)
        self.count += 1
        delta = z - self.mean
        self.mean += delta / self.count
        self._sum_squares += delta * (z - self.mean)
        self._recent[(self.count - 1) % self.rank] = z

    def gaussian(self) -> SwagGaussian:
        """The SWAG Gaussians of the iterates collected so far (at least K of them)."""
        if self.count < self.rank:
            raise ValueError(f"SwagMoments: {self.count} iterates collected, the rank needs at "
                             f"least {self.rank}")
        oldest = self.count % self.rank
        order = [(oldest + i) % self.rank for i in range(self.rank)]
        deviations = (self._recent[order] - self.mean).permute(1, 2, 0)
        return SwagGaussian(self.mean.clone(), self._sum_squares / self.count,
                            deviations.contiguous())


# objective(z (C, D), batch_index (B,) or None) -> (C,) values to maximize.
Objective = Callable[[Tensor, Tensor | None], Tensor]


def max_curvature(objective: Objective, z: Tensor, *, num_data: int, iterations: int = 20,
                  generator: torch.Generator | None = None) -> Tensor:
    """Largest Hessian eigenvalue of the per-point loss ``-objective(z, None) / num_data`` at
    each of C points, by Lanczos iteration with Hessian-vector products.

    The loss per data point is what :func:`swa_sgd` descends with its learning rate, so
    ``lr * max_curvature`` is the step size relative to the stiffest direction: gradient
    descent on a quadratic is stable for ``lr * lambda_max < 2`` and diverges above.

    The C points are independent problems (``objective`` of row c depends on row c alone), so
    one Hessian-vector product of the summed objective (double backward through one retained
    gradient graph) is C products at once. Each member runs ``iterations`` Lanczos steps from
    a random unit vector, with full reorthogonalization; the largest eigenvalue of the
    tridiagonal matrix (the top Ritz value) is the estimate. It is a lower bound that converges
    much faster than power iteration: at the MAP points of the UCI benchmark network 10 steps
    agree with 40 to 5 digits, where 10 power-iteration steps are up to 6% low. If the Krylov
    space becomes invariant (always by step D) the member's estimate is exact and its remaining
    steps add only zero eigenvalues. The objective is evaluated full batch (``batch=None``).

    Parameters
    ----------
    objective : callable(z (C, D), batch_index (B,) or None) -> (C,)
        Twice differentiable.
    z : tensor (C, D)
        Where to take the curvature (each member's MAP point).
    num_data : int
        N: the Hessian is that of ``-objective / N``.
    iterations : int
        Lanczos steps (Hessian-vector products), at most D are used.
    generator : torch.Generator, optional
        Draws the starting vectors.

    Returns
    -------
    tensor (C,)
        Estimated largest eigenvalue of each member's Hessian, detached.

    Raises
    ------
    RuntimeError
        The objective, its gradient or a Hessian-vector product is not finite.
    """
    check_positive_int("max_curvature", "num_data", num_data)
    check_positive_int("max_curvature", "iterations", iterations)
    members, dim = z.shape
    steps = min(int(iterations), dim)
    point = z.detach().clone().requires_grad_(True)
    values = objective(point, None)
    (grad,) = torch.autograd.grad(values.sum(), point, create_graph=True)
    if not bool(torch.isfinite(values).all() and torch.isfinite(grad).all()):
        raise RuntimeError("max_curvature: the objective or its gradient is not finite")
    dtype, device = z.dtype, z.device
    basis = torch.zeros((members, steps, dim), dtype=dtype, device=device)
    alpha = torch.zeros((members, steps), dtype=dtype, device=device)
    beta = torch.zeros((members, steps), dtype=dtype, device=device)
    used = torch.zeros((members, steps), dtype=torch.bool, device=device)
    active = torch.ones(members, dtype=torch.bool, device=device)
    scale = torch.zeros(members, dtype=dtype, device=device)
    tolerance = math.sqrt(torch.finfo(dtype).eps)
    v = torch.randn((members, dim), generator=generator, dtype=dtype,
                    device=generator.device).to(device)
    v = v / v.norm(dim=-1, keepdim=True)
    for j in range(steps):
        used[:, j] = active
        basis[:, j] = v
        (product,) = torch.autograd.grad(grad, point, grad_outputs=v, retain_graph=True)
        w = -product.detach() / num_data
        if not bool(torch.isfinite(w).all()):
            raise RuntimeError("max_curvature: a Hessian-vector product is not finite")
        alpha[:, j] = (w * v).sum(-1)
        scale = torch.maximum(scale, w.norm(dim=-1))
        if j + 1 == steps:
            break
        previous = basis[:, :j + 1]
        for _ in range(2):  # full reorthogonalization, twice ("twice is enough")
            w = w - torch.einsum("ck,ckd->cd", torch.einsum("ckd,cd->ck", previous, w), previous)
        norm = w.norm(dim=-1)
        # A vanishing residual: the Krylov space is invariant, its Ritz values are exact, and
        # the member's later vectors are zero.
        active = active & (norm > tolerance * scale)
        beta[:, j] = torch.where(active, norm, 0.0)
        v = torch.where(active[:, None], w / norm.clamp_min(torch.finfo(dtype).tiny)[:, None],
                        0.0)
    # The rows after an invariant space are decoupled; their diagonal is set to alpha_0, a
    # Rayleigh quotient of the space, so they add no eigenvalue above its top one.
    alpha = torch.where(used, alpha, alpha[:, :1])
    tridiagonal = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + \
        torch.diag_embed(beta[:, :-1], -1)
    return torch.linalg.eigvalsh(tridiagonal)[:, -1]


def swa_sgd(objective: Objective, z0: Tensor, *, steps: int, lr: float | Tensor,
            collect_every: int,
            rank: int, num_data: int, batch_size: int | None,
            generator: torch.Generator | None = None,
            callback: Callable[[int, Tensor], None] | None = None
            ) -> tuple[SwagGaussian, Tensor]:
    """Constant-learning-rate SGD ascent of C objectives from ``z0``, with SWAG moments.

    Each step draws one minibatch of ``batch_size`` of the ``num_data`` points (without
    replacement, shared by the members) and moves

        z <- z + (lr / num_data) * grad objective(z, batch),

    i.e. SGD with learning rate ``lr`` on the objective per data point, the scale of the averaged
    losses of Maddox et al. (the objective itself is rescaled to all N points, as
    ``bayesresnet.inference.optim.map_objective`` does). ``lr`` is one number for all members
    or one per member. After every ``collect_every`` steps the iterate is collected
    (:class:`SwagMoments`).

    Parameters
    ----------
    objective : callable(z (C, D), batch_index (B,) or None) -> (C,)
    z0 : tensor (C, D)
        Starting points (the end of the MAP phase).
    steps : int
        SGD steps; ``steps // collect_every`` iterates are collected, at least ``rank``.
    lr : float or tensor (C,)
        Constant learning rate on the per-point scale, shared or per member (positive).
    collect_every : int
        Steps between collected iterates.
    rank : int
        K, the number of deviation columns kept (at least 2).
    num_data : int
        N.
    batch_size : int or None
        Minibatch size; None or >= N means full-batch gradients (no gradient noise).
    generator : torch.Generator, optional
        Draws the minibatches.
    callback : callable(step, values (C,)), optional
        Called after each step (progress bars).

    Returns
    -------
    gaussian : SwagGaussian
        C members, K = ``rank``.
    history : tensor (steps, C)
        The objective at each step's starting point (on that step's minibatch, rescaled).

    Raises
    ------
    ValueError
        Too few collected iterates for the rank.
    RuntimeError
        The objective or its gradient became non-finite (the learning rate is too large).
    """
    check_positive_int("swa_sgd", "steps", steps)
    check_positive_int("swa_sgd", "collect_every", collect_every)
    if isinstance(lr, Tensor):
        if lr.shape != z0.shape[:1] or not bool(torch.isfinite(lr).all() and (lr > 0).all()):
            raise ValueError(f"swa_sgd: lr must be a positive number or {z0.shape[0]} finite "
                             f"positive numbers, got {lr!r}")
    else:
        check_positive_float("swa_sgd", "lr", lr)
    if steps // collect_every < rank:
        raise ValueError(f"swa_sgd: {steps} steps collect {steps // collect_every} iterates "
                         f"every {collect_every} steps, fewer than rank={rank}")
    moments = SwagMoments(z0.shape[0], z0.shape[1], rank, z0.dtype, z0.device)
    minibatch = batch_size is not None and batch_size < num_data
    step_size = (lr.detach().to(z0.dtype) / num_data).unsqueeze(-1) if isinstance(lr, Tensor) \
        else lr / num_data
    z = z0.detach().clone()
    history = torch.empty((steps, z0.shape[0]), dtype=z0.dtype, device=z0.device)
    for step in range(steps):
        batch = (torch.randperm(num_data, generator=generator)[:batch_size]
                 if minibatch else None)
        z.requires_grad_(True)
        values = objective(z, batch)
        (grad,) = torch.autograd.grad(values.sum(), z)
        with torch.no_grad():
            finite = torch.isfinite(values) & torch.isfinite(grad).all(-1)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0, 0])
                where = "at the starting point" if step == 0 else f"at SGD step {step}"
                raise RuntimeError(f"SWA phase: the objective or its gradient of member {bad} "
                                   f"is not finite {where}; use a smaller swa_lr or "
                                   "swa_lr_scale (or, at the start, a better converged MAP "
                                   "phase)")
            z = (z + step_size * grad).detach()
        history[step] = values.detach()
        if (step + 1) % collect_every == 0:
            moments.update(z)
        if callback is not None:
            callback(step, history[step])
    return moments.gaussian(), history


@dataclass
class _GroupResult:
    """What one unit of work returns: its members' results, Gaussians and draws of z."""

    result: MethodResult
    gaussian: SwagGaussian
    z: Tensor  # (C, num_draws, D)
    log_det: Tensor  # (C, num_draws)
    lambda_max: Tensor  # (C,), the curvature at each member's MAP point
    swa_lr: Tensor  # (C,), each member's SWA learning rate


def _run_member_group(model: BayesianResNet, x: Tensor, y: Tensor, z0: Tensor,
                      generator_state: Tensor, settings: dict[str, Any], *,
                      progress: bool) -> _GroupResult:
    """One unit of work: MAP phase, SWA phase and draws of the members starting at ``z0``."""
    generator = torch.Generator()
    generator.set_state(generator_state)
    label = settings["desc"]
    z_map, loss_history, _ = train_members(
        model, x, y, z0, steps=settings["pretrain_steps"], lr=settings["lr"],
        batch_size=settings["pretrain_batch_size"], generator=generator, progress=progress,
        desc=f"{label} MAP")
    objective = map_objective(model, x, y, jacobian=True)
    curvature_generator = torch.Generator()
    curvature_generator.set_state(settings["curvature_state"])
    lambda_max = max_curvature(objective, z_map, num_data=x.shape[0],
                               iterations=settings["curvature_iterations"],
                               generator=curvature_generator)
    if settings["swa_lr"] is None:
        if not bool((lambda_max > 0).all()):
            raise RuntimeError(f"SWA phase: the largest curvature at the MAP points is "
                               f"{lambda_max.tolist()}, not positive everywhere: some member is "
                               "not at a minimum (raise pretrain_steps), or set swa_lr")
        lr: float | Tensor = settings["swa_lr_scale"] / lambda_max
        lrs = lr
    else:
        lr = settings["swa_lr"]
        lrs = torch.full_like(lambda_max, lr)
    swa_steps = settings["swa_steps"]
    every = max(1, swa_steps // 100)
    with make_progress(progress, swa_steps, f"{label} SWA") as bar:
        def callback(step: int, values: Tensor) -> None:
            if (step + 1) % every == 0 or step + 1 == swa_steps:
                bar.update(step + 1 - bar.n)
                bar.set_postfix(loss=f"{-values.mean().item():.4g}", refresh=False)

        try:
            gaussian, swa_history = swa_sgd(
                objective, z_map, steps=swa_steps, lr=lr,
                collect_every=settings["collect_every"], rank=settings["rank"],
                num_data=x.shape[0], batch_size=settings["batch_size"], generator=generator,
                callback=callback if progress else None)
        except RuntimeError as err:
            relative = ", ".join(f"{v:.3g}" for v in (lrs * lambda_max).tolist())
            raise RuntimeError(f"{err}. The members' swa_lr * lambda_max (the step relative to "
                               f"the curvature at the MAP, stable below 2) were {relative}"
                               ) from None
    with torch.no_grad():
        z = gaussian.sample(settings["num_draws"], generator)
        values, log_det = model.constrain(z)
        log_joint = _chunked_log_joint(model, values, x, y)
    stats = {"loss": (-loss_history).cpu().numpy(), "swa_loss": (-swa_history).cpu().numpy(),
             "log_joint": log_joint.cpu().numpy()}
    return _GroupResult(MethodResult(dict(values), stats), gaussian, z, log_det, lambda_max,
                        lrs.detach().clone())


def _chunked_log_joint(model: BayesianResNet, values: dict[str, Tensor], x: Tensor,
                       y: Tensor) -> Tensor:
    """``model.log_joint`` of values (C, M, *site_shape), shape (C, M), a chunk of draws at a
    time so that the hidden states of many draws at many points stay small."""
    first = next(iter(values.values()))
    batch = first.shape[:2]
    total = batch.numel()
    flat = {name: value.reshape(total, *value.shape[2:]) for name, value in values.items()}
    chunk = draws_per_chunk(model.net, x.shape[0], total)
    parts = [model.log_joint({name: v[start:start + chunk] for name, v in flat.items()}, x, y)
             for start in range(0, total, chunk)]
    return torch.cat(parts).reshape(batch)


def _combine_member_groups(results: list[_GroupResult], *, batch_size: int | None,
                           collected: int) -> MethodResult:
    """One result with every group's members, in group order; the mixture's ``log_q``."""
    members = sum(r.gaussian.members for r in results)
    num_draws = results[0].z.shape[1]
    total = members * num_draws

    def merged(name: str, axis: int) -> np.ndarray:
        return np.concatenate([r.result.stats[name] for r in results], axis=axis)

    draws = {}
    for name in results[0].result.draws:
        value = torch.cat([r.result.draws[name] for r in results])
        draws[name] = value.reshape(1, total, *value.shape[2:])
    gaussian = SwagGaussian.concatenate([r.gaussian for r in results])
    z = torch.cat([r.z for r in results]).reshape(total, -1)
    log_det = torch.cat([r.log_det for r in results]).reshape(total)
    # Each chunk of draws is scored under every member: at most about 2**21 numbers at once.
    chunk = max(1, (1 << 21) // (members * z.shape[-1]))
    with torch.no_grad():
        log_q = torch.cat([gaussian.mixture_log_prob(z[start:start + chunk])
                           for start in range(0, total, chunk)]) - log_det
    stats = {"loss": merged("loss", 1), "swa_loss": merged("swa_loss", 1),
             "log_joint": merged("log_joint", 0).reshape(1, total),
             "log_q": log_q.reshape(1, total).cpu().numpy()}
    extra = {"swag_mean": gaussian.mean, "swag_variance": gaussian.variance,
             "swag_deviations": gaussian.deviations, "collected": int(collected),
             "batch_size": None if batch_size is None else int(batch_size),
             "swa_lambda_max": torch.cat([r.lambda_max for r in results]).cpu().numpy(),
             "swa_lr": torch.cat([r.swa_lr for r in results]).cpu().numpy()}
    return MethodResult(draws, stats, extra)


@dataclass
class SWAG(InferenceMethod):
    """SWAG and MultiSWAG: a Gaussian per member fitted to constant-learning-rate SGD iterates.

    Each member is trained to a MAP point as an :class:`~bayesresnet.inference.ensemble.Ensemble`
    member, then runs ``swa_steps`` steps of minibatch SGD with a constant learning rate (its
    own, ``swa_lr_scale / lambda_max``, by default); every ``collect_every`` steps its iterate
    is collected, and its Gaussian is
    N(mean, 0.5 * (diag + D D^T / (K - 1))) of those iterates (Maddox et al. 2019), in the flat
    unconstrained space z (see :mod:`bayesresnet.inference.swag`). With ``members > 1`` this is
    MultiSWAG (Wilson & Izmailov 2020): the posterior is the equal-weight mixture of the
    members' Gaussians, and every member contributes ``num_draws`` draws.

    Parameters
    ----------
    members : int
        Number of members C (independent MAP starts and Gaussians); 1 is plain SWAG.
    pretrain_steps : int
        Adam steps of the MAP phase (as ``Ensemble.steps``).
    lr : float
        Initial Adam learning rate of the MAP phase, cosine-decayed to a tenth of it (as
        ``Ensemble.lr``). The MAP phase uses full-batch gradients up to 1024 training points,
        else minibatches of 256 (:func:`~bayesresnet.inference.ensemble.default_batch_size`).
    swa_steps : int
        SGD steps of the SWA phase.
    swa_lr : float, optional
        One constant SGD learning rate for every member's SWA phase, on the scale of the
        objective per data point (log density / N): a step moves z by
        ``swa_lr * grad(log density) / N``. None (the default): each member's own rate
        ``swa_lr_scale / lambda_max``. A constant rate that suits one data set can be above
        ``2 / lambda_max`` on another, where SGD diverges (an error names the step and the
        members' ``swa_lr * lambda_max``).
    swa_lr_scale : float
        With ``swa_lr=None``, each member's learning rate is ``swa_lr_scale / lambda_max``,
        lambda_max the largest eigenvalue of the Hessian of the loss per data point (minus the
        log density of z over N, full batch) at the member's MAP point (:func:`max_curvature`).
        Dimensionless, in (0, 2): gradient descent on a quadratic is stable below 2 (in the
        stiffest direction, ``1 - lr lambda_max`` is the contraction per step). Ignored when
        ``swa_lr`` is set.
    curvature_iterations : int
        Lanczos steps (Hessian-vector products, each about two full-batch gradients) of
        :func:`max_curvature`; it runs for either rule (its result is recorded), from a random
        stream of its own, so the minibatches and draws are those of the same seed either way.
    collect_every : int
        Steps between collected iterates (Maddox et al. collect once per epoch).
    rank : int
        K, the number of deviations of the low-rank part (at least 2; Maddox et al. use 20).
        ``swa_steps // collect_every`` must be at least K.
    num_draws : int
        Draws from each member's Gaussian.
    batch_size : int, optional
        Minibatch size of the SWA phase. None: ``ceil(N / 4)``, at most 256
        (:func:`swa_batch_size`). Full-batch gradients (``batch_size >= N``) carry no noise, and
        the iterates then converge to the mode instead of spreading around it.
    members_per_unit : int, optional
        Members per unit of work: consecutive groups of this size, each run on its own and
        runnable on its own worker (see :func:`bayesresnet.fit`). Default: all members in one
        unit. The members of a group share their minibatches, and group k > 0 draws them from a
        stream derived from (seed, k), so changing the grouping changes the draws (not their
        distribution); the same grouping gives the same draws here and on any executor.

    Notes
    -----
    ``MethodResult.draws`` holds every latent site as (1, members * num_draws, *site_shape),
    constrained: one chain, as for the other methods of independent draws, in member-major
    blocks (draws ``m * num_draws`` to ``(m + 1) * num_draws - 1`` are member m's). One chain
    because the draws are independent: ArviZ then takes LOO's relative efficiency as 1, where
    members as chains would have it estimated from the between-member spread.

    ``stats``: ``loss`` (pretrain_steps, members), the negative MAP objective (as in
    :class:`~bayesresnet.inference.ensemble.Ensemble`); ``swa_loss`` (swa_steps, members), the
    negative log density of z along the SGD iterates (on each step's minibatch, rescaled to N
    points); ``log_joint`` (1, draws), log p(theta, y) at each draw; ``log_q`` (1, draws), the
    log density of each draw's constrained values under the mixture of all members' Gaussians.
    ``extra``: ``swag_mean`` and ``swag_variance`` (members, dim), ``swag_deviations``
    (members, dim, rank) of the flat vector z (:class:`SwagGaussian`), ``collected`` (iterates
    per member), ``batch_size`` (of the SWA phase; None for full batch), ``swa_lambda_max``
    (members,), the curvature lambda_max at each member's MAP point, and ``swa_lr`` (members,),
    the learning rate each member's SWA phase used.

    ``kind`` is ``"variational"``: the draws are independent draws from a fitted distribution
    (not Markov chains, not optimized points), and their log density under it is known, so
    PSIS k-hat of ``log_joint - log_q`` (Yao et al. 2018) says how far the mixture is from the
    posterior. :meth:`add_checks` adds the convergence of each member's MAP phase and the
    stationarity of its SWA phase; there is no ELBO, so that check of the kind is skipped.

    **Choices.** The SWA learning rate is constant (the paper's main variant; no cyclical
    schedule is offered). Iterates are collected every ``collect_every`` steps rather than once
    per epoch, since on small data an epoch is a few minibatches. The SWA phase uses minibatches
    even where the MAP phase uses the full batch: without gradient noise the iterates do not
    spread around a mode but creep toward it (on the cubic toy below, full-batch SWA failed the
    SWA trend check with ratios of 16 and 200 on seeds 0 and 3).

    **The learning rate.** One constant rate does not carry over between data sets, because
    the curvature at the MAP scales with the inverse noise variance: lambda_max at the members'
    MAP points (split 0 of the UCI benchmark's network) was 3e4 to 1.2e5 on yacht, 1.9e3 to
    2e4 on energy and 33 to 67 on wine-quality-red, 26 to 1.2e4 on the cubic toy below. So the
    former default ``swa_lr=3e-4`` put ``swa_lr * lambda_max`` at 9 to 37 on yacht (SGD
    diverged within 5 steps) and at 0.01 to 0.02 on wine (the iterates barely move). Relative to
    the curvature, the step means the same on every data set. Larger is better up to the
    limit: for SGD near a quadratic mode the stationary Gaussian's KL divergence to the
    posterior falls as the rate grows, up to the rate ``2 D / (N tr C)`` of Mandt, Hoffman &
    Blei (2017), C the minibatch gradient's covariance; at the MAP points above that rate was
    56 to 165 (cubic) and 190 to 930 (yacht) times ``1 / lambda_max``, far beyond stability,
    so the stability limit is what binds. The default ``swa_lr_scale=1`` keeps a factor of 2 to
    it, room for minibatch Hessians (their lambda_max was 1.04 to 1.31 times the full-batch one
    on yacht) and for the curvature changing along the path (yacht split 0 did not diverge
    even at 1.9). The MAP curvature is a local quantity: a member in a sharp, overfitting
    minimum gets a small rate and stays there.

    **Measured** on the cubic toy: data ``data.cubic(20, seed)``, model
    ``ResNet(1, 1, width=10, depth=8, basis="linear")`` with ``priors.Normal(1.0)``, defaults,
    fit seed = data seed; coverage of the 95% interval on ``data.cubic(1000, seed + 1)`` per
    setting, and for two settings the mean ``epistemic_std`` at x = +-6 over its mean on a grid
    of [-4, 4] (ratio) and the mean noise of the draws (truth 3):

    ======================  =====  =====  =====  =====  =====  =====
    setting, seed           0      1      2      3      4      mean
    ======================  =====  =====  =====  =====  =====  =====
    ``swa_lr_scale=0.1``    0.563  0.908  0.883  0.730  0.757  0.768
    ``swa_lr_scale=0.25``   0.567  0.915  0.887  0.735  0.764  0.774
    ``swa_lr_scale=0.5``    0.579  0.921  0.905  0.743  0.770  0.784
    ``swa_lr_scale=1``      0.601  0.939  0.930  0.785  0.794  0.810
    - ratio                 23.2   7.4    4.3    5.3    4.9
    - noise                 1.52   3.78   2.89   1.95   2.49
    ``swa_lr_scale=1.5``    0.664  0.983  0.958  0.826  0.820  0.850
    ``swa_lr=3e-4``         0.979  0.912  0.889  0.740  0.789  0.862
    - ratio                 7.4    8.6    5.5    5.9    5.6
    - noise                 2.90   3.45   2.68   1.89   2.46
    ======================  =====  =====  =====  =====  =====  =====

    The same members at their MAP points (an ensemble with MAP noise) cover 0.766 on average.
    Every ratio was above 3 at every setting (3.5 to 44). Coverage grows with the scale on
    every seed; it was never chosen by it. The constant 3e-4 covers more only on seed 0, whose
    members sit in sharp, overfitting minima (lambda_max 5300 to 11900, MAP noise about 1.5):
    there ``swa_lr * lambda_max`` was 1.6 to 3.6, mostly above the stability limit, so SGD
    threw the members out of their minima into wider ones (noise 2.9). That is an instability
    that happens to help here, and the same constant diverges on yacht. On seeds 1 to 4 the
    default covers more than the constant on every seed. Where coverage falls short, the
    members' MAP fits explain part of the noise (seed 3: noise 1.9 against a realized 3.2), and
    SWAG's local spread does not widen it back. The SWA trend check passed on every fit (worst
    0.27 at the default, 0.54 at 1.5). About 7 s per fit on one core, of which the curvature
    (20 Lanczos steps) is under 0.1 s. PSIS k-hat was 5 to 17 on every fit: in the
    importance-sampling sense the mixture is far from the posterior, as usual for neural
    networks.

    On UCI (benchmark network, 10 members, 1000 + 1000 steps, ``benchmarks/uci.py``), split 0:
    the spread within the members' Gaussians is 1% of the variance of f over the draws on
    yacht, 8% on energy and 32% on wine-quality-red, the rest is between members; yacht
    splits 0-2, energy and wine split 0 ran without divergence in 6 to 10 s a fit, the
    curvature taking 0.5 s (yacht) to 1.1 s (wine) of it. The SWA trend check failed on some
    members whose MAP phase had not converged (ratios up to 39 on yacht split 2): their
    objective kept falling during the SWA phase.
    """

    members: int = 8
    pretrain_steps: int = 3000
    lr: float = 0.01
    swa_steps: int = 2000
    swa_lr: float | None = None
    swa_lr_scale: float = 1.0
    curvature_iterations: int = 20
    collect_every: int = 10
    rank: int = 20
    num_draws: int = 50
    batch_size: int | None = None
    members_per_unit: int | None = None

    name: ClassVar[str] = "swag"
    records_elbo: ClassVar[bool] = False
    kind: ClassVar[str] = "variational"
    thread_safe: ClassVar[bool] = True

    def check_settings(self) -> None:
        for setting in ("members", "pretrain_steps", "swa_steps", "collect_every", "rank",
                        "num_draws", "curvature_iterations"):
            check_positive_int("SWAG", setting, getattr(self, setting))
        for setting in ("lr", "swa_lr_scale"):
            check_positive_float("SWAG", setting, getattr(self, setting))
        if self.swa_lr is not None:
            check_positive_float("SWAG", "swa_lr", self.swa_lr)
        if self.swa_lr_scale >= 2:
            raise ValueError(f"SWAG: swa_lr_scale must be below 2, SGD's stability limit at the "
                             f"curvature lambda_max, got {self.swa_lr_scale!r}")
        for setting in ("batch_size", "members_per_unit"):
            if getattr(self, setting) is not None:
                check_positive_int("SWAG", setting, getattr(self, setting))
        if self.rank < 2:
            raise ValueError(f"SWAG: rank must be at least 2 (the low-rank part divides by "
                             f"K - 1), got {self.rank}")
        collected = self.swa_steps // self.collect_every
        if collected < self.rank:
            raise ValueError(f"SWAG: swa_steps={self.swa_steps} with collect_every="
                             f"{self.collect_every} collects {collected} iterates, fewer than "
                             f"rank={self.rank}")

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        return run_plan(self.plan(model, x, y, seed), progress=progress)

    def plan(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int) -> Plan:
        """The run as independent member groups (one unit of work each) and their merge;
        running every unit and combining is exactly :meth:`run`.

        The starting points of all members come from the fit's seed first (as in
        :meth:`Ensemble.plan <bayesresnet.inference.ensemble.Ensemble.plan>`); group 0 then
        continues the seed's stream for its minibatches and draws, group k > 0 uses a stream
        derived from (seed, k).
        """
        self.validate(model)
        seed = check_seed(seed)
        generator = seeded_generator(seed)
        z0 = initial_points(model, generator, self.members).to(x)  # x's dtype and device
        num_data = x.shape[0]
        batch = swa_batch_size(num_data) if self.batch_size is None else int(self.batch_size)
        batch = None if batch >= num_data else batch
        groups = split_range(self.members, self.members if self.members_per_unit is None
                             else self.members_per_unit)
        units = []
        for k, group in enumerate(groups):
            stream = generator if k == 0 else \
                seeded_generator(derived_seed(seed, _STREAM_GROUP, k))
            curvature = seeded_generator(derived_seed(seed, _STREAM_CURVATURE, k))
            settings = {
                "pretrain_steps": self.pretrain_steps, "lr": float(self.lr),
                "pretrain_batch_size": default_batch_size(num_data),
                "swa_steps": self.swa_steps,
                "swa_lr": None if self.swa_lr is None else float(self.swa_lr),
                "swa_lr_scale": float(self.swa_lr_scale),
                "curvature_iterations": self.curvature_iterations,
                "curvature_state": curvature.get_state(),
                "collect_every": self.collect_every, "rank": self.rank,
                "batch_size": batch, "num_draws": self.num_draws,
                "desc": f"swag {span(group, 'member')}"}
            units.append(WorkUnit(
                f"SWAG member group {k} of {len(groups)} ({span(group, 'member')})",
                _run_member_group,
                (model, x, y, z0[group.start:group.stop], stream.get_state(), settings)))
        hint = ""
        if len(groups) == 1 and self.members > 1:
            hint = (f"SWAG: all {self.members} members form one unit of work, so an executor "
                    "trains them on one worker; set SWAG(members_per_unit=...) to spread them")
        combine = partial(_combine_member_groups, batch_size=batch,
                          collected=self.swa_steps // self.collect_every)
        return Plan(tuple(units), combine, desc=f"SWAG ({len(groups)} member groups)", hint=hint)

    def add_checks(self, posterior: Posterior, diag: Diagnostics) -> None:
        """The checks of a SWAG run beyond those of its kind.

        * ``MAP loss trend (last 10%)``: each member's MAP phase converged, as for ensembles
          (:func:`~bayesresnet.diagnostics.trend_ratio` of ``stats["loss"]``, max over
          members, at most 1).
        * ``SWA loss trend (whole phase)``: each member's SWA-phase objective has no trend over
          the whole phase beyond its own step-to-step noise (``trend_ratio`` with
          ``fraction=1``, max over members, at most 1). A trend means the iterates were still
          travelling, so the Gaussian describes a path rather than the spread around a mode.
        """
        from ..diagnostics import TREND_MAX, trend_ratio

        for key, label, fraction, advice in (
                ("loss", "MAP loss trend (last 10%)", 0.1, "raise pretrain_steps"),
                ("swa_loss", "SWA loss trend (whole phase)", 1.0,
                 "raise pretrain_steps or lower swa_lr_scale (swa_lr where it is set)")):
            if key not in posterior.stats:
                diag.notes.append(f"stats lack {key!r}; the {label} check is skipped")
                continue
            history = np.asarray(posterior.stats[key], dtype=np.float64)
            history = history.reshape(history.shape[0], -1)
            ratios = np.array([trend_ratio(history[:, m], fraction)
                               for m in range(history.shape[1])])
            diag.details[f"{key}_trend"] = ratios
            worst = float(np.nan if np.isnan(ratios).any() else ratios.max())
            diag.add_check(label, worst, "<=", TREND_MAX,
                           f"{label}: {worst:.2g} x the noise (at most {TREND_MAX:g}); the "
                           f"objective still moves: {advice}")

