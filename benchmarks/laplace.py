"""Laplace approximation: agreement with laplace-torch, the cubic toy's calibration, UCI timing.

Three parts, each writing its own section of ``benchmarks/results/laplace.md`` (the others are
kept):

``--compare``
    Our network's forward wrapped as a ``torch.nn.Module`` (:class:`NetworkModule`, one
    ``nn.Parameter`` per site, at our MAP) and laplace-torch's ``Laplace(...,
    "regression", subset_of_weights="all", hessian_structure="full")`` (its default backend,
    curvlinops' GGN) fitted on the same standardized data with our fitted prior precision and
    noise scale. Its GLM predictive mean and variance at test inputs are compared with
    :func:`bayesresnet.inference.laplace.glm_predictive`; they must agree to 1e-6 relative.
    Timed: our Laplace stage (the GGN with :func:`~bayesresnet.inference.laplace.curvature_matrix`
    and the Cholesky factor of the posterior precision) beside laplace-torch's ``fit``, the two
    closed-form predictives, and our whole fit (MAP, marginal-likelihood rounds, draws).
    Problems: the cubic toy (20 points) and UCI yacht split 0.
``--toy``
    ``Laplace()`` (defaults) on ``cubic(20, seed)`` for seeds 0-4 with the demo network
    (``ResNet(1, 1, width=10, depth=8, basis="linear")``, ``priors.Normal(1.0)``, learned
    noise): coverage of 1000 fresh points (``cubic(1000, seed=seed + 1)``) by the central 95%
    predictive interval, the out-of-range epistemic ratio (mean ``epistemic_std`` at x = +-6
    over its mean on a grid of [-4, 4]), the fitted noise, diagnostics, and the fit time beside
    ``MAP()``'s (3000 Adam steps each).
``--uci``
    ``Laplace(steps=1000)`` with the UCI benchmark's network (``default_config()`` of
    ``benchmarks/uci.py``: width 16, depth 4, Legendre(2) basis, about a thousand parameters)
    on split 0 of yacht (277 training points), energy (691) and wine (1439), with its fit time
    beside ``MAP(steps=1000)``'s and the test RMSE and NLL.

``--wine``
    Why Laplace scored worse than MAP on UCI wine, and which configuration beats the published
    VI-meanfield there: on wine splits 0-4, in one process and split by split, ``MAP(steps=1000)``
    and Laplace configurations (the former UCI one, ``Laplace(steps=1000)``, and variants: no
    L-BFGS polish, the model's prior, the network's own predictive,
    several members). Test RMSE, NLL and coverage, the RMSE of member 0's network at the
    Gaussian's mean (what the GLM predictive's mean is), and CPU seconds of each ``fit``
    beside the MAP's of the same split.
``--timing``
    Where a Laplace fit's time goes, in CPU seconds (one thread; wall seconds on a shared
    machine depend on its load): ``MAP(steps=1000)``, ``Laplace(steps=1000)`` and the UCI
    configuration on splits 0-1 of wine, energy and yacht, twice each in alternating order in
    one process. The Laplace stages are timed by wrapping the module's functions: the Adam
    steps, the online marginal-likelihood updates during them, the rounds after them (evidence
    and L-BFGS polish), the final curvature, the network at the draws, and the rest.

laplace-torch cannot be installed next to torch 2.13 with its dependencies (pip would replace
torch with 2.14 and add torchvision and CUDA wheels). It and its pure-Python dependencies install
without their dependency resolution, leaving torch alone; torchvision, which laplace-torch lists
but does not import for this use, is left out (``pip check`` names it)::

    pip install --no-deps laplace-torch==0.3 asdfghjkl==0.1a4 backpack-for-pytorch==1.7.1 \\
        unfoldNd==0.2.3 curvlinops-for-pytorch==3.0.1 einops==0.8.2 einconv==0.1.0 \\
        linear_operator==0.6.1 torchmetrics==1.9.0 lightning-utilities==0.15.3

Run from the repository root::

    python benchmarks/laplace.py [--compare] [--toy] [--uci] [--wine] [--timing] [--threads 1]

(no part named: all five).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bayesresnet as brn
from bayesresnet import metrics
from bayesresnet.data import cubic
from bayesresnet.inference import laplace as laplace_module
from bayesresnet.inference.laplace import (
    Laplace,
    NetworkLayout,
    curvature_matrix,
    glm_predictive,
)
from bayesresnet.uci import uci

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "laplace.md"
DATA_ROOT = Path(os.environ.get("BAYESRESNET_DATA", REPO.parent / "shared" / "data" / "uci"))
TOLERANCE = 1e-6
TOY_SEEDS = (0, 1, 2, 3, 4)
TOY_STEPS = 3000
UCI_STEPS = 1000
UCI_SETS = (("yacht", 277), ("energy", 691), ("wine-quality-red", 1439))
WINE_SPLITS = (0, 1, 2, 3, 4)
TIMING_SPLITS = (0, 1)
# The Laplace settings of benchmarks/uci.py's full configuration.
UCI_LAPLACE = {"steps": UCI_STEPS, "members": 3, "marglik_updates": 2, "max_rounds": 0}
# (label, settings) of the --wine comparison; every one with UCI_STEPS Adam steps.
WINE_CONFIGS = (
    ("former UCI: `Laplace(steps=1000)`", {}),
    ("no polish (`max_rounds=0`)", {"max_rounds": 0}),
    ("model's prior and MAP noise (`'fixed'`)", {"prior_scale": "fixed", "noise_scale": "fixed"}),
    ("network at the draws (`predictive='mc'`)", {"predictive": "mc"}),
    ("2 members, 2 updates, no polish", {"members": 2, "marglik_updates": 2, "max_rounds": 0}),
    ("3 members, 2 updates, polish", {"members": 3, "marglik_updates": 2, "max_rounds": 1}),
    ("UCI: 3 members, 2 updates, no polish", {"members": 3, "marglik_updates": 2,
                                              "max_rounds": 0}),
)


def demo_model() -> brn.BayesianResNet:
    """The demo network of the cubic toy (251 network parameters and the noise)."""
    net = brn.ResNet(1, 1, width=10, depth=8, basis="linear")
    return brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                              likelihood=brn.likelihoods.Gaussian())


def uci_model(in_dim: int) -> brn.BayesianResNet:
    """The UCI benchmark's network, built by ``benchmarks/uci.py`` itself."""
    spec = importlib.util.spec_from_file_location("uci_benchmark",
                                                  REPO / "benchmarks" / "uci.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model(module.default_config(), in_dim, "ensemble")


# ------------------------------------------------------------------------------ laplace-torch
def laplace_torch() -> Any:
    """laplace-torch's package ``laplace``, not this script (whose folder Python puts first on
    ``sys.path`` when it runs the script, so ``import laplace`` would find it)."""
    here = str(Path(__file__).resolve().parent)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != here]
    try:
        return importlib.import_module("laplace")
    finally:
        sys.path[:] = saved


