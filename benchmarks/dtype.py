"""float32 against float64: time per gradient of the log density, and a fit's test metrics.

Issue 23's targets, on :func:`bayesresnet.data.potential` (20 000 configurations, 30 inputs) with
the surrogate benchmark's network (``benchmarks/surrogate.py``: ResNet of width 32 and depth 4,
weights quadratic in depth (Legendre basis of degree 2), tanh, Normal(0, 1) priors):

1. ``fit(..., dtype=torch.float32)`` at least 1.7x faster per gradient than float64: the value
   and gradient of ``BayesianResNet.log_density`` on all 20 000 points, for one parameter
   vector (a full-batch MAP or Laplace step) and for a batch of chains. The two dtypes are
   timed in interleaved repetitions in one process (the order alternating), so that a change
   in the machine's load hits both; the report gives the median time of each and the median,
   minimum and maximum of the per-repetition ratios.
2. Identical predictive metrics to 3 significant digits: a MAP fit (the surrogate benchmark's
   settings: 3000 Adam steps, minibatches of 256) on the first 18 000 points in each dtype,
   scored on the last 2 000 (RMSE and mean NLL in original units).

Where the ratio misses the target, ``--profile`` records where a gradient's time goes in each
dtype (torch.profiler, self CPU time per operator).

Run from the repository root (``--quick`` is a smoke test of seconds)::

    nice -n 5 python benchmarks/dtype.py [--reps 7] [--threads 1] [--profile] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bayesresnet as brn
from bayesresnet import data, metrics
from bayesresnet.data import Standardizer

REPO = Path(__file__).resolve().parents[1]
DTYPES = (torch.float64, torch.float32)
TARGET_RATIO = 1.7


def make_model(in_dim: int, quick: bool) -> brn.BayesianResNet:
    """The surrogate benchmark's network (smaller with ``quick``)."""
    width, depth = (8, 2) if quick else (32, 4)
    net = brn.ResNet(in_dim, 1, width=width, depth=depth, basis=brn.Legendre(2),
                     activation="tanh", horizon=1.0)
    return brn.BayesianResNet(net, prior=brn.priors.Normal(1.0))


def standardized(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y standardized as ``fit`` does, float64 (N, in_dim) and (N, 1)."""
    x_t = torch.as_tensor(x, dtype=torch.float64)
    y_t = torch.as_tensor(y, dtype=torch.float64).reshape(-1, 1)
    return Standardizer().fit(x_t).transform(x_t), Standardizer().fit(y_t).transform(y_t)


def gradient_step(model: brn.BayesianResNet, x: torch.Tensor, y: torch.Tensor,
                  z: torch.Tensor) -> Callable[[], None]:
    """One value-and-gradient evaluation of the log density at z (S, dim), as samplers and
    optimizers make it."""
    def step() -> None:
        point = z.detach().requires_grad_(True)
        value = model.log_density(point, x, y)
        torch.autograd.grad(value.sum(), point)
    return step


def interleaved_times(steps: dict[torch.dtype, Callable[[], None]], reps: int,
                      evals: int) -> dict[torch.dtype, list[float]]:
    """Seconds per evaluation of each step, ``reps`` interleaved repetitions of ``evals``."""
    times: dict[torch.dtype, list[float]] = {dtype: [] for dtype in steps}
    for step in steps.values():  # warm-up: allocator, caches of the depth basis
        step()
        step()
    order = list(steps)
    for rep in range(reps):
        for dtype in (order if rep % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            for _ in range(evals):
                steps[dtype]()
            times[dtype].append((time.perf_counter() - start) / evals)
    return times


def ratio_summary(times: dict[torch.dtype, list[float]]) -> dict[str, float]:
    ratios = [a / b for a, b in zip(times[torch.float64], times[torch.float32], strict=True)]
    return {"ms64": 1e3 * statistics.median(times[torch.float64]),
            "ms32": 1e3 * statistics.median(times[torch.float32]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios)}


def profile_table(step: Callable[[], None], evals: int, rows: int = 8) -> str:
    """The operators with the most self CPU time over ``evals`` evaluations."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(evals):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def fit_metrics(model: brn.BayesianResNet, x: np.ndarray, y: np.ndarray, n_train: int,
                steps: int, dtype: torch.dtype, seed: int = 0,
                round_training_data: bool = False) -> dict[str, Any]:
    """Test RMSE and NLL of a MAP fit on the first ``n_train`` points, scored on the rest.

    ``round_training_data``: the training data rounded to float32 (and fitted in ``dtype``),
    which separates the rounding of the data from that of the arithmetic.
    """
    x_train, y_train = x[:n_train], y[:n_train]
    if round_training_data:
        x_train, y_train = (a.astype(np.float32).astype(np.float64) for a in (x_train, y_train))
    start = time.perf_counter()
    post = brn.fit(model, x_train, y_train, method=brn.MAP(steps=steps), seed=seed,
                   progress=False, check=False, dtype=dtype)
    seconds = time.perf_counter() - start
    pred = post.predict(x[n_train:])
    y_test = y[n_train:]
    return {"rmse": float(metrics.rmse(pred, y_test)), "nll": float(metrics.nll(pred, y_test)),
            "seconds": seconds}


