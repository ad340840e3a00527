"""ArviZ export, PSIS-LOO comparison, and safe save/load of posteriors (fast, tiny models).

These tests run on both ArviZ lines: ArviZ 0.x in the default suite (Python 3.11) and ArviZ 1.x
through the second test command in CONTRIBUTING.md (Python 3.12, ``-m arviz``).
"""

import json
import math
import os
import pickle
import stat
import warnings

import h5netcdf
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import xarray as xr
from scipy import stats as sps

import bayesresnet as brn
from bayesresnet import export, fileformat
from bayesresnet.arviz_compat import arviz_major, import_arviz
from bayesresnet.arviz_compat import loo as compat_loo
from bayesresnet.convert import MIN_LOO_DRAWS
from bayesresnet.data import Standardizer, cubic
from bayesresnet.export import PosteriorFileError, compare, load, save, to_arviz
from bayesresnet.inference.ensemble import MAP, Ensemble
from bayesresnet.inference.fit import METHODS, fit
from bayesresnet.inference.mclmc import MCLMC
from bayesresnet.inference.nuts import NUTS
from bayesresnet.inference.vi import LowRank, MeanField
from bayesresnet.posterior import Posterior

pytestmark = pytest.mark.arviz
az = import_arviz()

METHOD_NAMES = ["nuts", "meanfield", "lowrank", "ensemble", "map"]
SHAPES = {"nuts": (3, 40), "meanfield": (1, 60), "lowrank": (1, 60), "ensemble": (1, 6),
          "map": (1, 1)}


def group_names(data):
    """Group names of an InferenceData (ArviZ 0.x) or DataTree (ArviZ 1.x)."""
    if hasattr(data, "children"):
        return set(data.children)
    return set(data.groups())


def tiny_model(**likelihood):
    net = brn.ResNet(1, 1, width=3, depth=3, basis=brn.Linear())
    return brn.BayesianResNet(net, likelihood=brn.likelihoods.Gaussian(**likelihood))


def synthetic(model, name, x, y, seed=0, shape=None):
    """A Posterior of prior draws with the per-method stats each method's contract promises."""
    chains, draws = shape or SHAPES[name]
    values = model.sample_prior(seed, (chains, draws))
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    xs, ys = Standardizer().fit(x), Standardizer().fit(y)
    log_joint = model.log_joint(values, xs.transform(torch.as_tensor(x)),
                                ys.transform(torch.as_tensor(y))).numpy()
    size = (chains, draws)
    if name == "nuts":
        depth = rng.integers(1, 4, size=size)
        stats = {"diverging": np.zeros(size, bool), "tree_depth": depth,
                 "num_steps": 2**depth - 1, "step_size": np.full(size, 0.1),
                 "accept_prob": rng.uniform(0.6, 1.0, size), "log_joint": log_joint,
                 "log_density": log_joint + 1.0, "energy": rng.normal(size=size) - log_joint,
                 "reached_max_tree_depth": depth == 10}
    elif name in ("meanfield", "lowrank"):
        stats = {"elbo": -100 + rng.normal(size=300), "log_joint": log_joint,
                 "log_q": torch.as_tensor(log_joint - rng.normal(size=size))}
    else:
        members = size[1]
        stats = {"loss": 100 + rng.normal(size=(200, members)), "final_loss": rng.normal(
            size=members), "log_joint": log_joint}
    extra = {"note": "synthetic", "initial_position": torch.randn(chains, model.dim,
                                                                  dtype=torch.float64),
             "nested": {"pair": (1, 2.5), "flags": np.array([True, False])}}
    return Posterior(model=model, draws=values, stats=stats, method=METHODS[name](), x_scaler=xs,
                     y_scaler=ys, seed=seed, fit_seconds=1.25, x_train=x, y_train=y,
                     extra=extra)


@pytest.fixture(scope="module")
def data():
    return cubic(20, seed=0)


@pytest.fixture(scope="module")
def posts(data):
    x, y = data
    model = tiny_model()
    return {name: synthetic(model, name, x, y, seed=i) for i, name in enumerate(METHOD_NAMES)}


