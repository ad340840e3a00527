"""Reliability (issue 20): isolation of concurrent fits, seed ranges, input and setting checks,
and property-based checks that ``fit`` and ``predict`` either succeed with finite results or
raise ``ValueError``. Tiny networks and few steps throughout."""

import math
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyro
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bayesresnet as brn
from bayesresnet.data import Standardizer
from bayesresnet.inference.base import SEED_MAX, InferenceMethod, MethodResult, check_seed
from bayesresnet.inference.executor import derived_seed
from bayesresnet.posterior import Posterior, Prediction

pytestmark = pytest.mark.timeout(120)


def _model():
    return brn.BayesianResNet(brn.ResNet(in_dim=1, out_dim=1, width=4, depth=3,
                                         basis=brn.Linear()))


@pytest.fixture(scope="module")
def toy():
    x, y = brn.data.cubic(20, seed=0)
    return _model(), x, y


@pytest.fixture(scope="module")
def map_post(toy):
    model, x, y = toy
    return brn.fit(model, x, y, method=brn.MAP(steps=20), seed=0, progress=False, check=False)


@pytest.fixture(scope="module")
def vi_post(toy):
    model, x, y = toy
    return brn.fit(model, x, y, method=brn.MeanField(steps=20, num_draws=8), seed=0,
                   progress=False, check=False)


def _fit(model, x, y, method, seed):
    return brn.fit(model, x, y, method=method, seed=seed, progress=False, check=False)


def _assert_same_draws(a, b):
    assert a.draws.keys() == b.draws.keys()
    for site in a.draws:
        assert torch.equal(a.draws[site], b.draws[site]), site


# ------------------------------------------------------------------------------ concurrency
def test_concurrent_fits_leave_the_users_param_store_alone(toy):
    # The reproducer: the fit that ended last restored the other's (empty) scope.
    model, x, y = toy
    pyro.param("user_param", torch.tensor(3.0))
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(_fit, model, x, y, brn.MAP(steps=200), 0)
        time.sleep(0.05)
        b = pool.submit(_fit, model, x, y, brn.MAP(steps=800), 0)
        a.result(timeout=60), b.result(timeout=60)
    assert list(pyro.get_param_store().keys()) == ["user_param"]
    assert pyro.param("user_param").item() == 3.0


# (method, seed): a Pyro SVI fit, a Pyro NUTS fit and flat fits, each tiny.
CONCURRENT = [
    (lambda: brn.MeanField(steps=40, num_draws=5, backend="pyro"), 0),
    (lambda: brn.MeanField(steps=40, num_draws=5, backend="pyro"), 1),
    (lambda: brn.MAP(steps=150), 2),
    (lambda: brn.NUTS(num_samples=4, num_warmup=4, chains=2, init_steps=10, max_tree_depth=3,
                      backend="pyro"), 3),
    (lambda: brn.LowRank(rank=2, steps=40, num_draws=5, backend="pyro"), 4),
    (lambda: brn.MeanField(steps=40, num_draws=5), 5),
]


def test_concurrent_fits_equal_their_sequential_results(toy):
    model, x, y = toy
    pyro.param("user_param", torch.tensor(1.0))
    rng = torch.random.get_rng_state()
    sequential = [_fit(model, x, y, make(), seed) for make, seed in CONCURRENT]
    for _ in range(2):
        with ThreadPoolExecutor(len(CONCURRENT)) as pool:
            futures = [pool.submit(_fit, model, x, y, make(), seed) for make, seed in CONCURRENT]
            concurrent = [future.result(timeout=120) for future in futures]
        for seq, con in zip(sequential, concurrent, strict=True):
            _assert_same_draws(seq, con)
    assert list(pyro.get_param_store().keys()) == ["user_param"]
    assert torch.equal(torch.random.get_rng_state(), rng)


