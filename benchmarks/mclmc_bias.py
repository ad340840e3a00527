"""How biased is MCLMC at a given energy error? On a Gaussian, and against NUTS on the demo.

MCLMC has no Metropolis test: its step size is tuned so that the energy error of a step has a
set variance per dimension (``desired_energy_variance``), and ``diagnose()`` fails a run whose
sampling steps' mean squared energy error per dimension exceeds
:data:`bayesresnet.inference.mclmc.ENERGY_VARIANCE_LIMIT`. This script measures what that
figure costs in bias, two ways.

Gaussian: 64 chains on a 100-dimensional standard normal with fixed step sizes (L = 10, no
tuning, 6000 steps, the first 500 dropped): the mean squared energy error per dimension against
the relative error of the sample variance, averaged over coordinates and chains.

Demo: the posterior of the demo problem (``benchmarks/sampling.py``'s ``cubic``) sampled by our
NUTS at settings where every one of its checks passes, as the reference.

For each run ``TARGET:STEPS`` it fits ``MCLMC(desired_energy_variance=TARGET)`` (4 chains,
20 000 tuning and STEPS sampling steps, every step compiled, 1000 draws kept per chain),
records every step's energy error, and
compares the mean and standard deviation of the 21 summaries (f at 20 inputs on [-4, 4] and the
noise) with the reference's: z = difference / its Monte Carlo standard error (ArviZ's ESS for
the mean and for the sd, of both runs). For an unbiased sampler the 21 z of the means and of the
sds are roughly standard normal, so |z| > 3 is rare (about 0.3% each).

Energy error, per chain over the sampling steps: the mean of dE^2 / D (what the check reads),
its median, and the share of that mean carried by the largest 0.1% of the steps.

Run from the repository root (one thread; the reference takes about 10-20 minutes)::

    python benchmarks/mclmc_bias.py [--runs 5e-4:120000 1e-4:120000 1e-4:200000]
    python benchmarks/mclmc_bias.py --reference-values ref.npy   # reuse a saved reference
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sampling  # the benchmarks' shared problems and contenders

import bayesresnet as brn
from bayesresnet.arviz_compat import draws_dataset, ess
from bayesresnet.inference import mclmc_kernel
from bayesresnet.inference.mclmc import ENERGY_VARIANCE_LIMIT

REPO = Path(__file__).resolve().parent.parent
REFERENCE = {"num_samples": 300, "num_warmup": 300, "chains": 8, "max_tree_depth": 12,
             "target_accept": 0.9, "init": "network", "compile_after": 0}
"""Our NUTS at settings where all its checks pass on the demo problem."""


def moments(values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean, sd and their Monte Carlo standard errors of each summary, values (chain, draw, Q)."""
    flat = values.reshape(-1, values.shape[-1])
    mean, sd = flat.mean(0), flat.std(0)
    data = draws_dataset({f"q{j}": values[..., j] for j in range(values.shape[-1])})
    ess_mean = np.array([float(ess(data, method="mean")[f"q{j}"])
                         for j in range(values.shape[-1])])
    ess_sd = np.array([float(ess(data, method="sd")[f"q{j}"]) for j in range(values.shape[-1])])
    return mean, sd, sd / np.sqrt(ess_mean), sd / np.sqrt(2 * ess_sd)


