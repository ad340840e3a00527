"""The bayesresnet run file: one netCDF4/HDF5 file, written atomically, read without pickle.

The file is written with xarray (engine ``h5netcdf``); neither writing nor reading needs ArviZ, so
a file saved under one ArviZ line loads under the other. Its groups are the ArviZ groups of
:func:`bayesresnet.convert.inference_groups`, so ``arviz.from_netcdf(path)`` opens it on either
line. The root group holds what :func:`load` needs besides the draws (which it takes from the
``posterior`` group): JSON strings in attributes (model, method, scalers, seed, column names, ...)
and plain numeric arrays (training data, ``stats``, array-valued ``extra``). Nothing is pickled
and loading never executes code. This module imports no inference code: a saved run's method is
rebuilt from :mod:`bayesresnet.registry`.
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
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._version import __version__
from .convert import inference_groups
from .data import Standardizer
from .model import BayesianResNet
from .posterior import Posterior
from .registry import method_class, method_names

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PosteriorFileError", "load", "save"]

FORMAT_NAME = "bayesresnet.posterior"
FORMAT_VERSION = 1

_ENGINE = "h5netcdf"


class PosteriorFileError(ValueError):
    """A file that is not a readable bayesresnet posterior of a supported format version."""


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


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
        "bayesresnet_feature_names": json.dumps(posterior.feature_names),
        "bayesresnet_target_names": json.dumps(posterior.target_names),
    }
    return xr.Dataset(data_vars, attrs=attrs)


def _write(posterior: Posterior, path: str) -> None:
    """Write the whole file at ``path`` (a fresh temporary file)."""
    root = _root_dataset(posterior)
    # Uncompressed, without fill values, so numbers come back bit for bit.
    root.to_netcdf(path, mode="w", engine=_ENGINE,
                   encoding={name: {"_FillValue": None} for name in root.data_vars})
    for name, group in inference_groups(posterior).items():
        encoding = {var: {"_FillValue": None} for var in group.data_vars}
        group.to_netcdf(path, mode="a", group=name, engine=_ENGINE, encoding=encoding)


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
    """Read a posterior written by :func:`~bayesresnet.fileformat.save`.

    Only arrays and JSON are read; nothing is unpickled or executed. The model is rebuilt with
    ``BayesianResNet.from_config`` and the method with its registered class (``**settings``);
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
    model_config = _json_attr(attrs, "bayesresnet_model", path)
    method_config = _json_attr(attrs, "bayesresnet_method", path)
    if not isinstance(method_config, dict):
        raise PosteriorFileError(f"{path!r}: the method settings are not a JSON object")
    method_config = dict(method_config)
    try:
        model = BayesianResNet.from_config(model_config)
    except (ValueError, KeyError, TypeError) as err:
        raise PosteriorFileError(f"{path!r}: cannot rebuild the model from its config: "
                                 f"{err}") from err
    name = method_config.pop("name", None)
    method_type = method_class(name)
    if method_type is None:
        raise PosteriorFileError(f"{path!r}: unknown inference method {name!r}; expected one "
                                 f"of {method_names()}")
    try:
        method = method_type(**method_config)
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
    names = {}
    for key in ("feature_names", "target_names"):
        # Absent from files written before names were stored.
        value = (_json_attr(attrs, f"bayesresnet_{key}", path)
                 if f"bayesresnet_{key}" in attrs else None)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            raise PosteriorFileError(f"{path!r}: {key} is not a list of strings")
        names[key] = value
    try:
        return Posterior(model, draws, stats, method, x_scaler, y_scaler, seed, fit_seconds,
                         arrays["x_train"], arrays["y_train"], extra=extra, **names)
    except ValueError as err:
        raise PosteriorFileError(f"{path!r}: inconsistent run: {err}") from err
