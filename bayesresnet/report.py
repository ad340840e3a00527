"""A self-contained HTML diagnostic report of one inference run.

:func:`report` writes ``out_dir/index.html`` and ``out_dir/posterior.nc`` (the run, readable with
:func:`bayesresnet.export.load` and ``arviz.from_netcdf``). The page has no JavaScript, no external
style sheet and no network reference: every figure is embedded as a base64 PNG, so the file can be
mailed, archived or opened offline.

Sections (each an ``<h2>`` with the ``id`` in brackets; a section that does not apply to the run
is left out):

* Run [``run``]: method and settings, model, data size, seed, fit time, library versions.
* Convergence diagnostics [``diagnostics``]: the :func:`bayesresnet.diagnostics.diagnose` table
  with a pass or fail mark per check, its warnings and notes.
* Trace plots [``trace``]: ArviZ trace plots (and rank plots for several chains) of the noise
  scale and of the network mean f at a few training inputs, with their posterior summary.
* Energy [``energy``]: the NUTS energy plot (marginal energy against energy transitions).
* ELBO [``elbo``]: the variational objective per step (VI).
* Training loss [``loss``]: each member's loss per step (ensembles and MAP).
* Predictions [``predictions``]: for one input the predictive band with the data; for several
  inputs a parity plot of the predictive mean against the observations with 95% intervals.
* Metrics [``metrics``]: RMSE, NLL, 95% coverage, 95% interval width and CRPS on the training
  data, and on the test data when given.
* Calibration [``calibration``] (test data only): observed against nominal coverage of central
  predictive intervals.
* Stability [``stability``] (ResNets only): the eigenvalues of the layer Jacobians along the
  trajectories of a few training inputs for a subset of the draws
  (:func:`bayesresnet.ode.posterior_stability`), in the complex plane against the disc where an
  explicit Euler step is stable, with the posterior probability of a stable step per layer and
  overall and the stiffness ratio's credible interval.
* Files [``files``].

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, never
through ``pyplot``, so the user's matplotlib backend and open figures are left alone.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import io
import json
import math
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics
from .arviz_compat import draws_dataset, ess
from .arviz_compat import rhat as compat_rhat
from .diagnostics import INFO_RULE
from .ode import posterior_stability
from .posterior import Posterior, Prediction, as_float_tensor, check_inputs
from .resnet import ResNet
from .validation import as_numpy

__all__ = ["SECTIONS", "compare_report", "convergence_text", "report", "shared_results",
           "summary_rows"]

SECTIONS = {
    "run": "Run",
    "diagnostics": "Convergence diagnostics",
    "trace": "Trace plots",
    "energy": "Energy",
    "elbo": "ELBO",
    "loss": "Training loss",
    "predictions": "Predictions",
    "metrics": "Metrics",
    "calibration": "Calibration",
    "stability": "Stability",
    "files": "Files",
}
"""Section id -> heading, in page order."""

# Training inputs whose function values get trace plots, and outputs they are shown for.
_TRACE_POINTS = 3
_TRACE_OUTPUTS = 2
# Points of the input grid of the 1-D predictive band.
_GRID_POINTS = 200
_DPI = 100
# Stability section: training inputs followed, Jacobian eigen-decompositions (kept draws x
# inputs x layers) it may spend, eigenvalues drawn, and layers listed one per row.
_STABILITY_POINTS = 10
_STABILITY_BUDGET = 4000
_STABILITY_SCATTER = 20_000
_STABILITY_ROWS = 20

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; } td.num { text-align: right; font-family: monospace; }
.pass { color: #1a7f37; font-weight: bold; } .fail { color: #c62828; font-weight: bold; }
.verdict { font-size: 1.1em; } img { max-width: 100%; } pre { background: #f6f6f6;
padding: 0.5em; overflow-x: auto; } nav a { margin-right: 0.8em; }
"""


# ------------------------------------------------------------------------------- HTML helpers
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; numbers right-aligned. Cells that are ``_Raw`` are inserted unescaped."""
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, _Raw):
                cells.append(f"<td>{cell.html}</td>")
            elif isinstance(cell, (int, float, np.integer, np.floating)) and \
                    not isinstance(cell, (bool, np.bool_)):
                cells.append(f'<td class="num">{_esc(_fmt(cell))}</td>')
            else:
                cells.append(f"<td>{_esc(_fmt(cell))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


# A report asks for the same run's predictions at the same inputs in several sections, and a
# comparison page (and the demo's table before it) asks again for every run; within one
# ``shared_results()`` scope each (run, inputs) prediction and each run's diagnostics are
# computed once. The scope ends with the outermost call so no cache outlives a page, and it is
# per thread so concurrent pages do not see each other's.
_SCOPE = threading.local()


@contextlib.contextmanager
def shared_results() -> Iterator[None]:
    """Reuse predictions and diagnostics of the same runs until the outermost scope ends.

    A context manager (also a decorator): within it, each (run, inputs) prediction and each
    run's diagnostics are computed once, e.g. for a table of several runs followed by their
    pages, as ``bayesresnet demo`` does. Per thread; nested scopes share the outermost's."""
    outermost = getattr(_SCOPE, "store", None) is None
    if outermost:
        _SCOPE.store = {}
    try:
        yield
    finally:
        if outermost:
            _SCOPE.store = None


