"""A run as ArviZ data: named xarray groups, the same on ArviZ 0.x and 1.x.

:func:`inference_groups` builds the groups as plain ``xarray.Dataset`` objects without ArviZ;
:func:`to_arviz` wraps them in the installed line's container (``InferenceData`` on 0.x,
``DataTree`` on 1.x, see :mod:`bayesresnet.arviz_compat`), and the file format writes the same
groups, so a saved run opens with ``arviz.from_netcdf`` on either line.

Units
-----
Models are fitted on standardized data; what is exported about observations is in the ORIGINAL
units of the training data: ``f`` (the network mean), the posterior and prior predictive draws,
and the pointwise log-likelihood, which is the log density of the original-units observation,

    log p(y_ij | theta) = log p_scaled(y_scaled_ij | theta) - log s_j,

where ``s_j`` is the scale of output j in the output standardizer (the Jacobian of the affine
map), so LOO values of models fitted with different scalings, or none, compare directly.
``sample_stats.lp`` is the log joint density ``log p(theta) + sum_ij log p(y_ij | theta)`` in the
same units (the prior's part does not depend on the units). The latent sites (network
coefficients, noise, hyperparameters) are exported as the model sees them, in standardized units.

Dimension names
---------------
Training observations are ``obs_id``, new points ``pred_id``, features ``input``, outputs
``output`` (labelled with the feature and target names where the data had them); hidden units
``hidden`` (``hidden_out``/``hidden_in`` for square weights); the depth-basis functions
``basis`` with the basis's labels. The observation variable is ``obs`` like the Pyro sample site.
With one output, observation-like variables (``obs``, ``f``) have no ``output`` dim, so that
``log_likelihood.obs``, ``observed_data.obs`` and ``posterior_predictive.obs`` share their dims
and ``az.loo_pit``, ``az.plot_loo_pit`` and ``az.plot_lm`` work as they are (ArviZ 0.x:
``az.loo_pit(idata, y="obs")``, ``az.plot_lm(idata=idata, y="obs", x="x")``; ArviZ 1.x:
``az.loo_pit(dt)``, ``az.plot_lm(dt, plot_dim="obs_id")``, naming the point dim because the
inputs ``x`` are ``(obs_id, input)``). With several
outputs they are ``(obs_id, output)``, ``log_likelihood.obs`` holds each output's term (select an
output, ``idata.sel(output=...)``, for LOO-PIT), and ``log_likelihood.obs_joint`` sums them: pass
``var_name="obs_joint"`` to ``az.loo`` to leave out whole observations (as :func:`compare` does).

What the draws are
------------------
Every group's attributes carry ``inference_kind``: ``"mcmc"`` for Markov chains; ``"variational"``
for independent draws of a fitted approximation; ``"ensemble"`` for independently optimized
members, stored as the draws of one chain; ``"optimization"`` for one MAP point. ArviZ treats all
of them as posterior draws. For variational and ensemble runs ``az.rhat`` of one chain and
``az.ess`` describe the spread of independent draws, not the mixing of a sampler (ESS is close to
the number of draws by construction); ``az.loo`` is importance sampling from the approximation,
valid only where the Pareto k-hats are small. A MAP run has one draw: ESS, R-hat and LOO are not
defined for it. :meth:`bayesresnet.Posterior.diagnose` applies the checks that fit each kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._version import __version__
from .arviz_compat import compare as arviz_compare
from .arviz_compat import to_inference_data
from .model import BayesianResNet
from .validation import as_numpy, check_inputs, check_posterior, check_targets

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from .posterior import Posterior

__all__ = [
    "compare",
    "identifiable_names",
    "inference_groups",
    "pointwise_log_likelihood",
    "site_dims",
    "to_arviz",
]

# Per-draw statistics exported to ``sample_stats``: our name -> ArviZ's name. ``log_joint`` is
# handled apart (``lp``, converted to original units).
_SAMPLE_STATS = {
    "diverging": "diverging",
    "energy": "energy",
    "tree_depth": "tree_depth",
    "num_steps": "n_steps",
    "step_size": "step_size",
    "accept_prob": "acceptance_rate",
    "reached_max_tree_depth": "reached_max_treedepth",
    "log_density": "log_density",
    "log_q": "log_q",
    "final_loss": "final_loss",
}

# Independent random streams derived from the fit's seed (Posterior.predict uses seed + 1).
_STREAM_PPC, _STREAM_PREDICTIONS, _STREAM_PRIOR = 101, 102, 103

MIN_LOO_DRAWS = 25
"""Fewest draws :func:`compare` accepts: PSIS fits its Pareto tail to min(20%, 3 sqrt(S)) of
the S draws, and ArviZ 1.x refuses a tail of fewer than 5."""

DEFAULT_PRIOR_DRAWS = 500
"""Draws in the ``prior`` and ``prior_predictive`` groups."""


# ------------------------------------------------------------------------------- dims and coords
def _net_site_dims(net: Any, out_dim: int) -> tuple[dict[str, tuple[str, ...]], dict[str, Any]]:
    """Dims of each network parameter site and the coordinates they use."""
    hidden = np.arange(net.width)
    coords: dict[str, Any] = {"input": np.arange(net.in_dim), "hidden": hidden,
                              "hidden_out": hidden, "hidden_in": hidden,
                              "output": np.arange(out_dim)}
    out_name = "output"
    if net.out_dim != out_dim:  # heteroscedastic: the network emits mean and log-scale
        out_name = "net_output"
        coords[out_name] = ([f"mean_{j}" for j in range(out_dim)]
                            + [f"log_scale_{j}" for j in range(out_dim)])
    dims: dict[str, tuple[str, ...]] = {
        "input_weight": ("hidden", "input"),
        "input_bias": ("hidden",),
        "output_weight": (out_name, "hidden"),
        "output_bias": (out_name,),
    }
    if hasattr(net, "basis"):
        coords["basis"] = list(net.basis.names(net.depth))
        dims["W_coef"] = ("basis", "hidden_out", "hidden_in")
        dims["b_coef"] = ("basis", "hidden")
        if getattr(net, "rank", None) is not None:  # low rank: W(t) = U(t) V(t)^T
            coords["rank"] = np.arange(net.rank)
            dims["U_coef"] = ("basis", "hidden_out", "rank")
            dims["V_coef"] = ("basis", "hidden_in", "rank")
    else:
        coords["layer"] = np.arange(net.depth)
        dims["hidden_weight"] = ("layer", "hidden_out", "hidden_in")
        dims["hidden_bias"] = ("layer", "hidden")
    return dims, coords


def site_dims(model: BayesianResNet) -> tuple[dict[str, tuple[str, ...]], dict[str, Any]]:
    """Named dimensions of every latent site of ``model`` (without chain and draw).

    Network sites get their layer's dims; a structured prior's ``<site>_raw`` (and the
    horseshoe's ``<site>_local_scale``) shares the dims of ``<site>`` and its hyperparameters
    (``<site>_scale``, ``<site>_step_scale``, ...) are scalars; ``noise`` is ``("output",)``.
    A site of unknown name gets ``<site>_dim_<i>``.

    Returns
    -------
    dims : dict site -> tuple of dim names
    coords : dict dim name -> coordinate values
    """
    net_dims, coords = _net_site_dims(model.net, model.out_dim)
    dims: dict[str, tuple[str, ...]] = {}
    for name, shape in model.latent_shapes.items():
        base = name
        for suffix in ("_raw", "_local_scale"):  # per-coefficient sites of a structured prior
            base = base[: -len(suffix)] if base.endswith(suffix) else base
        if base in net_dims and len(net_dims[base]) == len(shape):
            dims[name] = net_dims[base]
        elif name == "noise" and shape == (model.out_dim,):
            dims[name] = ("output",)
        else:
            dims[name] = tuple(f"{name}_dim_{i}" for i in range(len(shape)))
    return dims, coords


def identifiable_names(posterior: Posterior) -> list[str]:
    """Posterior variables whose R-hat, ESS and summaries mean something.

    ``f`` (the network mean at the training inputs), ``noise`` and the prior's scalar
    hyperparameters (sites ending in ``_scale``); the raw coefficients are not identifiable
    because of the hidden units' permutation and sign symmetries.
    """
    names = [name for name, value in posterior.draws.items()
             if name == "noise" or (name.endswith("_scale") and value.dim() == 2)]
    return [*names, "f"]


# ------------------------------------------------------------------------------- helpers
def pointwise_log_likelihood(posterior: Posterior) -> np.ndarray:
    """Log-likelihood of each training observation under each draw, in original units.

    Returns
    -------
    ndarray (chain, draw, N)
        ``log p(y_i | theta)`` of the original-units observation, summed over outputs.
    """
    _, _, loglik = posterior.evaluate(posterior.x_train, posterior.y_train)
    return loglik.sum(-1).numpy()


def _seeded(seed: int, stream: int) -> torch.Generator:
    state = int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])
    return torch.Generator().manual_seed(state)


def _noisy(loc: Tensor, scale: Tensor, generator: torch.Generator) -> np.ndarray:
    eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype)
    return (loc + scale * eps).numpy()


def _per_draw_stats(posterior: Posterior) -> dict[str, np.ndarray]:
    """Per-draw statistics (chain, draw) under ArviZ's names, ``lp`` in original units."""
    shape = (posterior.num_chains, posterior.num_draws)
    wanted = {**_SAMPLE_STATS, "log_joint": "lp"}
    out = {}
    for ours, theirs in wanted.items():
        if ours not in posterior.stats:
            continue
        value = as_numpy(posterior.stats[ours])
        if value.shape == (shape[1],) and shape[0] == 1:
            value = value.reshape(shape)
        if value.shape != shape:
            raise ValueError(f"stats[{ours!r}] has shape {value.shape}; a per-draw statistic "
                             f"must have shape (chain, draw) = {shape}")
        out[theirs] = value
    if "lp" in out:
        # The model's log joint is of the standardized targets; the Jacobian of the map to
        # original units is -N * sum_j log s_j.
        num_obs = posterior.y_train.shape[0]
        out["lp"] = out["lp"] - num_obs * float(np.log(posterior.y_scaler.std).sum())
    return out


def _library_versions() -> dict[str, str]:
    import pyro

    return {"bayesresnet_version": str(__version__), "torch_version": str(torch.__version__),
            "pyro_version": str(pyro.__version__)}


def _attrs(posterior: Posterior) -> dict[str, Any]:
    return {
        "inference_library": "bayesresnet",
        "inference_method": posterior.method.name,
        "inference_kind": posterior.method.kind,
        "inference_settings": json.dumps(posterior.method.config()),
        "model_config": json.dumps(posterior.model.config()),
        "seed": posterior.seed,
        "fit_seconds": posterior.fit_seconds,
        "fit_dtype": posterior.fit_dtype,
        "fit_device": posterior.fit_device,
        **_library_versions(),
    }


class _GroupBuilder:
    """Datasets with the run's dims and coordinates."""

    def __init__(self, posterior: Posterior) -> None:
        import xarray as xr

        self.xr = xr
        self.single_output = posterior.model.out_dim == 1
        site_dim_names, coords = site_dims(posterior.model)
        self.site_dims = site_dim_names
        if posterior.feature_names is not None:
            coords["input"] = list(posterior.feature_names)
        if posterior.target_names is not None:
            coords["output"] = list(posterior.target_names)
        self.coords = coords
        self.attrs = _attrs(posterior)

    def observation_dims(self, point: str) -> tuple[str, ...]:
        return (point,) if self.single_output else (point, "output")

    def observations(self, values: np.ndarray) -> np.ndarray:
        """Drop the trailing output axis of a one-output array."""
        return values[..., 0] if self.single_output else values

    def dataset(self, variables: Mapping[str, tuple[tuple[str, ...], np.ndarray]],
                extra_coords: Mapping[str, Any] | None = None) -> xr.Dataset:
        dims_used = {d for dims, _ in variables.values() for d in dims}
        coords = {**self.coords, **(extra_coords or {})}
        sizes = {d: v.shape[i] for dims, v in variables.values() for i, d in enumerate(dims)}
        used = {d: c for d, c in coords.items() if d in dims_used}
        for dim, size in sizes.items():
            if dim not in used:
                used[dim] = np.arange(size)
        return self.xr.Dataset({name: (list(dims), values)
                                for name, (dims, values) in variables.items()},
                               coords=used, attrs=dict(self.attrs))

    def draws(self, draws: Mapping[str, Tensor], f: np.ndarray, sample: tuple[int, int]
              ) -> xr.Dataset:
        variables = {name: (("chain", "draw", *self.site_dims[name]), value.numpy())
                     for name, value in draws.items()}
        variables["f"] = (("chain", "draw", *self.observation_dims("obs_id")),
                          self.observations(f))
        return self.dataset(variables, self.sample_coords(sample))

    @staticmethod
    def sample_coords(sample: tuple[int, int]) -> dict[str, np.ndarray]:
        return {"chain": np.arange(sample[0]), "draw": np.arange(sample[1])}


def inference_groups(posterior: Posterior, x_new: Any = None, y_new: Any = None,
                     predictive: bool = True, prior: bool = True,
                     prior_draws: int = DEFAULT_PRIOR_DRAWS) -> dict[str, xr.Dataset]:
    """The ArviZ groups of a run as plain ``xarray.Dataset`` objects (no ArviZ needed).

    Parameters and groups are those of :func:`to_arviz`.

    Returns
    -------
    dict group name -> xarray.Dataset
    """
    check_posterior(posterior)
    if isinstance(prior_draws, bool) or not isinstance(prior_draws, (int, np.integer)) \
            or prior_draws < 1:
        raise ValueError(f"prior_draws must be a positive integer, got {prior_draws!r}")
    if y_new is not None and x_new is None:
        raise ValueError("y_new was given without x_new")
    build = _GroupBuilder(posterior)
    x, y = posterior.x_train, posterior.y_train
    sample = (posterior.num_chains, posterior.num_draws)
    loc, scale, loglik = posterior.evaluate(x, y)
    obs_dims = ("chain", "draw", *build.observation_dims("obs_id"))
    groups: dict[str, xr.Dataset] = {}
    groups["posterior"] = build.draws(posterior.draws, loc.numpy(), sample)
    stats = _per_draw_stats(posterior)
    if stats:
        groups["sample_stats"] = build.dataset(
            {name: (("chain", "draw"), value) for name, value in stats.items()},
            build.sample_coords(sample))
    likelihood = {"obs": (obs_dims, build.observations(loglik.numpy()))}
    if not build.single_output:
        likelihood["obs_joint"] = (("chain", "draw", "obs_id"), loglik.sum(-1).numpy())
    groups["log_likelihood"] = build.dataset(likelihood, build.sample_coords(sample))
    if predictive:
        replicate = _noisy(loc, scale, _seeded(posterior.seed, _STREAM_PPC))
        groups["posterior_predictive"] = build.dataset(
            {"obs": (obs_dims, build.observations(replicate))}, build.sample_coords(sample))
    groups["observed_data"] = build.dataset(
        {"obs": (build.observation_dims("obs_id"), build.observations(y))})
    groups["constant_data"] = build.dataset({"x": (("obs_id", "input"), x)})
    if prior:
        groups.update(_prior_groups(posterior, build, int(prior_draws)))
    if x_new is not None:
        groups.update(_prediction_groups(posterior, build, x_new, y_new))
    return groups


def _prior_groups(posterior: Posterior, build: _GroupBuilder, num: int
                  ) -> dict[str, xr.Dataset]:
    """Prior draws of every site, ``f`` and replicate observations at the training inputs."""
    stream = int(np.random.SeedSequence([posterior.seed, _STREAM_PRIOR]).generate_state(1)[0])
    draws = posterior.model.sample_prior(stream, (1, num))
    # A run of the same class over the prior draws evaluates them through the same path as the
    # posterior's (``type(posterior)``: this module does not import bayesresnet.posterior).
    prior_run = type(posterior)(
        model=posterior.model, draws=draws, stats={}, method=posterior.method,
        x_scaler=posterior.x_scaler, y_scaler=posterior.y_scaler, seed=posterior.seed,
        fit_seconds=0.0, x_train=posterior.x_train, y_train=posterior.y_train,
        feature_names=posterior.feature_names, target_names=posterior.target_names)
    loc, scale, _ = prior_run.evaluate(posterior.x_train, network_only=True)
    replicate = _noisy(loc, scale, _seeded(posterior.seed, _STREAM_PRIOR))
    obs_dims = ("chain", "draw", *build.observation_dims("obs_id"))
    return {
        "prior": build.draws(prior_run.draws, loc.numpy(), (1, num)),
        "prior_predictive": build.dataset({"obs": (obs_dims, build.observations(replicate))},
                                          build.sample_coords((1, num))),
    }


def _prediction_groups(posterior: Posterior, build: _GroupBuilder, x_new: Any, y_new: Any
                       ) -> dict[str, xr.Dataset]:
    xn = check_inputs(x_new, posterior.model.in_dim, "x_new")
    loc, scale, _ = posterior.evaluate(xn)
    sample = (posterior.num_chains, posterior.num_draws)
    dims = ("chain", "draw", *build.observation_dims("pred_id"))
    noisy = _noisy(loc, scale, _seeded(posterior.seed, _STREAM_PREDICTIONS))
    groups = {"predictions": build.dataset(
        {"f": (dims, build.observations(loc.numpy())), "obs": (dims, build.observations(noisy))},
        build.sample_coords(sample))}
    constant = {"x": (("pred_id", "input"), xn.numpy())}
    if y_new is not None:
        yn = check_targets(y_new, xn.shape[0], posterior.model.out_dim, "y_new").numpy()
        constant["y"] = (build.observation_dims("pred_id"), build.observations(yn))
    groups["predictions_constant_data"] = build.dataset(constant)
    return groups


def to_arviz(posterior: Posterior, x_new: Any = None, y_new: Any = None,
             predictive: bool = True, prior: bool = True,
             prior_draws: int = DEFAULT_PRIOR_DRAWS) -> Any:
    """The run as ArviZ data: ``InferenceData`` on ArviZ 0.x, ``xarray.DataTree`` on ArviZ 1.x.

    Parameters
    ----------
    posterior : Posterior
    x_new : array (M, in_dim), optional
        New inputs (original units): adds ``predictions`` (``f`` and noisy ``obs`` draws,
        (chain, draw, pred_id[, output])) and ``predictions_constant_data`` (``x``).
    y_new : array (M,) or (M, out_dim), optional
        Observations at ``x_new``, stored as ``y`` in ``predictions_constant_data``.
    predictive : bool
        Add ``posterior_predictive``: noisy replicate draws at the training inputs.
    prior : bool
        Add ``prior`` (``prior_draws`` draws of every latent site, and ``f``) and
        ``prior_predictive`` (noisy replicate draws at the training inputs).
    prior_draws : int
        Number of prior draws.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        ``posterior``: every latent site with named dims, and ``f`` (chain, draw, obs_id[,
        output]), the network mean at the training inputs in original units. ``sample_stats``:
        ``lp`` (the log joint, original units) and for NUTS ``diverging``, ``energy``,
        ``tree_depth``, ``n_steps``, ``step_size``, ``acceptance_rate``,
        ``reached_max_treedepth``; for VI ``log_q``; for ensembles ``final_loss``.
        ``log_likelihood``: ``obs`` (and ``obs_joint`` with several outputs), original units.
        ``observed_data``: ``obs``; ``constant_data``: ``x`` (obs_id, input). Each group's
        attributes: the method, its kind and settings (JSON), the model config (JSON), seed,
        fit seconds, the dtype and device the fit computed in (``fit_dtype``,
        ``fit_device``) and library versions. Noisy draws are reproducible from the fit's seed.
        See the module docstring for units, dims and what ArviZ's diagnostics mean for each
        kind of run. ``Posterior.summary()`` lists the identifiable quantities.
    """
    groups = inference_groups(posterior, x_new=x_new, y_new=y_new, predictive=predictive,
                              prior=prior, prior_draws=prior_draws)
    return to_inference_data(groups)


def compare(posteriors: Mapping[str, Posterior], **kwargs: Any) -> pd.DataFrame:
    """Rank models by their expected log predictive density estimated with PSIS-LOO.

    Parameters
    ----------
    posteriors : dict name -> Posterior
        At least two posteriors fitted on the same training data (e.g. different depth bases
        or widths).
    **kwargs
        Passed to ``arviz.compare`` (e.g. ``method="stacking"``).

    Returns
    -------
    pandas.DataFrame
        ArviZ's comparison table, best model first, with ArviZ 0.x's column names on both lines
        (``elpd_loo``, ``p_loo``, ``elpd_diff``, ``weight``, ``se``, ``dse``, ...). Whole
        observations are left out (all outputs together), in original units, so models fitted
        with different scalings compare.

    Notes
    -----
    PSIS-LOO treats the draws as posterior draws; for VI and ensembles it is an approximation
    on top of an approximation, and a MAP fit (one draw) cannot be compared at all.
    """
    if not isinstance(posteriors, Mapping) or len(posteriors) < 2:
        raise ValueError("compare needs a dict of at least two named posteriors")
    items = list(posteriors.items())
    for name, post in items:
        check_posterior(post, f"posteriors[{name!r}]")
        total = post.num_chains * post.num_draws
        if total < 2:
            raise ValueError(f"posteriors[{name!r}] has a single draw ({post.method.name}); "
                             "PSIS-LOO needs many posterior draws")
        if total < MIN_LOO_DRAWS:
            raise ValueError(f"posteriors[{name!r}] has {total} draws; PSIS-LOO fits a Pareto "
                             f"tail to the largest 20% of the weights and needs at least "
                             f"{MIN_LOO_DRAWS} draws (e.g. more ensemble members)")
    ref_name, ref = items[0]
    for name, post in items[1:]:
        same = (post.x_train.shape == ref.x_train.shape and post.y_train.shape ==
                ref.y_train.shape and np.array_equal(post.x_train, ref.x_train)
                and np.array_equal(post.y_train, ref.y_train))
        if not same:
            raise ValueError(f"posteriors {ref_name!r} and {name!r} were fitted on different "
                             "training data; LOO values compare only on the same data")
    datasets = {}
    for name, post in items:
        groups = inference_groups(post, predictive=False, prior=False)
        likelihood = groups["log_likelihood"]
        if "obs_joint" in likelihood:
            groups["log_likelihood"] = likelihood[["obs_joint"]].rename({"obs_joint": "obs"})
        datasets[name] = to_inference_data(groups)
    return arviz_compare(datasets, **kwargs)
