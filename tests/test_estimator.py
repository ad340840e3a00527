"""BayesianResNetRegressor: the scikit-learn estimator around bayesresnet.fit."""

import importlib
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks

import bayesresnet as brn
from bayesresnet.estimator import EXPECTED_FAILED_CHECKS, BayesianResNetRegressor

# A cheap configuration: a tiny network and a short MAP fit (about 0.1 s a fit).
FAST = {"width": 4, "depth": 2, "method": "map", "method_params": {"steps": 100, "lr": 0.05}}
PARAMS = ["activation", "basis", "check", "depth", "device", "dtype", "horizon", "integrator",
          "likelihood", "method", "method_params", "prior", "prior_scale", "progress",
          "random_state", "rank", "standardize", "width"]


@pytest.fixture(scope="module")
def cubic():
    return brn.data.cubic(40, seed=0)


def fast(**changes):
    return BayesianResNetRegressor(**{**FAST, "random_state": 0, **changes})


# ---------------------------------------------------------------------- parameters


def test_init_only_stores_parameters():
    # No validation in __init__ (scikit-learn's convention): bad values fail in fit.
    est = BayesianResNetRegressor(width=-1, method="no-such-method", basis=object(),
                                  dtype="float16", device="gpu7")
    assert est.width == -1 and est.method == "no-such-method"
    assert (est.dtype, est.device) == ("float16", "gpu7")
    assert sorted(est.get_params()) == PARAMS
    assert not [k for k in vars(est) if k.endswith("_")]


def test_defaults():
    params = BayesianResNetRegressor().get_params()
    assert params == {"width": 16, "depth": 8, "basis": "linear", "activation": "tanh",
                      "horizon": 1.0, "integrator": "euler", "prior": "normal",
                      "prior_scale": 1.0, "likelihood": "gaussian", "method": "ensemble",
                      "method_params": None, "standardize": True, "random_state": None,
                      "progress": False, "check": False, "rank": None, "dtype": "float64",
                      "device": "cpu"}


def test_clone_and_set_params_roundtrip():
    est = BayesianResNetRegressor(width=5, basis=brn.Legendre(2), method=brn.Ensemble(members=3),
                                  random_state=4)
    copy = clone(est)
    assert copy is not est
    assert copy.get_params() == est.get_params()   # Basis and method objects compare by value
    assert copy.basis is not est.basis and copy.method is not est.method
    copy.set_params(width=7, method="map", method_params={"steps": 10})
    assert (copy.width, copy.method, copy.method_params) == (7, "map", {"steps": 10})
    assert est.width == 5
    assert "width=7" in repr(copy)


@pytest.mark.parametrize(("changes", "message"), [
    ({"width": 0}, "width must be a positive integer"),
    ({"width": 2.5}, "width must be a positive integer"),
    ({"depth": True}, "depth must be a positive integer"),
    ({"basis": "quintic"}, "unknown basis"),
    ({"activation": "sigmoid"}, "unknown activation"),
    ({"activation": ["tanh"]}, "activation must be a name"),
    ({"horizon": -1.0}, "horizon must be a positive"),
    ({"integrator": "rk45"}, "unknown integrator"),
    ({"prior": "laplace"}, "prior must be one of"),
    ({"prior_scale": 0.0}, "scale must be a positive"),
    ({"prior": brn.priors.Normal(2.0), "prior_scale": 0.5}, "prior_scale=0.5 applies to a prior"),
    ({"likelihood": "student"}, "likelihood must be one of"),
    ({"method": "sgd"}, "method must be one of"),
    ({"method": brn.MAP(steps=10), "method_params": {"steps": 5}}, "method_params configures"),
    ({"method_params": {"members": 2}}, r"settings \['members'\] that MAP does not take"),
    ({"method_params": [("steps", 5)]}, "method_params must be a dict"),
    ({"method_params": {"steps": 0}}, "steps must be a positive integer"),
    ({"random_state": -1}, "random_state must be in"),
    ({"random_state": "seed"}, "cannot be used to seed"),
    ({"standardize": "yes"}, "standardize must be True or False"),
    ({"dtype": "float16"}, "dtype must be 'float64' or 'float32' .* got 'float16'"),
    ({"dtype": torch.float16}, "dtype must be 'float64' or 'float32' .* got torch.float16"),
    ({"dtype": np.float32}, "dtype must be 'float64' or 'float32'"),
    ({"dtype": None}, "dtype must be 'float64' or 'float32'"),
    ({"device": "gpu7"}, "device 'gpu7' is not a device name torch understands"),
    ({"device": 0}, "device must be a string"),
])
def test_fit_validates_parameters(cubic, changes, message):
    with pytest.raises(ValueError, match=message):
        fast(**changes).fit(*cubic)


