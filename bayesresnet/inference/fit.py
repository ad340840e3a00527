"""``fit``: one entry point for every inference method."""

from __future__ import annotations

import concurrent.futures
import time
import warnings
from typing import Any

import numpy as np
import torch

from ..data import Standardizer
from ..diagnostics import warn_if_failed
from ..model import BayesianResNet
from ..posterior import Posterior
from ..validation import check_inputs, check_targets, column_names
from .base import InferenceMethod, check_seed
from .ensemble import MAP, Ensemble
from .executor import plan_method, run_method, run_plan
from .laplace import Laplace
from .mclmc import MCLMC
from .nuts import NUTS
from .swag import SWAG
from .vi import LowRank, MeanField

__all__ = ["FIT_DTYPES", "METHODS", "check_dtype_device", "fit", "resolve_method"]

METHODS: dict[str, type[InferenceMethod]] = {
    "nuts": NUTS,
    "meanfield": MeanField,
    "lowrank": LowRank,
    "ensemble": Ensemble,
    "map": MAP,
    "swag": SWAG,
    "laplace": Laplace,
    "mclmc": MCLMC,
}
"""Inference method classes by the names that :func:`fit` accepts as ``method=``."""


def resolve_method(method: InferenceMethod | str) -> InferenceMethod:
    """A method object from an instance or one of the names in :data:`METHODS`."""
    if isinstance(method, InferenceMethod):
        return method
    if isinstance(method, str) and method.lower() in METHODS:
        return METHODS[method.lower()]()
    raise ValueError(f"unknown inference method {method!r}; expected one of {sorted(METHODS)} "
                     "or a method object such as bayesresnet.NUTS(...)")


FIT_DTYPES = (torch.float64, torch.float32)
"""The floating types :func:`fit` computes in (``dtype=``)."""


def check_dtype_device(dtype: object, device: object) -> tuple[torch.dtype, torch.device]:
    """Validated ``dtype=`` and ``device=`` of :func:`fit`.

    Parameters
    ----------
    dtype : torch.dtype
        ``torch.float64`` or ``torch.float32``.
    device : str or torch.device
        ``"cpu"`` or an available CUDA device (``"cuda"``, ``"cuda:0"``, ...).

    Returns
    -------
    (torch.dtype, torch.device)

    Raises
    ------
    ValueError
        For another dtype, a device string torch cannot parse, a device type other than cpu
        and cuda, or a CUDA device that does not exist on this machine.
    """
    if dtype not in FIT_DTYPES:
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda', or a torch.device, "
                         f"got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"device {device!r} is not a device name torch understands: "
                         f"{error}") from None
    if parsed.type == "cpu":
        return dtype, parsed
    if parsed.type != "cuda":
        raise ValueError(f"device must be 'cpu' or a CUDA device ('cuda', 'cuda:0', ...), "
                         f"got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but no CUDA GPU is available to "
                         "torch on this machine (torch.cuda.is_available() is False); use "
                         "device='cpu'")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"device {device!r} does not exist: this machine has {count} CUDA "
                         f"device(s), cuda:0 to cuda:{count - 1}")
    return dtype, parsed if parsed.index is not None else torch.device("cuda", 0)


