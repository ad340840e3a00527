"""Batched posterior predictive vs Pyro's ``Predictive`` over the same 1000 draws.

The draws: 1000 draws of every site from the prior of the model (the cost of a predictive does
not depend on where the draws come from). Contenders:

* ``Posterior.predict(x_test)`` (ours): one batched forward over all draws, then the predictive
  mean and standard deviation in original units;
* Pyro's ``Predictive(model, posterior_samples=...)`` on the model as a Pyro user writes it
  (``PyroUserResNet`` of ``benchmarks/nuts.py``: ``nn.Linear`` layers with ``PyroSample``
  priors), with its default ``parallel=False``, then the same mean and standard deviation of the
  returned ``obs`` draws. (``parallel=True`` does not apply to that model: ``nn.Linear`` does not
  take a batch of weight matrices.)
* For reference, ``Predictive(..., parallel=True)`` on our ``BayesianResNet``, which is itself a
  Pyro model written for batched sites.

Before timing, the script asserts that the user model's network output (``_RETURN``) equals our
predictive draws for a subset of the draws.

Problems: the cubic toy (width 10, depth 8, Linear basis; 100 test inputs on [-6, 6]) and UCI
yacht split 0 (width 16, depth 8, Legendre(2); its 31 test inputs).

Run from the repository root::

    python benchmarks/predict.py [--draws 1000] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

import bayesresnet as brn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuts import (  # the benchmark's shared problem and user model
    REPO,
    PyroUserResNet,
    make_problems,
    to_user_sites,
)


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Best wall time and best process CPU time of ``repeats`` calls, and the last result."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best, best_cpu, result


def compare(problem: Any, x_test: np.ndarray, draws: int, repeats: int, seed: int
            ) -> dict[str, Any]:
    model = problem.model
    prior = model.sample_prior(seed, (1, draws))
    x_raw = torch.as_tensor(problem.x_raw, dtype=torch.float64).reshape(len(problem.x_raw), -1)
    y_raw = torch.as_tensor(problem.y_raw, dtype=torch.float64).reshape(-1, 1)
    x_scaler = brn.data.Standardizer().fit(x_raw)
    y_scaler = brn.data.Standardizer().fit(y_raw)
    post = brn.Posterior(model=model, draws=prior, stats={}, method=brn.NUTS(),
                         x_scaler=x_scaler, y_scaler=y_scaler, seed=seed, fit_seconds=0.0,
                         x_train=x_raw.numpy(), y_train=y_raw.numpy())
    x_std = x_scaler.transform(torch.as_tensor(x_test, dtype=torch.float64))
    flat = {k: v[0] for k, v in prior.items()}  # (draws, *site_shape)
    user = PyroUserResNet(x_std.shape[1], problem.net.width, problem.net.depth, problem.phi)
    user_samples = to_user_sites(flat)

    # The two models give the same network output for the same draws.
    subset = {k: v[:20] for k, v in user_samples.items()}
    theirs = pyro.infer.Predictive(user, posterior_samples=subset,
                                   return_sites=["_RETURN"])(x_std)["_RETURN"]
    with torch.no_grad():
        loc, _ = model.loc_scale({k: v[:20] for k, v in flat.items()}, x_std)
    diff = float((theirs - loc[..., 0]).abs().max())
    assert diff < 1e-9, f"{problem.label}: user model and ours differ by {diff}"

    def ours() -> tuple[np.ndarray, np.ndarray]:
        pred = post.predict(x_test)
        return pred.mean[:, 0], pred.std[:, 0]

    def pyro_user() -> tuple[np.ndarray, np.ndarray]:
        obs = pyro.infer.Predictive(user, posterior_samples=user_samples)(x_std)["obs"]
        obs = y_scaler.inverse_transform(obs.unsqueeze(-1))[..., 0]
        return obs.mean(0).numpy(), obs.std(0).numpy()

    def pyro_ours_parallel() -> tuple[np.ndarray, np.ndarray]:
        obs = pyro.infer.Predictive(model, posterior_samples=flat, parallel=True)(x_std)["obs"]
        obs = y_scaler.inverse_transform(obs)
        return obs.mean(0)[:, 0].numpy(), obs.std(0)[:, 0].numpy()

    pyro.set_rng_seed(seed)
    ours()  # warm-up of allocators
    t_ours, c_ours, (mean_ours, std_ours) = best_time(ours, repeats)
    t_user, c_user, (mean_user, _) = best_time(pyro_user, 1)
    t_par, _, _ = best_time(pyro_ours_parallel, repeats)
    # The predictive draws differ only by the observation noise: means agree to within a few
    # standard errors std / sqrt(draws).
    z = np.abs(mean_ours - mean_user) / (std_ours / np.sqrt(draws))
    return {"n_test": len(x_test), "ours": t_ours, "pyro_user": t_user, "pyro_parallel": t_par,
            "ratio": t_user / t_ours, "cpu_ours": c_ours, "cpu_user": c_user,
            "cpu_ratio": c_user / c_ours, "ratio_parallel": t_par / t_ours, "max_z": float(z.max()),
            "check": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many (ours)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data-root", type=Path, default=REPO / ".." / "shared" / "data" / "uci")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predict.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cubic, yacht = make_problems(args.data_root.resolve(), ["cubic", "yacht"])
    x_yacht_test = brn.data.uci("yacht", 0, root=args.data_root.resolve())[2]
    cases = [(cubic, np.linspace(-6.0, 6.0, 100)[:, None]), (yacht, x_yacht_test)]
    load_start = os.getloadavg()[0]
    rows = []
    for problem, x_test in cases:
        r = compare(problem, x_test, args.draws, args.repeats, args.seed)
        rows.append((problem.label, problem.model.dim, r))
        print(f"{problem.label}: {args.draws} draws at {r['n_test']} inputs: ours "
              f"{1000 * r['ours']:.1f} ms, Pyro Predictive (user model) {1000 * r['pyro_user']:.0f}"
              f" ms, ratio {r['ratio']:.0f}x (CPU time {r['cpu_ratio']:.0f}x); "
              f"Predictive(parallel=True) on BayesianResNet "
              f"{1000 * r['pyro_parallel']:.1f} ms ({r['ratio_parallel']:.1f}x); max |mean diff| "
              f"/ MC s.e. {r['max_z']:.1f}", flush=True)
    load_end = os.getloadavg()[0]

    lines = [
        "# Batched posterior predictive vs Pyro's Predictive",
        "",
        f"`python benchmarks/predict.py --draws {args.draws} --repeats {args.repeats} "
        f"--threads {args.threads}`: predictive mean and standard deviation at the test inputs "
        f"from {args.draws} draws (from the prior; the cost does not depend on the draws), in "
        "original units. Ours: `Posterior.predict` (best of "
        f"{args.repeats}). Pyro: `Predictive(model, posterior_samples=...)` on the model as a "
        "Pyro user writes it (`PyroUserResNet` in `benchmarks/nuts.py`, default "
        "`parallel=False`, one run), then mean and std of the `obs` draws. Last columns: "
        "`Predictive(parallel=True)` on our `BayesianResNet` (a Pyro model written for batched "
        "sites), best of "
        f"{args.repeats}. Check: the user model's `_RETURN` equals our network output for the "
        "same draws (largest difference in the table); the predictive means of ours and "
        "Pyro's agree within a few Monte Carlo standard errors (max |z|).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, load "
        f"average {load_start:.1f} at the start and {load_end:.1f} at the end; torch "
        f"{torch.__version__} with {args.threads} thread(s), pyro {pyro.__version__}, float64. "
        "Wall times on a loaded machine are inflated (ours, memory-bound, more than Pyro's "
        "Python loop); process CPU times less so.",
        "",
        "| problem | params | test inputs | ours (ms) | Pyro Predictive, user model (ms) | "
        "speed-up | CPU s ours / Pyro | CPU speed-up | Predictive(parallel=True) on ours (ms) | "
        "speed-up | output check | max z |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, dim, r in rows:
        lines.append(f"| {label} | {dim} | {r['n_test']} | {1000 * r['ours']:.1f} | "
                     f"{1000 * r['pyro_user']:.0f} | {r['ratio']:.0f}x | "
                     f"{r['cpu_ours']:.2f} / {r['cpu_user']:.2f} | {r['cpu_ratio']:.0f}x | "
                     f"{1000 * r['pyro_parallel']:.1f} | {r['ratio_parallel']:.1f}x | "
                     f"{r['check']:.0e} | {r['max_z']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
