"""ArviZ export, model comparison by PSIS-LOO, and safe saving and loading of posteriors.

Units
-----
Models are fitted on standardized data, but everything exported here is in the ORIGINAL units of
the training data: the network-mean function values ``f``, the posterior predictive draws and the
pointwise log-likelihood. The latter is the log density of the original-units observation,

    log p(y_i | theta) = log p_std(y_std_i | theta) - sum_j log s_j,

where ``s`` is the per-output scale of the output standardizer (the Jacobian of the affine map), so
LOO and WAIC values of models fitted with different scalings, or without any, compare directly.
The latent sites (network coefficients, noise) are exported as the model sees them, i.e. in
standardized units.

Dimension names
---------------
Observations are ``obs_id`` (training) and ``pred_id`` (predictions), features ``input``, outputs
``output``; the hidden units ``hidden`` (``hidden_out``/``hidden_in`` for square weights); the
depth-basis functions ``basis`` with the basis's own labels. An observation variable is named
``obs`` like the Pyro sample site.

File format
-----------
:func:`save` writes one netCDF4/HDF5 file (engine ``h5netcdf``). Its groups are the
``InferenceData`` of :func:`to_arviz`, so ``arviz.from_netcdf(path)`` reads it as usual. The root
group holds what :func:`load` needs besides the draws (taken from the ``posterior`` group): JSON
strings in attributes (model, method, scalers, seed, ...) and plain numeric arrays (training data,
``stats``, array-valued ``extra``). Nothing is pickled and loading never executes code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._version import __version__
from .data import Standardizer
from .model import BayesianResNet
from .posterior import Posterior, as_float_tensor, check_inputs, draws_per_chunk

if TYPE_CHECKING:
    import arviz as az
    import pandas as pd

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PosteriorFileError",
    "compare",
    "load",
    "pointwise_log_likelihood",
    "save",
    "site_dims",
    "to_arviz",
]

FORMAT_NAME = "bayesresnet.posterior"
FORMAT_VERSION = 1

_ENGINE = "h5netcdf"

# Per-draw statistics exported to ``sample_stats``: our name -> ArviZ's name.
_SAMPLE_STATS = {
    "log_joint": "lp",
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
_STREAM_PPC, _STREAM_PREDICTIONS = 101, 102


class PosteriorFileError(ValueError):
    """A file that is not a readable bayesresnet posterior of a supported format version."""


# ------------------------------------------------------------------------------- dims and coords
def _net_site_dims(net: Any, out_dim: int) -> tuple[dict[str, tuple[str, ...]], dict[str, Any]]:
    """Dims of each network parameter site and the coordinates they use."""
    width = net.width
    hidden = np.arange(width)
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
    else:
        coords["layer"] = np.arange(net.depth)
        dims["hidden_weight"] = ("layer", "hidden_out", "hidden_in")
        dims["hidden_bias"] = ("layer", "hidden")
    return dims, coords


def site_dims(model: BayesianResNet) -> tuple[dict[str, tuple[str, ...]], dict[str, Any]]:
    """Named dimensions of every latent site of ``model`` (without chain and draw).

    Network sites get the dims of ``_net_site_dims``; the hierarchical prior's ``<site>_raw``
    shares the dims of ``<site>`` and ``<site>_scale`` is a scalar; ``noise`` is ``("output",)``.
    A site of unknown name gets ``<site>_dim_<i>``.

    Returns
    -------
    dims : dict site -> tuple of dim names
    coords : dict dim name -> coordinate values
    """
    net_dims, coords = _net_site_dims(model.net, model.out_dim)
    dims: dict[str, tuple[str, ...]] = {}
    for name, shape in model.latent_shapes.items():
        base = name[:-4] if name.endswith("_raw") else name
        if base in net_dims and len(net_dims[base]) == len(shape):
            dims[name] = net_dims[base]
        elif name == "noise" and shape == (model.out_dim,):
            dims[name] = ("output",)
        else:
            dims[name] = tuple(f"{name}_dim_{i}" for i in range(len(shape)))
    return dims, coords


# ------------------------------------------------------------------------------- evaluation
def _evaluate(posterior: Posterior, x: Tensor, y: Tensor | None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Network mean, noise scale and pointwise log-likelihood of every draw, original units.

    x: (N, in_dim), y: (N, out_dim) or None, both original units. Returns loc and scale of shape
    (chain, draw, N, out_dim) and the log-likelihood (chain, draw, N) (None without y).
    """
    model = posterior.model
    chains, draws = posterior.num_chains, posterior.num_draws
    flat = posterior.flat_draws()
    total = chains * draws
    x_std = posterior.x_scaler.transform(x)
    y_std = None if y is None else posterior.y_scaler.transform(y)
    log_jacobian = float(np.log(posterior.y_scaler.std).sum())
    chunk = draws_per_chunk(model.net, x.shape[0], total)
    locs, scales, logliks = [], [], []
    with torch.no_grad():
        for start in range(0, total, chunk):
            part = {k: v[start:start + chunk] for k, v in flat.items()}
            loc, scale = model.loc_scale(part, x_std)
            locs.append(loc)
            scales.append(scale)
            if y_std is not None:
                logliks.append(model.log_likelihood(part, x_std, y_std) - log_jacobian)
    n, k = x.shape[0], model.out_dim
    loc = posterior.y_scaler.inverse_transform(torch.cat(locs)).reshape(chains, draws, n, k)
    scale = posterior.y_scaler.inverse_scale(torch.cat(scales)).reshape(chains, draws, n, k)
    loglik = torch.cat(logliks).reshape(chains, draws, n) if y_std is not None else None
    return loc, scale, loglik


