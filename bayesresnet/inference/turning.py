"""The generalized no-U-turn criterion, checked iteratively with O(depth) memory.

A segment of a trajectory with momenta ``p_a .. p_b`` makes a U-turn when

    v_a . rho <= 0   or   v_b . rho <= 0,        rho = p_a + ... + p_b,

with ``v = M^{-1} p`` the velocities of its two end points (Betancourt 2017). NUTS checks it
on every merge of two sibling subtrees of its binary tree: on the merged segment, and (the
extra checks Stan added in 2.26) on each half extended by the adjacent leaf of the other half.

Inside a subtree of ``2**depth`` leaves that are integrated one after another, the merges are
the aligned blocks of ``2**k`` leaves (``k = 1 .. depth``): the block of level ``k`` that
ends at leaf ``n`` exists when ``2**k`` divides ``n + 1``. Instead of keeping every leaf, the
check keeps, for each level ``k``, what it needs of the first leaf ``s`` of the open block of
that level: a row of the checkpoint tensor ``(levels, NUM_SLOTS, C, D)`` with the slots

``SUM_BEFORE``
    momentum prefix sum of the subtree up to leaf ``s - 1``;
``MOMENTUM_BEFORE``
    momentum of leaf ``s - 1``;
``SUM_THROUGH_FIRST``
    prefix sum up to leaf ``s``;
``VELOCITY_FIRST``
    velocity of leaf ``s``;
``VELOCITY_BEFORE``
    velocity of leaf ``s - 1``.

A block's momentum sum is then a difference of prefix sums, and its halves' sums (and those of
the halves extended by one leaf) follow from the rows of two consecutive levels, so all checks
that complete at a leaf cost one batched set of dot products.

:func:`subtree_start` and :func:`subtree_leaf` run this inside a subtree (state in, state
out, plus the per-chain U-turn mask of the blocks the leaf completes);
:func:`trajectory_turning` checks the merge of a finished subtree into the trajectory.
The checkpoint tensor is written in place (it is preallocated once per transition, not copied
per leaf).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "MOMENTUM_BEFORE",
    "NUM_SLOTS",
    "SUM_BEFORE",
    "SUM_THROUGH_FIRST",
    "VELOCITY_BEFORE",
    "VELOCITY_FIRST",
    "SubtreeTurning",
    "checkpoint_memory",
    "is_turning",
    "subtree_leaf",
    "subtree_start",
    "trajectory_turning",
]

SUM_BEFORE = 0
MOMENTUM_BEFORE = 1
SUM_THROUGH_FIRST = 2
VELOCITY_FIRST = 3
VELOCITY_BEFORE = 4
NUM_SLOTS = 5


def is_turning(velocity_first: Tensor, velocity_last: Tensor, momentum_sum: Tensor) -> Tensor:
    """The criterion on one segment: ``v_first . rho <= 0`` or ``v_last . rho <= 0``.

    Parameters
    ----------
    velocity_first, velocity_last, momentum_sum : Tensor
        ``(..., D)`` velocities of the segment's end points and the sum ``rho`` of its
        momenta.

    Returns
    -------
    Tensor
        ``(...,)`` bool.
    """
    vecdot = torch.linalg.vecdot
    return torch.minimum(vecdot(velocity_first, momentum_sum),
                         vecdot(velocity_last, momentum_sum)) <= 0.0


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


def checkpoint_memory(max_tree_depth: int, like: Tensor) -> Tensor:
    """Uninitialized checkpoints for subtrees of up to ``2**(max_tree_depth - 1)`` leaves.

    Parameters
    ----------
    max_tree_depth : int
        The kernel's maximum number of doublings.
    like : Tensor
        ``(C, D)`` tensor giving shape, dtype and device.

    Returns
    -------
    Tensor
        ``(max(max_tree_depth, 2), NUM_SLOTS, C, D)``; row ``k`` belongs to level ``k``
        (row 0 is unused).
    """
    return torch.empty((max(max_tree_depth, 2), NUM_SLOTS, *like.shape), dtype=like.dtype,
                       device=like.device)


class SubtreeTurning(NamedTuple):
    """The U-turn bookkeeping of a subtree after its latest leaf.

    Attributes
    ----------
    checkpoints : Tensor
        ``(levels, NUM_SLOTS, C, D)`` rows of the open blocks (see the module docstring).
    momentum_sum : Tensor
        ``(C, D)`` sum of the momenta of the subtree's leaves so far.
    momentum, velocity : Tensor
        ``(C, D)`` of the latest leaf.
    first_momentum, first_velocity : Tensor
        ``(C, D)`` of the subtree's first leaf (the merge check needs them).
    """

    checkpoints: Tensor
    momentum_sum: Tensor
    momentum: Tensor
    velocity: Tensor
    first_momentum: Tensor
    first_velocity: Tensor


def subtree_start(checkpoints: Tensor, zeros: Tensor) -> SubtreeTurning:
    """Bookkeeping of a subtree with no leaf yet.

    Parameters
    ----------
    checkpoints : Tensor
        From :func:`checkpoint_memory` (reused by every subtree of a transition).
    zeros : Tensor
        ``(C, D)`` zeros.

    Returns
    -------
    SubtreeTurning
    """
    return SubtreeTurning(checkpoints, zeros, zeros, zeros, zeros, zeros)


def subtree_leaf(memory: SubtreeTurning, n: int, depth: int, momentum: Tensor,
                 velocity: Tensor) -> tuple[SubtreeTurning, Tensor | None]:
    """Add leaf ``n`` (0-based, in integration order) of a subtree of ``2**depth`` leaves.

    At an odd ``n`` the blocks of levels ``1 .. j`` that end here (``2**j`` the largest power
    of two dividing ``n + 1``) are checked: each on its whole segment and on both halves
    extended by the adjacent leaf of the other half. At an even ``n`` the blocks that start
    here record their checkpoints.

    Parameters
    ----------
    memory : SubtreeTurning
        State after leaf ``n - 1`` (or :func:`subtree_start` for ``n = 0``).
    n : int
        Index of the leaf.
    depth : int
        The subtree has ``2**depth`` leaves.
    momentum, velocity : Tensor
        ``(C, D)`` of leaf ``n``.

    Returns
    -------
    memory : SubtreeTurning
        State after leaf ``n``.
    turning : Tensor or None
        ``(C,)`` bool, a block that ends at leaf ``n`` makes a U-turn; ``None`` when no block
        ends here (even ``n``).
    """
    ck, p_sum_prev, p_prev, v_prev, first_p, first_v = memory
    p, v = momentum, velocity
    if n == 0:
        p_sum = p
        first_p, first_v = p, v
    else:
        p_sum = p_sum_prev + p
    turning = None
    vecdot = torch.linalg.vecdot
    if n & 1:
        j = _trailing_zeros(n + 1)  # blocks of levels 1..j end here
        if j == 1:  # the block is the last two leaves: its three segments coincide
            r = p_prev + p
            dots = vecdot(torch.stack((v_prev, v)), r)
        else:
            # rows 1..j: the blocks ending here, from the smallest (level 1) up
            r_full = p_sum - ck[1:j + 1, SUM_BEFORE]
            # level k >= 2: left half (level k - 1 block at the same start) plus the first leaf
            # of the right half, and right half plus the last leaf of the left half
            r_left = ck[1:j, SUM_THROUGH_FIRST] - ck[2:j + 1, SUM_BEFORE]
            r_right = r_full[:-1] + ck[1:j, MOMENTUM_BEFORE]
            dots = torch.cat((
                vecdot(ck[1:j + 1, VELOCITY_FIRST], r_full), vecdot(v, r_full),
                vecdot(ck[2:j + 1, VELOCITY_FIRST], r_left),
                vecdot(ck[1:j, VELOCITY_FIRST], r_left),
                vecdot(ck[1:j, VELOCITY_BEFORE], r_right), vecdot(v, r_right),
            ))
        turning = dots.amin(0) <= 0.0
    elif depth > 0:  # blocks of levels 1..top start here
        top = depth if n == 0 else min(_trailing_zeros(n), depth)
        # slot order: SUM_BEFORE, MOMENTUM_BEFORE, SUM_THROUGH_FIRST, VELOCITY_FIRST,
        # VELOCITY_BEFORE
        ck[1:top + 1] = torch.stack((p_sum_prev, p_prev, p_sum, v, v_prev))
    return SubtreeTurning(ck, p_sum, p, v, first_p, first_v), turning


def trajectory_turning(trajectory_sum: Tensor, far_velocity: Tensor, near_momentum: Tensor,
                       near_velocity: Tensor, subtree: SubtreeTurning,
                       single_leaves: bool = False) -> tuple[Tensor, Tensor]:
    """The U-turn checks of merging a finished subtree into the trajectory.

    The trajectory's near end is the leaf the subtree was integrated from; its far end is the
    other end. Checked: the merged segment, the old trajectory extended by the subtree's first
    leaf, and the subtree extended by the trajectory's near end.

    Parameters
    ----------
    trajectory_sum : Tensor
        ``(C, D)`` sum of the old trajectory's momenta.
    far_velocity : Tensor
        ``(C, D)`` velocity of the old trajectory's far end.
    near_momentum, near_velocity : Tensor
        ``(C, D)`` of the old trajectory's near end.
    subtree : SubtreeTurning
        Bookkeeping after the subtree's last leaf.
    single_leaves : bool, default False
        Both the trajectory and the subtree are one leaf (the first doubling): the three
        segments coincide and only the merged one is computed.

    Returns
    -------
    turning : Tensor
        ``(C,)`` bool.
    momentum_sum : Tensor
        ``(C, D)`` sum of the merged trajectory's momenta.
    """
    vecdot = torch.linalg.vecdot
    p_sum, last_v = subtree.momentum_sum, subtree.velocity
    if single_leaves:
        rho = near_momentum + subtree.momentum
        turning = vecdot(torch.stack((near_velocity, last_v)), rho).amin(0) <= 0.0
        return turning, rho
    n_chains, dim = p_sum.shape
    r_all = trajectory_sum + p_sum
    r_old_ext = trajectory_sum + subtree.first_momentum
    r_new_ext = p_sum + near_momentum
    u = torch.stack((far_velocity, last_v, far_velocity, subtree.first_velocity,
                     near_velocity, last_v)).view(3, 2, n_chains, dim)
    r = torch.stack((r_all, r_old_ext, r_new_ext)).unsqueeze(1)
    turning = vecdot(u, r).amin(dim=(0, 1)) <= 0.0
    return turning, r_all
