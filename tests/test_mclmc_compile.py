"""MCLMC's compiled step: the same draws as the eager step, a switch at the set gradient count,
an eager fallback when the compiler fails, and a fresh compiler cache for every run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import bayesresnet as brn
from bayesresnet.inference import compilation, mclmc_kernel
from bayesresnet.inference.mclmc_kernel import Parameters


def _gaussian(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z * z).sum(-1)


def _state_and_params(chains: int = 3, dim: int = 5):
    generator = torch.Generator().manual_seed(0)
    state = mclmc_kernel.init(_gaussian, torch.randn(chains, dim, generator=generator,
                                                     dtype=torch.float64), generator)
    ones = torch.ones(chains, dtype=torch.float64)
    return state, Parameters(0.3 * ones, ones, torch.ones(chains, dim, dtype=torch.float64))


def test_stepper_switches_after_compile_after_gradients(monkeypatch):
    compiled_calls = []

    def fake_compile(fn, dynamic, **options):
        assert dynamic is False and options.get("fullgraph") is True

        def compiled(*args):
            compiled_calls.append(args)
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    state, params = _state_and_params()
    # minimal_norm costs 2 gradients a step: after 4 gradients, step 3 is the first compiled.
    stepper = mclmc_kernel.Stepper(_gaussian, torch.Generator().manual_seed(1),
                                   compile_after=4)
    for _ in range(5):
        state, _ = stepper(state, params)
    assert stepper.advance.compiled_at == 3 and len(compiled_calls) == 3


def test_stepper_gives_the_eager_step_s_draws():
    # The stepper draws its noise from the generator exactly as mclmc_kernel.step does.
    state, params = _state_and_params()
    first, second = state, state
    stepper = mclmc_kernel.Stepper(_gaussian, torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(2)
    for _ in range(4):
        first, _ = stepper(first, params)
        second, _ = mclmc_kernel.step(_gaussian, second, params, generator)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_a_failing_compiler_warns_once_and_the_run_goes_on_eagerly(monkeypatch):
    def broken_compile(fn, dynamic, **options):
        def compiled(*args):
            raise RuntimeError("no C++ compiler")
        return compiled

    state, params = _state_and_params()
    eager = mclmc_kernel.Stepper(_gaussian, torch.Generator().manual_seed(3))
    monkeypatch.setattr(torch, "compile", broken_compile)
    failing = mclmc_kernel.Stepper(_gaussian, torch.Generator().manual_seed(3), compile_after=0)
    with pytest.warns(RuntimeWarning, match="torch.compile of the step failed.*no C.. compiler"):
        first, _ = failing(state, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, _ = failing(first, params)
    second, _ = eager(state, params)
    second, _ = eager(second, params)
    assert torch.equal(first.position, second.position)
    assert failing.advance.compiled_at is None


def test_every_run_compiles_into_its_own_cache():
    # torch.compile caches programs on the code object and, past its recompile limit (8),
    # refuses to compile that code again (with fullgraph, an error). Closures over different
    # constants need one program each, so twelve runs need twelve caches.
    def make(factor: float):
        def scaled(z: torch.Tensor) -> torch.Tensor:
            return (factor * z).sin().sum(-1)
        return scaled

    z = torch.linspace(0, 1, 6, dtype=torch.float64).reshape(2, 3)
    for k in range(12):
        fn = make(1.0 + k)
        compiled = compilation.compile_fresh(fn, fullgraph=True)
        torch.testing.assert_close(compiled(z), fn(z), rtol=1e-12, atol=0)
    copy = compilation.fresh_copy(fn)
    assert copy.__code__ is not fn.__code__ and copy(z).equal(fn(z))


def test_a_compiled_mclmc_fit_matches_the_eager_fit_on_a_resnet():
    # The real compiler on the network: the whole step compiled from the first step gives the
    # eager run's draws up to rounding (the compiled kernels sum in another order; over 30
    # steps the chains have no time to drift apart).
    x, y = brn.data.cubic(12, seed=0)
    net = brn.ResNet(in_dim=1, out_dim=1, width=3, depth=2, basis="linear")
    model = brn.BayesianResNet(net)
    settings = dict(num_samples=5, thinning=2, num_warmup=20, chains=2, init_steps=20)
    eager = brn.fit(model, x, y, method=brn.MCLMC(**settings, compile_after=None), seed=0,
                    progress=False, check=False)
    compiled = brn.fit(model, x, y, method=brn.MCLMC(**settings, compile_after=0), seed=0,
                       progress=False, check=False)
    assert eager.extra["compiled_at_step"].tolist() == [-1, -1]
    assert compiled.extra["compiled_at_step"].tolist() == [1, 1]
    for name, value in eager.draws.items():
        torch.testing.assert_close(compiled.draws[name], value, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(compiled.stats["energy_change"], eager.stats["energy_change"],
                               rtol=1e-6, atol=1e-10)


def test_the_compiled_step_keeps_float32():
    generator = torch.Generator().manual_seed(5)
    position = torch.randn(3, 6, generator=generator, dtype=torch.float32)
    state = mclmc_kernel.init(_gaussian, position, generator)
    ones = torch.ones(3, dtype=torch.float32)
    params = Parameters(0.3 * ones, ones, torch.ones(3, 6, dtype=torch.float32))
    eager = mclmc_kernel.Stepper(_gaussian, torch.Generator().manual_seed(6))
    compiled = mclmc_kernel.Stepper(_gaussian, torch.Generator().manual_seed(6), compile_after=0)
    first, _ = eager(state, params)
    second, info = compiled(state, params)
    assert compiled.advance.compiled_at == 1
    assert second.position.dtype == torch.float32 and info.energy_change.dtype == torch.float32
    torch.testing.assert_close(second.position, first.position, rtol=1e-5, atol=1e-6)