def control_reading(fits: dict[Any, dict[str, Any]]) -> list[str]:
    """Sentences comparing the float32 fit's change with the controls' (relative changes)."""
    base = fits[torch.float64]

    def change(label: Any) -> str:
        run = fits[label]
        return ", ".join(f"{key.upper()} {100 * (run[key] - base[key]) / abs(base[key]):+.2f}%"
                         for key in ("rmse", "nll"))

    rounded, seed = "float64, training data rounded to float32", "float64, seed 1"
    if rounded not in fits or seed not in fits:
        return []
    return [f"Relative to the float64 fit: float32 {change(torch.float32)}; rounding only the "
            f"training data {change(rounded)}; another seed {change(seed)}. The float32 fit "
            "follows another optimization path (the Adam steps amplify rounding differences "
            "of the gradients), and the difference it makes is small against the method's own "
            "spread over seeds.", ""]


def same_to_3_digits(a: float, b: float) -> bool:
    return f"{a:.3g}" == f"{b:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--evals", type=int, default=10, help="evaluations per repetition")
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps of the MAP fits")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dtype.md")
    args = parser.parse_args()
    if args.quick:
        args.n, args.reps, args.evals, args.steps, args.chains = 400, 3, 2, 30, [1, 2]
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    x, y = data.potential(args.n, seed=0)
    x_std, y_std = standardized(x, y)
    model = make_model(x.shape[1], args.quick)
    generator = torch.Generator().manual_seed(0)
    rows = []
    profiles = {}
    for chains in args.chains:
        z64 = 0.3 * torch.randn(chains, model.dim, generator=generator, dtype=torch.float64)
        steps = {dtype: gradient_step(model, x_std.to(dtype), y_std.to(dtype), z64.to(dtype))
                 for dtype in DTYPES}
        summary = ratio_summary(interleaved_times(steps, args.reps, args.evals))
        rows.append((chains, summary))
        print(f"chains {chains}: float64 {summary['ms64']:.1f} ms, float32 "
              f"{summary['ms32']:.1f} ms, ratio {summary['ratio']:.2f} "
              f"[{summary['ratio_min']:.2f}, {summary['ratio_max']:.2f}]", flush=True)
        if args.profile and chains == args.chains[0]:
            profiles = {dtype: profile_table(step, args.evals) for dtype, step in steps.items()}
    load_mid = os.getloadavg()

    n_train = int(0.9 * args.n)
    fits: dict[Any, dict[str, Any]] = {
        dtype: fit_metrics(model, x, y, n_train, args.steps, dtype) for dtype in DTYPES}
    # Controls: how much a float64 fit moves when only its training data are rounded to
    # float32, and when only its seed changes (the method's own run-to-run spread).
    fits["float64, training data rounded to float32"] = fit_metrics(
        model, x, y, n_train, args.steps, torch.float64, round_training_data=True)
    fits["float64, seed 1"] = fit_metrics(model, x, y, n_train, args.steps, torch.float64,
                                          seed=1)
    for label, result in fits.items():
        print(f"MAP {label}: RMSE {result['rmse']:.5g}, NLL {result['nll']:.5g}, "
              f"{result['seconds']:.0f} s", flush=True)
    load_after = os.getloadavg()
    write_report(args, model, rows, fits, profiles, (load_before, load_mid, load_after))