def pointwise_log_likelihood(posterior: Posterior) -> np.ndarray:
    """Log-likelihood of each training observation under each draw, in original units.

    Returns
    -------
    ndarray (chain, draw, N)
        ``log p(y_i | theta)`` of the original-units observation (see the module docstring).
    """
    x = torch.as_tensor(posterior.x_train)
    y = torch.as_tensor(posterior.y_train)
    return _evaluate(posterior, x, y)[2].numpy()


def _seeded(seed: int, stream: int) -> torch.Generator:
    state = int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])
    return torch.Generator().manual_seed(state)


def _noisy(loc: Tensor, scale: Tensor, generator: torch.Generator) -> np.ndarray:
    eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype)
    return (loc + scale * eps).numpy()


def _sample_stats(posterior: Posterior) -> dict[str, np.ndarray]:
    shape = (posterior.num_chains, posterior.num_draws)
    out = {}
    for ours, theirs in _SAMPLE_STATS.items():
        if ours not in posterior.stats:
            continue
        value = _to_numpy(posterior.stats[ours])
        if value.shape == (shape[1],) and shape[0] == 1:
            value = value.reshape(shape)
        if value.shape != shape:
            raise ValueError(f"stats[{ours!r}] has shape {value.shape}; a per-draw statistic "
                             f"must have shape (chain, draw) = {shape}")
        out[theirs] = value
    return out


def _library_versions() -> dict[str, str]:
    import arviz as az
    import pyro

    return {"bayesresnet_version": str(__version__), "torch_version": str(torch.__version__),
            "pyro_version": str(pyro.__version__), "arviz_version": str(az.__version__)}


def _export_attrs(posterior: Posterior) -> dict[str, Any]:
    return {
        "inference_library": "bayesresnet",
        "inference_method": posterior.method.name,
        "inference_settings": json.dumps(posterior.method.config()),
        "model_config": json.dumps(posterior.model.config()),
        "seed": posterior.seed,
        "fit_seconds": posterior.fit_seconds,
        **_library_versions(),
    }


def _targets(y: Any, n: int, out_dim: int, name: str) -> Tensor:
    y = as_float_tensor(y, name)
    if y.dim() == 1:
        y = y.unsqueeze(-1)
    if y.dim() != 2 or y.shape[1] != out_dim or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, {out_dim}) to match x_new, "
                         f"got {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return y