def compare(values: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """z of the differences in mean and sd, and sd ratios, against the reference."""
    mean, sd, se_mean, se_sd = moments(values)
    ref_mean, ref_sd, ref_se_mean, ref_se_sd = moments(reference)
    return {"z_mean": (mean - ref_mean) / np.hypot(se_mean, ref_se_mean),
            "z_sd": (sd - ref_sd) / np.hypot(se_sd, ref_se_sd), "sd_ratio": sd / ref_sd}


def energy_figures(errors: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    """Per chain: mean and median of dE^2 / D, and the share of the mean from the top 0.1%."""
    per_dim = errors ** 2 / dim  # (steps, chains)
    ordered = np.sort(per_dim, axis=0)[::-1]
    top = max(1, ordered.shape[0] // 1000)
    return {"mean": per_dim.mean(0), "median": np.median(per_dim, 0),
            "top_share": ordered[:top].sum(0) / np.maximum(ordered.sum(0), 1e-300)}


def gaussian_bias(step_sizes: list[float], dim: int = 100, chains: int = 64,
                  steps: int = 6000, burn: int = 500) -> list[tuple[float, float, float]]:
    """(step size, mean dE^2 / D, relative error of the variance) on a standard Gaussian."""
    def log_density(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z * z).sum(-1)

    rows = []
    for step_size in step_sizes:
        generator = torch.Generator().manual_seed(0)
        state = mclmc_kernel.init(log_density, torch.randn(chains, dim, generator=generator,
                                                           dtype=torch.float64), generator)
        ones = torch.ones(chains, dtype=torch.float64)
        params = mclmc_kernel.Parameters(step_size * ones, dim ** 0.5 * ones,
                                         torch.ones(chains, dim, dtype=torch.float64))
        step = mclmc_kernel.Stepper(log_density, generator)
        squared_error, second_moment = 0.0, torch.zeros(dim, dtype=torch.float64)
        for i in range(steps):
            state, info = step(state, params)
            if i >= burn:
                squared_error += float((info.energy_change ** 2).mean())
                second_moment += (state.position ** 2).mean(0)
        kept = steps - burn
        rows.append((step_size, squared_error / kept / dim,
                     float((second_moment / kept).mean()) - 1.0))
    return rows


def run_mclmc(bench: sampling.Bench, target: float, tune: int, steps: int, thinning: int
              ) -> tuple[np.ndarray, np.ndarray, float, brn.Posterior]:
    """Summaries (chain, draw, 21), the sampling steps' energy errors (steps, chains), wall s."""
    method = brn.MCLMC(num_samples=steps // thinning, thinning=thinning, num_warmup=tune,
                       chains=4, compile_after=0, desired_energy_variance=target)
    errors = []
    original = mclmc_kernel.Stepper.__call__

    def recording(self, state, params):
        new, info = original(self, state, params)
        errors.append(info.energy_change.detach().clone())
        return new, info

    mclmc_kernel.Stepper.__call__ = recording
    try:
        start = time.perf_counter()
        post = brn.fit(bench.problem.model, bench.problem.x_raw, bench.problem.y_raw,
                       method=method, seed=0, progress=False, check=False)
        seconds = time.perf_counter() - start
    finally:
        mclmc_kernel.Stepper.__call__ = original
    sampled = torch.stack(errors[-steps:]).numpy()
    return sampling.nuts_bench.summaries(bench.problem, post.draws), sampled, seconds, post


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["5e-4:120000", "1e-4:120000",
                                                       "1e-4:200000"],
                        help="MCLMC runs as TARGET:SAMPLING_STEPS")
    parser.add_argument("--gaussian-step-sizes", type=float, nargs="+",
                        default=[4.0, 8.0, 12.0, 16.0, 20.0])
    parser.add_argument("--tune", type=int, default=20_000)
    parser.add_argument("--reference-values", type=Path,
                        help="a .npy of the reference's summaries saved by an earlier run")
    parser.add_argument("--reference-label", default=None,
                        help="how the loaded reference was made, for the report")
    parser.add_argument("--save-reference", type=Path, help="save the reference's summaries")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "mclmc_bias.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = sampling.make_bench("cubic")
    load = [os.getloadavg()[0]]
    gaussian = gaussian_bias(args.gaussian_step_sizes)
    for step_size, energy, bias in gaussian:
        print(f"Gaussian, step {step_size:g}: energy {energy:.2g}, variance {bias:+.4f}",
              flush=True)
    if args.reference_values is not None:
        reference = np.load(args.reference_values)
        reference_text = args.reference_label or f"summaries loaded from `{args.reference_values}`"
    else:
        run = sampling.run_nuts(bench, dict(REFERENCE), 0)
        reference = sampling.nuts_bench.summaries(bench.problem, run.posterior.draws)
        reference_text = (f"our NUTS ({sampling._settings_text(REFERENCE)}), {run.seconds:.0f} "
                          f"s, `diagnose()` {'passed' if run.own_ok else 'FAILED: '}"
                          f"{', '.join(run.own_failed)}")
        print(reference_text, flush=True)
        if args.save_reference is not None:
            np.save(args.save_reference, reference)
    rows = []
    for spec in args.runs:
        target, steps = float(spec.split(":")[0]), int(spec.split(":")[1])
        values, errors, seconds, post = run_mclmc(bench, target, args.tune, steps,
                                                  steps // 1000)
        diagnostics = post.diagnose()
        rows.append((target, steps, compare(values, reference),
                     energy_figures(errors, bench.problem.model.dim), seconds, diagnostics))
        load.append(os.getloadavg()[0])
        print(f"target {target:g}, {steps} steps: {seconds:.0f} s, diagnose ok {diagnostics.ok}",
              flush=True)

    lines = [
        "# MCLMC's bias and its energy error",
        "",
        "## A 100-dimensional standard Gaussian",
        "",
        "64 chains, fixed step sizes, L = 10, 6000 steps (the first 500 dropped); energy: mean "
        "squared energy error per dimension; bias: relative error of the variance (mean over "
        "coordinates). `diagnose()` accepts at most "
        f"{ENERGY_VARIANCE_LIMIT:g}.",
        "",
        "| step size | energy | variance bias |",
        "|---|---|---|",
        *[f"| {step:g} | {energy:.2g} | {bias:+.1%} |" for step, energy, bias in gaussian],
        "",
        "## Against a NUTS reference on the demo problem",
        "",
        f"`python benchmarks/mclmc_bias.py --runs {' '.join(args.runs)} --tune {args.tune}` "
        "(4 chains, 1000 draws kept per chain; see the "
        f"script's docstring). Reference: {reference_text}. Machine: {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (load {min(load):.1f}-{max(load):.1f}), "
        f"torch {torch.__version__}, one thread, float64.",
        "",
        "z: difference from the reference over its Monte Carlo standard error, for the mean and "
        "the sd of each of the 21 summaries (f at 20 inputs, the noise); |z| > 3 about 0.3% "
        "of the time for an unbiased sampler. Energy: dE^2 / D over the sampling steps, the "
        f"worst chain's mean (the figure `diagnose()` checks against {ENERGY_VARIANCE_LIMIT:g}), "
        "the "
        "median over chains of the per-chain median, and the largest share of a chain's mean "
        "carried by its top 0.1% of steps.",
        "",
        "| target | sampling steps | energy mean (worst chain) | energy median | top 0.1% share "
        "| energy check | max abs z, mean | max abs z, sd | abs z > 3 (mean, sd) "
        "| sd ratio f (median, range) | sd ratio noise | diagnose() | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, steps, cmp, energy, seconds, diagnostics in rows:
        ratio_f = cmp["sd_ratio"][:-1]
        energy_ok = "pass" if energy["mean"].max() <= ENERGY_VARIANCE_LIMIT else "FAIL"
        lines.append(
            f"| {target:g} | {steps} | {energy['mean'].max():.2g} "
            f"({energy['mean'].max() / target:.0f} x target) | "
            f"{np.median(energy['median']):.1g} | {energy['top_share'].max():.2f} | "
            f"{energy_ok} | {np.abs(cmp['z_mean']).max():.1f} | {np.abs(cmp['z_sd']).max():.1f} "
            f"| {int((np.abs(cmp['z_mean']) > 3).sum())}, {int((np.abs(cmp['z_sd']) > 3).sum())}"
            f" | {np.median(ratio_f):.2f} ({ratio_f.min():.2f}-{ratio_f.max():.2f}) | "
            f"{cmp['sd_ratio'][-1]:.2f} | "
            f"{'pass' if diagnostics.ok else 'FAIL: ' + ', '.join(diagnostics.failed)} | "
            f"{seconds:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
