"""The generalization gap of deterministic ResNets against their number of parameters, per basis.

The central figure of the weight-parameterized ResNet idea: writing the weights as a function of
depth in a small basis, W(t) = sum_k phi_k(t) A_k, dials the capacity down, and the claim is that
the gap between test and training loss shrinks with it. This script tests that claim; it does not
assume it. For the piecewise-constant basis (the ordinary ResNet, one weight matrix per layer),
the cubic, linear, constant and Legendre (degree 5) bases, and a plain MLP baseline
(:class:`bayesresnet.MLP`) of the same widths and depths, a deterministic network is trained by
MAP (:class:`bayesresnet.MAP`, Adam on the log joint: least squares with a Gaussian prior as
weight decay), and its generalization gap, test MSE minus training MSE (in units of the training
targets' variance), is set against its number of parameters. Every configuration (basis, width,
depth) is trained on 3 training sets (data seeds) from 2 initializations (fit seeds); the figure
shows the median over these 6 runs with its interquartile range.

Legendre(5) has 6 functions, more than the 4 layers of a depth-4 network: it runs there, but the
Euler steps read W(t) at 4 times only, where the 6 polynomials span the same 4-dimensional space
as the piecewise basis, so that network is the ordinary depth-4 ResNet with 2 redundant
coefficient matrices (and a different weight decay); its parameter count overstates its
capacity. The cubic basis at depth 4 (4 functions, 4 layers) is likewise the ordinary ResNet
reparameterized, with the same number of parameters. The MLP and the piecewise ResNet of equal
width and depth have exactly the same number of parameters.

What the full run shows (``python examples/generalization_gap.py``, seed 0, 432 runs): the claim
is not borne out on this toy, and neither is its opposite. The Spearman rank correlation of
parameter count and gap is -0.04 over all runs (95% bootstrap interval [-0.11, +0.02],
resampling configurations) and -0.16 [-0.36, +0.07] over the 72 configuration medians; within
the ResNet bases alone -0.05 [-0.13, +0.03] and -0.11 [-0.35, +0.13]. No gap that grows with the
number of parameters appears: not overall, not within any basis (over each basis's 12
configuration medians the correlation is negative or undecided; the only positive one, cubic's
+0.41, has the interval [-0.36, +0.84]). Depth at a fixed number of parameters barely moves
it: deeper cubic and linear networks have gaps larger by about 0.01. The configuration medians
all lie between 0.13 and 0.18. Which of the three training sets a network saw moves its gap far more
(median gaps 0.20, 0.07 and 0.16 over all networks trained on each set; interquartile range
within a configuration 0.079, against 0.013 across the configuration medians); the
initialization hardly matters (median difference between the two fits 0.001). The piecewise
ResNet has the smallest gaps (configuration medians 0.13-0.14, except 0.16 at depth 16 and
widths 16 and 32) and fits the training data less closely (median training MSE 0.09-0.12,
against 0.07-0.09 for the smooth bases); 20 of its 72 runs, all at depths 8 and 16, settle on
poor fits (training MSE 0.28-0.46; the median at depth 16 and widths 16 and 32). The MLP has the
ResNets' gaps (median 0.155) and at depth 16 settles on the same poor fit (training MSE 0.19)
at every width. The cubic and Legendre(5) networks at depth 4 span the same functions as the
piecewise one yet have gaps of 0.15-0.17 against its 0.13-0.14: the basis seems to act here
through the weight decay it implies (the Gaussian prior on its coefficients), not through the
number of parameters. Training converged: no MAP fit
raised a ConvergenceWarning, and the loss trend ratio (``diagnostics.trend_ratio``) is at most
0.41 (median 0.01).

Data: the ``sine`` toy, 30 training points with noise 0.3 (one set per data seed), and 2000 test
points from the same distribution (one set, shared by all runs).

Usage::

    python examples/generalization_gap.py [--out DIR] [--fast] [--seed 0]

Writes ``DIR/generalization_gap.png`` (default ``DIR``: ``generalization_gap_figures/``) and
``DIR/generalization_gap.csv`` (one row per run), and prints a summary per basis, the medians
per configuration, the fraction of runs whose MAP fit raised a
:class:`~bayesresnet.ConvergenceWarning`, and Spearman rank correlations of parameter count and
gap with bootstrap 95% intervals. The 432 runs (72 configurations x 6 seeds, 1500 Adam steps
each) are independent and run in one process per core: 1063 s of CPU time in all, so about 9
minutes of wall time on 2 idle cores (56 minutes on a machine at load 13).
``--fast`` (or ``BAYESRESNET_FAST=1``) trains 24 small configurations on 2 data sets briefly, in
one process (under 40 seconds).
"""

