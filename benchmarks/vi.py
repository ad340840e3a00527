"""Variational inference: the flat backend vs Pyro's SVI, the same family and settings.

Runs ``MeanField`` and ``LowRank`` with ``backend="flat"`` and ``backend="pyro"`` on the same
model, data, seed and number of steps, in one process, and reports the milliseconds per step,
their ratio, and the mean ELBO over the last 10% of steps (the two backends optimize the same
objective; after a short run neither has converged, so they agree only roughly).

Problems: the cubic toy (20 points; width 10, depth 8, linear basis) and UCI yacht split 0
(277 training points; width 16, depth 4, weights constant in depth, the UCI benchmark's
mean-field network), standardized as ``fit`` does.

Run from the repository root::

    python benchmarks/vi.py [--steps 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import bayesresnet as brn
from bayesresnet.data import Standardizer, cubic
from bayesresnet.uci import uci

REPO = Path(__file__).resolve().parents[1]


def standardized(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x_t = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
    y_t = torch.as_tensor(y, dtype=torch.float64).reshape(len(x), 1)
    return Standardizer().fit(x_t).transform(x_t), Standardizer().fit(y_t).transform(y_t)


def time_run(method, model, x, y) -> tuple[float, float]:
    """Milliseconds per step of one run (draws included, 10 of them) and its final ELBO."""
    start = time.perf_counter()
    result = method.run(model, x, y, 0, False)
    seconds = time.perf_counter() - start
    elbo = result.stats["elbo"]
    return 1e3 * seconds / len(elbo), float(elbo[-max(1, len(elbo) // 10):].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--particles", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data-root", type=Path, default=REPO / ".." / "shared" / "data" / "uci")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "vi.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x_yacht, y_yacht, _, _ = uci("yacht", 0, args.data_root.resolve())
    problems = {
        "cubic (N=20)": (brn.ResNet(1, 1, width=10, depth=8, basis=brn.Linear()),
                         standardized(*cubic(20, seed=0))),
        "yacht split 0 (N=277)": (brn.ResNet(6, 1, width=16, depth=4, basis=brn.Constant()),
                                  standardized(x_yacht, y_yacht)),
    }
    rows = []
    for label, (net, (x, y)) in problems.items():
        model = brn.BayesianResNet(net)
        for name, cls in (("MeanField", brn.MeanField), ("LowRank", brn.LowRank)):
            timed = {backend: time_run(cls(steps=args.steps, num_particles=args.particles,
                                           num_draws=10, backend=backend), model, x, y)
                     for backend in ("pyro", "flat")}
            (pyro_ms, pyro_elbo), (flat_ms, flat_elbo) = timed["pyro"], timed["flat"]
            rows.append((label, model.dim, name, pyro_ms, flat_ms, pyro_elbo, flat_elbo))
            print(f"{label} {name}: Pyro {pyro_ms:.2f} ms/step, flat {flat_ms:.2f} ms/step, "
                  f"{pyro_ms / flat_ms:.1f}x; final ELBO {pyro_elbo:.1f} / {flat_elbo:.1f}")

    lines = [
        "# Variational inference: flat backend vs Pyro's SVI",
        "",
        f"`python benchmarks/vi.py --steps {args.steps} --threads {args.threads}`: "
        f"{args.steps} steps with {args.particles} particles, seed 0, default learning rate and "
        f"initial scale, float64, torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.machine()}; times include drawing 10 samples. Load average at the end: "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "| problem | params | method | Pyro (ms/step) | flat (ms/step) | speed-up | "
        "final ELBO Pyro / flat |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, dim, name, pyro_ms, flat_ms, pyro_elbo, flat_elbo in rows:
        lines.append(f"| {label} | {dim} | {name} | {pyro_ms:.2f} | {flat_ms:.2f} | "
                     f"{pyro_ms / flat_ms:.1f}x | {pyro_elbo:.1f} / {flat_elbo:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
