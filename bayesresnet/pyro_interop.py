"""Pyro interop: a run of your own on a :class:`~bayesresnet.BayesianResNet` as a ``Posterior``.

:func:`bayesresnet.fit` standardizes x and y before the model sees them, so the model, its
posterior draws and everything Pyro does with it work in **standardized units**. Running Pyro on
the model yourself (``MCMC(NUTS(model))``, ``SVI`` with an autoguide, ``Predictive``) is fine, as
long as the data are standardized the same way:

* :func:`standardize` returns exactly the data and scalers that ``fit`` would use;
* :func:`from_pyro` wraps the draws of such a run (MCMC samples, or a fitted guide) into a
  :class:`~bayesresnet.Posterior` with those scalers, so ``predict``, ``diagnose``,
  ``to_arviz``, ``save`` and ``report`` work in original units as after ``fit``.

The trap: ``pyro.infer.Predictive(model, posterior_samples=...)`` called on raw inputs runs
without error and returns wrong values, because the draws are parameters of the standardized
model. Use :meth:`~bayesresnet.Posterior.predict`, or transform the inputs with
``posterior.x_scaler`` and map the outputs back with ``posterior.y_scaler``::

    import bayesresnet as brn
    from bayesresnet.pyro_interop import standardize
    from pyro.infer import MCMC, NUTS, Predictive

    x_scaled, y_scaled, x_scaler, y_scaler = standardize(model, x, y)
    mcmc = MCMC(NUTS(model), num_samples=500, warmup_steps=500, num_chains=4)
    mcmc.run(x_scaled, y_scaled)                             # standardized data, not x, y
    post = brn.from_pyro(model, x, y, samples=mcmc.get_samples(group_by_chain=True),
                         stats=mcmc.diagnostics())           # x, y in original units
    post.predict(x_new).mean                                 # original units

    # The same with Pyro's Predictive: standardize in, un-standardize out.
    predictive = Predictive(model, posterior_samples=mcmc.get_samples(),
                            return_sites=["_RETURN", "obs"])
    out = predictive(x_scaler.transform(torch.as_tensor(x_new, dtype=torch.float64)))
    f = y_scaler.inverse_transform(out["_RETURN"])           # (draws, N, out_dim)
    y_rep = y_scaler.inverse_transform(out["obs"])           # posterior predictive draws

The draws are recorded as coming from outside the library: :class:`PyroMCMC` (kind ``"mcmc"``)
or :class:`PyroGuide` (kind ``"variational"``). They are saved and loaded like any run, and
diagnosed by their kind; ``fit`` cannot re-run them.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule
from torch import Tensor

from .data import Standardizer
from .diagnostics import warn_if_failed
from .inference.base import InferenceMethod, MethodResult, check_positive_int, check_seed
from .inference.executor import global_state_lock
from .model import BayesianResNet
from .posterior import Posterior, draws_per_chunk
from .validation import as_float_tensor, check_inputs, check_targets, column_names

__all__ = ["PER_DRAW_STATS", "STAT_ALIASES", "PyroGuide", "PyroMCMC", "from_pyro",
           "standardize"]

PER_DRAW_STATS: dict[str, type] = {
    "diverging": bool,
    "energy": np.float64,
    "tree_depth": np.int64,
    "num_steps": np.int64,
    "step_size": np.float64,
    "accept_prob": np.float64,
    "reached_max_tree_depth": bool,
    "log_density": np.float64,
}
"""Per-draw MCMC statistics :func:`from_pyro` keeps (our names, with their dtypes).