def _shared(posterior: Posterior, key: Any, compute: Any) -> Any:
    store = getattr(_SCOPE, "store", None)
    if store is None:
        return compute()
    full_key = (id(posterior), key)
    if full_key not in store:
        # Keep the run alive with its entry so its id cannot be reused within the scope.
        store[full_key] = (posterior, compute())
    return store[full_key][1]


def _predict(posterior: Posterior, x: np.ndarray) -> Prediction:
    x = np.ascontiguousarray(x, dtype=np.float64)
    key = ("predict", x.shape, hashlib.sha1(x.tobytes()).hexdigest())
    return _shared(posterior, key, lambda: posterior.predict(x))


def _diagnose(posterior: Posterior) -> Any:
    return _shared(posterior, "diagnose", posterior.diagnose)


class _Raw:
    """Already-escaped HTML for a table cell."""

    def __init__(self, markup: str) -> None:
        self.html = markup


def _png(fig: Any) -> str:
    """The figure as an ``<img>`` with a base64 PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software" text chunk: the page carries no reference to any web address.
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# ------------------------------------------------------------------------------- sections
def _run_section(posterior: Posterior) -> str:
    from ._version import __version__

    model = posterior.model
    net = model.user_net
    columns = posterior.extra.get("columns")
    rows: list[tuple[str, Any]] = [
        ("method", posterior.method.name),
        ("chains x draws", f"{posterior.num_chains} x {posterior.num_draws}"),
        ("network", f"{type(net).__name__}: {model.in_dim} input(s), {model.out_dim} "
                    f"output(s), width {net.width}, depth {net.depth}"),
        ("unconstrained parameters", model.dim),
        ("training points", posterior.x_train.shape[0]),
        ("seed", posterior.seed),
        ("fit seconds", round(posterior.fit_seconds, 2)),
        ("computed in", f"{posterior.fit_dtype} on {posterior.fit_device}"),
        ("bayesresnet version", __version__),
    ]
    if isinstance(columns, dict):
        for key in ("inputs", "targets"):
            if key in columns:
                rows.append((f"{key} (columns)", ", ".join(map(str, columns[key]))))
    settings = json.dumps(posterior.method.config(), indent=1)
    config = json.dumps(model.config(), indent=1)
    return (_table(["", ""], rows)
            + f"<p>Method settings:</p><pre>{_esc(settings)}</pre>"
            + f"<p>Model configuration:</p><pre>{_esc(config)}</pre>")


# What each rule of MCMC diagnostics means, for the reader of a report.
_RULE_TEXT = {
    "chain-wise": "the chains started at distinct modes on purpose, so each chain must mix "
                  "within its own mode (split R-hat and ESS per chain); the pooled R-hat "
                  "measures how different the modes are and is reported, not checked.",
    "pooled": "the chains started from one distribution, so all chains together must agree "
              "(pooled R-hat and ESS); the chain-wise R-hat is reported, not checked.",
}


def _diagnostics_section(posterior: Posterior) -> tuple[str, bool]:
    diag = _diagnose(posterior)
    table = diag.table
    rows = []
    for record in table.itertuples(index=False):
        if record.rule == INFO_RULE:  # a figure that is reported, not checked
            rows.append((record.check, float(record.value), "not checked", "info"))
            continue
        mark = (_Raw('<span class="pass">&#10004; pass</span>') if record.passed
                else _Raw('<span class="fail">&#10008; FAIL</span>'))
        rows.append((record.check, float(record.value), f"{record.rule} {_fmt(record.threshold)}",
                     mark))
    if diag.num_checks == 0:
        verdict = "no convergence checks apply to this run"
    elif diag.ok:
        verdict = f"all {diag.num_checks} checks passed"
    else:
        verdict = f"{len(diag.failed)} of {diag.num_checks} checks FAILED"
    css = "pass" if diag.ok else "fail"
    parts = [f'<p class="verdict">{_esc(diag.method)}: <span class="{css}">{_esc(verdict)}'
             "</span></p>"]
    if diag.rule is not None:
        parts.append(f"<p>Mixing judged by the <b>{_esc(diag.rule)}</b> rule: "
                     f"{_esc(_RULE_TEXT[diag.rule])} Pooled R-hat "
                     f"{_esc(_fmt(diag.details.get('pooled_rhat', math.nan)))}, worst "
                     "chain-wise R-hat "
                     f"{_esc(_fmt(diag.details.get('chainwise_rhat', math.nan)))}.</p>")
    if len(table):
        parts.append(_table(["check", "value", "rule", "result"], rows))
    for title, items in (("Warnings", diag.warnings), ("Notes", diag.notes)):
        if items:
            parts.append(f"<p>{title}:</p><ul>"
                         + "".join(f"<li>{_esc(item)}</li>" for item in items) + "</ul>")
    return "\n".join(parts), diag.ok


def _trace_points(x: np.ndarray, count: int = _TRACE_POINTS) -> np.ndarray:
    """Indices of ``count`` training inputs (fewer if there are fewer): spread over the
    (first) input's range."""
    n = x.shape[0]
    order = np.argsort(x[:, 0], kind="stable")
    picks = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
    return order[picks]


def _point_label(x: np.ndarray, index: int) -> str:
    if x.shape[1] == 1:
        return f"x={x[index, 0]:.3g}"
    return f"train point {index}"


