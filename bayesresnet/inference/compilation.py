"""Switching a sampler's hot function from eager PyTorch to a ``torch.compile``-d program.

A sampler calls one small function (a log density and its gradient, or a whole integration
step) hundreds of thousands of times. Eagerly, each call dispatches every tensor operation
from Python; on the small networks of this library that overhead, not arithmetic, sets the
speed. :class:`TieredFunction` runs the eager function for a set number of calls, then
compiles and runs the compiled program; a compiler that fails (no C++ toolchain, an operation
it cannot trace) produces one warning and the run goes on eagerly.

Each run compiles its own copy of the function (:func:`fresh_copy`). ``torch.compile`` keeps
its programs in a cache attached to the Python code object of the function it compiles, and
accepts only ``torch._dynamo.config.recompile_limit`` (8) programs per code object: a
sampler's step is a closure over the run's model and data, so the ninth fit in one process
would otherwise find the cache full and run eagerly, silently. A copy has a code object of its
own, whose cache lives and dies with the run.

On the CPU the program is built with inductor's C++ wrapper (``options={'cpp_wrapper':
True}``, set per call, not in torch's global configuration), which calls the generated kernels
from C++ instead of Python: measured on the demo network (252 parameters, 4 chains, one
thread, float64), a whole MCLMC step took 0.31 ms with it and 0.47 ms without.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["TieredFunction", "compile_fresh", "fresh_copy"]


def fresh_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its own code object (same code, globals, defaults and closure), so that
    ``torch.compile`` gives it a cache of its own."""
    if not isinstance(fn, types.FunctionType):
        return fn
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


def compile_fresh(fn: Callable[..., Any], *, fullgraph: bool = False,
                  cpp_wrapper: bool = False) -> Callable[..., Any]:
    """``torch.compile`` of a fresh copy of ``fn`` for fixed shapes (``dynamic=False``).

    Parameters
    ----------
    fn : callable
    fullgraph : bool
        Refuse graph breaks: the first call raises instead of running part of ``fn`` eagerly.
    cpp_wrapper : bool
        Call the generated kernels from C++ (inductor's ``cpp_wrapper``), for CPU programs.
    """
    kwargs: dict[str, Any] = {"dynamic": False}
    if fullgraph:
        kwargs["fullgraph"] = True
    if cpp_wrapper:
        kwargs["options"] = {"cpp_wrapper": True}
    return torch.compile(fresh_copy(fn), **kwargs)


def _on_cpu(args: tuple[Any, ...]) -> bool:
    return all(arg.device.type == "cpu" for arg in args if isinstance(arg, Tensor))


class TieredFunction:
    """Calls ``eager`` until ``compile_after`` units of cost have been spent, then a compiled
    ``compilable``.

    Parameters
    ----------
    eager : callable
        What runs before the switch.
    compilable : callable
        The same computation in a form ``torch.compile`` can trace whole (it may differ from
        ``eager``, e.g. by taking gradients with ``torch.func`` instead of autograd).
    compile_after : int or None
        Cost spent eagerly before the switch; 0: compiled from the first call; None: never.
    cost_per_call : int
        What one call costs in the unit of ``compile_after`` (e.g. gradient evaluations).
    owner, what : str
        The sampler's and the function's names, for the warning when compiling fails.
    fullgraph : bool
        Compile ``compilable`` as one graph or not at all.

    Attributes
    ----------
    calls : int
        Calls so far.
    compiled_at : int or None
        The call that first ran the compiled program, None while eager.
    """

    def __init__(self, eager: Callable[..., Any], compilable: Callable[..., Any],
                 compile_after: int | None, *, cost_per_call: int = 1, owner: str = "NUTS",
                 what: str = "log density", fullgraph: bool = False) -> None:
        self.eager = eager
        self.compilable = compilable
        self.compile_after = compile_after
        self.cost_per_call = cost_per_call
        self.owner = owner
        self.what = what
        self.fullgraph = fullgraph
        self.calls = 0
        self.compiled_at: int | None = None
        self._compiled: Callable[..., Any] | None = None
        self._failed = False

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self._compiled is not None:
            return self._compiled(*args)
        if (self.compile_after is None or self._failed
                or (self.calls - 1) * self.cost_per_call < self.compile_after):
            return self.eager(*args)
        compiled = compile_fresh(self.compilable, fullgraph=self.fullgraph,
                                 cpp_wrapper=_on_cpu(args))
        try:
            value = compiled(*args)  # compiles here; errors of the compiler surface on this call
        except Exception as err:
            value = self.eager(*args)  # an error of the function itself raises again here, as is
            self._failed = True
            warnings.warn(f"{self.owner}: torch.compile of the {self.what} failed "
                          f"({type(err).__name__}: {err}); continuing without it",
                          RuntimeWarning, stacklevel=2)
            return value
        self._compiled, self.compiled_at = compiled, self.calls
        return value