class NetworkModule(torch.nn.Module):
    """A model's network at fixed parameters as a ``torch.nn.Module`` (for laplace-torch).

    One ``nn.Parameter`` per network site, registered in the model's site order, so that
    laplace-torch's flattened parameter vector is laid out as ours (``NetworkLayout``).
    """

    def __init__(self, model: brn.BayesianResNet, theta: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.layout = NetworkLayout.of(model)
        self.names = list(self.layout.names)
        for name, value in self.layout.values(theta.detach().clone()).items():
            self.register_parameter(name, torch.nn.Parameter(value.clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {name: getattr(self, name) for name in self.names}
        # Under no_grad the network takes an in-place branch (out= products) that forward-mode
        # AD, which laplace-torch's GGN backend uses, does not support.
        with torch.enable_grad():
            return self.model.net.forward(self.model.net_params(values), x)


def compare_problem(label: str, model: brn.BayesianResNet, x: np.ndarray, y: np.ndarray,
                    x_test: np.ndarray, steps: int) -> dict[str, Any]:
    """Our Laplace and laplace-torch's on one problem; see the module docstring."""
    TorchLaplace = laplace_torch().Laplace

    start = time.perf_counter()
    post = brn.fit(model, x, y, method=Laplace(steps=steps), seed=0, progress=False,
                   check=False)
    fit_seconds = time.perf_counter() - start
    theta = post.extra["theta_map"][0].to(torch.float64)
    noise = float(post.extra["noise"][0, 0])
    precision = post.extra["prior_precision"][0].to(torch.float64)
    x_std = post.x_scaler.transform(torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1))
    y_std = post.y_scaler.transform(torch.as_tensor(y, dtype=torch.float64).reshape(len(x), 1))

    # Our Laplace stage at the same MAP, prior and noise: the GGN and the precision's factor.
    start = time.perf_counter()
    ggn = curvature_matrix(model, theta, x_std, y_std, "ggn")[0]
    torch.linalg.cholesky(ggn / noise**2 + torch.diag(precision))
    ours_stage = time.perf_counter() - start

    module = NetworkModule(model, theta)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_std, y_std),
                                         batch_size=len(x_std))
    prior = precision[0] if bool((precision == precision[0]).all()) else precision
    # curvlinops builds the GGN from an identity in torch's default dtype: in float32 its GGN
    # is accurate to about 1e-8 only, which the precision's condition number (about 1e5 here)
    # turns into 1e-4 to 1e-2 in the variances. laplace-torch runs in float64 as we do.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        la = TorchLaplace(module, "regression", subset_of_weights="all",
                          hessian_structure="full", sigma_noise=noise, prior_precision=prior)
        start = time.perf_counter()
        la.fit(loader, progress_bar=False)
        theirs_stage = time.perf_counter() - start
        x_test_std = post.x_scaler.transform(
            torch.as_tensor(x_test, dtype=torch.float64).reshape(len(x_test), -1))
        start = time.perf_counter()
        with torch.no_grad():
            f_mu, f_var = la(x_test_std, pred_type="glm")
        theirs_predict = time.perf_counter() - start
    finally:
        torch.set_default_dtype(default_dtype)

    start = time.perf_counter()
    mean, var = glm_predictive(post, x_test)
    ours_predict = time.perf_counter() - start
    scale = float(post.y_scaler.inverse_scale(torch.ones(1, dtype=torch.float64))[0])
    their_mean = post.y_scaler.inverse_transform(f_mu.detach().to(torch.float64)).numpy()
    their_var = (f_var.detach().to(torch.float64).reshape(len(x_test), -1) * scale**2).numpy()
    mean_rel = float(np.abs(mean - their_mean).max() / np.abs(their_mean).max())
    var_rel = float((np.abs(var - their_var) / np.abs(their_var)).max())
    return {"problem": label, "points": len(x), "params": NetworkLayout.of(model).size,
            "mean_rel": mean_rel, "var_rel": var_rel, "ours_stage": ours_stage,
            "theirs_stage": theirs_stage, "ours_predict": ours_predict,
            "theirs_predict": theirs_predict, "test_points": len(x_test),
            "fit_seconds": fit_seconds, "noise": noise, "prior_precision": float(prior.mean()),
            "agree": mean_rel <= TOLERANCE and var_rel <= TOLERANCE}


