"""Tests of the UCI benchmark runner (benchmarks/uci.py) on a tiny synthetic data set."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "uci.py"
DEFAULT_CONFIG: list = []


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("uci_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # Registered so that dataclasses and pickling inside the script resolve the module.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    DEFAULT_CONFIG[:] = [module.default_config]
    yield module
    sys.modules.pop(spec.name, None)


def tiny_config(bench, quick: bool = False) -> dict:
    # DEFAULT_CONFIG: the script's own function, even while a test patches default_config.
    config = DEFAULT_CONFIG[0](quick=quick, nuts_backend="pyro")
    config["model"].update(width=3, depth=2, basis="linear")
    config["methods"] = {
        "ensemble": {"members": 2, "steps": 15, "lr": 0.05},
        "meanfield": {"steps": 15, "lr": 0.05, "num_particles": 1, "num_draws": 20},
        "lowrank": {"steps": 15, "lr": 0.05, "num_particles": 1, "num_draws": 20, "rank": 2},
        "nuts": {"num_samples": 6, "num_warmup": 6, "chains": 2, "max_tree_depth": 2,
                 "init_steps": 10, "backend": "pyro"},
    }
    return config


def write_dataset(root: Path, name: str = "toy", rows: int = 30, splits: int = 3) -> Path:
    """A data set in the standard layout: y = x0 - 2 x1 + noise; target is the middle column."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 2))
    y = x[:, 0] - 2 * x[:, 1] + 0.1 * rng.normal(size=rows)
    folder = root / name
    folder.mkdir(parents=True)
    np.savetxt(folder / "data.txt", np.column_stack([x[:, 0], y, x[:, 1]]))
    (folder / "index_features.txt").write_text("0\n2\n")
    (folder / "index_target.txt").write_text("1\n")
    (folder / "n_splits.txt").write_text(f"{splits}\n")
    for i in range(splits):
        perm = np.random.default_rng(i).permutation(rows)
        np.savetxt(folder / f"index_train_{i}.txt", perm[:25], fmt="%d")
        np.savetxt(folder / f"index_test_{i}.txt", perm[25:], fmt="%d")
    return root


@pytest.fixture
def data_root(tmp_path):
    return write_dataset(tmp_path / "data")


