"""Data helpers: standardization, toy regression problems, and the UCI benchmark loader."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from .uci import (
    CACHE_ENV_VAR,
    DATA_ENV_VAR,
    URL_ENV_VAR,
    DataIntegrityError,
    DataUnavailableError,
    cache_dir,
    fetch_uci,
    standard_splits,
    uci,
    uci_names,
)

__all__ = ["CACHE_ENV_VAR", "DATA_ENV_VAR", "URL_ENV_VAR", "DataIntegrityError",
           "DataUnavailableError", "Standardizer", "cache_dir", "cubic", "fetch_uci", "gap",
           "sine", "standard_splits", "uci", "uci_names"]


def _as_float_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return array.astype(np.float64)


def _column_label(index: int, names: Sequence[Any] | None) -> str:
    """``column 2`` without names; with names, the column's name (``column 'age'``), or its
    number when the name is an integer (``column 7`` for a file without a header)."""
    if names is None:
        return f"column {index}"
    name = names[index]
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        return f"column {name}"
    return f"column {str(name)!r}"


def _scale_parameters(mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``mean`` and ``std``: 1-D float64 arrays of one length, finite, std > 0."""
    arrays = []
    for key, value in (("mean", mean), ("std", std)):
        try:
            array = np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"Standardizer {key} must be numbers, got {value!r}") from None
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"Standardizer {key} must be a non-empty 1-D array, got shape "
                             f"{array.shape}")
        arrays.append(array)
    mean, std = arrays
    if mean.shape != std.shape:
        raise ValueError(f"Standardizer mean and std differ in length: {mean.size} and "
                         f"{std.size}")
    for key, array in (("mean", mean), ("std", std)):
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            raise ValueError(f"Standardizer {key} of column {bad[0]} is not finite: "
                             f"{array[bad[0]]}")
    bad = np.flatnonzero(std <= 0)
    if bad.size:
        raise ValueError(f"Standardizer std of column {bad[0]} must be positive, got "
                         f"{std[bad[0]]}")
    return mean, std