class _StoreUser(InferenceMethod):
    """A method of "another package": it uses Pyro's param store and says nothing about
    thread safety, so fit runs it under the global state lock with a private store."""

    kind = "optimization"

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.seen: list[str] = []

    def run(self, model, x, y, seed, progress):
        self.seen = list(pyro.get_param_store().keys())
        pyro.param("w", torch.tensor(float(seed)))
        time.sleep(self.pause)
        assert pyro.param("w").item() == float(seed)
        values = model.initial_values(torch.Generator().manual_seed(seed))
        return MethodResult({k: v[None, None] for k, v in values.items()})


_StoreUser.name = "store-user (test)"  # set after class creation: not registered


def test_methods_that_do_not_declare_thread_safety_run_isolated(toy):
    model, x, y = toy
    pyro.param("user_param", torch.tensor(2.0))
    # The second starts while the first runs and would end after it.
    methods = [_StoreUser(0.2), _StoreUser(0.4)]
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_fit, model, x, y, methods[0], 0)
        time.sleep(0.05)
        second = pool.submit(_fit, model, x, y, methods[1], 1)
        first.result(timeout=60), second.result(timeout=60)
    assert [method.seen for method in methods] == [[], []]
    assert list(pyro.get_param_store().keys()) == ["user_param"]


def test_vectorized_fits_do_not_use_the_global_torch_rng(toy):
    # Another thread drawing from the global RNG all along changes nothing: the flat and
    # vectorized methods draw from their own seeded generators.
    model, x, y = toy
    methods = [brn.MAP(steps=60), brn.Ensemble(members=2, steps=40),
               brn.MeanField(steps=40, num_draws=5), brn.LowRank(rank=2, steps=30, num_draws=5),
               brn.NUTS(num_samples=4, num_warmup=4, chains=2, init_steps=10, max_tree_depth=3)]
    reference = [_fit(model, x, y, method, 7) for method in methods]
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            torch.manual_seed(int(time.perf_counter_ns() % 1000))
            torch.randn(64)

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        again = [_fit(model, x, y, method, 7) for method in methods]
    finally:
        stop.set()
        churner.join(timeout=10)
    for ref, new in zip(reference, again, strict=True):
        _assert_same_draws(ref, new)


def test_fits_leave_torch_defaults_alone(toy):
    model, x, y = toy
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    for make, seed in CONCURRENT:
        _fit(model, x, y, make(), seed)
    assert torch.get_default_dtype() == dtype and torch.get_num_threads() == threads


# ------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("seed", [2**64 - 1, 2**64, SEED_MAX + 1, -1, 1.5, True, "3", None])
def test_fit_rejects_seeds_outside_the_range(toy, seed):
    model, x, y = toy
    if seed is None:  # None is accepted: a fresh seed, in range
        post = _fit(model, x, y, brn.MAP(steps=2), None)
        assert 0 <= post.seed <= SEED_MAX
        return
    with pytest.raises(ValueError, match="seed"):
        _fit(model, x, y, brn.MAP(steps=2), seed)


@pytest.mark.parametrize("make", [
    lambda: brn.MAP(steps=3),
    lambda: brn.Ensemble(members=2, steps=3, anchored=True),
    lambda: brn.MeanField(steps=3, num_draws=3),
    lambda: brn.MeanField(steps=3, num_draws=3, backend="pyro"),
    lambda: brn.NUTS(num_samples=2, num_warmup=2, chains=2, init="prior", max_tree_depth=2),
    lambda: brn.NUTS(num_samples=2, num_warmup=2, chains=1, init_steps=2, max_tree_depth=2,
                     backend="pyro"),
])
def test_the_largest_seed_works_end_to_end(toy, make):
    model, x, y = toy
    post = _fit(model, x, y, make(), SEED_MAX)
    assert post.seed == SEED_MAX
    pred = post.predict(np.linspace(-2, 2, 3), num_draws=min(2, post.num_draws))
    assert np.isfinite(pred.samples).all()
    post.predict(np.linspace(-2, 2, 3), seed=SEED_MAX)
    post.flat_draws(1, seed=SEED_MAX)