# Real fits with tiny settings, made once per module and only for the tests that ask for them.
TINY = {
    "nuts": lambda: NUTS(num_samples=10, num_warmup=10, chains=2, max_tree_depth=2, init_steps=10),
    "meanfield": lambda: MeanField(steps=30, num_draws=40, num_particles=1),
    "lowrank": lambda: LowRank(steps=30, num_draws=40, num_particles=1),
    "ensemble": lambda: Ensemble(members=3, steps=20),
    "map": lambda: MAP(steps=20),
    "mclmc": lambda: MCLMC(num_samples=10, thinning=2, num_warmup=20, chains=2, init_steps=10),
}


@pytest.fixture(scope="module")
def fitted(data):
    cache = {}
    model = tiny_model()

    def get(name):
        if name not in cache:
            cache[name] = fit(model, *data, TINY[name](), seed=1, progress=False)
        return cache[name]

    return get


# ------------------------------------------------------------------------------- to_arviz
def test_posterior_group_has_named_dims_coords_and_exact_draws(posts):
    post = posts["nuts"]
    idata = post.to_arviz()
    p = idata.posterior
    assert p["W_coef"].dims == ("chain", "draw", "basis", "hidden_out", "hidden_in")
    assert list(p["basis"].values) == brn.Linear().names(3)
    assert p["b_coef"].dims == ("chain", "draw", "basis", "hidden")
    assert p["input_weight"].dims == ("chain", "draw", "hidden", "input")
    assert p["output_weight"].dims == ("chain", "draw", "output", "hidden")
    assert p["input_bias"].dims == ("chain", "draw", "hidden")
    assert p["output_bias"].dims == ("chain", "draw", "output")
    assert p["noise"].dims == ("chain", "draw", "output")
    assert p["f"].dims == ("chain", "draw", "obs_id")  # one output: no output dim
    for site, value in post.draws.items():
        assert p[site].dtype == np.float64
        assert np.array_equal(p[site].values, value.numpy())
    # f: the network mean at the training inputs in original units, as predict() computes it.
    pred = post.predict(post.x_train)
    chains, draws = SHAPES["nuts"]
    np.testing.assert_allclose(p["f"].values, pred.f_samples.reshape(chains, draws, 20),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["hierarchical", "mlp", "heteroscedastic", "fixed_noise"])
def test_dims_for_other_priors_networks_and_likelihoods(data, kind):
    x, y = data
    if kind == "hierarchical":
        model = brn.BayesianResNet(brn.ResNet(1, 1, 3, 3, basis=brn.Cubic()),
                                   prior=brn.priors.Hierarchical())
    elif kind == "mlp":
        model = brn.BayesianResNet(brn.MLP(1, 1, width=3, depth=2))
    elif kind == "heteroscedastic":
        model = tiny_model(heteroscedastic=True)
    else:
        model = tiny_model(noise=0.3)
    idata = synthetic(model, "nuts", x, y, shape=(2, 5)).to_arviz()
    p = idata.posterior
    if kind == "hierarchical":
        assert p["W_coef_raw"].dims == ("chain", "draw", "basis", "hidden_out", "hidden_in")
        assert p["W_coef_scale"].dims == ("chain", "draw")
        assert list(p["basis"].values) == ["t^0", "t^1", "t^2", "t^3"]
    elif kind == "mlp":
        assert p["hidden_weight"].dims == ("chain", "draw", "layer", "hidden_out", "hidden_in")
        assert p["hidden_bias"].dims == ("chain", "draw", "layer", "hidden")
    elif kind == "heteroscedastic":
        assert p["output_weight"].dims == ("chain", "draw", "net_output", "hidden")
        assert list(p["net_output"].values) == ["mean_0", "log_scale_0"]
        assert "noise" not in p
    else:
        assert "noise" not in p
    assert set(p.data_vars) == set(model.latent_sites) | {"f"}
    assert np.isfinite(idata.log_likelihood["obs"].values).all()


