"""Does ``torch.compile`` pay for the batched gradient of the log density inside NUTS?

For each problem and number of chains C, the script times one batched value-and-gradient of
``BayesianResNet.log_density`` over a (C, D) tensor, the call the vectorized NUTS backend makes
once per leapfrog step (:func:`bayesresnet.inference.nuts_kernel.value_and_grad`), with the log
density eager and wrapped in ``torch.compile`` (inductor, static shapes).

Two versions of the network are timed. "as is": ``brn.ResNet``, whose forward recomputes the
depth-basis matrix on every call through ``Basis.matrix``, including its input checks
(``if not torch.isfinite(times).all(): raise``); those data-dependent branches split the
compiled program into 15 graphs (``torch._dynamo.explain``) and cost host synchronizations in
eager mode too. "precomputed basis": :class:`PrecomputedBasisResNet`, the same network and
density with the basis matrix on the Euler grid computed once (the change this benchmark
evaluates for ``resnet.py``). Compiling the as-is network is slow and gains nothing, so it is
timed only with ``--compile-as-is``. It also times one
leapfrog step of the kernel without the gradient (a trivial log density), to put the gradient's
share in context, and checks that compiled and eager values and gradients agree.

Reported: compile time (the first compiled call), per-call time eager and compiled, the
speed-up per leapfrog step including the kernel's own cost, and the break-even number of
leapfrog steps (compile time / time saved per step). A NUTS run of W + S iterations at tree
depth d takes about (W + S) (2**d - 1) leapfrog steps, e.g. 400 x 31 = 12400 at depth 5.

Problems: the cubic toy (width 10, depth 8, Linear basis) and UCI yacht split 0 (width 16,
depth 8, Legendre(2)), as in ``benchmarks/nuts.py``.

Run from the repository root::

    python benchmarks/compile.py [--chains 4 32] [--calls 200] [--threads 1] [--compile-as-is]
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


class PrecomputedBasisResNet(brn.ResNet):
    """``brn.ResNet`` with the basis matrix of the Euler grid computed once per dtype."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._phi: dict[torch.dtype, torch.Tensor] = {}

    def layer_weights(self, params, times=None):
        if times is not None:
            return super().layer_weights(params, times)
        coef_w, coef_b = params["W_coef"], params["b_coef"]
        phi = self._phi.get(coef_w.dtype)
        if phi is None:
            phi = self._phi[coef_w.dtype] = self.basis.matrix(
                self.layer_times(), self.depth, self.horizon, dtype=coef_w.dtype)
        return (torch.einsum("mk,...kij->...mij", phi, coef_w),
                torch.einsum("mk,...ki->...mi", phi, coef_b))


def precomputed_model(net: brn.ResNet) -> brn.BayesianResNet:
    copy = PrecomputedBasisResNet(net.in_dim, net.out_dim, net.width, net.depth, net.basis,
                                  net.activation, net.horizon)
    return brn.BayesianResNet(copy)


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


def prepare(model: brn.BayesianResNet, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
            compile_it: bool) -> tuple[dict[str, float], dict]:
    """Graph count, and compile time and error of the compiled log density; the callables."""
    def log_density(q: torch.Tensor) -> torch.Tensor:
        return model.log_density(q, x, y)

    log_density(z)  # fills the precomputed basis cache before the graphs are counted
    info = {"graphs": torch._dynamo.explain(log_density)(z).graph_count}
    fns = {"eager": lambda: nk.value_and_grad(log_density, z)}
    if compile_it:
        torch._dynamo.reset()  # every configuration pays its own compilation
        compiled = torch.compile(log_density, dynamic=False)
        start = time.perf_counter()
        value_c, grad_c = nk.value_and_grad(compiled, z)
        info["compile"] = time.perf_counter() - start
        value_e, grad_e = nk.value_and_grad(log_density, z)
        info["rel_err"] = max(float((value_c - value_e).abs().max() / value_e.abs().max()),
                              float((grad_c - grad_e).abs().max() / grad_e.abs().max()))
        fns["compiled"] = lambda: nk.value_and_grad(compiled, z)
    return info, fns


