"""``fit(dtype=..., device=...)``: validation, float32 in every method, the device carried through.

No GPU is needed. The device path is checked on the CPU in two ways: an explicit
``device=torch.device("cpu")`` must reach the method and give the default fit's draws bit for
bit, and a "poisoned default device" run (:class:`_PoisonDefaultDevice`) fails any method that
creates a tensor without saying where it goes, which on a GPU would be a CPU tensor meeting GPU
tensors. ``tools/gpu_check.py`` runs the real thing where a GPU exists.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import bayesresnet as brn
from bayesresnet.convert import inference_groups
from bayesresnet.fileformat import PosteriorFileError
from bayesresnet.inference.fit import check_dtype_device

fit_module = importlib.import_module("bayesresnet.inference.fit")  # not the function

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7


@pytest.fixture(scope="module")
def toy() -> tuple[brn.BayesianResNet, np.ndarray, np.ndarray]:
    x, y = brn.data.cubic(20, seed=0)
    net = brn.ResNet(1, 1, width=4, depth=3, basis=brn.Linear())
    return brn.BayesianResNet(net), x, y


# Tiny settings: these tests check where and in what type the methods compute, not how well.
FAST: dict[str, Callable[[], brn.inference.base.InferenceMethod]] = {
    "map": lambda: brn.MAP(steps=40),
    "map_stiffness_penalty": lambda: brn.MAP(steps=20, stiffness_penalty=0.1),
    "ensemble": lambda: brn.Ensemble(members=2, steps=40),
    "ensemble_posterior_noise": lambda: brn.Ensemble(members=2, steps=40, noise="posterior"),
    "meanfield_flat": lambda: brn.MeanField(steps=30, num_draws=10),
    "lowrank_flat": lambda: brn.LowRank(rank=2, steps=30, num_draws=10),
    "meanfield_pyro": lambda: brn.MeanField(steps=20, num_draws=10, backend="pyro"),
    "lowrank_pyro": lambda: brn.LowRank(rank=2, steps=20, num_draws=10, backend="pyro"),
    "nuts": lambda: brn.NUTS(num_samples=8, num_warmup=8, chains=2, init_steps=20,
                             max_tree_depth=4),
    "mclmc": lambda: brn.MCLMC(num_samples=8, thinning=2, num_warmup=40, chains=2,
                               init_steps=20),
    "laplace": lambda: brn.Laplace(steps=40, num_draws=10),
    "swag": lambda: brn.SWAG(members=2, pretrain_steps=40, swa_steps=30, rank=3,
                             num_draws=8),
}


def _fit(toy: Any, name: str, **kwargs: Any) -> brn.Posterior:
    model, x, y = toy
    return brn.fit(model, x, y, method=FAST[name](), seed=5, progress=False, check=False,
                   **kwargs)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, "float32",
                                   np.float32, None])
def test_other_dtypes_are_refused_before_any_work(toy, dtype, monkeypatch):
    monkeypatch.setattr(fit_module, "run_method", _must_not_run)
    with pytest.raises(ValueError, match=r"dtype must be torch\.float64 or torch\.float32"):
        _fit(toy, "map", dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_a_gpu_is_refused_before_any_work(toy, device, monkeypatch):
    monkeypatch.setattr(fit_module, "run_method", _must_not_run)
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        _fit(toy, "map", device=device)


@pytest.mark.parametrize("device, match", [
    ("gpu7", "not a device name torch understands"),
    ("meta", "must be 'cpu' or a CUDA device"),
    (3, "must be a string"),
])
def test_unknown_or_unsupported_devices_are_refused(toy, device, match, monkeypatch):
    monkeypatch.setattr(fit_module, "run_method", _must_not_run)
    with pytest.raises(ValueError, match=match):
        _fit(toy, "map", device=device)


def test_cuda_indices_are_checked_against_the_devices_present(monkeypatch):
    # Pretend two GPUs: the index is validated, and a bare "cuda" names device 0.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_dtype_device(torch.float32, "cuda") == (torch.float32, torch.device("cuda", 0))
    assert check_dtype_device(torch.float64, "cuda:1")[1] == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        check_dtype_device(torch.float64, "cuda:2")


def _must_not_run(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the method ran although the arguments were invalid")


# ------------------------------------------------------------------ the device carried through
def test_dtype_and_device_reach_the_method_and_the_posterior(toy, monkeypatch):
    seen = []
    run = fit_module.run_method

    def recording(method, model, x, y, seed, progress):
        seen.append((x.dtype, x.device, y.dtype, y.device))
        return run(method, model, x, y, seed, progress)

    monkeypatch.setattr(fit_module, "run_method", recording)
    default = _fit(toy, "map")
    explicit = _fit(toy, "map", device=torch.device("cpu"), dtype=torch.float64)
    single = _fit(toy, "map", device="cpu", dtype=torch.float32)
    cpu = torch.device("cpu")
    assert seen == [(torch.float64, cpu, torch.float64, cpu)] * 2 + [
        (torch.float32, cpu, torch.float32, cpu)]
    for name in default.draws:
        assert torch.equal(default.draws[name], explicit.draws[name])
        assert single.draws[name].dtype == torch.float64
        assert single.draws[name].device == cpu
    assert (default.fit_dtype, default.fit_device) == ("float64", "cpu")
    assert (single.fit_dtype, single.fit_device) == ("float32", "cpu")


class _PoisonDefaultDevice(TorchFunctionMode):
    """Sends every tensor that library code creates without ``device=`` to the ``meta`` device.

    A meta tensor has no values: the first operation that meets it with a real tensor raises,
    and so does reading it (``.item()``, ``.numpy()``). On a GPU such a tensor would have been a
    CPU tensor meeting GPU ones. Draws from a ``generator=`` and the initializations and tables
    built on the CPU on purpose (then moved with ``.to(x)``) are left alone.
    """

    FACTORIES: ClassVar[frozenset[Any]] = frozenset({
        torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.arange, torch.eye,
        torch.linspace, torch.randn, torch.rand, torch.randint, torch.randperm, torch.as_tensor})
    # Built on the CPU by design: network initializations (then moved to x's device), the
    # depth grid and basis (cached per device after a .to), the Laplace prior precisions (moved
    # where used), and the ensemble's float64 CPU noise tables.
    CPU_BY_DESIGN: ClassVar[frozenset[str]] = frozenset({
        "init_params", "initial_values", "layer_times", "matrix", "of", "noise_posterior",
        "_draw_noise", "stage_basis", "sample_prior"})

    def __init__(self) -> None:
        super().__init__()
        self.poisoned: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        keeps_device = func in (torch.as_tensor, torch.tensor) and isinstance(args[0],
                                                                               torch.Tensor)
        if (func in self.FACTORIES and "device" not in kwargs and "generator" not in kwargs
                and not keeps_device):
            frame = _library_frame()
            if frame is not None and not self._on_the_cpu_by_design(frame):
                kwargs["device"] = "meta"
                self.poisoned[f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:"
                              f"{frame.f_code.co_name}"] += 1
        return func(*args, **kwargs)

    def _on_the_cpu_by_design(self, frame: Any) -> bool:
        """Whether the library function creating the tensor runs inside one of
        :attr:`CPU_BY_DESIGN` (e.g. a prior's mapping of an initialization)."""
        while frame is not None:
            if (frame.f_globals.get("__name__", "").startswith("bayesresnet")
                    and frame.f_code.co_name in self.CPU_BY_DESIGN):
                return True
            frame = frame.f_back
        return False


def _library_frame() -> Any:
    """The innermost frame outside torch, if it is bayesresnet's inference or model code."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("torch"):
        frame = frame.f_back
    if frame is None:
        return None
    module = frame.f_globals.get("__name__", "")
    inside = module.startswith(("bayesresnet.inference", "bayesresnet.model",
                                "bayesresnet.resnet", "bayesresnet.likelihoods",
                                "bayesresnet.priors", "bayesresnet.basis"))
    return frame if inside and not module.endswith(".fit") else None


@pytest.mark.parametrize("name", sorted(FAST))
def test_every_method_says_where_its_tensors_go(toy, name):
    model, x, y = toy
    x_std = torch.as_tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32).reshape(-1, 1)
    y_std = torch.as_tensor((y - y.mean()) / y.std(), dtype=torch.float32).reshape(-1, 1)
    mode = _PoisonDefaultDevice()
    with mode:
        result = fit_module.run_method(FAST[name](), model, x_std, y_std, 5, False)
    # Reading the result touches every tensor it holds: none may be a poisoned one.
    for value in result.draws.values():
        assert value.device.type == "cpu" and torch.isfinite(value).all()


def test_the_poison_catches_a_tensor_created_without_a_device(toy):
    """The check above is not vacuous: a log density that builds a device-less tensor fails."""
    model, _, _ = toy
    z = torch.zeros(2, model.dim)
    # A function whose module is named like the library's inference code, creating a tensor
    # without device= (on a GPU run: a CPU tensor meeting the GPU's).
    namespace = {"torch": torch, "__name__": "bayesresnet.inference.careless"}
    exec(compile("def careless(z):\n    return z.sum(-1) + torch.zeros(z.shape[0])\n",
                 "careless.py", "exec"), namespace)
    with _PoisonDefaultDevice() as mode, pytest.raises(RuntimeError, match="meta"):
        namespace["careless"](z)
    assert mode.poisoned == Counter({"careless.py:careless": 1})


# ------------------------------------------------------------------ float32
class _PromotionRecorder(TorchFunctionMode):
    """Counts the operations of library code that compute in float32 and those that silently
    promote float32 operands to float64 (a float64 result from a float32 tensor and a float64
    tensor with at least one dimension, which is where torch promotes)."""

    def __init__(self) -> None:
        super().__init__()
        self.float32 = 0
        self.promoted: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        frame = _library_frame()
        if frame is None or not isinstance(out, torch.Tensor):
            return out
        if out.dtype == torch.float32:
            self.float32 += 1
        elif out.dtype == torch.float64 and not _float64_by_design(frame):
            dtypes = {a.dtype for a in _tensors(args, kwargs) if a.dim() > 0}
            if torch.float32 in dtypes and torch.float64 in dtypes:
                self.promoted[f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:"
                              f"{frame.f_lineno} {frame.f_code.co_name}"] += 1
        return out


def _float64_by_design(frame: Any) -> bool:
    """Laplace's curvature, evidence and draws are float64 by design (on the fit's device):
    the curvature's eigenvalues span many orders of magnitude. Only its MAP objective must
    compute in the fit's dtype."""
    return (frame.f_code.co_filename.endswith("laplace.py")
            and frame.f_code.co_name != "objective")


