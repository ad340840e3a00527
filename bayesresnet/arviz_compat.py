"""The ArviZ calls the library makes, written once for both ArviZ lines.

ArviZ 0.x (Python 3.11 and older installs) returns ``arviz.InferenceData``; ArviZ 1.x (what a
current Python installs, with ``arviz-base`` and ``arviz-stats``) returns an ``xarray.DataTree``
and moved or renamed several functions. Everything in bayesresnet that talks to ArviZ goes
through this module, so the rest of the library sees one interface:

* :func:`import_arviz`: the lazy import, silencing only ArviZ 0.x's once-a-day refactor notice;
* :func:`to_inference_data`: named groups of ``xarray.Dataset`` -> the installed line's container;
* :func:`rhat`, :func:`ess`: per-variable diagnostics of a ``(chain, draw, ...)`` dataset;
* :func:`rhat_by_chain`, :func:`ess_by_chain`: the same for each chain on its own;
* :func:`psislw`: Pareto-smoothed log weights and the k-hat of a vector of log weights;
* :func:`loo`, :func:`compare`: PSIS-LOO with the same result fields and column names on both.

Nothing here runs at import time; ArviZ is imported on first use.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "LooResult",
    "arviz_major",
    "compare",
    "draws_dataset",
    "ess",
    "ess_by_chain",
    "import_arviz",
    "is_arviz_data",
    "loo",
    "psislw",
    "rhat",
    "rhat_by_chain",
    "to_inference_data",
]

# The first words of ArviZ 0.x's once-a-day FutureWarning about its refactor.
_REFACTOR_NOTICE = r"\s*ArviZ is undergoing a major refactor"


@functools.cache
def import_arviz() -> ModuleType:
    """``import arviz``, without ArviZ 0.x's once-a-day refactor notice.

    Only that notice is filtered, only during the import; every other warning is left alone.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_REFACTOR_NOTICE, category=FutureWarning)
        import arviz

    return arviz


def arviz_major() -> int:
    """The major version of the installed ArviZ (0 or 1)."""
    return int(str(import_arviz().__version__).split(".")[0])


def to_inference_data(groups: Mapping[str, Any]) -> Any:
    """Wrap named groups in the installed ArviZ line's container.

    Parameters
    ----------
    groups : dict group name -> xarray.Dataset
        E.g. ``posterior``, ``log_likelihood``, ``observed_data`` (ArviZ's group names).

    Returns
    -------
    arviz.InferenceData (ArviZ 0.x) or xarray.DataTree (ArviZ 1.x)
        The same groups, variables, dims and coordinates on both lines.
    """
    az = import_arviz()
    if arviz_major() == 0:
        with warnings.catch_warnings():
            # Groups of our own that ArviZ 0.x does not list (none today) would only warn.
            warnings.simplefilter("ignore", UserWarning)
            return az.InferenceData(**dict(groups))
    import xarray as xr

    return xr.DataTree.from_dict({f"/{name}": ds for name, ds in groups.items()})


def is_arviz_data(value: Any) -> bool:
    """Whether ``value`` is an ``InferenceData`` or ``DataTree`` (either line's container)."""
    import xarray as xr

    if isinstance(value, xr.DataTree):
        return True
    return type(value).__name__ == "InferenceData"


def draws_dataset(arrays: Mapping[str, Any]) -> Any:
    """An ``xarray.Dataset`` of ``(chain, draw, ...)`` arrays, the trailing dims named
    ``<name>_dim_<i>`` (as ``arviz.convert_to_dataset`` names them on both lines)."""
    import xarray as xr

    variables = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.ndim < 2:
            raise ValueError(f"{name} must have shape (chain, draw, ...), got {value.shape}")
        dims = ["chain", "draw", *(f"{name}_dim_{i}" for i in range(value.ndim - 2))]
        variables[name] = (dims, value)
    return xr.Dataset(variables)


def rhat(dataset: Any) -> Any:
    """Rank-normalized split R-hat of every variable of a ``(chain, draw, ...)`` dataset.

    Parameters
    ----------
    dataset : xarray.Dataset
        Variables with leading dims ``chain`` and ``draw``.

    Returns
    -------
    xarray.Dataset
        The same variables without ``chain`` and ``draw``.
    """
    az = import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return az.rhat(dataset, method="rank")