def evaluate(problem: Problem, chains: int, calls: int, compile_as_is: bool
             ) -> dict[str, dict[str, float]]:
    x, y = problem.x, problem.y
    z = 0.3 * torch.randn(chains, problem.model.dim, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1))
    kernel = kernel_overhead(chains, problem.model.dim, calls)
    variants = {"as is": (problem.model, compile_as_is),
                "precomputed basis": (precomputed_model(problem.net), True)}
    result, timed = {}, {}
    for variant, (model, compile_it) in variants.items():
        result[variant], fns = prepare(model, x, y, z, compile_it)
        timed.update({(variant, kind): fn for kind, fn in fns.items()})
    for (variant, kind), seconds in per_call_interleaved(timed, calls).items():
        result[variant][kind] = seconds
    for r in result.values():
        r["kernel"] = kernel
        if "compiled" in r:
            saved = r["eager"] - r["compiled"]
            r["grad_speedup"] = r["eager"] / r["compiled"]
            r["step_speedup"] = (r["eager"] + kernel) / (r["compiled"] + kernel)
            r["break_even"] = r["compile"] / saved if saved > 0 else float("inf")
    # Per leapfrog step: the compiled, precomputed-basis gradient against the library as it is.
    best = result["precomputed basis"]
    best["vs_as_is"] = (result["as is"]["eager"] + kernel) / (best["compiled"] + kernel)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--compile-as-is", action="store_true",
                        help="also compile the unmodified network (slow; gains nothing)")
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
            result = evaluate(problem, chains, args.calls, args.compile_as_is)
            for variant, r in result.items():
                rows.append((problem.label, problem.model.dim, chains, variant, r))
                text = f"{problem.label}, C={chains}, {variant}: eager {1e3 * r['eager']:.2f} ms"
                if "compiled" in r:
                    text += (f", compiled {1e3 * r['compiled']:.2f} ms ({r['grad_speedup']:.1f}x,"
                             f" compile {r['compile']:.0f} s, break-even "
                             f"{r['break_even']:.0f} steps, rel. error {r['rel_err']:.0e})")
                if "vs_as_is" in r:
                    text += f"; per leapfrog step vs eager as is {r['vs_as_is']:.1f}x"
                text += f"; {r['graphs']} graph(s); kernel {1e3 * r['kernel']:.2f} ms/step"
                print(text, flush=True)
    load_end = os.getloadavg()[0]

    def cell(r: dict[str, float], key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    lines = [
        "# torch.compile for the batched gradient of the log density",
        "",
        f"`python benchmarks/compile.py --chains {' '.join(map(str, args.chains))} --calls "
        f"{args.calls} --threads {args.threads}{' --compile-as-is' if args.compile_as_is else ''}"
        "`: one batched value-and-gradient of `BayesianResNet.log_density` over (C, D), as the "
        "vectorized NUTS backend calls it once per leapfrog step; eager vs `torch.compile` "
        "(inductor, `dynamic=False`, on-disk caches off), median of 5 interleaved blocks of "
        "calls. Variants: the network as is "
        "(`brn.ResNet`, basis matrix recomputed and validated in every forward) and with the "
        "basis matrix precomputed (`PrecomputedBasisResNet` in the script, the proposed change). "
        "Graphs: number of compiled graphs (`torch._dynamo.explain`; more than one means graph "
        "breaks). Kernel: the rest of one leapfrog step of `nuts_kernel.step` (trivial log "
        "density, its gradient cost subtracted). Step speed-up = (eager + kernel) / (compiled + "
        "kernel); vs as is: (eager as is + kernel) / (compiled precomputed + kernel). Break-even: "
        "leapfrog steps after which the compilation has paid for itself (a NUTS run of 4 x "
        "(100 + 100) iterations at tree depth 5 takes about 6 200 lock-step leapfrog steps, at "
        "depth 10 up to about 200 000).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, load "
        f"average {load_start:.1f} at the start and {load_end:.1f} at the end (compile times "
        f"are inflated by the load); torch {torch.__version__} with {args.threads} thread(s), "
        "float64.",
        "",
        "| problem | params | C | variant | eager (ms) | compiled (ms) | graphs | compile (s) | "
        "gradient speed-up | kernel (ms/step) | step speed-up | vs as is | break-even (steps) "
        "| max rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, dim, chains, variant, r in rows:
        lines.append(
            f"| {label} | {dim} | {chains} | {variant} | {1e3 * r['eager']:.2f} | "
            f"{1e3 * r['compiled']:.2f} | " if "compiled" in r else
            f"| {label} | {dim} | {chains} | {variant} | {1e3 * r['eager']:.2f} | - | ")
        lines[-1] += (f"{cell(r, 'graphs', 'd')} | {cell(r, 'compile', '.0f')} | "
                      f"{cell(r, 'grad_speedup', '.1f')} | {1e3 * r['kernel']:.2f} | "
                      f"{cell(r, 'step_speedup', '.1f')} | {cell(r, 'vs_as_is', '.1f')} | "
                      f"{cell(r, 'break_even', '.0f')} | {cell(r, 'rel_err', '.0e')} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