def _tensors(args: Any, kwargs: Any) -> list[torch.Tensor]:
    flat = list(args) + list((kwargs or {}).values())
    out = []
    for item in flat:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(t for t in item if isinstance(t, torch.Tensor))
    return out


@pytest.mark.parametrize("name", sorted(FAST))
def test_float32_fits_compute_in_float32(toy, name):
    recorder = _PromotionRecorder()
    with recorder:
        post = _fit(toy, name, dtype=torch.float32)
    assert recorder.float32 > 100  # the model and the method's state ran in float32
    assert not recorder.promoted, f"float32 operands promoted to float64: {recorder.promoted}"
    # The posterior is the float64 CPU record a float64 fit gives.
    assert post.fit_dtype == "float32"
    for value in post.draws.values():
        assert value.dtype == torch.float64 and value.device.type == "cpu"
    for key, value in post.stats.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert value.dtype == np.float64, key
    pred = post.predict(np.linspace(-2, 2, 5))
    assert np.isfinite(pred.mean).all() and np.isfinite(pred.std).all()


@pytest.mark.parametrize("prior", ["Hierarchical", "Decaying", "Horseshoe", "RandomWalk"])
def test_float32_with_every_prior(toy, prior):
    """The priors' own tensors (scales, depth weights) follow the fit's dtype and device."""
    if not hasattr(brn.priors, prior):
        pytest.skip(f"priors.{prior} is not in this version")
    _, x, y = toy
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=4, depth=3, basis=brn.Linear()),
                               prior=getattr(brn.priors, prior)())
    recorder, poison = _PromotionRecorder(), _PoisonDefaultDevice()
    for mode in (recorder, poison):
        with mode:
            post = brn.fit(model, x, y, method=brn.MAP(steps=20), seed=0, progress=False,
                           check=False, dtype=torch.float32)
    assert recorder.float32 > 100 and not recorder.promoted, recorder.promoted
    assert all(torch.isfinite(value).all() for value in post.draws.values())