``diverging``, ``reached_max_tree_depth`` and ``energy`` feed the divergence, tree-depth and
E-BFMI checks of :meth:`~bayesresnet.Posterior.diagnose`; all of them are exported to the
``sample_stats`` group of :meth:`~bayesresnet.Posterior.to_arviz`. ``log_density`` is the log
density of the flat unconstrained parameters (as
:meth:`~bayesresnet.model.BayesianResNet.log_density`)."""

STAT_ALIASES: dict[str, str] = {
    # ArviZ's sample_stats names
    "n_steps": "num_steps",
    "acceptance_rate": "accept_prob",
    "reached_max_treedepth": "reached_max_tree_depth",
    # NumPyro's extra fields
    "adapt_state.step_size": "step_size",
}
"""Other names :func:`from_pyro` accepts in ``stats``, mapped to ours. NumPyro's
``potential_energy`` is accepted as well and stored negated as ``log_density``."""

_GUIDE_STATS = ("elbo", "loss")


# ------------------------------------------------------------------------------ the method records
class _ExternalDraws(InferenceMethod):
    """Base of the records of draws made by Pyro outside :func:`bayesresnet.fit`."""

    thread_safe: ClassVar[bool] = True
    _made_by: ClassVar[str]

    def _refuse(self) -> ValueError:
        return ValueError(
            f"{type(self).__name__} records draws made by Pyro outside bayesresnet "
            f"({self._made_by}); fit() cannot run it. Run Pyro yourself on the standardized "
            "data from bayesresnet.pyro_interop.standardize(model, x, y), then wrap the result "
            "with bayesresnet.from_pyro(model, x, y, samples=... or guide=...)")

    def check_runnable(self) -> None:
        """Always raises: these records cannot be fitted (``fit`` fails here, before any work)."""
        raise self._refuse()

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        """Always raises: the draws were made by Pyro, see :func:`from_pyro`."""
        raise self._refuse()


@dataclass
class PyroMCMC(_ExternalDraws):
    """Record of MCMC samples drawn by Pyro (or NumPyro) and wrapped by :func:`from_pyro`.

    Diagnosed as Markov chains (R-hat and ESS of the identifiable quantities, and the sampler
    checks whose statistics were passed as ``stats``). ``fit(method=PyroMCMC())`` raises.

    Parameters
    ----------
    chains : int, optional
        Chains of the run (1 when the samples had no chain axis). Formerly ``num_chains``.
    num_samples : int, optional
        Draws per chain.
    """

    chains: int | None = None
    num_samples: int | None = None

    name: ClassVar[str] = "pyro_mcmc"
    kind: ClassVar[str] = "mcmc"
    renamed_settings: ClassVar[Mapping[str, str]] = {"num_chains": "chains"}
    _made_by: ClassVar[str] = "MCMC samples"

    def check_settings(self) -> None:
        for setting in ("chains", "num_samples"):
            if getattr(self, setting) is not None:
                check_positive_int("PyroMCMC", setting, getattr(self, setting))


@dataclass
class PyroGuide(_ExternalDraws):
    """Record of draws from a fitted Pyro guide, wrapped by :func:`from_pyro`.

    Diagnosed as a variational approximation: Pareto k-hat of the importance weights
    ``log p(theta, y) - log q(theta)`` where the guide's density is known, and the ELBO trend
    where the SVI history was passed. ``fit(method=PyroGuide())`` raises.

    Parameters
    ----------
    guide : str, optional
        Class name of the guide (e.g. ``"AutoNormal"``), or the function's name.
    num_draws : int, optional
        Draws taken from the guide. Formerly ``num_samples``.
    parallel : bool
        Whether the draws were taken in one vectorized pass.
    """

    guide: str | None = None
    num_draws: int | None = None
    parallel: bool = True

    name: ClassVar[str] = "pyro_guide"
    kind: ClassVar[str] = "variational"
    renamed_settings: ClassVar[Mapping[str, str]] = {"num_samples": "num_draws"}
    _made_by: ClassVar[str] = "draws from a fitted guide"

    def check_settings(self) -> None:
        if self.guide is not None and not isinstance(self.guide, str):
            raise ValueError(f"PyroGuide: guide must be a class name (str), got {self.guide!r}")
        if self.num_draws is not None:
            check_positive_int("PyroGuide", "num_draws", self.num_draws)
        if not isinstance(self.parallel, bool):
            raise ValueError(f"PyroGuide: parallel must be True or False, got {self.parallel!r}")


# ------------------------------------------------------------------------------ data
def _prepare(model: Any, x: Any, y: Any, standardize: Any
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Standardizer, Standardizer]:
    """Checked data in original units, the standardized data, and the scalers."""
    if not isinstance(model, BayesianResNet):
        raise ValueError(f"model must be a bayesresnet.BayesianResNet, got "
                         f"{type(model).__name__}")
    if not isinstance(standardize, (bool, np.bool_)):
        raise ValueError(f"standardize must be True or False, got {standardize!r}")
    x_t = check_inputs(x, model.in_dim)
    y_t = check_targets(y, x_t.shape[0], model.out_dim)
    if standardize:
        x_scaler, y_scaler = Standardizer().fit(x_t), Standardizer().fit(y_t)
    else:
        x_scaler = Standardizer.identity(model.in_dim)
        y_scaler = Standardizer.identity(model.out_dim)
    return x_t, y_t, x_scaler.transform(x_t), y_scaler.transform(y_t), x_scaler, y_scaler


def standardize(model: BayesianResNet, x: Any, y: Any, standardize: bool = True
                ) -> tuple[Tensor, Tensor, Standardizer, Standardizer]:
    """The data and scalers :func:`bayesresnet.fit` would use: run your own Pyro inference on
    these.

    The same checks and the same scaling as ``fit``: each column of x and y to mean 0 and
    standard deviation 1 on these data (constant columns are only centred).

    Parameters
    ----------
    model : BayesianResNet
    x : array or tensor (N, in_dim)
        Inputs in original units (1-D allowed when in_dim == 1); NumPy, torch or pandas.
    y : array or tensor (N,) or (N, out_dim)
        Targets in original units.
    standardize : bool
        As ``fit(standardize=...)``: False gives identity scalers (the data unchanged).

    Returns
    -------
    x_scaled : tensor (N, in_dim), float64
    y_scaled : tensor (N, out_dim), float64
        The arguments of the Pyro model: ``model(x_scaled, y_scaled)``.
    x_scaler, y_scaler : Standardizer
        ``x_scaler.transform`` maps new inputs to the model's units, ``y_scaler
        .inverse_transform`` maps the model's outputs (``loc``, ``obs``) back, and
        ``y_scaler.inverse_scale`` its noise scales.

    Raises
    ------
    ValueError
        Invalid data (shape, NaN or inf, non-numeric), as in ``fit``.
    """
    _, _, x_scaled, y_scaled, x_scaler, y_scaler = _prepare(model, x, y, standardize)
    return x_scaled, y_scaled, x_scaler, y_scaler


# ------------------------------------------------------------------------------ samples
def _checked_samples(model: BayesianResNet, samples: Any) -> dict[str, Tensor]:
    """Samples of every latent site as tensors (chain, draw, *site_shape), validated."""
    if not isinstance(samples, Mapping):
        raise ValueError("samples must be a dict site -> array, as MCMC.get_samples() returns, "
                         f"got {type(samples).__name__}")
    missing = [name for name in model.latent_sites if name not in samples]
    if missing:
        raise ValueError(
            f"samples lack latent site(s) {missing} of the model (it samples "
            f"{list(model.latent_sites)}); pass every site, e.g. MCMC.get_samples() without "
            "save_params, or compute the model's sites of a reparameterized model")
    draws: dict[str, Tensor] = {}
    layouts: dict[str, tuple[int, ...]] = {}
    for name, site in model.latent_sites.items():
        value = as_float_tensor(samples[name], f"samples[{name!r}]")
        shape = site.shape
        lead = value.dim() - len(shape)
        if lead not in (1, 2) or tuple(value.shape[lead:]) != shape:
            raise ValueError(f"samples[{name!r}] has shape {tuple(value.shape)}; expected "
                             f"(draws, *{shape}) as MCMC.get_samples() gives, or "
                             f"(chains, draws, *{shape}) as get_samples(group_by_chain=True)")
        layouts[name] = tuple(value.shape[:lead])
        draws[name] = value if lead == 2 else value.unsqueeze(0)
    if len(set(layouts.values())) > 1:
        found = ", ".join(f"{name}: {lead}" for name, lead in layouts.items())
        raise ValueError("samples disagree on their leading (chains, draws) or (draws,) "
                         f"dimensions: {found}")
    chains, num = next(iter(draws.values())).shape[:2]
    if chains == 0 or num == 0:
        raise ValueError(f"samples hold no draws (leading shape {(chains, num)})")
    for name, value in draws.items():
        _check_values(model, name, value, f"samples[{name!r}]")
    return draws


def _check_values(model: BayesianResNet, name: str, value: Tensor, label: str) -> None:
    """Finite and inside the support of the site's prior; value is (chain, draw, *shape)."""
    bad = ~torch.isfinite(value.reshape(value.shape[0], value.shape[1], -1)).all(-1)
    if bad.any():
        chain, draw = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{label} has NaN or inf values in {int(bad.sum())} draw(s), first "
                         f"in chain {chain}, draw {draw}")
    inside = model.latent_sites[name].support.check(value)
    if not bool(inside.all()):
        chain, draw = (int(i) for i in (~inside).reshape(value.shape[:2]).nonzero()[0])
        raise ValueError(f"{label} has values outside the support of its prior "
                         f"({model.latent_sites[name].support}) in chain {chain}, draw {draw}")


