"""The ``bayesresnet`` command: every command end to end on small data, and its error messages."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli_error as _error

from bayesresnet import cli
from bayesresnet import priors as brn_priors
from bayesresnet.export import load
from bayesresnet.inference.fit import METHODS

REPO = Path(__file__).resolve().parents[1]
FAST_FIT = ["--method", "ensemble", "--members", "2", "--steps", "40", "--width", "4",
            "--depth", "2", "--basis", "linear", "--quiet"]


def _data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 2))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] + 0.1 * rng.normal(size=n)
    y2 = x[:, 0] * x[:, 1] + 0.1 * rng.normal(size=n)
    return np.column_stack([x, y, y2])


def _write_csv(path: Path, values: np.ndarray, header=("x1", "x2", "y", "y2")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(values.tolist())
    return path


def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path) as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array(rows[1:], dtype=float)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    train, test = _data(30, 0), _data(12, 1)
    out = {"root": root, "train": train, "test": test,
           "csv": _write_csv(root / "train.csv", train),
           "test_csv": _write_csv(root / "test.csv", test),
           "txt": root / "train.txt"}
    np.savetxt(out["txt"], train)
    return out


@pytest.fixture(scope="module")
def run(files):
    """A run fitted by ``bayesresnet fit`` on the CSV file, with test data."""
    out = files["root"] / "run"
    code = cli.main(["fit", str(files["csv"]), "--target", "y", "--inputs", "x1", "x2",
                     "--out", str(out), "--test", str(files["test_csv"]), *FAST_FIT])
    assert code == 0
    return out


def test_fit_writes_run_and_report_and_stores_columns(run, files):
    assert (run / "posterior.nc").is_file()
    html = (run / "index.html").read_text()
    assert 'id="calibration"' in html and 'id="metrics"' in html
    post = load(run / "posterior.nc")
    assert post.extra["columns"] == {"named": True, "inputs": ["x1", "x2"], "targets": ["y"],
                                     "input_numbers": [0, 1], "target_numbers": [2]}
    assert post.method.name == "ensemble" and post.method.members == 2
    np.testing.assert_array_equal(post.x_train, files["train"][:, :2])
    np.testing.assert_array_equal(post.y_train, files["train"][:, 2:3])


def test_fit_inputs_default_to_the_non_target_columns(files, tmp_path):
    code = cli.main(["fit", str(files["csv"]), "--target", "y2", "--out", str(tmp_path),
                     *FAST_FIT])
    assert code == 0
    post = load(tmp_path / "posterior.nc")
    np.testing.assert_array_equal(post.x_train, files["train"][:, :3])
    assert post.extra["columns"]["inputs"] == ["x1", "x2", "y"]


def test_predict_matches_the_run(run, files, tmp_path, capsys):
    target = tmp_path / "pred.csv"
    assert cli.main(["predict", str(run / "posterior.nc"), str(files["test_csv"]),
                     "--out", str(target)]) == 0
    assert "wrote 12 predictions" in capsys.readouterr().out
    header, values = _read_csv(target)
    assert header == ["mean", "std", "epistemic_std", "aleatoric_std", "lower_95", "upper_95"]
    pred = load(run / "posterior.nc").predict(files["test"][:, :2])
    lower, upper = pred.interval(0.95)
    expected = np.column_stack([pred.mean, pred.std, pred.epistemic_std, pred.aleatoric_std,
                                lower, upper])
    np.testing.assert_allclose(values, expected, rtol=1e-15, atol=0)


def test_predict_reorders_named_columns_and_takes_bare_inputs(run, files, tmp_path):
    shuffled = _write_csv(tmp_path / "shuffled.csv", files["test"][:, [3, 1, 0]],
                          header=("y2", "x2", "x1"))
    bare = tmp_path / "bare.txt"
    np.savetxt(bare, files["test"][:, :2])
    results = []
    for source in (shuffled, bare, files["test_csv"]):
        target = tmp_path / f"{source.stem}.out.csv"
        assert cli.main(["predict", str(run / "posterior.nc"), str(source), "--out",
                         str(target)]) == 0
        results.append(_read_csv(target)[1])
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[2])


def test_whitespace_file_columns_by_number_and_two_targets(files, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["fit", str(files["txt"]), "--target", "2", "--target", "3",
                     "--out", str(out), *FAST_FIT]) == 0
    post = load(out / "posterior.nc")
    assert post.model.out_dim == 2 and post.model.in_dim == 2
    assert post.extra["columns"]["targets"] == [2, 3]
    # A headerless file with all four columns: inputs by number.
    target = tmp_path / "pred.csv"
    assert cli.main(["predict", str(out / "posterior.nc"), str(files["txt"]), "--out",
                     str(target)]) == 0
    header, values = _read_csv(target)
    assert header[:2] == ["2_mean", "2_std"] and header[6] == "3_mean" and len(header) == 12
    np.testing.assert_allclose(values[:, [0, 6]], post.predict(files["train"][:, :2]).mean,
                               rtol=1e-15)


def test_report_command_with_test_data(run, files, tmp_path):
    out = tmp_path / "rep"
    assert cli.main(["report", str(run / "posterior.nc"), "--test", str(files["test_csv"]),
                     "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert 'id="calibration"' in html and "x1, x2" in html
    assert (out / "posterior.nc").is_file()


def test_report_default_folder(run, tmp_path):
    copy = tmp_path / "mine.nc"
    copy.write_bytes((run / "posterior.nc").read_bytes())
    assert cli.main(["report", str(copy)]) == 0
    assert (tmp_path / "mine_report" / "index.html").is_file()


def test_missing_file(capsys, tmp_path):
    line = _error(capsys, ["fit", str(tmp_path / "nope.csv"), "--target", "y", "--out",
                           str(tmp_path)])
    assert "no such file" in line and "nope.csv" in line
    line = _error(capsys, ["predict", str(tmp_path / "nope.nc"), str(tmp_path / "x.csv")])
    assert "no such file" in line


def test_unknown_column(capsys, files, tmp_path):
    line = _error(capsys, ["fit", str(files["csv"]), "--target", "z", "--out", str(tmp_path)])
    assert "unknown column 'z'" in line and "x1, x2, y, y2" in line
    line = _error(capsys, ["fit", str(files["txt"]), "--target", "7", "--out", str(tmp_path)])
    assert "column 7 is out of range" in line


def test_non_numeric_and_ragged_data(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n3,abc\n")
    line = _error(capsys, ["fit", str(bad), "--target", "y", "--out", str(tmp_path)])
    assert "line 3" in line and "'abc' is not a number" in line
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("1 2 3\n4 5\n")
    line = _error(capsys, ["fit", str(ragged), "--target", "2", "--out", str(tmp_path)])
    assert "line 2: 2 fields, expected 3" in line
    nan = tmp_path / "nan.txt"
    nan.write_text("1 2\nnan 5\n")
    assert "not a finite number" in _error(
        capsys, ["fit", str(nan), "--target", "1", "--out", str(tmp_path)])
    empty = tmp_path / "empty.csv"
    empty.write_text("\n# only a comment\n")
    assert "holds no data" in _error(
        capsys, ["fit", str(empty), "--target", "0", "--out", str(tmp_path)])


def test_file_that_is_not_a_posterior(capsys, files):
    line = _error(capsys, ["predict", str(files["csv"]), str(files["csv"])])
    assert "not a readable bayesresnet posterior" in line
    line = _error(capsys, ["report", str(files["root"])])
    assert "folder" in line


def test_predict_with_missing_input_column(capsys, run, tmp_path):
    other = _write_csv(tmp_path / "other.csv", np.ones((3, 2)), header=("x1", "q"))
    line = _error(capsys, ["predict", str(run / "posterior.nc"), str(other), "--out",
                           str(tmp_path / "p.csv")])
    assert "unknown column 'x2'" in line


def test_flags_that_do_not_apply_and_bad_values(capsys, files, tmp_path):
    line = _error(capsys, ["fit", str(files["csv"]), "--target", "y", "--out", str(tmp_path),
                           "--method", "nuts", "--members", "3"])
    assert "--members does not apply to method 'nuts'" in line
    line = _error(capsys, ["fit", str(files["csv"]), "--target", "y", "--inputs", "y",
                           "--out", str(tmp_path)])
    assert "both inputs and targets" in line
    line = _error(capsys, ["fit", str(files["csv"]), "--target", "y", "--basis", "wavy",
                           "--out", str(tmp_path)])
    assert "unknown basis 'wavy'" in line


def test_usage_errors_exit_2(capsys, files):
    assert cli.main(["fit", str(files["csv"]), "--out", "x"]) == 2  # --target missing
    assert "--target" in capsys.readouterr().err
    assert cli.main(["fit", str(files["csv"]), "--target", "y", "--out", "x", "--width",
                     "0"]) == 2
    assert cli.main([]) == 2
    assert cli.main(["frobnicate"]) == 2


@pytest.mark.parametrize("command", [[], ["demo"], ["fit"], ["predict"], ["report"]])
def test_help_on_every_command(capsys, command):
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bayesresnet")


def test_read_table_header_detection(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("# comment\n1.5,2\n\n3,4e-1\n")
    table = cli.read_table(path)
    assert table.names is None
    np.testing.assert_array_equal(table.values, [[1.5, 2.0], [3.0, 0.4]])
    path.write_text('"a b",c\n1,2\n')
    table = cli.read_table(path)
    assert table.names == ["a b", "c"] and table.column("a b") == 0 and table.column("1") == 1


def test_demo_end_to_end_with_tiny_settings(monkeypatch, tmp_path, capsys):
    tiny = {"nuts": {"num_samples": 10, "num_warmup": 10, "chains": 2, "max_tree_depth": 3,
                     "init_steps": 20},
            "mclmc": {"num_samples": 10, "thinning": 2, "num_warmup": 20, "chains": 2,
                      "init_steps": 20},
            "meanfield": {"steps": 30, "num_draws": 40},
            "lowrank": {"steps": 30, "num_draws": 40},
            "ensemble": {"members": 2, "steps": 30}}
    monkeypatch.setitem(cli.DEMO_SETTINGS, "fast", tiny)
    monkeypatch.setitem(cli.DEMO_NET, "width", 4)
    monkeypatch.setitem(cli.DEMO_NET, "depth", 2)
    assert cli.main(["demo", "--fast", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    printed = {line.split()[0]: line.split()[-1] for line in out.splitlines()
               if line.split() and line.split()[0] in tiny}
    for name in ("nuts", "mclmc", "meanfield", "lowrank", "ensemble"):
        assert (tmp_path / name / "index.html").is_file()
        # The table's verdict is the run's own diagnosis, read back from the run file that the
        # report wrote next to the page.
        ok = load(tmp_path / name / "posterior.nc").diagnose().ok
        assert printed[name] == ("ok" if ok else "FAILED"), (name, out)
    # 2 chains of 10 draws cannot reach the bulk ESS of 100 per chain that NUTS must show.
    assert printed["nuts"] == "FAILED"
    html = (tmp_path / "index.html").read_text()
    assert 'href="nuts/index.html"' in html
    with open(tmp_path / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["nuts", "mclmc", "meanfield", "lowrank", "ensemble"]
    assert {r["data"] for r in rows} == {"test"}
    assert {r["name"]: r["diagnostics_ok"] == "True" for r in rows} == {
        name: status == "ok" for name, status in printed.items()}
    # The default runs the fits in two worker processes; one after another in this process
    # gives the same draws, hence the same table (fit times aside).
    assert cli.main(["demo", "--fast", "--out", str(tmp_path / "serial"), "--quiet",
                     "--jobs", "1"]) == 0
    with open(tmp_path / "serial" / "summary.csv") as handle:
        serial = list(csv.DictReader(handle))
    for row in (*rows, *serial):
        row.pop("fit_seconds")
    assert serial == rows


def _subprocess(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bayesresnet", *args], capture_output=True,
                          text=True, env=env, timeout=600, **kwargs)


def test_python_dash_m_smoke(tmp_path):
    done = _subprocess(["--help"])
    assert done.returncode == 0 and "demo" in done.stdout and "predict" in done.stdout
    done = _subprocess(["predict", str(tmp_path / "missing.nc"), "data.csv"])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"bayesresnet: error: no such file: {tmp_path / 'missing.nc'}"]


@pytest.mark.slow
def test_demo_fast_subprocess(tmp_path):
    done = _subprocess(["demo", "--fast", "--out", str(tmp_path / "demo")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "nuts" in done.stdout and "ensemble" in done.stdout
    assert (tmp_path / "demo" / "index.html").is_file()


def test_fit_reproducible(files, tmp_path):
    preds = []
    for name in ("a", "b"):
        assert cli.main(["fit", str(files["csv"]), "--target", "y", "--inputs", "x1", "x2",
                         "--out", str(tmp_path / name), "--seed", "3", *FAST_FIT]) == 0
        preds.append(load(tmp_path / name / "posterior.nc").predict(files["test"][:, :2]).mean)
    np.testing.assert_array_equal(*preds)


# ------------------------------------------------------------------ prior, rank, dtype, device
def test_fit_with_dtype_prior_rank_and_batch_size(files, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["fit", str(files["csv"]), "--target", "y", "--inputs", "x1", "x2",
                     "--out", str(out), "--method", "map", "--steps", "30", "--width", "4",
                     "--depth", "3", "--basis", "piecewise", "--dtype", "float32", "--device",
                     "cpu", "--prior", "random_walk", "--prior-scale", "0.5", "--rank", "2",
                     "--batch-size", "10", "--quiet"]) == 0
    post = load(out / "posterior.nc")
    assert (post.fit_dtype, post.fit_device) == ("float32", "cpu")
    assert isinstance(post.model.prior, brn_priors.RandomWalk)
    assert post.model.prior.scale == 0.5
    assert post.model.user_net.rank == 2
    assert post.method.name == "map" and post.method.batch_size == 10
    assert "float32 on cpu" in (out / "index.html").read_text()
    assert post.predict(files["test"][:, :2]).mean.dtype == np.float64


@pytest.mark.parametrize(("flags", "message"), [
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--prior", "cauchy"], "argument --prior: invalid choice: 'cauchy'"),
    (["--prior-scale", "-1"], "argument --prior-scale: must be a positive finite number"),
    (["--prior-scale", "nan"], "argument --prior-scale: must be a positive finite number"),
    (["--prior-scale", "wide"], "argument --prior-scale: 'wide' is not a number"),
    (["--rank", "0"], "argument --rank: must be a positive integer"),
    (["--rank", "two"], "argument --rank: 'two' is not an integer"),
    (["--batch-size", "0"], "argument --batch-size: must be a positive integer"),
])
def test_malformed_fit_settings_exit_2_naming_the_flag(capsys, files, tmp_path, flags, message):
    code = cli.main(["fit", str(files["csv"]), "--target", "y", "--out", str(tmp_path / "run"),
                     "--method", "map", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--method", "nuts", "--batch-size", "8"],
     "--batch-size does not apply to method 'nuts' (its flags: --num-samples, --num-warmup, "
     "--chains; --batch-size applies to ensemble, laplace, lowrank, map, meanfield, swag)"),
    (["--method", "mclmc", "--batch-size", "8"], "--batch-size does not apply to method 'mclmc'"),
    (["--method", "map", "--batch-size", "31"], "--batch-size 31 exceeds the 30 rows of"),
    (["--method", "map", "--width", "4", "--rank", "5"], "--rank 5 exceeds --width 4"),
    (["--method", "laplace", "--prior", "random_walk"],
     "--method laplace cannot fit this model (--prior random_walk): Laplace: the model's prior "
     "must be priors.Normal"),
    (["--method", "laplace", "--prior", "horseshoe"],
     "--method laplace cannot fit this model (--prior horseshoe)"),
    (["--method", "map", "--device", "gpu7"], "--device gpu7: device 'gpu7' is not a device "
                                              "name torch understands"),
])
def test_fit_settings_that_do_not_fit_are_one_line_errors(capsys, files, tmp_path, flags,
                                                           message):
    # Each is found before any fitting.
    line = _error(capsys, ["fit", str(files["csv"]), "--target", "y", "--out",
                           str(tmp_path / "run"), *flags])
    assert message in line
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_fit_on_cuda_without_a_gpu_is_a_one_line_error(capsys, files, tmp_path):
    line = _error(capsys, ["fit", str(files["csv"]), "--target", "y", "--out",
                           str(tmp_path / "run"), "--method", "map", "--device", "cuda"])
    assert "--device cuda: device 'cuda' was requested but no CUDA GPU is available" in line


def test_method_flags_are_settings_of_their_methods():
    # Every method of 'fit --method' has its flags, and each flag sets a real setting; the
    # minibatch flag goes to exactly the methods whose class takes batch_size.
    assert set(cli._METHOD_FLAGS) == set(METHODS)
    for name, flags in cli._METHOD_FLAGS.items():
        fields = {field.name for field in dataclasses.fields(METHODS[name])}
        assert set(flags.values()) <= fields, name
        assert ("batch_size" in flags) == ("batch_size" in fields), name
    parser = cli.build_parser()
    for name, flags in (("swag", ["--members", "3", "--batch-size", "4"]),
                        ("laplace", ["--members", "2", "--steps", "7", "--batch-size", "4"])):
        args = parser.parse_args(["fit", "data.csv", "--target", "y", "--out", "run",
                                  "--method", name, *flags])
        method = cli._method(args)
        assert method.name == name and method.batch_size == 4