@pytest.mark.parametrize("prior", [brn.priors.Normal(1.0), brn.priors.Hierarchical()])
def test_float32_log_density_matches_float64_to_float32_rounding(toy, prior):
    """The batched log density in float32 equals the float64 one to within float32 rounding.

    Each of the N = 20 likelihood terms and D prior terms is computed to a relative error of a
    few float32 epsilons (through depth 3 of the network, each step a width-4 dot product), and
    summing M terms adds at most M eps of the sum of their magnitudes. So the error is bounded
    by about (N + D) * 8 * eps * sum(|terms|), and we allow that with the sum of magnitudes
    estimated by the float64 per-point terms.
    """
    _, x, y = toy
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=4, depth=3, basis=brn.Linear()),
                               prior=prior)
    generator = torch.Generator().manual_seed(0)
    z = 0.5 * torch.randn(16, model.dim, generator=generator, dtype=torch.float64)
    x64 = torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1)
    y64 = torch.as_tensor(y, dtype=torch.float64).reshape(-1, 1)
    exact = model.log_density(z, x64, y64)
    approx = model.log_density(z.float(), x64.float(), y64.float())
    assert approx.dtype == torch.float32
    values, _ = model.constrain(z)
    magnitude = model.log_likelihood(values, x64, y64).abs().sum(-1) + exact.abs()
    bound = (x.shape[0] + model.dim) * 8 * FLOAT32_EPS * magnitude
    error = (approx.double() - exact).abs()
    assert (error <= bound).all(), (error / magnitude).max()
    # and the comparison is sharp enough to see a float16 round trip (eps 9.8e-4)
    coarse = model.log_density(z.half().float(), x64.float(), y64.float())
    assert ((coarse.double() - exact).abs() > bound).any()