def ess(dataset: Any, method: str = "bulk") -> Any:
    """Effective sample size (``"bulk"`` or ``"tail"``) of every variable, as :func:`rhat`."""
    az = import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return az.ess(dataset, method=method)


# The dim that holds the chain index while each chain is diagnosed on its own.
_SOURCE_CHAIN = "source_chain"


def _chains_apart(dataset: Any, pieces: int) -> Any:
    """Each chain cut into ``pieces`` consecutive parts of equal length, the parts as ArviZ's
    ``chain`` dim and the chain index as the variable dim ``source_chain``.

    ``(chain, draw, ...)`` -> ``(chain=pieces, draw=D // pieces, source_chain, ...)``; the last
    ``D % pieces`` draws are left out (as ArviZ's split R-hat leaves out a middle draw).
    """
    import xarray as xr

    length = dataset.sizes["draw"] // pieces
    variables = {}
    for name, var in dataset.data_vars.items():
        var = var.transpose("chain", "draw", ...)
        values = np.asarray(var.values)[:, :pieces * length]
        values = values.reshape(values.shape[0], pieces, length, *values.shape[2:])
        dims = ["chain", "draw", _SOURCE_CHAIN, *var.dims[2:]]
        variables[name] = (dims, np.moveaxis(values, 0, 2))
    return xr.Dataset(variables)


def rhat_by_chain(dataset: Any) -> Any:
    """Split R-hat of each chain on its own: whether the chain mixed within the region it is in.

    Each chain's two halves are passed to ArviZ's rank-normalized split R-hat (:func:`rhat`) as
    two chains, so the statistic compares the chain's four quarters: a chain that is still
    drifting, or stuck in one place for part of the run, has quarters that disagree. Chains
    that sit in different regions (modes) do not raise it, unlike the pooled :func:`rhat`.

    Parameters
    ----------
    dataset : xarray.Dataset
        Variables with leading dims ``chain`` and ``draw`` (at least 8 draws per chain, else
        the values are NaN).

    Returns
    -------
    xarray.Dataset
        The same variables with dims ``(chain, ...)``: the R-hat of each chain. NaN where a
        chain does not vary (stuck), as ArviZ gives for constant chains.
    """
    result = rhat(_chains_apart(dataset, 2))
    return result.rename({_SOURCE_CHAIN: "chain"})


def ess_by_chain(dataset: Any, method: str = "bulk") -> Any:
    """Effective sample size (``"bulk"`` or ``"tail"``) of each chain on its own.

    Parameters
    ----------
    dataset : xarray.Dataset
        Variables with leading dims ``chain`` and ``draw``.
    method : str
        Passed to :func:`ess`.

    Returns
    -------
    xarray.Dataset
        The same variables with dims ``(chain, ...)``: ArviZ's ESS of each chain's draws as a
        run of one chain.
    """
    result = ess(_chains_apart(dataset, 1), method)
    return result.rename({_SOURCE_CHAIN: "chain"})


def psislw(log_weights: Any, reff: float = 1.0) -> tuple[np.ndarray, float]:
    """Pareto-smoothed log importance weights and the k-hat of their upper tail.

    Parameters
    ----------
    log_weights : array (S,)
        Unnormalized log importance weights.
    reff : float
        Relative efficiency of the draws (1 for independent draws).

    Returns
    -------
    smoothed : ndarray (S,)
        Smoothed log weights, normalized to log-sum-exp 0.
    khat : float
        The generalized Pareto shape estimate (``inf`` when the tail is too short to fit).
    """
    values = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    with warnings.catch_warnings():
        # ArviZ warns about k-hat > 0.7 itself; callers judge the value.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        if arviz_major() == 0:
            smoothed, khat = import_arviz().psislw(values, reff=reff)
        elif _tail_above_cutoff(values, reff) < 5:
            # ArviZ 1.x refuses such a short tail (or one of tied values, e.g. a constant
            # likelihood); 0.x returns the raw weights and k-hat inf.
            smoothed, khat = values - _logsumexp(values), math.inf
        else:
            from arviz_stats.base import array_stats

            # ArviZ 1.x takes the negated log weights (as LOO passes -log p(y_i | theta)).
            smoothed, khat = array_stats.psislw(-values, r_eff=reff)
            smoothed = smoothed - _logsumexp(smoothed)
    return np.asarray(smoothed, dtype=np.float64), float(khat)


