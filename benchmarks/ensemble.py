"""Ensemble members trained together (one batched program) vs one after another.

Trains M MAP members with the same initializations and the same number of Adam steps twice:
as one (M, dim) batched optimization, and as M separate optimizations, and reports the wall
time of both, their ratio, and the largest difference between the two sets of final parameters
(which should be at rounding level: batching changes the cost, not the result).

Problems: the cubic toy (20 points) and UCI yacht split 0 (277 training points), both with a
width-10, depth-8 ResNet with a linear depth basis, full-batch gradients.

Run from the repository root::

    python benchmarks/ensemble.py [--steps 500] [--members 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import bayesresnet as brn
from bayesresnet.data import Standardizer, cubic
from bayesresnet.inference.base import seeded_generator
from bayesresnet.inference.ensemble import initial_points, train_members

REPO = Path(__file__).resolve().parents[1]


def load_yacht(root: Path, split: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs and targets of yacht split ``split``, read straight from the files."""
    folder = root / "yacht"
    data = np.loadtxt(folder / "data.txt")
    features = np.loadtxt(folder / "index_features.txt", dtype=int).reshape(-1)
    target = int(np.loadtxt(folder / "index_target.txt", dtype=int))
    rows = np.loadtxt(folder / f"index_train_{split}.txt", dtype=int).reshape(-1)
    return data[rows][:, features], data[rows, target]


def problem(x: np.ndarray, y: np.ndarray) -> tuple[brn.BayesianResNet, torch.Tensor,
                                                   torch.Tensor]:
    x_t = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
    y_t = torch.as_tensor(y, dtype=torch.float64).reshape(len(x), 1)
    x_t = Standardizer().fit(x_t).transform(x_t)
    y_t = Standardizer().fit(y_t).transform(y_t)
    net = brn.ResNet(x_t.shape[1], 1, width=10, depth=8, basis=brn.Linear())
    return brn.BayesianResNet(net), x_t, y_t


def compare(model: brn.BayesianResNet, x: torch.Tensor, y: torch.Tensor, members: int,
            steps: int, lr: float, seed: int) -> dict[str, float]:
    z0 = initial_points(model, seeded_generator(seed), members)
    train_members(model, x, y, z0, steps=5, lr=lr)  # warm up allocators and kernels

    start, cpu = time.perf_counter(), time.process_time()
    together, _, _ = train_members(model, x, y, z0, steps=steps, lr=lr)
    t_together, c_together = time.perf_counter() - start, time.process_time() - cpu

    start, cpu = time.perf_counter(), time.process_time()
    alone = torch.cat([train_members(model, x, y, z0[m:m + 1], steps=steps, lr=lr)[0]
                       for m in range(members)])
    t_alone, c_alone = time.perf_counter() - start, time.process_time() - cpu
    return {"n": x.shape[0], "dim": model.dim, "together": t_together, "alone": t_alone,
            "ratio": t_alone / t_together, "cpu_together": c_together, "cpu_alone": c_alone,
            "cpu_ratio": c_alone / c_together,
            "max_diff": (together - alone).abs().max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--data-root", type=Path, default=REPO / ".." / "shared" / "data" / "uci")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ensemble.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    problems = {
        "cubic (N=20)": problem(*cubic(20, seed=0)),
        "yacht split 0 (N=277)": problem(*load_yacht(args.data_root.resolve())),
    }
    rows = []
    for label, (model, x, y) in problems.items():
        result = compare(model, x, y, args.members, args.steps, args.lr, args.seed)
        rows.append((label, result))
        print(f"{label}: {args.members} members x {args.steps} steps, dim {result['dim']}: "
              f"together {result['together']:.2f} s, one after another {result['alone']:.2f} s, "
              f"ratio {result['ratio']:.1f}x (CPU time ratio {result['cpu_ratio']:.1f}x), "
              f"max |param difference| {result['max_diff']:.1e}")

    lines = [
        "# Ensemble members trained together vs one after another",
        "",
        f"`python benchmarks/ensemble.py --steps {args.steps} --members {args.members} "
        f"--threads {args.threads}`: {args.members} MAP members, {args.steps} full-batch Adam "
        f"steps each, lr {args.lr}, width-10 depth-8 ResNet, linear depth basis, float64, "
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}. Both runs "
        "start from the same initializations; the last column is the largest difference of "
        "the final parameters.",
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(wall times on a shared, loaded machine are noisy; process CPU times less so).",
        "",
        "| problem | params | together (s) | one after another (s) | speed-up | "
        "CPU s together / after another | CPU speed-up | max diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r['dim']} | {r['together']:.2f} | {r['alone']:.2f} | "
                     f"{r['ratio']:.1f}x | {r['cpu_together']:.2f} / {r['cpu_alone']:.2f} | "
                     f"{r['cpu_ratio']:.1f}x | {r['max_diff']:.1e} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