def _cpu_float64(tree: Any) -> Any:
    """``tree`` (dicts, lists and tuples of tensors, arrays and scalars) with every floating
    tensor or array as float64 and every tensor on the CPU: a fit's statistics and extras in
    the form the rest of the package (prediction, diagnostics, files) gets from a float64 CPU
    fit."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(device="cpu",
                                dtype=torch.float64 if tree.is_floating_point() else None)
    if isinstance(tree, np.ndarray) and tree.dtype.kind == "f":
        return tree.astype(np.float64)
    if isinstance(tree, dict):
        return {key: _cpu_float64(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(_cpu_float64(value) for value in tree)
    return tree


def fit(model: BayesianResNet, x: Any, y: Any, method: InferenceMethod | str = "nuts", *,
        seed: int | None = None, standardize: bool = True, progress: bool = True,
        check: bool = True, executor: concurrent.futures.Executor | None = None,
        retries: int = 1, dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu") -> Posterior:
    """Approximate the posterior of ``model`` given data.

    Parameters
    ----------
    model : BayesianResNet
    x : array or tensor (N, in_dim)
        Training inputs (1-D allowed when in_dim == 1).
    y : array or tensor (N,) or (N, out_dim)
        Training targets.
    method : str or InferenceMethod
        ``"nuts"``, ``"meanfield"``, ``"lowrank"``, ``"ensemble"``, ``"map"``, ``"swag"``,
        ``"laplace"``, or a configured object such as ``NUTS(chains=8)``.
    seed : int, optional
        Seed of every random choice of the fit, an integer in [0, 2**63 - 1]
        (:data:`~bayesresnet.seeds.SEED_MAX`); drawn at random (and recorded in
        ``Posterior.seed``) when None. See Notes.
    standardize : bool
        Standardize x and y on the training data; predictions are always returned in original
        units.
    progress : bool
        Show progress bars.
    check : bool
        Run :meth:`~bayesresnet.Posterior.diagnose` after the fit and issue a
        :class:`bayesresnet.ConvergenceWarning` when a check fails.
    executor : concurrent.futures.Executor, optional
        Where the fit's independent units of work run: NUTS chain groups
        (``NUTS(chains_per_unit=...)``), ensemble member groups
        (``Ensemble(members_per_unit=...)``), or the whole fit as one unit for the other methods.
        Any executor works: a ``ProcessPoolExecutor``, a ``ThreadPoolExecutor``, or a Dask
        cluster through ``dask.distributed.Client(...).get_executor()``. None runs the same
        units here, one after another; the draws are the same either way (see
        :mod:`bayesresnet.inference.executor`).
    retries : int
        With an executor: further attempts of a unit that raised (Dask's own retries for a Dask
        executor). A unit failing every attempt raises
        :class:`~bayesresnet.inference.executor.UnitFailedError` naming it; no Posterior is
        built from part of the units.
    dtype : torch.dtype
        Floating type the fit computes in: ``torch.float64`` (default) or ``torch.float32``
        (faster per gradient on large data, with float32 rounding; see "Precision and
        devices" in :doc:`/getting_started`). The model, the data and every sampler's or
        optimizer's state use it (Laplace keeps its curvature in float64); the posterior's
        draws are stored as float64 either way.
    device : str or torch.device
        Where the fit computes: ``"cpu"`` (default) or a CUDA device such as ``"cuda"`` or
        ``"cuda:1"``. The draws come back to the CPU (``Posterior.draws``), so prediction,
        export and saving run on the CPU. A device that does not exist here (``"cuda"``
        without a GPU) raises a ValueError before any work.

    Returns
    -------
    Posterior

    Raises
    ------
    ValueError
        For invalid data, settings (including settings of ``method`` changed after it was
        constructed), a seed outside [0, 2**63 - 1], a dtype other than float32 or float64,
        or a device that is not available; before any work is done.
    UnitFailedError
        With an executor, when a unit failed ``1 + retries`` times.

    Notes
    -----
    **Seeds.** A fit's draws depend only on the data, the model, the method's settings and
    ``seed``: the same seed gives the same draws, bit for bit, whether the fit runs alone, on an
    executor, or at the same time as other fits. Every random stream of the fit is derived from
    ``seed`` (private ``torch.Generator`` streams, ``numpy.random.SeedSequence``), and so are
    the default streams of :meth:`~bayesresnet.Posterior.predict` (``seed + 1`` for the noise
    of ``Prediction.samples``) and :meth:`~bayesresnet.Posterior.flat_draws`, which accept
    their own seeds in the same range.

    **Thread safety.** Fits may run concurrently in threads of one process (e.g. on a
    ``ThreadPoolExecutor``) and give the same draws as when run one after another. The
    ensembles, MAP, the ``'flat'`` VI backend and the ``'vectorized'`` NUTS backend touch no
    process-global state and run in parallel. Pyro's param store and handler stack and the
    global torch RNG are process globals, so the parts that use them, namely Pyro's SVI (VI
    with ``backend='pyro'``), Pyro's MCMC (NUTS with ``backend='pyro'``) and prior draws
    (``NUTS(init='prior')``, ``Ensemble(anchored=True)``), run one at a time, each under one
    process-wide lock (:func:`~bayesresnet.inference.executor.global_state_lock`) with a
    private, empty Pyro param store, and with the global torch RNG seeded for the fit and
    restored afterwards. A method class of another package (not
    :attr:`~bayesresnet.inference.base.InferenceMethod.thread_safe`) runs entirely under that
    lock. The caller's Pyro param store and torch RNG state are left as they were, and no fit
    changes torch's default dtype or number of threads. Pyro or torch-RNG code of your own
    that runs in another thread *during* such a locked part is not covered by the lock: it can
    disturb that part's draws and see its Pyro handlers.
    """
    if not isinstance(model, BayesianResNet):
        raise ValueError(f"model must be a BayesianResNet, got {type(model).__name__}")
    method = resolve_method(method)
    method.check_settings()  # settings may have changed since construction
    method.check_runnable()
    method.validate(model)
    if executor is not None and not isinstance(executor, concurrent.futures.Executor):
        raise ValueError("executor must be a concurrent.futures.Executor (e.g. a "
                         "ProcessPoolExecutor or dask.distributed.Client(...).get_executor()), "
                         f"got {type(executor).__name__}")
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    dtype, device = check_dtype_device(dtype, device)
    x_t = check_inputs(x, model.in_dim)
    y_t = check_targets(y, x_t.shape[0], model.out_dim)
    seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else \
        check_seed(seed)
    if standardize:
        x_scaler, y_scaler = Standardizer().fit(x_t), Standardizer().fit(y_t)
    else:
        x_scaler = Standardizer.identity(model.in_dim)
        y_scaler = Standardizer.identity(model.out_dim)
    x_scaled, y_scaled = x_scaler.transform(x_t), y_scaler.transform(y_t)
    # The method computes in the data's dtype and on its device (model, samplers' state).
    x_scaled, y_scaled = (t.to(dtype=dtype, device=device) for t in (x_scaled, y_scaled))

    # No global state is swapped here: the parts of a method that use Pyro's param store and
    # handler stack or the global torch RNG hold the global state lock with a private store
    # themselves (see Notes), so fits in other threads never see or undo each other's state.
    start = time.perf_counter()
    if executor is None:
        result = run_method(method, model, x_scaled, y_scaled, seed, progress)
    else:
        plan = plan_method(method, model, x_scaled, y_scaled, seed)
        if len(plan.units) == 1 and plan.hint:
            warnings.warn(plan.hint, UserWarning, stacklevel=2)
        result = run_plan(plan, executor, retries=int(retries), progress=progress)
    seconds = time.perf_counter() - start
    stats, extra = result.stats, result.extra
    if (dtype, device) != (torch.float64, torch.device("cpu")):  # as a float64 CPU fit's
        stats, extra = _cpu_float64(stats), _cpu_float64(extra)
    posterior = Posterior(model=model, draws=result.draws, stats=stats, method=method,
                          x_scaler=x_scaler, y_scaler=y_scaler, seed=seed, fit_seconds=seconds,
                          x_train=x_t.numpy(), y_train=y_t.numpy(), extra=extra,
                          feature_names=column_names(x), target_names=column_names(y),
                          fit_dtype=str(dtype).removeprefix("torch."), fit_device=str(device))
    if check:
        warn_if_failed(posterior.diagnose(), stacklevel=3)
    return posterior
