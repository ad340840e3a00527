"""The neural-ODE view of a weight-parameterized ResNet.

A depth-L ResNet h_{n+1} = h_n + dt act(W(t_n) h_n + b(t_n)) is L explicit Euler steps of the ODE
dh/dt = act(W(t) h + b(t)). This script looks at the network through that lens in two parts.

1. ResNet view versus ODE view as depth grows (a fixed random network with a cubic depth basis):

   * output error of Euler, midpoint and RK4 against a converged solution, showing orders 1, 2, 4;
   * gradients: backprop through the discrete network (discretize-then-optimize) against the
     continuous adjoint integrated backwards on the same grid (optimize-then-discretize). They
     differ by O(dt^p) and agree only as the ResNet becomes a true ODE solver.

2. Stiffness across depth bases: small deterministic networks (several seeds, trained together
   as one batch with a plain Adam loop on the ``sine`` toy) for the piecewise (ordinary ResNet),
   constant, linear and cubic bases. For each trained network it measures the Jacobian spectrum
   along the training trajectories (:func:`bayesresnet.ode.stiffness`), the Jacobian penalty
   (:func:`bayesresnet.ode.jacobian_penalty`), how far the trained ResNet is from the ODE it
   discretizes (Euler versus RK4 output on the same weights), and the generalization gap (test
   minus training mean squared error), and relates them.

Figures (PNG) go to ``--out`` (default ``ode_view_figures/``): ``convergence.png``,
``stiffness_by_basis.png``, ``stiffness_vs_gap.png``; a summary table is printed.

Usage::

    python examples/ode_view.py [--out DIR] [--fast]

About 1-2 minutes on 2 CPU cores; ``--fast`` (or ``BAYESRESNET_FAST=1``) runs a reduced version
in well under 30 seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import NullFormatter
from scipy.stats import spearmanr

import bayesresnet as brn
from bayesresnet import data, ode

INTEGRATORS = ("euler", "midpoint", "rk4")
BASES = ("piecewise", "constant", "linear", "cubic")


# ---------------------------------------------------------------------------- part 1
def convergence_study(depths: list[int], reference_depth: int) -> dict:
    """Output and gradient errors of a fixed network with a cubic basis, per integrator."""
    gen = torch.Generator().manual_seed(0)
    width, horizon = 6, 1.0
    template = brn.ResNet(1, 1, width, 4, basis="cubic", horizon=horizon)
    params = template.init_params(gen)
    params["W_coef"] = torch.randn(4, width, width, generator=gen, dtype=torch.float64) * 0.6
    params["b_coef"] = torch.randn(4, width, generator=gen, dtype=torch.float64) * 0.3
    x = torch.linspace(-2.0, 2.0, 16, dtype=torch.float64).unsqueeze(-1)
    y = torch.sin(2.0 * x[:, 0])

    def net(depth: int, integrator: str) -> brn.ResNet:
        return brn.ResNet(1, 1, width, depth, basis="cubic", horizon=horizon,
                          integrator=integrator)

    # RK4 at a depth where its error is at rounding level stands in for the exact ODE.
    exact_out = net(reference_depth, "rk4").forward(params, x)
    exact_grad = ode.adjoint_gradient(net(reference_depth, "rk4"), params, x, y)

    def rel(a: dict, b: dict) -> float:
        num = sum(((a[k] - b[k]) ** 2).sum() for k in a)
        return float(num.sqrt() / sum((b[k] ** 2).sum() for k in b).sqrt())

    results = {}
    for integrator in INTEGRATORS:
        rows = []
        for depth in depths:
            model = net(depth, integrator)
            out_err = float((model.forward(params, x) - exact_out).abs().max())
            backprop = ode.backprop_gradient(model, params, x, y)
            adjoint = ode.adjoint_gradient(model, params, x, y)
            rows.append((out_err, rel(adjoint, backprop), rel(backprop, exact_grad),
                         rel(adjoint, exact_grad)))
        results[integrator] = np.array(rows)
    return results


def plot_convergence(depths: list[int], results: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    colors = dict(zip(INTEGRATORS, ("C0", "C1", "C2"), strict=True))
    for integrator, rows in results.items():
        c = colors[integrator]
        axes[0].loglog(depths, rows[:, 0], "o-", color=c, label=integrator)
        axes[1].loglog(depths, rows[:, 1], "o-", color=c, label=integrator)
        axes[2].loglog(depths, rows[:, 2], "o-", color=c, label=f"{integrator} backprop")
        axes[2].loglog(depths, rows[:, 3], "s--", color=c, label=f"{integrator} adjoint")
    for order in (1, 2, 4):
        ref = np.array(depths, dtype=float) ** (-order)
        axes[0].loglog(depths, ref * results["euler"][0, 0] * depths[0] ** order, ":",
                       color="grey", lw=0.8)
    axes[0].set(title="output error vs converged ODE\n(dotted: slopes 1, 2, 4)",
                xlabel="depth L", ylabel="max |f_L(x) - f(x)|")
    axes[1].set(title="ResNet (backprop) vs ODE (adjoint) gradient",
                xlabel="depth L", ylabel="relative difference")
    axes[2].set(title="gradient error vs continuous gradient",
                xlabel="depth L", ylabel="relative error")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- part 2
def train_members(basis: str, x: torch.Tensor, y: torch.Tensor, *, seeds: int, depth: int,
                  width: int, steps: int) -> tuple[brn.ResNet, dict]:
    """``seeds`` networks trained together: params carry a leading member dim, and Adam is
    elementwise, so one optimizer on the stacked tensors trains each member independently."""
    net = brn.ResNet(1, 1, width, depth, basis=basis)
    inits = [net.init_params(torch.Generator().manual_seed(100 + s)) for s in range(seeds)]
    params = {k: torch.stack([p[k] for p in inits]).requires_grad_(True) for k in inits[0]}
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ((net.forward(params, x)[..., 0] - y) ** 2).mean(-1).sum()
        loss.backward()
        optimizer.step()
    return net, {k: v.detach() for k, v in params.items()}


def stiffness_study(*, seeds: int, depth: int, width: int, steps: int) -> list[dict]:
    x_train, y_train = data.sine(n=24, seed=0, noise=0.2)
    x_test, y_test = data.sine(n=400, seed=1, noise=0.2)
    sx, sy = data.Standardizer().fit(x_train), data.Standardizer().fit(y_train)

    def as_tensor(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float64)

    xtr, xte = as_tensor(sx.transform(x_train)), as_tensor(sx.transform(x_test))
    ytr = as_tensor(sy.transform(y_train[:, None])[:, 0])
    yte = as_tensor(sy.transform(y_test[:, None])[:, 0])
    rows = []
    for basis in BASES:
        net, params = train_members(basis, xtr, ytr, seeds=seeds, depth=depth, width=width,
                                    steps=steps)
        train_mse = ((net.forward(params, xtr)[..., 0] - ytr) ** 2).mean(-1)
        test_mse = ((net.forward(params, xte)[..., 0] - yte) ** 2).mean(-1)
        stiff = ode.stiffness(net, params, xtr)  # (seeds, N, L)
        penalty = ode.jacobian_penalty(net, params, xtr)
        ode_gap = (net.forward(params, xte)
                   - net.replace(integrator="rk4").forward(params, xte)).pow(2).mean((-2, -1))
        for s in range(seeds):
            ratio = stiff.ratio[s]
            rows.append({
                "basis": basis,
                "seed": s,
                "params": net.num_params,
                "train_mse": float(train_mse[s]),
                "test_mse": float(test_mse[s]),
                "gap": float(test_mse[s] - train_mse[s]),
                "log10_ratio": np.log10(ratio[torch.isfinite(ratio)].numpy()),
                "euler_stability": stiff.euler_stability[s].reshape(-1).numpy(),
                "max_amplification": float(stiff.amplification[s].max()),
                "penalty": float(penalty[s]),
                "ode_rmse": float(ode_gap[s].sqrt()),
            })
    return rows


def plot_stiffness(rows: list[dict], out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, label in ((axes[0], "log10_ratio", "log10 stiffness ratio"),
                           (axes[1], "euler_stability", "dt max |lambda|")):
        values = [np.concatenate([r[key] for r in rows if r["basis"] == b]) for b in BASES]
        ax.boxplot(values, showfliers=False)
        ax.set(ylabel=label, title=f"{label}\n(all training inputs and steps, all seeds)")
    penalties = [[r["penalty"] for r in rows if r["basis"] == b] for b in BASES]
    axes[2].boxplot(penalties)
    axes[2].set(ylabel="int ||J||_F^2 dt", title="Jacobian penalty\n(one value per network)")
    for ax in axes:
        ax.set_xticks(range(1, len(BASES) + 1), BASES)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "stiffness_by_basis.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, basis in enumerate(BASES):
        sel = [r for r in rows if r["basis"] == basis]
        gap = [max(r["gap"], 1e-4) for r in sel]
        axes[0].scatter([r["penalty"] for r in sel], gap, color=f"C{i}", label=basis)
        axes[1].scatter([r["ode_rmse"] for r in sel], gap, color=f"C{i}", label=basis)
    axes[0].set(xscale="log", yscale="log", xlabel="Jacobian penalty  int ||J||_F^2 dt",
                ylabel="generalization gap (test - train MSE)", title="stiffness vs gap")
    axes[1].set(xscale="log", yscale="log", xlabel="RMS(Euler output - RK4 output)",
                ylabel="generalization gap", title="distance from the ODE vs gap")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "stiffness_vs_gap.png", dpi=120)
    plt.close(fig)


def print_table(rows: list[dict]) -> None:
    print(f"{'basis':>10} {'params':>6} {'train':>7} {'test':>7} {'gap':>7} {'med log10':>9} "
          f"{'max dt|l|':>9} {'max|1+dt l|':>11} {'penalty':>8} {'ode rmse':>9}")
    print(f"{'':>10} {'':>6} {'mse':>7} {'mse':>7} {'':>7} {'ratio':>9}")
    for basis in BASES:
        sel = [r for r in rows if r["basis"] == basis]

        def mean(key: str, sel: list[dict] = sel) -> float:
            return float(np.mean([r[key] for r in sel]))

        med_ratio = np.median(np.concatenate([r["log10_ratio"] for r in sel]))
        max_stab = max(float(r["euler_stability"].max()) for r in sel)
        print(f"{basis:>10} {sel[0]['params']:>6d} {mean('train_mse'):7.3f} "
              f"{mean('test_mse'):7.3f} {mean('gap'):7.3f} {med_ratio:9.2f} {max_stab:9.3f} "
              f"{max(r['max_amplification'] for r in sel):11.3f} {mean('penalty'):8.3f} "
              f"{mean('ode_rmse'):9.4f}")
    gaps = [r["gap"] for r in rows]
    for key in ("penalty", "ode_rmse"):
        rho = spearmanr([r[key] for r in rows], gaps).statistic
        print(f"Spearman correlation of {key} with the generalization gap "
              f"over {len(rows)} networks: {rho:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("ode_view_figures"),
                        help="folder for the figures (created if missing)")
    parser.add_argument("--fast", action="store_true",
                        help="reduced run (also enabled by BAYESRESNET_FAST=1)")
    args = parser.parse_args(argv)
    fast = args.fast or os.environ.get("BAYESRESNET_FAST", "") not in ("", "0")
    args.out.mkdir(parents=True, exist_ok=True)
    # The tensors here are tiny: extra threads only add synchronization overhead.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(args.out, fast)
    finally:
        torch.set_num_threads(threads)


def run(out: Path, fast: bool) -> None:
    start = time.perf_counter()
    depths = [2, 4, 8, 16] if fast else [2, 4, 8, 16, 32, 64, 128]
    results = convergence_study(depths, reference_depth=128 if fast else 2048)
    plot_convergence(depths, results, out / "convergence.png")
    print("relative gradient difference backprop vs adjoint, by depth", depths)
    for integrator, rows in results.items():
        print(f"  {integrator:>8}: " + " ".join(f"{v:.1e}" for v in rows[:, 1]))

    settings = (dict(seeds=2, depth=6, width=8, steps=150) if fast
                else dict(seeds=4, depth=12, width=12, steps=2500))
    rows = stiffness_study(**settings)
    plot_stiffness(rows, out)
    print_table(rows)
    print(f"figures written to {out}/ in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