from __future__ import annotations

import csv
import os
import resource
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
from _common import one_thread, parse_args
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.stats import ConstantInputWarning, spearmanr

import bayesresnet as brn

BASES = {"piecewise": brn.Piecewise(), "cubic": brn.Cubic(), "linear": brn.Linear(),
         "constant": brn.Constant(), "legendre5": brn.Legendre(5)}
ARCHS = [*BASES, "mlp"]  # the five ResNet bases and the MLP baseline
STYLE = {**{name: {"color": f"C{i}", "ls": "-", "mfc": f"C{i}"} for i, name in enumerate(BASES)},
         "mlp": {"color": "k", "ls": "--", "mfc": "white"}}
DEPTH_MARKERS = "os^Dv"
BOOTSTRAP_REPS = 2000


def build(arch: str, width: int, depth: int) -> brn.resnet.Network:
    """The network of one configuration: a ResNet in basis ``arch``, or the MLP."""
    if arch == "mlp":
        return brn.MLP(in_dim=1, out_dim=1, width=width, depth=depth)
    return brn.ResNet(in_dim=1, out_dim=1, width=width, depth=depth, basis=BASES[arch])


def mse(post: brn.Posterior, x: np.ndarray, y: np.ndarray, scale: float) -> float:
    """Mean squared error of the MAP network's prediction, in units of var(y_train)."""
    return float(np.mean((post.predict(x).mean[:, 0] - y) ** 2) / scale)


def train_one(run: tuple[str, int, int, int, int], *, data: list[tuple[np.ndarray, np.ndarray]],
              x_test: np.ndarray, y_test: np.ndarray, init_seeds: list[int],
              steps: int) -> dict[str, float | int | str]:
    """Train one network by MAP on one data set from one initialization; MSEs, gap, convergence."""
    arch, width, depth, data_index, init_index = run
    x, y = data[data_index]
    scale = float(np.var(y))
    with one_thread(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", brn.ConvergenceWarning)
        net = build(arch, width, depth)
        model = brn.BayesianResNet(net, prior=brn.priors.Normal(1.0))
        post = brn.fit(model, x, y, method=brn.MAP(steps=steps), seed=init_seeds[init_index],
                       progress=False)
        train, test = mse(post, x, y, scale), mse(post, x_test, y_test, scale)
    warned = any(issubclass(w.category, brn.ConvergenceWarning) for w in caught)
    loss = np.asarray(post.stats["loss"], dtype=float).reshape(-1)
    return {"basis": arch, "width": width, "depth": depth, "params": net.num_params,
            "data_seed": data_index, "init_seed": init_index, "train_mse": train,
            "test_mse": test, "gap": test - train, "loss_trend": brn.diagnostics.trend_ratio(loss),
            "convergence_warning": int(warned), "fit_seconds": post.fit_seconds}


def spearman_ci(params: np.ndarray, gaps: np.ndarray, groups: np.ndarray,
                rng: np.random.Generator, reps: int) -> tuple[float, float, float]:
    """Spearman's rho of params and gap with a percentile bootstrap 95% interval.

    The bootstrap resamples the groups (configurations) with replacement and keeps all points of
    each drawn group, so runs that share a configuration are not counted as independent.
    """
    rho = float(spearmanr(params, gaps).statistic)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    boots = np.empty(reps)
    with warnings.catch_warnings():  # a resample with one distinct value gives NaN: left out
        warnings.simplefilter("ignore", ConstantInputWarning)
        for b in range(reps):
            pick = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[g] for g in pick])
            boots[b] = spearmanr(params[idx], gaps[idx]).statistic
    low, high = np.nanpercentile(boots, [2.5, 97.5])
    return rho, float(low), float(high)


def configuration_medians(rows: list[dict]) -> list[dict]:
    """Per configuration: parameters, median and quartiles of gap and training MSE."""
    out = []
    for key in dict.fromkeys((r["basis"], r["width"], r["depth"]) for r in rows):
        sel = [r for r in rows if (r["basis"], r["width"], r["depth"]) == key]
        gap = np.quantile([r["gap"] for r in sel], [0.25, 0.5, 0.75])
        train = np.quantile([r["train_mse"] for r in sel], [0.25, 0.5, 0.75])
        out.append({"basis": key[0], "width": key[1], "depth": key[2],
                    "params": sel[0]["params"], "runs": len(sel), "gap": gap, "train": train})
    return out