def to_arviz(posterior: Posterior, x_new: Any = None, y_new: Any = None,
             predictive: bool = True) -> az.InferenceData:
    """The posterior as an ``arviz.InferenceData``.

    Parameters
    ----------
    posterior : Posterior
    x_new : array (M, in_dim), optional
        New inputs (original units): adds the ``predictions`` group (``f`` and noisy ``obs``
        draws, (chain, draw, pred_id, output)) and ``predictions_constant_data`` (``x``).
    y_new : array (M,) or (M, out_dim), optional
        Observations at ``x_new``, stored as ``y`` in ``predictions_constant_data``.
    predictive : bool
        Add the ``posterior_predictive`` group (noisy replicate draws at the training inputs).

    Returns
    -------
    arviz.InferenceData
        ``posterior``: every latent site with named dims, plus ``f`` (chain, draw, obs_id,
        output), the network mean at the training inputs in original units. ``sample_stats``:
        ``lp`` (the model's log joint, standardized units) and for NUTS ``diverging``,
        ``energy``, ``tree_depth``, ``n_steps``, ``step_size``, ``acceptance_rate``,
        ``reached_max_treedepth`` (ArviZ's names), for VI ``log_q``, for ensembles
        ``final_loss``. ``log_likelihood``: ``obs`` (chain, draw, obs_id) in original units
        (summed over outputs, so LOO leaves out whole observations). ``observed_data``: ``obs``
        (obs_id, output); ``constant_data``: ``x`` (obs_id, input). ``attrs``: the method and its
        settings (JSON), the model config (JSON), seed, fit seconds and library versions.
        Noisy draws are reproducible from the fit's seed.
    """
    import arviz as az

    if not isinstance(posterior, Posterior):
        raise ValueError(f"posterior must be a bayesresnet Posterior, got "
                         f"{type(posterior).__name__}")
    model = posterior.model
    x = torch.as_tensor(posterior.x_train)
    y = torch.as_tensor(posterior.y_train)
    loc, scale, loglik = _evaluate(posterior, x, y)

    dims, coords = site_dims(model)
    chains, draws = posterior.num_chains, posterior.num_draws
    coords = {**coords, "chain": np.arange(chains), "draw": np.arange(draws),
              "obs_id": np.arange(x.shape[0])}
    post = {name: value.numpy() for name, value in posterior.draws.items()}
    post["f"] = loc.numpy()
    dims = {**dims, "f": ("obs_id", "output")}
    attrs = _export_attrs(posterior)
    predictions = None
    if x_new is not None:
        xn = check_inputs(x_new, model.in_dim, "x_new")
        loc_new, scale_new, _ = _evaluate(posterior, xn, None)
        constant = {"x": xn.numpy()}
        if y_new is not None:
            constant["y"] = _targets(y_new, xn.shape[0], model.out_dim, "y_new").numpy()
        pred_dims = {"f": ["pred_id", "output"], "obs": ["pred_id", "output"],
                     "x": ["pred_id", "input"], "y": ["pred_id", "output"]}
        # ArviZ 0.23 applies ``dims`` (not ``pred_dims``) to predictions_constant_data, so the
        # prediction groups get a conversion of their own with the prediction dims throughout.
        predictions = az.from_dict(
            predictions={"f": loc_new.numpy(), "obs": _noisy(
                loc_new, scale_new, _seeded(posterior.seed, _STREAM_PREDICTIONS))},
            predictions_constant_data=constant,
            coords={**coords, "pred_id": np.arange(xn.shape[0])}, dims=pred_dims,
            pred_dims=pred_dims)
    elif y_new is not None:
        raise ValueError("y_new was given without x_new")

    # The log-likelihood "obs" is per observation, the observed and replicated "obs" per
    # observation and output, and from_dict's dims are per variable name: separate conversions.
    idata = az.from_dict(
        posterior=post, sample_stats=_sample_stats(posterior) or None,
        log_likelihood={"obs": loglik.numpy()},
        coords=coords, dims={k: list(v) for k, v in dims.items()} | {"obs": ["obs_id"]},
        attrs=dict(attrs), posterior_attrs=dict(attrs))
    idata.extend(az.from_dict(
        posterior_predictive=({"obs": _noisy(loc, scale, _seeded(posterior.seed, _STREAM_PPC))}
                              if predictive else None),
        observed_data={"obs": y.numpy()}, constant_data={"x": x.numpy()},
        coords=coords, dims={"obs": ["obs_id", "output"], "x": ["obs_id", "input"]}))
    if predictions is not None:
        idata.extend(predictions)
    return idata