def test_log_likelihood_is_pointwise_in_original_units():
    # Two outputs on very different scales: the log-likelihood must be that of the raw data.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(15, 2))
    y = np.stack([rng.normal(size=15) * 100 + 5, rng.normal(size=15) * 0.01], axis=1)
    model = brn.BayesianResNet(brn.ResNet(2, 2, width=3, depth=2, basis="constant"))
    post = synthetic(model, "meanfield", x, y, shape=(1, 30))
    idata = post.to_arviz()
    loglik = idata.log_likelihood["obs"]
    # Per output, with the dims of the observed data; obs_joint leaves out whole observations.
    assert loglik.dims == ("chain", "draw", "obs_id", "output") and loglik.shape == (1, 30, 15, 2)
    assert idata.observed_data["obs"].dims == ("obs_id", "output")
    joint = idata.log_likelihood["obs_joint"]
    assert joint.dims == ("chain", "draw", "obs_id")
    f = idata.posterior["f"].values
    noise = post.draws["noise"].numpy()[:, :, None, :] * post.y_scaler.std
    expected = sps.norm.logpdf(y, loc=f, scale=noise)
    np.testing.assert_allclose(loglik.values, expected, rtol=1e-10)
    np.testing.assert_allclose(joint.values, expected.sum(-1), rtol=1e-10)
    np.testing.assert_allclose(export.pointwise_log_likelihood(post), expected.sum(-1),
                               rtol=1e-10)
    # The model's own log-likelihood of the standardized data, minus the log-Jacobian.
    xs = post.x_scaler.transform(torch.as_tensor(x))
    ys = post.y_scaler.transform(torch.as_tensor(y))
    flat = post.flat_draws()
    model_loglik = post.model.log_likelihood(flat, xs, ys).numpy().reshape(1, 30, 15)
    np.testing.assert_allclose(joint.values, model_loglik - np.log(post.y_scaler.std).sum(),
                               rtol=1e-10)


def original_units_lp(post):
    return post.stats["log_joint"] - len(post.y_train) * np.log(post.y_scaler.std).sum()


def test_lp_is_the_log_prior_plus_the_exported_log_likelihood(posts):
    post = posts["nuts"]
    idata = post.to_arviz()
    log_prior = post.model.log_prior(post.draws).numpy()
    loglik = idata.log_likelihood["obs"].values.sum(-1)
    np.testing.assert_allclose(idata.sample_stats["lp"].values, log_prior + loglik,
                               rtol=1e-10, atol=1e-8)


def test_sample_stats_nuts_use_arviz_names(posts):
    post = posts["nuts"]
    ss = post.to_arviz().sample_stats
    names = {"lp", "diverging", "energy", "tree_depth", "n_steps", "step_size",
             "acceptance_rate", "reached_max_treedepth"}
    assert names <= set(ss.data_vars)
    for name in names:
        assert ss[name].dims == ("chain", "draw") and ss[name].shape == SHAPES["nuts"]
    assert ss["diverging"].dtype == bool
    np.testing.assert_allclose(ss["lp"].values, original_units_lp(post), rtol=1e-12)
    np.testing.assert_array_equal(ss["n_steps"].values, post.stats["num_steps"])
    np.testing.assert_array_equal(ss["acceptance_rate"].values, post.stats["accept_prob"])


@pytest.mark.parametrize("name", ["meanfield", "lowrank", "ensemble", "map"])
def test_sample_stats_of_other_methods_have_lp(posts, name):
    post = posts[name]
    ss = post.to_arviz().sample_stats
    assert ss["lp"].shape == SHAPES[name]
    np.testing.assert_allclose(ss["lp"].values, original_units_lp(post), rtol=1e-12)
    if name in ("meanfield", "lowrank"):
        assert ss["log_q"].shape == SHAPES[name]
    else:
        assert ss["final_loss"].shape == SHAPES[name]
    assert "elbo" not in ss and "loss" not in ss  # histories are not per draw


def test_malformed_per_draw_stat_is_an_error(data):
    post = synthetic(tiny_model(), "nuts", *data, shape=(2, 10))
    post.stats["energy"] = np.zeros((2, 9))
    with pytest.raises(ValueError, match="energy"):
        to_arviz(post)


def test_predictive_groups_observed_and_constant_data(posts):
    post = posts["nuts"]
    idata = post.to_arviz()
    assert idata.observed_data["obs"].dims == ("obs_id",)
    np.testing.assert_array_equal(idata.observed_data["obs"].values, post.y_train[:, 0])
    np.testing.assert_array_equal(idata.constant_data["x"].values, post.x_train)
    ppc = idata.posterior_predictive["obs"]
    assert ppc.dims == ("chain", "draw", "obs_id")
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "obs_id")
    # Replicates are f plus Gaussian noise of the original-units scale: the standardized
    # residuals of 2400 draws have mean 0 (SE 0.02) and SD 1 (SE 0.015).
    noise = post.draws["noise"].numpy()[:, :, None, 0] * post.y_scaler.std
    z = (ppc.values - idata.posterior["f"].values) / noise
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.08
    again = post.to_arviz()
    np.testing.assert_array_equal(again.posterior_predictive["obs"].values, ppc.values)
    assert "posterior_predictive" not in group_names(post.to_arviz(predictive=False))


