"""Priors over depth on UCI yacht: the random-walk prior on a Piecewise ResNet against fixed bases.

Issue 24's target: at depth 16, a Piecewise ResNet under ``priors.RandomWalk`` (one weight
matrix per layer, tied across depth by a random walk whose step scale is learned) reaches, on
yacht (20 standard splits, the UCI benchmark's method settings), test RMSE and NLL within one
standard error of the best fixed basis, and its chain-wise ESS per second is within 2x of the
Linear basis's.

Every configuration is the UCI benchmark's model and method (``default_config()`` of
``benchmarks/uci.py``: width 16, tanh, horizon 1, Normal(0, 1) priors, Gaussian likelihood
with a HalfNormal(1) noise prior, and its NUTS settings: vectorized backend, 4 chains of 150
warmup and 150 kept iterations, tree depth at most 7, each chain begun at its own 1000-step
MAP fit) with the depth set to 16 and, per configuration, the basis and the prior of the
depth-indexed sites:

* ``rw-piecewise``: Piecewise basis (16 coefficient matrices), the plain walk
  ``priors.RandomWalk(stationary=False)``;
* ``linear``: Linear basis (2), Normal(0, 1);
* ``legendre2``: the UCI benchmark's basis, Legendre(2) (3), Normal(0, 1);
* ``piecewise``: Piecewise basis, Normal(0, 1) (optional, ``--configs``);
* ``rw-stationary``: Piecewise basis, the stationary walk ``priors.RandomWalk(stationary=True)``,
  made ``RandomWalk``'s default by these records (optional).

The report states the target's verdicts for ``rw-piecewise`` and, where it has a record on
every split that the main configurations share, for ``rw-stationary``.

For every (configuration, split) *record*: fit on the training part, score the test part in
original units (RMSE, NLL, 95% coverage, CRPS; the training RMSE too, for the generalization
gap), and measure mixing the way ``Posterior.diagnose()`` does for chains begun at distinct
MAP modes (the chain-wise rule): ArviZ's bulk ESS of each chain on its own
(``arviz_compat.ess_by_chain``) for the network mean f at the training inputs and the noise
scale, the minimum over chains and quantities, divided by the fit's wall time (MAP start,
warmup and sampling). That ESS is taken over the quantities every configuration has, so the
random walk's step-scale sites do not enter the comparison; the minimum with them, and
``diagnose()``'s verdict (failed checks), are recorded too, with the learned step scales.

Records are appended one JSON line each to ``benchmarks/results/depth_priors.jsonl`` as they
finish, keyed by a hash of (configuration, settings, seed); a rerun skips the records already
there, so the run continues across sessions. Splits run one after another and, within a split,
every configuration, so a run cut short leaves every configuration with the same splits. The
report (``depth_priors.md``) is rebuilt from the records at the end of every run and counts
only splits that every configuration has.

Run from the repository root::

    nohup nice -n 5 python benchmarks/depth_priors.py --splits 0-19 > depth_priors.log 2>&1 &
    python benchmarks/depth_priors.py --report-only
    python benchmarks/depth_priors.py --quick --splits 0 --results /tmp/q.jsonl --out /tmp/q.md

``--method mclmc`` runs the same records with the UCI benchmark's MCLMC settings instead (4
chains, each begun at a 1000-step MAP fit, 2000 tuning and 2000 sampling steps thinned by 5):
about a tenth of NUTS's cost, for a machine too busy for the NUTS records (one NUTS record at
depth 16 needs roughly 4 times the 190 CPU seconds of a depth-4 yacht unit of
``benchmarks/uci.py``). Its records carry their own key, and the report has one section per
sampler; the target is stated for NUTS.

``--quick`` uses the UCI benchmark's quick settings (for checking the script; its records
carry their own key and never mix with full ones). Load average and CPU time are recorded with
every record, since the wall times (and so ESS per second) depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import uci as uci_bench  # noqa: E402  (benchmarks/uci.py: configuration, results file)

DEFAULT_RESULTS = HERE / "results" / "depth_priors.jsonl"
DEFAULT_OUT = HERE / "results" / "depth_priors.md"
DEPTH = 16
DATASET = "yacht"
# name -> (basis, prior); the prior applies to the depth-indexed sites (W_coef, b_coef).
# The prior dicts are part of the record keys: leave them as they are. build_model reads a
# random walk without "stationary" as the plain walk (stationary=False), whatever
# RandomWalk's default, so rw-piecewise stays the plain walk its records measured.
CONFIGS = {
    "rw-piecewise": ("piecewise", {"name": "random_walk"}),
    "linear": ("linear", {"name": "normal"}),
    "legendre2": ("legendre2", {"name": "normal"}),
    "piecewise": ("piecewise", {"name": "normal"}),
    "rw-stationary": ("piecewise", {"name": "random_walk", "stationary": True}),
}
DEFAULT_CONFIGS = ("rw-piecewise", "linear", "legendre2")
FIXED = ("linear", "legendre2", "piecewise")
# The random-walk configurations that the target's verdicts are stated for; rw-stationary is
# assessed where it has a record on every shared split (also when not among --configs).
WALKS = ("rw-piecewise", "rw-stationary")
# Below this many effective draws in a chain, ESS per second measures nothing but fit time.
ESS_FLOOR = 10.0


def settings(quick: bool, name: str, method: str = "nuts") -> dict[str, Any]:
    """Everything that determines a record of configuration ``name``: model spec, prior,
    the sampler and its settings (the UCI benchmark's), seed."""
    base = uci_bench.default_config(quick=quick)
    basis, prior = CONFIGS[name]
    model = {**base["model"], "depth": DEPTH, "basis": basis}
    return {"run": "quick" if quick else "full", "model": model, "prior": prior,
            "method": method, "settings": base["methods"][method], "seed": base["seed"]}


def record_key(spec: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{spec['run']}-{digest}"


def build_model(spec: dict[str, Any], in_dim: int) -> Any:
    import bayesresnet as brn

    m = spec["model"]
    net = brn.ResNet(in_dim, 1, width=m["width"], depth=m["depth"], basis=m["basis"],
                     activation=m["activation"], horizon=m["horizon"])
    if spec["prior"]["name"] == "random_walk":
        prior = brn.priors.RandomWalk(scale=m["prior_scale"],
                                      stationary=spec["prior"].get("stationary", False))
    else:
        prior = brn.priors.Normal(m["prior_scale"])
    return brn.BayesianResNet(net, prior=prior, likelihood=brn.likelihoods.Gaussian(
        noise_prior_scale=m["noise_prior_scale"]))


def chainwise_ess(post: Any, names: list[str]) -> dict[str, float]:
    """Min over chains and quantities of each chain's bulk ESS: f at the training inputs and
    noise (``common``), and with the ``*_scale`` hyperparameters too (``all``)."""
    from bayesresnet.arviz_compat import draws_dataset, ess_by_chain

    x = post.x_train
    if len(x) > 256:  # as diagnose() does
        x = x[np.linspace(0, len(x) - 1, 256).round().astype(int)]
    loc, _, _ = post.evaluate(x)
    common = {"f": loc.numpy()[..., 0], "noise": post.draws["noise"].numpy()}
    hyper = {n: post.draws[n].numpy() for n in names}
    out = {}
    for label, arrays in (("common", common), ("all", {**common, **hyper})):
        data = ess_by_chain(draws_dataset(arrays), "bulk")
        out[label] = float(min(np.nanmin(np.asarray(v.values)) for v in data.data_vars.values()))
    return out


def run_record(name: str, split: int, quick: bool, data_root: str, method: str
               ) -> dict[str, Any]:
    import torch

    import bayesresnet as brn
    from bayesresnet import metrics
    from bayesresnet.uci import uci

    spec = settings(quick, name, method)
    load_start = os.getloadavg()[0]
    cpu_start = time.process_time()
    x_train, y_train, x_test, y_test = uci(DATASET, split, data_root)
    model = build_model(spec, x_train.shape[1])
    seed = int(spec["seed"]) + int(split)
    post = brn.fit(model, x_train, y_train, method=uci_bench.build_method(
        {"methods": {method: spec["settings"]}}, method), seed=seed,
                   progress=False)
    pred, pred_train = post.predict(x_test), post.predict(x_train)
    hyper = sorted(n for n, v in post.draws.items() if n.endswith("_scale") and v.dim() == 2)
    ess = chainwise_ess(post, hyper)
    diag = post.diagnose()
    stats = post.stats
    return {
        "dataset": DATASET, "config": name, "method": method, "split": int(split),
        "key": record_key(spec),
        "rmse": metrics.rmse(pred, y_test), "nll": metrics.nll(pred, y_test),
        "coverage_95": metrics.coverage(pred, y_test, 0.95), "crps": metrics.crps(pred, y_test),
        "train_rmse": metrics.rmse(pred_train, y_train),
        "fit_seconds": post.fit_seconds, "cpu_seconds": time.process_time() - cpu_start,
        "ess_chainwise_min": ess["common"], "ess_chainwise_min_all": ess["all"],
        "ess_per_second": ess["common"] / post.fit_seconds,
        "hyper": {n: {"mean": float(post.draws[n].mean()),
                      "q05": float(np.quantile(post.draws[n].numpy(), 0.05)),
                      "q95": float(np.quantile(post.draws[n].numpy(), 0.95))} for n in hyper},
        "diagnostics": {"ok": bool(diag.ok), "failed": list(diag.failed), "rule": diag.rule,
                        "chainwise_rhat": float(diag.details.get("chainwise_rhat", math.nan)),
                        "pooled_rhat": float(diag.details.get("pooled_rhat", math.nan)),
                        "divergences": int(np.sum(np.asarray(stats["diverging"]))),
                        "mean_tree_depth": (float(np.mean(np.asarray(stats["tree_depth"])))
                                            if "tree_depth" in stats else None)},
        "num_params": model.dim, "n_train": len(y_train), "n_test": len(y_test),
        "seed": seed, "settings": spec, "threads": torch.get_num_threads(),
        "loadavg": [load_start, os.getloadavg()[0]], "host": platform.node(),
        "version": brn.__version__,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------ report
def _mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se


def _fmt(mean: float, se: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def report(records: list[dict[str, Any]], names: list[str], quick: bool, method: str) -> str:
    keys = {n: record_key(settings(quick, n, method)) for n in names}
    by = {n: {r["split"]: r for r in records if r["config"] == n and r["key"] == keys[n]}
          for n in names}
    shared = sorted(set.intersection(*(set(v) for v in by.values()))) if by else []
    lines = [f"# Priors over depth on UCI yacht (issue 24): {method.upper()}", "",
             f"Written by `python benchmarks/depth_priors.py --method {method} --splits 0-19` "
             "(resumable; or `--report-only`) from "
             "`benchmarks/results/depth_priors.jsonl`; see the script's docstring for the "
             f"protocol. Depth 16, the UCI benchmark's width and {method.upper()} settings "
             f"(`{json.dumps(settings(quick, names[0], method)['settings'], sort_keys=True)}`).",
             "",
             f"Splits that every configuration has: n = {len(shared)} "
             f"({', '.join(map(str, shared)) or 'none'}); records per configuration: "
             + ", ".join(f"{n} {len(by[n])}" for n in names) + ".", ""]
    if not shared:
        return "\n".join([*lines, "No split is complete yet (the script's docstring gives the "
                          "cost of a record).", ""])
    lines += ["Mean ± standard error over the shared splits. ESS/s: min over chains of each "
              "chain's bulk ESS of f at the training inputs and the noise, per second of the "
              "whole fit (wall time; see the load column). Train RMSE beside test RMSE is the "
              "generalization gap.", "",
              "| configuration | params | test RMSE | NLL | 95% cov. | train RMSE | "
              "min chain ESS | ESS/s | fit (s) | CPU (s) | load avg | diagnose() passed |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for n in names:
        rs = [by[n][s] for s in shared]
        row = _summary(rs)
        summary[n] = row
        load = np.mean([np.mean(r["loadavg"]) for r in rs])
        passed = sum(r["diagnostics"]["ok"] for r in rs)
        lines.append(f"| {n} | {rs[0]['num_params']} | {_fmt(*row['rmse'])} | "
                     f"{_fmt(*row['nll'])} | {_fmt(*row['coverage_95'], 2)} | "
                     f"{_fmt(*row['train_rmse'])} | {_fmt(*row['ess_chainwise_min'], 1)} | "
                     f"{_fmt(*row['ess_per_second'], 4)} | {_fmt(*row['fit_seconds'], 0)} | "
                     f"{_fmt(*row['cpu_seconds'], 0)} | "
                     f"{load:.1f} | {passed}/{len(rs)} |")
    lines += _extra_configs(records, names, quick, method)
    lines += ["", "Failed checks of `Posterior.diagnose()` (chain-wise rule) per record:", ""]
    for n in names:
        for s in shared:
            d = by[n][s]["diagnostics"]
            lines.append(f"- {n}, split {s}: {', '.join(d['failed']) or 'none'} (chain-wise "
                         f"R-hat {d['chainwise_rhat']:.2f}, pooled {d['pooled_rhat']:.2f}, "
                         f"{d['divergences']} divergences"
                         + ("" if d["mean_tree_depth"] is None else
                            f", mean tree depth {d['mean_tree_depth']:.2f}") + ")")
    hyper_lines = []
    for n in names:
        for s in shared:
            for site, h in by[n][s]["hyper"].items():
                hyper_lines.append(f"- {n}, split {s}: {site} mean {h['mean']:.3f} "
                                   f"(90%: {h['q05']:.3f} to {h['q95']:.3f})")
    if hyper_lines:
        lines += ["", "Learned hyperparameters (posterior of the step scales; prior "
                  "HalfNormal(1), median 0.67):", "", *hyper_lines]
    lines += ["", f"## Target, {method.upper()} records", ""]
    # The optional stationary walk, assessed where it has a record on every shared split.
    walks = {n: by[n] for n in WALKS if n in names}
    for n in (n for n in WALKS if n not in names):
        key = record_key(settings(quick, n, method))
        own = {r["split"]: r for r in records if r["config"] == n and r["key"] == key}
        if own and set(shared) <= set(own):
            walks[n] = own
            summary[n] = _summary([own[s] for s in shared])
        elif own:
            lines += [f"{n} has records on {len(set(shared) & set(own))} of the "
                      f"{len(shared)} shared splits: no verdict for it until it has them all.",
                      ""]
    runs = {**{n: by[n] for n in names}, **walks}
    failing = sum(not runs[n][s]["diagnostics"]["ok"] for n in runs for s in shared)
    total = len(runs) * len(shared)
    if method != "nuts":
        lines += ["The target is stated for the UCI benchmark's NUTS settings; these are the "
                  f"same comparisons with its MCLMC settings, under which {failing} of the "
                  f"{total} runs fail `diagnose()` (see above), so they indicate, not certify.",
                  ""]
    elif failing:
        lines += [f"{failing} of the {total} runs fail `diagnose()` (see above): the "
                  "comparisons below are between chains that have not mixed, so they "
                  "indicate, not certify.", ""]
    fixed = [n for n in names if n in FIXED]
    if "rw-piecewise" not in summary or not fixed or "linear" not in summary:
        lines.append("Not assessed: needs rw-piecewise, linear and a fixed basis.")
    else:
        if "rw-stationary" in walks:
            lines += ["rw-piecewise is the plain walk, `RandomWalk(stationary=False)`; "
                      "rw-stationary the stationary walk, `RandomWalk(stationary=True)`, "
                      "the default.", ""]
        for walk in walks:
            lines += _verdicts(walk, summary, fixed, [walks[walk][s] for s in shared]
                               + [by["linear"][s] for s in shared])
        lines.append(f"- n = {len(shared)} of the 20 splits the target asks for"
                     + (": incomplete, the verdicts above are provisional." if len(shared) < 20
                        else "."))
    return "\n".join(lines) + "\n"


def _summary(rs: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean and standard error of each reported quantity over the records ``rs``."""
    return {m: _mean_se([r[m] for r in rs]) for m in
            ("rmse", "nll", "coverage_95", "train_rmse", "ess_chainwise_min",
             "ess_per_second", "fit_seconds", "cpu_seconds")}


def _verdicts(walk: str, summary: dict[str, dict[str, tuple[float, float]]], fixed: list[str],
              records: list[dict[str, Any]]) -> list[str]:
    """The target's verdicts for the random-walk configuration ``walk``: test RMSE and NLL
    against the best fixed basis, chain-wise ESS/s against Linear's (``records``: the walk's
    and Linear's records on the shared splits, for the lowest chain-wise ESS)."""
    rw, linear = summary[walk], summary["linear"]
    lines = []
    for metric, label in (("rmse", "test RMSE"), ("nll", "NLL")):
        best = min(fixed, key=lambda n: summary[n][metric][0])
        bm, bse = summary[best][metric]
        m, se = rw[metric]
        verdict = "within" if m <= bm + bse else "NOT within"
        lines.append(f"- {label}: {walk} {_fmt(m, se)} against the best fixed basis "
                     f"({best}) {_fmt(bm, bse)}: {verdict} one standard error of it.")
    ratio = rw["ess_per_second"][0] / linear["ess_per_second"][0]
    lowest = min(r["ess_chainwise_min"] for r in records)
    verdict = "met" if ratio >= 0.5 else "NOT met"
    if lowest < ESS_FLOOR:
        verdict = (f"not assessable: the chain-wise ESS is below {ESS_FLOOR} in some chain of "
                   f"some record (lowest {lowest:.1f}), where the chains have not mixed at "
                   f"all, so the ratio compares fit times, not mixing")
    cpu = (linear["cpu_seconds"][0] / rw["cpu_seconds"][0]
           * rw["ess_chainwise_min"][0] / linear["ess_chainwise_min"][0])
    lines.append(f"- chain-wise ESS/s: {walk} / linear = {ratio:.2f} ({cpu:.2f} per "
                 f"CPU second; target: at least 0.5): {verdict}.")
    return lines


def _extra_configs(records: list[dict[str, Any]], names: list[str], quick: bool, method: str
                   ) -> list[str]:
    """Rows for configurations outside ``names`` that have records (``--configs piecewise``),
    each over its own splits, beside the main configurations over those same splits."""
    lines: list[str] = []
    for extra in (n for n in CONFIGS if n not in names):
        key = record_key(settings(quick, extra, method))
        own = {r["split"]: r for r in records if r["config"] == extra and r["key"] == key}
        if not own:
            continue
        splits = sorted(own)
        if not lines:
            lines = ["", "Also measured, each over its own splits, beside the configurations "
                     "above on the same splits (test RMSE, NLL, train RMSE; mean ± standard "
                     "error):", ""]
        parts = []
        for n in (extra, *names):
            key_n = record_key(settings(quick, n, method))
            rs = [r for r in records if r["config"] == n and r["key"] == key_n
                  and r["split"] in own]
            if len(rs) == len(splits):
                parts.append(f"{n} {_fmt(*_mean_se([r['rmse'] for r in rs]))}, "
                             f"{_fmt(*_mean_se([r['nll'] for r in rs]))}, "
                             f"{_fmt(*_mean_se([r['train_rmse'] for r in rs]))}")
        passed = sum(r["diagnostics"]["ok"] for r in own.values())
        lines.append(f"- {extra} ({own[splits[0]]['num_params']} params, splits "
                     f"{', '.join(map(str, splits))}; diagnose() passed {passed}/{len(own)}): "
                     + "; ".join(parts) + ".")
    return lines


def parse_splits(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default="0-19")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        choices=list(CONFIGS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=os.environ.get(
        "BAYESRESNET_DATA", str(HERE.parents[1] / "shared" / "data" / "uci")))
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--method", default="nuts", choices=["nuts", "mclmc"],
                        help="sampler, with the UCI benchmark's settings (default: %(default)s, "
                             "the target's)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    import logging

    def write_report() -> None:
        records = uci_bench.load_results(args.results)
        # NUTS, the target's sampler, always; MCLMC where it has records.
        methods = [m for m in ("nuts", "mclmc") if m in ("nuts", args.method)
                   or any(r.get("method") == m for r in records)]
        args.out.write_text("\n".join(report(records, args.configs, args.quick, m)
                                      for m in methods))

    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    if not args.report_only:
        for split in parse_splits(args.splits):
            for name in args.configs:
                key = record_key(settings(args.quick, name, args.method))
                done = {(r["config"], r["split"]) for r in uci_bench.load_results(args.results)
                        if r.get("key") == key}
                if (name, split) in done:
                    continue
                start = time.perf_counter()
                record = run_record(name, split, args.quick, args.data_root, args.method)
                uci_bench.append_result(args.results, record)
                print(f"{name} split {split}: RMSE {record['rmse']:.3f} NLL {record['nll']:.3f} "
                      f"ESS/s {record['ess_per_second']:.4f} failed "
                      f"{record['diagnostics']['failed']} in {time.perf_counter() - start:.0f} s "
                      f"(load {record['loadavg'][0]:.1f}-{record['loadavg'][1]:.1f})", flush=True)
                write_report()
    write_report()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
