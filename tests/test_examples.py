"""Every example script runs in fast mode and writes the figures it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _uci_root() -> Path | None:
    env = os.environ.get("BAYESRESNET_DATA", "")
    root = Path(env) if env else REPO.parent / "shared" / "data" / "uci"
    return root if (root / "yacht" / "data.txt").is_file() else None


# script -> (files it writes under --out, lines its output must contain, marks)
CASES = {
    "quickstart.py": (["quickstart.png", "run.nc", "report/index.html", "report/posterior.nc"],
                      ["test RMSE", "identical predictions"], []),
    "generalization_gap.py": (["generalization_gap.png", "generalization_gap.csv"],
                              ["piecewise", "legendre5", "mlp", "ConvergenceWarning",
                               "Spearman"], []),
    "toy_cubic.py": (["toy_cubic.png"], ["NUTS", "mean-field VI", "low-rank VI", "ensemble"],
                     [pytest.mark.slow]),
    "toy_gap.py": (["toy_gap.png"], ["NUTS", "mean-field VI", "low-rank VI", "ensemble"],
                   [pytest.mark.slow]),
    "mixing_vs_basis.py": (["mixing_vs_basis.png"], ["piecewise", "cubic", "linear"],
                           [pytest.mark.slow]),
    "depth_priors.py": (["depth_priors.png", "depth_priors.csv"],
                        ["rw-piecewise", "decay-legendre5", "horseshoe-legendre5", "elpd_loo"],
                        [pytest.mark.slow]),
    "uci_yacht.py": (["report/index.html", "report/posterior.nc"], ["test RMSE"],
                     [pytest.mark.slow, pytest.mark.skipif(
                         _uci_root() is None, reason="UCI yacht data not found")]),
}


# ode_view.py is exercised by tests/test_ode.py and dask_local.py by tests/test_distributed.py.
def test_every_example_is_covered():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    scripts -= {"_common.py", "ode_view.py", "dask_local.py"}
    assert scripts == set(CASES)


@pytest.mark.parametrize("script", [pytest.param(name, marks=marks)
                                    for name, (_, _, marks) in CASES.items()])
def test_example_runs_fast(script, tmp_path):
    files, phrases, _ = CASES[script]
    out = tmp_path / "out"
    env = {**os.environ, "BAYESRESNET_FAST": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    if script == "uci_yacht.py":
        env["BAYESRESNET_DATA"] = str(_uci_root())
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for phrase in phrases:
        assert phrase in done.stdout, done.stdout
    for name in files:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_MAGIC
        if name.endswith(".html"):
            text = path.read_text()
            assert text.count('src="data:image/png;base64,') >= 2 and "<script" not in text


def test_examples_document_themselves():
    for script in CASES:
        text = (EXAMPLES / script).read_text()
        assert text.startswith('"""'), script
        doc = text.split('"""')[1]
        for needed in ("Usage::", "--out", "--fast", "BAYESRESNET_FAST", "Writes"):
            assert needed in doc, (script, needed)


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
                           "html", str(REPO / "docs"), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "html" / "api.html").is_file()