def test_numpy_scalars_from_a_grid_are_accepted(cubic):
    est = fast(width=np.int64(3), depth=np.int32(2), horizon=np.float32(2.0),
               prior_scale=np.float32(0.5)).fit(*cubic)
    net = est.model_.user_net
    assert (net.width, net.depth, net.horizon) == (3, 2, 2.0)
    assert est.model_.prior.scale == 0.5


# ---------------------------------------------------------------------- what fit builds


@pytest.mark.parametrize("dtype", ["float32", torch.float32])
def test_float32_fit_predicts_float64(cubic, dtype):
    est = fast(dtype=dtype).fit(*cubic)
    assert (est.posterior_.fit_dtype, est.posterior_.fit_device) == ("float32", "cpu")
    assert est.get_params()["dtype"] is dtype  # stored as given
    mean, std = est.predict(cubic[0], return_std=True)
    assert mean.dtype == np.float64 and std.dtype == np.float64
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    default = fast().fit(*cubic)
    assert default.posterior_.fit_dtype == "float64"
    assert not np.array_equal(mean, default.predict(cubic[0]))  # it did run in float32
    np.testing.assert_allclose(mean, default.predict(cubic[0]), atol=1e-2 * np.std(cubic[1]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_refused(cubic):
    with pytest.raises(ValueError, match="device 'cuda' was requested but no CUDA GPU"):
        fast(device="cuda").fit(*cubic)



def test_fit_is_bayesresnet_fit_with_these_settings(cubic):
    x, y = cubic
    est = BayesianResNetRegressor(width=5, depth=3, basis="cubic", activation="relu",
                                  horizon=2.0, prior_scale=0.5, method="ensemble",
                                  method_params={"members": 2, "steps": 60},
                                  random_state=7).fit(x, y)
    net = brn.ResNet(1, 1, width=5, depth=3, basis=brn.Cubic(), activation="relu", horizon=2.0)
    model = brn.BayesianResNet(net, prior=brn.priors.Normal(0.5),
                               likelihood=brn.likelihoods.Gaussian())
    post = brn.fit(model, x, y, method=brn.Ensemble(members=2, steps=60), seed=7,
                   progress=False, check=False)
    assert est.model_.config() == model.config()
    assert isinstance(est.posterior_, brn.Posterior)
    assert est.posterior_.method == brn.Ensemble(members=2, steps=60)
    assert est.posterior_.seed == 7
    assert (est.n_features_in_, est.n_outputs_) == (1, 1)
    np.testing.assert_array_equal(est.predict(x), post.predict(x).mean[:, 0])


def test_names_map_to_objects(cubic):
    est = fast(basis="legendre2", prior="hierarchical", prior_scale=0.7,
               likelihood="heteroscedastic", integrator="midpoint").fit(*cubic)
    assert est.model_.user_net.basis == brn.Legendre(2)
    assert est.model_.user_net.integrator == "midpoint"
    assert isinstance(est.model_.prior, brn.priors.Hierarchical)
    assert est.model_.prior.hyper_scale == 0.7
    assert est.model_.likelihood.heteroscedastic


@pytest.mark.parametrize("name, cls", [("random_walk", brn.priors.RandomWalk),
                                       ("decaying", brn.priors.Decaying),
                                       ("horseshoe", brn.priors.Horseshoe)])
def test_depth_prior_names_and_rank(cubic, name, cls):
    est = fast(basis="piecewise", depth=4, prior=name, prior_scale=0.5, rank=2).fit(*cubic)
    assert type(est.model_.prior) is cls
    assert est.model_.prior.scale == 0.5
    assert est.model_.user_net.rank == 2
    assert np.isfinite(est.predict(cubic[0])).all()


def test_objects_are_used_but_not_shared_or_changed(cubic):
    prior = brn.priors.Normal(0.3, site_scales={"W_coef": 0.1})
    likelihood = brn.likelihoods.Gaussian(noise=2.0)
    method = brn.MAP(steps=50, lr=0.05)
    basis = brn.Piecewise()
    est = fast(basis=basis, prior=prior, likelihood=likelihood, method=method,
               method_params=None).fit(*cubic)
    assert est.model_.prior.config() == prior.config() and est.model_.prior is not prior
    assert est.model_.likelihood.config() == likelihood.config()
    assert est.model_.likelihood is not likelihood
    assert est.posterior_.method == method and est.posterior_.method is not method
    assert est.model_.user_net.basis == basis
    assert "noise" not in est.posterior_.draws                # the fixed noise was used
    assert (est.method, est.prior, est.basis) == (method, prior, basis)


def test_set_params_changes_the_fit(cubic):
    x, y = cubic
    est = fast().fit(x, y)
    first = est.predict(x)
    assert est.posterior_.num_draws == 1
    est.set_params(width=3, method="ensemble", method_params={"members": 3, "steps": 40})
    est.fit(x, y)
    assert est.model_.user_net.width == 3
    assert est.posterior_.method == brn.Ensemble(members=3, steps=40)
    assert est.posterior_.num_chains * est.posterior_.num_draws == 3
    assert not np.allclose(est.predict(x), first)


def test_random_state(cubic):
    x, y = cubic
    ensemble = {"method": "ensemble", "method_params": {"members": 2, "steps": 30}}
    a = fast(random_state=3, **ensemble).fit(x, y).predict(x)
    b = fast(random_state=3, **ensemble).fit(x, y).predict(x)
    c = fast(random_state=4, **ensemble).fit(x, y).predict(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # A RandomState supplies the seed: equal states give equal fits, and it advances.
    state = np.random.RandomState(0)
    est = fast(random_state=state, **ensemble)
    d = est.fit(x, y).predict(x)
    seed_d = est.posterior_.seed
    e = est.fit(x, y).predict(x)
    assert est.posterior_.seed != seed_d and not np.allclose(d, e)
    f = fast(random_state=np.random.RandomState(0), **ensemble).fit(x, y).predict(x)
    np.testing.assert_array_equal(d, f)


def test_check_issues_convergence_warnings_only_when_asked(cubic):
    short = {"method": "ensemble", "method_params": {"members": 2, "steps": 20}}
    with pytest.warns(brn.ConvergenceWarning, match="still moves"):
        fast(check=True, **short).fit(*cubic)
    with warnings.catch_warnings():
        warnings.simplefilter("error", brn.ConvergenceWarning)
        fast(check=False, **short).fit(*cubic)


# ---------------------------------------------------------------------- predictions


def test_predictions_are_in_original_units(cubic):
    x, y = cubic
    mean, std = fast().fit(x, y).predict(x, return_std=True)
    # Standardization makes the fit invariant to affine changes of units of x and y.
    scaled = fast().fit(100.0 * x - 3.0, 1000.0 * y + 5.0)
    mean_s, std_s = scaled.predict(100.0 * x - 3.0, return_std=True)
    np.testing.assert_allclose(mean_s, 1000.0 * mean + 5.0, rtol=1e-6)
    np.testing.assert_allclose(std_s, 1000.0 * std, rtol=1e-6)
    assert r2_score(y, mean) > 0.8                             # a fit, not a constant


def test_return_std_is_the_total_predictive_std(cubic):
    x, y = cubic
    est = fast(method="ensemble", method_params={"members": 3, "steps": 60}).fit(x, y)
    x_new = np.linspace(-6, 6, 25)[:, None]
    mean, std = est.predict(x_new, return_std=True)
    prediction = est.posterior_.predict(x_new)
    assert mean.shape == std.shape == (25,)
    np.testing.assert_array_equal(mean, prediction.mean[:, 0])
    np.testing.assert_array_equal(std, prediction.std[:, 0])
    assert (std > 0).all()
    assert (std > prediction.aleatoric_std[:, 0]).all()           # epistemic part included
    np.testing.assert_array_equal(est.predict(x_new), mean)


def test_multi_output(cubic):
    x, y = cubic
    y2 = np.column_stack([y, -2.0 * y + 1.0])
    est = fast().fit(x, y2)
    mean, std = est.predict(x, return_std=True)
    assert mean.shape == std.shape == (40, 2) and est.n_outputs_ == 2
    assert est.model_.out_dim == 2
    assert est.score(x, y2) == pytest.approx(r2_score(y2, mean))
    column = fast().fit(x, y[:, None])
    assert column.predict(x).shape == (40, 1)
    np.testing.assert_allclose(column.predict(x)[:, 0], fast().fit(x, y).predict(x))


def test_score_is_r2(cubic):
    x, y = cubic
    est = fast().fit(x, y)
    x_test, y_test = brn.data.cubic(30, seed=5)
    assert est.score(x_test, y_test) == pytest.approx(r2_score(y_test, est.predict(x_test)))


def test_predict_checks_its_input(cubic):
    x, y = cubic
    with pytest.raises(NotFittedError):
        fast().predict(x)
    est = fast().fit(x, y)
    with pytest.raises(ValueError, match="expecting 1 features"):
        est.predict(np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        est.predict(np.array([[np.nan]]))


def test_pickle_roundtrip(cubic):
    x, y = cubic
    est = fast().fit(x, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(x, return_std=True)[1],
                                  est.predict(x, return_std=True)[1])


# ---------------------------------------------------------------------- feature names


def test_dataframe_feature_names():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(30, 2)), columns=["load", "span"])
    y = frame["load"] ** 2 - frame["span"]
    est = fast().fit(frame, y)
    np.testing.assert_array_equal(est.feature_names_in_, ["load", "span"])
    assert est.predict(frame).shape == (30,)
    # Predictions from the array equal those from the frame, with scikit-learn's warning.
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        np.testing.assert_array_equal(est.predict(frame.to_numpy()), est.predict(frame))
    with pytest.raises(ValueError, match="feature names should match"):
        est.predict(frame[["span", "load"]])
    with pytest.raises(ValueError, match="feature names should match"):
        est.predict(frame.rename(columns={"span": "width"}))
    plain = fast().fit(frame.to_numpy(), y.to_numpy())
    assert not hasattr(plain, "feature_names_in_")
    with pytest.warns(UserWarning, match="fitted without feature names"):
        plain.predict(frame)


# ---------------------------------------------------------------------- scikit-learn tools


def test_pipeline(cubic):
    x, y = cubic
    pipe = make_pipeline(StandardScaler(), fast()).fit(x, y)
    by_hand = fast().fit(StandardScaler().fit_transform(x), y)
    np.testing.assert_allclose(pipe.predict(x), by_hand.predict(StandardScaler().fit(x)
                                                                 .transform(x)))
    assert pipe.score(x, y) > 0.8


def test_cross_val_score(cubic):
    x, y = cubic
    folds = KFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(fast(), x, y, cv=folds)
    assert scores.shape == (3,) and (scores > 0.5).all()
    train, test = next(folds.split(x))
    first = fast().fit(x[train], y[train]).score(x[test], y[test])
    assert scores[0] == pytest.approx(first)


def test_grid_search(cubic):
    x, y = cubic
    grid = {"width": [1, 4], "method": [brn.MAP(steps=100, lr=0.05),
                                        brn.Ensemble(members=2, steps=100, lr=0.05)]}
    search = GridSearchCV(fast(method_params=None), grid, cv=2).fit(x, y)
    assert len(search.cv_results_["params"]) == 4
    best = search.best_estimator_
    assert best.get_params()["width"] == search.best_params_["width"]
    assert best.posterior_.method == search.best_params_["method"]
    assert best.model_.user_net.width == best.width
    assert search.predict(x).shape == (40,)


# ---------------------------------------------------------------------- estimator checks


@parametrize_with_checks([fast(random_state=None)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


CHECK_CONFIGS = {
    "nuts": {"method": "nuts", "method_params": {"num_samples": 10, "num_warmup": 10, "chains": 2,
                                                 "max_tree_depth": 3, "init_steps": 100}},
    "meanfield": {"method": "meanfield", "method_params": {"steps": 100, "num_draws": 20,
                                                           "init": "map", "init_steps": 100}},
    "lowrank": {"method": "lowrank", "method_params": {"steps": 100, "num_draws": 20, "rank": 2,
                                                       "init": "map", "init_steps": 100}},
    "ensemble": {"method": "ensemble", "method_params": {"members": 2, "steps": 300, "lr": 0.05},
                 "prior": "hierarchical", "likelihood": "heteroscedastic", "basis": "cubic",
                 "integrator": "rk4"},
}


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CHECK_CONFIGS))
def test_sklearn_estimator_checks_every_method(config):
    est = BayesianResNetRegressor(width=4, depth=2, **CHECK_CONFIGS[config])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est, expected_failed_checks=EXPECTED_FAILED_CHECKS,
                                  on_fail=None, on_skip=None)
    failed = [(r["check_name"], repr(r["exception"])) for r in results
              if r["status"] == "failed"]
    assert not failed
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}


# ---------------------------------------------------------------------- packaging and docs


def test_missing_sklearn_gives_an_install_hint(monkeypatch):
    for name in [name for name in sys.modules if name == "sklearn" or name.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "bayesresnet.estimator")
    with pytest.raises(ImportError, match=re.escape('pip install "bayesresnet[sklearn]"')):
        importlib.import_module("bayesresnet.estimator")


def test_import_bayesresnet_does_not_import_sklearn():
    code = "import sys, bayesresnet; assert 'sklearn' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_docs_page_examples_run(monkeypatch):
    # The page uses the top-level name brn.BayesianResNetRegressor.
    monkeypatch.setattr(brn, "BayesianResNetRegressor", BayesianResNetRegressor, raising=False)
    page = Path(__file__).resolve().parents[1] / "docs" / "estimator.rst"
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", page.read_text())
    assert blocks
    for block in blocks:
        code = "\n".join(line[3:] for line in block.splitlines())
        exec(compile(code, str(page), "exec"), {"__name__": "docs_example"})