class Standardizer:
    """Per-column affine scaling to zero mean and unit standard deviation.

    Columns with zero standard deviation are left unscaled (std set to 1), as in the UCI protocol.
    Works on NumPy arrays and torch tensors; outputs have the input's type.

    Parameters
    ----------
    mean, std : array (d,), optional
        Known scaling (both or neither): finite, ``std > 0``. Without them, call :meth:`fit`.

    Attributes
    ----------
    mean, std : ndarray of shape (d,)

    Raises
    ------
    ValueError
        ``mean`` or ``std`` not 1-D, of different lengths, not finite, or ``std <= 0``.

    Notes
    -----
    Magnitudes. :meth:`fit` divides each column by a power of two near its largest absolute
    value before it averages and squares (exact: only the exponent changes), so columns of any
    representable magnitude (1e-300 or 1e300 alike) get an accurate mean and standard
    deviation, with no overflow or underflow in the squares; for ordinary data the result is
    bit for bit NumPy's ``mean`` and ``std``. It raises a ``ValueError`` naming the column (its
    number, or its name when ``names`` is given) where a value is NaN or infinite, or where
    the standardized data or their way back to original units would not be finite: that
    happens only for values within a factor of about two of the float64 limit (1.8e308),
    whose distance from the mean overflows. :meth:`transform` raises the same way when new
    values are so far from the mean that their standardized value overflows.
    :meth:`inverse_transform` and :meth:`inverse_scale` do not check: results in original
    units beyond 1.8e308 come back infinite, for the caller to test.
    """

    def __init__(self, mean: ArrayLike | None = None, std: ArrayLike | None = None) -> None:
        if mean is None and std is None:
            self.mean: np.ndarray | None = None
            self.std: np.ndarray | None = None
        elif mean is None or std is None:
            raise ValueError("Standardizer needs both mean and std, or neither")
        else:
            self.mean, self.std = _scale_parameters(mean, std)

    @classmethod
    def identity(cls, dim: int) -> Standardizer:
        """A scaler that changes nothing."""
        return cls(np.zeros(dim), np.ones(dim))

    def fit(self, values: ArrayLike, names: Sequence[Any] | None = None) -> Standardizer:
        """Learn mean and std from ``values`` of shape (N, d) or (N,).

        Parameters
        ----------
        values : array (N, d) or (N,)
            Finite numbers, N >= 1.
        names : sequence of d labels, optional
            Column names for error messages (e.g. a data file's header): an error names the
            column by its name instead of its position in ``values``, which may differ from
            its place in the caller's data (integers are shown as column numbers).

        Returns
        -------
        Standardizer
            ``self``.

        Raises
        ------
        ValueError
            Wrong shape; or, naming the column, a value that is not finite, or standardized
            values that would overflow (see the class notes).
        """
        array = _as_float_array(values, "values")
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"cannot fit a Standardizer on shape {array.shape}")
        if names is not None:
            names = list(names)
            if len(names) != array.shape[1]:
                raise ValueError(f"names has {len(names)} entries for {array.shape[1]} columns")
        finite = np.isfinite(array)
        if not finite.all():
            row, column = (int(i[0]) for i in np.nonzero(~finite))
            raise ValueError(f"cannot standardize {_column_label(column, names)}: the value in "
                             f"row {row} is {array[row, column]}, not a finite number")
        # x / 2**e is exact, lies in [-1, 1], and its squares cannot overflow.
        _, exponent = np.frexp(np.abs(array).max(axis=0))
        unit = np.ldexp(array, -exponent)
        mean = np.ldexp(unit.mean(axis=0), exponent)
        std = np.ldexp(unit.std(axis=0), exponent)
        std = np.where(std > 0, std, 1.0)
        with np.errstate(over="ignore", invalid="ignore"):
            standardized = (array - mean) / std
            overflow = ~(np.isfinite(standardized)
                         & np.isfinite(standardized * std + mean)).all(axis=0)
        if overflow.any():
            column = int(np.flatnonzero(overflow)[0])
            peak = np.abs(array[:, column]).max()
            raise ValueError(f"cannot standardize {_column_label(column, names)}: its values "
                             f"reach {peak:.3g} in magnitude, so close to the float64 limit "
                             f"({np.finfo(np.float64).max:.3g}) that standardizing them or "
                             "undoing it overflows; rescale the column")
        self.mean, self.std = mean, std
        return self

    def _params_like(self, values: Any) -> tuple[Any, Any]:
        if self.mean is None or self.std is None:
            raise RuntimeError("Standardizer is not fitted; call fit() first")
        if isinstance(values, torch.Tensor):
            return (torch.as_tensor(self.mean, dtype=values.dtype),
                    torch.as_tensor(self.std, dtype=values.dtype))
        return self.mean, self.std

    def transform(self, values: Any) -> Any:
        """(values - mean) / std, broadcasting over the last axis.

        Raises
        ------
        ValueError
            Naming the column, where a finite value gives a standardized value that is not
            finite (it lies beyond the float64 range in standard deviations from the mean).
        """
        mean, std = self._params_like(values)
        if isinstance(values, torch.Tensor):
            result = (values - mean) / std
            overflow = (torch.isfinite(values) & ~torch.isfinite(result)).cpu().numpy()
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                result = (values - mean) / std
            overflow = np.isfinite(values) & ~np.isfinite(result)
        if overflow.any():
            index = tuple(int(i) for i in np.argwhere(overflow)[0])
            column = index[-1] if self.mean.size > 1 else 0
            source = _as_float_array(values, "values")
            value = np.broadcast_to(source, overflow.shape)[index]
            raise ValueError(f"cannot standardize {_column_label(column, None)}: the value "
                             f"{value:.3g} lies too far from the mean {self.mean[column]:.3g} "
                             f"(std {self.std[column]:.3g}); its standardized value overflows")
        return result

    def inverse_transform(self, values: Any) -> Any:
        """values * std + mean: back to original units."""
        mean, std = self._params_like(values)
        return values * std + mean

    def inverse_scale(self, scales: Any) -> Any:
        """Standard deviations back to original units: scales * std."""
        _, std = self._params_like(scales)
        return scales * std

    def to_dict(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}``, for :meth:`from_dict`."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Standardizer:
        """The scaler stored by :meth:`to_dict`.

        Raises
        ------
        ValueError
            ``state`` lacks ``mean`` or ``std``, or they are invalid (see the class).
        """
        if not isinstance(state, Mapping) or "mean" not in state or "std" not in state:
            raise ValueError("a Standardizer state needs the keys 'mean' and 'std'")
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