def test_check_seed_and_derived_seeds():
    assert check_seed(np.int64(5)) == 5 and type(check_seed(np.uint64(5))) is int
    assert check_seed(SEED_MAX) == SEED_MAX
    for bad in (SEED_MAX + 1, -3, 2.0, np.float64(2.0), np.bool_(True), "1"):
        with pytest.raises(ValueError, match=r"myseed must be an integer in \[0, 2\*\*63 - 1\]"):
            check_seed(bad, "myseed")
    for seed in (0, SEED_MAX):
        torch.Generator().manual_seed(derived_seed(seed, 3, 2**40))
        torch.Generator().manual_seed(seed + 1)


def test_lower_level_entry_points_check_seeds(toy):
    from bayesresnet.inference.flat_vi import fit_flat_gaussian
    from bayesresnet.inference.nuts import initial_positions, sample_pyro

    model, x, y = toy
    x_t, y_t = torch.as_tensor(x), torch.as_tensor(y).unsqueeze(-1)
    z = torch.zeros(1, model.dim, dtype=torch.float64)
    calls = [
        lambda s: brn.MAP(steps=2).run(model, x_t, y_t, s, False),
        lambda s: brn.Ensemble(members=2, steps=2).plan(model, x_t, y_t, s),
        lambda s: brn.MeanField(steps=2, num_draws=2).run(model, x_t, y_t, s, False),
        lambda s: brn.NUTS(num_samples=2, num_warmup=2, chains=1).plan(model, x_t, y_t, s),
        lambda s: initial_positions(model, x_t, y_t, 1, s, init="network"),
        lambda s: sample_pyro(lambda v: -(v**2).sum(), z, 1, 1, s),
        lambda s: fit_flat_gaussian(lambda v: -(v**2).sum(-1), z[0], rank=None, init_scale=0.1,
                                    steps=1, lr=0.1, num_particles=1, num_draws=1, seed=s,
                                    clip=10.0, final_lr_fraction=0.1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="seed must be an integer"):
            call(2**64)


@pytest.mark.parametrize("seed", [2**64 - 1, 2**64, -1, 1.7, True, np.float64(3.0)])
def test_predict_and_flat_draws_reject_bad_seeds(map_post, vi_post, seed):
    with pytest.raises(ValueError, match="seed"):
        map_post.predict(np.zeros(2), seed=seed)
    with pytest.raises(ValueError, match="seed"):
        vi_post.flat_draws(3, seed=seed)
    with pytest.raises(ValueError, match="seed"):
        vi_post.predict(np.zeros(2), num_draws=3, seed=seed)


def test_predict_rejects_a_posterior_seed_out_of_range(map_post):
    # E.g. a file written before seeds were checked.
    post = Posterior(model=map_post.model, draws=map_post.draws, stats={},
                     method=map_post.method, x_scaler=map_post.x_scaler,
                     y_scaler=map_post.y_scaler, seed=2**64 - 1, fit_seconds=0.0,
                     x_train=map_post.x_train, y_train=map_post.y_train)
    with pytest.raises(ValueError, match=r"Posterior\.seed"):
        post.predict(np.zeros(2))
    assert np.isfinite(post.predict(np.zeros(2), seed=4).samples).all()
    assert post.flat_draws().keys() == post.draws.keys()  # the seed is not used here


def test_integer_seed_types_are_accepted(map_post):
    a = map_post.predict(np.zeros(3), seed=np.int64(9))
    b = map_post.predict(np.zeros(3), seed=9)
    assert np.array_equal(a.samples, b.samples)


# ------------------------------------------------------------------------------ small checks
def test_masked_arrays_are_rejected(toy, map_post):
    model, x, y = toy
    mask = np.zeros(x.shape, dtype=bool)
    mask[3] = True
    with pytest.raises(ValueError, match="x is a masked array"):
        _fit(model, np.ma.masked_array(x, mask), y, brn.MAP(steps=2), 0)
    with pytest.raises(ValueError, match="y is a masked array"):
        _fit(model, x, np.ma.masked_array(y, mask[:, 0]), brn.MAP(steps=2), 0)
    with pytest.raises(ValueError, match="x is a masked array"):
        map_post.predict(np.ma.masked_array(x, mask))
    # Nothing masked: the values are used as they are.
    unmasked = map_post.predict(np.ma.masked_array(x, np.zeros_like(mask)))
    assert np.array_equal(unmasked.mean, map_post.predict(x).mean)


def test_meta_tensors_are_rejected_and_sparse_ones_made_dense(map_post):
    with pytest.raises(ValueError, match="x is a tensor on the 'meta' device"):
        map_post.predict(torch.empty(3, 1, device="meta"))
    dense = torch.tensor([[0.0], [1.5]], dtype=torch.float64)
    assert np.array_equal(map_post.predict(dense.to_sparse()).mean, map_post.predict(dense).mean)


def test_predict_warns_when_fewer_draws_exist(map_post, vi_post):
    with pytest.warns(UserWarning, match="1000 draws were asked for but the posterior has 1"):
        pred = map_post.predict(np.zeros(2), num_draws=1000)
    assert pred.num_draws == 1
    with pytest.warns(UserWarning, match="has 8"):
        vi_post.predict(np.zeros(2), num_draws=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vi_post.predict(np.zeros(2), num_draws=8).num_draws == 8
        assert vi_post.predict(np.zeros(2), num_draws=np.int64(3)).num_draws == 3


@pytest.mark.parametrize("num_draws", [1.5, 0, -2, True, "3", np.float64(2.0)])
def test_bad_num_draws_raise_clear_errors(map_post, vi_post, num_draws):
    for post in (map_post, vi_post):
        with pytest.raises(ValueError, match="num_draws must be a positive integer"):
            post.predict(np.zeros(2), num_draws=num_draws)
        with pytest.raises(ValueError, match="num_draws must be a positive integer"):
            post.flat_draws(num_draws)


def test_interval_and_quantile_accept_numpy_levels():
    loc = torch.tensor([[[0.0], [1.0]]], dtype=torch.float64)
    pred = Prediction(loc, torch.ones_like(loc), torch.Generator().manual_seed(0))
    lo, hi = pred.interval(np.float32(0.9))
    lo64, hi64 = pred.interval(float(np.float32(0.9)))
    assert np.array_equal(lo, lo64) and np.array_equal(hi, hi64)
    assert np.allclose(hi - lo, 2 * 1.6448536, atol=1e-6)
    assert np.allclose(pred.quantile(np.float32(0.5)), loc[0].numpy())
    assert np.allclose(pred.quantile(np.float64(0.5)), pred.quantile(0.5))
    for bad in (True, np.bool_(True), math.nan, np.float32("nan"), 0, 1, 1.5, "0.9", None):
        with pytest.raises(ValueError, match="level"):
            pred.interval(bad)
        with pytest.raises(ValueError, match="q must be"):
            pred.quantile(bad)


@pytest.mark.parametrize("make, setting, value", [
    (lambda: brn.Ensemble(members=2, steps=2), "members", 0),
    (lambda: brn.MAP(steps=2), "lr", -1.0),
    (lambda: brn.MeanField(steps=2, num_draws=2), "num_draws", 0),
    (lambda: brn.LowRank(steps=2, num_draws=2), "rank", 0),
    (lambda: brn.MeanField(steps=2, num_draws=2), "backend", "jax"),
    (lambda: brn.NUTS(num_samples=2, num_warmup=2, chains=1), "chains", 0),
    (lambda: brn.NUTS(num_samples=2, num_warmup=2, chains=1), "target_accept", 1.0),
])
def test_settings_changed_after_construction_are_checked_at_fit(toy, make, setting, value):
    model, x, y = toy
    method = make()
    setattr(method, setting, value)
    with pytest.raises(ValueError, match=setting):
        _fit(model, x, y, method, 0)


def test_predict_raises_when_the_scaling_overflows(map_post):
    # Near the float64 limit: the predictive mean at x = 3 (about +1.5 in standardized units on
    # the cubic toy) is 1.7e308 + 1.5e308, which overflows.
    huge = Posterior(model=map_post.model, draws=map_post.draws, stats={},
                     method=map_post.method, x_scaler=map_post.x_scaler,
                     y_scaler=Standardizer(np.full(1, 1.7e308), np.full(1, 1e308)), seed=0,
                     fit_seconds=0.0, x_train=map_post.x_train, y_train=map_post.y_train)
    with pytest.raises(ValueError, match="overflow"):
        huge.predict(np.linspace(-3, 3, 5))


def test_intervals_of_overflowing_scales_raise():
    loc = torch.zeros(2, 3, 1, dtype=torch.float64)
    with np.errstate(over="ignore"):
        pred = Prediction(loc, torch.full_like(loc, 1e308), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not finite"):
        pred.interval(0.9)
    with pytest.raises(ValueError, match="not finite"):
        pred.quantile(0.9)


# ------------------------------------------------------------------------------ properties
# Bounded in time: few examples, no per-example deadline (the machine is shared), no shrinking
# beyond what the examples need.
PROPERTY = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

_SPECIAL = st.sampled_from([0.0, -0.0, 5e-324, 1.7e308, -1.7e308, math.nan, math.inf,
                            -math.inf])
_DTYPES = st.sampled_from([np.float64] * 6 + [np.float32, np.float16, np.int64, np.int8,
                                              np.uint8, np.bool_])


@st.composite
def _arrays(draw, rows):
    """Arrays of ``rows`` rows, mostly shaped (rows,) or (rows, 1) (now and then a wrong
    shape), of ordinary values at a magnitude between 1e-300 and 1e300, with NaN, inf and
    extremes at random places now and then, in assorted dtypes, as arrays or tensors."""
    shape = draw(st.sampled_from([(rows,), (rows, 1)] * 10 + [(rows, 2), (rows, 1, 1), ()]))
    magnitude = 10.0 ** draw(st.sampled_from([0, 0, 0, 3, 150, 300, 305, -300]))
    values = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1, 1))) * magnitude
    extremes = draw(hnp.arrays(np.float64, shape, elements=_SPECIAL))
    share = draw(st.sampled_from([0.0] * 8 + [0.2, 0.5]))
    picks = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1))) < share
    values = np.where(picks, extremes, values)
    dtype = draw(_DTYPES)
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(dtype) if dtype is not np.bool_ else values > 0
    return torch.as_tensor(array) if draw(st.booleans()) and dtype is not np.uint8 else array


