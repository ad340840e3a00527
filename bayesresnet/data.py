"""Data helpers: standardization, toy regression problems, and the UCI benchmark loader."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from .uci import DATA_ENV_VAR, standard_splits, uci, uci_names

__all__ = ["DATA_ENV_VAR", "Standardizer", "cubic", "gap", "sine", "standard_splits", "uci",
           "uci_names"]


def _as_float_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return array.astype(np.float64)


class Standardizer:
    """Per-column affine scaling to zero mean and unit standard deviation.

    Columns with zero standard deviation are left unscaled (std set to 1), as in the UCI protocol.
    Works on NumPy arrays and torch tensors; outputs have the input's type.

    Attributes
    ----------
    mean, std : ndarray of shape (d,)
    """

    def __init__(self, mean: ArrayLike | None = None, std: ArrayLike | None = None) -> None:
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)

    @classmethod
    def identity(cls, dim: int) -> Standardizer:
        """A scaler that changes nothing."""
        return cls(np.zeros(dim), np.ones(dim))

    def fit(self, values: ArrayLike) -> Standardizer:
        """Learn mean and std from ``values`` of shape (N, d) or (N,)."""
        array = _as_float_array(values, "values")
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"cannot fit a Standardizer on shape {array.shape}")
        self.mean = array.mean(axis=0)
        std = array.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        return self

    def _params_like(self, values: Any) -> tuple[Any, Any]:
        if self.mean is None or self.std is None:
            raise RuntimeError("Standardizer is not fitted; call fit() first")
        if isinstance(values, torch.Tensor):
            return (torch.as_tensor(self.mean, dtype=values.dtype),
                    torch.as_tensor(self.std, dtype=values.dtype))
        return self.mean, self.std

    def transform(self, values: Any) -> Any:
        """(values - mean) / std, broadcasting over the last axis."""
        mean, std = self._params_like(values)
        return (values - mean) / std

    def inverse_transform(self, values: Any) -> Any:
        """values * std + mean: back to original units."""
        mean, std = self._params_like(values)
        return values * std + mean

    def inverse_scale(self, scales: Any) -> Any:
        """Standard deviations back to original units: scales * std."""
        _, std = self._params_like(scales)
        return scales * std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Standardizer:
        return cls(state["mean"], state["std"])

    def __repr__(self) -> str:
        return f"Standardizer(mean={self.mean}, std={self.std})"


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def cubic(n: int = 20, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """The cubic toy of Hernandez-Lobato & Adams (2015): x ~ U[-4, 4], y = x^3 + N(0, 3^2).

    Returns
    -------
    x : ndarray (n, 1), y : ndarray (n,)
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4.0, 4.0, size=(n, 1))
    y = x[:, 0] ** 3 + rng.normal(0.0, 3.0, size=n)
    return x, y


def gap(n: int = 40, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """In-between uncertainty toy (Foong et al. 2019): half of x ~ U[-1, -0.7], half ~ U[0.5, 1],
    y = cos(4x + 0.8) + N(0, 0.1^2).

    Returns
    -------
    x : ndarray (n, 1), y : ndarray (n,)
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    left = n // 2
    x = np.concatenate([rng.uniform(-1.0, -0.7, size=left), rng.uniform(0.5, 1.0, size=n - left)])
    y = np.cos(4.0 * x + 0.8) + rng.normal(0.0, 0.1, size=n)
    return x[:, None], y


def sine(n: int = 50, seed: int | None = 0, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Smooth 1-D toy: x ~ U[-3, 3], y = sin(x) + N(0, noise^2).

    Returns
    -------
    x : ndarray (n, 1), y : ndarray (n,)
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 3.0, size=(n, 1))
    y = np.sin(x[:, 0]) + rng.normal(0.0, noise, size=n)
    return x, y
