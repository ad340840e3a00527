"""Guard filtering of a run's compiled copy: the arguments and torch's global state stay
guarded, what the function closes over does not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bayesresnet.inference import compilation

filters_guards = pytest.mark.skipif(
    not hasattr(torch.compiler, "skip_guard_on_globals_unsafe"),
    reason="this torch has no guard filters (torch < 2.7)")


def _entry(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name)


def test_argument_guards_keep_the_arguments_and_global_state_only():
    def step(state, params, *extra, scale=1.0, **options):
        return state

    keep = compilation.argument_guards(step)
    names = ["state", "state.grad", "params.step_size", "extra[0]", "scale", "options['a']",
             "", "grad.__closure__[0].cell_contents", "G['model']", "stateful",
             "__import__('torch')"]
    assert keep([_entry(name) for name in names]) == [
        True, True, True, True, True, True, True, False, False, False, False]


@filters_guards
def test_a_filtered_program_still_follows_its_arguments():
    def make():
        offset = torch.tensor(0.5, dtype=torch.float64)

        def fn(z: torch.Tensor, power: int) -> torch.Tensor:
            return (z + offset).pow(power).sum(-1)
        return fn

    fn = make()
    compiled = compilation.compile_fresh(fn, guard_arguments_only=True)
    z = torch.linspace(0, 1, 6, dtype=torch.float64).reshape(2, 3)
    for args in [(z, 2), (z, 3), (z.reshape(3, 2), 2), (z.float(), 2), (z[:, :2], 3)]:
        torch.testing.assert_close(compiled(*args), fn(*args), rtol=1e-6, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(compiled(z, 2), fn(z, 2), rtol=1e-12, atol=0)
    w = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(compiled(w, 2).sum(), w)
    torch.testing.assert_close(grad, 2 * (z + 0.5), rtol=1e-12, atol=0)


@filters_guards
def test_a_filtered_program_does_not_check_its_closure():
    # What the filter gives up, and why it is kept to a run's private copy: a change to a value
    # the function closes over goes unseen, where the unfiltered program recompiles.
    settings = {"scale": 2.0}

    def fn(z: torch.Tensor) -> torch.Tensor:
        return settings["scale"] * z

    z = torch.ones(3, dtype=torch.float64)
    filtered = compilation.compile_fresh(fn, guard_arguments_only=True)
    guarded = compilation.compile_fresh(fn)
    assert filtered(z).tolist() == guarded(z).tolist() == [2.0] * 3
    settings["scale"] = 3.0
    assert guarded(z).tolist() == [3.0] * 3
    assert filtered(z).tolist() == [2.0] * 3


def test_a_tiered_function_compiles_with_argument_guards(monkeypatch):
    seen = []

    def fake_compile(fn, dynamic, **kwargs):
        seen.append(kwargs.get("options", {}))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    tiered = compilation.TieredFunction(torch.sin, lambda z: torch.sin(z), 0)
    tiered(torch.zeros(2, dtype=torch.float64))
    assert len(seen) == 1
    assert ("guard_filter_fn" in seen[0]) == hasattr(torch.compiler,
                                                     "skip_guard_on_globals_unsafe")
