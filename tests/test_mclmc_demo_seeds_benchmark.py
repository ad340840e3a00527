"""benchmarks/mclmc_demo_seeds.py: a fit's record and the table's ranges per run length."""

from __future__ import annotations

import pytest
from helpers import benchmark_script


@pytest.fixture(scope="module")
def seeds():
    with benchmark_script("mclmc_demo_seeds.py", "mclmc_demo_seeds_benchmark") as module:
        yield module


def _row(seed, steps, ess, passes=True):
    return {"seed": seed, "steps": steps, "seconds": 10.0 + seed, "passes": passes,
            "min bulk ESS per chain": ess, "min tail ESS per chain": ess + 1,
            "max chain-wise R-hat": 1.01, "max energy error variance / dim": 0.001}


def test_the_table_gives_each_run_length_its_passes_and_ranges(seeds):
    rows = [_row(3, 300, 150.0), _row(1, 300, 90.0, passes=False), _row(0, 200, 120.0)]
    header, rule, short, long = seeds.summary(rows)
    assert header.count("|") == rule.count("|")
    assert short.startswith("| 200 | unknown | 1 | 1 | 0 | 120-120 |")
    assert long.startswith("| 300 | unknown | 2 | 1 | 1, 3 | 90-150 | 91-151 |")
    assert long.endswith("| 12 (median) |")


def test_runs_of_different_commits_are_kept_apart(seeds):
    rows = [{**_row(0, 300, 150.0), "commit": "new"}, {**_row(0, 300, 90.0), "commit": "old"},
            {**_row(1, 300, 100.0), "commit": "new"}]
    _, _, first, second = seeds.summary(rows)
    assert first.startswith("| 300 | new | 2 | 2 | 0, 1 | 100-150 |")
    assert second.startswith("| 300 | old | 1 | 1 | 0 | 90-90 |")


def test_a_fit_records_what_its_checks_read(seeds, monkeypatch):
    # The demo's settings with a short run: the record has every figure the table reads.
    monkeypatch.setitem(seeds.DEMO_SETTINGS["full"], "mclmc",
                        {"num_samples": 20, "num_warmup": 40, "chains": 2, "init_steps": 20,
                         "compile_after": None})
    row = seeds.fit_once(seed=0, thinning=2)
    assert row["steps"] == 40 and row["seed"] == 0
    assert all(name in row for name in seeds.FIGURES)
    assert row["passes"] == (not row["failed"])
