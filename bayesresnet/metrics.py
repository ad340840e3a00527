"""Accuracy and calibration metrics of a :class:`~bayesresnet.posterior.Prediction`.

All metrics take observations in original units, shape (N,) or (N, out_dim), and average over
points (and outputs where a metric is per output). NLL follows the UCI benchmark tables: the
negative log of the mean predictive density over posterior draws, averaged over test points.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .posterior import Prediction, as_float_tensor

__all__ = ["calibration_curve", "coverage", "crps", "interval_width", "nll", "rmse"]


def _targets(pred: Prediction, y: Any) -> np.ndarray:
    if not isinstance(pred, Prediction):
        raise ValueError(f"pred must be a Prediction, got {type(pred).__name__}")
    array = as_float_tensor(y, "y").numpy()
    if array.ndim == 1:
        array = array[:, None]
    if array.shape != pred.mean.shape:
        raise ValueError(f"y must have shape {pred.mean.shape} (or (N,) for one output), "
                         f"got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("y contains NaN or inf values")
    return array


def rmse(pred: Prediction, y: Any) -> float:
    """Root mean squared error of the predictive mean."""
    return float(np.sqrt(np.mean((pred.mean - _targets(pred, y)) ** 2)))


def nll(pred: Prediction, y: Any) -> float:
    """Mean negative log predictive density, -1/N sum_i log (1/M) sum_m p(y_i | theta_m)."""
    _targets(pred, y)
    return float(-np.mean(pred.log_density(y)))


def coverage(pred: Prediction, y: Any, level: float = 0.95) -> float:
    """Fraction of observations inside the central ``level`` predictive interval."""
    y = _targets(pred, y)
    lower, upper = pred.interval(level)
    return float(np.mean((y >= lower) & (y <= upper)))


def interval_width(pred: Prediction, level: float = 0.95) -> float:
    """Mean width of the central ``level`` predictive interval."""
    lower, upper = pred.interval(level)
    return float(np.mean(upper - lower))


def crps(pred: Prediction, y: Any) -> float:
    """Mean continuous ranked probability score of the predictive samples (lower is better)."""
    import scoringrules

    y = _targets(pred, y)
    # scoringrules wants the ensemble on the last axis: (N, out_dim, M).
    ensemble = np.moveaxis(pred.samples, 0, -1)
    return float(np.mean(scoringrules.crps_ensemble(y, ensemble)))


def calibration_curve(pred: Prediction, y: Any, levels: Any = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Observed coverage of central intervals against their nominal level.

    Parameters
    ----------
    levels : sequence of float in (0, 1), optional
        Nominal levels (default 0.05, 0.10, ..., 0.95).

    Returns
    -------
    nominal, observed : ndarrays of shape (len(levels),)
    """
    y = _targets(pred, y)
    nominal = np.arange(0.05, 0.96, 0.05) if levels is None else np.asarray(levels, dtype=float)
    if nominal.ndim != 1 or nominal.size == 0 or ((nominal <= 0) | (nominal >= 1)).any():
        raise ValueError("levels must be a non-empty 1-D sequence of values in (0, 1)")
    observed = []
    for level in nominal:
        lower, upper = pred.interval(float(level))
        observed.append(np.mean((y >= lower) & (y <= upper)))
    return nominal, np.asarray(observed)
