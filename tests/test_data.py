import numpy as np
import pytest
import torch

from bayesresnet import data


def test_standardizer_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, size=(50, 3))
    x[:, 2] = 7.0  # constant column keeps std 1
    scaler = data.Standardizer().fit(x)
    z = scaler.transform(x)
    assert np.allclose(z[:, :2].mean(0), 0) and np.allclose(z[:, :2].std(0), 1)
    assert scaler.std[2] == 1.0
    assert np.allclose(scaler.inverse_transform(z), x)
    t = scaler.transform(torch.as_tensor(x))
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), z)
    assert np.allclose(scaler.inverse_scale(np.ones(3)), scaler.std)
    again = data.Standardizer.from_dict(scaler.to_dict())
    assert np.allclose(again.transform(x), z)


def test_standardizer_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        data.Standardizer().transform(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        data.Standardizer().fit(np.zeros((0, 2)))


@pytest.mark.parametrize("make", [data.cubic, data.gap, data.sine])
def test_toys_shapes_types_and_seeds(make):
    x, y = make(30, seed=1)
    assert x.shape == (30, 1) and y.shape == (30,)
    assert x.dtype == np.float64 and y.dtype == np.float64
    x2, y2 = make(30, seed=1)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(y, make(30, seed=2)[1])
    with pytest.raises(ValueError, match="n must"):
        make(0)


def test_toy_distributions():
    x, y = data.cubic(20000, seed=0)
    assert x.min() >= -4 and x.max() <= 4
    resid = y - x[:, 0] ** 3
    assert abs(resid.std() - 3.0) < 0.05 and abs(resid.mean()) < 0.1
    x, y = data.gap(1000, seed=0)
    left = x[:, 0] < 0
    assert left.sum() == 500
    assert x[left].min() >= -1 and x[left].max() <= -0.7
    assert x[~left].min() >= 0.5 and x[~left].max() <= 1
    assert abs((y - np.cos(4 * x[:, 0] + 0.8)).std() - 0.1) < 0.01