def test_runner_writes_one_line_per_unit_and_a_rerun_does_nothing(bench, data_root, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setattr(bench, "default_config",
                        lambda quick=False, nuts_backend=None: tiny_config(bench, quick))
    out = tmp_path / "res" / "uci.md"
    argv = ["--data-root", str(data_root), "--datasets", "toy", "--methods", "nuts", "ensemble",
            "meanfield", "lowrank", "--splits", "0-1", "--out", str(out), "--no-progress"]
    assert bench.main(argv) == 0
    results = out.parent / "uci.jsonl"
    lines = results.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    units = sorted((r["dataset"], r["method"], r["split"]) for r in records)
    ran = ("nuts", "ensemble", "meanfield", "lowrank")
    assert units == sorted(("toy", m, s) for m in ran for s in (0, 1))
    # Split by split, cheap methods first; NUTS after everything else.
    assert [(r["method"], r["split"]) for r in records] == [
        ("ensemble", 0), ("meanfield", 0), ("lowrank", 0),
        ("ensemble", 1), ("meanfield", 1), ("lowrank", 1), ("nuts", 0), ("nuts", 1)]
    for r in records:
        assert r["config"] == bench.unit_key(tiny_config(bench), r["method"])
        assert r["n_train"] == 25 and r["n_test"] == 5
        for metric in bench.METRICS:
            assert math.isfinite(r[metric])
        assert 0.0 <= r["coverage_95"] <= 1.0 and r["width_95"] > 0 and r["crps"] > 0
        assert r["seed"] == r["split"]

    report = out.read_text()
    assert "## toy" in report
    header = "| method | n | RMSE | NLL | 95% cov. | 95% width | CRPS | fit (s) |"
    assert header in report
    for label in ("Ensemble", "MeanField", "LowRank", "NUTS"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {label} (ours)"))
        assert row.split("|")[2].strip() == "2"  # n splits
        assert row.count("±") == len(bench.METRICS)
    assert "## Configuration" in report

    # The rerun finds every unit done: nothing is fitted, nothing is appended.
    def fail(*args, **kwargs):
        raise AssertionError("run_unit called on a rerun")

    monkeypatch.setattr(bench, "run_unit", fail)
    capsys.readouterr()
    assert bench.main(argv) == 0
    assert "0 to run" in capsys.readouterr().err
    assert results.read_text().splitlines() == lines

    # A run on one data set still reports every data set of the results file; --report-only
    # with --datasets shows just those.
    other = dict(records[0], dataset="other")
    with results.open("a") as handle:
        handle.write(json.dumps(other) + "\n")
    assert bench.main(argv) == 0
    assert "## toy" in out.read_text() and "## other" in out.read_text()
    assert bench.main(["--report-only", "--datasets", "toy", "--out", str(out)]) == 0
    assert "## toy" in out.read_text() and "## other" not in out.read_text()

    # --report-only rebuilds the same report without fitting.
    out.unlink()
    assert bench.main([*argv, "--report-only"]) == 0
    assert out.read_text().split("Command:")[0] == report.split("Command:")[0]


def test_quick_and_full_results_do_not_mix(bench):
    full, quick = bench.default_config(False, "pyro"), bench.default_config(True, "pyro")
    for method in bench.METHODS:
        assert bench.unit_key(full, method) != bench.unit_key(quick, method)
        assert bench.unit_key(full, method).startswith("full-")
    record = {"dataset": "toy", "method": "ensemble", "split": 0,
              "config": bench.unit_key(full, "ensemble")}
    assert bench.done_units([record], full) == {("toy", "ensemble", 0)}
    assert bench.done_units([record], quick) == set()
    # Changing one method's settings leaves the other methods' keys alone.
    changed = bench.default_config(False, "vectorized")
    assert bench.unit_key(changed, "nuts") != bench.unit_key(full, "nuts")
    assert bench.unit_key(changed, "ensemble") == bench.unit_key(full, "ensemble")


def test_model_overrides_change_one_method_model_and_key(bench):
    config = bench.default_config(False, "pyro")
    assert config["model_overrides"] == {"meanfield": {"basis": "constant"}}
    assert bench.method_model(config, "meanfield") == {**config["model"], "basis": "constant"}
    assert bench.method_model(config, "ensemble") == config["model"]
    assert type(bench.build_model(config, 6, "meanfield").net.basis).__name__ == "Constant"
    assert type(bench.build_model(config, 6, "ensemble").net.basis).__name__ == "Legendre"
    # The override is part of the method's key and of no other method's.
    plain = {**config, "model_overrides": {}}
    assert bench.unit_key(plain, "meanfield") != bench.unit_key(config, "meanfield")
    assert bench.unit_key(plain, "ensemble") == bench.unit_key(config, "ensemble")
    report = bench.render_report(config, [], [])
    assert '| MeanField (no results yet) | `' in report and '`{"basis": "constant"}`' in report


def test_run_unit_is_picklable_and_deterministic(bench, data_root):
    import pickle

    config = tiny_config(bench)
    assert pickle.loads(pickle.dumps(bench.run_unit)) is bench.run_unit
    first = bench.run_unit(config, "toy", "ensemble", 1, data_root)
    second = bench.run_unit(config, "toy", "ensemble", 1, str(data_root))
    for metric in ("rmse", "nll", "coverage_95", "width_95", "crps"):
        assert first[metric] == second[metric]
    json.dumps(first)


def test_plan_units_order(bench):
    units = bench.plan_units(["a", "b"], ["nuts", "lowrank", "ensemble"], [3, 1])
    assert units == [("a", "ensemble", 3), ("b", "ensemble", 3), ("a", "lowrank", 3),
                     ("b", "lowrank", 3), ("a", "ensemble", 1), ("b", "ensemble", 1),
                     ("a", "lowrank", 1), ("b", "lowrank", 1), ("a", "nuts", 3),
                     ("b", "nuts", 3), ("a", "nuts", 1), ("b", "nuts", 1)]


@pytest.mark.slow  # spawning workers that import torch and pyro takes 10 s to minutes
def test_worker_pool_gives_the_serial_results(bench, data_root, tmp_path, monkeypatch):
    # Spawned workers unpickle run_unit by module name, so here the script is imported the
    # way workers can find it: as module ``uci`` from benchmarks/ on the path (which spawned
    # children inherit). Run as a script it is ``__main__``, which spawn handles itself.
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.delitem(sys.modules, "uci", raising=False)
    import uci

    assert Path(uci.__file__) == SCRIPT
    config = tiny_config(bench)
    units = [("toy", "ensemble", 0), ("toy", "ensemble", 1)]
    pooled = tmp_path / "pool.jsonl"
    assert uci.run_units(config, units, data_root, pooled, jobs=2, progress=False) == []
    by_unit = {(r["dataset"], r["method"], r["split"]): r for r in bench.load_results(pooled)}
    assert sorted(by_unit) == units
    serial = bench.run_unit(config, "toy", "ensemble", 1, data_root)
    assert by_unit[("toy", "ensemble", 1)]["rmse"] == serial["rmse"]
    assert by_unit[("toy", "ensemble", 1)]["nll"] == serial["nll"]


def test_a_failing_unit_is_reported_and_the_others_go_on(bench, data_root, tmp_path):
    config = tiny_config(bench)
    units = [("toy", "ensemble", 0), ("toy", "ensemble", 7), ("toy", "ensemble", 1)]
    results = tmp_path / "r.jsonl"
    messages = []
    failures = bench.run_units(config, units, data_root, results, progress=False,
                               log=messages.append)
    assert [unit for unit, _ in failures] == [("toy", "ensemble", 7)]
    assert "split must be in 0..2" in failures[0][1] and "Traceback" in messages[0]
    assert [r["split"] for r in bench.load_results(results)] == [0, 1]


@pytest.mark.parametrize(("text", "expected"), [
    ("0-19", list(range(20))),
    ("0,3,5", [0, 3, 5]),
    ("0-2,7", [0, 1, 2, 7]),
    (" 4 ", [4]),
])
def test_parse_splits(bench, text, expected):
    assert bench.parse_splits(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "non-empty"),
    ("a", "bad split specification"),
    ("-1", "bad split specification"),
    ("1-2-3", "bad split specification"),
    ("0,,2", "bad split specification"),
    ("5-2", "end is below the start"),
    ("1,0-2", "more than once"),
])
def test_parse_splits_rejects_bad_input(bench, text, message):
    with pytest.raises(ValueError, match=message):
        bench.parse_splits(text)


