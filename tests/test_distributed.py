"""Fits on executors (Dask LocalCluster, thread and process pools): the same draws as a local
fit with the same seed, retries of failed units, clear errors, and the UCI benchmark on Dask.

The cluster (2 single-threaded worker processes) is started once for the module. Failures are
injected by test-only executors that wrap one unit in :class:`FailingCall`, which counts its
attempts with files in a temporary folder, so it works across processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from helpers import assert_identical

import bayesresnet as brn
from bayesresnet.inference import executor as executor_module
from bayesresnet.inference.executor import UnitFailedError, WorkUnit, run_units, split_range

distributed = pytest.importorskip("distributed")
from distributed.cfexecutor import ClientExecutor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Tiny runs: the point is bit-for-bit agreement, not good posteriors.
NUTS_FAST = {"num_samples": 6, "num_warmup": 6, "max_tree_depth": 3, "init_steps": 20}


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def toy():
    x, y = brn.data.cubic(20, seed=0)
    model = brn.BayesianResNet(brn.ResNet(1, 1, width=4, depth=3, basis=brn.Linear()))
    return model, x, y


def _fit(toy, method, **kwargs):
    model, x, y = toy
    return brn.fit(model, x, y, method=method, seed=5, progress=False, check=False, **kwargs)


def assert_same_posterior(a: brn.Posterior, b: brn.Posterior) -> None:
    assert_identical(a.draws, b.draws, "draws")
    assert_identical(a.stats, b.stats, "stats")
    assert_identical(a.extra, b.extra, "extra")


# ---------------------------------------------------------------- failure injection (test only)
class FailingCall:
    """A unit that raises on its first ``failures`` attempts, counted with files in ``folder``
    (visible to every worker process), then runs normally."""

    def __init__(self, unit: WorkUnit, folder: Path, failures: int) -> None:
        self.unit, self.folder, self.failures = unit, Path(folder), failures
        self.label = unit.label

    def __call__(self, progress: bool = False):
        (self.folder / f"attempt-{uuid.uuid4().hex}").touch()
        attempt = len(list(self.folder.iterdir()))
        if attempt <= self.failures:
            raise RuntimeError(f"injected failure, attempt {attempt}")
        return self.unit(progress=progress)


class _Injecting:
    """Mixin of an executor that wraps the unit labelled ``target`` in a FailingCall."""

    def inject(self, target: str, folder: Path, failures: int):
        self.target, self.folder, self.failures = target, folder, failures
        return self

    def submit(self, fn, *args, **kwargs):
        if isinstance(fn, WorkUnit) and fn.label == self.target:
            fn = FailingCall(fn, self.folder, self.failures)
        return super().submit(fn, *args, **kwargs)


class InjectingDaskExecutor(_Injecting, ClientExecutor):
    pass


class InjectingThreadPool(_Injecting, cf.ThreadPoolExecutor):
    pass


def _attempts(folder: Path) -> int:
    return len(list(folder.iterdir()))


# ---------------------------------------------------------------- units
def test_units_follow_the_settings():
    assert [list(r) for r in split_range(5, 2)] == [[0, 1], [2, 3], [4]]
    assert brn.NUTS(chains=4).chain_groups() == [range(0, 4)]
    assert brn.NUTS(chains=3, backend="pyro").chain_groups() == [range(i, i + 1)
                                                                for i in range(3)]
    assert brn.NUTS(chains=5, chains_per_unit=2).chain_groups() == [range(0, 2), range(2, 4),
                                                                   range(4, 5)]
    for make in (lambda: brn.NUTS(chains_per_unit=0), lambda: brn.Ensemble(members_per_unit=0),
                 lambda: brn.NUTS(chains_per_unit=1.5)):
        with pytest.raises(ValueError, match="_per_unit must be a positive integer"):
            make()


def test_plan_labels_units(toy):
    model, x, y = toy
    x = torch.as_tensor(x).reshape(-1, 1)
    y = torch.as_tensor(y).reshape(-1, 1)
    labels = [u.label for u in brn.NUTS(chains=5, chains_per_unit=2).plan(model, x, y, 0).units]
    assert labels == ["NUTS chain group 0 of 3 (chains 0-1)", "NUTS chain group 1 of 3 "
                      "(chains 2-3)", "NUTS chain group 2 of 3 (chain 4)"]
    plan = brn.Ensemble(members=3, members_per_unit=2).plan(model, x, y, 0)
    assert [u.label for u in plan.units] == ["Ensemble member group 0 of 2 (members 0-1)",
                                             "Ensemble member group 1 of 2 (member 2)"]


def test_bad_executor_and_retries_are_rejected(toy):
    with pytest.raises(ValueError, match=r"concurrent\.futures\.Executor"):
        _fit(toy, brn.MAP(steps=2), executor="tcp://127.0.0.1:8786")
    with cf.ThreadPoolExecutor(1) as pool, \
            pytest.raises(ValueError, match="retries must be a non-negative integer"):
        _fit(toy, brn.MAP(steps=2), executor=pool, retries=-1)


def test_a_local_unit_error_names_the_unit():
    def boom(*, progress):
        raise ArithmeticError("boom")

    units = [WorkUnit("first", lambda *, progress: 1), WorkUnit("second", boom)]
    with pytest.raises(ArithmeticError, match="boom") as info:
        run_units(units)
    assert "(in second)" in info.value.__notes__


def test_grouped_members_equal_one_batch_up_to_rounding(toy):
    # Full-batch members are independent Adam runs: grouping them changes only the batch
    # shapes of the arithmetic, hence float64 rounding.
    whole = _fit(toy, brn.Ensemble(members=4, steps=30))
    grouped = _fit(toy, brn.Ensemble(members=4, steps=30, members_per_unit=3))
    for name in whole.draws:
        torch.testing.assert_close(whole.draws[name], grouped.draws[name], rtol=0, atol=1e-9)


# ---------------------------------------------------------------- same draws on a cluster
@pytest.mark.parametrize("method", [
    brn.NUTS(chains=4, chains_per_unit=2, **NUTS_FAST),
    brn.NUTS(chains=2, backend="pyro", **NUTS_FAST),
    brn.Ensemble(members=5, members_per_unit=2, steps=30, batch_size=7, anchored=True),
    brn.MeanField(steps=20, num_draws=10),
    brn.MCLMC(chains=3, chains_per_unit=2, num_samples=5, thinning=2, num_warmup=20,
              init_steps=10),
], ids=["nuts-vectorized", "nuts-pyro", "ensemble", "meanfield", "mclmc"])
def test_dask_fit_equals_local_fit(toy, client, method):
    local = _fit(toy, method)
    remote = _fit(toy, method, executor=client.get_executor())
    assert_same_posterior(local, remote)
    assert remote.num_chains == local.num_chains and remote.method is method


@pytest.mark.parametrize("method", [
    brn.NUTS(chains=3, backend="pyro", **NUTS_FAST),  # global RNG: units take turns
    brn.Ensemble(members=4, members_per_unit=1, steps=30, batch_size=5),
], ids=["nuts-pyro", "ensemble"])
def test_thread_pool_fit_equals_local_fit(toy, method):
    local = _fit(toy, method)
    with cf.ThreadPoolExecutor(3) as pool:
        assert_same_posterior(local, _fit(toy, method, executor=pool))


@pytest.mark.slow  # spawning processes that import torch and pyro takes seconds each
def test_process_pool_fit_equals_local_fit(toy):
    method = brn.NUTS(chains=4, chains_per_unit=2, **NUTS_FAST)
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(2, mp_context=context) as pool:
        assert_same_posterior(_fit(toy, method), _fit(toy, method, executor=pool))


def test_one_unit_on_an_executor_warns(toy):
    with cf.ThreadPoolExecutor(1) as pool, pytest.warns(UserWarning, match="chains_per_unit"):
        _fit(toy, brn.NUTS(chains=2, **NUTS_FAST), executor=pool)


# ---------------------------------------------------------------- retries and failures
def test_dask_retries_a_failed_unit(toy, client, tmp_path):
    method = brn.NUTS(chains=4, chains_per_unit=2, **NUTS_FAST)
    executor = InjectingDaskExecutor(client).inject(
        "NUTS chain group 1 of 2 (chains 2-3)", tmp_path, failures=1)
    assert executor_module._is_dask_executor(executor)  # so Dask runs the retry, not our loop
    remote = _fit(toy, method, executor=executor, retries=1)
    assert _attempts(tmp_path) == 2
    assert_same_posterior(_fit(toy, method), remote)


def test_dask_unit_failing_every_attempt_fails_the_fit(toy, client, tmp_path):
    method = brn.Ensemble(members=4, members_per_unit=2, steps=10)
    executor = InjectingDaskExecutor(client).inject(
        "Ensemble member group 1 of 2 (members 2-3)", tmp_path, failures=100)
    with pytest.raises(UnitFailedError, match=r"^Ensemble member group 1 of 2 \(members 2-3\) "
                       r"failed after 3 attempts: RuntimeError: injected failure") as info:
        _fit(toy, method, executor=executor, retries=2)
    assert info.value.unit == "Ensemble member group 1 of 2 (members 2-3)"
    assert info.value.attempts == 3 == _attempts(tmp_path)


def test_thread_pool_retries_then_fails(toy, tmp_path):
    method = brn.NUTS(chains=2, chains_per_unit=1, **NUTS_FAST)
    target = "NUTS chain group 0 of 2 (chain 0)"
    retried, failed = tmp_path / "retried", tmp_path / "failed"
    retried.mkdir(), failed.mkdir()
    with InjectingThreadPool(2).inject(target, retried, failures=1) as pool:
        assert_same_posterior(_fit(toy, method), _fit(toy, method, executor=pool))
    assert _attempts(retried) == 2
    with InjectingThreadPool(2).inject(target, failed, failures=1) as pool, \
            pytest.raises(UnitFailedError, match=r"\(chain 0\) failed after 1 attempt: "):
        _fit(toy, method, executor=pool, retries=0)
    assert _attempts(failed) == 1


# ---------------------------------------------------------------- UCI benchmark on Dask
def _add_to_path(folder: str) -> None:
    """Runs on a worker: make ``folder`` importable there."""
    if folder not in sys.path:
        sys.path.insert(0, folder)


@pytest.fixture(scope="module")
def bench(client):
    # Run as a script, the benchmark's functions travel to Dask workers by value; imported, by
    # reference, so the workers import it as module ``uci`` too: the worker processes of a new
    # LocalCluster inherit sys.path, the already running test cluster is told.
    folder = str(REPO / "benchmarks")
    client.run(_add_to_path, folder)
    previous = sys.modules.pop("uci", None)
    sys.path.insert(0, folder)
    try:
        module = importlib.import_module("uci")
        assert Path(module.__file__) == REPO / "benchmarks" / "uci.py"
        yield module
    finally:
        sys.path.remove(folder)
        sys.modules.pop("uci", None)
        if previous is not None:
            sys.modules["uci"] = previous


def _tiny_config(default_config) -> dict:
    config = default_config(quick=True, nuts_backend="vectorized")
    config["model"].update(width=3, depth=2, basis="linear")
    config["methods"] = {
        "ensemble": {"members": 2, "steps": 15, "lr": 0.05},
        "meanfield": {"steps": 15, "lr": 0.05, "num_particles": 1, "num_draws": 20},
        "lowrank": {"steps": 15, "lr": 0.05, "num_particles": 1, "num_draws": 20, "rank": 2},
        "nuts": {"num_samples": 6, "num_warmup": 6, "chains": 2, "max_tree_depth": 2,
                 "init_steps": 10, "backend": "vectorized"},
    }
    return config


# Fields that describe where and when a unit ran rather than what it computed.
RUN_FIELDS = {"fit_seconds", "predict_seconds", "cpu_seconds", "host", "threads", "finished"}


def _records(path: Path) -> dict[tuple, dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["dataset"], r["method"], r["split"]): {k: v for k, v in r.items()
                                                     if k not in RUN_FIELDS}
            for r in records}


@pytest.fixture(scope="module")
def uci_run(bench, tmp_path_factory):
    """main(argv + extra) on a tiny synthetic data set, and the records of a local run."""
    from test_uci_benchmark import write_dataset

    root = tmp_path_factory.mktemp("uci")
    data_root = write_dataset(root / "data", rows=30, splits=2)
    base = ["--data-root", str(data_root), "--datasets", "toy", "--methods", "ensemble", "nuts",
            "--splits", "1", "--no-progress"]
    default_config = bench.default_config

    def run(out: Path, *extra: str) -> int:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bench, "default_config", lambda quick=False, nuts_backend=None:
                          _tiny_config(default_config))
            return bench.main([*base, "--out", str(out), *extra])

    assert run(root / "local" / "uci.md") == 0
    return run, _records(root / "local" / "uci.jsonl")


def _check_uci_on_dask(uci_run, tmp_path, option):
    run, local = uci_run
    out = tmp_path / "uci.md"
    assert run(out, *option) == 0
    remote = _records(out.parent / "uci.jsonl")
    assert len(remote) == 2 and remote == local
    # Resumable: a rerun finds every unit done and appends nothing.
    lines = (out.parent / "uci.jsonl").read_text()
    assert run(out, *option) == 0
    assert (out.parent / "uci.jsonl").read_text() == lines


def test_uci_benchmark_on_a_running_cluster_writes_the_local_records(uci_run, client,
                                                                     tmp_path):
    _check_uci_on_dask(uci_run, tmp_path, ["--scheduler", client.scheduler.address])


@pytest.mark.slow  # starts a second cluster: its workers import torch and pyro (about a minute)
def test_uci_benchmark_on_its_own_local_cluster_writes_the_local_records(uci_run, tmp_path):
    _check_uci_on_dask(uci_run, tmp_path, ["--dask-workers", "2"])


@pytest.mark.parametrize(("extra", "message"), [
    (["--dask-workers", "0"], "--dask-workers must be a positive integer"),
    (["--dask-workers", "2", "--scheduler", "tcp://x:1"], "not both"),
    (["--dask-workers", "2", "--jobs", "2"], "does not combine"),
])
def test_uci_benchmark_rejects_bad_dask_options(bench, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        bench.main(["--out", str(tmp_path / "u.md"), *extra])
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- the example
def _run_example(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BAYESRESNET_FAST": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(REPO / "examples" / "dask_local.py"), "--out",
                           str(tmp_path / "out"), *extra], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)


def _check_example(done: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("NUTS", "ensemble"):
        assert f"{name}: same draws locally and on the cluster: True" in done.stdout
    assert (tmp_path / "out" / "dask_local.png").read_bytes().startswith(b"\x89PNG")


def test_example_runs_fast_on_the_test_cluster(client, tmp_path):
    _check_example(_run_example(tmp_path, "--scheduler", client.scheduler.address), tmp_path)


@pytest.mark.slow  # starts its own LocalCluster
def test_example_runs_fast_on_its_own_local_cluster(tmp_path):
    _check_example(_run_example(tmp_path), tmp_path)