def run_compare() -> str:
    rows = []
    x, y = cubic(20, seed=0)
    x_test = np.linspace(-6.0, 6.0, 121)[:, None]
    rows.append(compare_problem("cubic toy, seed 0", demo_model(), x, y, x_test, TOY_STEPS))
    x_tr, y_tr, x_te, _ = uci("yacht", 0, DATA_ROOT)
    rows.append(compare_problem("yacht split 0", uci_model(x_tr.shape[1]), x_tr, y_tr, x_te,
                                UCI_STEPS))
    lines = [
        "## Agreement with laplace-torch (`--compare`)",
        "",
        "laplace-torch 0.3 `Laplace(module, 'regression', subset_of_weights='all', "
        "hessian_structure='full')` (curvlinops GGN backend) on our network wrapped as an "
        "`nn.Module` at our MAP, with our fitted prior precision and noise (`sigma_noise`), in "
        "float64 (torch's default dtype set to float64 for it: curvlinops builds the GGN from an "
        "identity in the default dtype, and in float32 the variances differ by 3e-4 on the toy "
        "and 4e-2 on yacht through the precision's conditioning); its "
        "`pred_type='glm'` predictive against `glm_predictive`. Relative differences: means, "
        "max |ours - theirs| / max |theirs|; variances, max elementwise |ours - theirs| / theirs. "
        "Times in seconds: the Laplace stage at a given MAP (ours: GGN by `curvature_matrix` "
        "and the Cholesky factor of the precision; theirs: `la.fit`), the closed-form predictive "
        "at the test inputs, and our whole `fit` (MAP, marginal-likelihood rounds, 500 draws).",
        "",
        "| problem | N | P | test points | mean rel. diff | var rel. diff | agree (1e-6) "
        "| Laplace stage ours / laplace-torch (s) | predictive ours / laplace-torch (s) "
        "| our whole fit (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['points']} | {r['params']} | {r['test_points']} "
            f"| {r['mean_rel']:.1e} | {r['var_rel']:.1e} | {'yes' if r['agree'] else 'NO'} "
            f"| {r['ours_stage']:.3f} / {r['theirs_stage']:.3f} "
            f"| {r['ours_predict']:.3f} / {r['theirs_predict']:.3f} | {r['fit_seconds']:.1f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ toy
def run_toy() -> str:
    rows = []
    grid = np.linspace(-4.0, 4.0, 101)[:, None]
    outside = np.array([[-6.0], [6.0]])
    for seed in TOY_SEEDS:
        x, y = cubic(20, seed=seed)
        start = time.perf_counter()
        brn.fit(demo_model(), x, y, method=brn.MAP(steps=TOY_STEPS), seed=seed, progress=False,
                check=False)
        map_seconds = time.perf_counter() - start
        start = time.perf_counter()
        post = brn.fit(demo_model(), x, y, method=Laplace(steps=TOY_STEPS), seed=seed,
                       progress=False, check=False)
        laplace_seconds = time.perf_counter() - start
        x_new, y_new = cubic(1000, seed=seed + 1)
        lower, upper = post.predict(x_new).interval(0.95)
        coverage = float(np.mean((y_new >= lower[:, 0]) & (y_new <= upper[:, 0])))
        ratio = float(post.predict(outside).epistemic_std.mean()
                      / post.predict(grid).epistemic_std.mean())
        diag = post.diagnose()
        noise = float(post.y_scaler.inverse_scale(post.extra["noise"][0]).reshape(-1)[0])
        realized = float(np.std(y - x[:, 0] ** 3))
        rows.append({"seed": seed, "coverage": coverage, "ratio": ratio, "noise": noise,
                     "realized": realized, "map": map_seconds, "laplace": laplace_seconds,
                     "rounds": int(post.stats["rounds"][0]),
                     "khat": float(diag.details.get("khat", np.nan)),
                     "network_khat": float(diag.details.get("network_khat", np.nan)),
                     "ok": diag.ok})
    mean_cov = float(np.mean([r["coverage"] for r in rows]))
    min_ratio = float(np.min([r["ratio"] for r in rows]))
    lines = [
        "## Cubic toy, seeds 0-4 (`--toy`)",
        "",
        "`Laplace()` (GGN, GLM predictive, prior and noise by marginal likelihood, 3000 Adam "
        "steps) on `cubic(20, seed)`, demo network (width 10, depth 8, linear basis, "
        "`priors.Normal(1.0)`, learned noise). Coverage: fresh points `cubic(1000, seed + 1)` in "
        "the central 95% predictive interval. Ratio: mean `epistemic_std` at x = +-6 over its "
        "mean on 101 points of [-4, 4]. Noise: fitted noise scale (original units; generating "
        "noise 3) beside the realized noise of the 20 training points (SD of y - x^3). k-hat: "
        "PSIS against the linearized network (the check) and against the network itself (a "
        "note). Times in seconds: `MAP(steps=3000)` and `Laplace()`, each a whole `fit`.",
        "",
        "| seed | coverage | ratio | noise | realized noise | rounds | k-hat (linearized / "
        "network) | diagnostics | MAP (s) | Laplace (s) | Laplace / MAP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['coverage']:.3f} | {r['ratio']:.1f} | {r['noise']:.2f} "
            f"| {r['realized']:.2f} | {r['rounds']} | {r['khat']:.2f} / {r['network_khat']:.1f} "
            f"| {'pass' if r['ok'] else 'FAIL'} | {r['map']:.1f} | {r['laplace']:.1f} "
            f"| {r['laplace'] / r['map']:.2f} |")
    lines += ["", f"Mean coverage {mean_cov:.3f} (target >= 0.90: "
              f"{'met' if mean_cov >= 0.90 else 'NOT met'}); smallest ratio {min_ratio:.1f} "
              f"(target >= 3 on every seed: {'met' if min_ratio >= 3 else 'NOT met'})."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ UCI
def run_uci() -> str:
    rows = []
    for name, _ in UCI_SETS:
        x_tr, y_tr, x_te, y_te = uci(name, 0, DATA_ROOT)
        start = time.perf_counter()
        brn.fit(uci_model(x_tr.shape[1]), x_tr, y_tr, method=brn.MAP(steps=UCI_STEPS), seed=0,
                progress=False, check=False)
        map_seconds = time.perf_counter() - start
        model = uci_model(x_tr.shape[1])
        start = time.perf_counter()
        post = brn.fit(model, x_tr, y_tr, method=Laplace(steps=UCI_STEPS), seed=0,
                       progress=False, check=False)
        laplace_seconds = time.perf_counter() - start
        pred = post.predict(x_te)
        diag = post.diagnose()
        rows.append({"name": name, "n": len(x_tr), "p": NetworkLayout.of(model).size,
                     "map": map_seconds, "laplace": laplace_seconds,
                     "rounds": int(post.stats["rounds"][0]), "rmse": metrics.rmse(pred, y_te),
                     "decrement": float(post.stats["newton_decrement"][0]),
                     "nll": metrics.nll(pred, y_te), "ok": diag.ok,
                     "failed": ", ".join(diag.failed)})
    lines = [
        "## UCI split 0 (`--uci`)",
        "",
        "`Laplace(steps=1000)` with the UCI benchmark's network (`benchmarks/uci.py`: width 16, "
        "depth 4, Legendre(2) basis, `priors.Normal(1.0)`, learned noise) beside "
        "`MAP(steps=1000)`, each a whole `fit` of split 0, seed 0; test RMSE and NLL in "
        "original units (one split: an indication only; the UCI runs come later). Decrement: "
        "the Newton decrement at the Gaussian's mean, its distance from the mode of the "
        "linearized network in posterior standard deviations; where it is large (small noise, "
        "a narrow posterior, a MAP not converged at its resolution), PSIS k-hat against the "
        "linearized network fails.",
        "",
        "| data set | N | P | MAP (s) | Laplace (s) | Laplace / MAP | rounds | RMSE | NLL "
        "| decrement | diagnostics |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = "pass" if r["ok"] else f"FAIL ({r['failed']})"
        lines.append(f"| {r['name']} | {r['n']} | {r['p']} | {r['map']:.1f} "
                     f"| {r['laplace']:.1f} | {r['laplace'] / r['map']:.2f} | {r['rounds']} "
                     f"| {r['rmse']:.3f} | {r['nll']:.3f} | {r['decrement']:.1f} | {status} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ wine
def _cpu_fit(model: brn.BayesianResNet, x: np.ndarray, y: np.ndarray, method: Any,
             seed: int) -> tuple[Any, float]:
    """A ``fit`` and its CPU seconds (one thread: unlike wall seconds, nearly independent of
    the load of a shared machine)."""
    start = time.process_time()
    post = brn.fit(model, x, y, method=method, seed=seed, progress=False, check=False)
    return post, time.process_time() - start


def network_rmse(post: Any, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test RMSE (original units) of member 0's network at its Gaussian's mean, the mean of
    the member's GLM predictive."""
    model = post.model
    layout = NetworkLayout.of(model)
    x_std = post.x_scaler.transform(
        torch.as_tensor(x_test, dtype=torch.float64).reshape(len(x_test), -1))
    theta = post.extra["theta_map"][0].to(torch.float64)
    with torch.no_grad():
        out = model.net.forward(model.net_params(layout.values(theta)), x_std)
    pred = post.y_scaler.inverse_transform(out).numpy().reshape(-1)
    return float(np.sqrt(np.mean((pred - np.asarray(y_test).reshape(-1)) ** 2)))


def _warm_up() -> None:
    """One short fit of each kind first, so that no timed fit pays the process's first-call
    costs."""
    x_tr, y_tr, _, _ = uci("yacht", 0, DATA_ROOT)
    for method in (brn.MAP(steps=10), Laplace(steps=10, num_draws=10)):
        _cpu_fit(uci_model(x_tr.shape[1]), x_tr, y_tr, method, 0)


def run_wine() -> str:
    _warm_up()
    labels = ["`MAP(steps=1000)`"] + [label for label, _ in WINE_CONFIGS]
    rows: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    loads = []
    for split in WINE_SPLITS:
        x_tr, y_tr, x_te, y_te = uci("wine-quality-red", split, DATA_ROOT)
        loads.append(os.getloadavg()[0])
        post, map_cpu = _cpu_fit(uci_model(x_tr.shape[1]), x_tr, y_tr,
                                 brn.MAP(steps=UCI_STEPS), split)
        pred = post.predict(x_te)
        rows[labels[0]].append({"rmse": metrics.rmse(pred, y_te), "nll": metrics.nll(pred, y_te),
                                "cov": metrics.coverage(pred, y_te, 0.95),
                                "net": metrics.rmse(pred, y_te), "cpu": map_cpu, "ratio": 1.0})
        for label, settings in WINE_CONFIGS:
            method = Laplace(**{"steps": UCI_STEPS, **settings})
            post, cpu = _cpu_fit(uci_model(x_tr.shape[1]), x_tr, y_tr, method, split)
            pred = post.predict(x_te)
            rows[label].append({"rmse": metrics.rmse(pred, y_te),
                                "nll": metrics.nll(pred, y_te),
                                "cov": metrics.coverage(pred, y_te, 0.95),
                                "net": network_rmse(post, x_te, y_te), "cpu": cpu,
                                "ratio": cpu / map_cpu})
        print(f"wine split {split} done", flush=True)
    polished, adam = rows[WINE_CONFIGS[0][0]], rows[WINE_CONFIGS[1][0]]
    lines = [
        "## Laplace on UCI wine: configurations (`--wine`)",
        "",
        f"Wine (`wine-quality-red`) splits {WINE_SPLITS[0]}-{WINE_SPLITS[-1]}, the UCI "
        "benchmark's network and seeds (split i, seed i), every fit with 1000 Adam steps unless "
        "said, run split by split in one process. Means over the splits of test RMSE, NLL and "
        "95% coverage (original units); `net RMSE`: member 0's network at its Gaussian's mean "
        "(the mean of its GLM predictive; for one member the reported RMSE). CPU: seconds of "
        "`fit` (one thread), and its ratio to the same split's MAP fit, averaged over the "
        "splits. Published VI-meanfield (the target): RMSE 0.63, NLL 0.96. Load average "
        f"(1 min) at the starts of the splits: {min(loads):.1f}-{max(loads):.1f} on 2 cores.",
        "",
        "| configuration | RMSE | NLL | 95% cov. | net RMSE | CPU (s) | CPU / MAP | beats 0.63 "
        "/ 0.96 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        values = rows[label]
        mean = {key: float(np.mean([v[key] for v in values])) for key in values[0]}
        beats = "yes" if mean["rmse"] < 0.63 and mean["nll"] < 0.96 else "no"
        lines.append(f"| {label} | {mean['rmse']:.4f} | {mean['nll']:.4f} | {mean['cov']:.3f} "
                     f"| {mean['net']:.4f} | {mean['cpu']:.2f} | {mean['ratio']:.2f} "
                     f"| {beats} |")
    lines += [
        "",
        "Per split, test RMSE of the MAP, of the Laplace mean after Adam (no polish) and after "
        "the L-BFGS polish of the former configuration (same seed, same Adam run):",
        "",
        "| split | MAP | Laplace, Adam's point | Laplace, polished |",
        "|---|---|---|---|",
    ]
    for k, split in enumerate(WINE_SPLITS):
        lines.append(f"| {split} | {rows[labels[0]][k]['rmse']:.4f} | {adam[k]['net']:.4f} "
                     f"| {polished[k]['net']:.4f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ timing
@contextlib.contextmanager
def stage_timers(times: dict[str, float]) -> Any:
    """CPU seconds of the Laplace module's stages while inside: ``adam`` (the whole Adam run),
    ``update`` (the curvature and evidence fits called from Adam's callback, part of
    ``adam``), and the top-level calls after Adam of ``_local_model``, ``_tune``, ``_polish``
    and ``_log_joint`` (calls nested in another timed call count for the outer one)."""
    names = ("adam_maximize", "_local_model", "_tune", "_polish", "_log_joint")
    saved = {name: getattr(laplace_module, name) for name in names}
    state = {"depth": 0, "adam": False}

    def wrap(name: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            state["depth"] += 1
            state["adam"] = state["adam"] or name == "adam_maximize"
            try:
                return function(*args, **kwargs)
            finally:
                state["depth"] -= 1
                elapsed = time.process_time() - start
                if name == "adam_maximize":
                    state["adam"] = False
                    key = "adam"
                elif state["adam"]:
                    key = "update" if state["depth"] == 1 else None
                else:
                    key = name.strip("_") if state["depth"] == 0 else None
                if key is not None:
                    times[key] = times.get(key, 0.0) + elapsed
        return timed

    for name in names:
        setattr(laplace_module, name, wrap(name, saved[name]))
    try:
        yield times
    finally:
        for name in names:
            setattr(laplace_module, name, saved[name])


def run_timing() -> str:
    _warm_up()
    configs = (("map", None), ("former", {"steps": UCI_STEPS}), ("uci", UCI_LAPLACE))
    records = []
    loads = []
    for name, _ in UCI_SETS:
        for split in TIMING_SPLITS:
            x_tr, y_tr, _, _ = uci(name, split, DATA_ROOT)
            for rep in range(2):
                loads.append(os.getloadavg()[0])
                for label, settings in (configs if rep == 0 else configs[::-1]):
                    method = brn.MAP(steps=UCI_STEPS) if settings is None else Laplace(**settings)
                    times: dict[str, float] = {}
                    wall = time.perf_counter()
                    with stage_timers(times):
                        _, cpu = _cpu_fit(uci_model(x_tr.shape[1]), x_tr, y_tr, method, split)
                    records.append({"data": name, "split": split, "rep": rep, "config": label,
                                    "cpu": cpu, "wall": time.perf_counter() - wall, **times})
            print(f"timing {name} split {split} done", flush=True)
    lines = [
        "## Where the fit time goes (`--timing`)",
        "",
        f"CPU seconds of `fit` (one thread), mean over splits {TIMING_SPLITS[0]}-"
        f"{TIMING_SPLITS[-1]} and two repetitions in alternating order, all in one process: "
        "`MAP(steps=1000)`, the former UCI Laplace `Laplace(steps=1000)` (10 marginal-likelihood "
        "updates during Adam, one round of evidence fit and L-BFGS polish after it) and the UCI "
        "configuration `Laplace(steps=1000, members=3, marglik_updates=2, max_rounds=0)` (three "
        "members in one batched Adam run). Stages: Adam steps (without the updates), the "
        "updates (a Jacobian, the GGN and its eigenvalues, then the evidence fit, per member), "
        "after Adam the curvature (`_local_model`: per round and the final one with "
        "eigenvectors), the evidence fits, the polish, the network's log joint at the 500 draws "
        "per member, and the rest (draws, predictive-free bookkeeping, `fit`'s own). "
        "Ratios: mean over (split, repetition) pairs of Laplace / MAP; wall-clock ratios "
        "beside them. Load average (1 min) during the runs: "
        f"{min(loads):.1f}-{max(loads):.1f} on 2 cores.",
        "",
        "| data set | configuration | CPU (s) | Adam steps | updates | curvature after | "
        "evidence fits after | polish | log joint at draws | rest | CPU / MAP | wall / MAP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, _ in UCI_SETS:
        mine = [r for r in records if r["data"] == name]
        maps = {(r["split"], r["rep"]): r for r in mine if r["config"] == "map"}
        for label, _ in configs:
            rows = [r for r in mine if r["config"] == label]
            cpu = float(np.mean([r["cpu"] for r in rows]))
            if label == "map":
                lines.append(f"| {name} | `MAP(steps=1000)` | {cpu:.2f} | | | | | | | | 1 | 1 |")
                continue

            def mean(key: str, rows: list[dict[str, Any]] = rows) -> float:
                return float(np.mean([r.get(key, 0.0) for r in rows]))

            steps = mean("adam") - mean("update")
            rest = cpu - mean("adam") - mean("local_model") - mean("tune") - mean("polish") \
                - mean("log_joint")
            ratio = float(np.mean([r["cpu"] / maps[r["split"], r["rep"]]["cpu"] for r in rows]))
            wall = float(np.mean([r["wall"] / maps[r["split"], r["rep"]]["wall"] for r in rows]))
            title = "former UCI" if label == "former" else "UCI (3 members)"
            lines.append(f"| {name} | {title} | {cpu:.2f} | {steps:.2f} | {mean('update'):.2f} "
                         f"| {mean('local_model'):.2f} | {mean('tune'):.2f} "
                         f"| {mean('polish'):.2f} | {mean('log_joint'):.2f} | {rest:.2f} "
                         f"| {ratio:.2f} | {wall:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ report
SECTIONS = ("compare", "toy", "uci", "wine", "timing")


def write_section(key: str, body: str) -> None:
    """Replace (or add) section ``key`` of the results file, keeping the others."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    found = {}
    for name in SECTIONS:
        match = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->\n", text, re.S)
        if match:
            found[name] = match.group(1)
    found[key] = body.rstrip() + "\n"
    head = ("# Laplace approximation\n\nWritten by `python benchmarks/laplace.py` "
            "(see its docstring). Machine: " + f"{platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"{os.cpu_count()} cores shared with other jobs.\n\n")
    parts = [f"<!-- {name} -->\n{found[name]}<!-- /{name} -->\n" for name in SECTIONS
             if name in found]
    RESULTS.write_text(head + "\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", action="store_true", help="agreement with laplace-torch")
    parser.add_argument("--toy", action="store_true", help="cubic toy, seeds 0-4")
    parser.add_argument("--uci", action="store_true", help="UCI split 0 timing")
    parser.add_argument("--wine", action="store_true", help="configurations on UCI wine")
    parser.add_argument("--timing", action="store_true", help="fit-time decomposition")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [name for name in SECTIONS if getattr(args, name)] or list(SECTIONS)
    runners = {"compare": run_compare, "toy": run_toy, "uci": run_uci, "wine": run_wine,
               "timing": run_timing}
    for name in chosen:
        body = runners[name]()
        print(body, "\n", flush=True)
        write_section(name, body)


if __name__ == "__main__":
    main()
