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

laplace-torch cannot be installed next to torch 2.13 with its dependencies (pip would replace
torch with 2.14 and add torchvision and CUDA wheels). It and its pure-Python dependencies install
without their dependency resolution, leaving torch alone; torchvision, which laplace-torch lists
but does not import for this use, is left out (``pip check`` names it)::

    pip install --no-deps laplace-torch==0.3 asdfghjkl==0.1a4 backpack-for-pytorch==1.7.1 \\
        unfoldNd==0.2.3 curvlinops-for-pytorch==3.0.1 einops==0.8.2 einconv==0.1.0 \\
        linear_operator==0.6.1 torchmetrics==1.9.0 lightning-utilities==0.15.3

Run from the repository root::

    python benchmarks/laplace.py [--compare] [--toy] [--uci] [--threads 1]

(no part named: all three).
"""

from __future__ import annotations

import argparse
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


# ------------------------------------------------------------------------------ report
SECTIONS = ("compare", "toy", "uci")


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
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [name for name in SECTIONS if getattr(args, name)] or list(SECTIONS)
    runners = {"compare": run_compare, "toy": run_toy, "uci": run_uci}
    for name in chosen:
        body = runners[name]()
        print(body, "\n", flush=True)
        write_section(name, body)


if __name__ == "__main__":
    main()
