"""Uncertainty on small data: the cubic toy with 20 points, seeds 0-4, one row per method.

Problem (the demo's): ``brn.data.cubic(20, seed)`` (x ~ U[-4, 4], y = x^3 + N(0, 3^2)), a
``brn.ResNet(1, 1, width=10, depth=8, basis="linear")`` with ``brn.priors.Normal(1.0)`` and a
Gaussian likelihood with learned noise, fitted with ``seed=seed``. Scores, per method and seed:

* coverage: fraction of 1000 fresh points (``cubic(1000, seed=seed + 1)``) inside the central 95%
  predictive interval;
* out-of-range ratio: mean ``epistemic_std`` at x = -6 and 6 over its mean on 81 points of
  [-4, 4] (a method that knows where it has seen no data has a ratio well above 1);
* noise: the fitted noise scale in original units (root mean square over draws), against the
  true 3;
* RMSE and NLL on the fresh points, the fit's wall time (one thread) and the ensemble
  diagnostics' LOO-PIT check (``Posterior.diagnose()``): the fraction of training points outside
  the central 95% of their leave-one-out predictive, and whether it passed.

Methods are the entries of :data:`METHODS` (a label and a factory of the method object); add a
row by adding an entry. ``--analysis`` adds the measurements behind the ensemble's noise: per
seed, the noise the training sample carries, the members' MAP noise, the effective number of
parameters of the members (trace of the linearized hat matrix), the effective-parameter noise
``sqrt(RSS / (N - gamma))``, the mode of the members' noise posterior, the residuals of exact
leave-one-out refits of every member (same start, same steps, without the point) and of their
linearized approximation, and two LOO-PIT statistics of the MAP-noise ensemble: importance
weighting of the members, and the linearized refits the diagnostics use.

Run from the repository root (about 4 minutes on one core, the analysis about 3 more)::

    python benchmarks/small_data.py --analysis
    python benchmarks/small_data.py --methods "Ensemble (defaults)" MAP --seeds 0-1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bayesresnet as brn
from bayesresnet import metrics
from bayesresnet.diagnostics import linearize
from bayesresnet.inference.base import seeded_generator
from bayesresnet.inference.ensemble import initial_points, noise_posterior
from bayesresnet.inference.optim import adam_maximize

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "small_data.md"

TRAIN_POINTS = 20
TEST_POINTS = 1000
TRUE_NOISE = 3.0
OUT_OF_RANGE = (-6.0, 6.0)
IN_RANGE = np.linspace(-4.0, 4.0, 81)
LOO_PIT_CHECK = "LOO-PIT outside central 95%"

METHODS: dict[str, Callable[[], Any]] = {
    "Ensemble (defaults)": lambda: brn.Ensemble(),
    "Ensemble (demo: 8 members, 2000 steps)": lambda: brn.Ensemble(members=8, steps=2000),
    "Ensemble, noise='posterior'": lambda: brn.Ensemble(noise="posterior"),
    "Ensemble, noise='map' (the old default)": lambda: brn.Ensemble(noise="map"),
    "Ensemble, demo, noise='map' (the old demo)": lambda: brn.Ensemble(members=8, steps=2000,
                                                                      noise="map"),
    "Anchored ensemble": lambda: brn.Ensemble(anchored=True),
    "Anchored ensemble, noise='map'": lambda: brn.Ensemble(anchored=True, noise="map"),
    "MAP": lambda: brn.MAP(),
}
"""Label -> factory of the inference method; every row of the table is one entry."""


def demo_model() -> brn.BayesianResNet:
    """The demo's network, prior and likelihood."""
    net = brn.ResNet(1, 1, width=10, depth=8, basis="linear")
    return brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                              likelihood=brn.likelihoods.Gaussian())