def write_report(args: argparse.Namespace, model: brn.BayesianResNet, rows: list, fits: dict,
                 profiles: dict, loads: tuple) -> None:
    f64, f32 = fits[torch.float64], fits[torch.float32]
    met_ratio = all(summary["ratio"] >= TARGET_RATIO for _, summary in rows)
    same = {key: same_to_3_digits(f64[key], f32[key]) for key in ("rmse", "nll")}
    net = model.net
    lines = [
        "# float32 against float64 (issue 23)",
        "",
        f"Command: `nice -n 5 python benchmarks/dtype.py"
        f"{' --quick' if args.quick else ''}{' --profile' if args.profile else ''} "
        f"--reps {args.reps} --threads {args.threads}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} intra-op thread(s). Load average (1, 5, 15 min) before, between the "
        f"two parts and after: {', '.join('/'.join(f'{v:.1f}' for v in load) for load in loads)}"
        " (the cores are shared with other jobs: absolute times are inflated and noisy; the "
        "ratios come from interleaved repetitions).",
        "",
        f"Problem: `data.potential({args.n})`, 30 inputs, standardized; network "
        f"width {net.width}, depth {net.depth}, {net.basis!r} basis, tanh, {model.dim} "
        "parameters.",
        "",
        "## Time per gradient (value and gradient of `log_density` on all points)",
        "",
        f"Median over {args.reps} interleaved repetitions of {args.evals} evaluations; ratio = "
        "float64 time / float32 time, median [min, max] over the repetitions.",
        "",
        "| parameter vectors | float64 ms | float32 ms | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for chains, summary in rows:
        lines.append(f"| {chains} | {summary['ms64']:.1f} | {summary['ms32']:.1f} | "
                     f"{summary['ratio']:.2f} [{summary['ratio_min']:.2f}, "
                     f"{summary['ratio_max']:.2f}] | "
                     f"{'met' if summary['ratio'] >= TARGET_RATIO else 'missed'} (>= 1.7) |")
    lines += [
        "",
        f"## MAP fit, {int(0.9 * args.n)} training and {args.n - int(0.9 * args.n)} test points",
        "",
        f"`MAP(steps={args.steps})` (minibatches of 256), seed 0 unless said, test metrics in "
        "original units. The last two rows are controls: a float64 fit whose training data "
        "were rounded to float32, and a float64 fit with another seed.",
        "",
        "| run | test RMSE | test NLL | fit s |",
        "|---|---|---|---|",
        *(f"| {label if isinstance(label, str) else str(label).removeprefix('torch.')} | "
          f"{result['rmse']:.5g} | {result['nll']:.5g} | {result['seconds']:.0f} |"
          for label, result in fits.items()),
        "",
        f"Same to 3 significant digits: RMSE {'yes' if same['rmse'] else 'no'} "
        f"({f64['rmse']:.3g} / {f32['rmse']:.3g}), NLL {'yes' if same['nll'] else 'no'} "
        f"({f64['nll']:.3g} / {f32['nll']:.3g}).",
        "",
        *control_reading(fits),
        "## Targets",
        "",
        f"- float32 at least 1.7x faster per gradient: **{'met' if met_ratio else 'missed'}**.",
        f"- identical predictive metrics to 3 significant digits: "
        f"**{'met' if all(same.values()) else 'missed'}**.",
    ]
    if profiles:
        lines += ["", "## Where a gradient's time goes (one parameter vector, torch.profiler)",
                  ""]
        for dtype, table in profiles.items():
            lines += [f"{dtype}:", "", "```", table.rstrip(), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