def test_float32_map_predictions_match_float64(toy):
    """A deterministic fit (full-batch Adam from the same start) in float32 predicts what the
    float64 fit predicts, to an optimization-noise tolerance.

    The two runs differ only by rounding: float32 gradients carry a relative error of about
    N * eps = 20 * 1.2e-7 = 2.4e-6. Adam, though, steps by lr * m / sqrt(v), up to the learning
    rate per coordinate whatever a gradient's size, so where gradients are at rounding level
    the runs take different steps of up to the final learning rate lr / 10 = 1e-3: that
    optimization noise, not the rounding, sets the agreement. The tolerance is 1e-3 in the
    standardized units the model fits (times the standard deviation of y); measured: 2.6e-4.
    """
    model, x, y = toy
    a = brn.fit(model, x, y, method=brn.MAP(steps=200), seed=1, progress=False, check=False)
    b = brn.fit(model, x, y, method=brn.MAP(steps=200), seed=1, progress=False, check=False,
                dtype=torch.float32)
    grid = np.linspace(-2, 2, 9)
    tolerance = 1e-3 * float(np.std(y))
    mean_a, mean_b = a.predict(grid).mean, b.predict(grid).mean
    assert np.abs(mean_a - mean_b).max() <= tolerance
    assert not np.array_equal(mean_a, mean_b)  # it did run in float32


