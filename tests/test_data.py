import re
import warnings

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

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


# ----------------------------------------------------------------- Standardizer: magnitudes
@pytest.mark.parametrize("factor", [1e200, 1e299, 1e-300])
def test_standardizer_fits_huge_and_tiny_columns_without_overflow(factor):
    x, y = data.cubic(20, seed=0)
    values = np.column_stack([x[:, 0] * factor, y])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning either
        scaler = data.Standardizer().fit(values)
        z = scaler.transform(values)
    np.testing.assert_allclose(scaler.std, [x.std() * factor, y.std()], rtol=1e-12)
    np.testing.assert_allclose(scaler.mean, [x.mean() * factor, y.mean()], rtol=1e-12)
    np.testing.assert_allclose(z, data.Standardizer().fit(np.column_stack([x, y])).transform(
        np.column_stack([x, y])), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scaler.inverse_transform(z), values, rtol=1e-12)


def test_standardizer_ordinary_data_unchanged_bit_for_bit():
    values = np.random.default_rng(3).normal(5.0, 2.0, size=(40, 3))
    scaler = data.Standardizer().fit(values)
    np.testing.assert_array_equal(scaler.mean, values.mean(axis=0))
    np.testing.assert_array_equal(scaler.std, values.std(axis=0))


def test_fit_on_huge_targets_and_inputs_no_longer_overflows_silently():
    """Issue 20.2: y * 1e200 gave inf/NaN means, x * 1e299 was silently ignored."""
    import bayesresnet as brn

    x, y = brn.data.cubic(20, seed=0)
    method = brn.MeanField(steps=30, num_draws=20)
    posts = []
    for x_factor, y_factor in ((1e299, 1.0), (1.0, 1e200)):
        xs, ys = x * x_factor, y * y_factor
        model = brn.BayesianResNet(brn.ResNet(in_dim=1, out_dim=1, width=4, depth=3,
                                              basis=brn.Linear()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = brn.fit(model, xs, ys, method=method, seed=0, progress=False, check=False)
        np.testing.assert_allclose(post.x_scaler.std, x.std() * x_factor, rtol=1e-12)
        np.testing.assert_allclose(post.y_scaler.std, y.std() * y_factor, rtol=1e-12)
        posts.append(post)
    mean = posts[0].predict(x * 1e299).mean
    assert np.isfinite(mean).all() and np.ptp(mean) > 0  # the inputs are not ignored
    # Samples of 1e200 in original units: finite means, or Posterior.predict's own error
    # (its spread is computed in original units, where the squares overflow).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = posts[1].predict(x).mean
    except ValueError as err:
        assert "finite" in str(err)
    else:
        assert np.isfinite(mean).all() and np.ptp(mean) > 0


def test_standardizer_names_the_column_it_cannot_scale():
    limit = np.finfo(np.float64).max
    values = np.zeros((3, 2))
    values[:, 1] = [limit, -limit, limit]  # finite, but x - mean overflows
    with pytest.raises(ValueError, match=r"column 'b'.*float64 limit"):
        data.Standardizer().fit(values, names=["a", "b"])
    with pytest.raises(ValueError, match=r"column 1\b"):
        data.Standardizer().fit(values)
    with pytest.raises(ValueError, match=r"column 7\b"):  # a headerless file's numbers
        data.Standardizer().fit(values, names=[3, 7])
    values[:, 1] = [1.0, np.nan, 2.0]
    with pytest.raises(ValueError, match=r"column 'b': the value in row 1 is nan"):
        data.Standardizer().fit(values, names=["a", "b"])
    values[:, 1] = 1.0
    values[2, 0] = -np.inf
    with pytest.raises(ValueError, match=r"column 0: the value in row 2 is -inf"):
        data.Standardizer().fit(values)
    with pytest.raises(ValueError, match="names has 1 entries for 2 columns"):
        data.Standardizer().fit(np.ones((2, 2)), names=["a"])


def test_standardizer_transform_raises_where_the_result_overflows():
    scaler = data.Standardizer(np.array([0.0, 1.0]), np.array([1.0, 1e-10]))
    with pytest.raises(ValueError, match=r"column 1.*overflows"):
        scaler.transform(np.array([[0.0, 1e300]]))
    with pytest.raises(ValueError, match=r"column 1.*overflows"):
        scaler.transform(torch.tensor([[0.0, 1e300]], dtype=torch.float64))
    # Values that are already NaN or inf pass through (callers check their inputs).
    assert np.isnan(scaler.transform(np.array([[np.nan, 0.0]]))[0, 0])


@pytest.mark.parametrize("mean, std, message", [
    ([0.0, 1.0], [1.0], "differ in length"),
    ([[0.0]], [[1.0]], "1-D"),
    ([], [], "non-empty"),
    ([np.inf], [1.0], "mean of column 0 is not finite"),
    ([0.0, 0.0], [1.0, np.nan], "std of column 1 is not finite"),
    ([0.0], [0.0], "std of column 0 must be positive"),
    ([0.0], [-2.0], "must be positive"),
    (["a"], [1.0], "must be numbers"),
    ([0.0], None, "both mean and std"),
])
def test_standardizer_validates_mean_and_std(mean, std, message):
    with pytest.raises(ValueError, match=message):
        data.Standardizer(mean, std)
    if std is not None:
        with pytest.raises(ValueError, match=message):
            data.Standardizer.from_dict({"mean": mean, "std": std})


def test_standardizer_from_dict_needs_both_keys():
    with pytest.raises(ValueError, match="'mean' and 'std'"):
        data.Standardizer.from_dict({"mean": [0.0]})


_magnitudes = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.builds(lambda m, e: m * 10.0 ** e, st.floats(-9.99, 9.99),
              st.sampled_from([-320, -300, -150, 0, 150, 290, 300, 307])),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 3)),
                         elements=_magnitudes))
def test_standardizer_property_round_trip_or_named_error(values):
    names = [f"c{j}" for j in range(values.shape[1])]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            scaler = data.Standardizer().fit(values, names=names)
            z = scaler.transform(values)
            back = scaler.inverse_transform(z)
    except ValueError as err:
        assert re.search(r"column 'c\d+'", str(err)), err
        return
    assert np.isfinite(scaler.mean).all() and np.isfinite(scaler.std).all()
    assert (scaler.std > 0).all()
    assert np.isfinite(z).all() and np.isfinite(back).all()
    peak = np.abs(values).max(axis=0)
    assert (np.abs(back - values) <= 1e-12 * peak + 1e-300).all()
    again = data.Standardizer.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.transform(values), z)