def _tail_length(size: int, reff: float) -> int:
    """Draws in the Pareto tail that PSIS fits (Vehtari et al. 2024)."""
    return math.ceil(min(0.2 * size, 3 * math.sqrt(size / reff)))


def _tail_above_cutoff(values: np.ndarray, reff: float) -> int:
    """How many values PSIS would fit a tail to: those above the cutoff, the largest value
    outside the tail of :func:`_tail_length` (ArviZ 0.x fits none when fewer than 5)."""
    length = _tail_length(values.size, reff)
    if length < 1 or length >= values.size:
        return length
    cutoff = np.sort(values)[-length - 1]
    return int((values > cutoff).sum())


def _logsumexp(values: np.ndarray) -> float:
    top = float(values.max())
    return top + float(np.log(np.exp(values - top).sum()))


@dataclass(frozen=True)
class LooResult:
    """PSIS-LOO of one model, the same fields on both ArviZ lines.

    Attributes
    ----------
    elpd : float
        Expected log pointwise predictive density (``elpd_loo``).
    se : float
        Its standard error.
    p_loo : float
        Effective number of parameters.
    pareto_k : ndarray (N,)
        Per-observation Pareto k-hat.
    elpd_i : ndarray (N,)
        Pointwise contributions.
    """

    elpd: float
    se: float
    p_loo: float
    pareto_k: np.ndarray
    elpd_i: np.ndarray


def loo(data: Any, var_name: str | None = None) -> LooResult:
    """PSIS-LOO of an ``InferenceData`` / ``DataTree`` with a ``log_likelihood`` group."""
    az = import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = az.loo(data, pointwise=True, var_name=var_name)
    if arviz_major() == 0:
        return LooResult(float(result["elpd_loo"]), float(result["se"]), float(result["p_loo"]),
                         np.asarray(result["pareto_k"]), np.asarray(result["loo_i"]))
    return LooResult(float(result.elpd), float(result.se), float(result.p),
                     np.asarray(result.pareto_k), np.asarray(result.elpd_i))


# ArviZ 1.x column names of ``compare`` -> ArviZ 0.x's, which bayesresnet documents.
_COMPARE_COLUMNS = {"elpd": "elpd_loo", "p": "p_loo"}


def compare(datasets: Mapping[str, Any], **kwargs: Any) -> Any:
    """``arviz.compare`` with ArviZ 0.x's column names (``elpd_loo``, ``p_loo``) and sign of
    ``elpd_diff`` (best minus this model, >= 0) on both lines.

    Parameters
    ----------
    datasets : dict name -> InferenceData or DataTree
    **kwargs
        Passed to ``arviz.compare`` (``method=``, ``scale=``, ...). ``ic`` is accepted on both
        lines; ArviZ 1.x only knows LOO, so there any value other than ``"loo"`` is an error.

    Returns
    -------
    pandas.DataFrame
    """
    az = import_arviz()
    kwargs = dict(kwargs)
    if arviz_major() >= 1:
        ic = kwargs.pop("ic", "loo")
        if ic != "loo":
            raise ValueError(f"ic={ic!r}: ArviZ {az.__version__} compares models by PSIS-LOO "
                             "only")
    else:
        kwargs.setdefault("ic", "loo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        table = az.compare(dict(datasets), **kwargs)
    table = table.rename(columns=_COMPARE_COLUMNS)
    if arviz_major() >= 1 and "elpd_loo" in table:
        # ArviZ 1.x reports elpd_diff as model minus best (<= 0); 0.x as best minus model.
        table["elpd_diff"] = table["elpd_loo"].max() - table["elpd_loo"]
    return table
