"""What ArviZ users do with an export, on whichever ArviZ line is installed.

Runs in the default suite on ArviZ 0.x and, through the second test command in CONTRIBUTING.md,
on ArviZ 1.x (``-m arviz`` on Python 3.12).
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

import bayesresnet as brn
from bayesresnet.arviz_compat import arviz_major, import_arviz, psislw
from bayesresnet.convert import identifiable_names, inference_groups

matplotlib.use("Agg")
pytestmark = pytest.mark.arviz
az = import_arviz()
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def one_output():
    x, y = brn.data.cubic(20, seed=0)
    net = brn.ResNet(in_dim=1, out_dim=1, width=3, depth=3, basis=brn.Linear())
    model = brn.BayesianResNet(net)
    return brn.fit(model, x, y, method=brn.MeanField(steps=150, num_draws=100), seed=3,
                   progress=False, check=False)


@pytest.fixture(scope="module")
def two_outputs():
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(30, 2)), columns=["temperature", "pressure"])
    y = pd.DataFrame({"yield": x["temperature"] * 2 + rng.normal(0, 0.1, 30),
                      "cost": 100 * x["pressure"] + rng.normal(0, 5, 30)})
    net = brn.ResNet(in_dim=2, out_dim=2, width=3, depth=2, basis=brn.Constant())
    return brn.fit(brn.BayesianResNet(net), x, y, method=brn.Ensemble(members=30, steps=80),
                   seed=1, progress=False, check=False)


def _plain(group):
    return group.to_dataset() if hasattr(group, "to_dataset") else group


# ------------------------------------------------------------------------ ArviZ's own functions
def test_loo_pit_plot_loo_pit_and_plot_lm_work_on_one_output(one_output):
    data = one_output.to_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arviz_major() == 0:
            pit = np.asarray(az.loo_pit(data, y="obs"))
            az.plot_loo_pit(data, y="obs")
            az.plot_lm(idata=data, y="obs", x="x", num_samples=20)
        else:
            pit = np.asarray(az.loo_pit(data)["obs"])
            az.plot_loo_pit(data)
            az.plot_lm(data, plot_dim="obs_id")  # x is (obs_id, input): name the point dim
    assert pit.shape == (20,) and ((pit >= 0) & (pit <= 1)).all()
    # A reasonable fit's LOO-PIT values are spread over (0, 1), not piled at one end.
    assert 0.2 < float(np.median(pit)) < 0.8
    matplotlib.pyplot.close("all")


def test_loo_pit_selects_one_output_of_several(two_outputs):
    data = two_outputs.to_arviz()
    assert list(data.posterior["output"].values) == ["yield", "cost"]
    assert list(data.constant_data["input"].values) == ["temperature", "pressure"]
    one = data.sel(output="cost")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arviz_major() == 0:
            pit = np.asarray(az.loo_pit(one, y="obs"))
        else:
            pit = np.asarray(az.loo_pit(one, var_names=["obs"])["obs"])
        joint = az.loo(data, var_name="obs_joint")
    assert pit.shape == (30,) and ((pit >= 0) & (pit <= 1)).all()
    assert np.isfinite(float(getattr(joint, "elpd_loo", getattr(joint, "elpd", np.nan))))


def test_prior_and_prior_predictive_groups(one_output):
    data = one_output.to_arviz(prior_draws=400)
    prior, predictive = data.prior, data.prior_predictive
    assert set(prior.data_vars) == set(one_output.draws) | {"f"}
    assert prior["W_coef"].shape == (1, 400, 2, 3, 3)
    assert predictive["obs"].dims == ("chain", "draw", "obs_id")
    # Draws of the Normal(1) prior on the coefficients: mean 0 (SE 1/sqrt(7200) ~ 0.012) and
    # SD 1 (SE ~ 0.008); 5 SE bounds.
    w = prior["W_coef"].values
    assert abs(w.mean()) < 0.06 and abs(w.std() - 1) < 0.05
    # The prior predictive is in original units: far wider than the data (the prior f is not
    # fitted), centred near the data's mean in units of its spread.
    spread = predictive["obs"].values.std()
    assert spread > 0.5 * one_output.y_train.std()
    again = one_output.to_arviz(prior_draws=400)
    np.testing.assert_array_equal(again.prior_predictive["obs"].values, predictive["obs"].values)
    assert "prior" not in _group_names(one_output.to_arviz(prior=False))


def _group_names(data):
    return set(data.children) if hasattr(data, "children") else set(data.groups())


def test_summary_lists_identifiable_quantities_by_default(one_output):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = one_output.summary()
        raw = one_output.summary(var_names=["W_coef"])
    assert list(table.index) == ["noise[0]", *(f"f[{i}]" for i in range(20))]
    assert len(raw) == 2 * 3 * 3
    assert identifiable_names(one_output) == ["noise", "f"]


@pytest.mark.parametrize(("method", "kind"), [
    (brn.MAP(steps=30), "optimization"), (brn.Ensemble(members=3, steps=30), "ensemble"),
    (brn.MeanField(steps=30, num_draws=10), "variational"),
    (brn.NUTS(num_samples=5, num_warmup=5, chains=2, max_tree_depth=2), "mcmc")])
def test_every_group_says_what_kind_of_draws_it_holds(method, kind):
    x, y = brn.data.cubic(12, seed=0)
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=2, depth=2, basis=brn.Constant()))
    post = brn.fit(model, x, y, method=method, seed=0, progress=False, check=False)
    groups = inference_groups(post, prior_draws=5)
    assert {g.attrs["inference_kind"] for g in groups.values()} == {kind}


def test_psislw_normalizes_and_estimates_known_tail_shapes():
    rng = np.random.default_rng(0)
    # Log-normal weights with a small spread: a light tail, k-hat well below 0.5.
    smoothed, khat = psislw(rng.normal(0, 0.1, size=400))
    assert abs(np.log(np.exp(smoothed).sum())) < 1e-12  # normalized
    assert khat < 0.5
    # Heavy-tailed weights: log-weights from a Pareto with shape 1/k = 1/1.2 have k near 1.2.
    _, heavy = psislw(np.log(rng.pareto(1 / 1.2, size=4000) + 1))
    assert 0.9 < heavy < 1.5
    _, short = psislw(np.zeros(10))
    assert short == np.inf


# ------------------------------------------------------------------------ Prediction.to_xarray
def test_prediction_to_xarray_has_chains_points_inputs_and_names(two_outputs):
    x_new = pd.DataFrame({"temperature": [0.0, 1.0, 2.0], "pressure": [0.5, 0.5, 0.5]})
    pred = two_outputs.predict(x_new)
    ds = pred.to_xarray()
    assert ds["f"].dims == ("chain", "draw", "pred_id", "output")
    assert ds["f"].shape == (1, 30, 3, 2)
    assert list(ds["output"].values) == ["yield", "cost"]
    assert list(ds["input"].values) == ["temperature", "pressure"]
    np.testing.assert_array_equal(ds["x"].values, x_new.to_numpy())
    np.testing.assert_array_equal(ds["mean"].values, pred.mean)
    # Same dims and numbers as the predictions group of the ArviZ export.
    exported = two_outputs.to_arviz(x_new=x_new, prior=False).predictions
    assert exported["f"].dims == ds["f"].dims
    np.testing.assert_allclose(exported["f"].values, ds["f"].values, rtol=1e-12)


def test_prediction_to_xarray_keeps_nuts_chains():
    x, y = brn.data.cubic(12, seed=0)
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=2, depth=2, basis=brn.Constant()))
    post = brn.fit(model, x, y, method=brn.NUTS(num_samples=6, num_warmup=5, chains=3,
                                               max_tree_depth=2),
                   seed=0, progress=False, check=False)
    ds = post.predict(x[:4]).to_xarray()
    assert ds["f"].shape == (3, 6, 4, 1)
    np.testing.assert_allclose(ds["f"].values,
                               post.to_arviz(x_new=x[:4], prior=False).predictions["f"].values[
                                   ..., None], rtol=1e-12)
    subset = post.predict(x[:4], num_draws=5).to_xarray()
    assert subset["f"].shape == (1, 5, 4, 1)  # a random subset is one chain


def test_names_survive_save_and_load(two_outputs, tmp_path):
    path = tmp_path / "run.nc"
    two_outputs.save(path)
    back = brn.load(path)
    assert back.feature_names == ["temperature", "pressure"]
    assert back.target_names == ["yield", "cost"]
    opened = az.from_netcdf(str(path))
    assert list(opened.posterior["output"].values) == ["yield", "cost"]


# ------------------------------------------------------------------------ files across lines
def test_a_file_written_under_arviz_0_loads_and_predicts_the_same():
    expected = json.loads((DATA / "run_arviz0.expected.json").read_text())
    assert expected["arviz_version"].startswith("0.")
    post = brn.load(DATA / "run_arviz0.nc")
    # Saved before Ensemble(noise=...) existed: loaded with the behaviour that made its draws.
    assert post.method.noise == "map"
    pred = post.predict(np.asarray(expected["x"]))
    np.testing.assert_allclose(pred.mean, expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(pred.std, expected["std"], rtol=1e-12)
    opened = az.from_netcdf(str(DATA / "run_arviz0.nc"))
    assert {"posterior", "log_likelihood", "observed_data"} <= _group_names(opened)
    assert post.diagnose().shape == (1, 4)


def test_a_fresh_file_round_trips_and_compare_and_diagnose_work(one_output, tmp_path):
    path = tmp_path / "run.nc"
    one_output.save(path)
    back = brn.load(path)
    for site in one_output.draws:
        assert torch.equal(back.draws[site], one_output.draws[site])
    table = brn.compare({"a": one_output, "b": back})
    assert {"elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse"} <= set(table.columns)
    assert table["elpd_diff"].abs().max() < 1e-9
    assert back.diagnose().checks


# ------------------------------------------------------------------------ import hygiene
def test_the_library_silences_only_arviz_refactor_notice(tmp_path):
    # In a fresh process with ArviZ's once-a-day stamp removed, nothing the library does
    # while exporting shows the refactor notice, and other warnings still show.
    script = (
        "import warnings, os, pathlib\n"
        "warnings.simplefilter('always')\n"
        "import bayesresnet as brn\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    x, y = brn.data.cubic(10, seed=0)\n"
        "    m = brn.BayesianResNet(brn.ResNet(1, 1, width=2, depth=2, basis=brn.Constant()))\n"
        "    p = brn.fit(m, x, y, method=brn.MAP(steps=5), seed=0, progress=False, check=False)\n"
        "    p.to_arviz(prior=False)\n"
        "    warnings.warn('a user warning', UserWarning)\n"
        "print([str(w.message).strip()[:30] for w in seen])\n")
    env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    assert "refactor" not in out.stdout + out.stderr
    assert "a user warning" in out.stdout
