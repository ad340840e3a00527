"""Shared plumbing of the example scripts: command line, fast mode, threads, band plots.

Not an example itself. Every example accepts ``--out DIR`` (its figure folder), ``--fast`` (a
reduced run for tests, also switched on by the environment variable ``BAYESRESNET_FAST=1``) and
``--seed``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import bayesresnet as brn

FAST_ENV_VAR = "BAYESRESNET_FAST"


def parse_args(doc: str, default_out: str, argv: list[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    """Parse the common options (plus ``extra`` ones); ``args.fast`` includes the env var."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc)
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help="folder for the figures (created if missing; default: "
                             "%(default)s)")
    parser.add_argument("--fast", action="store_true",
                        help=f"reduced run for tests (also enabled by {FAST_ENV_VAR}=1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and fits")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.fast = args.fast or os.environ.get(FAST_ENV_VAR, "") not in ("", "0")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


@contextmanager
def one_thread() -> Iterator[None]:
    """The example models are tiny: one torch thread is fastest (and best on a shared machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def four_methods(fast: bool) -> dict[str, brn.inference.InferenceMethod]:
    """NUTS, mean-field VI, low-rank VI and a deep ensemble, full or reduced settings."""
    if fast:
        return {"NUTS": brn.NUTS(num_samples=40, num_warmup=40, chains=2, max_tree_depth=5,
                                 init_steps=100),
                "mean-field VI": brn.MeanField(steps=300, num_draws=200),
                "low-rank VI": brn.LowRank(steps=300, num_draws=200),
                "ensemble": brn.Ensemble(members=4, steps=300)}
    # The toys' posteriors need NUTS step sizes near 0.01 and long trajectories; the tree depth
    # is capped and the runs are short so that the four fits stay within the examples' budget
    # of 5 minutes on 2 cores (NUTS takes most of it; its diagnostics say it is too short).
    # Trimmed after timing (NUTS trees hit the cap on nearly every iteration): 200 + 200
    # iterations at depth 7 cost 324 s of NUTS alone in toy_cubic.py on an idle core; these
    # settings run toy_cubic.py in 266 s and toy_gap.py in 239 s.
    return {"NUTS": brn.NUTS(num_samples=150, num_warmup=150, chains=4, max_tree_depth=6),
            "mean-field VI": brn.MeanField(steps=3000, num_draws=1000),
            "low-rank VI": brn.LowRank(steps=3000, num_draws=1000),
            "ensemble": brn.Ensemble(members=8, steps=2000)}


def plot_bands(ax, post: brn.Posterior, grid: np.ndarray, title: str) -> brn.Prediction:
    """Predictive band, epistemic band and mean of a 1-D, one-output posterior on ``grid``."""
    pred = post.predict(grid)
    lower, upper = pred.interval(0.95)
    f_low, f_high = np.quantile(pred.f_samples[..., 0], [0.025, 0.975], axis=0)
    g = grid[:, 0]
    ax.fill_between(g, lower[:, 0], upper[:, 0], color="C0", alpha=0.18,
                    label="95% predictive (with noise)")
    ax.fill_between(g, f_low, f_high, color="C0", alpha=0.45, label="95% of f (epistemic)")
    ax.plot(g, pred.mean[:, 0], color="C0", lw=1.4, label="mean")
    ax.scatter(post.x_train[:, 0], post.y_train[:, 0], s=12, color="k", zorder=3,
               label="train")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return pred
