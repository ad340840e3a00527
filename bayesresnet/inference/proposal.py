"""Choosing the next state among the leaves of a NUTS trajectory (multinomial sampling).

Every leaf of a trajectory has the weight ``exp(H0 - H)``, its Hamiltonian measured against the
starting point's; :func:`log_weight` computes it, a non-finite value (NaN or infinite
Hamiltonian) counting as weight zero. The selected state is built up as the trajectory grows
(Betancourt 2017, appendix A):

* inside a subtree, leaves are folded in chunks (:func:`fold_chunk`): a leaf of the chunk is
  drawn in proportion to its weight (Gumbel-max), and replaces the subtree's earlier choice
  with probability ``W_chunk / (W_earlier + W_chunk)`` (uniform progressive sampling), so
  every leaf of the subtree ends up selected in proportion to its weight;
* when a valid subtree is merged into the trajectory (:func:`biased_merge`), its choice
  replaces the trajectory's with probability ``min(1, W_subtree / W_trajectory)`` (biased
  progressive sampling), which favours states far from the start and keeps the target
  invariant.

A :class:`Proposal` keeps the chosen state packed for ``torch.where`` in one call: positions
and gradients stacked ``(2, C, D)`` and log density and log weight stacked ``(2, C)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Proposal", "biased_merge", "fold_chunk", "initial_proposal", "log_weight"]

_INF = math.inf


class Proposal(NamedTuple):
    """The state chosen among the leaves seen so far, for ``C`` chains.

    Attributes
    ----------
    states : Tensor
        ``(2, C, D)``: ``states[0]`` positions, ``states[1]`` gradients of the log density.
    scalars : Tensor
        ``(2, C)``: ``scalars[0]`` log densities, ``scalars[1]`` log weights ``H0 - H``.
    log_sum_weight : Tensor
        ``(C,)`` log of the total weight of the leaves seen.
    """

    states: Tensor
    scalars: Tensor
    log_sum_weight: Tensor


def initial_proposal(position: Tensor, log_density: Tensor, grad: Tensor) -> Proposal:
    """The trajectory's proposal before any leapfrog step: its starting point (weight 1).

    Parameters
    ----------
    position, grad : Tensor
        ``(C, D)``.
    log_density : Tensor
        ``(C,)``.

    Returns
    -------
    Proposal
    """
    zero = torch.zeros_like(log_density)
    return Proposal(torch.stack((position, grad)), torch.stack((log_density, zero)), zero)


def log_weight(initial_energy: Tensor, log_density: Tensor, momentum: Tensor,
               velocity: Tensor) -> Tensor:
    """``H0 - H`` of leaves with ``H = -log p(q) + p . v / 2``; non-finite values become
    ``-inf``.

    Parameters
    ----------
    initial_energy : Tensor
        ``(C,)`` Hamiltonian ``H0`` of the transition's starting point.
    log_density : Tensor
        ``(C,)`` at the leaves.
    momentum, velocity : Tensor
        ``(C, D)`` ``p`` and ``M^{-1} p`` at the leaves.

    Returns
    -------
    Tensor
        ``(C,)`` log weights.
    """
    # (log p + H0) - 0.5 p.v in one subtraction: the same bits as (log p + H0) minus the
    # metric's kinetic energy 0.5 * vecdot(p, v), since scaling by 0.5 is exact.
    lw = torch.sub(log_density + initial_energy, torch.linalg.vecdot(momentum, velocity),
                   alpha=0.5)
    return torch.nan_to_num(lw, nan=-_INF, posinf=-_INF, neginf=-_INF)


def fold_chunk(
    proposal: Proposal | None,
    positions: list[Tensor],
    grads: list[Tensor],
    log_densities: list[Tensor],
    log_weights: list[Tensor],
    generator: torch.Generator,
    chain_idx: Tensor,
) -> Proposal:
    """Fold a chunk of consecutive leaves into a subtree's proposal.

    Parameters
    ----------
    proposal : Proposal or None
        The subtree's proposal from its earlier chunks; ``None`` for its first chunk.
    positions, grads : list of Tensor
        ``k >= 1`` leaves' ``(C, D)`` positions and gradients.
    log_densities, log_weights : list of Tensor
        ``k`` leaves' ``(C,)`` log densities and log weights.
    generator : torch.Generator
        Source of randomness: an exponential draw ``(k, C)`` when ``k > 1``, then a uniform
        ``(C,)`` when ``proposal`` is given.
    chain_idx : Tensor
        ``arange(C)``.

    Returns
    -------
    Proposal
        The subtree's proposal including the chunk; ``log_sum_weight`` adds the chunk's.
    """
    k = len(positions)
    if k == 1:
        w = log_weights[0]
        qg = torch.stack((positions[0], grads[0]))
        ll = torch.stack((log_densities[0], w))
    else:
        n_chains, dim = positions[0].shape
        ll_all = torch.stack(log_densities + log_weights).view(2, k, n_chains)
        w = torch.logsumexp(ll_all[1], 0)
        # Gumbel-max: argmax(log w - log E), E ~ Exp(1), picks a leaf in proportion to w.
        noise = torch.empty_like(ll_all[1]).exponential_(generator=generator)
        idx = (ll_all[1] - noise.log()).argmax(0)
        qg = torch.stack(positions + grads).view(2, k, n_chains, dim)[:, idx, chain_idx]
        ll = ll_all[:, idx, chain_idx]
    if proposal is None:
        return Proposal(qg, ll, w)
    new_w = torch.logaddexp(proposal.log_sum_weight, w)
    u = torch.rand(w.shape, generator=generator, dtype=w.dtype, device=w.device)
    take = u.log() < w - new_w
    return Proposal(torch.where(take.unsqueeze(-1), qg, proposal.states),
                    torch.where(take, ll, proposal.scalars), new_w)


def biased_merge(trajectory: Proposal, subtree: Proposal, log_uniform: Tensor, valid: Tensor
                 ) -> Proposal:
    """Merge a subtree into the trajectory: take its state with probability
    ``min(1, W_subtree / W_trajectory)``.

    Parameters
    ----------
    trajectory, subtree : Proposal
        The trajectory's proposal before the merge and the subtree's.
    log_uniform : Tensor
        ``(C,)`` ``log U`` with ``U ~ Uniform(0, 1)``.
    valid : Tensor
        ``(C,)`` bool; a chain whose subtree is not valid (it diverged or made a U-turn
        inside) keeps its trajectory's state.

    Returns
    -------
    Proposal
        With the total log weight of trajectory and subtree.
    """
    take = valid & (log_uniform < subtree.log_sum_weight - trajectory.log_sum_weight)
    return Proposal(torch.where(take.unsqueeze(-1), subtree.states, trajectory.states),
                    torch.where(take, subtree.scalars, trajectory.scalars),
                    torch.logaddexp(trajectory.log_sum_weight, subtree.log_sum_weight))