# ------------------------------------------------------------------------------- comparison
def compare(posteriors: Mapping[str, Posterior], **kwargs: Any) -> pd.DataFrame:
    """Rank models by their expected log predictive density estimated with PSIS-LOO.

    Parameters
    ----------
    posteriors : dict name -> Posterior
        At least two posteriors fitted on the same training data (e.g. different depth bases
        or widths).
    **kwargs
        Passed to ``arviz.compare`` (e.g. ``method="stacking"``, ``scale="log"``).

    Returns
    -------
    pandas.DataFrame
        ArviZ's comparison table, best model first (``elpd_loo``, ``p_loo``, ``elpd_diff``,
        ``weight``, ``se``, ``dse``, ``warning``, ``scale``). The log-likelihood is of the
        original-units data, so models fitted with different scalings compare.

    Notes
    -----
    PSIS-LOO treats the draws as posterior draws; for VI and ensembles it is an approximation
    on top of an approximation, and a MAP fit (one draw) cannot be compared at all. ArviZ's
    ``warning`` column flags Pareto k-hats above its threshold (unreliable estimates).
    """
    import arviz as az

    if not isinstance(posteriors, Mapping) or len(posteriors) < 2:
        raise ValueError("compare needs a dict of at least two named posteriors")
    items = list(posteriors.items())
    for name, post in items:
        if not isinstance(post, Posterior):
            raise ValueError(f"posteriors[{name!r}] is not a Posterior, got "
                             f"{type(post).__name__}")
        if post.num_chains * post.num_draws < 2:
            raise ValueError(f"posteriors[{name!r}] has a single draw ({post.method.name}); "
                             "PSIS-LOO needs many posterior draws")
    ref_name, ref = items[0]
    for name, post in items[1:]:
        same = (post.x_train.shape == ref.x_train.shape and post.y_train.shape ==
                ref.y_train.shape and np.array_equal(post.x_train, ref.x_train)
                and np.array_equal(post.y_train, ref.y_train))
        if not same:
            raise ValueError(f"posteriors {ref_name!r} and {name!r} were fitted on different "
                             "training data; LOO values compare only on the same data")
    idatas = {name: to_arviz(post, predictive=False) for name, post in items}
    kwargs.setdefault("ic", "loo")
    return az.compare(idatas, **kwargs)


