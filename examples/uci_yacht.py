"""One split of the UCI yacht hydrodynamics benchmark, end to end, with the diagnostic report.

Loads split ``--split`` (default 0) of the standard 20 train/test splits of ``yacht`` (308
hulls, 6 inputs, residuary resistance as the target; Hernandez-Lobato & Adams 2015), fits a
Bayesian ResNet (width 16, depth 8, cubic depth basis), prints test RMSE, NLL, 95% coverage,
95% interval width and CRPS with the convergence diagnostics, and writes the HTML report with
the test data (parity plot with intervals, calibration curve, metrics).

The default method is a deep ensemble (8 members), which fits in about a minute. NUTS
(``--method nuts``) also works but the yacht posterior is sharply peaked (the noise is about 1%
of the target's spread), so its trajectories are long and a converged run takes far longer than
the other methods.

Data: ``--data-root ROOT``, in the layout of :func:`bayesresnet.data.uci`. Without it: the
``BAYESRESNET_DATA`` environment variable, else ``../shared/data/uci`` next to the repository when
it holds ``yacht``, else the copy that :func:`bayesresnet.data.uci` keeps in the user's cache,
downloaded from the UCI repository on first use (about 11 kB; its numbers are checked against
a pinned SHA-256).

Usage::

    python examples/uci_yacht.py [--out DIR] [--fast] [--seed 0] [--split 0] [--method ensemble]
                                 [--data-root ROOT]

Writes ``DIR/report/index.html`` and ``DIR/report/posterior.nc`` (default ``DIR``:
``uci_yacht_output/``). About 1-2 minutes on 2 CPU cores with the default method; ``--fast``
(or ``BAYESRESNET_FAST=1``) trains briefly (well under a minute).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import one_thread, parse_args

import bayesresnet as brn

REPO = Path(__file__).resolve().parents[1]


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", type=int, default=0, help="standard split (0-19)")
    parser.add_argument("--method", default="ensemble",
                        choices=["ensemble", "nuts", "meanfield", "lowrank", "map"],
                        help="inference method (default: %(default)s)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="UCI data root (default: $BAYESRESNET_DATA, else "
                             "../shared/data/uci next to the repository, else a cached "
                             "download from the UCI repository)")


def data_root(given: Path | None) -> Path | None:
    """The root to read yacht from; None lets ``brn.data.uci`` look (environment, cache, UCI)."""
    if given is not None or os.environ.get(brn.data.DATA_ENV_VAR, ""):
        return given
    shared = REPO.parent / "shared" / "data" / "uci"
    return shared if (shared / "yacht").is_dir() else None


def method_for(name: str, fast: bool) -> brn.inference.InferenceMethod:
    if fast:
        return {"ensemble": brn.Ensemble(members=4, steps=300),
                "nuts": brn.NUTS(num_samples=20, num_warmup=20, chains=2, max_tree_depth=4,
                                 init_steps=100),
                "meanfield": brn.MeanField(steps=300, num_draws=200),
                "lowrank": brn.LowRank(steps=300, num_draws=200),
                "map": brn.MAP(steps=300)}[name]
    return {"ensemble": brn.Ensemble(members=8, steps=4000),
            "nuts": brn.NUTS(num_samples=500, num_warmup=500, chains=4),
            "meanfield": brn.MeanField(steps=10000, num_draws=1000),
            "lowrank": brn.LowRank(steps=10000, num_draws=1000),
            "map": brn.MAP(steps=4000)}[name]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, "uci_yacht_output", argv, extra=_options)
    start = time.perf_counter()
    try:
        x, y, x_test, y_test = brn.data.uci("yacht", split=args.split,
                                            root=data_root(args.data_root))
    except FileNotFoundError as err:  # no local copy, and offline (DataUnavailableError)
        raise SystemExit(f"uci_yacht.py: {err}") from None
    print(f"yacht split {args.split}: {len(x)} training and {len(x_test)} test rows, "
          f"{x.shape[1]} inputs")
    net = brn.ResNet(in_dim=x.shape[1], out_dim=1, width=16, depth=8, basis=brn.Cubic())
    model = brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                               likelihood=brn.likelihoods.Gaussian())
    with one_thread():
        post = brn.fit(model, x, y, method=method_for(args.method, args.fast), seed=args.seed,
                       progress=not args.fast)
        pred = post.predict(x_test)
        print(f"{post}\ntest RMSE {brn.metrics.rmse(pred, y_test):.3f}, "
              f"NLL {brn.metrics.nll(pred, y_test):.3f}, "
              f"95% coverage {brn.metrics.coverage(pred, y_test):.3f}, "
              f"95% width {brn.metrics.interval_width(pred):.3f}, "
              f"CRPS {brn.metrics.crps(pred, y_test):.3f}")
        print(post.diagnose())
        page = brn.report(post, args.out / "report", x_test=x_test, y_test=y_test,
                          title=f"bayesresnet: UCI yacht, split {args.split}, {args.method}")
    print(f"wrote {page} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
