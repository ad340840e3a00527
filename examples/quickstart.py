"""The README quickstart as a script: fit, predict, check, save, load, report.

Fits a Bayesian ResNet (width 10, depth 8, linear depth basis) to the cubic toy (20 points) with
NUTS, predicts at 1000 fresh points from the same distribution, prints accuracy, calibration and
the convergence diagnostics, saves the run to netCDF and loads it back (predictions agree
exactly), and writes the HTML report.

Usage::

    python examples/quickstart.py [--out DIR] [--fast] [--seed 0]

Writes into ``DIR`` (default ``quickstart_output/``): ``quickstart.png`` (predictive band),
``run.nc`` (the saved posterior) and ``report/index.html`` (the diagnostic report, with the run
again as ``report/posterior.nc``). This posterior needs small NUTS step sizes and
trajectories of hundreds of leapfrog steps. Aiming at 5 minutes on 2 CPU cores, the run (4
chains of 150 warmup and 150 kept iterations, trees of at most 127 steps) is too short for its
diagnostics to pass everywhere; read them. Measured: 254 s of wall time (``OMP_NUM_THREADS=1``,
2 idle cores, another example on the second core); 200 + 200 iterations took 312 s. ``--fast`` (or
``BAYESRESNET_FAST=1``) uses a tiny NUTS run (its diagnostics fail, as they should).
"""

from __future__ import annotations

import time

import numpy as np
from _common import one_thread, parse_args, plot_bands
from matplotlib.figure import Figure

import bayesresnet as brn
from bayesresnet.export import load


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, "quickstart_output", argv)
    start = time.perf_counter()

    x, y = brn.data.cubic(20, seed=args.seed)                  # x (20, 1), y (20,)
    x_new, y_new = brn.data.cubic(1000, seed=args.seed + 1)    # fresh test points
    net = brn.ResNet(in_dim=1, out_dim=1, width=10, depth=8, basis=brn.Linear())
    model = brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                               likelihood=brn.likelihoods.Gaussian())
    nuts = (brn.NUTS(num_samples=40, num_warmup=40, chains=2, max_tree_depth=5, init_steps=100)
            if args.fast else brn.NUTS(num_samples=150, num_warmup=150, chains=4, max_tree_depth=7))

    with one_thread():
        post = brn.fit(model, x, y, method=nuts, seed=args.seed, progress=not args.fast)
        print(post)
        pred = post.predict(x_new)          # mean, std, epistemic_std, aleatoric_std: (N, 1)
        lo, hi = pred.interval(0.95)        # central predictive interval including noise
        print(f"test RMSE {brn.metrics.rmse(pred, y_new):.3f}, "
              f"NLL {brn.metrics.nll(pred, y_new):.3f}, "
              f"95% coverage {brn.metrics.coverage(pred, y_new):.3f}, "
              f"mean 95% width {np.mean(hi - lo):.2f}")
        print(post.diagnose())

        run = post.save(args.out / "run.nc")
        again = load(run).predict(x_new)
        assert np.array_equal(again.mean, pred.mean), "a loaded run predicts the same"
        print(f"saved and reloaded {run}: identical predictions")

        page = brn.report(post, args.out / "report", x_test=x_new, y_test=y_new)
        print(f"report: {page}")

        fig = Figure(figsize=(6, 4.2), layout="constrained")
        ax = fig.add_subplot()
        plot_bands(ax, post, np.linspace(-6, 6, 241)[:, None], "NUTS on the cubic toy")
        ax.legend(fontsize=7)
        fig.savefig(args.out / "quickstart.png", dpi=110)
    print(f"wrote {args.out / 'quickstart.png'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