def _finite_prediction(pred):
    lo, hi = pred.interval(0.9)
    for values in (pred.mean, pred.std, pred.samples, pred.epistemic_std, pred.aleatoric_std,
                   lo, hi):
        assert np.isfinite(values).all()


@PROPERTY
@given(data=st.data(), rows=st.sampled_from([0] + [1, 2, 3, 5] * 3))
def test_fit_and_predict_succeed_with_finite_results_or_raise_value_error(toy, data, rows):
    model, _, _ = toy
    x, y = data.draw(_arrays(rows)), data.draw(_arrays(rows))
    standardize = data.draw(st.booleans())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = brn.fit(model, x, y, method=brn.MAP(steps=3), seed=0,
                           standardize=standardize, progress=False, check=False)
    except ValueError:
        event("fit: ValueError")
        return
    x_new = data.draw(_arrays(data.draw(st.integers(0, 3))))
    try:
        pred = post.predict(x_new)
    except ValueError:
        event("predict: ValueError")
        return
    event("predicted")
    _finite_prediction(pred)


@PROPERTY
@given(x_new=st.integers(0, 5).flatmap(_arrays), num_draws=st.integers(1, 12))
def test_predict_on_generated_inputs(vi_post, x_new, num_draws):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = vi_post.predict(x_new, num_draws=num_draws)
    except ValueError:
        event("predict: ValueError")
        return
    event("predicted")
    _finite_prediction(pred)