def score(method: Any, seed: int) -> dict[str, Any]:
    """Fit one method on ``cubic(20, seed)`` and score it (see the module docstring)."""
    x, y = brn.data.cubic(TRAIN_POINTS, seed=seed)
    x_test, y_test = brn.data.cubic(TEST_POINTS, seed=seed + 1)
    post = brn.fit(demo_model(), x, y, method=method, seed=seed, progress=False, check=False)
    pred = post.predict(x_test)
    inside = float(post.predict(IN_RANGE[:, None]).epistemic_std.mean())
    outside = float(post.predict(np.array(OUT_OF_RANGE)[:, None]).epistemic_std.mean())
    diag = post.diagnose()
    rows = diag.table
    check = rows[rows["check"] == LOO_PIT_CHECK]
    return {
        "coverage": metrics.coverage(pred, y_test, 0.95),
        "ratio": outside / inside if inside > 0 else math.nan,
        "noise": float(np.sqrt(np.mean(pred.aleatoric_std ** 2))),
        "rmse": metrics.rmse(pred, y_test),
        "nll": metrics.nll(pred, y_test),
        "seconds": post.fit_seconds,
        "loo_pit": float(check["value"].iloc[0]) if len(check) else math.nan,
        "loo_pit_ok": bool(check["passed"].iloc[0]) if len(check) else None,
    }


# ------------------------------------------------------------------------------ analysis
def _standardized(seed: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor,
                                      float]:
    x, y = brn.data.cubic(TRAIN_POINTS, seed=seed)
    x_std = brn.data.Standardizer().fit(x)
    y_std = brn.data.Standardizer().fit(y[:, None])
    return (x, y, x_std.transform(torch.as_tensor(x)),
            y_std.transform(torch.as_tensor(y[:, None])), float(y_std.std[0]))