@pytest.mark.parametrize(("extra", "message"), [
    (["--datasets", "nope"], "unknown data set"),
    (["--splits", "0-3"], "split must be in 0..2"),
    (["--splits", "x"], "bad split specification"),
    (["--jobs", "0"], "--jobs and --threads must be positive"),
    (["--methods", "sgld"], "invalid choice: 'sgld'"),
])
def test_bad_arguments_give_clear_errors(bench, data_root, tmp_path, capsys, extra, message):
    argv = ["--data-root", str(data_root), "--datasets", "toy", "--out",
            str(tmp_path / "uci.md"), "--no-progress", *extra]
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "uci.jsonl").exists()


def test_report_only_without_results_is_an_error(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--report-only", "--out", str(tmp_path / "u.md")])
    assert "no results file" in capsys.readouterr().err
    assert not (tmp_path / "u.md").exists()


def test_missing_data_root_is_an_error(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--data-root", str(tmp_path / "absent"), "--out", str(tmp_path / "u.md")])
    assert "is not a folder" in capsys.readouterr().err


def test_data_root_defaults_to_environment_then_shared(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("BAYESRESNET_DATA", str(tmp_path))
    assert bench.default_data_root() == tmp_path
    monkeypatch.delenv("BAYESRESNET_DATA")
    assert bench.default_data_root() == bench.REPO.parent / "shared" / "data" / "uci"


def test_results_file_survives_a_cut_off_last_line(bench, tmp_path):
    path = tmp_path / "r.jsonl"
    bench.append_result(path, {"a": 1})
    with path.open("a") as handle:
        handle.write('{"a": 2, "b"')  # an interrupted write
    assert bench.load_results(path) == [{"a": 1}]
    bench.append_result(path, {"a": 3})
    with pytest.raises(ValueError, match="line 2"):
        bench.load_results(path)  # the broken line is now in the middle: an error
    path.write_text('{"a": 1}\n{"a": 3}\n')
    assert bench.load_results(path) == [{"a": 1}, {"a": 3}]


def _record(bench, config, dataset, method, split, **metrics):
    base = {m: 1.0 for m in bench.METRICS}
    base.update(metrics)
    return {"dataset": dataset, "method": method, "split": split, "n_train": 9, "n_test": 1,
            "num_params": 5, "config": bench.unit_key(config, method), **base}


def test_summary_is_mean_and_standard_error_over_splits(bench):
    config = bench.default_config(False, "pyro")
    values = [0.5, 0.7, 0.9]
    records = [_record(bench, config, "yacht", "ensemble", i, rmse=v)
               for i, v in enumerate(values)]
    entry = bench.summarize(records)[("yacht", "ensemble")]
    assert entry["n"] == 3 and entry["splits"] == [0, 1, 2]
    mean, se = entry["rmse"]
    assert mean == pytest.approx(0.7)
    assert se == pytest.approx(np.std(values, ddof=1) / math.sqrt(3))


def test_report_puts_published_rows_beside_ours_and_checks_targets(bench, tmp_path):
    config = bench.default_config(False, "pyro")
    published_csv = tmp_path / "pub.csv"
    published_csv.write_text(
        "dataset,method,rmse,rmse_err,nll,nll_err,err_kind,source\n"
        "wine,DeepEnsembles,0.64,0.04,0.94,0.12,sd,Paper A\n"
        "wine,HMC,0.63,0.01,0.91,0.02,se,Paper B\n"
        "yacht,HMC,0.56,0.05,1.62,0.01,se,Paper B\n")
    published = bench.read_published(published_csv)
    records = [
        # Ensemble: RMSE beats 0.64, NLL 0.95 does not beat 0.94; coverage 0.95 is in range.
        *[_record(bench, config, "wine-quality-red", "ensemble", i, rmse=0.62, nll=0.95,
                  coverage_95=0.95) for i in range(2)],
        # NUTS: RMSE 0.635 vs 0.63 is within sqrt(0 + 0.01^2); NLL 0.95 is not within 0.02.
        *[_record(bench, config, "wine-quality-red", "nuts", i, rmse=0.635, nll=0.95,
                  coverage_95=0.90) for i in range(2)],
        # A record of another configuration is left out.
        {**_record(bench, config, "wine-quality-red", "ensemble", 5, rmse=9.0), "config": "x"},
    ]
    report = bench.render_report(config, records, published)
    lines = report.splitlines()
    assert "## wine-quality-red" in lines
    assert any(line.startswith("| DeepEnsembles (published, ± sd) | | 0.64 ± 0.04 | 0.94 ± 0.12")
               for line in lines)
    assert any(line.startswith("| HMC (published, ± se)") for line in lines)
    assert not any("0.56" in line for line in lines)  # yacht is not in the records
    ensemble_row = next(line for line in lines if line.startswith("| Ensemble (ours)"))
    assert ensemble_row.split("|")[2].strip() == "2"
    assert "0.620 ± 0.000" in ensemble_row

    def met(target: str) -> str:
        row = next(line for line in lines if line.startswith(f"| wine-quality-red | {target}"))
        return row.rstrip(" |").rsplit("|", 1)[1].strip()

    assert met("Ensemble RMSE <") == "yes"
    assert met("Ensemble NLL <") == "no"
    assert met("NUTS RMSE ≤") == "yes"
    assert met("NUTS NLL ≤") == "no"
    assert met("Ensemble 95% coverage") == "yes"
    assert met("NUTS 95% coverage") == "no"
    assert "1 records of other configurations" in report
    assert "## Earlier settings" not in report  # 'x' is not a key of this configuration


def test_report_lists_earlier_settings_of_a_method_apart(bench):
    config = bench.default_config(False, "pyro")
    earlier = f"{config['name']}-0123456789"
    records = [
        *[_record(bench, config, "yacht", "nuts", i, rmse=0.3) for i in range(2)],
        *[{**_record(bench, config, "yacht", "nuts", i, rmse=v), "config": earlier,
           "settings": {"init": "prior-map"}} for i, v in enumerate([0.8, 1.0])],
    ]
    lines = bench.render_report(config, records, []).splitlines()
    assert "## Earlier settings" in lines
    row = next(line for line in lines if line.startswith(f"| NUTS | `{earlier}`"))
    assert '`{"init": "prior-map"}`' in row
    assert "| yacht | 2 | 0.900 ± 0.100 |" in row
    # The current rows and targets use only the current key's units.
    current = next(line for line in lines if line.startswith("| NUTS (ours)"))
    assert "0.300 ± 0.000" in current


def test_report_compares_mclmc_with_nuts_and_stacked_with_equal_weights(bench):
    config = bench.default_config(False, "pyro")
    records = [
        # NUTS RMSE 0.40 ± 0 over 2 splits; MCLMC 0.41: within 0? no (margin 0), NLL better.
        *[_record(bench, config, "yacht", "nuts", i, rmse=0.40, nll=0.5, fit_seconds=100.0,
                  cpu_seconds=90.0) for i in range(2)],
        *[{**_record(bench, config, "yacht", "mclmc", i, rmse=0.41, nll=0.3, fit_seconds=10.0,
                     cpu_seconds=30.0),
           "stacked": {"weights": [0.9, 0.1], "rmse": 0.39 + 0.01 * i, "nll": 0.3,
                       "coverage_95": 1.0}} for i in range(2)],
    ]
    report = bench.render_report(config, records, [])
    lines = report.splitlines()

    def met(target: str) -> str:
        row = next(line for line in lines if line.startswith(f"| yacht | {target}"))
        return row.rstrip(" |").rsplit("|", 1)[1].strip()

    assert met("MCLMC RMSE ≤ NUTS") == "no"
    assert met("MCLMC NLL ≤ NUTS") == "yes"
    assert met("MCLMC mean fit seconds ≤ NUTS / 5") == "yes"  # 10 of 100
    assert met("MCLMC mean cpu seconds ≤ NUTS / 5") == "no"  # 30 of 90
    row = next(line for line in lines if line.startswith("| yacht | MCLMC | 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # RMSE equal 0.410, stacked 0.395, paired difference -0.015 ± 0.005.
    assert cells[3:6] == ["0.410", "0.395", "-0.015 ± 0.005"]
    assert cells[-1] == "0.90"
