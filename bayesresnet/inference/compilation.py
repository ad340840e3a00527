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

Each call of a compiled program first evaluates its guards, the checks that what it was traced
against still holds: some 700 on an MCLMC step, most of them on the model and the modules the
trace passed through. A run's copy closes over one model and one data set that do not change
while it runs, so :class:`TieredFunction` keeps only the guards on the function's arguments
(their types, shapes, dtypes, strides) and on torch's global state (grad mode, default device,
functorch's transforms) (:func:`argument_guards`); on torch without guard filters (before 2.7)
it keeps them all. On the demo network the step then took 0.27 ms instead of 0.31 ms
(``benchmarks/results/mclmc_step.md``).
"""

from __future__ import annotations

import inspect
import re
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["TieredFunction", "argument_guards", "compile_fresh", "fresh_copy"]

_ROOT_NAME = re.compile(r"[.\[]")


def fresh_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its own code object (same code, globals, defaults and closure), so that
    ``torch.compile`` gives it a cache of its own."""
    if not isinstance(fn, types.FunctionType):
        return fn
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


def argument_guards(fn: Callable[..., Any]) -> Callable[[Sequence[Any]], list[bool]]:
    """A ``guard_filter_fn`` for ``torch.compile`` that keeps the guards on ``fn``'s arguments
    and on torch's global state, and drops those on its globals and closure.

    Only for a function whose globals and closure cannot change between its calls, such as a
    run's :func:`fresh_copy`: a dropped guard is a change the program would not notice.
    Everything reached from an argument stays guarded, Python values included (a changed
    integer argument still recompiles).
    """
    code = fn.__code__
    count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS) \
        + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    arguments = frozenset(code.co_varnames[:count])

    def keep(entries: Sequence[Any]) -> list[bool]:
        # Global-state guards (grad mode, default device, functorch's stack, ...) have no name.
        return [entry.name == "" or _ROOT_NAME.split(entry.name, 1)[0] in arguments
                for entry in entries]

    return keep


def _filters_guards() -> bool:
    """Whether this torch accepts ``options={'guard_filter_fn': ...}`` (2.7 and later)."""
    return hasattr(torch.compiler, "skip_guard_on_globals_unsafe")


def compile_fresh(fn: Callable[..., Any], *, fullgraph: bool = False,
                  cpp_wrapper: bool = False, guard_arguments_only: bool = False
                  ) -> Callable[..., Any]:
    """``torch.compile`` of a fresh copy of ``fn`` for fixed shapes (``dynamic=False``).

    Parameters
    ----------
    fn : callable
    fullgraph : bool
        Refuse graph breaks: the first call raises instead of running part of ``fn`` eagerly.
    cpp_wrapper : bool
        Call the generated kernels from C++ (inductor's ``cpp_wrapper``), for CPU programs.
    guard_arguments_only : bool
        Check only the guards on ``fn``'s arguments and torch's global state at each call
        (:func:`argument_guards`), where this torch can filter guards: for a function whose
        globals and closure do not change while the program is in use.
    """
    copy = fresh_copy(fn)
    kwargs: dict[str, Any] = {"dynamic": False}
    if fullgraph:
        kwargs["fullgraph"] = True
    options: dict[str, Any] = {}
    if cpp_wrapper:
        options["cpp_wrapper"] = True
    if guard_arguments_only and _filters_guards() and isinstance(copy, types.FunctionType):
        options["guard_filter_fn"] = argument_guards(copy)
    if options:
        kwargs["options"] = options
    return torch.compile(copy, **kwargs)


def _on_cpu(args: tuple[Any, ...]) -> bool:
    return all(arg.device.type == "cpu" for arg in args if isinstance(arg, Tensor))


class TieredFunction:
    """Calls ``eager`` until ``compile_after`` units of cost have been spent, then a compiled
    ``compilable``.

    The compiled program is a :func:`fresh_copy` private to this object and checks only the
    guards on its arguments and on torch's global state (:func:`argument_guards`): what
    ``compilable`` closes over (a model, a data set) must not change while the object is in
    use, as holds for a sampler's run.

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
                                 cpp_wrapper=_on_cpu(args), guard_arguments_only=True)
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