def _trace_quantities(posterior: Posterior) -> dict[str, np.ndarray]:
    """Scalar quantities (chain, draw) to trace: noise scale(s) and f at a few inputs, all in
    original units (the model's noise site is in standardized units)."""
    out_dim = posterior.model.out_dim
    quantities: dict[str, np.ndarray] = {}
    noise = posterior.draws.get("noise")
    if noise is not None and tuple(noise.shape[2:]) == (out_dim,):
        scaled = noise.numpy() * posterior.y_scaler.std
        for j in range(min(out_dim, _TRACE_OUTPUTS)):
            quantities["noise" if out_dim == 1 else f"noise[{j}]"] = scaled[..., j]
    points = _trace_points(posterior.x_train)
    f, _, _ = posterior.evaluate(posterior.x_train[points])  # (chain, draw, point, output)
    for column, i in enumerate(points):
        label = _point_label(posterior.x_train, int(i))
        for j in range(min(out_dim, _TRACE_OUTPUTS)):
            name = f"f({label})" if out_dim == 1 else f"f{j}({label})"
            quantities[name] = f[:, :, column, j].numpy()
    return quantities


def _density_and_trace(quantities: dict[str, np.ndarray],
                       diverging: np.ndarray | None) -> str:
    """Per quantity: a histogram per chain (left) and the draws per chain (right)."""
    count = len(quantities)
    fig = _figure(10, 1.9 * count)
    axes = np.array(fig.subplots(count, 2, squeeze=False))
    for row, (name, values) in enumerate(quantities.items()):
        left, right = axes[row]
        for chain, draws in enumerate(values):
            color = f"C{chain % 10}"
            left.hist(draws, bins=30, density=True, histtype="step", color=color)
            right.plot(draws, lw=0.6, alpha=0.8, color=color)
            if diverging is not None and diverging[chain].any():
                steps = np.flatnonzero(diverging[chain])
                right.plot(steps, draws[steps], "|", color="k", ms=6)
        left.set_title(name, fontsize=9)
        right.set_title(name, fontsize=9)
        right.set_xlabel("draw" if row == count - 1 else "")
    return _png(fig)