def test_predictions_for_new_inputs(posts):
    post = posts["ensemble"]
    x_new = np.linspace(-5, 5, 7)
    idata = post.to_arviz(x_new=x_new[:, None], y_new=np.sin(x_new))
    assert {"predictions", "predictions_constant_data"} <= group_names(idata)
    f = idata.predictions["f"]
    assert f.dims == ("chain", "draw", "pred_id") and f.shape == (1, 6, 7)
    np.testing.assert_allclose(f.values[0], post.predict(x_new[:, None]).f_samples[..., 0],
                               rtol=1e-12, atol=1e-12)
    assert idata.predictions["obs"].shape == (1, 6, 7)
    np.testing.assert_array_equal(idata.predictions_constant_data["x"].values, x_new[:, None])
    np.testing.assert_array_equal(idata.predictions_constant_data["y"].values, np.sin(x_new))
    assert idata.predictions_constant_data["x"].dims == ("pred_id", "input")
    # training groups keep their own observation dimension
    assert idata.constant_data["x"].dims == ("obs_id", "input")
    with pytest.raises(ValueError, match="y_new was given without x_new"):
        post.to_arviz(y_new=np.zeros(3))
    with pytest.raises(ValueError, match="y_new"):
        post.to_arviz(x_new=x_new[:, None], y_new=np.zeros(3))
    with pytest.raises(ValueError, match="x_new"):
        post.to_arviz(x_new=np.zeros((3, 2)))


def test_attrs_record_method_seed_and_versions(posts):
    import pyro

    post = posts["lowrank"]
    idata = post.to_arviz()
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        attrs = idata[group].attrs
        assert attrs["inference_method"] == "lowrank"
        assert attrs["inference_kind"] == "variational"
        assert json.loads(attrs["inference_settings"]) == post.method.config()
        assert json.loads(attrs["model_config"]) == post.model.config()
        assert attrs["seed"] == post.seed and attrs["fit_seconds"] == 1.25
        assert attrs["bayesresnet_version"] == brn.__version__
        assert attrs["torch_version"] == str(torch.__version__)
        assert attrs["pyro_version"] == pyro.__version__


def _check_arviz_tools(post, tmp_path):
    idata = post.to_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny runs make ArviZ warn about short chains
        summary = post.summary()
        assert list(summary.index) == ["noise[0]", *(f"f[{i}]" for i in range(20))]
        assert len(az.summary(idata, var_names=["noise", "f"])) == 1 + 20
        if post.num_chains * post.num_draws >= MIN_LOO_DRAWS:
            result = compat_loo(idata)
            assert np.isfinite(result.elpd) and result.elpd_i.shape == (20,)
            pit = az.loo_pit(idata) if arviz_major() >= 1 else az.loo_pit(idata, y="obs")
            values = np.asarray(getattr(pit, "get", lambda k: pit)("obs"))
            assert values.shape == (20,) and ((values >= 0) & (values <= 1)).all()
    plt.close("all")
    path = tmp_path / "idata.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert group_names(back) == group_names(idata)
    for group in group_names(idata):
        xr.testing.assert_equal(_dataset(back[group]), _dataset(idata[group]))


def _dataset(group):
    return group.to_dataset() if hasattr(group, "to_dataset") else group


def test_arviz_tools_work_on_a_synthetic_nuts_posterior(posts, tmp_path):
    _check_arviz_tools(posts["nuts"], tmp_path)


