"""Vectorized No-U-Turn sampler kernel running ``C`` chains in lock-step.

The kernel is written as pure functions over small ``NamedTuple`` states:
:func:`init` builds a :class:`NUTSState` from a batch of positions and :func:`step`
performs one NUTS transition for every chain at once.  Every leapfrog step evaluates
the log density and its gradient exactly once, batched over all chains, so the cost of
a step on CPU is close to the cost of a single-chain gradient.

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
live in :mod:`bayesresnet.inference.adaptation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "LogDensityFn",
    "NUTSInfo",
    "NUTSState",
    "init",
    "kinetic_energy",
    "sample_momentum",
    "step",
    "value_and_grad",
    "velocity",
]

LogDensityFn = Callable[[Tensor], Tensor]
"""Batched unnormalized log density: ``(C, D) -> (C,)``, differentiable with autograd."""

_INF = math.inf
_MAX_CHUNK = 16  # leaves per multinomial chunk
_CHUNK_BYTES = 16 * 2**20  # memory bound of one stacked chunk of positions and gradients


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


def _grad_engine():
    """The C++ autograd engine's ``run_backward`` (skips ``torch.autograd.grad``'s Python
    argument handling, a large share of a leapfrog step's overhead), or ``None``."""
    try:
        from torch.autograd import Variable

        return Variable._execution_engine.run_backward
    except (ImportError, AttributeError):  # pragma: no cover - other torch versions
        return None


_RUN_BACKWARD = _grad_engine()


