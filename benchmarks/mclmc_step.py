"""What one MCLMC step costs, eager and compiled, on the benchmark networks.

One step of :func:`bayesresnet.inference.mclmc_kernel.advance` (the minimal-norm integrator:
two batched gradients of ``BayesianResNet.log_density``, three exact velocity updates, the
finiteness guard and the partial refresh) over C chains, timed seven ways:

``eager``
    Everything eager, gradients by autograd (``MCLMC(compile_after=None)``).
``compiled density``
    The log density compiled with ``torch.compile``, the rest eager: what ``MCLMC`` did before
    the whole step was compiled.
``compiled density, C++ wrapper``
    The same with inductor's ``cpp_wrapper`` and only the guards on the arguments
    (``compilation.compile_fresh(..., guard_arguments_only=True)``): what NUTS's
    ``compile_after`` does on the CPU.
``compiled step``
    The whole step, with ``torch.func`` gradients, compiled into one program (inductor,
    ``dynamic=False``, ``fullgraph=True``), kernels called from Python.
``compiled step, C++ wrapper``
    The same with inductor's ``cpp_wrapper``, all of Dynamo's guards checked at each call.
``compiled step, C++ wrapper, argument guards``
    The same with only the guards on the step's arguments and torch's global state: what
    ``MCLMC(compile_after=...)`` uses on the CPU.
``... argument guards, einsum basis``
    The same, traced with the basis expansion of the weights and biases as ``einsum`` (a
    batched matrix product, forward and backward) instead of the broadcast product that
    ``resnet.combine_basis`` writes inside compiled code: the step before that change.

Reported per configuration: milliseconds per step (median of 5 interleaved blocks), compile
time (first call, on-disk caches off), the break-even number of steps against eager, and the
largest relative difference of the step's output from the eager step's.

Run from the repository root::

    python benchmarks/mclmc_step.py [--chains 4 32] [--problems cubic yacht] [--calls 500]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from pathlib import Path

import torch

from bayesresnet import resnet
from bayesresnet.inference import compilation, mclmc_kernel
from bayesresnet.inference.integrator import functional_value_and_grad, value_and_grad
from bayesresnet.inference.mclmc_kernel import Parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compile import per_call_interleaved  # the benchmarks' shared timer
from nuts import REPO, make_problems  # the benchmarks' shared problems

WAYS = ("eager", "compiled density", "compiled density, C++ wrapper", "compiled step",
        "compiled step, C++ wrapper", "compiled step, C++ wrapper, argument guards",
        "... argument guards, einsum basis")


def einsum_basis(phi: torch.Tensor, coef: torch.Tensor, event_dims: int) -> torch.Tensor:
    """``resnet.combine_basis`` as it was: einsum, compiled or not."""
    times, event = "mn"[:phi.dim() - 1], "ij"[:event_dims]
    return torch.einsum(f"{times}k,...k{event}->...{times}{event}", phi, coef)


def step_functions(model, x: torch.Tensor, y: torch.Tensor, chains: int
                   ) -> tuple[dict, dict[str, float], dict[str, float]]:
    """The ways (:data:`WAYS`) of taking one step from the same state; compile times; errors."""
    def log_density(z: torch.Tensor) -> torch.Tensor:
        return model.log_density(z, x, y)

    generator = torch.Generator().manual_seed(0)
    z = 0.3 * torch.randn(chains, model.dim, dtype=torch.float64, generator=generator)
    state = mclmc_kernel.init(log_density, z, generator)  # eager first: fills the model's caches
    ones = torch.ones(chains, dtype=torch.float64)
    params = Parameters(0.01 * ones, ones, torch.ones_like(z))
    noise = mclmc_kernel.refresh_noise(state.velocity, generator)

    def eager_step(gradient_fn):
        return lambda: mclmc_kernel.advance(gradient_fn, state, params, noise)

    def whole_step(s, p, n):
        return mclmc_kernel.advance(functional_value_and_grad(log_density), s, p, n)

    compiled_density = compilation.compile_fresh(log_density)
    compiled_density_cpp = compilation.compile_fresh(log_density, cpp_wrapper=True,
                                                     guard_arguments_only=True)
    python_wrapper = compilation.compile_fresh(whole_step, fullgraph=True)
    cpp_wrapper = compilation.compile_fresh(whole_step, fullgraph=True, cpp_wrapper=True)
    argument_guards = compilation.compile_fresh(whole_step, fullgraph=True, cpp_wrapper=True,
                                                guard_arguments_only=True)
    einsum_guards = compilation.compile_fresh(whole_step, fullgraph=True, cpp_wrapper=True,
                                              guard_arguments_only=True)
    fns = {
        "eager": eager_step(functools.partial(value_and_grad, log_density)),
        "compiled density": eager_step(functools.partial(value_and_grad, compiled_density)),
        "compiled density, C++ wrapper": eager_step(
            functools.partial(value_and_grad, compiled_density_cpp)),
        "compiled step": lambda: python_wrapper(state, params, noise),
        "compiled step, C++ wrapper": lambda: cpp_wrapper(state, params, noise),
        "compiled step, C++ wrapper, argument guards": lambda: argument_guards(state, params,
                                                                               noise),
        "... argument guards, einsum basis": lambda: einsum_guards(state, params, noise),
    }
    reference, _ = fns["eager"]()
    compile_seconds, errors = {"eager": 0.0}, {"eager": 0.0}
    for way in WAYS[1:]:
        start = time.perf_counter()
        if way == "... argument guards, einsum basis":  # traced (first call) with the old sum
            library_sum, resnet.combine_basis = resnet.combine_basis, einsum_basis
            try:
                out, _ = fns[way]()
            finally:
                resnet.combine_basis = library_sum
        else:
            out, _ = fns[way]()
        compile_seconds[way] = time.perf_counter() - start
        errors[way] = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
                          for a, b in zip(out, reference, strict=True))
    return fns, compile_seconds, errors


def noise_draw_times(chains: list[int], dims: set[int], calls: int
                     ) -> dict[tuple[int, int], tuple[float, float]]:
    """Seconds per draw of the refresh noise, single and double precision, per (dim, C)."""
    generator = torch.Generator().manual_seed(0)
    out = {}
    for dim in dims:
        for count in chains:
            times = per_call_interleaved({
                dtype: functools.partial(torch.randn, (count, dim), generator=generator,
                                         dtype=dtype)
                for dtype in (torch.float32, torch.float64)}, calls)
            out[dim, count] = (times[torch.float32], times[torch.float64])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--calls", type=int, default=500, help="timed steps per way")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--problems", nargs="+", default=["cubic", "yacht"],
                        choices=["cubic", "yacht"])
    parser.add_argument("--data-root", type=Path, default=REPO / ".." / "shared" / "data" / "uci")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "mclmc_step.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch._inductor.config.force_disable_caches = True  # a warm cache would hide compile time

    load_start = os.getloadavg()[0]
    rows = []
    problems = make_problems(args.data_root.resolve(), args.problems)
    for problem in problems:
        for chains in args.chains:
            fns, compile_seconds, errors = step_functions(problem.model, problem.x, problem.y,
                                                          chains)
            times = per_call_interleaved(fns, args.calls)
            rows.append((problem.label, problem.model.dim, chains, times, compile_seconds,
                         errors))
            print(f"{problem.label}, C={chains}: " + "; ".join(
                f"{way} {1e3 * times[way]:.3f} ms" for way in WAYS), flush=True)
    noise = noise_draw_times(args.chains, {problem.model.dim for problem in problems},
                             args.calls)
    load_end = os.getloadavg()[0]

    lines = [
        "# One MCLMC step, eager and compiled",
        "",
        f"`python benchmarks/mclmc_step.py --chains {' '.join(map(str, args.chains))} --problems "
        f"{' '.join(args.problems)} --calls {args.calls} --threads {args.threads}`: one "
        "minimal-norm step (two batched gradients) of `mclmc_kernel.advance` over C chains; "
        "the ways are described in the script's docstring. ms: median of 5 interleaved blocks. "
        "Compile: seconds of the first call (on-disk caches off). Break-even: steps after which "
        "the compilation has paid for itself against the eager step. Error: largest relative "
        "difference of the step's output from the eager step's.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, load "
        f"average {load_start:.1f} at the start and {load_end:.1f} at the end; torch "
        f"{torch.__version__} with {args.threads} thread(s), float64.",
        "",
        "The refresh noise, drawn eagerly before each step and not in the times above, in "
        "microseconds per step (median of 5 interleaved blocks): " + "; ".join(
            f"{dim} parameters, C={chains}: {1e6 * single:.1f} in float32 (`refresh_noise` "
            f"now), {1e6 * double:.1f} in float64 (before)"
            for (dim, chains), (single, double) in sorted(noise.items())) + ".",
        "",
        "| problem | params | C | way | ms per step | speed-up | compile (s) | break-even "
        "(steps) | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, dim, chains, times, compile_seconds, errors in rows:
        for way in WAYS:
            saved = times["eager"] - times[way]
            even = "" if way == "eager" else (
                f"{compile_seconds[way] / saved:.0f}" if saved > 0 else "never")
            lines.append(
                f"| {label} | {dim} | {chains} | {way} | {1e3 * times[way]:.3f} | "
                f"{times['eager'] / times[way]:.1f}x | "
                f"{'' if way == 'eager' else f'{compile_seconds[way]:.0f}'} | {even} | "
                f"{'' if way == 'eager' else f'{errors[way]:.0e}'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