# ------------------------------------------------------------------------------- compare
def test_compare_prefers_the_well_specified_model(data):
    x, y = data
    net = brn.ResNet(1, 1, width=3, depth=3, basis=brn.Linear())
    learned = brn.BayesianResNet(net)
    # The noise of the standardized cubic toy is about 0.1; 0.01 is wildly too small.
    wrong = brn.BayesianResNet(net, likelihood=brn.likelihoods.Gaussian(noise=0.01))
    method = Ensemble(members=25, steps=60, anchored=True)
    posteriors = {"learned": fit(learned, x, y, method, seed=0, progress=False),
                  "fixed_noise": fit(wrong, x, y, method, seed=0, progress=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 25 draws: ArviZ warns about Pareto k
        table = compare(posteriors)
    assert list(table.index) == ["learned", "fixed_noise"]
    assert table.loc["fixed_noise", "elpd_diff"] > 3 * table.loc["fixed_noise", "dse"] > 0
    assert {"elpd_loo", "p_loo", "weight", "se"} <= set(table.columns)


def test_compare_rejects_different_data_single_draws_and_bad_input(posts, data):
    x, y = data
    other = synthetic(tiny_model(), "meanfield", x, y + 1.0)
    with pytest.raises(ValueError, match="different training data"):
        compare({"a": posts["meanfield"], "b": other})
    with pytest.raises(ValueError, match="single draw"):
        compare({"a": posts["meanfield"], "b": posts["map"]})
    with pytest.raises(ValueError, match="has 6 draws"):
        compare({"a": posts["meanfield"], "b": posts["ensemble"]})
    with pytest.raises(ValueError, match="at least two"):
        compare({"a": posts["meanfield"]})
    with pytest.raises(ValueError, match="not a Posterior"):
        compare({"a": posts["meanfield"], "b": "posterior"})


# ------------------------------------------------------------------------------- save and load
def assert_same_posterior(a, b):
    assert b.model.config() == a.model.config()
    assert type(b.method) is type(a.method) and b.method.config() == a.method.config()
    assert (b.seed, b.fit_seconds) == (a.seed, a.fit_seconds)
    assert b.x_scaler.to_dict() == a.x_scaler.to_dict()
    assert b.y_scaler.to_dict() == a.y_scaler.to_dict()
    np.testing.assert_array_equal(b.x_train, a.x_train)
    np.testing.assert_array_equal(b.y_train, a.y_train)
    assert list(b.draws) == list(a.draws)
    for site in a.draws:
        assert b.draws[site].dtype == torch.float64
        assert torch.equal(b.draws[site], a.draws[site])
    assert_same_tree(b.stats, a.stats)
    x_new = np.linspace(-6, 6, 9)[:, None]
    pa, pb = a.predict(x_new), b.predict(x_new)
    for attr in ("f_samples", "samples", "mean", "std"):
        np.testing.assert_array_equal(getattr(pb, attr), getattr(pa, attr))


def assert_same_tree(b, a):
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(b) == list(a)
        for key in a:
            assert_same_tree(b[key], a[key])
    elif isinstance(a, (list, tuple)):
        assert type(b) is type(a) and len(b) == len(a)
        for u, v in zip(b, a, strict=True):
            assert_same_tree(u, v)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and b.dtype == a.dtype and torch.equal(b, a.detach())
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype
        np.testing.assert_array_equal(b, a)
    else:
        assert b == a


def test_save_load_round_trip_synthetic(posts, tmp_path):
    post = posts["nuts"]  # its extra holds tensors, arrays of bools, nested dicts and tuples
    path = tmp_path / "run.nc"
    assert post.save(path) == path
    back = load(path)
    assert_same_posterior(post, back)
    assert_same_tree(back.extra, post.extra)
    assert not list(tmp_path.glob(".*tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # like any new file
    # The file is an ordinary ArviZ netCDF as well.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = az.from_netcdf(str(path))
    assert {"posterior", "log_likelihood", "observed_data", "constant_data"} <= \
        group_names(idata)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_real_fit_export_and_round_trip(fitted, name, tmp_path):
    post = fitted(name)
    _check_arviz_tools(post, tmp_path)
    path = tmp_path / f"{name}.nc"
    save(post, str(path))
    back = load(str(path))
    assert_same_posterior(post, back)
    assert_same_tree(back.extra, post.extra)


def test_unserializable_extra_is_left_out_with_a_warning(data, tmp_path):
    post = synthetic(tiny_model(), "map", *data)
    post.extra["callback"] = print
    with pytest.warns(UserWarning, match=r"extra\['callback'\]"):
        save(post, tmp_path / "run.nc")
    back = load(tmp_path / "run.nc")
    assert back.extra["callback"] is None and back.extra["note"] == "synthetic"


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_the_old_file_and_leaves_no_temp_file(posts, tmp_path, monkeypatch,
                                                                  error):
    path = tmp_path / "run.nc"
    save(posts["map"], path)
    before = path.read_bytes()
    seen = []

    def fail_midway(posterior):
        # Called after the root group is already in the temporary file.
        seen.extend(p for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        assert seen and seen[0].stat().st_size > 0
        raise error

    monkeypatch.setattr(fileformat, "inference_groups", fail_midway)
    with pytest.raises(type(error)):
        save(posts["ensemble"], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.nc"]
    monkeypatch.undo()
    assert load(path).method.name == "map"
    save(posts["ensemble"], path)  # a save that succeeds replaces the file
    assert load(path).method.name == "ensemble"


def test_save_checks_its_arguments(posts, tmp_path):
    with pytest.raises(ValueError, match="Posterior"):
        save("not a posterior", tmp_path / "x.nc")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save(posts["map"], tmp_path / "missing" / "x.nc")
    with pytest.raises(ValueError, match="folder"):
        save(posts["map"], tmp_path)


def test_load_errors_are_clear(posts, tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.nc")
    text = tmp_path / "notes.nc"
    text.write_text("hello, I am not a netCDF file\n")
    with pytest.raises(PosteriorFileError, match="not a readable bayesresnet posterior"):
        load(text)
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"a": ("t", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(PosteriorFileError, match="not a bayesresnet posterior"):
        load(foreign)
    idata_only = tmp_path / "idata.nc"
    posts["map"].to_arviz().to_netcdf(str(idata_only))
    with pytest.raises(PosteriorFileError, match="not a bayesresnet posterior"):
        load(idata_only)
    assert issubclass(PosteriorFileError, ValueError)


def test_truncated_file_is_a_clear_error(posts, tmp_path):
    path = tmp_path / "run.nc"
    save(posts["nuts"], path)
    data = path.read_bytes()
    for size in (len(data) // 2, 600):
        cut = tmp_path / f"cut{size}.nc"
        cut.write_bytes(data[:size])
        with pytest.raises(PosteriorFileError):
            load(cut)


def test_other_format_versions_are_refused(posts, tmp_path):
    path = tmp_path / "run.nc"
    save(posts["map"], path)
    with h5netcdf.File(path, "a") as handle:
        handle.attrs["bayesresnet_format_version"] = export.FORMAT_VERSION + 1
    with pytest.raises(PosteriorFileError, match="format version"):
        load(path)


def test_tampered_metadata_is_a_clear_error(posts, tmp_path):
    path = tmp_path / "run.nc"
    save(posts["map"], path)
    with h5netcdf.File(path, "a") as handle:
        handle.attrs["bayesresnet_method"] = json.dumps({"name": "hmc"})
    with pytest.raises(PosteriorFileError, match="unknown inference method 'hmc'"):
        load(path)
    save(posts["map"], path)
    with h5netcdf.File(path, "a") as handle:
        handle.attrs["bayesresnet_model"] = "{not json"
    with pytest.raises(PosteriorFileError, match="not valid JSON"):
        load(path)


def test_loading_never_unpickles(posts, tmp_path, monkeypatch):
    path = tmp_path / "run.nc"
    save(posts["lowrank"], path)

    def forbidden(*args, **kwargs):
        raise AssertionError("load must not unpickle")

    for module, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load"), (np, "load")):
        monkeypatch.setattr(module, attr, forbidden)
    back = load(path)
    assert back.method.name == "lowrank"
    assert math.isclose(back.fit_seconds, 1.25)


def test_file_holds_only_arrays_and_json(posts, tmp_path):
    path = tmp_path / "run.nc"
    save(posts["nuts"], path)
    with h5netcdf.File(path, "r") as handle:
        attrs = dict(handle.attrs)
        kinds = {name: handle.variables[name].dtype.kind for name in handle.variables}
    assert attrs["bayesresnet_format"] == export.FORMAT_NAME
    assert attrs["bayesresnet_format_version"] == export.FORMAT_VERSION
    metadata = [k for k in attrs if k.startswith("bayesresnet_") and k not in (
        "bayesresnet_format", "bayesresnet_format_version", "bayesresnet_version")]
    assert len(metadata) == 13
    for key in metadata:
        json.loads(attrs[key])
    assert kinds and set(kinds.values()) <= set("biuf")
