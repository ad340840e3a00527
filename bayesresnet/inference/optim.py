"""Batched gradient ascent shared by MAP, ensembles and the MAP initialization of NUTS.

C independent problems (ensemble members, chains) are stacked in one (C, D) tensor and optimized
together: Adam is elementwise, so ascending the sum of C objectives is exactly C independent Adam
runs, at the cost of one batched gradient per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..model import BayesianResNet

__all__ = ["adam_maximize", "map_fit", "map_objective"]

# objective(z, batch_index) -> (C,) values to maximize; batch_index is None for full batch.
Objective = Callable[[Tensor, Tensor | None], Tensor]


def map_objective(model: BayesianResNet, x: Tensor, y: Tensor, *, jacobian: bool = False,
                  anchor: dict[str, Tensor] | None = None,
                  penalty: Callable[[dict[str, Tensor], Tensor], Tensor] | None = None
                  ) -> Objective:
    """The log joint of flat unconstrained parameters, with minibatch rescaling.

    Parameters
    ----------
    model : BayesianResNet
    x, y : tensors (N, in_dim), (N, out_dim)
    jacobian : bool
        Add the log-Jacobian of the constraining transform (the density of z rather than of
        the constrained values; used for MAP initialization of samplers in z-space).
    anchor : dict of site -> tensor (C, *site_shape), optional
        Randomized-MAP anchoring (Pearce et al. 2020): the prior term is evaluated at
        ``values - anchor`` for sites with a zero-mean Normal prior, i.e. each member is pulled
        toward its own prior draw instead of toward zero.
    penalty : callable(values, x_batch) -> (C,), optional
        Subtracted from the objective (e.g. a stiffness penalty).

    Returns
    -------
    objective(z (C, D), batch_index (B,) or None) -> (C,)
    """
    n = x.shape[0]

    def objective(z: Tensor, batch: Tensor | None) -> Tensor:
        values, log_det = model.constrain(z)
        prior_values = values
        if anchor is not None:
            prior_values = {k: (v - anchor[k]) if k in anchor else v for k, v in values.items()}
        total = model.log_prior(prior_values)
        xb, yb = (x, y) if batch is None else (x[batch], y[batch])
        total = total + model.log_likelihood(values, xb, yb).sum(-1) * (n / xb.shape[0])
        if jacobian:
            total = total + log_det
        if penalty is not None:
            total = total - penalty(values, xb)
        return total

    return objective


def adam_maximize(objective: Objective, z0: Tensor, steps: int, lr: float, *,
                  num_data: int | None = None, batch_size: int | None = None,
                  generator: torch.Generator | None = None, final_lr_fraction: float = 0.1,
                  callback: Callable[[int, Tensor], None] | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Maximize C objectives at once with Adam and a cosine-decayed learning rate.

    Parameters
    ----------
    objective : callable(z (C, D), batch_index or None) -> (C,)
    z0 : tensor (C, D)
        Starting points.
    steps : int
        Number of Adam steps.
    lr : float
        Initial learning rate, decayed with a cosine schedule to ``final_lr_fraction * lr``.
    num_data, batch_size : int, optional
        With both given and ``batch_size < num_data``, each step uses a random minibatch of
        indices drawn with ``generator`` (without replacement within a step).
    callback : callable(step, values (C,)), optional
        Called after each step (progress bars).

    Returns
    -------
    z : tensor (C, D), the final iterate (detached)
    history : tensor (steps, C), objective value at each step (on that step's batch, rescaled)
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")
    z = z0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    minibatch = num_data is not None and batch_size is not None and batch_size < num_data
    history = torch.empty((steps, z0.shape[0]), dtype=z0.dtype, device=z0.device)
    for step in range(steps):
        frac = step / max(steps - 1, 1)
        scale = final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        batch = (torch.randperm(num_data, generator=generator)[:batch_size]
                 if minibatch else None)
        optimizer.zero_grad(set_to_none=True)
        values = objective(z, batch)
        # Non-finite members (an overflowing start) get no gradient this step instead of
        # poisoning Adam's moment estimates for everyone.
        finite = torch.isfinite(values)
        (-values.where(finite, torch.zeros_like(values)).sum()).backward()
        with torch.no_grad():
            z.grad.nan_to_num_(0.0, 0.0, 0.0)
        optimizer.step()
        history[step] = values.detach()
        if callback is not None:
            callback(step, history[step])
    return z.detach(), history


def map_fit(model: BayesianResNet, x: Tensor, y: Tensor, z0: Tensor, steps: int, lr: float
            ) -> tuple[Tensor, Tensor]:
    """``steps`` full-batch Adam steps on the log density of z (Jacobian included) from each
    row of ``z0`` (C, D): the MAP starts of samplers and variational means.

    Returns
    -------
    z : tensor (C, D), the final iterates (detached)
    log_density : tensor (C,), the model's log density there (may be non-finite; callers
        name the problem in their own terms)
    """
    z, _ = adam_maximize(map_objective(model, x, y, jacobian=True), z0, steps, lr)
    with torch.no_grad():
        return z, model.log_density(z, x, y)