# ------------------------------------------------------------------ recorded with the run
def test_fit_dtype_and_device_are_saved_loaded_and_exported(toy, tmp_path):
    post = _fit(toy, "map", dtype=torch.float32)
    path = post.save(tmp_path / "run.nc")
    back = brn.load(path)
    assert (back.fit_dtype, back.fit_device) == ("float32", "cpu")
    with h5py.File(path, "r") as handle:
        assert json.loads(handle.attrs["bayesresnet_fit_dtype"]) == "float32"
        assert json.loads(handle.attrs["bayesresnet_fit_device"]) == "cpu"
    groups = inference_groups(post, predictive=False, prior=False)
    for group in groups.values():
        assert (group.attrs["fit_dtype"], group.attrs["fit_device"]) == ("float32", "cpu")


def _with_fit_settings(post: brn.Posterior, **settings: str) -> brn.Posterior:
    """``post`` as if fitted with other ``fit_dtype`` / ``fit_device``."""
    return brn.Posterior(model=post.model, draws=post.draws, stats=post.stats,
                         method=post.method, x_scaler=post.x_scaler, y_scaler=post.y_scaler,
                         seed=post.seed, fit_seconds=post.fit_seconds, x_train=post.x_train,
                         y_train=post.y_train, extra=post.extra, **settings)


def test_a_gpu_run_loads_as_such_on_a_machine_without_one(toy, tmp_path):
    # A run fitted on a GPU records its device, and loads (on the CPU) wherever it is read.
    gpu_run = _with_fit_settings(_fit(toy, "map"), fit_dtype="float32", fit_device="cuda:1")
    back = brn.load(gpu_run.save(tmp_path / "run.nc"))
    assert (back.fit_dtype, back.fit_device) == ("float32", "cuda:1")
    np.testing.assert_array_equal(back.predict(np.zeros(3)).mean,
                                  gpu_run.predict(np.zeros(3)).mean)


def test_files_without_the_fit_settings_load_with_the_defaults(toy, tmp_path):
    path = _fit(toy, "map", dtype=torch.float32).save(tmp_path / "run.nc")
    with h5py.File(path, "a") as handle:  # as written before the settings were stored
        del handle.attrs["bayesresnet_fit_dtype"]
        del handle.attrs["bayesresnet_fit_device"]
    back = brn.load(path)
    assert (back.fit_dtype, back.fit_device) == ("float64", "cpu")
    fixture = brn.load(Path(__file__).parent / "data" / "run_arviz0.nc")  # an older file
    assert (fixture.fit_dtype, fixture.fit_device) == ("float64", "cpu")


@pytest.mark.parametrize("key, value, match", [
    ("fit_dtype", json.dumps("float16"), "fit_dtype must be one of"),
    ("fit_dtype", json.dumps(32), "fit_dtype is 32, not a name"),
    ("fit_device", json.dumps(""), "fit_device is '', not a name"),
    ("fit_device", json.dumps("x" * 65), "not a name of at most 64 characters"),
    ("fit_device", json.dumps("gpu7"), "not a device name torch understands"),
    ("fit_device", "{not json", "not valid JSON"),
])
def test_stored_fit_settings_are_checked(toy, tmp_path, key, value, match):
    path = _fit(toy, "map").save(tmp_path / "run.nc")
    with h5py.File(path, "a") as handle:
        handle.attrs[f"bayesresnet_{key}"] = value
    with pytest.raises(PosteriorFileError, match=match):
        brn.load(path)


@pytest.mark.parametrize("settings, match", [
    ({"fit_dtype": "float16"}, "fit_dtype must be one of"),
    ({"fit_dtype": torch.float32}, "fit_dtype must be one of"),
    ({"fit_device": torch.device("cpu")}, "fit_device must be a device string"),
    ({"fit_device": "gpu7"}, "not a device name torch understands"),
])
def test_posterior_checks_its_fit_settings(toy, settings, match):
    with pytest.raises(ValueError, match=match):
        _with_fit_settings(_fit(toy, "map"), **settings)
