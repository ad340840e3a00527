"""benchmarks/sampling_seeds.py: ratios per seed from sampling.py reports, and refusals."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import benchmark_script


@pytest.fixture(scope="module")
def seeds():
    with benchmark_script("sampling_seeds.py", "sampling_seeds_benchmark") as module:
        yield module


def _row(key, ess, seconds, settings="same"):
    return {"problem": "cubic", "key": key, "settings": settings, "ess": ess,
            "ess_chain_min": ess / 5, "seconds": seconds, "cpu_seconds": seconds,
            "ess_s": ess / seconds, "ess_kgrad": ess / 1000.0, "passes": True,
            "notes": ["step_size 0.04, L 20"]}


def _report(path, seed, ours, theirs):
    data = {"sections": [{"problem": "cubic", "command": f"sampling.py --seed {seed}",
                          "environment": "test"}],
            "rows": [ours, theirs]}
    path.write_text(f"# report\n\n<!-- sampling.py data: {json.dumps(data)} -->\n")
    return path


def _run(seeds, monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["sampling_seeds.py", *map(str, args)])
    seeds.main()
    return capsys.readouterr().out


def test_ratios_are_taken_within_each_run(seeds, tmp_path, monkeypatch, capsys):
    first = _report(tmp_path / "a.md", 1, _row("mclmc", 200.0, 100.0),
                    _row("blackjax", 100.0, 50.0))
    second = _report(tmp_path / "b.md", 0, _row("mclmc", 100.0, 100.0),
                     _row("blackjax", 200.0, 100.0))
    out = _run(seeds, monkeypatch, capsys, first, second, "--out", tmp_path / "seeds.md")
    table = [line for line in out.splitlines() if line.startswith("| 0 |") or
             line.startswith("| 1 |")]
    assert table[0].endswith("| 0.50x | 0.50x | 0.50x |")  # seed 0 first
    assert table[1].endswith("| 2.00x | 1.00x | 1.00x |")
    assert "all 2 seeds: ESS per 1000 gradients median 1.25x, geometric mean 1.00x" in out
    assert "Passes: ours 2 of 2 seeds, BlackJAX's 2 of 2" in out
    assert "the 2 seed(s) where both pass every check (0, 1)" in out
    assert (tmp_path / "seeds.md").read_text().startswith("# Our MCLMC against BlackJAX's")


def test_seeds_where_a_sampler_fails_are_left_out_of_the_passing_summary(
        seeds, tmp_path, monkeypatch, capsys):
    failing = _row("blackjax", 400.0, 50.0)
    failing["passes"] = False
    first = _report(tmp_path / "a.md", 0, _row("mclmc", 200.0, 100.0), failing)
    second = _report(tmp_path / "b.md", 1, _row("mclmc", 100.0, 100.0),
                     _row("blackjax", 100.0, 100.0))
    out = _run(seeds, monkeypatch, capsys, first, second)
    assert "| 0 | 200 | 40 | 0.04 | yes | 400 | 80 | 0.04 | **no** | 0.50x | 0.25x |" in out
    assert "Passes: ours 2 of 2 seeds, BlackJAX's 1 of 2" in out
    assert ("the 1 seed(s) where both pass every check (1): ESS per 1000 gradients median "
            "1.00x") in out


def test_mixed_or_duplicate_runs_are_refused(seeds, tmp_path, monkeypatch, capsys):
    first = _report(tmp_path / "a.md", 0, _row("mclmc", 1.0, 1.0), _row("blackjax", 1.0, 1.0))
    same_seed = _report(tmp_path / "b.md", 0, _row("mclmc", 1.0, 1.0),
                        _row("blackjax", 1.0, 1.0))
    other = _report(tmp_path / "c.md", 1, _row("mclmc", 1.0, 1.0, settings="other"),
                    _row("blackjax", 1.0, 1.0))
    with pytest.raises(SystemExit, match="same seed"):
        _run(seeds, monkeypatch, capsys, first, same_seed)
    with pytest.raises(SystemExit, match="ours with different settings"):
        _run(seeds, monkeypatch, capsys, first, other)
    (tmp_path / "d.md").write_text("no data here\n")
    with pytest.raises(SystemExit, match=r"no sampling\.py data block"):
        _run(seeds, monkeypatch, capsys, tmp_path / "d.md")
