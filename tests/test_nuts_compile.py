"""The vectorized NUTS backend's switch from an eager to a ``torch.compile``-d log density."""

from __future__ import annotations

import warnings

import pytest
import torch

import bayesresnet as brn
from bayesresnet.inference import nuts as nuts_module
from bayesresnet.inference.nuts import TieredLogDensity


def _gaussian(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z * z).sum(-1)


def test_never_compiles_with_none_and_counts_calls(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("torch.compile must not be called")

    monkeypatch.setattr(torch, "compile", fail)
    density = TieredLogDensity(_gaussian, None)
    z = torch.randn(3, 4, dtype=torch.float64)
    for _ in range(5):
        assert torch.equal(density(z), _gaussian(z))
    assert density.calls == 5 and density.compiled_at is None


def test_switches_after_the_given_number_of_calls(monkeypatch):
    compiled_calls = []

    def fake_compile(fn, dynamic, **options):
        assert dynamic is False

        def compiled(z):
            compiled_calls.append(z)
            return fn(z)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    density = TieredLogDensity(_gaussian, 3)
    z = torch.randn(2, 5, dtype=torch.float64)
    for _ in range(6):
        density(z)
    assert density.compiled_at == 4 and len(compiled_calls) == 3


def test_a_failing_compiler_warns_once_and_stays_eager(monkeypatch):
    def broken_compile(fn, dynamic, **options):
        def compiled(z):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    density = TieredLogDensity(_gaussian, 0)
    z = torch.randn(2, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        first = density(z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = density(z)
    assert torch.equal(first, _gaussian(z)) and torch.equal(second, first)
    assert density.compiled_at is None


def test_model_errors_are_not_mistaken_for_compiler_errors():
    def broken(z):
        raise ValueError("flat parameters must have last dimension 7")

    density = TieredLogDensity(broken, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "compile failed" warning either
        with pytest.raises(ValueError, match="last dimension 7"):
            density(torch.zeros(2, 3))


def test_compiled_run_matches_eager_run_on_a_resnet(monkeypatch):
    # The real compiler on the network's log density: a short run that switches after its
    # first 30 gradients gives the eager run's draws up to rounding (compiled kernels sum in a
    # different order; over 8 iterations the chains have no time to drift apart).
    switches = []
    original = TieredLogDensity.__call__

    def recording_call(self, z):
        value = original(self, z)
        if self.compiled_at is not None and not switches:
            switches.append(self.compiled_at)
        return value

    monkeypatch.setattr(TieredLogDensity, "__call__", recording_call)
    x, y = brn.data.cubic(12, seed=0)
    net = brn.ResNet(in_dim=1, out_dim=1, width=3, depth=2, basis="linear")
    model = brn.BayesianResNet(net)
    settings = dict(num_samples=4, num_warmup=4, chains=2, max_tree_depth=3, init_steps=20)
    eager = brn.fit(model, x, y, method=brn.NUTS(**settings, compile_after=None), seed=0,
                    progress=False, check=False)
    assert not switches
    compiled = brn.fit(model, x, y, method=brn.NUTS(**settings, compile_after=30), seed=0,
                       progress=False, check=False)
    assert switches == [31]
    for name, value in eager.draws.items():
        torch.testing.assert_close(compiled.draws[name], value, rtol=1e-8, atol=1e-10)


def test_compile_after_is_validated():
    for bad in (-1, 1.5, True, "auto"):
        with pytest.raises(ValueError, match="compile_after"):
            brn.NUTS(compile_after=bad)
    assert nuts_module.NUTS(compile_after=0).compile_after == 0
