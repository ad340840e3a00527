"""Does ``torch.compile`` pay for the batched gradient of the log density inside NUTS?

For each problem and number of chains C, the script times one batched value-and-gradient of
``BayesianResNet.log_density`` over a (C, D) tensor, the call the vectorized NUTS backend makes
once per leapfrog step (:func:`bayesresnet.inference.nuts_kernel.value_and_grad`), with the log
density eager and wrapped in ``torch.compile`` (inductor, static shapes).

The network is the library's ``brn.ResNet``, which caches the depth-basis matrix of the Euler
grid (before that cache, ``Basis.matrix``'s input checks split the compiled program into 15
graphs; ``torch._dynamo.explain`` counts them, one means none). It also times one leapfrog step
of the kernel without the gradient (a trivial log density), to put the gradient's share in
context, and checks that compiled and eager values and gradients agree.

Reported: compile time (the first compiled call), per-call time eager and compiled, the
speed-up per leapfrog step including the kernel's own cost, and the break-even number of
leapfrog steps (compile time / time saved per step). A NUTS run of W + S iterations at tree
depth d takes about (W + S) (2**d - 1) leapfrog steps, e.g. 400 x 31 = 12400 at depth 5.

Problems: the cubic toy (width 10, depth 8, Linear basis) and UCI yacht split 0 (width 16,
depth 8, Legendre(2)), as in ``benchmarks/nuts.py``.

Run from the repository root::

    python benchmarks/compile.py [--chains 4 32] [--calls 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from bayesresnet.inference import nuts_kernel as nk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuts import REPO, Problem, make_problems  # the benchmark's shared problems

import bayesresnet as brn


def per_call(fn, calls: int) -> float:
    """Median wall seconds of one call over ``calls`` calls, in 5 blocks."""
    return per_call_interleaved({"fn": fn}, calls)["fn"]


def per_call_interleaved(fns: dict, calls: int) -> dict[str, float]:
    """Median wall seconds of one call of each function, timed in 5 interleaved blocks of
    ``calls // 5`` calls (so that load changes on a shared machine hit all alike)."""
    block = max(1, calls // 5)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(5):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(block):
                fn()
            times[name].append((time.perf_counter() - start) / block)
    return {name: sorted(t)[2] for name, t in times.items()}


def kernel_overhead(chains: int, dim: int, calls: int) -> float:
    """Seconds per leapfrog step of ``nuts_kernel.step`` on a trivial Gaussian (no model)."""
    generator = torch.Generator().manual_seed(0)

    def gauss(q: torch.Tensor) -> torch.Tensor:
        return -0.5 * (q * q).sum(-1)

    state = nk.init(torch.randn(chains, dim, dtype=torch.float64, generator=generator), gauss)
    eps = torch.full((chains,), 1e-3, dtype=torch.float64)  # tiny steps: trees hit the cap
    minv = torch.ones(chains, dim, dtype=torch.float64)
    start, steps = time.perf_counter(), 0
    while steps < calls:
        state, info = nk.step(state, gauss, eps, minv, generator, max_tree_depth=5)
        steps += int(info.num_steps.max())
    grad_cost = per_call(lambda: nk.value_and_grad(gauss, state.position), 50)
    return (time.perf_counter() - start) / steps - grad_cost


def prepare(model: brn.BayesianResNet, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
            ) -> tuple[dict[str, float], dict]:
    """Graph count, and compile time and error of the compiled log density; the callables."""
    def log_density(q: torch.Tensor) -> torch.Tensor:
        return model.log_density(q, x, y)

    log_density(z)  # fills the network's basis cache before the graphs are counted
    info = {"graphs": torch._dynamo.explain(log_density)(z).graph_count}
    torch._dynamo.reset()  # every configuration pays its own compilation
    compiled = torch.compile(log_density, dynamic=False)
    start = time.perf_counter()
    value_c, grad_c = nk.value_and_grad(compiled, z)
    info["compile"] = time.perf_counter() - start
    value_e, grad_e = nk.value_and_grad(log_density, z)
    info["rel_err"] = max(float((value_c - value_e).abs().max() / value_e.abs().max()),
                          float((grad_c - grad_e).abs().max() / grad_e.abs().max()))
    fns = {"eager": lambda: nk.value_and_grad(log_density, z),
           "compiled": lambda: nk.value_and_grad(compiled, z)}
    return info, fns


def evaluate(problem: Problem, chains: int, calls: int) -> dict[str, float]:
    x, y = problem.x, problem.y
    z = 0.3 * torch.randn(chains, problem.model.dim, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1))
    kernel = kernel_overhead(chains, problem.model.dim, calls)
    result, fns = prepare(problem.model, x, y, z)
    result.update(per_call_interleaved(fns, calls))
    saved = result["eager"] - result["compiled"]
    result["kernel"] = kernel
    result["grad_speedup"] = result["eager"] / result["compiled"]
    result["step_speedup"] = (result["eager"] + kernel) / (result["compiled"] + kernel)
    result["break_even"] = result["compile"] / saved if saved > 0 else float("inf")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--allow-cache", action="store_true",
                        help="let inductor reuse compiled code cached on disk by earlier runs")
    parser.add_argument("--problems", nargs="+", default=["cubic", "yacht"],
                        choices=["cubic", "yacht"])
    parser.add_argument("--data-root", type=Path, default=REPO / ".." / "shared" / "data" / "uci")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compile.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.allow_cache:  # a warm on-disk cache would hide the compile time
        torch._inductor.config.force_disable_caches = True

    load_start = os.getloadavg()[0]
    rows = []
    for problem in make_problems(args.data_root.resolve(), args.problems):
        for chains in args.chains:
            r = evaluate(problem, chains, args.calls)
            rows.append((problem.label, problem.model.dim, chains, r))
            print(f"{problem.label}, C={chains}: eager {1e3 * r['eager']:.2f} ms, compiled "
                  f"{1e3 * r['compiled']:.2f} ms ({r['grad_speedup']:.1f}x, compile "
                  f"{r['compile']:.0f} s, break-even {r['break_even']:.0f} steps, rel. error "
                  f"{r['rel_err']:.0e}); {r['graphs']} graph(s); kernel "
                  f"{1e3 * r['kernel']:.2f} ms/step", flush=True)
    load_end = os.getloadavg()[0]

    lines = [
        "# torch.compile for the batched gradient of the log density",
        "",
        f"`python benchmarks/compile.py --chains {' '.join(map(str, args.chains))} --calls "
        f"{args.calls} --threads {args.threads}`: one batched value-and-gradient of "
        "`BayesianResNet.log_density` over (C, D), as the vectorized NUTS backend calls it once "
        "per leapfrog step; eager vs `torch.compile` (inductor, `dynamic=False`, on-disk caches "
        "off), median of 5 interleaved blocks of calls. Graphs: number of compiled graphs "
        "(`torch._dynamo.explain`; more than one means graph breaks). Kernel: the rest of one "
        "leapfrog step of `nuts_kernel.step` (trivial log density, its gradient cost "
        "subtracted). Step speed-up = (eager + kernel) / (compiled + kernel). Break-even: "
        "leapfrog steps after which the compilation has paid for itself (a NUTS run of 4 x "
        "(100 + 100) iterations at tree depth 5 takes about 6 200 lock-step leapfrog steps, at "
        "depth 10 up to about 200 000). `NUTS(compile_after=20_000)`, the default, switches "
        "to the compiled log density after that many gradients.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, load "
        f"average {load_start:.1f} at the start and {load_end:.1f} at the end (compile times "
        f"are inflated by the load); torch {torch.__version__} with {args.threads} thread(s), "
        "float64.",
        "",
        "| problem | params | C | eager (ms) | compiled (ms) | graphs | compile (s) | "
        "gradient speed-up | kernel (ms/step) | step speed-up | break-even (steps) "
        "| max rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, dim, chains, r in rows:
        lines.append(
            f"| {label} | {dim} | {chains} | {1e3 * r['eager']:.2f} | {1e3 * r['compiled']:.2f} "
            f"| {r['graphs']} | {r['compile']:.0f} | {r['grad_speedup']:.1f} | "
            f"{1e3 * r['kernel']:.2f} | {r['step_speedup']:.1f} | {r['break_even']:.0f} | "
            f"{r['rel_err']:.0e} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