# ------------------------------------------------------------------------------- array trees
_ARRAY_KEY = "__bayesresnet_array__"
_TUPLE_KEY = "__bayesresnet_tuple__"


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class _TreeEncoder:
    """Turns nested dicts/lists of arrays, tensors and JSON scalars into JSON plus named arrays.

    Values of any other type are left out with a warning naming them.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.arrays: dict[str, np.ndarray] = {}
        self.skipped: list[str] = []

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return value.item()
        if isinstance(value, (Tensor, np.ndarray)):
            array = _to_numpy(value)
            if array.dtype.kind not in "biuf":
                self.skipped.append(where)
                return None
            name = f"{self.prefix}{len(self.arrays)}"
            stored = array.astype(np.uint8) if array.dtype.kind == "b" else array
            self.arrays[name] = np.ascontiguousarray(stored)
            return {_ARRAY_KEY: name, "dtype": array.dtype.str,
                    "torch": isinstance(value, Tensor)}
        if isinstance(value, Mapping):
            if not all(isinstance(k, str) for k in value):
                self.skipped.append(where)
                return None
            return {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            items = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return {_TUPLE_KEY: items} if isinstance(value, tuple) else items
        self.skipped.append(where)
        return None


def _decode_tree(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, list):
        return [_decode_tree(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if _ARRAY_KEY in value:
        name = value[_ARRAY_KEY]
        if name not in arrays:
            raise PosteriorFileError(f"the file lacks array {name!r} referenced by its metadata")
        array = np.asarray(arrays[name]).astype(np.dtype(value["dtype"]))
        return torch.from_numpy(array) if value.get("torch") else array
    if _TUPLE_KEY in value:
        return tuple(_decode_tree(v, arrays) for v in value[_TUPLE_KEY])
    return {k: _decode_tree(v, arrays) for k, v in value.items()}


# ------------------------------------------------------------------------------- save and load
def _root_dataset(posterior: Posterior) -> Any:
    """The root group of the file: metadata as JSON attributes, stats/extra/data as arrays."""
    import xarray as xr

    encoder = _TreeEncoder("array_")
    stats = encoder.encode(posterior.stats, "stats")
    extra = encoder.encode(posterior.extra, "extra")
    if encoder.skipped:
        warnings.warn(f"save: left out values that are neither arrays nor JSON-able: "
                      f"{', '.join(encoder.skipped)}", UserWarning, stacklevel=3)
    arrays = {"x_train": posterior.x_train, "y_train": posterior.y_train, **encoder.arrays}
    data_vars = {name: ([f"{name}_dim_{i}" for i in range(value.ndim)], value)
                 for name, value in arrays.items()}
    attrs = {
        "bayesresnet_format": FORMAT_NAME,
        "bayesresnet_format_version": FORMAT_VERSION,
        "bayesresnet_model": json.dumps(posterior.model.config()),
        "bayesresnet_method": json.dumps(posterior.method.config()),
        "bayesresnet_x_scaler": json.dumps(posterior.x_scaler.to_dict()),
        "bayesresnet_y_scaler": json.dumps(posterior.y_scaler.to_dict()),
        "bayesresnet_seed": str(posterior.seed),
        "bayesresnet_fit_seconds": json.dumps(posterior.fit_seconds),
        "bayesresnet_sites": json.dumps(list(posterior.model.latent_sites)),
        "bayesresnet_stats": json.dumps(stats),
        "bayesresnet_extra": json.dumps(extra),
    }
    return xr.Dataset(data_vars, attrs=attrs)


def _write(posterior: Posterior, path: str) -> None:
    """Write the whole file at ``path`` (a fresh temporary file)."""
    idata = to_arviz(posterior)
    idata.to_netcdf(path, engine=_ENGINE)
    root = _root_dataset(posterior)
    # Uncompressed and unencoded so numbers come back bit for bit.
    root.to_netcdf(path, mode="a", engine=_ENGINE,
                   encoding={name: {"_FillValue": None} for name in root.data_vars})


def save(posterior: Posterior, path: str | os.PathLike) -> Path:
    """Write ``posterior`` to one netCDF file, atomically.

    The file is written to a temporary file in the same folder and renamed over ``path`` only
    when complete, so an interruption never leaves a partial file and an existing file is
    replaced only on success. See the module docstring for the layout.

    Parameters
    ----------
    posterior : Posterior
    path : str or path-like
        Target file (conventionally ``*.nc``); its folder must exist.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    if not isinstance(posterior, Posterior):
        raise ValueError(f"posterior must be a bayesresnet Posterior, got "
                         f"{type(posterior).__name__}")
    target = Path(os.fspath(path))
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {str(folder)!r} does not exist")
    if target.is_dir():
        raise ValueError(f"{str(target)!r} is a folder, not a file path")
    # Created like any new file (permissions from the umask, unlike mkstemp's 0600), with a
    # random name that no other writer uses.
    tmp = str(folder / f".{target.name}.{secrets.token_hex(6)}.tmp")
    with open(tmp, "xb"):
        pass
    try:
        _write(posterior, tmp)
        with open(tmp, "rb+") as handle:  # on disk before it becomes visible under its name
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return target


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """Turn low-level read failures into PosteriorFileError naming the file."""
    try:
        yield
    except PosteriorFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        raise PosteriorFileError(f"{path!r} is not a readable bayesresnet posterior file "
                                 f"(corrupt, truncated or not netCDF4/HDF5): {err}") from err


