"""benchmarks/depth_priors.py (issue 24's yacht target): the report built from records.

Synthetic records with known means and standard errors, so that each verdict of the target
section and the row of a configuration measured on its own splits can be checked by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import benchmark_script


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("depth_priors.py", "depth_priors_benchmark") as module:
        yield module


def _record(bench, name, split, rmse, nll, ok=False, ess=1.5, method="nuts"):
    return {
        "config": name, "split": split, "method": method,
        "key": bench.record_key(bench.settings(False, name, method)),
        "rmse": rmse, "nll": nll, "coverage_95": 0.95, "crps": 0.1, "train_rmse": 0.05,
        "ess_chainwise_min": ess, "ess_chainwise_min_all": ess, "ess_per_second": ess / 100,
        "fit_seconds": 100.0, "cpu_seconds": 80.0, "loadavg": [1.0, 1.0], "num_params": 10,
        "hyper": {}, "diagnostics": {"ok": ok, "failed": [] if ok else ["max chain-wise R-hat"],
                                     "chainwise_rhat": 1.01, "pooled_rhat": 1.2,
                                     "divergences": 0, "mean_tree_depth": 6.0},
    }


def test_report_verdicts_follow_the_standard_errors(bench):
    # Random walk RMSE 0.500 +- 0.041 against Linear 0.350 +- 0.020: not within; its NLL
    # (-0.1 on every split) is below every fixed basis's: within.
    rw = [0.4, 0.5, 0.6, 0.5]
    linear = [0.3, 0.35, 0.4, 0.35]
    legendre = [0.45, 0.5, 0.55, 0.5]
    records = []
    for split in range(4):
        records += [_record(bench, "rw-piecewise", split, rw[split], -0.1),
                    _record(bench, "linear", split, linear[split], 0.0),
                    _record(bench, "legendre2", split, legendre[split], 0.2)]
    text = bench.report(records, ["rw-piecewise", "linear", "legendre2"], False, "nuts")
    mean, se = np.mean(linear), np.std(linear, ddof=1) / 2
    assert f"linear) {mean:.3f} ± {se:.3f}: NOT within one standard error" in text
    assert "NLL: rw-piecewise -0.100 ± 0.000 against the best fixed basis (linear) " \
           "0.000 ± 0.000: within one standard error of it." in text
    assert "12 of the 12 runs fail `diagnose()`" in text
    assert "not assessable: the chain-wise ESS is below 10.0" in text
    assert "n = 4 of the 20 splits the target asks for: incomplete" in text


def test_report_within_one_standard_error_and_extra_configuration(bench):
    records = []
    for split in range(3):
        records += [_record(bench, "rw-piecewise", split, 0.40 + 0.01 * split, 0.0, ok=True,
                            ess=200.0),
                    _record(bench, "linear", split, 0.39 + 0.02 * split, 0.0, ok=True,
                            ess=300.0),
                    _record(bench, "legendre2", split, 0.5, 0.1, ok=True, ess=300.0)]
    records.append(_record(bench, "piecewise", 1, 2.0, 2.0))
    text = bench.report(records, ["rw-piecewise", "linear", "legendre2"], False, "nuts")
    assert "test RMSE: rw-piecewise 0.410 ± 0.006 against the best fixed basis (linear) " \
           "0.410 ± 0.012: within one standard error of it." in text
    assert "fail `diagnose()`" not in text
    # ESS/s ratio 200 / 300 with equal fit times: 0.67, above the target's 0.5.
    assert "rw-piecewise / linear = 0.67 (0.67 per CPU second; target: at least 0.5): met." \
        in text
    line = next(s for s in text.splitlines() if s.startswith("- piecewise ("))
    assert "splits 1;" in line and "piecewise 2.000" in line and "rw-piecewise 0.410" in line


def test_report_states_the_stationary_walks_verdict_where_it_has_every_split(bench):
    # rw-stationary is not among the report's configurations (the default --configs): it gets
    # its own verdicts once it has a record on every shared split, and none before.
    names = ["rw-piecewise", "linear", "legendre2"]
    records = []
    for split in range(4):
        records += [_record(bench, "rw-piecewise", split, 0.6, 0.5),
                    _record(bench, "linear", split, 0.35 + 0.01 * split, 0.0),
                    _record(bench, "legendre2", split, 0.5, 0.2)]
    partial = records + [_record(bench, "rw-stationary", split, 0.3, -0.2) for split in (0, 2)]
    text = bench.report(partial, names, False, "nuts")
    assert "rw-stationary has records on 2 of the 4 shared splits: no verdict" in text
    assert "test RMSE: rw-stationary" not in text and "rw-stationary / linear" not in text
    assert "12 of the 12 runs fail `diagnose()`" in text
    # All four splits (split 3 at a test RMSE of 0.42: mean 0.33, within Linear's 0.365 + SE).
    full = records + [_record(bench, "rw-stationary", split, [0.3, 0.3, 0.3, 0.42][split], -0.2,
                              ess=1.2) for split in range(4)]
    text = bench.report(full, names, False, "nuts")
    assert "- test RMSE: rw-piecewise 0.600 ± 0.000 against the best fixed basis (linear) " \
           "0.365 ± 0.006: NOT within one standard error of it." in text
    assert "- test RMSE: rw-stationary 0.330 ± 0.030 against the best fixed basis (linear) " \
           "0.365 ± 0.006: within one standard error of it." in text
    assert "- NLL: rw-stationary -0.200 ± 0.000 against the best fixed basis (linear) " \
           "0.000 ± 0.000: within one standard error of it." in text
    # ESS/s 0.012 against Linear's 0.015 (equal fit times): 0.80, but no chain mixed.
    assert "- chain-wise ESS/s: rw-stationary / linear = 0.80 (0.80 per CPU second; target: " \
           "at least 0.5): not assessable: the chain-wise ESS is below 10.0 in some chain of " \
           "some record (lowest 1.2)" in text
    assert "16 of the 16 runs fail `diagnose()`" in text
    assert "rw-piecewise is the plain walk, `RandomWalk(stationary=False)`" in text
    assert text.index("test RMSE: rw-piecewise") < text.index("test RMSE: rw-stationary") \
        < text.index("n = 4 of the 20 splits")