def _value_and_grad(
    logdensity_fn: LogDensityFn, position: Tensor, ones: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        x = position.detach().requires_grad_(True)
        logp = logdensity_fn(x)
        if not logp.requires_grad:  # constant density
            return logp.detach(), torch.zeros_like(x)
        if ones is None or ones.shape != logp.shape or ones.dtype != logp.dtype:
            ones = torch.ones_like(logp)
        if _RUN_BACKWARD is not None and x.device.type == "cpu":
            try:
                (grad,) = _RUN_BACKWARD((logp,), (ones,), False, False, (x,), False,
                                         accumulate_grad=False)
                return logp.detach(), grad
            except TypeError:  # pragma: no cover - engine signature changed
                pass
        (grad,) = torch.autograd.grad(logp, x, ones)
    return logp.detach(), grad


def value_and_grad(logdensity_fn: LogDensityFn, position: Tensor) -> tuple[Tensor, Tensor]:
    """Evaluate a batched log density and its gradient with one autograd pass.

    Parameters
    ----------
    logdensity_fn : LogDensityFn
        Maps ``(C, D)`` positions to a ``(C,)`` log density; chain ``c``'s value must
        depend on row ``c`` only.
    position : Tensor
        ``(C, D)`` positions (no gradient is propagated to the caller's tensor).

    Returns
    -------
    log_density : Tensor
        ``(C,)`` detached log density.
    grad : Tensor
        ``(C, D)`` gradient of each chain's log density with respect to its position.
    """
    return _value_and_grad(logdensity_fn, position)


def velocity(inverse_mass: Tensor, momentum: Tensor) -> Tensor:
    """Return ``M^{-1} p``.

    Parameters
    ----------
    inverse_mass : Tensor
        ``(C, D)`` diagonal or ``(C, D, D)`` dense inverse mass matrix.
    momentum : Tensor
        ``(C, D)`` momenta.

    Returns
    -------
    Tensor
        ``(C, D)`` velocities.
    """
    if inverse_mass.ndim == 2:
        return inverse_mass * momentum
    return torch.bmm(inverse_mass, momentum.unsqueeze(-1)).squeeze(-1)


def kinetic_energy(inverse_mass: Tensor, momentum: Tensor) -> Tensor:
    """Return the Gaussian kinetic energy ``p^T M^{-1} p / 2`` of shape ``(C,)``.

    Parameters
    ----------
    inverse_mass : Tensor
        ``(C, D)`` diagonal or ``(C, D, D)`` dense inverse mass matrix.
    momentum : Tensor
        ``(C, D)`` momenta.

    Returns
    -------
    Tensor
        ``(C,)`` kinetic energies.
    """
    return 0.5 * torch.linalg.vecdot(momentum, velocity(inverse_mass, momentum))


def sample_momentum(
    inverse_mass: Tensor, shape: torch.Size, dtype: torch.dtype, generator: torch.Generator
) -> Tensor:
    """Draw ``p ~ N(0, M)`` for every chain.

    Parameters
    ----------
    inverse_mass : Tensor
        ``(C, D)`` diagonal or ``(C, D, D)`` dense inverse mass matrix ``M^{-1}``.
    shape : torch.Size
        ``(C, D)``.
    dtype : torch.dtype
        Floating dtype of the momenta.
    generator : torch.Generator
        Source of randomness (``torch.randn(..., generator=generator)``).

    Returns
    -------
    Tensor
        ``(C, D)`` momenta with covariance ``M``.
    """
    z = torch.randn(shape, generator=generator, dtype=dtype, device=inverse_mass.device)
    if inverse_mass.ndim == 2:
        return z * torch.rsqrt(inverse_mass)
    # M^{-1} = L L^T  =>  p = L^{-T} z has covariance (L L^T)^{-1} = M.
    chol = torch.linalg.cholesky(inverse_mass)
    return torch.linalg.solve_triangular(chol.mT, z.unsqueeze(-1), upper=True).squeeze(-1)


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


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


def _sample_chunk(
    qs: list[Tensor],
    gs: list[Tensor],
    lps: list[Tensor],
    lws: list[Tensor],
    sub: tuple[Tensor, Tensor, Tensor] | None,
    generator: torch.Generator,
    chain_idx: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold a chunk of consecutive leaves into the subtree's multinomial proposal.

    A leaf of the chunk is drawn with probability proportional to its weight
    (Gumbel-max), and replaces the proposal of the earlier chunks with probability
    ``W_chunk / (W_earlier + W_chunk)``; overall every leaf of the subtree is selected
    with probability proportional to its weight ``exp(H0 - H)``.

    Parameters
    ----------
    qs, gs : list of Tensor
        ``k`` positions and gradients ``(C, D)``.
    lps, lws : list of Tensor
        ``k`` log densities and log weights ``(C,)``.
    sub : tuple of Tensor or None
        Proposal of the earlier chunks: ``(q, grad)`` stacked ``(2, C, D)``,
        ``(log density, log weight)`` stacked ``(2, C)`` and the log sum of weights
        ``(C,)``; ``None`` for the first chunk.
    generator : torch.Generator
        Source of randomness.
    chain_idx : Tensor
        ``arange(C)``.

    Returns
    -------
    tuple of Tensor
        The updated proposal, same layout as ``sub``.
    """
    k = len(qs)
    if k == 1:
        w = lws[0]
        qg = torch.stack((qs[0], gs[0]))
        ll = torch.stack((lps[0], w))
    else:
        n_chains, dim = qs[0].shape
        ll_all = torch.stack(lps + lws).view(2, k, n_chains)
        w = torch.logsumexp(ll_all[1], 0)
        noise = torch.empty_like(ll_all[1]).exponential_(generator=generator)
        idx = (ll_all[1] - noise.log()).argmax(0)
        qg = torch.stack(qs + gs).view(2, k, n_chains, dim)[:, idx, chain_idx]
        ll = ll_all[:, idx, chain_idx]
    if sub is None:
        return qg, ll, w
    sub_qg, sub_ll, sub_w = sub
    new_w = torch.logaddexp(sub_w, w)
    u = torch.rand(w.shape, generator=generator, dtype=w.dtype, device=w.device)
    take = u.log() < w - new_w
    return (torch.where(take.unsqueeze(-1), qg, sub_qg), torch.where(take, ll, sub_ll),
            new_w)


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
    q0, logp0, g0 = state
    n_chains, dim = q0.shape
    dtype, device = q0.dtype, q0.device
    if max_tree_depth < 1:
        raise ValueError("max_tree_depth must be >= 1")
    eps = torch.as_tensor(step_size, dtype=dtype, device=device).expand(n_chains)
    minv = torch.as_tensor(inverse_mass, dtype=dtype, device=device)
    diag = minv.ndim == 2
    if diag:
        minv = minv.expand(n_chains, dim)
    elif minv.ndim == 3:
        minv = minv.expand(n_chains, dim, dim)
    else:
        raise ValueError("inverse_mass must have shape (C, D) or (C, D, D)")

    vecdot = torch.linalg.vecdot
    where = torch.where
    logaddexp = torch.logaddexp
    addcmul = torch.addcmul
    bmm = torch.bmm
    ones_c = torch.ones(n_chains, dtype=dtype, device=device)
    neg_max_delta = -max_delta_energy
    chain_idx = torch.arange(n_chains, device=device)
    # Leaves per multinomial chunk: bounded so the stacked chunk stays small.
    chunk = max(2, min(_MAX_CHUNK, _CHUNK_BYTES // (2 * n_chains * dim * q0.element_size())))

    def vg(q: Tensor) -> tuple[Tensor, Tensor]:
        return _value_and_grad(logdensity_fn, q, ones_c)

    # ---- momentum, random draws for the whole transition ----------------------------
    p0 = sample_momentum(minv, q0.shape, dtype, generator)
    ps0 = minv * p0 if diag else bmm(minv, p0.unsqueeze(-1)).squeeze(-1)
    h0 = 0.5 * vecdot(p0, ps0) - logp0  # (C,) initial Hamiltonian
    uniforms = torch.rand((2, max_tree_depth, n_chains), generator=generator, dtype=dtype,
                          device=device)
    go_right_all = uniforms[0] < 0.5
    log_u_top = uniforms[1].log()
    eps_dir_all = where(go_right_all, eps, -eps)  # (max_depth, C)
    # side masks selecting the end of the trajectory that is extended: [:, :, 0] left
    side_all = torch.stack((~go_right_all, go_right_all), dim=-1).view(
        max_tree_depth, n_chains, 2, 1, 1)

    # Trajectory ends, packed (C, 2 [left, right], 4 [q, p, grad, p_sharp], D).
    leaf0 = torch.stack((q0, p0, g0, ps0), dim=1)
    ends = leaf0.unsqueeze(1).expand(n_chains, 2, 4, dim)
    rho = p0  # sum of momenta over the trajectory
    logw = torch.zeros(n_chains, dtype=dtype, device=device)  # log sum of weights
    # Selected state: (position, grad) and (log density, log weight H0 - H).
    prop_qg = torch.stack((q0, g0))
    prop_ll = torch.stack((logp0, logw))

    alive = torch.ones(n_chains, dtype=torch.bool, device=device)
    alive_f = ones_c
    diverging = torch.zeros_like(alive)
    depth = torch.zeros(n_chains, dtype=torch.int64, device=device)
    n_steps = torch.zeros_like(logw)
    sum_accept = torch.zeros_like(logw)
    leaf_idx = None

    # Checkpoints for blocks of 2**k leaves, k = 1 .. max_tree_depth - 1.  Slot k holds,
    # for the most recently started block of level k (first leaf s):
    #   0: prefix momentum sum before s, 1: p(s-1), 2: prefix sum including s,
    #   3: p_sharp(s), 4: p_sharp(s-1).
    ckpt = torch.empty((max(max_tree_depth, 2), 5, n_chains, dim), dtype=dtype, device=device)
    zeros_cd = torch.zeros_like(q0)

    for d in range(max_tree_depth):
        n_leaves = 1 << d
        right4 = side_all[d, :, 1]  # (C, 1, 1)
        if d == 0:
            start = leaf0
            q, p, g = q0, p0, g0
        else:
            start = where(right4, ends[:, 1], ends[:, 0])  # near end: integration start
            q, p, g, start_ps = start.unbind(1)
            start_p = p
        eps_col = (eps_dir_all[d] * alive_f).unsqueeze(-1)
        half_eps = 0.5 * eps_col
        eps_minv = eps_col * minv if diag else None
        active = alive
        sub_steps = alive_f * n_leaves  # leapfrog steps each chain takes in this subtree
        lws = []  # log weights of all leaves of the subtree
        qs, gs, lps = [], [], []  # states of the current multinomial chunk
        chunk_start = 0
        sub = None  # subtree proposal: ((q, grad), (log density, log weight), log sum w)
        all_stopped = False
        p_prev = ps_prev = p_sum_prev = zeros_cd

        for n in range(n_leaves):
            # -- leapfrog step: one batched log density + gradient evaluation -------
            p_half = addcmul(p, half_eps, g)
            if diag:
                q = addcmul(q, eps_minv, p_half)
                logp, g = vg(q)
                p = addcmul(p_half, half_eps, g)
                ps = minv * p
            else:
                q = addcmul(q, eps_col, bmm(minv, p_half.unsqueeze(-1)).squeeze(-1))
                logp, g = vg(q)
                p = addcmul(p_half, half_eps, g)
                ps = bmm(minv, p.unsqueeze(-1)).squeeze(-1)
            # log weight H0 - H; NaN/inf (either sign) -> -inf, i.e. divergent
            lw = torch.nan_to_num(torch.sub(logp + h0, vecdot(p, ps), alpha=0.5),
                                  nan=-_INF, posinf=-_INF, neginf=-_INF)
            div = lw < neg_max_delta
            lws.append(lw)
            qs.append(q)
            gs.append(g)
            lps.append(logp)
            if n == 0:
                p_sum = p
                first_p, first_ps = p, ps
            else:
                p_sum = p_sum + p

            # -- U-turn checks of the blocks completed by this leaf ----------------
            if n & 1:
                j = _trailing_zeros(n + 1)  # blocks of levels 1..j end here
                if j == 1:  # block = the last two leaves
                    r = p_prev + p
                    dots = vecdot(torch.stack((ps_prev, ps)), r)
                else:
                    ck = ckpt
                    r_full = p_sum - ck[1:j + 1, 0]
                    r_left = ck[1:j, 2] - ck[2:j + 1, 0]
                    r_right = r_full[:-1] + ck[1:j, 1]
                    dots = torch.cat((
                        vecdot(ck[1:j + 1, 3], r_full), vecdot(ps, r_full),
                        vecdot(ck[2:j + 1, 3], r_left), vecdot(ck[1:j, 3], r_left),
                        vecdot(ck[1:j, 4], r_right), vecdot(ps, r_right),
                    ))
                stop = div | (dots.amin(0) <= 0.0)
            else:
                if d > 0:  # blocks of levels 1..top start here
                    top = d if n == 0 else min(_trailing_zeros(n), d)
                    ckpt[1:top + 1] = torch.stack((p_sum_prev, p_prev, p_sum, ps, ps_prev))
                stop = div
            p_prev, ps_prev, p_sum_prev = p, ps, p_sum

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
                half_eps = 0.5 * eps_col
                if diag:
                    eps_minv = eps_col * minv
                q = where(act_col, q, q0)
                g = where(act_col, g, g0)
                p = where(act_col, p, 0.0)
            if len(qs) == chunk:
                sub = _sample_chunk(qs, gs, lps, lws[chunk_start:], sub, generator, chain_idx)
                qs, gs, lps = [], [], []
                chunk_start = n + 1

        # ---- acceptance statistics of the steps taken ------------------------------
        n_run = len(lws)
        n_steps = n_steps + sub_steps
        if n_run == 1:
            sum_accept = addcmul(sum_accept, lw.clamp(max=0.0).exp(), alive_f)
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
            sub = _sample_chunk(qs, gs, lps, lws[chunk_start:], sub, generator, chain_idx)
        sub_qg, sub_ll, sub_logw = sub
        valid = active
        take = valid & (log_u_top[d] < sub_logw - logw)
        prop_qg = where(take.unsqueeze(-1), sub_qg, prop_qg)
        prop_ll = where(take, sub_ll, prop_ll)
        depth = depth + valid

        # Generalized U-turn criterion on the merged trajectory and on each half
        # extended by the adjacent state of the other half.
        if d == 0:  # two states: the three segments coincide
            rho = p0 + p
            turning = vecdot(torch.stack((ps0, ps)), rho).amin(0) <= 0.0
        else:
            far_ps = where(right4[:, 0], ends[:, 0, 3], ends[:, 1, 3])
            r_all = rho + p_sum
            r_old_ext = rho + first_p
            r_new_ext = p_sum + start_p
            u = torch.stack((far_ps, ps, far_ps, first_ps, start_ps, ps)).view(
                3, 2, n_chains, dim)
            r = torch.stack((r_all, r_old_ext, r_new_ext)).unsqueeze(1)
            turning = vecdot(u, r).amin(dim=(0, 1)) <= 0.0
            rho = r_all
        logw = logaddexp(logw, sub_logw)
        ends = where(side_all[d], torch.stack((q, p, g, ps), dim=1).unsqueeze(1), ends)
        alive = valid > turning
        if not bool(alive.any()):
            break
        alive_f = alive.to(dtype)

    info = NUTSInfo(
        diverging=diverging,
        tree_depth=depth,
        num_steps=n_steps.to(torch.int64),
        accept_prob=sum_accept / n_steps,
        energy=h0 - prop_ll[1],
        reached_max_tree_depth=depth >= max_tree_depth,
    )
    return NUTSState(prop_qg[0], prop_ll[0], prop_qg[1]), info
