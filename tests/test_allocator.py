import os
import signal
import subprocess
import sys

import pytest

import bayesresnet
from bayesresnet import allocator, cli

# Frees forty 1 MiB tensors at once, again and again, as one batched gradient does with its
# hidden states, and prints the page faults per round after the first.
_WORKLOAD = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    import bayesresnet
    assert bayesresnet.tune_allocator()
def one_round():
    kept = [torch.ones(2**17, dtype=torch.float64) for _ in range(40)]
    del kept
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    one_round()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_round(mode: str) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", _WORKLOAD, mode], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.skipif(allocator._glibc_mallopt() is None, reason="the C library is not glibc")
def test_tuned_allocator_reuses_freed_tensors_instead_of_faulting_new_pages():
    bare = _faults_per_round("bare")  # torch alone
    if bare < 1000:
        pytest.skip(f"this kernel faults {bare:.0f} times per 40 MiB round (huge pages?): "
                    "nothing for the tuning to remove")
    # 40 MiB of fresh 4 KiB pages is 10 240 faults; reused heap memory needs none.
    assert _faults_per_round("tuned") < bare / 10, bare


# Looks up every C symbol ctypes resolves (the "ctypes.dlsym" audit event) while importing
# bayesresnet and, with "tune" given, while calling tune_allocator.
_SYMBOLS_LOOKED_UP = """
import sys
looked_up = []
sys.addaudithook(lambda event, args: looked_up.append(args[1]) if event == "ctypes.dlsym" else None)
import bayesresnet
if sys.argv[1:] == ["tune"]:
    bayesresnet.tune_allocator()
print(" ".join(str(name) for name in looked_up))
"""


@pytest.mark.skipif(allocator._glibc_mallopt() is None, reason="the C library is not glibc")
@pytest.mark.parametrize("argv, calls_mallopt", [([], False), (["tune"], True)])
def test_importing_the_library_never_reaches_mallopt(argv, calls_mallopt):
    # Page-fault counts cannot show this: how many a plain import leaves depends on what the
    # imported libraries happen to allocate first. Whether mallopt is looked up at all does not.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", _SYMBOLS_LOOKED_UP, *argv], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert ("mallopt" in done.stdout.split()) is calls_mallopt, done.stdout


@pytest.fixture
def fake_mallopt(monkeypatch):
    """Records mallopt calls instead of making them; the environment sets no thresholds."""
    calls = []
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: lambda *a: calls.append(a) or 1)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_sets_both_thresholds_in_order(fake_mallopt):
    assert bayesresnet.tune_allocator(2**20, 2**28) is True
    # The mmap threshold first: M_MMAP_THRESHOLD is -3, M_TRIM_THRESHOLD -1 in <malloc.h>.
    assert fake_mallopt == [(-3, 2**20), (-1, 2**28)]


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"MALLOC_MMAP_THRESHOLD_": "1000000"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}])
def test_leaves_thresholds_the_environment_sets(monkeypatch, fake_mallopt, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert bayesresnet.tune_allocator() is False
    assert fake_mallopt == []


def test_other_glibc_tunables_do_not_stop_it(monkeypatch, fake_mallopt):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
    assert bayesresnet.tune_allocator() is True
    assert len(fake_mallopt) == 2


def test_without_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: None)
    assert bayesresnet.tune_allocator() is False


def test_a_refused_threshold_reports_false(monkeypatch, fake_mallopt):
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: lambda *a: 0)
    assert bayesresnet.tune_allocator() is False


@pytest.mark.parametrize("kwargs, match", [
    ({"mmap_threshold": 0}, "mmap_threshold must be a positive integer"),
    ({"trim_threshold": -1}, "trim_threshold must be a positive integer"),
    ({"trim_threshold": 1.5e8}, "trim_threshold must be a positive integer"),
    ({"mmap_threshold": True}, "mmap_threshold must be a positive integer"),
    ({"mmap_threshold": 2**26}, "at most 33554432 bytes"),
    ({"trim_threshold": 2**31}, "below 2\\*\\*31"),
])
def test_bad_thresholds_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bayesresnet.tune_allocator(**kwargs)


def test_the_command_tunes_its_own_process(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: seen.append("tuned") or True)
    monkeypatch.setattr(cli, "main", lambda argv=None: seen.append(argv) or 0)
    # console() is a process's entry point and ignores SIGINT once main returns; give the
    # test process its handler back.
    handler = signal.getsignal(signal.SIGINT)
    try:
        assert cli.console(["--help"]) == 0
    finally:
        signal.signal(signal.SIGINT, handler)
    assert seen == ["tuned", ["--help"]]
