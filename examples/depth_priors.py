"""Priors over depth: fixed bases against learned ones; the data choose the complexity.

A fixed basis decides the network's complexity in advance: Piecewise (one weight matrix per
layer), Linear (two), Legendre(5) (six, a polynomial of degree 5 in depth). A prior over depth
keeps a large basis and learns how much of it to use (see ``docs/depth_priors.rst``):

* ``rw-piecewise``: Piecewise under ``priors.RandomWalk()``, the default stationary walk:
  neighbouring layers tied by a mean-reverting random walk with the prior scale 1 at every layer,
  whose step scale ``W_coef_step_scale`` is learned (small: weights nearly constant in depth;
  large: independent layers). The plain walk, ``RandomWalk(stationary=False)``, whose variance
  grows along depth, overfitted yacht at depth 16 (``benchmarks/results/depth_priors.md``);
* ``decay-legendre5``: Legendre(5) under ``priors.Decaying()``, degree k's prior scale
  ``exp(-k / d)`` with the decay scale d = ``W_coef_decay_scale`` learned;
* ``horseshoe-legendre5``: Legendre(5) under ``priors.Horseshoe(nonzero_fraction=0.2,
  num_data=n)``, sparse coefficients with a learned global scale ``W_coef_global_scale``.

On two problems, the cubic toy (20 points; NUTS) and UCI yacht split 0 (277 training rows;
MCLMC, the UCI benchmark's MCLMC recipe with a shorter budget), every configuration is fitted
with the same sampler settings and compared by PSIS-LOO (``brn.compare``, elpd_loo and its
standard error), by the generalization gap (training against test RMSE; the toy's test set is
1000 fresh points), and by mixing: the chain-wise bulk ESS (``arviz_compat.ess_by_chain``,
the rule ``Posterior.diagnose()`` applies to chains begun at distinct MAP modes) of f at the
training inputs and of the noise scale, minimum over chains and quantities, per second of the
whole fit. Each run's ``diagnose()`` verdict (failed checks) is printed.

The figure: the posterior of each learned hyperparameter against its prior; the posterior mean
weights W(t) across depth in one chain, Piecewise under Normal(0, 1) against Piecewise under
the random walk, and the relative change between neighbouring layers ||W_k - W_(k-1)|| /
||W_k|| (unchanged by permutations of the hidden units, so comparable across chains); the
size ||W_k|| of each Legendre degree; elpd_loo per point, training and test RMSE, and ESS per
second per configuration.

Usage::

    python examples/depth_priors.py [--out DIR] [--fast] [--seed 0] [--data-root ROOT]

Writes ``DIR/depth_priors.png`` and ``DIR/depth_priors.csv`` (one row per problem and
configuration; default ``DIR``: ``depth_priors_figures/``) and prints the tables. Yacht is read
from ``--data-root``, ``$BAYESRESNET_DATA`` or ``../shared/data/uci`` beside the repository; the
yacht part is skipped, with a message, when none holds it. ``--fast`` (or
``BAYESRESNET_FAST=1``) runs tiny networks and chains (numbers meaningless, for testing).
Full mode: toy width 8 and depth 8, NUTS 4 chains of 100 warmup and 100 kept iterations, trees
of at most 31 leapfrog steps; yacht width 16 and depth 8, MCLMC 4 chains of 500 tuning and 500
sampling steps thinned by 5, begun at 500-step MAP fits (the UCI benchmark's MCLMC uses 2000,
2000 and 1000 at depth 4; these budgets are too short for the diagnostics to pass, and the
script prints which checks fail). See ``docs/examples.rst`` for what the
full run showed and how long it took (that run's random walk was the plain one, the default
then).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
from _common import one_thread, parse_args
from matplotlib.figure import Figure

import bayesresnet as brn
from bayesresnet.arviz_compat import draws_dataset, ess_by_chain

REPO = Path(__file__).resolve().parents[1]
FIXED = ("piecewise", "linear", "legendre5")
LEARNED = ("rw-piecewise", "decay-legendre5", "horseshoe-legendre5")
HYPER = {"rw-piecewise": ("W_coef_step_scale", "step scale s (random walk)"),
         "decay-legendre5": ("W_coef_decay_scale", "decay scale d (decaying)"),
         "horseshoe-legendre5": ("W_coef_global_scale", "global scale tau (horseshoe)")}


def make_model(name: str, in_dim: int, width: int, depth: int, n: int) -> brn.BayesianResNet:
    basis = {"piecewise": brn.Piecewise(), "linear": brn.Linear()}.get(
        name.split("-")[-1], brn.Legendre(5))
    if name == "rw-piecewise":
        prior = brn.priors.RandomWalk()
    elif name == "decay-legendre5":
        prior = brn.priors.Decaying()
    elif name == "horseshoe-legendre5":
        prior = brn.priors.Horseshoe(nonzero_fraction=0.2, num_data=n)
    else:
        prior = brn.priors.Normal(1.0)
    net = brn.ResNet(in_dim=in_dim, out_dim=1, width=width, depth=depth, basis=basis)
    return brn.BayesianResNet(net, prior=prior, likelihood=brn.likelihoods.Gaussian())


def chainwise_ess(post: brn.Posterior) -> float:
    """Min over chains and quantities of each chain's bulk ESS of f(x_train) and the noise."""
    loc, _, _ = post.evaluate(post.x_train)
    data = draws_dataset({"f": loc.numpy()[..., 0], "noise": post.draws["noise"].numpy()})
    return float(min(np.nanmin(v.values) for v in ess_by_chain(data, "bulk").data_vars.values()))


