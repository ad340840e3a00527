"""Units of work and the executors that run them.

A fit that splits (NUTS chains, ensemble members) is *planned* as a list of independent
:class:`WorkUnit` objects and a ``combine`` step that assembles their results into one
:class:`~bayesresnet.inference.base.MethodResult`. The same plan runs in this process, one unit
after another (``executor=None``), or on any ``concurrent.futures.Executor``: a thread or
process pool, or a Dask cluster through ``dask.distributed.Client(...).get_executor()``.

The plan depends only on the method's settings and the fit's seed, never on where the units run:
each unit's random streams are derived from the fit's seed and the unit's index. So a local fit
and a distributed fit with the same seed give the same draws, bit for bit.

Failures
--------
With an executor, a unit that raises is run again up to ``retries`` times: by Dask itself for a
Dask executor (``Client.submit(..., retries=...)``; Dask also reschedules the tasks of a worker
that died), by a bounded loop here for every other executor. A unit that still fails raises
:class:`UnitFailedError`, naming the unit, and the remaining units are cancelled; a result is
never assembled from part of the units. Run locally, a unit's own exception propagates, with a
note naming the unit.

Thread safety
-------------
Pyro's param store and handler stack and the global torch RNG are process globals. Code that
uses them (Pyro's SVI in the ``'pyro'`` VI backend, Pyro's MCMC in the ``'pyro'`` NUTS backend,
prior draws through ``BayesianResNet.sample_prior``) holds :func:`global_state_lock`, with a
private param store where Pyro is involved (:func:`private_pyro_state`), so on a threaded
executor (a thread pool, a Dask worker with several threads) such parts run one at a time and
stay reproducible. Everything else (the vectorized NUTS backend, the flat VI backend, ensembles,
MAP) draws from private ``torch.Generator`` streams and runs concurrently. A method whose class
is not :attr:`~bayesresnet.inference.base.InferenceMethod.thread_safe` runs entirely under the
lock (:func:`run_method`).
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch

from ..globalstate import global_state_lock
from .base import make_progress

if TYPE_CHECKING:
    from ..model import BayesianResNet
    from .base import InferenceMethod, MethodResult

__all__ = ["Plan", "UnitFailedError", "WorkUnit", "derived_seed", "global_state_lock",
           "plan_method", "private_pyro_state", "run_method", "run_plan", "run_units", "span",
           "split_range"]

@contextmanager
def private_pyro_state() -> Iterator[None]:
    """Hold :func:`global_state_lock` and give Pyro an empty param store until the block ends.

    The caller's param store is restored on exit, whatever the block did; since every user of
    the store in this library holds the lock, two fits never see each other's parameters.
    """
    with global_state_lock(), pyro.get_param_store().scope():
        yield


def run_method(method: InferenceMethod, model: BayesianResNet, x: torch.Tensor,
               y: torch.Tensor, seed: int, progress: bool) -> MethodResult:
    """``method.run(...)``, isolated from other fits in this process.

    A :attr:`~bayesresnet.inference.base.InferenceMethod.thread_safe` method guards its own
    use of global state and runs as it is; any other method runs under
    :func:`private_pyro_state`, one at a time.
    """
    guard = nullcontext() if getattr(method, "thread_safe", False) else private_pyro_state()
    with guard:
        return method.run(model, x, y, seed, progress)


def derived_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed that depends only on ``seed`` and ``keys`` (independent streams).

    Parameters
    ----------
    seed : int
        The fit's seed.
    *keys : int
        Stream identifiers, e.g. a stream constant and a unit index.
    """
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])


def split_range(total: int, per_unit: int) -> list[range]:
    """Consecutive index groups of at most ``per_unit`` indices covering ``range(total)``.

    >>> split_range(5, 2)
    [range(0, 2), range(2, 4), range(4, 5)]
    """
    if total < 1 or per_unit < 1:
        raise ValueError(f"split_range needs positive sizes, got total={total}, "
                         f"per_unit={per_unit}")
    return [range(start, min(start + per_unit, total)) for start in range(0, total, per_unit)]


def span(indices: range, noun: str) -> str:
    """``'chains 4-5'`` or ``'chain 4'`` for a range of indices."""
    if len(indices) == 1:
        return f"{noun} {indices[0]}"
    return f"{noun}s {indices[0]}-{indices[-1]}"


@dataclass(frozen=True)
class WorkUnit:
    """One independent piece of a fit, runnable anywhere.

    Calling the unit runs ``function(*args, progress=progress)``. Everything in it is picklable
    (a module-level function, the model, tensors, settings), so it can be sent to another
    process or machine.

    Attributes
    ----------
    label : str
        What the unit is, for progress and error messages, e.g.
        ``'NUTS chain group 2 of 4 (chains 4-5)'`` (groups, chains and members are numbered
        from 0).
    function : callable
        A picklable function taking ``*args`` and a keyword ``progress``.
    args : tuple
        Its positional arguments.
    """

    label: str
    function: Callable[..., Any]
    args: tuple = ()

    def __call__(self, progress: bool = False) -> Any:
        return self.function(*self.args, progress=progress)


@dataclass(frozen=True)
class Plan:
    """The units of a fit and how to assemble their results.

    Attributes
    ----------
    units : tuple of WorkUnit
        Independent units; the results are passed to ``combine`` in this order.
    combine : callable(list of unit results) -> MethodResult
        Runs in the calling process.
    desc : str
        Label of the progress bar over units.
    hint : str
        Said (as a warning) when a plan of a single unit is given to an executor, e.g. how to
        split the work; empty when there is nothing to say.
    """

    units: tuple[WorkUnit, ...]
    combine: Callable[[list[Any]], MethodResult]
    desc: str = "units"
    hint: str = ""


