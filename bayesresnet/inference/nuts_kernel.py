"""Vectorized No-U-Turn sampler kernel running ``C`` chains in lock-step.

The kernel is written as pure functions over small ``NamedTuple`` states:
:func:`init` builds a :class:`NUTSState` from a batch of positions and :func:`step`
performs one NUTS transition for every chain at once.  Every leapfrog step evaluates
the log density and its gradient exactly once, batched over all chains, so the cost of
a step on CPU is close to the cost of a single-chain gradient.

:func:`step` composes four parts, each a module of its own with its own tests:

* :mod:`.metric`: the Gaussian kinetic energy of a diagonal or dense inverse mass matrix
  (momentum draw, velocity ``M^{-1} p``, kinetic energy, the leapfrog drift);
* :mod:`.integrator`: the batched value-and-gradient and the leapfrog step;
* :mod:`.turning`: the generalized U-turn criterion, checked iteratively inside a subtree
  from named checkpoints and on every merge into the trajectory;
* :mod:`.proposal`: leaf weights, multinomial sampling inside a subtree and biased
  progressive sampling between the trajectory and a new subtree.

Algorithm (Hoffman & Gelman 2014; Betancourt 2017):

* The trajectory is grown by iterative doubling.  At doubling ``d`` every chain that is
  still running picks a direction at random and integrates a new subtree of ``2**d``
  leapfrog steps from the corresponding end of its trajectory.
* Inside a subtree a proposal is chosen by multinomial sampling: each leaf is selected
  with probability proportional to its weight ``exp(H0 - H)``.  Leaves are processed in
  chunks of up to 16 (a Gumbel-max draw inside the chunk, progressive sampling across
  chunks), which keeps per-step tensor work low.  Between the old trajectory and a new
  valid subtree the proposal is updated by biased progressive sampling, i.e. the
  subtree's proposal is taken with probability ``min(1, W_subtree / W_old)``.
* The generalized no-U-turn criterion ``p_sharp(first) . rho > 0`` and
  ``p_sharp(last) . rho > 0`` (``rho`` the sum of the momenta of a segment,
  ``p_sharp = M^{-1} p``) is checked for every merge of two sibling subtrees of the
  binary tree: on the merged segment and on the two segments that extend each half by
  the adjacent state of the other half (the additional checks introduced in Stan 2.26).
  Inside a subtree the checks are done iteratively from a fixed-size memory of
  checkpoints (prefix sums of momenta and ``p_sharp`` at the first state of each open
  sub-subtree), so memory is ``O(max_tree_depth)`` and there is no recursion.
* A subtree that contains a U-turn or a divergence is rejected and the chain stops.
  A chain also stops when the merged trajectory makes a U-turn.  Stopped chains are
  masked: their step size is set to zero and their integration state is parked at the
  initial position, so they keep their state until every chain has stopped or
  ``max_tree_depth`` doublings have been done.

A leaf whose Hamiltonian is non-finite (NaN/inf log density, gradient or momentum) or
whose energy error exceeds ``max_delta_energy`` is a divergence.

Per leapfrog step the kernel does one batched ``value_and_grad`` call, about 25 small
tensor operations and one host synchronisation (the all-chains-stopped test).  Warmup
adaptation and the complete sampling loop (:func:`~bayesresnet.inference.adaptation.sample`)
live in :mod:`bayesresnet.inference.adaptation` and :mod:`bayesresnet.inference.warmup`.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from .integrator import (
    IntegratorState,
    LogDensityFn,
    leapfrog,
    leapfrog_coefficients,
    value_and_grad,
)
from .metric import make_metric
from .proposal import biased_merge, fold_chunk, initial_proposal, log_weight
from .turning import checkpoint_memory, subtree_leaf, subtree_start, trajectory_turning

__all__ = [
    "LogDensityFn",
    "NUTSInfo",
    "NUTSState",
    "init",
    "step",
    "value_and_grad",
]

_MAX_CHUNK = 16  # leaves per multinomial chunk
_CHUNK_BYTES = 16 * 2**20  # memory bound of one stacked chunk of positions and gradients

# The two ends of the trajectory are kept packed in one (C, 2, 4, D) tensor, so that choosing
# the end to extend and storing a new end are one torch.where each: axis 1 is the side,
# axis 2 the quantity.
_LEFT, _RIGHT = 0, 1
_POSITION, _MOMENTUM, _GRAD, _VELOCITY = 0, 1, 2, 3


class NUTSState(NamedTuple):
    """State of ``C`` chains between transitions.

    Attributes
    ----------
    position : Tensor
        ``(C, D)`` current positions.
    log_density : Tensor
        ``(C,)`` log density at ``position``.
    grad : Tensor
        ``(C, D)`` gradient of the log density at ``position``.
    """

    position: Tensor
    log_density: Tensor
    grad: Tensor


class NUTSInfo(NamedTuple):
    """Per-chain statistics of one NUTS transition (every field has shape ``(C,)``).

    Attributes
    ----------
    diverging : Tensor
        bool, a divergence occurred while building the trajectory.
    tree_depth : Tensor
        int64, number of doublings merged into the trajectory (Stan's ``treedepth__``).
    num_steps : Tensor
        int64, number of leapfrog steps this chain took (including a rejected subtree).
    accept_prob : Tensor
        Mean of ``min(1, exp(H0 - H))`` over the leapfrog steps taken; the statistic
        used by dual averaging.
    energy : Tensor
        Hamiltonian ``-log_density + kinetic`` at the selected state (for E-BFMI).
    reached_max_tree_depth : Tensor
        bool, ``tree_depth == max_tree_depth``.
    """

    diverging: Tensor
    tree_depth: Tensor
    num_steps: Tensor
    accept_prob: Tensor
    energy: Tensor
    reached_max_tree_depth: Tensor


def init(position: Tensor, logdensity_fn: LogDensityFn) -> NUTSState:
    """Build the initial state of ``C`` chains.

    Parameters
    ----------
    position : Tensor
        ``(C, D)`` floating point initial positions; the dtype of every later
        computation follows this tensor.
    logdensity_fn : LogDensityFn
        Batched log density ``(C, D) -> (C,)``.

    Returns
    -------
    NUTSState
        Positions with their log density and gradient.

    Raises
    ------
    ValueError
        If ``position`` is not a 2-D floating tensor, the log density does not have
        shape ``(C,)``, or the log density or its gradient is not finite at some chain.
    """
    if position.ndim != 2 or not position.is_floating_point():
        raise ValueError(
            f"position must be a (C, D) floating tensor, got {tuple(position.shape)} "
            f"{position.dtype}"
        )
    position = position.detach().clone()
    logp, grad = value_and_grad(logdensity_fn, position)
    if logp.shape != position.shape[:1]:
        raise ValueError(
            f"logdensity_fn must return shape {(position.shape[0],)}, got {tuple(logp.shape)}"
        )
    bad = ~(torch.isfinite(logp) & torch.isfinite(grad).all(-1))
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten().tolist()
        raise ValueError(
            f"non-finite log density or gradient at the initial position of chains {idx}"
        )
    return NUTSState(position, logp.to(position.dtype), grad)


def step(
    state: NUTSState,
    logdensity_fn: LogDensityFn,
    step_size: Tensor,
    inverse_mass: Tensor,
    generator: torch.Generator,
    max_tree_depth: int = 10,
    max_delta_energy: float = 1000.0,
) -> tuple[NUTSState, NUTSInfo]:
    """One multinomial NUTS transition for ``C`` chains in lock-step.

    Parameters
    ----------
    state : NUTSState
        Current state, positions ``(C, D)``.
    logdensity_fn : LogDensityFn
        Batched log density ``(C, D) -> (C,)``.  It is called once per leapfrog step
        with all ``C`` chains (stopped chains are evaluated at their parked position).
    step_size : Tensor
        ``(C,)`` per-chain step sizes (a scalar is broadcast).
    inverse_mass : Tensor
        ``(C, D)`` diagonal or ``(C, D, D)`` dense inverse mass matrix (per chain).
    generator : torch.Generator
        Source of all randomness (momenta, directions, multinomial choices), on the
        device of ``state.position``.  The same generator state gives identical results.
    max_tree_depth : int, default 10
        Maximum number of doublings (at most ``2**max_tree_depth - 1`` leapfrog steps).
    max_delta_energy : float, default 1000.0
        A leaf whose energy error ``H - H0`` exceeds this (or is not finite) diverges.

    Returns
    -------
    NUTSState
        The selected states.
    NUTSInfo
        Per-chain transition statistics, each ``(C,)``.
    """
    if max_tree_depth < 1:
        raise ValueError("max_tree_depth must be >= 1")
    with torch.no_grad():
        return _step(
            state, logdensity_fn, step_size, inverse_mass, generator, max_tree_depth,
            float(max_delta_energy),
        )


def _step(
    state: NUTSState,
    logdensity_fn: LogDensityFn,
    step_size: Tensor,
    inverse_mass: Tensor,
    generator: torch.Generator,
    max_tree_depth: int,
    max_delta_energy: float,
) -> tuple[NUTSState, NUTSInfo]:
    """The transition, composed of the parts: metric, leapfrog, U-turn checks, proposal."""
    q0, logp0, g0 = state
    n_chains, dim = q0.shape
    dtype, device = q0.dtype, q0.device
    eps = torch.as_tensor(step_size, dtype=dtype, device=device).expand(n_chains)
    metric = make_metric(inverse_mass, n_chains, dim, dtype, device)

    where = torch.where
    ones_c = torch.ones(n_chains, dtype=dtype, device=device)
    neg_max_delta = -max_delta_energy
    chain_idx = torch.arange(n_chains, device=device)
    # Leaves per multinomial chunk: bounded so the stacked chunk stays small.
    chunk = max(2, min(_MAX_CHUNK, _CHUNK_BYTES // (2 * n_chains * dim * q0.element_size())))
    grad_fn = partial(value_and_grad, logdensity_fn, ones=ones_c)

    # ---- momentum, random draws for the whole transition ----------------------------
    p0 = metric.sample_momentum(generator)
    ps0 = metric.velocity(p0)
    h0 = metric.kinetic_energy(p0, ps0) - logp0  # (C,) initial Hamiltonian
    uniforms = torch.rand((2, max_tree_depth, n_chains), generator=generator, dtype=dtype,
                          device=device)
    go_right_all = uniforms[0] < 0.5
    log_u_top = uniforms[1].log()
    eps_dir_all = where(go_right_all, eps, -eps)  # (max_depth, C)
    # masks of the side of the trajectory that each doubling extends, broadcast against
    # the packed ends: [..., _LEFT, :, :] extends left, [..., _RIGHT, :, :] right
    side_all = torch.stack((~go_right_all, go_right_all), dim=-1).view(
        max_tree_depth, n_chains, 2, 1, 1)

    leaf0 = IntegratorState(q0, p0, logp0, g0, ps0)
    ends = torch.stack((q0, p0, g0, ps0), dim=1).unsqueeze(1).expand(n_chains, 2, 4, dim)
    rho = p0  # sum of momenta over the trajectory
    proposal = initial_proposal(q0, logp0, g0)

    alive = torch.ones(n_chains, dtype=torch.bool, device=device)
    alive_f = ones_c
    diverging = torch.zeros_like(alive)
    depth = torch.zeros(n_chains, dtype=torch.int64, device=device)
    n_steps = torch.zeros_like(logp0)
    sum_accept = torch.zeros_like(logp0)
    leaf_idx = None
    ckpt = checkpoint_memory(max_tree_depth, q0)
    zeros_cd = torch.zeros_like(q0)

    for d in range(max_tree_depth):
        n_leaves = 1 << d
        right4 = side_all[d, :, _RIGHT]  # (C, 1, 1)
        if d == 0:
            leaf = leaf0
        else:
            # near end: where the subtree is integrated from
            start = where(right4, ends[:, _RIGHT], ends[:, _LEFT])
            near_q, near_p, near_g, near_v = start.unbind(1)
            leaf = IntegratorState(near_q, near_p, logp0, near_g, near_v)  # logp0 unread
        eps_col = (eps_dir_all[d] * alive_f).unsqueeze(-1)
        coefficients = leapfrog_coefficients(metric, eps_col)
        active = alive
        sub_steps = alive_f * n_leaves  # leapfrog steps each chain takes in this subtree
        lws = []  # log weights of all leaves of the subtree
        qs, gs, lps = [], [], []  # states of the current multinomial chunk
        chunk_start = 0
        sub = None  # the subtree's proposal
        all_stopped = False
        turn = subtree_start(ckpt, zeros_cd)

        for n in range(n_leaves):
            # one batched log density + gradient evaluation
            leaf = leapfrog(leaf, coefficients, metric, grad_fn)
            q, p, logp, g, ps = leaf
            lw = log_weight(h0, logp, p, ps)  # NaN/inf (either sign) -> -inf: divergent
            div = lw < neg_max_delta
            lws.append(lw)
            qs.append(q)
            gs.append(g)
            lps.append(logp)
            turn, turned = subtree_leaf(turn, n, d, p, ps)
            stop = div if turned is None else div | turned

            # -- masking of chains that stopped ------------------------------------
            new_active = active > stop
            if not torch.equal(new_active, active):
                stopped = active ^ new_active
                diverging = diverging | (stopped & div)
                sub_steps = where(stopped, float(n + 1), sub_steps)
                active = new_active
                if not bool(active.any()):
                    all_stopped = True
                    break
                # Park stopped chains at their initial state with zero step size.
                act_col = active.unsqueeze(-1)
                eps_col = eps_col * act_col
                coefficients = leapfrog_coefficients(metric, eps_col)
                leaf = IntegratorState(where(act_col, q, q0), where(act_col, p, 0.0), logp,
                                       where(act_col, g, g0), ps)
            if len(qs) == chunk:
                sub = fold_chunk(sub, qs, gs, lps, lws[chunk_start:], generator, chain_idx)
                qs, gs, lps = [], [], []
                chunk_start = n + 1

        # ---- acceptance statistics of the steps taken ------------------------------
        n_run = len(lws)
        n_steps = n_steps + sub_steps
        if n_run == 1:
            sum_accept = torch.addcmul(sum_accept, lw.clamp(max=0.0).exp(), alive_f)
        else:
            if leaf_idx is None:
                leaf_idx = torch.arange(1 << (max_tree_depth - 1), dtype=dtype,
                                        device=device).unsqueeze(-1)
            acc = torch.stack(lws).clamp(max=0.0).exp()
            taken = leaf_idx[:n_run] < sub_steps
            sum_accept = sum_accept + (acc * taken).sum(0)

        if all_stopped:  # every chain stopped inside the subtree: nothing to merge
            break

        # ---- merge the subtree into the trajectory --------------------------------
        if qs:
            sub = fold_chunk(sub, qs, gs, lps, lws[chunk_start:], generator, chain_idx)
        valid = active
        proposal = biased_merge(proposal, sub, log_u_top[d], valid)
        depth = depth + valid
        if d == 0:  # trajectory and subtree are one leaf each
            turning, rho = trajectory_turning(rho, ps0, p0, ps0, turn, single_leaves=True)
        else:
            far_v = where(right4[:, 0], ends[:, _LEFT, _VELOCITY], ends[:, _RIGHT, _VELOCITY])
            turning, rho = trajectory_turning(rho, far_v, near_p, near_v, turn)
        new_end = torch.stack((leaf.position, leaf.momentum, leaf.grad, leaf.velocity), dim=1)
        ends = where(side_all[d], new_end.unsqueeze(1), ends)
        alive = valid > turning
        if not bool(alive.any()):
            break
        alive_f = alive.to(dtype)

    info = NUTSInfo(
        diverging=diverging,
        tree_depth=depth,
        num_steps=n_steps.to(torch.int64),
        accept_prob=sum_accept / n_steps,
        energy=h0 - proposal.scalars[1],
        reached_max_tree_depth=depth >= max_tree_depth,
    )
    return NUTSState(proposal.states[0], proposal.scalars[0], proposal.states[1]), info
