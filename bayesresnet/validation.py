"""Checks of what users pass in: arrays of numbers, inputs, targets, and posteriors.

The lowest layer of the package: it imports no other bayesresnet module, so every module that
takes user data (the posterior, the ArviZ conversion, the file format, the metrics) can use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["POSTERIOR_ATTRIBUTES", "as_float_tensor", "as_numpy", "check_inputs", "check_posterior",
           "check_targets", "column_names"]

POSTERIOR_ATTRIBUTES = ("model", "draws", "stats", "method", "x_scaler", "y_scaler", "seed",
                        "fit_seconds", "x_train", "y_train", "extra", "feature_names",
                        "target_names", "num_chains", "num_draws", "evaluate", "fit_dtype",
                        "fit_device")
"""What the modules below :mod:`bayesresnet.posterior` (conversion, file format, diagnostics)
use of a :class:`~bayesresnet.Posterior`; they take any object that has it, so that they need
not import the class."""


def as_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """A NumPy array of a tensor (detached, on the CPU) or of anything ``np.asarray`` takes.

    ``dtype`` converts the result (e.g. ``np.float64``); None keeps the value's own dtype.
    """
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def as_float_tensor(values: Any, name: str) -> Tensor:
    """A float64 CPU tensor from a NumPy array, tensor or nested list, with clear errors.

    Masked arrays with masked entries and tensors without data (the ``meta`` device) raise a
    ValueError naming ``name``; sparse tensors are made dense.
    """
    if isinstance(values, Tensor):
        if values.device.type == "meta":
            raise ValueError(f"{name} is a tensor on the 'meta' device, which holds no values")
        if values.is_complex() or not (values.is_floating_point() or values.dtype in (
                torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)):
            raise ValueError(f"{name} must be real numbers, got dtype {values.dtype}")
        if values.layout != torch.strided:
            values = values.to_dense()
        return values.detach().to(device="cpu", dtype=torch.float64)
    if isinstance(values, np.ma.MaskedArray):
        masked = int(np.ma.getmaskarray(values).sum())
        if masked:
            raise ValueError(f"{name} is a masked array with {masked} masked "
                             f"entr{'y' if masked == 1 else 'ies'}; drop those rows or fill "
                             f"them (e.g. with {name}.filled(value)) first")
        values = values.data
    array = np.asarray(values)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return torch.as_tensor(array.astype(np.float64))


def check_inputs(x: Any, in_dim: int, name: str = "x") -> Tensor:
    """Validate inputs: 2-D (or 1-D when in_dim == 1), at least one row, finite, in_dim columns."""
    x = as_float_tensor(x, name)
    if x.dim() == 1 and in_dim == 1:
        x = x.unsqueeze(-1)
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, {in_dim}), got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is empty: it needs at least one row")
    if x.shape[1] != in_dim:
        raise ValueError(f"{name} has {x.shape[1]} features but the model expects {in_dim}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def check_targets(y: Any, n: int, out_dim: int, name: str = "y") -> Tensor:
    """Validate targets for ``n`` inputs: (n,) or (n, out_dim), finite; returns (n, out_dim)."""
    y = as_float_tensor(y, name)
    if y.dim() == 1:
        y = y.unsqueeze(-1)
    if y.dim() != 2 or y.shape[1] != out_dim:
        raise ValueError(f"{name} must have shape (N,) or (N, {out_dim}) for a model with "
                         f"{out_dim} output(s), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"the inputs and {name} have different numbers of rows: {n} and "
                         f"{y.shape[0]}")
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return y


def column_names(values: Any) -> list[str] | None:
    """Column names of a pandas ``DataFrame`` (or the name of a ``Series``), else None."""
    columns = getattr(values, "columns", None)
    if columns is not None and type(values).__name__ == "DataFrame":
        return [str(c) for c in columns]
    name = getattr(values, "name", None)
    if type(values).__name__ == "Series" and name is not None:
        return [str(name)]
    return None


def check_posterior(value: Any, name: str = "posterior") -> Any:
    """``value`` if it has what a :class:`~bayesresnet.Posterior` has, else a ValueError.

    The check is by attributes (:data:`POSTERIOR_ATTRIBUTES`), not by class, so the modules
    that a posterior's own methods call need not import :mod:`bayesresnet.posterior`.
    """
    missing = [attr for attr in POSTERIOR_ATTRIBUTES if not hasattr(value, attr)]
    if missing:
        raise ValueError(f"{name} is not a Posterior: got a {type(value).__name__}, which "
                         f"lacks {', '.join(missing)}")
    return value
