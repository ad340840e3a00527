"""Depth bases: the functions phi_k(t) in which the weights W(t) = sum_k phi_k(t) A_k are written.

A depth-L ResNet is read as the ODE dh/dt = act(W(t) h + b(t)) on [0, T] integrated with L explicit
Euler steps. Each basis maps times t in [0, T] to a design matrix Phi with Phi[i, k] = phi_k(t_i);
its number of functions K (``size(depth)``) sets how many coefficient matrices the network has.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Basis",
    "Constant",
    "Cubic",
    "Legendre",
    "Linear",
    "Monomial",
    "Piecewise",
    "basis_from_config",
    "get_basis",
]


def _as_times(t: Tensor | float | list, dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(t, dtype=dtype)
    if t.dim() > 1:
        raise ValueError(f"times must be a scalar or 1-D, got shape {tuple(t.shape)}")
    return t.reshape(-1)


def _check_depth(depth: int) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")


def _check_horizon(horizon: float) -> None:
    if not (isinstance(horizon, (int, float)) and math.isfinite(horizon) and horizon > 0):
        raise ValueError(f"horizon must be a positive finite number, got {horizon!r}")


class Basis(ABC):
    """A family of functions of depth t in [0, horizon]."""

    @abstractmethod
    def size(self, depth: int) -> int:
        """Number of basis functions K for a network of ``depth`` layers."""

    @abstractmethod
    def names(self, depth: int) -> list[str]:
        """Labels of the K functions (used as ArviZ coordinates)."""

    @abstractmethod
    def _evaluate(self, t: Tensor, depth: int, horizon: float) -> Tensor:
        """Phi for validated 1-D times, shape (len(t), K)."""

    def matrix(
        self,
        t: Tensor | float | list,
        depth: int,
        horizon: float = 1.0,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        """Evaluate the basis at times ``t``.

        Parameters
        ----------
        t : tensor of shape (M,) or scalar
            Times in [0, horizon].
        depth : int
            Number of layers L of the network.
        horizon : float
            Final time T.
        dtype : torch.dtype
            Floating dtype of the result.

        Returns
        -------
        Tensor of shape (M, K) with entry [i, k] = phi_k(t_i), K = ``size(depth)``.
        """
        _check_depth(depth)
        _check_horizon(horizon)
        times = _as_times(t, dtype)
        if not torch.isfinite(times).all():
            raise ValueError("times must be finite")
        tol = 1e-9 * horizon
        if (times < -tol).any() or (times > horizon + tol).any():
            raise ValueError(f"times must lie in [0, horizon={horizon}]")
        return self._evaluate(times, depth, horizon)

    def config(self) -> dict[str, Any]:
        """JSON-serializable description, inverted by :func:`basis_from_config`."""
        return {"name": type(self).__name__}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Basis) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.config().items())))


class Piecewise(Basis):
    """One indicator per layer: phi_n(t) = 1 on [n dt, (n+1) dt), dt = horizon / depth.

    This is the ordinary ResNet with one weight matrix per layer. The final time t = horizon
    belongs to the last layer. Layer lookup snaps times within 1e-9 (relative) of a layer boundary
    to that boundary, so t_n = n * dt computed in floating point always lands in layer n.
    """

    def size(self, depth: int) -> int:
        _check_depth(depth)
        return depth

    def names(self, depth: int) -> list[str]:
        return [f"layer{n}" for n in range(self.size(depth))]

    def layer_index(self, t: Tensor, depth: int, horizon: float) -> Tensor:
        """Index of the layer whose interval holds each time, shape (M,), int64."""
        u = t * (depth / horizon)
        nearest = torch.round(u)
        snapped = torch.where((u - nearest).abs() <= 1e-9 * max(depth, 1), nearest, torch.floor(u))
        return snapped.clamp(0, depth - 1).to(torch.int64)

    def _evaluate(self, t: Tensor, depth: int, horizon: float) -> Tensor:
        idx = self.layer_index(t, depth, horizon)
        return torch.nn.functional.one_hot(idx, depth).to(t.dtype)


class Monomial(Basis):
    """Powers of scaled time: phi_k(t) = (t / horizon)^k for k = 0..degree."""

    def __init__(self, degree: int) -> None:
        if not isinstance(degree, int) or isinstance(degree, bool) or degree < 0:
            raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
        self.degree = degree

    def size(self, depth: int) -> int:
        _check_depth(depth)
        return self.degree + 1

    def names(self, depth: int) -> list[str]:
        return [f"t^{k}" for k in range(self.size(depth))]

    def _evaluate(self, t: Tensor, depth: int, horizon: float) -> Tensor:
        s = (t / horizon).unsqueeze(-1)
        powers = torch.arange(self.degree + 1, dtype=t.dtype, device=t.device)
        return s**powers

    def config(self) -> dict[str, Any]:
        return {"name": "Monomial", "degree": self.degree}


class Constant(Monomial):
    """Weights constant in depth (degree-0 monomial)."""

    def __init__(self) -> None:
        super().__init__(0)

    def config(self) -> dict[str, Any]:
        return {"name": "Constant"}


class Linear(Monomial):
    """Weights linear in depth (degree-1 monomial)."""

    def __init__(self) -> None:
        super().__init__(1)

    def config(self) -> dict[str, Any]:
        return {"name": "Linear"}


class Cubic(Monomial):
    """Weights cubic in depth (degree-3 monomial)."""

    def __init__(self) -> None:
        super().__init__(3)

    def config(self) -> dict[str, Any]:
        return {"name": "Cubic"}


class Legendre(Monomial):
    """Legendre polynomials P_k(2 t / horizon - 1), k = 0..degree: orthogonal on [0, horizon]."""

    def names(self, depth: int) -> list[str]:
        return [f"P{k}" for k in range(self.size(depth))]

    def _evaluate(self, t: Tensor, depth: int, horizon: float) -> Tensor:
        s = 2.0 * t / horizon - 1.0
        columns = [torch.ones_like(s)]
        if self.degree >= 1:
            columns.append(s)
        # Bonnet's recursion: (k + 1) P_{k+1} = (2k + 1) s P_k - k P_{k-1}
        for k in range(1, self.degree):
            columns.append(((2 * k + 1) * s * columns[k] - k * columns[k - 1]) / (k + 1))
        return torch.stack(columns, dim=-1)

    def config(self) -> dict[str, Any]:
        return {"name": "Legendre", "degree": self.degree}


_BY_NAME: dict[str, type[Basis]] = {
    "Piecewise": Piecewise,
    "Monomial": Monomial,
    "Constant": Constant,
    "Linear": Linear,
    "Cubic": Cubic,
    "Legendre": Legendre,
}


def basis_from_config(config: dict[str, Any]) -> Basis:
    """Rebuild a basis from :meth:`Basis.config`."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in _BY_NAME:
        raise ValueError(f"unknown basis {name!r}; expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[name](**config)


def get_basis(spec: Basis | str) -> Basis:
    """A basis from an instance or a short name: 'piecewise', 'constant', 'linear', 'cubic',
    'legendre<degree>' (e.g. 'legendre2') or 'monomial<degree>'."""
    if isinstance(spec, Basis):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"basis must be a Basis or a name, got {type(spec).__name__}")
    key = spec.strip().lower()
    simple = {"piecewise": Piecewise, "constant": Constant, "linear": Linear, "cubic": Cubic}
    if key in simple:
        return simple[key]()
    for prefix, cls in (("legendre", Legendre), ("monomial", Monomial)):
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            return cls(int(key[len(prefix) :]))
    raise ValueError(
        f"unknown basis {spec!r}; expected 'piecewise', 'constant', 'linear', 'cubic', "
        "'legendre<degree>' or 'monomial<degree>'"
    )