def plot(rows: list[dict], medians: list[dict], stats_text: str, runs_per_config: str,
         path) -> None:
    fig = Figure(figsize=(13, 5.6), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    depths = sorted({r["depth"] for r in rows})
    markers = dict(zip(depths, DEPTH_MARKERS, strict=False))
    for i, arch in enumerate(ARCHS):
        dodge = np.exp(0.045 * (i - (len(ARCHS) - 1) / 2))  # horizontal offset, for legibility
        style = STYLE[arch]
        for depth in depths:
            sel = sorted((m for m in medians if m["basis"] == arch and m["depth"] == depth),
                         key=lambda m: m["params"])
            if not sel:
                continue
            xs = np.array([m["params"] for m in sel]) * dodge
            redundant = arch in BASES and BASES[arch].size(depth) > depth
            for ax, key in zip(axes, ("gap", "train"), strict=True):
                q = np.array([m[key] for m in sel])
                ax.errorbar(xs, q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]],
                            color=style["color"], ls=":" if redundant else style["ls"], lw=1.0,
                            marker=markers[depth], mfc="white" if redundant else style["mfc"],
                            ms=5, capsize=2, elinewidth=0.8, alpha=0.85)
    for ax in axes:
        ax.axhline(0.0, color="k", lw=0.7)
        ax.set(xscale="log", xlabel="number of parameters (points dodged sideways by up to "
                                    "\u00b112% per basis)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set(ylabel="generalization gap: test MSE - train MSE\n(units of var(y_train))",
                title=f"gap: median and interquartile range over {runs_per_config}")
    axes[1].set(ylabel="training MSE (units of var(y_train))",
                title="training MSE of the same runs")
    axes[0].text(0.02, 0.02, stats_text, transform=axes[0].transAxes, va="bottom", fontsize=7.5,
                 family="monospace", bbox={"facecolor": "white", "alpha": 0.85, "lw": 0.5})
    handles = [Line2D([], [], color=STYLE[a]["color"], ls=STYLE[a]["ls"], marker="o",
                      mfc=STYLE[a]["mfc"], label=a if a != "mlp" else "MLP (baseline)")
               for a in ARCHS]
    handles += [Line2D([], [], color="grey", ls="none", marker=markers[d], label=f"depth {d}")
                for d in depths]
    handles += [Line2D([], [], color=STYLE[a]["color"], ls=":", marker=markers[d], mfc="white",
                       label=f"{a}, depth {d}: more functions than layers")
                for a, basis in BASES.items() for d in depths if basis.size(d) > d]
    axes[1].legend(handles=handles, fontsize=8, ncols=2, loc="best")
    fig.suptitle("MAP-trained ResNets (5 depth bases) and MLPs of the same widths and depths on "
                 "the sine toy (30 points)\nhollow, dotted: a basis with more functions than "
                 "layers (legendre5 at depth 4), i.e. the ordinary ResNet with redundant "
                 "parameters",
                 fontsize=9)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, "generalization_gap_figures", argv)
    start = time.perf_counter()
    widths, depths, steps, n_data, n_init = (([4, 16], [4, 8], 200, 2, 1) if args.fast
                                             else ([4, 8, 16, 32], [4, 8, 16], 1500, 3, 2))
    # Independent integer seeds for the training sets, the test set and the initializations.
    seeds = [int(s) for s in np.random.SeedSequence(args.seed).generate_state(n_data + 1 + n_init)]
    data = [brn.data.sine(30, seed=s, noise=0.3) for s in seeds[:n_data]]
    x_test, y_test = brn.data.sine(2000, seed=seeds[n_data], noise=0.3)
    runs = [(arch, width, depth, d, i) for arch in ARCHS for width in widths for depth in depths
            for d in range(n_data) for i in range(n_init)]
    job = partial(train_one, data=data, x_test=x_test, y_test=y_test,
                  init_seeds=seeds[n_data + 1:], steps=steps)
    if args.fast:
        with one_thread():
            rows = [job(run) for run in runs]
    else:  # independent runs: one process per core
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            rows = list(pool.map(job, runs, chunksize=4))

    with open(args.out / "generalization_gap.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    medians = configuration_medians(rows)
    runs_per_config = f"{n_data} data sets x {n_init} initialization(s)"
    print(f"{len(rows)} MAP runs of {steps} Adam steps: {len(medians)} configurations x "
          f"{runs_per_config}")
    print(f"{'basis':<10} {'runs':>4} {'params':>12} {'med train':>9} {'med test':>8} "
          f"{'med gap':>7} {'gap IQR':>13} {'warned':>6} {'max trend':>9}")
    for arch in ARCHS:
        sel = [r for r in rows if r["basis"] == arch]
        p = [r["params"] for r in sel]
        q1, q2, q3 = np.quantile([r["gap"] for r in sel], [0.25, 0.5, 0.75])
        print(f"{arch:<10} {len(sel):>4} {min(p):>5}-{max(p):<6} "
              f"{np.median([r['train_mse'] for r in sel]):9.3f} "
              f"{np.median([r['test_mse'] for r in sel]):8.3f} {q2:7.3f} "
              f"[{q1:5.3f},{q3:5.3f}] {np.mean([r['convergence_warning'] for r in sel]):6.0%} "
              f"{np.nanmax([r['loss_trend'] for r in sel]):9.2f}")
    print("\nmedian gap [train MSE] per configuration, by width:")
    print(f"{'basis':<10} {'depth':>5}  " + "  ".join(f"{'w=' + str(w):>13}" for w in widths))
    for arch in ARCHS:
        for depth in depths:
            cells = {m["width"]: m for m in medians if m["basis"] == arch and m["depth"] == depth}
            print(f"{arch:<10} {depth:>5}  " + "  ".join(
                f"{cells[w]['gap'][1]:6.3f} [{cells[w]['train'][1]:4.2f}]" for w in widths))
    warned = np.mean([r["convergence_warning"] for r in rows])
    trends = np.array([r["loss_trend"] for r in rows])
    print(f"\nconvergence: MAP ConvergenceWarning in {warned:.0%} of runs; loss trend ratio "
          f"(last 10% of steps, <= 1 means converged) median {np.nanmedian(trends):.2f}, "
          f"90th percentile {np.nanquantile(trends, 0.9):.2f}, max {np.nanmax(trends):.2f}")

    rng = np.random.default_rng(args.seed)
    reps = 200 if args.fast else BOOTSTRAP_REPS
    config_id = {key: k for k, key in enumerate(dict.fromkeys(
        (r["basis"], r["width"], r["depth"]) for r in rows))}
    print(f"\nSpearman rank correlation of parameters and gap, percentile bootstrap 95% intervals "
          f"({reps} resamples of configurations):")
    lines = []
    for label, archs in (("all", ARCHS), ("ResNets", list(BASES))):
        sel = [r for r in rows if r["basis"] in archs]
        rho, low, high = spearman_ci(np.array([r["params"] for r in sel]),
                                     np.array([r["gap"] for r in sel]),
                                     np.array([config_id[r["basis"], r["width"], r["depth"]]
                                               for r in sel]), rng, reps)
        meds = [m for m in medians if m["basis"] in archs]
        rho_m, low_m, high_m = spearman_ci(np.array([m["params"] for m in meds]),
                                           np.array([m["gap"][1] for m in meds]),
                                           np.arange(len(meds)), rng, reps)
        print(f"  {label:<8} {len(sel):>4} runs: {rho:+.2f} [{low:+.2f}, {high:+.2f}];  "
              f"{len(meds):>3} configuration medians: {rho_m:+.2f} [{low_m:+.2f}, {high_m:+.2f}]")
        lines.append(f"Spearman(params, gap), {label}:\n  runs {rho:+.2f} [{low:+.2f}, "
                     f"{high:+.2f}], medians {rho_m:+.2f} [{low_m:+.2f}, {high_m:+.2f}]")
    print("  per basis, over its configuration medians:")
    for arch in ARCHS:
        meds = [m for m in medians if m["basis"] == arch]
        rho_b, low_b, high_b = spearman_ci(np.array([m["params"] for m in meds]),
                                           np.array([m["gap"][1] for m in meds]),
                                           np.arange(len(meds)), rng, reps)
        print(f"    {arch:<10} {len(meds):>3} configurations: {rho_b:+.2f} "
              f"[{low_b:+.2f}, {high_b:+.2f}]")

    path = args.out / "generalization_gap.png"
    plot(rows, medians, "\n".join(lines) + "\n95% bootstrap intervals over configurations",
         runs_per_config, path)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() + children.ru_utime + children.ru_stime
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s of wall time, {cpu:.0f} s of CPU "
          f"time (this process and its workers; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