def _rank_plot(quantities: dict[str, np.ndarray]) -> str:
    """Per quantity: a histogram of each chain's ranks among all draws (flat when mixed)."""
    count = len(quantities)
    fig = _figure(10, 2.0 * math.ceil(count / 2))
    axes = np.array(fig.subplots(math.ceil(count / 2), 2, squeeze=False)).reshape(-1)
    for ax in axes[count:]:
        ax.set_axis_off()
    for ax, (name, values) in zip(axes, quantities.items(), strict=False):
        chains, draws = values.shape
        ranks = values.reshape(-1).argsort(kind="stable").argsort(kind="stable")
        ranks = ranks.reshape(chains, draws)
        bins = np.linspace(0, chains * draws, min(20, max(draws // 5, 2)) + 1)
        heights = np.stack([np.histogram(ranks[c], bins=bins)[0] for c in range(chains)])
        offset = 1.2 * heights.max()
        expected = draws / (len(bins) - 1)  # each bin's count for a well-mixed chain
        for chain in range(chains):
            base = chain * offset
            ax.stairs(heights[chain] + base, bins, baseline=base, color=f"C{chain % 10}")
            ax.axhline(base + expected, color="0.4", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_yticks([])
    return _png(fig)


def _summary_rows(quantities: dict[str, np.ndarray], chains: int) -> tuple[list[str], list]:
    dataset = draws_dataset(quantities)
    bulk, tail = ess(dataset, "bulk"), ess(dataset, "tail")
    header = ["quantity", "mean", "sd", "5%", "95%", "ess_bulk", "ess_tail"]
    r_hat = compat_rhat(dataset) if chains > 1 else None
    if r_hat is not None:
        header.append("r_hat")
    rows = []
    for name, values in quantities.items():
        flat = values.reshape(-1)
        low, high = np.quantile(flat, [0.05, 0.95])
        row = [name, float(flat.mean()), float(flat.std(ddof=1)), float(low), float(high),
               float(bulk[name]), float(tail[name])]
        if r_hat is not None:
            row.append(float(r_hat[name]))
        rows.append(tuple(row))
    return header, rows


def _trace_section(posterior: Posterior) -> str | None:
    if posterior.num_chains * posterior.num_draws < 2:
        return None
    quantities = _trace_quantities(posterior)
    diverging = None
    if "diverging" in posterior.stats and posterior.num_draws > 1:
        diverging = as_numpy(posterior.stats["diverging"], np.float64).astype(bool).reshape(
            posterior.num_chains, posterior.num_draws)
    parts = ["<p>Marginal densities per chain (left) and traces (right; divergent transitions "
             "marked) of the noise scale and of the network mean f at a few training inputs "
             "(original units). The raw weights are not shown: the network's permutation and "
             "sign symmetries make them non-identifiable.</p>",
             _density_and_trace(quantities, diverging)]
    if posterior.num_chains > 1:
        parts.append("<p>Rank plots: with well-mixed chains, each chain's histogram of ranks "
                     "is flat.</p>")
        parts.append(_rank_plot(quantities))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        header, rows = _summary_rows(quantities, posterior.num_chains)
    parts.append(_table(header, rows))
    return "\n".join(parts)


def _energy_section(posterior: Posterior) -> str | None:
    if posterior.method.kind != "mcmc" or "energy" not in posterior.stats:
        return None
    if posterior.num_draws < 3:
        return None
    energy = as_numpy(posterior.stats["energy"], np.float64).reshape(posterior.num_chains, -1)
    centred = (energy - energy.mean(axis=1, keepdims=True)).reshape(-1)
    changes = np.diff(energy, axis=1).reshape(-1)
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(np.concatenate([centred, changes]), bins=40)
    ax.hist(centred, bins=bins, density=True, alpha=0.6, label="marginal energy (centred)")
    ax.hist(changes, bins=bins, density=True, alpha=0.6, label="energy change between draws")
    ax.legend(fontsize=8)
    ax.set_xlabel("energy")
    return ("<p>Marginal energy distribution against the distribution of energy changes "
            "between draws: when the second is much narrower, the sampler explores the "
            "energy levels slowly (low E-BFMI) and may miss the tails.</p>" + _png(fig))


def _history_plot(history: np.ndarray, ylabel: str, title: str) -> str:
    """Two panels: the whole history and its second half. history: (steps, members)."""
    steps = np.arange(1, history.shape[0] + 1)
    fig = _figure(10, 3.4)
    axes = fig.subplots(1, 2)
    half = history.shape[0] // 2
    for ax, start, label in ((axes[0], 0, "whole run"), (axes[1], half, "second half")):
        for m in range(history.shape[1]):
            ax.plot(steps[start:], history[start:, m], lw=0.7, alpha=0.8)
        ax.set(xlabel="step", ylabel=ylabel, title=f"{title}: {label}")
        ax.grid(True, alpha=0.3)
    # The first steps can be orders of magnitude off; keep the whole-run panel readable.
    finite = history[np.isfinite(history)]
    if finite.size:
        low, high = np.quantile(finite, [0.01, 0.99])
        pad = 0.05 * (high - low) + 1e-12
        axes[0].set_ylim(low - pad, high + pad)
    return _png(fig)


def _elbo_section(posterior: Posterior) -> str | None:
    if posterior.method.kind != "variational" or "elbo" not in posterior.stats:
        return None
    elbo = as_numpy(posterior.stats["elbo"], np.float64).reshape(-1, 1)
    return ("<p>Evidence lower bound per optimization step (one Monte Carlo estimate per step); "
            "it should level off well before the end.</p>"
            + _history_plot(elbo, "ELBO", "ELBO"))


def _loss_section(posterior: Posterior) -> str | None:
    if posterior.method.kind not in ("ensemble", "optimization") or "loss" not in posterior.stats:
        return None
    loss = as_numpy(posterior.stats["loss"], np.float64)
    loss = loss.reshape(loss.shape[0], -1)
    return (f"<p>Negative log joint per step for each of the {loss.shape[1]} member(s); each "
            "curve should level off well before the end.</p>"
            + _history_plot(loss, "loss", "loss"))


def _names(posterior: Posterior, key: str, count: int, default: str) -> list[str]:
    columns = posterior.extra.get("columns")
    if isinstance(columns, dict) and isinstance(columns.get(key), list) and \
            len(columns[key]) == count:
        return [str(c) for c in columns[key]]
    return [default] if count == 1 else [f"{default}{j}" for j in range(count)]


def _band_figure(posterior: Posterior, x_test: np.ndarray | None,
                 y_test: np.ndarray | None) -> str:
    """Predictive band over a grid of the one input, one panel per output."""
    x_train, y_train = posterior.x_train, posterior.y_train
    xs = [x_train[:, 0]] + ([x_test[:, 0]] if x_test is not None else [])
    low, high = min(v.min() for v in xs), max(v.max() for v in xs)
    pad = 0.25 * (high - low) if high > low else 1.0
    grid = np.linspace(low - pad, high + pad, _GRID_POINTS)[:, None]
    pred = _predict(posterior, grid)
    lower, upper = pred.interval(0.95)
    f_low, f_high = np.quantile(pred.f_samples, [0.025, 0.975], axis=0)
    out_dim = posterior.model.out_dim
    in_name = _names(posterior, "inputs", 1, "x")[0]
    out_names = _names(posterior, "targets", out_dim, "y")
    fig = _figure(min(5.5 * out_dim, 16), 4)
    axes = np.atleast_1d(fig.subplots(1, out_dim))
    for j, ax in enumerate(axes):
        g = grid[:, 0]
        ax.fill_between(g, lower[:, j], upper[:, j], color="C0", alpha=0.2,
                        label="95% predictive (with noise)")
        ax.fill_between(g, f_low[:, j], f_high[:, j], color="C0", alpha=0.4,
                        label="95% of f (epistemic)")
        ax.plot(g, pred.mean[:, j], color="C0", lw=1.5, label="predictive mean")
        if x_test is not None and y_test is not None:
            ax.scatter(x_test[:, 0], y_test[:, j], s=6, color="C1", alpha=0.5, label="test")
        ax.scatter(x_train[:, 0], y_train[:, j], s=14, color="k", zorder=3, label="train")
        ax.set(xlabel=in_name, ylabel=out_names[j])
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def _parity_figure(posterior: Posterior, x_test: np.ndarray | None,
                   y_test: np.ndarray | None) -> str:
    """Predictive mean against observation with 95% intervals, one panel per output."""
    sets = [("train", posterior.x_train, posterior.y_train, "k")]
    if x_test is not None and y_test is not None:
        sets.append(("test", x_test, y_test, "C1"))
    out_dim = posterior.model.out_dim
    out_names = _names(posterior, "targets", out_dim, "y")
    fig = _figure(min(5 * out_dim, 16), 4.6)
    axes = np.atleast_1d(fig.subplots(1, out_dim))
    for label, x, y, color in sets:
        pred = _predict(posterior, x)
        lower, upper = pred.interval(0.95)
        for j, ax in enumerate(axes):
            err = np.stack([pred.mean[:, j] - lower[:, j], upper[:, j] - pred.mean[:, j]])
            ax.errorbar(y[:, j], pred.mean[:, j], yerr=err, fmt="o", ms=3, color=color,
                        alpha=0.6, elinewidth=0.7, label=f"{label} (95% interval)")
    for j, ax in enumerate(axes):
        values = np.concatenate([s[2][:, j] for s in sets])
        lo, hi = values.min(), values.max()
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set(xlabel=f"observed {out_names[j]}", ylabel=f"predicted {out_names[j]}")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def _metric_row(label: str, pred: Prediction, y: np.ndarray) -> tuple[Any, ...]:
    return (label, y.shape[0], metrics.rmse(pred, y), metrics.nll(pred, y),
            metrics.coverage(pred, y, 0.95), metrics.interval_width(pred, 0.95),
            metrics.crps(pred, y))


def _observed_coverage(pred: Prediction, y: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Observed coverage of the central predictive intervals at ``levels``, shape (len(levels),).

    The numbers of :func:`bayesresnet.metrics.calibration_curve` from one evaluation of the
    predictive CDF F instead of two quantile bisections per level: F is continuous and
    increasing, so y lies in the central interval of level p exactly when its probability
    integral transform u = F(y) satisfies ``abs(u - 1/2) <= p / 2``.
    """
    loc = torch.from_numpy(pred.f_samples)  # (M, N, out_dim)
    scale = torch.from_numpy(pred.noise_scale)
    y_t = torch.as_tensor(np.asarray(y, dtype=np.float64).reshape(pred.mean.shape))
    pit = torch.special.ndtr((y_t - loc) / scale).mean(0).numpy()
    distance = np.abs(pit - 0.5)
    return np.array([np.mean(distance <= level / 2) for level in levels])


def _calibration_figure(pred_test: Prediction, y_test: np.ndarray,
                        pred_train: Prediction, y_train: np.ndarray) -> str:
    levels = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    fig = _figure(4.8, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="ideal")
    ax.plot(levels, _observed_coverage(pred_test, y_test, levels), "o-", color="C1", ms=4,
            label="test")
    ax.plot(levels, _observed_coverage(pred_train, y_train, levels), "s:", color="k", ms=3,
            alpha=0.6, label="train")
    ax.set(xlabel="nominal coverage of the central interval", ylabel="observed coverage",
           xlim=(0, 1), ylim=(0, 1))
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _stability_section(posterior: Posterior) -> str | None:
    """Jacobian spectra against the Euler stability disc; None for a network without an ODE
    view (MLP)."""
    net = posterior.model.net
    if not isinstance(net, ResNet):
        return None
    x = posterior.x_train[_trace_points(posterior.x_train, _STABILITY_POINTS)]
    per_chain = max(1, _STABILITY_BUDGET // (x.shape[0] * net.depth * posterior.num_chains))
    thin = math.ceil(posterior.num_draws / per_chain)
    data = posterior_stability(posterior, x, thin=thin)
    kept, total = data.attrs["draws"], posterior.num_chains * posterior.num_draws
    dt = data.attrs["dt"]

    fig = _figure(6.0, 4.6)
    ax = fig.subplots()
    from matplotlib.patches import Circle

    ax.add_patch(Circle((-1.0, 0.0), 1.0, facecolor="C2", alpha=0.15, edgecolor="C2",
                        label="Euler step stable: |1 + dt \u03bb| \u2264 1"))
    z = dt * data["eigenvalues"].values  # (chain, draw, point, layer, eigen)
    times = np.broadcast_to(data["time"].values[:, None], z.shape).reshape(-1)
    z = z.reshape(-1)
    if z.size > _STABILITY_SCATTER:
        pick = np.random.default_rng(0).choice(z.size, _STABILITY_SCATTER, replace=False)
        z, times = z[pick], times[pick]
    dots = ax.scatter(z.real, z.imag, c=times, s=5, alpha=0.5, cmap="viridis",
                      vmin=0.0, vmax=net.horizon, label="dt \u03bb (draw, input, layer)")
    fig.colorbar(dots, ax=ax, label="t (depth)")
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.axvline(0.0, color="0.5", lw=0.6)
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.set_xlabel("Re dt \u03bb")
    ax.set_ylabel("Im dt \u03bb")
    ax.legend(fontsize=7, loc="upper left")

    probability = data["layer_stability_probability"].values
    layers = np.arange(net.depth)
    note = ""
    if net.depth > _STABILITY_ROWS:
        layers = np.sort(np.argsort(probability, kind="stable")[:_STABILITY_ROWS])
        note = (f"<p>The {_STABILITY_ROWS} layers of lowest probability of the "
                f"{net.depth}.</p>")
    mcse = data["layer_stability_probability_mcse"].values
    rows: list[tuple[Any, ...]] = [(f"layer {n}", float(data["time"].values[n]),
                                    float(probability[n]), float(mcse[n])) for n in layers]
    rows.append(("every layer", "", float(data["stability_probability"]),
                 float(data["stability_probability_mcse"])))
    low, median, high = data["stiffness_ratio_interval"].values
    growing = float((data["spectral_abscissa"].values > 0).mean())
    level = data.attrs["level"]
    return (f"<p>Eigenvalues \u03bb of the Jacobian J = diag(act'(W(t) h + b(t))) W(t) of the "
            f"vector field along the trajectories of {x.shape[0]} training inputs, for {kept} of "
            f"the {total} draws, times the step dt = {_esc(_fmt(dt))}. An explicit Euler step "
            "is stable when |1 + dt \u03bb| \u2264 1 for every eigenvalue: inside the shaded "
            "disc. Probabilities are fractions of these draws whose step is stable at every "
            f"input shown. In {growing:.1%} of the steps shown some eigenvalue has a positive "
            "real part: a mode that the ODE itself grows, outside the disc for every step size, "
            "so such steps count as unstable because the learned dynamics expand, not because "
            "dt is too large.</p>" + _png(fig) + note
            + _table(["step", "t", "P(stable)", "MC standard error"], rows)
            + f"<p>Stiffness ratio max |Re \u03bb| / min |Re \u03bb| over the trajectories "
              f"of a draw: median {_esc(_fmt(float(median)))}, central {level:.0%} interval "
              f"[{_esc(_fmt(float(low)))}, {_esc(_fmt(float(high)))}].</p>")


def _check_test(posterior: Posterior, x_test: Any, y_test: Any
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test must be given together")
    if x_test is None:
        return None, None
    x = check_inputs(x_test, posterior.model.in_dim, "x_test").numpy()
    y = as_float_tensor(y_test, "y_test").numpy()
    if y.ndim == 1:
        y = y[:, None]
    if y.shape != (x.shape[0], posterior.model.out_dim):
        raise ValueError(f"y_test must have shape ({x.shape[0]},) or ({x.shape[0]}, "
                         f"{posterior.model.out_dim}) to match x_test, got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("y_test contains NaN or inf values")
    return x, y


# ------------------------------------------------------------------------------- the report
@shared_results()
def report(posterior: Posterior, out_dir: str | os.PathLike, x_test: Any = None,
           y_test: Any = None, *, title: str | None = None) -> Path:
    """Write a self-contained HTML diagnostic report and the run's netCDF file.

    Parameters
    ----------
    posterior : Posterior
        Any fitted or loaded posterior.
    out_dir : str or path-like
        Folder to write into (created if missing). Receives ``index.html`` and ``posterior.nc``
        (see :meth:`~bayesresnet.Posterior.save`); existing files of those names are replaced.
    x_test : array (N_test, in_dim), optional
        Held-out inputs, original units.
    y_test : array (N_test,) or (N_test, out_dim), optional
        Held-out targets; with ``x_test`` adds test metrics and a calibration curve.
    title : str, optional
        Page title (default: ``"bayesresnet report: <method>"``).

    Returns
    -------
    pathlib.Path
        The path of ``index.html``.

    Notes
    -----
    The sections are listed in the module docstring (:data:`SECTIONS`). If the posterior's
    ``extra["columns"]`` holds ``{"inputs": [...], "targets": [...]}`` (as the command line
    stores it), those names label the plots.
    """
    if not isinstance(posterior, Posterior):
        raise ValueError(f"posterior must be a bayesresnet Posterior, got "
                         f"{type(posterior).__name__}")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string, got {type(title).__name__}")
    x_test, y_test = _check_test(posterior, x_test, y_test)
    out = Path(os.fspath(out_dir))
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    posterior.save(out / "posterior.nc")

    sections: dict[str, str] = {"run": _run_section(posterior)}
    sections["diagnostics"], ok = _diagnostics_section(posterior)
    for key, body in (("trace", _trace_section(posterior)),
                      ("energy", _energy_section(posterior)),
                      ("elbo", _elbo_section(posterior)),
                      ("loss", _loss_section(posterior))):
        if body is not None:
            sections[key] = body

    if posterior.model.in_dim == 1:
        sections["predictions"] = ("<p>Posterior predictive mean, the central 95% interval of "
                                   "the network mean f (epistemic) and of new observations "
                                   "(with noise).</p>" + _band_figure(posterior, x_test, y_test))
    else:
        sections["predictions"] = ("<p>Predictive mean against the observed value, with the "
                                   "central 95% predictive interval (with noise).</p>"
                                   + _parity_figure(posterior, x_test, y_test))

    pred_train = _predict(posterior, posterior.x_train)
    rows = [_metric_row("train", pred_train, posterior.y_train)]
    if x_test is not None and y_test is not None:
        pred_test = _predict(posterior, x_test)
        rows.append(_metric_row("test", pred_test, y_test))
        sections["calibration"] = (
            "<p>Observed fraction of points inside the central predictive interval against its "
            "nominal level; points below the diagonal mean over-confident intervals.</p>"
            + _calibration_figure(pred_test, y_test, pred_train, posterior.y_train))
    sections["metrics"] = (
        "<p>Averages over points (and outputs), original units. NLL: negative log of the "
        "mean predictive density over draws. Coverage and width: central 95% predictive "
        "interval with noise. CRPS: continuous ranked probability score of the predictive "
        "samples.</p>"
        + _table(["data", "points", "RMSE", "NLL", "95% coverage", "95% width", "CRPS"], rows))
    stability = _stability_section(posterior)
    if stability is not None:
        sections["stability"] = stability
    sections["files"] = ('<p><a href="posterior.nc">posterior.nc</a>: this run '
                         "(<code>bayesresnet.export.load</code>, "
                         "<code>arviz.from_netcdf</code>).</p>")

    page_title = title if title is not None else f"bayesresnet report: {posterior.method.name}"
    path = out / "index.html"
    path.write_text(_page(page_title, sections, ok), encoding="utf-8")
    return path


def _page(title: str, sections: dict[str, str], ok: bool, keep_order: bool = False) -> str:
    ordered = list(sections) if keep_order else [key for key in SECTIONS if key in sections]
    nav = " ".join(f'<a href="#{key}">{_esc(SECTIONS[key])}</a>' for key in ordered)
    body = "\n".join(f'<h2 id="{key}">{_esc(SECTIONS[key])}</h2>\n{sections[key]}'
                     for key in ordered)
    verdict = ("diagnostics passed" if ok else "diagnostics FAILED: see below")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n<p class=\"{'pass' if ok else 'fail'}\">{_esc(verdict)}</p>\n"
        f"<nav>{nav}</nav>\n{body}\n</body>\n</html>\n"
    )


# ------------------------------------------------------------------------------- several runs
# Per method: the check of ``diagnose`` that best summarizes convergence, and its short label.
# MCMC runs (any method of kind "mcmc") use the R-hat their rule judges (_MCMC_KEY_CHECKS).
_KEY_CHECKS = {"meanfield": ("PSIS k-hat", "k-hat"), "lowrank": ("PSIS k-hat", "k-hat"),
               "ensemble": ("member spread / noise", "spread/noise")}
_MCMC_KEY_CHECKS = {"chain-wise": ("max chain-wise R-hat", "R-hat"),
                    "pooled": ("max R-hat", "R-hat")}


def _check_runs(posteriors: Any) -> dict[str, Posterior]:
    if not isinstance(posteriors, dict) or not posteriors:
        raise ValueError("posteriors must be a non-empty dict name -> Posterior")
    for name, post in posteriors.items():
        if not isinstance(name, str) or not name or not all(
                c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise ValueError(f"run name {name!r} must be non-empty and use only letters, "
                             "digits, '-', '_' and '.' (it names a folder)")
        if not isinstance(post, Posterior):
            raise ValueError(f"posteriors[{name!r}] is not a Posterior, got "
                             f"{type(post).__name__}")
    return posteriors


@shared_results()
def summary_rows(posteriors: dict[str, Posterior], x_test: Any = None, y_test: Any = None
                 ) -> list[dict[str, Any]]:
    """One row of metrics and convergence numbers per run, for comparing methods.

    Parameters
    ----------
    posteriors : dict name -> Posterior
    x_test, y_test : arrays (N, in_dim) and (N,) or (N, out_dim), optional
        Held-out data for the metrics; without them the metrics are on each run's training data.

    Returns
    -------
    list of dict
        Keys: ``name``, ``method``, ``data`` ("test" or "train"), ``rmse``, ``nll``,
        ``coverage_95``, ``width_95``, ``crps``, ``fit_seconds``, ``convergence`` (label such as
        ``"R-hat"``, ``"k-hat"`` or ``"spread/noise"``, or ``""``), ``convergence_value``
        (float, NaN when there is none), ``diagnostics_ok`` (bool); for MCMC runs the
        convergence value is the R-hat their rule judges, and ``rhat_rule``
        (``"chain-wise"`` or ``"pooled"``, see :class:`~bayesresnet.diagnostics.Diagnostics`),
        ``rhat_pooled`` and ``rhat_chainwise`` (the pooled R-hat and the worst chain-wise
        R-hat, both whatever the rule) say which rule applied and give both figures
        (``""`` and NaN for other methods).
    """
    rows = []
    for name, post in _check_runs(posteriors).items():
        x, y = _check_test(post, x_test, y_test)
        label = "test"
        if x is None:
            x, y, label = post.x_train, post.y_train, "train"
        pred = _predict(post, x)
        diag = _diagnose(post)
        if diag.rule is not None:
            check, short = _MCMC_KEY_CHECKS[diag.rule]
        else:
            check, short = _KEY_CHECKS.get(post.method.name, ("", ""))
        table = diag.table
        match = table[table["check"] == check]["value"].to_numpy()
        rows.append({
            "name": name, "method": post.method.name, "data": label,
            "rmse": metrics.rmse(pred, y), "nll": metrics.nll(pred, y),
            "coverage_95": metrics.coverage(pred, y, 0.95),
            "width_95": metrics.interval_width(pred, 0.95), "crps": metrics.crps(pred, y),
            "fit_seconds": post.fit_seconds,
            "convergence": short if match.size else "",
            "convergence_value": float(match[0]) if match.size else math.nan,
            "diagnostics_ok": bool(diag.ok),
            "rhat_rule": diag.rule or "",
            "rhat_pooled": float(diag.details.get("pooled_rhat", math.nan)),
            "rhat_chainwise": float(diag.details.get("chainwise_rhat", math.nan)),
        })
    return rows


def convergence_text(row: dict[str, Any]) -> str:
    """The convergence cell of a row of :func:`summary_rows`, e.g. ``"k-hat 0.42"`` or, for an
    MCMC run, the judged R-hat with its rule and the other figure:
    ``"R-hat 1.01 chain-wise (pooled 1.42)"``; ``""`` when the run has no key check."""
    if not row["convergence"]:
        return ""
    text = f"{row['convergence']} {_fmt(row['convergence_value'])}"
    if row.get("rhat_rule") == "chain-wise":
        return f"{text} chain-wise (pooled {_fmt(row['rhat_pooled'])})"
    if row.get("rhat_rule") == "pooled":
        return f"{text} pooled (chain-wise {_fmt(row['rhat_chainwise'])})"
    return text


def _bands_figure(posteriors: dict[str, Posterior], x_test: np.ndarray | None,
                  y_test: np.ndarray | None) -> str:
    """Predictive bands of several 1-D, one-output runs side by side, shared axes."""
    runs = list(posteriors.items())
    xs = [p.x_train[:, 0] for _, p in runs] + ([x_test[:, 0]] if x_test is not None else [])
    low, high = min(v.min() for v in xs), max(v.max() for v in xs)
    pad = 0.25 * (high - low) if high > low else 1.0
    grid = np.linspace(low - pad, high + pad, _GRID_POINTS)[:, None]
    cols = min(len(runs), 4)
    rows = math.ceil(len(runs) / cols)
    fig = _figure(4.2 * cols, 3.6 * rows)
    axes = np.array(fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True))
    for ax in axes.reshape(-1)[len(runs):]:
        ax.set_axis_off()
    for ax, (name, post) in zip(axes.reshape(-1), runs, strict=False):
        pred = _predict(post, grid)
        lower, upper = pred.interval(0.95)
        f_low, f_high = np.quantile(pred.f_samples, [0.025, 0.975], axis=0)
        g = grid[:, 0]
        ax.fill_between(g, lower[:, 0], upper[:, 0], color="C0", alpha=0.2,
                        label="95% predictive")
        ax.fill_between(g, f_low[:, 0], f_high[:, 0], color="C0", alpha=0.4,
                        label="95% of f (epistemic)")
        ax.plot(g, pred.mean[:, 0], color="C0", lw=1.3, label="mean")
        if x_test is not None and y_test is not None:
            ax.scatter(x_test[:, 0], y_test[:, 0], s=3, color="C1", alpha=0.3, label="test")
        ax.scatter(post.x_train[:, 0], post.y_train[:, 0], s=10, color="k", zorder=3,
                   label="train")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    return _png(fig)


@shared_results()
def compare_report(posteriors: dict[str, Posterior], out_dir: str | os.PathLike,
                   x_test: Any = None, y_test: Any = None, *, title: str | None = None
                   ) -> Path:
    """Write a comparison page of several runs plus one full :func:`report` per run.

    Parameters
    ----------
    posteriors : dict name -> Posterior
        The runs; each name (letters, digits, ``-``, ``_``, ``.``) names the folder
        ``out_dir/<name>/`` that receives that run's report and ``posterior.nc``.
    out_dir : str or path-like
        Folder to write into (created if missing).
    x_test, y_test : arrays, optional
        Held-out data for metrics and calibration (see :func:`summary_rows`).
    title : str, optional
        Page title.

    Returns
    -------
    pathlib.Path
        The path of ``out_dir/index.html``: the table of :func:`summary_rows` with a link to
        each run's report, and the predictive bands side by side when every run has one input
        and one output.
    """
    posteriors = _check_runs(posteriors)
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string, got {type(title).__name__}")
    out = Path(os.fspath(out_dir))
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(posteriors, x_test, y_test)
    for name, post in posteriors.items():
        report(post, out / name, x_test, y_test, title=f"{title or 'bayesresnet'}: {name}")
    data = rows[0]["data"]
    table = _table(
        ["run", "method", f"RMSE ({data})", "NLL", "95% coverage", "95% width", "CRPS",
         "fit s", "convergence", "diagnostics"],
        [(_Raw(f'<a href="{_esc(r["name"])}/index.html">{_esc(r["name"])}</a>'), r["method"],
          r["rmse"], r["nll"], r["coverage_95"], r["width_95"], r["crps"],
          round(r["fit_seconds"], 1),
          convergence_text(r),
          _Raw('<span class="pass">&#10004; ok</span>' if r["diagnostics_ok"]
               else '<span class="fail">&#10008; FAIL</span>'))
         for r in rows])
    sections = {"metrics": (f"<p>Metrics on the {data} data (original units); convergence: "
                            "the key check of each method's diagnostics (MCMC: max R-hat, "
                            "VI: PSIS k-hat, ensemble: member spread over noise). MCMC runs "
                            "say which rule judged them and show the other R-hat: "
                            "<i>chain-wise</i> for chains started at distinct modes (each "
                            "chain's split R-hat is checked; the pooled R-hat measures mode "
                            "diversity), <i>pooled</i> for chains started from one "
                            "distribution. Each run's name links to its full report.</p>"
                            + table)}
    single = all(p.model.in_dim == 1 and p.model.out_dim == 1 for p in posteriors.values())
    if single:
        first = next(iter(posteriors.values()))
        x, y = _check_test(first, x_test, y_test)
        sections["predictions"] = ("<p>Predictive mean, 95% band of the network mean f and "
                                   "95% predictive band of each run.</p>"
                                   + _bands_figure(posteriors, x, y))
    sections["files"] = "<ul>" + "".join(
        f'<li><a href="{_esc(n)}/index.html">{_esc(n)}/index.html</a>, '
        f'<a href="{_esc(n)}/posterior.nc">{_esc(n)}/posterior.nc</a></li>'
        for n in posteriors) + "</ul>"
    ok = all(r["diagnostics_ok"] for r in rows)
    path = out / "index.html"
    page = _page(title or "bayesresnet: comparison of runs", sections, ok, keep_order=True)
    path.write_text(page, encoding="utf-8")
    return path
