"""Smoke tests of the sampling benchmark (benchmarks/sampling.py) on a tiny network.

They need the ``bench`` extra (JAX, NumPyro, BlackJAX) and are skipped without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sampling.py"

for _name in ("jax", "numpyro", "blackjax"):
    pytest.importorskip(_name, reason=f"the sampling benchmark needs {_name} (the bench extra: "
                                      "pip install 'bayesresnet[bench]')")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sampling_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    module.import_jax()
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tiny(bench):
    """A two-layer, width-3 ResNet on 12 cubic points: quick to compile and to sample."""
    import bayesresnet as brn

    x, y = brn.data.cubic(12, seed=0)
    net = brn.ResNet(1, 1, width=3, depth=2, basis="linear")
    problem = bench.nuts_bench.Problem("tiny cubic", net, x, y,
                                       np.linspace(-4.0, 4.0, 20)[:, None])
    problem.model = bench.demo_model(net)
    x_eval, y_eval = brn.data.cubic(30, seed=1)
    return bench.Bench("cubic", problem, x_eval, y_eval, "tiny test problem")


def test_jax_density_agrees_and_the_check_can_fail(bench, tiny):
    problem = tiny.problem
    fn = bench.jax_log_density(problem.model, problem.x, problem.y)
    assert bench.check_jax_density(problem.model, problem.x, problem.y, fn) < 1e-10
    # A constant offset and a missing log-Jacobian of the noise both fail.
    wrong = [lambda z: fn(z) + 1e-2, lambda z: fn(z) - z[-1]]
    for bad in wrong:
        with pytest.raises(AssertionError, match=r"differs from model\.log_density"):
            bench.check_jax_density(problem.model, problem.x, problem.y, bad)


def test_jax_density_covers_the_benchmark_problems(bench):
    cubic = bench.make_bench("cubic").problem
    fn = bench.jax_log_density(cubic.model, cubic.x, cubic.y)
    assert bench.check_jax_density(cubic.model, cubic.x, cubic.y, fn, points=2) < 1e-10
    assert cubic.model.config()["prior"] == {"name": "Normal", "scale": 1.0, "site_scales": {}}


def test_blackjax_step_costs_two_gradients(bench, tiny):
    problem = tiny.problem
    fn = bench.jax_log_density(problem.model, problem.x, problem.y)
    assert bench.blackjax_gradients_per_step(fn, problem.model.dim) == 2


def _check_rows(bench, rows, tmp_path):
    for row in rows:
        assert row["draws"] == 10
        assert row["grads"] == row["grads_per_chain"] * 2
        assert math.isfinite(row["rmse"]) and math.isfinite(row["nll"])
        assert row["ess"] >= row["ess_chain_min"] > 0
        assert row["passes"] in (True, False)
        assert row["rule"] == ("pooled" if row["key"] == "numpyro" else "chain-wise")
    table = bench.render_table(rows)
    assert table.count("\n") == len(rows) + 1
    out = tmp_path / "sampling.md"
    env = bench.environment(argparse.Namespace(threads=1), "no core pinning", "defaults")
    section = {"problem": "cubic", "description": "tiny", "check": "tiny: checked",
               "command": "pytest", "environment": env, "skipped": []}
    bench.write_report(out, [section], rows)
    text = out.read_text()
    assert "Definitions:" in text
    for row in rows:
        assert f"| cubic | {bench.CONTENDERS[row['key']]} |" in text
    # The report carries its rows for --merge.
    data = bench.read_report_data(out)
    assert data["sections"] == [section]
    assert [r["key"] for r in data["rows"]] == [r["key"] for r in rows]
    assert data["rows"][0]["ess"] == pytest.approx(rows[0]["ess"])


def test_tiny_runs_and_report(bench, tiny, tmp_path):
    """Our samplers' rows and the report (the JAX samplers compile for 10-15 s each: the slow
    test below runs them)."""
    nuts = bench.run_nuts(tiny, {"num_samples": 10, "num_warmup": 5, "chains": 2,
                                 "max_tree_depth": 2, "init_steps": 5}, seed=0)
    # NUTS: the MAP start, then at most 2**depth - 1 = 3 leapfrog steps per iteration in
    # lock-step, plus the initial gradient and the step-size search of the warmup.
    assert 5 + 15 <= nuts.grads_per_chain <= 5 + 15 * 3 + 20
    runs = [nuts]
    if bench.mclmc_available():
        mclmc = bench.run_mclmc(tiny, {"num_samples": 10, "thinning": 2, "num_warmup": 20,
                                       "chains": 2, "init_steps": 5}, seed=0)
        assert mclmc.grads_per_chain == 5 + 1 + 2 * (20 + 20)
        runs.append(mclmc)
    _check_rows(bench, [bench.evaluate(tiny, run) for run in runs], tmp_path)


@pytest.mark.slow
def test_jax_tiny_runs(bench, tiny, tmp_path):
    blackjax = bench.run_blackjax(tiny, chains=2, tune_steps=20, num_steps=20, thinning=2,
                                  seed=0, init_steps=5)
    # The MAP start, the initial gradient, two per step of tuning and sampling.
    assert blackjax.grads_per_chain == 5 + 1 + 2 * (20 + 20)
    if bench.mclmc_available():
        mclmc = bench.run_mclmc(tiny, {"num_samples": 10, "thinning": 2, "num_warmup": 20,
                                       "chains": 2, "init_steps": 5}, seed=0)
        # Same starting points, same gradient budget.
        assert np.array_equal(np.asarray(mclmc.initial_position),
                              np.asarray(blackjax.initial_position))
        assert mclmc.grads_per_chain == blackjax.grads_per_chain
    numpyro = bench.run_numpyro(tiny, chains=2, warmup=5, samples=10, max_tree_depth=2,
                                target_accept=0.8, seed=0)
    # Lock-step: the longest of the two trees per iteration, at most 3 steps each.
    assert 15 <= numpyro.grads_per_chain <= 1 + 15 * 3
    assert numpyro.stats["diverging"].shape == (2, 10)
    _check_rows(bench, [bench.evaluate(tiny, run) for run in (blackjax, numpyro)], tmp_path)


@pytest.mark.slow
def test_quick_command(bench, tmp_path):
    import torch

    out = tmp_path / "quick.md"
    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--problems", "cubic", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # main() sets one thread for the whole process
    text = out.read_text()
    assert "Targets (issue 18):" in text and "| cubic | NumPyro NUTS |" in text


def test_threshold_checks(bench):
    good = {"start": "map", "chain_rhat": 1.004, "ess_chain_min": 150.0,
            "tail_chain_min": 120.0, "pooled_rhat": 1.8, "pooled_ess": 30.0,
            "pooled_tail": 30.0}
    checks = bench.threshold_checks(good, {}, chains=4)
    assert all(ok for _, ok in checks.values())  # modes apart: the pooled R-hat is no failure
    stuck = {**good, "chain_rhat": math.nan}
    assert not bench.threshold_checks(stuck, {}, chains=4)["chain-wise R-hat"][1]
    pooled = {**good, "start": "random"}
    checks = bench.threshold_checks(pooled, {"diverging": np.zeros((4, 100), bool)}, chains=4)
    assert not checks["pooled R-hat"][1] and not checks["pooled bulk ESS"][1]
    assert checks["divergent"] == (0.0, True)


def test_mclmc_settings_from_the_command_line(bench):
    args = bench.parse_args(["--mclmc-tune-steps", "300", "--mclmc-steps", "600",
                             "--mclmc-thinning", "3", "--mclmc-option",
                             "desired_energy_variance=2e-4"])
    settings = bench.mclmc_settings(args)
    assert settings["num_warmup"] == 300 and settings["num_samples"] == 200
    assert settings["thinning"] == 3 and settings["compile_after"] == 0
    assert settings["desired_energy_variance"] == 2e-4
    bench.brn.MCLMC(**settings)  # every name is a setting of the library's MCLMC
    assert args.blackjax_energy_variance is None  # BlackJAX gets our target unless told
    assert bench.parse_args(["--blackjax-energy-variance", "1e-6"]).blackjax_energy_variance \
        == 1e-6