def _json_attr(attrs: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in attrs:
        raise PosteriorFileError(f"{path!r} lacks the attribute {key!r}")
    raw = attrs[key]
    if not isinstance(raw, str):
        raise PosteriorFileError(f"{path!r}: attribute {key!r} is not a JSON string")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise PosteriorFileError(f"{path!r}: attribute {key!r} is not valid JSON: {err}") from err


def _open_group(path: str, group: str | None) -> Any:
    import xarray as xr

    # decode_cf=False: raw arrays, no fill-value masking or type conversions.
    with xr.open_dataset(path, engine=_ENGINE, group=group, decode_cf=False) as ds:
        return ds.load()


def load(path: str | os.PathLike) -> Posterior:
    """Read a posterior written by :func:`~bayesresnet.export.save`.

    Only arrays and JSON are read; nothing is unpickled or executed. The model is rebuilt with
    ``BayesianResNet.from_config`` and the method with ``inference.fit.METHODS[name](**settings)``;
    draws, scalers, seed, training data, stats and extra are restored exactly, so ``predict``
    gives the same numbers as the posterior that was saved.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    Posterior

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    PosteriorFileError (a ValueError)
        Not a bayesresnet posterior file, a corrupt or truncated one, or an unsupported format
        version.
    """
    import h5netcdf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise PosteriorFileError(f"{path!r} is a folder, not a posterior file")
    with _reading(path):
        with h5netcdf.File(path, "r") as handle:
            groups = set(handle.groups)
        root = _open_group(path, None)
    attrs = root.attrs
    if attrs.get("bayesresnet_format") != FORMAT_NAME:
        raise PosteriorFileError(f"{path!r} is a netCDF file but not a bayesresnet posterior "
                                 "(no 'bayesresnet_format' attribute)")
    version = attrs.get("bayesresnet_format_version")
    if not isinstance(version, (int, np.integer)) or int(version) != FORMAT_VERSION:
        raise PosteriorFileError(f"{path!r} has format version {version!r}; this bayesresnet "
                                 f"({__version__}) reads version {FORMAT_VERSION}")
    if "posterior" not in groups:
        raise PosteriorFileError(f"{path!r} lacks the 'posterior' group holding the draws")
    with _reading(path):
        draws_ds = _open_group(path, "posterior")
        arrays = {name: np.asarray(root[name].values) for name in root.data_vars}
    return _rebuild(path, attrs, arrays, draws_ds)


def _rebuild(path: str, attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
             draws_ds: Any) -> Posterior:
    from .inference.fit import METHODS

    model_config = _json_attr(attrs, "bayesresnet_model", path)
    method_config = dict(_json_attr(attrs, "bayesresnet_method", path))
    try:
        model = BayesianResNet.from_config(model_config)
    except (ValueError, KeyError, TypeError) as err:
        raise PosteriorFileError(f"{path!r}: cannot rebuild the model from its config: "
                                 f"{err}") from err
    name = method_config.pop("name", None)
    if name not in METHODS:
        raise PosteriorFileError(f"{path!r}: unknown inference method {name!r}; expected one "
                                 f"of {sorted(METHODS)}")
    try:
        method = METHODS[name](**method_config)
    except (ValueError, TypeError) as err:
        raise PosteriorFileError(f"{path!r}: cannot rebuild method {name!r} from its "
                                 f"settings: {err}") from err

    sites = _json_attr(attrs, "bayesresnet_sites", path)
    if sites != list(model.latent_sites):
        raise PosteriorFileError(f"{path!r}: stored sites {sites} do not match the model's "
                                 f"{list(model.latent_sites)}")
    draws = {}
    for site, shape in model.latent_shapes.items():
        if site not in draws_ds.data_vars:
            raise PosteriorFileError(f"{path!r}: the posterior group lacks site {site!r}")
        value = np.asarray(draws_ds[site].values)
        if value.dtype != np.float64 or value.ndim < 2 or tuple(value.shape[2:]) != shape:
            raise PosteriorFileError(f"{path!r}: site {site!r} has shape {value.shape} and "
                                     f"dtype {value.dtype}; expected (chain, draw, *{shape}) "
                                     "float64")
        draws[site] = torch.from_numpy(value.copy())
    lead = {tuple(v.shape[:2]) for v in draws.values()}
    if len(lead) != 1:
        raise PosteriorFileError(f"{path!r}: sites disagree on (chain, draw): {sorted(lead)}")

    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise PosteriorFileError(f"{path!r} lacks the array {key!r}")
    try:
        x_scaler = Standardizer.from_dict(_json_attr(attrs, "bayesresnet_x_scaler", path))
        y_scaler = Standardizer.from_dict(_json_attr(attrs, "bayesresnet_y_scaler", path))
        seed = int(_json_attr(attrs, "bayesresnet_seed", path))
        fit_seconds = float(_json_attr(attrs, "bayesresnet_fit_seconds", path))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, PosteriorFileError):
            raise
        raise PosteriorFileError(f"{path!r}: malformed metadata: {err}") from err
    stats = _decode_tree(_json_attr(attrs, "bayesresnet_stats", path), arrays)
    extra = _decode_tree(_json_attr(attrs, "bayesresnet_extra", path), arrays)
    if not isinstance(stats, dict) or not isinstance(extra, dict):
        raise PosteriorFileError(f"{path!r}: malformed stats or extra metadata")
    if not math.isfinite(fit_seconds):
        raise PosteriorFileError(f"{path!r}: fit_seconds is not finite")
    return Posterior(model, draws, stats, method, x_scaler, y_scaler, seed, fit_seconds,
                     arrays["x_train"], arrays["y_train"], extra=extra)