def _masked_fits(model: brn.BayesianResNet, x: torch.Tensor, y: torch.Tensor, z0: torch.Tensor,
                 mask: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """MAP fits from ``z0`` (C, D), fit c seeing point i with weight ``mask[c, i]``; the same
    Adam schedule as the ensemble's members (full batch)."""
    def objective(z: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
        values, _ = model.constrain(z)
        return model.log_prior(values) + (model.log_likelihood(values, x, y) * mask).sum(-1)

    return adam_maximize(objective, z0, steps, lr)[0]


def analyse(seed: int, members: int = 8, steps: int = 3000, lr: float = 0.01
            ) -> dict[str, float]:
    """Why the members' noise is small: the measurements of ``--analysis`` for one seed.

    The members are those of ``Ensemble(members, steps, lr, noise="map")`` with this seed
    (checked), and the leave-one-out refits start where they started.
    """
    x, y, xs, ys, y_scale = _standardized(seed)
    model = demo_model()
    n = xs.shape[0]
    z0 = initial_points(model, seeded_generator(seed), members)
    everything = torch.ones(members, n, dtype=torch.float64)
    z = _masked_fits(model, xs, ys, z0, everything, steps, lr)
    post = brn.fit(model, x, y, method=brn.Ensemble(members=members, steps=steps, lr=lr,
                                                    noise="map"),
                   seed=seed, progress=False, check=False)
    values, _ = model.constrain(z)
    same = max(float((values[k] - post.draws[k][0]).abs().max()) for k in values)
    if same > 1e-8:
        raise RuntimeError(f"the re-trained members differ from the ensemble's by {same:.2g}")
    # Leave-one-out refits: fit (i, m) is member m trained without point i.
    mask = torch.ones(n, members, n, dtype=torch.float64)
    mask[torch.arange(n), :, torch.arange(n)] = 0.0
    z_loo = _masked_fits(model, xs, ys, z0.repeat(n, 1), mask.reshape(n * members, n), steps,
                         lr)
    with torch.no_grad():
        f = model.loc_scale(values, xs)[0][..., 0]  # (members, n)
        f_loo = model.loc_scale(model.constrain(z_loo)[0], xs)[0][..., 0].reshape(
            n, members, n)[torch.arange(n), :, torch.arange(n)].T  # (members, n)
    residual = ys[:, 0] - f
    loo_residual = ys[:, 0] - f_loo
    noise = values["noise"][:, 0]
    gamma, linear_loo, modes, pit_linear = [], [], [], []
    for m in range(members):
        point = {k: v[m] for k, v in values.items()}
        fit = linearize(model, point, xs)[0]
        h = fit.leverage(float(noise[m]) ** 2)
        gamma.append(float(h.sum()))
        linear_loo.append(residual[m] / (1 - h))
        pit_linear.append(torch.special.ndtr(residual[m] / ((1 - h) * noise[m])))
        grid, cdf, _ = noise_posterior(model, point, xs, ys)
        density = torch.diff(cdf[0]) / torch.diff(grid[0])
        modes.append(math.exp(float(grid[0][int(density.argmax())])))
    gamma_t = torch.tensor(gamma)
    rss = (residual ** 2).sum(1)
    # Importance-weighted LOO-PIT with the members as draws: w_m ~ 1 / p(y_i | member m).
    scale = noise[:, None]
    log_lik = -0.5 * (residual / scale) ** 2 - torch.log(scale)
    weights = torch.softmax(-log_lik, 0)
    pit_is = (weights * torch.special.ndtr(residual / scale)).sum(0)
    pit_lin = torch.stack(pit_linear).mean(0)

    def outside(pit: torch.Tensor) -> int:
        return int(((pit < 0.025) | (pit > 0.975)).sum())

    def mean_z2(pit: torch.Tensor) -> float:
        return float((torch.special.ndtri(pit.clamp(1e-12, 1 - 1e-12)) ** 2).mean())

    def rms(values: torch.Tensor) -> float:
        return float(values.pow(2).mean().sqrt()) * y_scale

    return {
        "sample_noise": float(np.std(y - x[:, 0] ** 3)),
        "map_noise": float(noise.mean()) * y_scale,
        "gamma": float(gamma_t.mean()),
        "dof_noise": float((rss / (n - gamma_t)).sqrt().mean()) * y_scale,
        "posterior_mode": float(np.mean(modes)) * y_scale,
        "loo_rms": rms(loo_residual),
        "linear_loo_rms": rms(torch.stack(linear_loo)),
        "is_outside": outside(pit_is),
        "is_z2": mean_z2(pit_is),
        "lin_outside": outside(pit_lin),
        "lin_z2": mean_z2(pit_lin),
    }


# ------------------------------------------------------------------------------ report
def loo_pit_limit(n: int) -> int:
    """The most values of n outside the central 95% that the diagnostics' check passes."""
    from scipy.stats import binom

    from bayesresnet.diagnostics import LOO_PIT_ALPHA, LOO_PIT_TAIL

    return int(binom.ppf(1 - LOO_PIT_ALPHA, n, LOO_PIT_TAIL))


def parse_seeds(text: str) -> list[int]:
    """``'0-4'`` or ``'0,2,3'`` -> list of ints."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def _cell(value: float, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def method_tables(results: dict[str, dict[int, dict[str, Any]]], seeds: Sequence[int]
                  ) -> list[str]:
    """The summary table (means over seeds) and the per-seed table."""
    lines = [
        "| method | coverage (mean) | coverage (min) | ratio (min) | noise (mean; true 3) | "
        "RMSE | NLL | fit (s) | LOO-PIT check passed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, rows in results.items():
        r = [rows[s] for s in seeds]
        ratios = [row["ratio"] for row in r]
        checks = [row["loo_pit_ok"] for row in r if row["loo_pit_ok"] is not None]
        lines.append(
            f"| {label} | {np.mean([row['coverage'] for row in r]):.3f} | "
            f"{min(row['coverage'] for row in r):.3f} | "
            f"{_cell(math.nan if any(map(math.isnan, ratios)) else min(ratios), 1)} | "
            f"{np.mean([row['noise'] for row in r]):.2f} | "
            f"{np.mean([row['rmse'] for row in r]):.2f} | "
            f"{np.mean([row['nll'] for row in r]):.2f} | "
            f"{np.mean([row['seconds'] for row in r]):.1f} | "
            f"{f'{sum(checks)} of {len(checks)}' if checks else '—'} |")
    lines += ["", "Per seed:", "",
              "| method | seed | coverage | ratio | noise | RMSE | NLL | fit (s) | "
              "LOO-PIT outside 95% |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, rows in results.items():
        for s in seeds:
            row = rows[s]
            check = "—" if row["loo_pit_ok"] is None else \
                f"{row['loo_pit']:.2f} ({'ok' if row['loo_pit_ok'] else 'FAIL'})"
            lines.append(f"| {label} | {s} | {row['coverage']:.3f} | {_cell(row['ratio'], 1)} | "
                         f"{row['noise']:.2f} | {row['rmse']:.2f} | {row['nll']:.2f} | "
                         f"{row['seconds']:.1f} | {check} |")
    return lines


def analysis_table(analysis: dict[int, dict[str, float]]) -> list[str]:
    lines = [
        "| seed | sample noise | MAP noise | gamma | sqrt(RSS/(N-gamma)) | noise posterior mode "
        "| exact LOO residual RMS | linearized LOO residual RMS | IS-LOO-PIT outside / mean z^2 "
        "| linearized LOO-PIT outside / mean z^2 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, a in analysis.items():
        lines.append(
            f"| {s} | {a['sample_noise']:.2f} | {a['map_noise']:.2f} | {a['gamma']:.1f} | "
            f"{a['dof_noise']:.2f} | {a['posterior_mode']:.2f} | {a['loo_rms']:.2f} | "
            f"{a['linear_loo_rms']:.2f} | {a['is_outside']} / {a['is_z2']:.2f} | "
            f"{a['lin_outside']} / {a['lin_z2']:.2f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        metavar="LABEL", help="rows to run (labels of METHODS)")
    parser.add_argument("--seeds", default="0-4", help="data seeds, e.g. '0-4' or '0,2'")
    parser.add_argument("--analysis", action="store_true",
                        help="add the measurements behind the ensemble's noise (leave-one-out "
                             "refits of every member)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = parse_seeds(args.seeds)

    results: dict[str, dict[int, dict[str, Any]]] = {}
    for label in args.methods:
        results[label] = {}
        for seed in seeds:
            row = score(METHODS[label](), seed)
            results[label][seed] = row
            print(f"{label}, seed {seed}: coverage {row['coverage']:.3f}, ratio "
                  f"{row['ratio']:.1f}, noise {row['noise']:.2f}, RMSE {row['rmse']:.2f}, NLL "
                  f"{row['nll']:.2f}, {row['seconds']:.1f} s", flush=True)
    analysis = {}
    if args.analysis:
        for seed in seeds:
            analysis[seed] = analyse(seed)
            print(f"analysis, seed {seed}: {analysis[seed]}", flush=True)

    command = "python benchmarks/small_data.py" + (" --analysis" if args.analysis else "")
    if args.methods != list(METHODS):
        command += " --methods " + " ".join(f'"{m}"' for m in args.methods)
    if args.seeds != "0-4":
        command += f" --seeds {args.seeds}"
    lines = [
        "# Small data: the cubic toy with 20 points",
        "",
        f"`{command}`: `cubic({TRAIN_POINTS}, seed)` for seeds {args.seeds}, "
        "`ResNet(1, 1, width=10, depth=8, basis='linear')`, `priors.Normal(1.0)`, Gaussian "
        "likelihood with learned noise, fitted with `seed=seed`; scored on "
        f"`cubic({TEST_POINTS}, seed + 1)`. Coverage: of the central 95% predictive interval. "
        "Ratio: mean `epistemic_std` at x = +-6 over its mean on [-4, 4]. Noise: root mean "
        "square noise scale of the draws, original units (the truth is 3); with "
        "`noise='predictive'`, the default, it includes the model uncertainty within each "
        "member's mode (the row `noise='posterior'` has the same draws before that). Fit: wall "
        "seconds, "
        f"{args.threads} torch thread(s), torch {torch.__version__}, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end. LOO-PIT: "
        "the ensemble check of `diagnose()` (fraction of training points outside the central "
        "95% of their leave-one-out predictive; it fails above the binomial bound, "
        f"{loo_pit_limit(TRAIN_POINTS)} of {TRAIN_POINTS}).",
        "",
        *method_tables(results, seeds),
    ]
    if analysis:
        lines += [
            "",
            "## Why the members' noise is small",
            "",
            "Members of `Ensemble(noise='map')` (defaults: 8 members, 3000 steps), per seed, "
            "means over members, original units. Sample noise: the standard deviation of y - "
            "x^3 over the 20 training points (what the sample carries; the truth is 3). gamma: "
            "the effective number of parameters, trace of the hat matrix of the network "
            "linearized at the member, at its MAP noise. Noise posterior mode: of the "
            "linearized noise posterior that `noise='posterior'` (and, widened, "
            "`noise='predictive'`) draws from. Exact LOO: each "
            "member refitted without the point (same start, same 3000 steps). LOO-PIT of the "
            "MAP-noise ensemble (20 values; a calibrated one has about 1 outside the central "
            "95% and mean z^2 = mean(Phi^-1(PIT)^2) about 1): with importance weights "
            "1 / p(y_i | member), and with linearized refits (the `diagnose()` check).",
            "",
            *analysis_table(analysis),
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