def _pyro_divergences(value: Mapping[str, Any], chains: int, num: int) -> np.ndarray:
    """``MCMC.diagnostics()["divergences"]`` ({"chain i": [draw indices]}) as (chain, draw)."""
    diverging = np.zeros((chains, num), dtype=bool)
    for key, indices in value.items():
        try:
            chain = int(str(key).rsplit(" ", 1)[-1])
            index = np.asarray(indices, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"stats['divergences'] must map 'chain <i>' to draw indices, as "
                             f"MCMC.diagnostics() does; got {key!r}: {indices!r}") from None
        if not 0 <= chain < chains or ((index < 0) | (index >= num)).any():
            raise ValueError(f"stats['divergences'][{key!r}] points outside the {chains} "
                             f"chain(s) of {num} draws of the samples (samples of several "
                             "chains belong in MCMC.get_samples(group_by_chain=True))")
        diverging[chain, index] = True
    return diverging


def _checked_stats(stats: Any, chains: int, num: int) -> dict[str, np.ndarray]:
    """Per-draw statistics under our names, each (chain, draw)."""
    if stats is None:
        return {}
    if not isinstance(stats, Mapping):
        raise ValueError(f"stats must be a dict name -> array, got {type(stats).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in stats.items():
        if key == "divergences" and isinstance(value, Mapping):
            ours, array = "diverging", _pyro_divergences(value, chains, num)
        elif isinstance(value, Mapping):
            # The rest of MCMC.diagnostics(): per-site and per-chain summaries, not per draw.
            continue
        else:
            if key in _GUIDE_STATS:
                raise ValueError(f"stats[{key!r}] is an optimization history; it applies to "
                                 "guide=, not to samples=")
            negate = key == "potential_energy"
            ours = "log_density" if negate else STAT_ALIASES.get(key, key)
            if ours not in PER_DRAW_STATS:
                known = sorted([*PER_DRAW_STATS, *STAT_ALIASES, "potential_energy"])
                raise ValueError(f"stats[{key!r}] is not a per-draw statistic bayesresnet "
                                 f"knows; known: {known} (and MCMC.diagnostics()); leave it out")
            array = as_float_tensor(value, f"stats[{key!r}]").numpy()
            if array.size == chains * num and array.shape in ((chains * num,), (chains, num)):
                array = array.reshape(chains, num)
            else:
                raise ValueError(f"stats[{key!r}] has shape {array.shape}; a per-draw statistic "
                                 f"must have shape (chains, draws) = {(chains, num)} or "
                                 f"({chains * num},)")
            if negate:
                array = -array
            array = array.astype(PER_DRAW_STATS[ours])
        if ours in out:
            raise ValueError(f"stats give {ours!r} twice (under two names)")
        out[ours] = array
    return out


def _log_joint(model: BayesianResNet, draws: Mapping[str, Tensor], x: Tensor, y: Tensor
               ) -> np.ndarray:
    """``model.log_joint`` of every draw, (chain, draw), chunked over draws."""
    chains, num = next(iter(draws.values())).shape[:2]
    total = chains * num
    flat = {k: v.reshape((total, *v.shape[2:])) for k, v in draws.items()}
    chunk = draws_per_chunk(model.net, x.shape[0], total)
    with torch.no_grad():
        parts = [model.log_joint({k: v[start:start + chunk] for k, v in flat.items()}, x, y)
                 for start in range(0, total, chunk)]
    return torch.cat(parts).reshape(chains, num).numpy()


# ------------------------------------------------------------------------------ guides
def _guide_name(guide: Callable[..., Any]) -> str:
    if isinstance(guide, torch.nn.Module) or not hasattr(guide, "__name__"):
        return type(guide).__name__
    return str(guide.__name__)


def _trace_guide(guide: Callable[..., Any], args: tuple, num: int | None,
                 plate_dim: int) -> poutine.Trace:
    """One trace of the guide; with ``num``, vectorized under a plate of that size."""
    if num is None:
        trace = poutine.trace(guide).get_trace(*args)
    else:
        with pyro.plate("_from_pyro_draws", num, dim=plate_dim):
            trace = poutine.trace(guide).get_trace(*args)
    trace.compute_log_prob()
    return trace


def _from_trace(model: BayesianResNet, trace: poutine.Trace, num: int
                ) -> tuple[dict[str, Tensor], Tensor | None]:
    """Latent values (num, *site_shape) and the guide's log density (num,) or None.

    The log density of the draws is the sum of the log probabilities of every guide site; it
    is the density of the latent values only when every other site is auxiliary (as in Pyro's
    autoguides, whose Delta sites carry the log-Jacobian), else None.
    """
    values: dict[str, Tensor] = {}
    log_q: Tensor | None = torch.zeros(num, dtype=torch.float64)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        latent = name in model.latent_sites
        if not latent and not site["infer"].get("is_auxiliary", False):
            log_q = None
        if log_q is not None:
            log_prob = site["log_prob"].to(torch.float64)
            # (num, ...) under the draws plate; a site outside it has one value for all draws
            log_q = log_q + (log_prob.reshape(-1).expand(num) if log_prob.numel() == 1
                             else log_prob.reshape(num, -1).sum(-1))
        if latent:
            shape = model.latent_sites[name].shape
            value = site["value"].detach().to(torch.float64)
            if value.numel() != num * math.prod(shape):
                raise ValueError(
                    f"the guide's draw of site {name!r} has shape {tuple(value.shape)}, which "
                    f"does not hold {num} draw(s) of the model's shape {shape}: is it a guide "
                    "of this model? (a guide that cannot be vectorized needs parallel=False)")
            values[name] = value.reshape((num, *shape))
    missing = [name for name in model.latent_sites if name not in values]
    if missing:
        raise ValueError(f"the guide does not sample latent site(s) {missing} of the model; "
                         "it must be a guide of this model")
    return values, log_q


def _draw_from_guide(model: BayesianResNet, guide: Callable[..., Any], args: tuple, num: int,
                     seed: int, parallel: bool
                     ) -> tuple[dict[str, Tensor], np.ndarray | None, dict[str, Tensor]]:
    """``num`` draws (1, num, *site_shape) from a fitted guide, their log density under the
    guide (1, num) where known, and the guide's parameters (constrained).

    Seeded from ``seed`` inside a fork of the global torch RNG, under the global state lock;
    parameters the call adds to Pyro's param store (a PyroModule guide whose store entries were
    cleared re-registers its own) are removed again, so the caller's RNG state and param store
    are left as they were.
    """
    if isinstance(guide, AutoGuide) and getattr(guide, "prototype_trace", None) is None:
        raise ValueError(f"the {type(guide).__name__} guide has not been fitted (it was never "
                         "called); fit it with SVI on the standardized data first")
    store = pyro.get_param_store()
    with global_state_lock():
        before = set(store.keys())
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.default_generator.manual_seed(seed)
                if parallel:
                    plate_dim = -(int(getattr(model, "max_plate_nesting", 1)) + 1)
                    traces = [_trace_guide(guide, args, num, plate_dim)]
                    values, log_q = _from_trace(model, traces[0], num)
                else:
                    traces = [_trace_guide(guide, args, None, 0) for _ in range(num)]
                    parts = [_from_trace(model, trace, 1) for trace in traces]
                    values = {name: torch.cat([p[0][name] for p in parts])
                              for name in model.latent_sites}
                    log_q = (None if any(p[1] is None for p in parts)
                             else torch.cat([p[1] for p in parts]))
        finally:
            added = [name for name in store.keys() if name not in before]
            for name in added:
                del store[name]
    if added and not isinstance(guide, PyroModule):
        raise ValueError(f"the guide created parameters {sorted(added)} that are not in Pyro's "
                         "param store: it has not been fitted, or its parameters were cleared "
                         "(pyro.clear_param_store) or live in another param store scope")
    params = {name: site["value"].detach().clone() for name, site in traces[0].nodes.items()
              if site["type"] == "param"}
    draws = {name: value.unsqueeze(0) for name, value in values.items()}
    for name, value in draws.items():
        _check_values(model, name, value, f"the guide's draws of site {name!r}")
    return draws, None if log_q is None else log_q.unsqueeze(0).numpy(), params


def _guide_stats(stats: Any) -> dict[str, np.ndarray]:
    """The SVI history: ``elbo`` (steps,) from ``elbo`` or ``loss`` (= -ELBO)."""
    if stats is None:
        return {}
    if not isinstance(stats, Mapping):
        raise ValueError(f"stats must be a dict name -> array, got {type(stats).__name__}")
    unknown = [key for key in stats if key not in _GUIDE_STATS]
    if unknown:
        raise ValueError(f"with guide=, stats may hold 'elbo' or 'loss' (the SVI history, "
                         f"one value per step), got {unknown}")
    if len(stats) > 1:
        raise ValueError("give the SVI history once: stats['elbo'] or stats['loss'], not both")
    key, value = next(iter(stats.items()))
    history = as_float_tensor(value, f"stats[{key!r}]").numpy().reshape(-1)
    if history.size == 0:
        raise ValueError(f"stats[{key!r}] is empty")
    return {"elbo": -history if key == "loss" else history}


# ------------------------------------------------------------------------------ from_pyro
def from_pyro(model: BayesianResNet, x: Any, y: Any, *, samples: Mapping[str, Any] | None = None,
              guide: Callable[..., Any] | None = None, num_draws: int | None = None,
              seed: int = 0, standardize: bool = True, stats: Mapping[str, Any] | None = None,
              parallel: bool = True, check: bool = True,
              num_samples: int | None = None) -> Posterior:
    """Wrap a Pyro run of your own on ``model`` into a :class:`~bayesresnet.Posterior`.

    The run must have used the standardized data that :func:`standardize` returns for the same
    ``x``, ``y`` and ``standardize`` (that is what ``fit`` would have used): the Posterior gets
    the same scalers, so ``predict`` takes and returns original units. Draws made on the raw
    data belong with ``standardize=False``.

    Parameters
    ----------
    model : BayesianResNet
        The model the run sampled (the Pyro model itself, or an equivalent one).
    x : array or tensor (N, in_dim)
        Training inputs in ORIGINAL units; pandas columns become ``feature_names``.
    y : array or tensor (N,) or (N, out_dim)
        Training targets in ORIGINAL units; pandas names become ``target_names``.
    samples : dict site -> array, optional
        Constrained MCMC samples of every latent site of the model (``model.latent_sites``),
        each ``(draws, *site_shape)`` as ``MCMC.get_samples()`` returns (taken as one chain) or
        ``(chains, draws, *site_shape)`` as ``MCMC.get_samples(group_by_chain=True)`` (prefer
        this: R-hat compares the chains). Tensors or arrays of real numbers, finite and inside
        the support of each site's prior. Other keys (``obs``, deterministic sites) are ignored.
        Do not resample them (``get_samples(num_samples=...)`` draws with replacement and breaks
        the chains).
    guide : callable, optional
        A fitted Pyro guide of the model: an ``AutoGuide`` or any guide with the model's
        signature ``guide(x, y)``, whose parameters are in the current param store (or held by
        the guide, as an ``AutoGuide``'s are). It is called on the standardized data, without
        gradients. Exactly one of ``samples`` and ``guide``.
    num_draws : int, optional
        Draws taken from ``guide`` (default 1000); only with ``guide``.
    seed : int
        Seeds the draws from ``guide`` (the same seed gives the same draws; the global torch
        RNG is forked and left as it was) and is recorded as ``Posterior.seed``, the default
        seed of ``predict``. An integer in [0, 2**63 - 1].
    standardize : bool
        Whether the run used standardized data (default, as ``fit``); False for a run on the
        raw data (identity scalers).
    stats : dict, optional
        With ``samples``: per-draw sampler statistics, each ``(chains, draws)`` or
        ``(chains * draws,)``, named as in :data:`PER_DRAW_STATS` or :data:`STAT_ALIASES`
        (NumPyro's ``get_extra_fields(group_by_chain=True)`` fits), or Pyro's
        ``MCMC.diagnostics()``, whose ``divergences`` become ``diverging`` (its other entries
        are summaries and are ignored). With ``guide``: the SVI history, ``{"loss": losses}``
        (the values ``svi.step`` returned) or ``{"elbo": elbos}``, for the ELBO trend check.
    parallel : bool
        With ``guide``: draw all ``num_draws`` in one vectorized pass under a plate left of
        the model's plates (like ``Predictive(parallel=True)``); False draws one at a time, for
        guides that cannot be vectorized (slower, and other draws for the same seed).
    check : bool
        As in ``fit``: run :meth:`~bayesresnet.Posterior.diagnose` and issue a
        :class:`~bayesresnet.ConvergenceWarning` when a check fails.
    num_samples : int, optional
        Deprecated name of ``num_draws`` (a DeprecationWarning).

    Returns
    -------
    Posterior
        ``draws`` site -> (chains, draws, *site_shape), float64 (one chain for a guide);
        ``method`` a :class:`PyroMCMC` or :class:`PyroGuide` record; ``stats`` the per-draw
        statistics, ``log_joint`` (chain, draw) (the model's log joint at the standardized
        data) and, for a guide, ``log_q`` (1, draws) where the guide's density is known and
        ``elbo`` where given; ``extra["guide_params"]`` the guide's parameters;
        ``fit_seconds`` 0 for samples, the time to draw for a guide.

    Raises
    ------
    ValueError
        Invalid data; neither or both of ``samples`` and ``guide``; a latent site missing, of
        the wrong shape, not finite or outside its prior's support (naming the site); sites
        disagreeing on (chains, draws); unknown or misshapen ``stats``; an unfitted guide, or
        one that does not sample the model's sites.

    Notes
    -----
    ``log_joint`` (and ``log_q``) are evaluated with the standardized data. For a guide,
    ``log_q`` is the sum of the log probabilities of all its sample sites, the density of the
    latent values when every other site is auxiliary (Pyro's autoguides); for other guides it
    is left out and the Pareto k-hat check is skipped.
    """
    if num_samples is not None:
        if num_draws is not None:
            raise TypeError("from_pyro: num_samples is the old name of num_draws; give only "
                            "num_draws")
        warnings.warn("from_pyro: num_samples is now called num_draws; the old name will be "
                      "removed in a future release", DeprecationWarning, stacklevel=2)
        num_draws = num_samples
    if (samples is None) == (guide is None):
        raise ValueError("pass exactly one of samples= (MCMC samples) and guide= (a fitted "
                         "guide)")
    if not isinstance(check, (bool, np.bool_)):
        raise ValueError(f"check must be True or False, got {check!r}")
    seed = check_seed(seed)
    x_t, y_t, x_scaled, y_scaled, x_scaler, y_scaler = _prepare(model, x, y, standardize)
    extra: dict[str, Any] = {}
    if samples is not None:
        if num_draws is not None:
            raise ValueError("num_draws applies to guide=; MCMC samples are taken as they "
                             "are (slice them to thin)")
        draws = _checked_samples(model, samples)
        chains, num = next(iter(draws.values())).shape[:2]
        run_stats: dict[str, Any] = _checked_stats(stats, chains, num)
        method: InferenceMethod = PyroMCMC(chains=int(chains), num_samples=int(num))
        seconds = 0.0
    else:
        if not callable(guide):
            raise ValueError(f"guide must be a callable Pyro guide, got {type(guide).__name__}")
        num_draws = 1000 if num_draws is None else num_draws
        check_positive_int("from_pyro", "num_draws", num_draws)
        if not isinstance(parallel, (bool, np.bool_)):
            raise ValueError(f"parallel must be True or False, got {parallel!r}")
        run_stats = _guide_stats(stats)
        start = time.perf_counter()
        draws, log_q, params = _draw_from_guide(model, guide, (x_scaled, y_scaled),
                                                int(num_draws), seed, bool(parallel))
        seconds = time.perf_counter() - start
        if log_q is not None:
            run_stats["log_q"] = log_q
        extra["guide_params"] = params
        method = PyroGuide(guide=_guide_name(guide), num_draws=int(num_draws),
                           parallel=bool(parallel))
    run_stats["log_joint"] = _log_joint(model, draws, x_scaled, y_scaled)
    posterior = Posterior(model=model, draws=draws, stats=run_stats, method=method,
                          x_scaler=x_scaler, y_scaler=y_scaler, seed=seed, fit_seconds=seconds,
                          x_train=x_t.numpy(), y_train=y_t.numpy(), extra=extra,
                          feature_names=column_names(x), target_names=column_names(y))
    if check:
        warn_if_failed(posterior.diagnose(), stacklevel=3)
    return posterior
