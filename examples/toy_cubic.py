"""Four inference methods on the cubic toy: uncertainty where the data are and beyond them.

The cubic toy of Hernandez-Lobato & Adams (2015): 20 points x ~ U[-4, 4], y = x^3 + N(0, 3^2).
A small Bayesian ResNet (width 10, depth 8, linear depth basis) is fitted with NUTS, mean-field
VI, low-rank VI and a deep ensemble, and their predictive bands are drawn side by side on
[-6, 6]. Outside [-4, 4] there are no data, so a faithful posterior grows its epistemic (model)
uncertainty there. The script prints, per method, the test RMSE, NLL and 95% coverage on 1000
fresh points from the same distribution, and the ratio of the mean epistemic standard deviation
out of range (4 < |x| <= 6) to that in the data range (|x| <= 4).

Usage::

    python examples/toy_cubic.py [--out DIR] [--fast] [--seed 0]

Writes ``DIR/toy_cubic.png`` (default ``DIR``: ``toy_cubic_figures/``). The four methods use the
settings of ``_common.four_methods`` (NUTS 4 chains x (150 + 150) iterations, trees of at most
63 leapfrog steps; VI 3000 steps; 8 ensemble members x 2000 steps). Measured: 266 s of wall
time (NUTS 127 s) on 2 idle cores, with ``toy_gap.py`` running on the other core. ``--fast``
(or ``BAYESRESNET_FAST=1``) runs tiny settings in well under a minute.
"""

from __future__ import annotations

import time

import numpy as np
from _common import four_methods, one_thread, parse_args, plot_bands
from matplotlib.figure import Figure

import bayesresnet as brn


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, "toy_cubic_figures", argv)
    start = time.perf_counter()
    x, y = brn.data.cubic(20, seed=args.seed)
    x_test, y_test = brn.data.cubic(1000, seed=args.seed + 1)
    net = brn.ResNet(in_dim=1, out_dim=1, width=10, depth=8, basis=brn.Linear())
    model = brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                               likelihood=brn.likelihoods.Gaussian())
    grid = np.linspace(-6.0, 6.0, 241)[:, None]
    inside = np.abs(grid[:, 0]) <= 4.0

    fig = Figure(figsize=(9, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey=True).reshape(-1)
    print(f"{'method':<14} {'RMSE':>7} {'NLL':>7} {'cov95':>6} {'epistemic out/in':>17} "
          f"{'fit s':>7}")
    with one_thread():
        for ax, (name, method) in zip(axes, four_methods(args.fast).items(), strict=True):
            post = brn.fit(model, x, y, method=method, seed=args.seed, progress=False)
            pred = plot_bands(ax, post, grid, name)
            ax.plot(grid[:, 0], grid[:, 0] ** 3, "k--", lw=0.8, label="x^3")
            epistemic = pred.epistemic_std[:, 0]
            ratio = epistemic[~inside].mean() / epistemic[inside].mean()
            test = post.predict(x_test)
            print(f"{name:<14} {brn.metrics.rmse(test, y_test):7.3f} "
                  f"{brn.metrics.nll(test, y_test):7.3f} "
                  f"{brn.metrics.coverage(test, y_test):6.3f} {ratio:17.2f} "
                  f"{post.fit_seconds:7.1f}")
    for ax in axes:
        ax.axvspan(-6, -4, color="grey", alpha=0.08)
        ax.axvspan(4, 6, color="grey", alpha=0.08)
        ax.set_ylim(-200, 200)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("cubic toy: 20 points in [-4, 4] (shaded: no data)")
    path = args.out / "toy_cubic.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