def weights(post: brn.Posterior) -> np.ndarray:
    """W_coef draws (chain, draw, K, width, width), whatever the prior's parameterization."""
    return post.model.net_params(post.draws)["W_coef"].detach().numpy()


def run_problem(label: str, x, y, x_test, y_test, method, width: int, depth: int, seed: int
                ) -> dict[str, dict]:
    results = {}
    for name in (*FIXED, *LEARNED):
        model = make_model(name, x.shape[1], width, depth, len(x))
        load = os.getloadavg()[0]
        with warnings.catch_warnings():  # the verdicts are printed below from diagnose()
            warnings.simplefilter("ignore", brn.ConvergenceWarning)
            post = brn.fit(model, x, y, method=method, seed=seed, progress=False)
        diag = post.diagnose()
        ess = chainwise_ess(post)
        hyper = HYPER.get(name, (None,))[0]
        results[name] = {
            "post": post, "params": model.dim, "load": load,
            "train_rmse": brn.metrics.rmse(post.predict(x), y),
            "test_rmse": brn.metrics.rmse(post.predict(x_test), y_test),
            "ess": ess, "seconds": post.fit_seconds, "ess_per_s": ess / post.fit_seconds,
            "failed": diag.failed, "W": weights(post),
            "hyper": None if hyper is None else post.draws[hyper].numpy().reshape(-1)}
        print(f"  [{label}] {name}: {post.fit_seconds:.0f} s (load {load:.1f})", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-hat warnings: the table's 'warning' column says it
        table = brn.compare({n: r["post"] for n, r in results.items()})
    for name, r in results.items():
        r["elpd"], r["elpd_se"] = float(table.loc[name, "elpd_loo"]), float(table.loc[name, "se"])
        r["p_loo"], r["loo_warning"] = float(table.loc[name, "p_loo"]), bool(
            table.loc[name, "warning"])
    return results


def print_table(label: str, results: dict[str, dict], n: int) -> None:
    print(f"\n{label}")
    print(f"{'configuration':<20} {'params':>6} {'elpd_loo':>15} {'p_loo':>6} {'train RMSE':>10} "
          f"{'test RMSE':>9} {'min ESS':>7} {'ESS/s':>7} {'fit s':>6} {'hyper median':>12}  "
          "diagnose() failed")
    for name, r in results.items():
        hyper = "" if r["hyper"] is None else f"{np.median(r['hyper']):.3f}"
        flag = "*" if r["loo_warning"] else " "
        print(f"{name:<20} {r['params']:>6} {r['elpd']:>8.1f} ± {r['elpd_se']:<4.1f}{flag} "
              f"{r['p_loo']:>6.1f} {r['train_rmse']:>10.3f} {r['test_rmse']:>9.3f} "
              f"{r['ess']:>7.1f} {r['ess_per_s']:>7.3f} {r['seconds']:>6.0f} {hyper:>12}  "
              f"{', '.join(r['failed']) or 'none'}")
    print(f"(elpd_loo over {n} training points; * PSIS k-hat warning from brn.compare)")


def layer_change(w: np.ndarray) -> np.ndarray:
    """||W_k - W_(k-1)||_F / ||W_k||_F per draw and layer k >= 1: (draws, K - 1)."""
    w = w.reshape(-1, *w.shape[2:])
    diff = np.linalg.norm(w[:, 1:] - w[:, :-1], axis=(-2, -1))
    return diff / np.linalg.norm(w[:, 1:], axis=(-2, -1))


def prior_density(name: str, grid: np.ndarray, results: dict[str, dict]) -> np.ndarray:
    prior = results[name]["post"].model.prior
    if name == "rw-piecewise":
        scale = prior.step_hyper_scale
    elif name == "decay-legendre5":
        scale = prior.decay_hyper_scale
    else:  # HalfCauchy(tau0)
        tau0 = prior.tau0
        return 2.0 / (np.pi * tau0 * (1.0 + (grid / tau0) ** 2))
    return np.sqrt(2.0 / np.pi) / scale * np.exp(-0.5 * (grid / scale) ** 2)


def figure(problems: dict[str, dict[str, dict]], path: Path) -> None:
    fig = Figure(figsize=(17, 12), layout="constrained")
    grid = fig.add_gridspec(3, 4)
    colors = {p: f"C{i}" for i, p in enumerate(problems)}
    first = next(iter(problems.values()))
    for col, name in enumerate(LEARNED):
        ax = fig.add_subplot(grid[0, col])
        top = max(np.quantile(r[name]["hyper"], 0.995) for r in problems.values())
        top = max(top, 2.5 if name != "horseshoe-legendre5" else 0.0)
        x_grid = np.linspace(1e-4, top, 400)
        for problem, results in problems.items():
            ax.hist(results[name]["hyper"], bins=40, range=(0, top), density=True, alpha=0.5,
                    color=colors[problem], label=f"posterior, {problem}")
            # The horseshoe's prior depends on the number of points: one curve per problem.
            ax.plot(x_grid, prior_density(name, x_grid, results), color=colors[problem], lw=1.5,
                    ls="--", label=f"prior, {problem}")
        ax.set(xlabel=HYPER[name][1], ylabel="density", title=f"{name}: {HYPER[name][0]}")
        ax.legend(fontsize=8)
    # Posterior mean W(t) in chain 0, a few entries: Piecewise under Normal vs random walk.
    ax = fig.add_subplot(grid[0, 3])
    for name, style in (("piecewise", ":"), ("rw-piecewise", "-")):
        w = first[name]["W"][0].mean(axis=0)  # (K, width, width), chain 0
        t = (np.arange(w.shape[0]) + 0.5) / w.shape[0]
        for i in range(min(4, w.shape[1])):
            ax.plot(t, w[:, i, (i + 1) % w.shape[2]], style, color=f"C{i}", lw=1.4,
                    label=f"{name}" if i == 0 else None)
    ax.set(xlabel="depth t", ylabel="posterior mean W(t)[i, j]",
           title=f"{next(iter(problems))}: W(t), chain 0, 4 entries")
    ax.legend(fontsize=8)
    for col, (problem, results) in enumerate(problems.items()):
        ax = fig.add_subplot(grid[1, col])
        for name, color in (("piecewise", "C7"), ("rw-piecewise", "C3")):
            change = layer_change(results[name]["W"])
            k = np.arange(1, change.shape[1] + 1)
            ax.plot(k, np.median(change, axis=0), color=color, label=name)
            ax.fill_between(k, *np.quantile(change, [0.1, 0.9], axis=0), color=color, alpha=0.2)
        ax.set(xlabel="layer k", ylabel="||W_k - W_(k-1)|| / ||W_k|| (median, 80%)",
               yscale="log",
               title=f"{problem}: layer-to-layer change")
        ax.legend(fontsize=8)
    for col, (problem, results) in enumerate(problems.items(), start=2):
        ax = fig.add_subplot(grid[1, col])
        for i, name in enumerate(("legendre5", "decay-legendre5", "horseshoe-legendre5")):
            w = results[name]["W"]
            norms = np.linalg.norm(w.reshape(-1, *w.shape[2:]), axis=(-2, -1))
            k = np.arange(norms.shape[1]) + (i - 1) * 0.12
            ax.errorbar(k, np.median(norms, axis=0),
                        yerr=np.abs(np.quantile(norms, [0.1, 0.9], axis=0)
                                    - np.median(norms, axis=0)),
                        fmt="o", color=f"C{i}", label=name, capsize=2)
        ax.set(xlabel="Legendre degree k", ylabel="||W_k||_F (median, 80%)", yscale="log",
               title=f"{problem}: size of each degree")
        ax.legend(fontsize=8)
    names = list(first)
    pos = np.arange(len(names))
    ax = fig.add_subplot(grid[2, 0])
    for i, (problem, results) in enumerate(problems.items()):
        n = len(results[names[0]]["post"].y_train)
        ax.errorbar(pos + (i - 0.5) * 0.2, [results[m]["elpd"] / n for m in names],
                    yerr=[results[m]["elpd_se"] / n for m in names], fmt="o",
                    color=colors[problem], label=problem, capsize=2)
    ax.set(ylabel="elpd_loo per training point", title="PSIS-LOO (higher is better)")
    for col, (problem, results) in enumerate(problems.items(), start=1):
        ax = fig.add_subplot(grid[2, col])
        ax.bar(pos - 0.2, [results[m]["train_rmse"] for m in names], 0.4, color="C0",
               label="train RMSE")
        ax.bar(pos + 0.2, [results[m]["test_rmse"] for m in names], 0.4, color="C1",
               label="test RMSE")
        ax.set(ylabel="RMSE (original units)", title=f"{problem}: generalization gap")
    ax = fig.add_subplot(grid[2, 3])
    for i, (problem, results) in enumerate(problems.items()):
        ax.scatter(pos + (i - 0.5) * 0.2, [results[m]["ess_per_s"] for m in names],
                   color=colors[problem], label=problem)
    ax.set(yscale="log", ylabel="min chain-wise bulk ESS / s",
           title="mixing: f(x_train) and noise")
    for ax in fig.axes[-4:]:
        ax.set_xticks(pos, names, rotation=35, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle("Priors over depth: the posterior of each learned hyperparameter shows how much "
                 "of the basis the data use")
    fig.savefig(path, dpi=100)


def yacht_data(root: Path | None):
    if root is None and not os.environ.get(brn.data.DATA_ENV_VAR, ""):
        shared = REPO.parent / "shared" / "data" / "uci"
        if not (shared / "yacht").is_dir():
            return None
        root = shared
    try:
        return brn.data.uci("yacht", split=0, root=root)
    except FileNotFoundError as err:
        print(f"yacht skipped: {err}")
        return None


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, default=None,
                        help="UCI data root (default: $BAYESRESNET_DATA, else "
                             "../shared/data/uci next to the repository)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, "depth_priors_figures", argv, extra=_options)
    start = time.perf_counter()
    x, y = brn.data.cubic(20, seed=args.seed)
    x_test, y_test = brn.data.cubic(1000, seed=args.seed + 1)
    if args.fast:
        nuts = brn.NUTS(num_samples=30, num_warmup=30, chains=2, max_tree_depth=3, init_steps=50)
        mclmc = brn.MCLMC(num_samples=30, thinning=2, num_warmup=60, chains=2, init_steps=50)
        toy_size, yacht_size = (4, 4), (4, 4)
    else:
        # Sized to a shared 2-core machine: six fits per problem.
        nuts = brn.NUTS(num_samples=100, num_warmup=100, chains=4, max_tree_depth=5)
        mclmc = brn.MCLMC(num_samples=100, thinning=5, num_warmup=500, chains=4,
                          init_steps=500)
        toy_size, yacht_size = (8, 8), (16, 8)
    problems = {}
    with one_thread():
        problems["cubic toy"] = run_problem("cubic toy", x, y, x_test, y_test, nuts,
                                            *toy_size, args.seed)
        print_table(f"cubic toy: 20 points, width {toy_size[0]}, depth {toy_size[1]}, NUTS "
                    f"{nuts.config()}", problems["cubic toy"], len(y))
        data = yacht_data(args.data_root)
        if data is not None:
            xy, yy, xy_test, yy_test = data
            problems["yacht"] = run_problem("yacht", xy, yy, xy_test, yy_test, mclmc,
                                            *yacht_size, args.seed)
            print_table(f"yacht split 0: {len(yy)} training rows, width {yacht_size[0]}, depth "
                        f"{yacht_size[1]}, MCLMC {mclmc.config()}", problems["yacht"], len(yy))
    rows = ["problem,configuration,params,elpd_loo,elpd_se,p_loo,train_rmse,test_rmse,"
            "min_chain_ess,ess_per_second,fit_seconds,load,hyper_median,failed_checks"]
    for problem, results in problems.items():
        for name, r in results.items():
            hyper = "" if r["hyper"] is None else f"{np.median(r['hyper']):.4g}"
            failed = " ".join(c.replace(" ", "_") for c in r["failed"])
            rows.append(f"{problem},{name},{r['params']},{r['elpd']:.3f},{r['elpd_se']:.3f},"
                        f"{r['p_loo']:.2f},{r['train_rmse']:.4f},{r['test_rmse']:.4f},"
                        f"{r['ess']:.2f},{r['ess_per_s']:.4f},{r['seconds']:.1f},"
                        f"{r['load']:.1f},{hyper},{failed}")
    (args.out / "depth_priors.csv").write_text("\n".join(rows) + "\n")
    figure(problems, args.out / "depth_priors.png")
    print(f"wrote {args.out / 'depth_priors.png'} and depth_priors.csv in "
          f"{time.perf_counter() - start:.1f} s (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
