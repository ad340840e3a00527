"""Euclidean metrics (Gaussian kinetic energies) for ``C`` chains, and their estimation.

A metric is the inverse mass matrix ``M^{-1}`` of the Gaussian momentum ``p ~ N(0, M)``; it
fixes the kinetic energy ``K(p) = p^T M^{-1} p / 2`` and the velocity ``dq/dt = M^{-1} p``.
Two kinds, each batched over chains:

* :class:`DiagonalMetric`: ``(C, D)`` diagonals of ``M^{-1}``;
* :class:`DenseMetric`: ``(C, D, D)`` matrices ``M^{-1}``.

Both offer the same methods (:meth:`~DiagonalMetric.velocity`,
:meth:`~DiagonalMetric.kinetic_energy`, :meth:`~DiagonalMetric.sample_momentum`, and the pair
:meth:`~DiagonalMetric.drift_coefficient` / :meth:`~DiagonalMetric.drift` the leapfrog
integrator uses for its position update), so an integrator or a kernel is written once for
both. :func:`make_metric` picks the kind from the shape of ``M^{-1}``.

The metric is estimated during warmup from the draws of a window: :class:`WelfordState`,
:func:`welford_init`, :func:`welford_update` accumulate the per-chain mean and (co)variance of
the draws in one pass (Welford 1962), and :func:`welford_inverse_mass` turns them into Stan's
regularized estimate ``n / (n + 5) * cov + 1e-3 * 5 / (n + 5) * I``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DenseMetric",
    "DiagonalMetric",
    "Metric",
    "WelfordState",
    "make_metric",
    "welford_covariance",
    "welford_init",
    "welford_inverse_mass",
    "welford_update",
]


class DiagonalMetric:
    """Diagonal inverse mass matrices, one per chain.

    Parameters
    ----------
    inverse_mass : Tensor
        ``(C, D)`` positive diagonals of ``M^{-1}``.
    """

    dense = False

    def __init__(self, inverse_mass: Tensor) -> None:
        self.inverse_mass = inverse_mass

    def velocity(self, momentum: Tensor) -> Tensor:
        """``M^{-1} p``: ``(C, D)`` momenta to ``(C, D)`` velocities."""
        return self.inverse_mass * momentum

    def kinetic_energy(self, momentum: Tensor, velocity: Tensor | None = None) -> Tensor:
        """``p^T M^{-1} p / 2`` of shape ``(C,)``; pass ``velocity = M^{-1} p`` if known."""
        if velocity is None:
            velocity = self.velocity(momentum)
        return 0.5 * torch.linalg.vecdot(momentum, velocity)

    def sample_momentum(self, generator: torch.Generator) -> Tensor:
        """Draw ``(C, D)`` momenta ``p ~ N(0, M)`` (one ``randn`` of shape ``(C, D)``)."""
        minv = self.inverse_mass
        z = torch.randn(minv.shape, generator=generator, dtype=minv.dtype, device=minv.device)
        return z * torch.rsqrt(minv)

    def drift_coefficient(self, step_size: Tensor) -> Tensor:
        """What :meth:`drift` multiplies the momentum by: ``(C, 1)`` steps to ``eps M^{-1}``
        ``(C, D)``, computed once per trajectory segment of constant step size."""
        return step_size * self.inverse_mass

    def drift(self, position: Tensor, coefficient: Tensor, momentum: Tensor) -> Tensor:
        """Position update ``q + eps M^{-1} p`` with ``coefficient`` from
        :meth:`drift_coefficient`; ``(C, D)`` in and out."""
        return torch.addcmul(position, coefficient, momentum)


class DenseMetric:
    """Dense inverse mass matrices, one per chain.

    Parameters
    ----------
    inverse_mass : Tensor
        ``(C, D, D)`` symmetric positive definite ``M^{-1}``.
    """

    dense = True

    def __init__(self, inverse_mass: Tensor) -> None:
        self.inverse_mass = inverse_mass

    def velocity(self, momentum: Tensor) -> Tensor:
        """``M^{-1} p``: ``(C, D)`` momenta to ``(C, D)`` velocities."""
        return torch.bmm(self.inverse_mass, momentum.unsqueeze(-1)).squeeze(-1)

    def kinetic_energy(self, momentum: Tensor, velocity: Tensor | None = None) -> Tensor:
        """``p^T M^{-1} p / 2`` of shape ``(C,)``; pass ``velocity = M^{-1} p`` if known."""
        if velocity is None:
            velocity = self.velocity(momentum)
        return 0.5 * torch.linalg.vecdot(momentum, velocity)

    def sample_momentum(self, generator: torch.Generator) -> Tensor:
        """Draw ``(C, D)`` momenta ``p ~ N(0, M)`` (one ``randn`` of shape ``(C, D)``).

        With ``M^{-1} = L L^T`` (Cholesky), ``p = L^{-T} z`` has covariance
        ``L^{-T} L^{-1} = (L L^T)^{-1} = M``.
        """
        minv = self.inverse_mass
        z = torch.randn(minv.shape[:-1], generator=generator, dtype=minv.dtype,
                        device=minv.device)
        chol = torch.linalg.cholesky(minv)
        return torch.linalg.solve_triangular(chol.mT, z.unsqueeze(-1), upper=True).squeeze(-1)

    def drift_coefficient(self, step_size: Tensor) -> Tensor:
        """What :meth:`drift` multiplies the velocity by: the ``(C, 1)`` steps themselves."""
        return step_size

    def drift(self, position: Tensor, coefficient: Tensor, momentum: Tensor) -> Tensor:
        """Position update ``q + eps M^{-1} p`` with ``coefficient`` from
        :meth:`drift_coefficient`; ``(C, D)`` in and out."""
        return torch.addcmul(position, coefficient, self.velocity(momentum))


Metric = DiagonalMetric | DenseMetric


def make_metric(inverse_mass: Tensor, num_chains: int, dim: int, dtype: torch.dtype,
                device: torch.device) -> Metric:
    """The metric of an inverse mass matrix, broadcast to ``num_chains`` chains.

    Parameters
    ----------
    inverse_mass : Tensor
        ``(D,)`` or ``(C, D)`` diagonal, or ``(C, D, D)`` dense ``M^{-1}`` (a leading
        dimension of 1 is broadcast).
    num_chains, dim : int
        ``C`` and ``D``.
    dtype, device
        Of the computation (``inverse_mass`` is converted).

    Returns
    -------
    DiagonalMetric or DenseMetric

    Raises
    ------
    ValueError
        If ``inverse_mass`` has neither shape.
    """
    minv = torch.as_tensor(inverse_mass, dtype=dtype, device=device)
    if minv.ndim == 2:
        return DiagonalMetric(minv.expand(num_chains, dim))
    if minv.ndim == 3:
        return DenseMetric(minv.expand(num_chains, dim, dim))
    raise ValueError("inverse_mass must have shape (C, D) or (C, D, D)")


# ------------------------------------------------------------------------------ estimation
class WelfordState(NamedTuple):
    """Running mean and sum of squared deviations of the draws of ``C`` chains.

    Attributes
    ----------
    mean : Tensor
        ``(C, D)`` mean of the draws so far.
    m2 : Tensor
        ``(C, D)`` (diagonal) or ``(C, D, D)`` (dense) sum of (outer) products of deviations
        from the running means.
    count : int
        Number of draws accumulated.
    """

    mean: Tensor
    m2: Tensor
    count: int


def welford_init(position: Tensor, dense: bool) -> WelfordState:
    """An empty accumulator shaped after ``(C, D)`` ``position`` (dtype and device too).

    Parameters
    ----------
    position : Tensor
        ``(C, D)`` positions (only shape, dtype and device are used).
    dense : bool
        Accumulate full ``(C, D, D)`` covariances instead of ``(C, D)`` variances.

    Returns
    -------
    WelfordState
    """
    n_chains, dim = position.shape
    shape = (n_chains, dim, dim) if dense else (n_chains, dim)
    return WelfordState(torch.zeros_like(position),
                        torch.zeros(shape, dtype=position.dtype, device=position.device), 0)


def welford_update(state: WelfordState, position: Tensor) -> WelfordState:
    """Add one draw per chain.

    Parameters
    ----------
    state : WelfordState
        Accumulator.
    position : Tensor
        ``(C, D)`` draws.

    Returns
    -------
    WelfordState
    """
    n = state.count + 1
    delta = position - state.mean
    mean = state.mean + delta / n
    delta2 = position - mean
    if state.m2.ndim == 3:
        m2 = state.m2 + delta.unsqueeze(-1) * delta2.unsqueeze(-2)
    else:
        m2 = state.m2 + delta * delta2
    return WelfordState(mean, m2, n)


def welford_covariance(state: WelfordState) -> Tensor:
    """Unbiased sample (co)variance ``m2 / (n - 1)``: ``(C, D)`` or ``(C, D, D)``.

    Parameters
    ----------
    state : WelfordState
        Accumulator with at least two draws.

    Returns
    -------
    Tensor
    """
    return state.m2 / (state.count - 1)


def welford_inverse_mass(state: WelfordState) -> Tensor:
    """Stan's regularized metric estimate ``n/(n+5) * cov + 1e-3 * 5/(n+5) * I``.

    The sample (co)variance is shrunk toward a small multiple of the identity, which keeps it
    positive definite for short windows; a dense estimate is symmetrized first.

    Parameters
    ----------
    state : WelfordState
        Accumulator with at least two draws.

    Returns
    -------
    Tensor
        ``(C, D)`` or ``(C, D, D)`` inverse mass matrix.
    """
    n = state.count
    cov = welford_covariance(state)
    shrink = 1e-3 * 5.0 / (n + 5.0)
    if cov.ndim == 3:
        cov = 0.5 * (cov + cov.mT)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return (n / (n + 5.0)) * cov + shrink * eye
    return (n / (n + 5.0)) * cov + shrink
