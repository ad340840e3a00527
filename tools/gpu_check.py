"""Check ``fit(device="cuda")`` on a machine with a GPU: every method, then 128-chain samplers.

1. Fits every method (MAP, Ensemble, MeanField and LowRank with both backends, NUTS, MCLMC,
   Laplace, SWAG) on the cubic toy (20 points; ResNet width 10, depth 8, linear basis) on the
   GPU in float64 and float32, and the same fit on the CPU in float64; prints each fit's time,
   whether its draws came back as float64 CPU tensors, and how far the GPU fit's predictive
   mean is from the CPU fit's (the same seed draws the same random numbers on both, so
   deterministic methods agree to rounding and samplers stay close for short runs).
2. Runs NUTS and MCLMC with 128 chains on the GPU (float32 and float64) and on the CPU
   (float64) and prints the times.

Without a GPU it says so and exits with status 0, so it can sit in any checklist::

    python tools/gpu_check.py [--device cuda:0] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import bayesresnet as brn

METHODS: dict[str, Callable[[bool], Any]] = {
    "map": lambda q: brn.MAP(steps=100 if q else 2000),
    "ensemble": lambda q: brn.Ensemble(members=4, steps=100 if q else 2000),
    "meanfield": lambda q: brn.MeanField(steps=100 if q else 3000),
    "lowrank": lambda q: brn.LowRank(rank=4, steps=100 if q else 3000),
    "meanfield_pyro": lambda q: brn.MeanField(steps=50 if q else 1000, backend="pyro"),
    "lowrank_pyro": lambda q: brn.LowRank(rank=4, steps=50 if q else 1000, backend="pyro"),
    "nuts": lambda q: brn.NUTS(num_samples=20 if q else 200, num_warmup=20 if q else 200,
                               chains=4, max_tree_depth=6 if q else 10),
    "mclmc": lambda q: brn.MCLMC(num_samples=50 if q else 500, num_warmup=200 if q else 2000,
                                 chains=4),
    "laplace": lambda q: brn.Laplace(steps=100 if q else 2000),
    "swag": lambda q: brn.SWAG(members=2, pretrain_steps=100 if q else 2000,
                               swa_steps=100 if q else 1000),
}


def timed_fit(model: brn.BayesianResNet, x: np.ndarray, y: np.ndarray, method: Any,
              dtype: torch.dtype, device: str) -> tuple[brn.Posterior, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    post = brn.fit(model, x, y, method=method, seed=0, progress=False, check=False, dtype=dtype,
                   device=device)
    return post, time.perf_counter() - start


def check_methods(model: brn.BayesianResNet, x: np.ndarray, y: np.ndarray, device: str,
                  quick: bool) -> bool:
    grid = np.linspace(-4, 4, 50)
    ok = True
    print(f"{'method':16s} {'cpu f64 s':>9s} {'gpu f64 s':>9s} {'gpu f32 s':>9s} "
          f"{'|mean gpu64 - cpu|':>18s} {'|mean gpu32 - cpu|':>18s}  draws")
    for name, make in METHODS.items():
        try:
            cpu, t_cpu = timed_fit(model, x, y, make(quick), torch.float64, "cpu")
            g64, t64 = timed_fit(model, x, y, make(quick), torch.float64, device)
            g32, t32 = timed_fit(model, x, y, make(quick), torch.float32, device)
        except Exception:  # report every method, then fail at the end
            ok = False
            print(f"{name:16s} FAILED")
            traceback.print_exc()
            continue
        ref = cpu.predict(grid).mean
        d64 = float(np.abs(g64.predict(grid).mean - ref).max())
        d32 = float(np.abs(g32.predict(grid).mean - ref).max())
        draws_ok = all(v.dtype == torch.float64 and v.device.type == "cpu"
                       for post in (g64, g32) for v in post.draws.values())
        ok = ok and draws_ok
        print(f"{name:16s} {t_cpu:9.1f} {t64:9.1f} {t32:9.1f} {d64:18.3g} {d32:18.3g}  "
              f"{'float64 on cpu' if draws_ok else 'WRONG'} ({g32.fit_dtype}, {g32.fit_device})")
    return ok


def check_many_chains(model: brn.BayesianResNet, x: np.ndarray, y: np.ndarray, device: str,
                      quick: bool, chains: int) -> None:
    samplers = {
        "nuts": lambda: brn.NUTS(num_samples=20 if quick else 200, num_warmup=20 if quick else 200,
                                 chains=chains, max_tree_depth=6 if quick else 10),
        "mclmc": lambda: brn.MCLMC(num_samples=50 if quick else 500,
                                   num_warmup=200 if quick else 2000, chains=chains),
    }
    print(f"\n{chains} chains: seconds per fit")
    for name, make in samplers.items():
        for dtype, where in ((torch.float32, device), (torch.float64, device),
                             (torch.float64, "cpu")):
            try:
                _, seconds = timed_fit(model, x, y, make(), dtype, where)
                print(f"  {name:6s} {dtype!s:14s} {where:8s} {seconds:8.1f} s")
            except Exception as error:
                print(f"  {name:6s} {dtype!s:14s} {where:8s} FAILED: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--chains", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="short runs (a minute or two)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is available to torch on this machine "
              "(torch.cuda.is_available() is False); nothing to check.")
        return 0
    warnings.simplefilter("ignore")
    print(f"gpu_check: {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}")
    x, y = brn.data.cubic(20, seed=0)
    net = brn.ResNet(1, 1, width=10, depth=8, basis=brn.Linear())
    model = brn.BayesianResNet(net)
    ok = check_methods(model, x, y, args.device, args.quick)
    check_many_chains(model, x, y, args.device, args.quick, args.chains)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
