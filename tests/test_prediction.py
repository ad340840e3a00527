import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayesresnet import metrics
from bayesresnet.posterior import Prediction


def _prediction(loc, scale, seed=0):
    loc = torch.as_tensor(loc, dtype=torch.float64)
    scale = torch.as_tensor(scale, dtype=torch.float64).expand_as(loc)
    return Prediction(loc, scale, torch.Generator().manual_seed(seed))


def test_single_gaussian_closed_forms():
    loc = np.array([[[0.5], [-2.0], [3.0]]])          # one draw, 3 points, 1 output
    scale = np.array([[[1.0], [0.5], [2.0]]])
    pred = _prediction(loc, scale)
    y = np.array([0.0, -1.0, 7.0])
    lo, hi = pred.interval(0.9)
    z = stats.norm.ppf(0.95)
    assert np.allclose(lo[:, 0], loc[0, :, 0] - z * scale[0, :, 0], atol=1e-9)
    assert np.allclose(hi[:, 0], loc[0, :, 0] + z * scale[0, :, 0], atol=1e-9)
    expected_nll = -np.mean(stats.norm.logpdf(y, loc[0, :, 0], scale[0, :, 0]))
    assert math.isclose(metrics.nll(pred, y), expected_nll, rel_tol=1e-12)
    assert math.isclose(metrics.rmse(pred, y), np.sqrt(np.mean((y - loc[0, :, 0]) ** 2)))
    assert metrics.coverage(pred, y, 0.9) == pytest.approx(1 / 3)  # only y=0 is inside
    assert np.allclose(pred.epistemic_std, 0) and np.allclose(pred.aleatoric_std[:, 0],
                                                               scale[0, :, 0])


def test_mixture_moments_quantiles_and_nll():
    rng = np.random.default_rng(1)
    loc = rng.normal(size=(50, 4, 2))
    scale = rng.uniform(0.2, 1.5, size=(50, 4, 2))
    pred = _prediction(loc, scale)
    assert np.allclose(pred.mean, loc.mean(0))
    assert np.allclose(pred.epistemic_std, loc.std(0, ddof=1))
    assert np.allclose(pred.aleatoric_std, np.sqrt((scale**2).mean(0)))
    assert np.allclose(pred.std**2, pred.epistemic_std**2 + pred.aleatoric_std**2)
    lo, hi = pred.interval(0.8)
    cdf = lambda v: stats.norm.cdf((v - loc) / scale).mean(0)  # noqa: E731
    assert np.allclose(cdf(lo), 0.1, atol=1e-10) and np.allclose(cdf(hi), 0.9, atol=1e-10)
    y = rng.normal(size=(4, 2))
    dens = stats.norm.pdf(y, loc, scale).prod(-1).mean(0)
    assert np.allclose(pred.log_density(y), np.log(dens))


def test_crps_matches_gaussian_closed_form():
    # With many draws and the same Gaussian in each, crps of the samples ~ Gaussian CRPS.
    m = 4000
    loc = np.zeros((m, 3, 1))
    scale = np.ones((m, 3, 1))
    pred = _prediction(loc, scale, seed=3)
    y = np.array([0.0, 1.0, -2.0])
    z = y
    exact = np.mean(z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    # Monte Carlo error of the ensemble CRPS with m draws is O(1/sqrt(m)) ~ 0.016.
    assert abs(metrics.crps(pred, y) - exact) < 0.05


def test_calibration_curve_of_a_calibrated_prediction():
    rng = np.random.default_rng(2)
    loc = np.zeros((1, 20000, 1))
    pred = _prediction(loc, np.ones_like(loc))
    y = rng.normal(size=20000)
    nominal, observed = metrics.calibration_curve(pred, y)
    # Binomial standard error at n = 20000 is at most 0.0036; allow 4 of them.
    assert np.all(np.abs(nominal - observed) < 0.015)


def test_xarray_and_errors():
    pred = _prediction(np.zeros((5, 3, 2)), np.ones((5, 3, 2)))
    ds = pred.to_xarray()
    assert ds["obs"].dims == ("chain", "draw", "pred_id", "output")
    np.testing.assert_array_equal(ds["obs"].values[0], pred.samples)
    assert ds["mean"].shape == (3, 2)
    with pytest.raises(ValueError, match="shape"):
        metrics.rmse(pred, np.zeros(3))
    with pytest.raises(ValueError, match="level"):
        pred.interval(1.5)
    with pytest.raises(ValueError, match="NaN"):
        metrics.coverage(pred, np.full((3, 2), np.nan))


def test_repeated_intervals_are_equal_and_independent_of_caller_edits():
    pred = _prediction([[[0.0]], [[1.0]], [[3.0]]], [[[1.0]], [[0.5]], [[2.0]]])
    lo, hi = pred.interval(0.8)
    expected = (lo.copy(), hi.copy())
    lo[:] = 99.0  # a caller editing its arrays must not change later answers
    again = pred.interval(0.8)
    np.testing.assert_array_equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])
    assert not np.array_equal(pred.interval(0.5)[0], expected[0])
