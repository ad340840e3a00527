"""Does the weight basis make full Bayesian inference more feasible? NUTS mixing per basis.

The same data (the cubic toy, 20 points), the same width and depth, the same prior; only the
depth basis of the weights changes: piecewise constant (the ordinary ResNet, one weight matrix
per layer), cubic, linear. For each, NUTS runs with the same settings, and the convergence of the
identifiable quantities, the network mean f at 50 test inputs (``Posterior.evaluate``, as in the
``predictions`` group), is measured with ArviZ: rank-normalized split R-hat (max over inputs)
and bulk effective sample size (min and median over inputs) per second of sampling.
Raw weights are not compared: permutation and sign symmetries make them non-identifiable. Every
basis gets the same budget (4 chains of 100 warmup and 100 kept iterations, trees of at most 63
leapfrog steps; measured 271 s of wall time on 2 idle cores, where 150 + 150 iterations took
349 s); ESS per second
then compares how much each parameterization's sampling yields for the compute it costs.

Usage::

    python examples/mixing_vs_basis.py [--out DIR] [--fast] [--seed 0]

Writes ``DIR/mixing_vs_basis.png`` (R-hat and ESS per second per basis, and the traces of f at
one input; default ``DIR``: ``mixing_vs_basis_figures/``) and prints a table. Not timed in full
mode since the trim (three NUTS runs of 300 iterations, nearly every tree at the cap).
``--fast`` (or ``BAYESRESNET_FAST=1``) runs tiny chains (numbers meaningless, for testing) in
under a minute.
"""

from __future__ import annotations

import time

import numpy as np
from _common import one_thread, parse_args
from matplotlib.figure import Figure

import bayesresnet as brn
from bayesresnet.arviz_compat import draws_dataset
from bayesresnet.arviz_compat import ess as compat_ess
from bayesresnet.arviz_compat import rhat as compat_rhat

BASES = {"piecewise": brn.Piecewise(), "cubic": brn.Cubic(), "linear": brn.Linear()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, "mixing_vs_basis_figures", argv)
    start = time.perf_counter()
    x, y = brn.data.cubic(20, seed=args.seed)
    x_test = np.linspace(-4.5, 4.5, 50)[:, None]
    nuts = (brn.NUTS(num_samples=30, num_warmup=30, chains=2, max_tree_depth=4, init_steps=50)
            if args.fast else brn.NUTS(num_samples=100, num_warmup=100, chains=4, max_tree_depth=6))
    width, depth = (6, 4) if args.fast else (8, 8)
    results = {}
    with one_thread():
        for name, basis in BASES.items():
            net = brn.ResNet(in_dim=1, out_dim=1, width=width, depth=depth, basis=basis)
            model = brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                                       likelihood=brn.likelihoods.Gaussian())
            post = brn.fit(model, x, y, method=nuts, seed=args.seed, progress=False)
            loc, _, _ = post.evaluate(x_test)  # (chain, draw, point, output), as in predictions
            f = draws_dataset({"f": loc[..., 0].numpy()})
            rhat = compat_rhat(f)["f"].values.reshape(-1)
            ess = compat_ess(f, "bulk")["f"].values.reshape(-1)
            steps = np.asarray(post.stats["num_steps"]).mean()
            results[name] = {"params": model.dim, "rhat": rhat, "ess": ess,
                             "seconds": post.fit_seconds, "steps": steps,
                             "trace": f["f"].values[:, :, len(x_test) // 2],
                             "diverging": float(np.asarray(post.stats["diverging"]).mean())}

    print(f"{'basis':<10} {'params':>6} {'max R-hat':>9} {'min ESS':>8} {'median ESS':>10} "
          f"{'fit s':>7} {'min ESS/s':>9} {'leapfrog/draw':>13} {'divergent':>9}")
    for name, r in results.items():
        print(f"{name:<10} {r['params']:>6} {np.nanmax(r['rhat']):9.3f} {np.nanmin(r['ess']):8.0f} "
              f"{np.nanmedian(r['ess']):10.0f} {r['seconds']:7.1f} "
              f"{np.nanmin(r['ess']) / r['seconds']:9.2f} {r['steps']:13.1f} "
              f"{r['diverging']:9.1%}")

    fig = Figure(figsize=(12, 6.5), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    names = list(results)
    ax = fig.add_subplot(grid[0, 0])
    ax.boxplot([results[n]["rhat"] for n in names])
    ax.axhline(1.01, color="C3", ls="--", lw=1, label="1.01")
    ax.set(xticks=range(1, len(names) + 1), xticklabels=names, ylabel="split R-hat of f",
           title="R-hat at 50 test inputs")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[0, 1])
    ax.boxplot([results[n]["ess"] / results[n]["seconds"] for n in names])
    ax.set(xticks=range(1, len(names) + 1), xticklabels=names, yscale="log",
           ylabel="bulk ESS of f per second", title="sampling efficiency")
    ax = fig.add_subplot(grid[0, 2])
    ax.bar(names, [results[n]["params"] for n in names], color=["C0", "C1", "C2"])
    ax.set(ylabel="parameters", title="posterior dimension")
    for i, n in enumerate(names):
        ax = fig.add_subplot(grid[1, i])
        for chain in results[n]["trace"]:
            ax.plot(chain, lw=0.7, alpha=0.8)
        ax.set(xlabel="draw", ylabel=f"f(x={x_test[len(x_test) // 2, 0]:.2f})",
               title=f"{n}: chains at one input")
    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
    path = args.out / "mixing_vs_basis.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
