"""Fits on a Dask cluster: NUTS chain groups and ensemble member groups run on two workers.

Starts a Dask ``LocalCluster`` of two single-threaded worker processes (or connects to a running
cluster with ``--scheduler ADDRESS``), fits NUTS (8 chains in groups of 2) and a deep ensemble
(8 members in groups of 4) to the cubic toy through ``client.get_executor()``, then fits both
again in this process with the same seeds and checks that the draws are identical: every unit's
random streams come from the fit's seed and the unit's index, never from where it ran. The same
code runs on a SLURM or PBS cluster with a ``dask_jobqueue`` cluster in place of the
``LocalCluster`` (see docs/distributed.rst).

Usage::

    python examples/dask_local.py [--out DIR] [--fast] [--seed 0] [--scheduler ADDRESS]

Writes ``dask_local.png`` (the two predictive bands) into ``DIR`` (default
``dask_local_output/``). About 4 minutes on 2 CPU cores, half of it the local refits;
``--fast`` (or ``BAYESRESNET_FAST=1``) uses tiny runs.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

import numpy as np
import torch
from _common import one_thread, parse_args, plot_bands
from matplotlib.figure import Figure

import bayesresnet as brn


def _scheduler_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", default=None,
                        help="address of a running Dask scheduler (default: start a "
                             "LocalCluster of two worker processes)")


def main(argv: list[str] | None = None) -> None:
    from distributed import Client, LocalCluster

    args = parse_args(__doc__, "dask_local_output", argv, extra=_scheduler_option)
    start = time.perf_counter()
    x, y = brn.data.cubic(20, seed=args.seed)
    net = brn.ResNet(in_dim=1, out_dim=1, width=10, depth=8, basis=brn.Linear())
    model = brn.BayesianResNet(net)
    if args.fast:
        methods = {"NUTS": brn.NUTS(num_samples=8, num_warmup=8, chains=4, chains_per_unit=2,
                                    max_tree_depth=3, init_steps=30),
                   "ensemble": brn.Ensemble(members=4, members_per_unit=2, steps=50)}
    else:
        methods = {"NUTS": brn.NUTS(num_samples=200, num_warmup=200, chains=8, chains_per_unit=2,
                                    max_tree_depth=7),
                   "ensemble": brn.Ensemble(members=8, members_per_unit=4, steps=3000)}

    with ExitStack() as stack, one_thread():
        if args.scheduler is None:
            cluster = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=1,
                                                       processes=True, dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(args.scheduler))
        executor = client.get_executor()
        print(f"Dask cluster: {len(client.scheduler_info()['workers'])} workers")

        posteriors = {}
        for name, method in methods.items():
            began = time.perf_counter()
            post = brn.fit(model, x, y, method=method, seed=args.seed, executor=executor,
                           progress=not args.fast, check=False)
            print(f"{name}: fitted on the cluster in {time.perf_counter() - began:.1f} s")
            posteriors[name] = post

    with one_thread():
        for name, method in methods.items():
            local = brn.fit(model, x, y, method=method, seed=args.seed, progress=False,
                            check=False)
            same = all(torch.equal(local.draws[site], posteriors[name].draws[site])
                       for site in local.draws)
            print(f"{name}: same draws locally and on the cluster: {same}")
            if not same:
                raise SystemExit(f"{name}: the local and the distributed fit differ")

        fig = Figure(figsize=(10, 4), layout="constrained")
        grid = np.linspace(-6, 6, 241)[:, None]
        for i, (name, post) in enumerate(posteriors.items()):
            ax = fig.add_subplot(1, 2, i + 1)
            plot_bands(ax, post, grid, f"{name} on two Dask workers")
            ax.legend(fontsize=7)
        fig.savefig(args.out / "dask_local.png", dpi=110)
    print(f"wrote {args.out / 'dask_local.png'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
