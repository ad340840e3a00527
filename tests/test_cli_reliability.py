"""Issue 20 for the ``bayesresnet`` command: huge values, the output folder as one unit, Ctrl-C,
duplicate or BOM-marked column names, and the table reader on generated text."""

from __future__ import annotations

import csv
import importlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from helpers import cli_error as _error
from hypothesis import HealthCheck, given, settings

from bayesresnet import cli
from bayesresnet.export import load
from bayesresnet.posterior import Posterior

REPO = Path(__file__).resolve().parents[1]
FAST_FIT = ["--method", "ensemble", "--members", "2", "--steps", "30", "--width", "4",
            "--depth", "2", "--basis", "linear", "--quiet"]
pytestmark = pytest.mark.timeout(120)


def _write_csv(path: Path, values: np.ndarray, header=("x1", "x2", "y")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(values.tolist())
    return path


def _data(n: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 2))
    return np.column_stack([x, np.sin(x[:, 0]) + 0.5 * x[:, 1] + 0.1 * rng.normal(size=n)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_reliability")
    train = _data()
    return {"root": root, "train": train, "csv": _write_csv(root / "train.csv", train)}


@pytest.fixture(scope="module")
def run(files):
    """A run written by ``bayesresnet fit`` (folder with posterior.nc and index.html)."""
    out = files["root"] / "run"
    assert cli.main(["fit", str(files["csv"]), "--target", "y", "--out", str(out),
                     *FAST_FIT]) == 0
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _siblings(folder: Path) -> list[str]:
    """Hidden staging or old folders left next to ``folder``."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


# ------------------------------------------------------------------ 2: huge values
def test_predict_never_writes_non_finite_predictions(run, tmp_path, capsys):
    """Inputs of 1e300 gave a predictions CSV of inf and nan, and exit status 0. Now the
    network's saturated activations give finite predictions there, computed without overflow."""
    far = _write_csv(tmp_path / "far.csv", np.array([[1e300, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    target = tmp_path / "pred.csv"
    assert cli.main(["predict", str(run / "posterior.nc"), str(far), "--out", str(target)]) == 0
    capsys.readouterr()
    written = np.genfromtxt(target, delimiter=",", skip_header=1)
    assert written.shape[0] == 2 and np.isfinite(written).all()


def test_predict_checks_what_it_writes(run, files, tmp_path, capsys, monkeypatch):
    """Whatever Posterior.predict returns, the command writes no non-finite number."""

    class Infinite:
        mean = np.array([[1.0], [np.inf]])
        std = epistemic_std = aleatoric_std = np.array([[1.0], [np.nan]])

        def interval(self, level):
            return self.mean - 1, self.mean + 1

    monkeypatch.setattr(Posterior, "predict", lambda self, x, num_draws=None: Infinite())
    two = _write_csv(tmp_path / "two.csv", files["train"][:2])
    target = tmp_path / "pred.csv"
    line = _error(capsys, ["predict", str(run / "posterior.nc"), str(two), "--out",
                           str(target)])
    assert "not finite" in line and "1 of 2 rows" in line and "row 2" in line, line
    assert not target.exists()


def test_fit_on_huge_inputs_uses_them(files, tmp_path):
    """x * 1e299 overflowed the standard deviation (inf), so the inputs were ignored."""
    huge = files["train"].copy()
    huge[:, 0] *= 1e299
    data = _write_csv(tmp_path / "huge.csv", huge)
    assert cli.main(["fit", str(data), "--target", "y", "--out", str(tmp_path / "run"),
                     *FAST_FIT]) == 0
    post = load(tmp_path / "run" / "posterior.nc")
    np.testing.assert_allclose(post.x_scaler.std[0], np.std(huge[:, 0] / 1e299) * 1e299,
                               rtol=1e-12)
    target = tmp_path / "pred.csv"
    assert cli.main(["predict", str(tmp_path / "run" / "posterior.nc"), str(data), "--out",
                     str(target)]) == 0
    with open(target) as handle:
        values = np.array(list(csv.reader(handle))[1:], dtype=float)
    assert np.isfinite(values).all() and np.ptp(values[:, 0]) > 0


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_fit_on_huge_targets_never_leaves_non_finite_results(files, tmp_path, capsys):
    """y * 1e200 overflowed the standard deviation (inf), so every prediction was NaN."""
    huge = files["train"].copy()
    huge[:, 2] *= 1e200
    data = _write_csv(tmp_path / "huge.csv", huge)
    out, target = tmp_path / "run", tmp_path / "pred.csv"
    code = cli.main(["fit", str(data), "--target", "y", "--out", str(out), *FAST_FIT])
    captured = capsys.readouterr()
    if code != 0:  # Posterior.predict (the report's) may refuse samples of 1e200
        assert code == 1 and captured.err.startswith("bayesresnet: error:"), captured.err
        assert not out.exists() and _siblings(out) == []
        return
    post = load(out / "posterior.nc")
    np.testing.assert_allclose(post.y_scaler.std, np.std(huge[:, 2] / 1e200) * 1e200,
                               rtol=1e-12)
    code = cli.main(["predict", str(out / "posterior.nc"), str(data), "--out", str(target)])
    captured = capsys.readouterr()
    if code == 0:
        with open(target) as handle:
            assert np.isfinite(np.array(list(csv.reader(handle))[1:], dtype=float)).all()
    else:
        assert code == 1 and "bayesresnet: error:" in captured.err and not target.exists()


def test_fit_names_a_column_too_close_to_the_float64_limit(files, tmp_path, capsys):
    limit = np.finfo(np.float64).max
    values = files["train"][:3].copy()
    values[:, 1] = [limit, -limit, limit]
    data = _write_csv(tmp_path / "limit.csv", values)
    out = tmp_path / "run"
    line = _error(capsys, ["fit", str(data), "--target", "y", "--out", str(out), *FAST_FIT])
    assert "column 'x2'" in line and "float64 limit" in line and "limit.csv" in line, line
    assert not out.exists()


# ------------------------------------------------------------------ 4: the output folder
@pytest.mark.parametrize("command", ["fit", "report"])
def test_interrupt_while_writing_keeps_the_previous_run(command, run, files, tmp_path,
                                                        monkeypatch):
    """Ctrl-C between posterior.nc and index.html left a new run beside the old report."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("posterior.nc", "index.html"):
        (out / name).write_bytes((run / name).read_bytes())
    before = _snapshot(out)

    def interrupted(posterior, out_dir, *args, **kwargs):
        Path(out_dir, "posterior.nc").write_bytes(b"the new run")
        raise KeyboardInterrupt

    # (the package's name ``report`` is the function, so the module comes from importlib)
    monkeypatch.setattr(importlib.import_module("bayesresnet.report"), "report", interrupted)
    argv = (["fit", str(files["csv"]), "--target", "y", "--out", str(out), *FAST_FIT]
            if command == "fit" else ["report", str(run / "posterior.nc"), "--out", str(out)])
    assert cli.main(argv) == 130
    assert _snapshot(out) == before
    assert _siblings(out) == []


def test_fit_replaces_a_previous_run_as_a_whole(files, tmp_path, capsys):
    out = tmp_path / "out"
    for seed in ("1", "2"):
        assert cli.main(["fit", str(files["csv"]), "--target", "y", "--out", str(out),
                         "--seed", seed, *FAST_FIT]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "posterior.nc"]
    assert load(out / "posterior.nc").seed == 2
    assert _siblings(out) == []
    assert f"wrote {out / 'posterior.nc'} and {out / 'index.html'}" in capsys.readouterr().out


def test_output_folder_with_other_files_is_refused_and_left_alone(files, run, tmp_path,
                                                                  capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "index.html").write_text("my page")
    before = _snapshot(out)
    line = _error(capsys, ["fit", str(files["csv"]), "--target", "y", "--out", str(out),
                           *FAST_FIT])
    assert "notes.txt" in line and "did not write" in line, line
    line = _error(capsys, ["report", str(run / "posterior.nc"), "--out", str(out)])
    assert "notes.txt" in line
    assert _snapshot(out) == before and _siblings(out) == []
    # A file in the way, and the current folder, are refused too.
    line = _error(capsys, ["report", str(run / "posterior.nc"), "--out",
                           str(out / "notes.txt")])
    assert "not a folder" in line


def test_output_folder_that_holds_the_current_folder_is_refused(run, tmp_path, capsys,
                                                                monkeypatch):
    out = tmp_path / "here"
    (out / "sub").mkdir(parents=True)
    monkeypatch.chdir(out / "sub")
    line = _error(capsys, ["report", str(run / "posterior.nc"), "--out", ".."])
    assert "current folder" in line
    assert sorted(p.name for p in out.iterdir()) == ["sub"]


def test_empty_folder_and_report_into_the_runs_own_folder(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["report", str(run / "posterior.nc"), "--out", str(empty)]) == 0
    assert sorted(p.name for p in empty.iterdir()) == ["index.html", "posterior.nc"]
    # Reporting a run into its own folder replaces that folder with an equal run.
    assert cli.main(["report", str(empty / "posterior.nc"), "--out", str(empty)]) == 0
    assert load(empty / "posterior.nc").seed == load(run / "posterior.nc").seed
    assert _siblings(empty) == []


def test_interrupt_after_the_folder_is_written_exits_0(run, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the output is complete (here: while 'wrote ...' is printed) is success."""

    def interrupt_on_wrote(*args, **kwargs):
        if args and str(args[0]).startswith("wrote"):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "print", interrupt_on_wrote, raising=False)
    out = tmp_path / "rep"
    assert cli.main(["report", str(run / "posterior.nc"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "posterior.nc"]
    target = tmp_path / "pred.csv"
    data = _write_csv(tmp_path / "d.csv", _data(3, 1))
    assert cli.main(["predict", str(run / "posterior.nc"), str(data), "--out",
                     str(target)]) == 0
    assert len(target.read_text().splitlines()) == 4


def test_sigint_after_the_command_returned_exits_0(run, tmp_path):
    """A SIGINT during interpreter shutdown, after 'wrote ...', made the process die of it."""
    # As found, not assumed default: a shell starts background jobs with SIGINT ignored.
    handler = signal.getsignal(signal.SIGINT)
    script = ("import os, signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as in a terminal
              "from bayesresnet.cli import console\n"
              "code = console(sys.argv[1:])\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "raise SystemExit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "rep"
    done = subprocess.run([sys.executable, "-c", script, "report", str(run / "posterior.nc"),
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=110)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "wrote" in done.stdout
    assert (out / "index.html").is_file()
    assert signal.getsignal(signal.SIGINT) is handler  # ours untouched


# ------------------------------------------------------------------ 5: column names
def test_duplicate_column_names_are_rejected(files, tmp_path, capsys):
    """'a,a,y' was fitted with inputs ['a', 'a']; predict then fed column a twice."""
    dup = tmp_path / "dup.csv"
    dup.write_text("a,a,y\n1,2,3\n4,5,6\n")
    out = tmp_path / "run"
    line = _error(capsys, ["fit", str(dup), "--target", "y", "--out", str(out), *FAST_FIT])
    assert "'a'" in line and "more than once" in line and "dup.csv" in line, line
    assert not out.exists()
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("a , a,y\n1,2,3\n")
    assert "more than once" in _error(capsys, ["fit", str(spaced), "--target", "y", "--out",
                                               str(out)])


def test_run_with_repeated_column_names_is_not_matched_by_name(run, files, tmp_path, capsys):
    """A run fitted before repeated names were refused: its inputs cannot be found by name."""
    post = load(run / "posterior.nc")
    post.extra["columns"]["inputs"] = ["x1", "x1"]
    post.save(tmp_path / "old.nc")
    line = _error(capsys, ["predict", str(tmp_path / "old.nc"), str(files["csv"]), "--out",
                           str(tmp_path / "p.csv")])
    assert "repeat a name" in line and not (tmp_path / "p.csv").exists()


def test_utf8_bom_is_not_part_of_the_first_name(files, tmp_path):
    bom = tmp_path / "bom.csv"
    with open(bom, "w", encoding="utf-8-sig", newline="") as handle:
        handle.write("a,b,y\n1,2,3\n4,5,7\n")
    table = cli.read_table(bom)
    assert table.names == ["a", "b", "y"] and table.column("a") == 0
    bare = tmp_path / "bom.txt"
    bare.write_bytes("\ufeff1 2\n3 4\n".encode())
    np.testing.assert_array_equal(cli.read_table(bare).values, [[1, 2], [3, 4]])


def test_quoted_field_left_open_ends_with_its_line(tmp_path):
    """A quote left open used to swallow the next line and fail with zip()'s ValueError."""
    path = tmp_path / "open.csv"
    path.write_text('a,b\n1,"2\n3,4\n')
    table = cli.read_table(path)
    assert table.names == ["a", "b"]
    np.testing.assert_array_equal(table.values, [[1, 2], [3, 4]])


# ------------------------------------------------------------------ the reader, generated
_FIELDS = st.one_of(
    st.floats().map(repr),
    st.integers(-10**30, 10**30).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "1_0", "", " ", '"', '"a,b"', "#", "x",
                     "\ufeff", "\ufeffa", "a a", "\x00", "\u0663", "1e-400", "0x10", "1,5"]),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=4),
)
_NAMES = st.sampled_from(["a", "b", " a", "a ", "y", "a b", '"q"', '"a"', "", "#c", "1", "nan",
                          "\ufeffa", "é"])
_NUMBERS = st.one_of(st.floats().map(repr), st.integers(-10**30, 10**30).map(str),
                     st.sampled_from(["1e999", "1_0", "", "x", '"2', '"3"', "\u0663", " 4 "]))
_SEPARATORS = st.sampled_from([",", " ", "\t", ", ", ";"])


@st.composite
def _tables(draw) -> str:
    """Text shaped like a data file: an optional BOM and header, rows of about one width."""
    sep, width = draw(_SEPARATORS), draw(st.integers(1, 4))
    lines = []
    if draw(st.booleans()):
        lines.append(sep.join(draw(st.lists(_NAMES, min_size=width, max_size=width))))
    for _ in range(draw(st.integers(0, 4))):
        size = draw(st.sampled_from([width, width, width, width - 1, width + 1]))
        lines.append(sep.join(draw(st.lists(_NUMBERS, min_size=size, max_size=size))))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "# note"])))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return bom + draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)


_LINES = st.tuples(st.lists(_FIELDS, max_size=4), _SEPARATORS).map(
    lambda parts: parts[1].join(parts[0]))
_TEXTS = st.one_of(
    _tables(),
    st.lists(_LINES, max_size=6).map("\n".join),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
)


def _check_table(path: str) -> None:
    try:
        table = cli.read_table(path)
    except cli.CLIError as err:
        assert str(err)
        return
    values = table.values
    assert values.ndim == 2 and values.shape[0] >= 1 and values.shape[1] >= 1
    assert values.dtype == np.float64 and np.isfinite(values).all()
    if table.names is not None:
        assert len(table.names) == values.shape[1]
        assert all(isinstance(n, str) and n and n == n.strip() for n in table.names)
        assert len(set(table.names)) == len(table.names)
        assert not table.names[0].startswith("\ufeff")
        for index, name in enumerate(table.names):
            assert table.column(name) == index


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXTS)
def test_read_table_property_parses_or_raises_the_user_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "data.csv")
        with open(path, "wb") as handle:
            handle.write(text.encode("utf-8"))
        _check_table(path)


@settings(max_examples=40, deadline=None)
@given(blob=st.binary(max_size=40))
def test_read_table_property_on_arbitrary_bytes(blob):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "data.bin")
        with open(path, "wb") as handle:
            handle.write(blob)
        _check_table(path)