class UnitFailedError(RuntimeError):
    """A unit of work failed on every attempt; raised instead of returning a partial result.

    Attributes
    ----------
    unit : str
        The unit's label.
    attempts : int
        How many times it was run.
    """

    def __init__(self, unit: str, attempts: int, cause: BaseException) -> None:
        self.unit = unit
        self.attempts = attempts
        times = "attempt" if attempts == 1 else "attempts"
        super().__init__(f"{unit} failed after {attempts} {times}: "
                         f"{type(cause).__name__}: {cause}")


def _run_whole_method(method: InferenceMethod, model: BayesianResNet, x: torch.Tensor,
                      y: torch.Tensor, seed: int, *, progress: bool) -> MethodResult:
    return run_method(method, model, x, y, seed, progress)


def _first(results: list[Any]) -> Any:
    return results[0]


def plan_method(method: InferenceMethod, model: BayesianResNet, x: torch.Tensor,
                y: torch.Tensor, seed: int) -> Plan:
    """The plan of a fit: the method's own ``plan`` where it has one, else one unit.

    Methods that split (``NUTS``, ``Ensemble``, ``MAP``) define
    ``plan(model, x, y, seed) -> Plan``; any other method becomes a single unit that calls its
    ``run``.

    Parameters
    ----------
    method : InferenceMethod
    model : BayesianResNet
    x, y : tensors (N, in_dim), (N, out_dim)
        Standardized training data.
    seed : int
        The fit's seed.
    """
    planner = getattr(method, "plan", None)
    if callable(planner):
        return planner(model, x, y, seed)
    unit = WorkUnit(f"{type(method).__name__} fit", _run_whole_method,
                    (method, model, x, y, int(seed)))
    return Plan((unit,), _first, desc=method.name)


def _is_dask_executor(executor: cf.Executor) -> bool:
    # Only a Dask executor can exist if distributed was imported; never import it here.
    module = sys.modules.get("distributed.cfexecutor")
    return module is not None and isinstance(executor, module.ClientExecutor)


def _run_local(units: Sequence[WorkUnit], progress: bool) -> list[Any]:
    results = []
    for unit in units:
        try:
            results.append(unit(progress=progress))
        except Exception as err:
            if len(units) > 1:
                err.add_note(f"(in {unit.label})")
            raise
    return results


def _run_on_executor(units: Sequence[WorkUnit], executor: cf.Executor, retries: int,
                     progress: bool, desc: str) -> list[Any]:
    dask = _is_dask_executor(executor)
    token = uuid.uuid4().hex[:12]
    attempts = [0] * len(units)
    results: list[Any] = [None] * len(units)
    pending: dict[cf.Future, int] = {}

    def submit(index: int) -> None:
        unit = units[index]
        try:
            if dask:
                # Dask retries the task itself (on any worker); pure=False: never deduplicate.
                attempts[index] += 1 + retries
                future = executor.submit(unit, retries=retries, pure=False,
                                         key=f"bayesresnet-unit-{token}-{index}")
            else:
                attempts[index] += 1
                future = executor.submit(unit)
        except Exception as err:  # a shut-down or broken pool
            raise UnitFailedError(unit.label, attempts[index], err) from err
        pending[future] = index

    try:
        for index in range(len(units)):
            submit(index)
        with make_progress(progress, len(units), desc) as bar:
            while pending:
                done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        results[index] = future.result()
                    except Exception as err:
                        if attempts[index] <= retries:
                            submit(index)
                            continue
                        raise UnitFailedError(units[index].label, attempts[index],
                                              err) from err
                    bar.update(1)
    finally:
        for future in pending:
            future.cancel()
    return results


def run_units(units: Sequence[WorkUnit], executor: cf.Executor | None = None, *,
              retries: int = 1, progress: bool = False, desc: str = "units") -> list[Any]:
    """Run units here or on an executor and return their results in the units' order.

    Parameters
    ----------
    units : sequence of WorkUnit
    executor : concurrent.futures.Executor, optional
        None: run the units in this process, one after another, each with its own progress bar.
        Otherwise every unit is submitted to it at once (``executor.submit(unit)``), and a
        progress bar counts completed units. A Dask ``ClientExecutor`` gets
        ``retries``, ``pure=False`` and a unique ``key`` as submit options.
    retries : int
        Further attempts of a unit that raised, executor runs only (local runs do not retry).
    progress : bool
        Show progress.
    desc : str
        Label of the progress bar over units.

    Returns
    -------
    list
        One result per unit.

    Raises
    ------
    UnitFailedError
        A unit failed ``1 + retries`` times (executor runs); the other units are cancelled.
    """
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    if executor is None:
        return _run_local(units, progress)
    if not isinstance(executor, cf.Executor):
        raise ValueError("executor must be a concurrent.futures.Executor (e.g. a "
                         "ProcessPoolExecutor or dask.distributed.Client(...).get_executor()), "
                         f"got {type(executor).__name__}")
    return _run_on_executor(units, executor, int(retries), progress, desc)


def run_plan(plan: Plan, executor: cf.Executor | None = None, *, retries: int = 1,
             progress: bool = False) -> MethodResult:
    """Run a plan's units (see :func:`run_units`) and combine their results."""
    return plan.combine(run_units(plan.units, executor, retries=retries, progress=progress,
                                  desc=plan.desc))
