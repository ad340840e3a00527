"""The bayesresnet run file: one netCDF4/HDF5 file, written atomically, read without pickle.

The file is written with xarray (engine ``h5netcdf``); neither writing nor reading needs ArviZ, so
a file saved under one ArviZ line loads under the other. Its groups are the ArviZ groups of
:func:`bayesresnet.convert.inference_groups`, so ``arviz.from_netcdf(path)`` opens it on either
line. The root group holds what :func:`read` needs besides the draws (which it takes from the
``posterior`` group): JSON strings in attributes (model, method, scalers, seed, column names,
the fit's dtype and device, ...) and plain numeric arrays (training data, ``stats``,
array-valued ``extra``). Nothing is pickled and reading never executes code.

This module imports no inference code (a saved run's method is rebuilt from
:mod:`bayesresnet.registry`) and not :mod:`bayesresnet.posterior` either: :func:`save` takes
any object with a posterior's attributes, and :func:`read` returns the keyword arguments of
:class:`~bayesresnet.Posterior`, which :func:`bayesresnet.load` builds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._version import __version__
from .convert import inference_groups
from .data import Standardizer
from .likelihoods import likelihood_from_config
from .model import BayesianResNet
from .registry import method_class, method_names
from .resnet import network_from_config
from .seeds import SEED_MAX
from .validation import as_numpy, check_posterior

if TYPE_CHECKING:
    from .posterior import Posterior

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MAX_ATTRIBUTE_CHARS", "MAX_DEPTH",
           "MAX_JSON_DEPTH", "PosteriorFileError", "read", "save"]

FORMAT_NAME = "bayesresnet.posterior"
FORMAT_VERSION = 1

_ENGINE = "h5netcdf"


class PosteriorFileError(ValueError):
    """A file that is not a readable bayesresnet posterior of a supported format version."""


# ------------------------------------------------------------------------------- array trees
_ARRAY_KEY = "__bayesresnet_array__"
_TUPLE_KEY = "__bayesresnet_tuple__"


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
            array = as_numpy(value)
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


# ------------------------------------------------------------------------------- save
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
        "bayesresnet_fit_dtype": json.dumps(posterior.fit_dtype),
        "bayesresnet_fit_device": json.dumps(posterior.fit_device),
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
    check_posterior(posterior)
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


# ------------------------------------------------------------------------------- read
MAX_JSON_DEPTH = 100
"""Deepest nesting of JSON arrays and objects that :func:`read` parses in one attribute.

The format's own trees (settings, scalers, stats, extra) nest a few levels; the limit is checked
without recursion before parsing, so a hostile attribute cannot exhaust the stack."""

MAX_ATTRIBUTE_CHARS = 2**25
"""Longest JSON attribute (in characters, about 32 million) that :func:`read` parses.

The longest legitimate ones are the scalers (about 25 characters per input column) and the
user's ``extra``; parsed JSON takes up to about twenty times its length in memory."""

MAX_DEPTH = 100_000
"""Deepest network :func:`read` rebuilds.

A network's size is checked against its stored draws, but for a ResNet whose basis has a fixed
number of functions (constant, linear, cubic, Legendre) the depth changes only the work of a
forward pass and the size of its time grid, which nothing stored bounds."""

# Array dtype kinds the encoder writes: bool (stored as uint8), signed and unsigned int, float.
_ARRAY_KINDS = "biuf"

_FORMAT_KEY = "bayesresnet_format"
_VERSION_KEY = "bayesresnet_format_version"
_METADATA_KEYS = ("model", "method", "x_scaler", "y_scaler", "seed", "fit_seconds", "sites",
                  "stats", "extra", "feature_names", "target_names", "fit_dtype", "fit_device")

# What a run written before the fit's dtype and device were stored was fitted in.
_FIT_DEFAULTS = {"fit_dtype": "float64", "fit_device": "cpu"}
# Longest fit_dtype or fit_device read (device strings such as "cuda:12" are short).
_MAX_FIT_SETTING_CHARS = 64

# Linear-time passes for the nesting check: escape pairs, then string literals, then all but
# brackets are dropped (for valid JSON this leaves exactly its structural brackets).
_JSON_ESCAPE = re.compile(r"\\.", re.DOTALL)
_JSON_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (values from a hostile file can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """Turn whatever the HDF5 stack raises while it parses the file into PosteriorFileError.

    On a corrupt file h5py and libhdf5 raise many types (OSError, KeyError, ValueError,
    RuntimeError, UnicodeDecodeError, OverflowError, ...), so this catches every ``Exception``:
    wrap only the calls that read the file in it, never this module's own checks.
    """
    try:
        yield
    except PosteriorFileError:
        raise
    except Exception as err:
        raise PosteriorFileError(f"{path!r} is not a readable bayesresnet posterior file "
                                 f"(corrupt, truncated or not netCDF4/HDF5): "
                                 f"{type(err).__name__}: {_short(str(err), 300)}") from err


def _json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects in JSON ``text``, found without recursion."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", _JSON_ESCAPE.sub("", text)))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _text_attr(attrs: Mapping[str, Any], key: str, path: str) -> str:
    """Attribute ``key`` as text: a string, or bytes that are UTF-8."""
    if key not in attrs:
        raise PosteriorFileError(f"{path!r} lacks the attribute {key!r}")
    raw = attrs[key]
    if isinstance(raw, (bytes, np.bytes_)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise PosteriorFileError(f"{path!r}: attribute {key!r} is not UTF-8 text") from None
    if not isinstance(raw, str):
        raise PosteriorFileError(f"{path!r}: attribute {key!r} is not a JSON string")
    return raw


def _json_attr(attrs: Mapping[str, Any], key: str, path: str) -> Any:
    """The JSON value of attribute ``key``, parsed within the size and nesting limits.

    Raises
    ------
    PosteriorFileError
        The attribute is missing, not text, longer than
        :data:`~bayesresnet.fileformat.MAX_ATTRIBUTE_CHARS`, nested deeper than
        :data:`~bayesresnet.fileformat.MAX_JSON_DEPTH`, or not valid JSON.
    """
    raw = _text_attr(attrs, key, path)
    if len(raw) > MAX_ATTRIBUTE_CHARS:
        raise PosteriorFileError(f"{path!r}: attribute {key!r} has {len(raw)} characters; "
                                 f"at most {MAX_ATTRIBUTE_CHARS} are read")
    depth = _json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise PosteriorFileError(f"{path!r}: attribute {key!r} is JSON nested {depth} deep; "
                                 f"at most {MAX_JSON_DEPTH} levels are read")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:  # also integers of more than 4300 digits
        raise PosteriorFileError(f"{path!r}: attribute {key!r} is not valid JSON: "
                                 f"{_short(str(err), 200)}") from err


class _FileReader:
    """Checked access to an open run file: links, array headers and sizes before any data.

    The arrays of a run file are stored uncompressed and apart, so together the arrays that
    :func:`read` reads cannot hold more bytes than the file: each array's size is checked
    against what is left of that budget before it is read.
    """

    def __init__(self, path: str, handle: Any, size: int) -> None:
        self.path = path
        self.handle = handle
        self.size = size
        self._reserved = 0
        self._arrays: dict[str, np.ndarray] = {}

    def _child(self, group: Any, name: Any, what: str) -> Any:
        """The object ``name`` in ``group``, reached through an ordinary (hard) link only."""
        import h5py

        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise PosteriorFileError(f"{self.path!r}: {what} has an invalid name "
                                     f"{_short(name)}")
        with _reading(self.path):
            link = group.get(name, getlink=True)
            if link is None:
                raise PosteriorFileError(f"{self.path!r} lacks {what}")
            if not isinstance(link, h5py.HardLink):
                raise PosteriorFileError(f"{self.path!r}: {what} is a {type(link).__name__} "
                                         "to elsewhere, which run files do not hold")
            return group[name]

    def group(self, name: str) -> Any:
        """The root group ``name``."""
        import h5py

        obj = self._child(self.handle, name, f"the {name!r} group")
        if not isinstance(obj, h5py.Group):
            raise PosteriorFileError(f"{self.path!r}: {name!r} is not a group")
        return obj

    def dataset(self, group: Any, name: Any, what: str) -> Any:
        """The numeric array ``name`` in ``group``, its size charged to the file's budget."""
        import h5py

        obj = self._child(group, name, what)
        if not isinstance(obj, h5py.Dataset):
            raise PosteriorFileError(f"{self.path!r}: {what} is not an array")
        with _reading(self.path):
            shape, dtype = obj.shape, obj.dtype
            outside = bool(obj.external) or bool(obj.is_virtual)
            filters = obj.id.get_create_plist().get_nfilters()
        if shape is None or dtype.kind not in _ARRAY_KINDS or dtype.fields is not None \
                or dtype.subdtype is not None:
            raise PosteriorFileError(f"{self.path!r}: {what} is not a numeric array (shape "
                                     f"{shape}, dtype {dtype})")
        if outside:
            raise PosteriorFileError(f"{self.path!r}: {what} keeps its data outside the file")
        if filters:
            raise PosteriorFileError(f"{self.path!r}: {what} is stored compressed or "
                                     "filtered; run files are written without filters")
        nbytes = math.prod(shape) * dtype.itemsize
        if self._reserved + nbytes > self.size:
            raise PosteriorFileError(
                f"{self.path!r}: {what} declares shape {shape} of {dtype} ({nbytes} bytes), "
                f"more than the {self.size - self._reserved} bytes of the {self.size}-byte "
                "file left for it: an uncompressed run file cannot hold it")
        self._reserved += nbytes
        return obj

    def read(self, dataset: Any) -> np.ndarray:
        """The values of a dataset returned by :meth:`dataset`."""
        with _reading(self.path):
            return np.asarray(dataset[()])

    def root_array(self, name: Any) -> np.ndarray:
        """The root array ``name`` (read once, however often it is referenced)."""
        if not isinstance(name, str):
            raise PosteriorFileError(f"{self.path!r}: an array reference names no array: "
                                     f"{_short(name)}")
        if name not in self._arrays:
            self._arrays[name] = self.read(self.dataset(self.handle, name,
                                                        f"the array {name!r}"))
        return self._arrays[name]


def _array_dtype(spec: Any, name: str, path: str) -> np.dtype:
    """The dtype an array reference declares: bool, integer or float."""
    if not isinstance(spec, str):
        raise PosteriorFileError(f"{path!r}: array {name!r} has dtype {_short(spec)}, not a "
                                 "dtype string")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dtype = np.dtype(spec)
    except Exception as err:  # numpy raises TypeError, ValueError, ... for foreign strings
        raise PosteriorFileError(f"{path!r}: array {name!r} has an unknown dtype "
                                 f"{_short(spec)}") from err
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise PosteriorFileError(f"{path!r}: array {name!r} has dtype {_short(spec)}; run "
                                 "files hold bool, integer and float arrays only")
    return dtype


def _decode_array(reference: Mapping[str, Any], read_array: Callable[[Any], np.ndarray],
                  path: str) -> Any:
    """The array (or tensor) an encoded reference ``{_ARRAY_KEY: name, "dtype", "torch"}``
    stands for, checked against the stored array."""
    name = reference[_ARRAY_KEY]
    as_tensor = reference.get("torch", False)
    if not isinstance(name, str):
        raise PosteriorFileError(f"{path!r}: an array reference names no array: "
                                 f"{_short(name)}")
    if not isinstance(as_tensor, bool):
        raise PosteriorFileError(f"{path!r}: array {name!r} has a 'torch' flag "
                                 f"{_short(as_tensor)}, not true or false")
    dtype = _array_dtype(reference.get("dtype"), name, path)
    stored = read_array(name)
    if dtype.kind == "b":
        if stored.dtype.kind not in "bu" or stored.dtype.itemsize != 1 \
                or (stored.size and stored.max() > 1):
            raise PosteriorFileError(f"{path!r}: array {name!r} should hold bools as 0 and 1 "
                                     f"in uint8, but holds {stored.dtype}")
        array = stored.astype(bool)
    elif stored.dtype != dtype:
        raise PosteriorFileError(f"{path!r}: array {name!r} holds {stored.dtype} values but "
                                 f"its metadata says dtype {dtype}")
    else:
        array = stored.copy()
    if not as_tensor:
        return array
    try:
        return torch.from_numpy(array)
    except (TypeError, ValueError, RuntimeError) as err:
        raise PosteriorFileError(f"{path!r}: array {name!r} of dtype {dtype} cannot be a "
                                 f"tensor: {err}") from err


def _decode_tree(value: Any, read_array: Callable[[Any], np.ndarray], path: str) -> Any:
    """Inverse of :class:`_TreeEncoder`: ``read_array(name)`` gives the stored array ``name``.

    The recursion is as deep as the JSON, which :func:`_json_attr` bounds by
    :data:`~bayesresnet.fileformat.MAX_JSON_DEPTH`.
    """
    if isinstance(value, list):
        return [_decode_tree(v, read_array, path) for v in value]
    if not isinstance(value, dict):
        return value
    if _ARRAY_KEY in value:
        return _decode_array(value, read_array, path)
    if _TUPLE_KEY in value:
        items = value[_TUPLE_KEY]
        if not isinstance(items, list):
            raise PosteriorFileError(f"{path!r}: a stored tuple is {_short(items)}, not a "
                                     "JSON array")
        return tuple(_decode_tree(v, read_array, path) for v in items)
    return {k: _decode_tree(v, read_array, path) for k, v in value.items()}


def _check_format(attrs: Mapping[str, Any], path: str) -> None:
    """The file says it is a bayesresnet posterior of the version this module reads."""
    name = attrs.get(_FORMAT_KEY)
    if isinstance(name, (bytes, np.bytes_)):
        name = bytes(name).decode("utf-8", errors="replace")
    if not (isinstance(name, str) and name == FORMAT_NAME):
        raise PosteriorFileError(f"{path!r} is a netCDF file but not a bayesresnet posterior "
                                 f"(no {_FORMAT_KEY!r} attribute)")
    version = attrs.get(_VERSION_KEY)
    if isinstance(version, np.ndarray) and version.shape in ((), (1,)):
        version = version.reshape(())[()]  # netCDF numeric attributes are 1-element arrays
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)) \
            or int(version) != FORMAT_VERSION:
        raise PosteriorFileError(f"{path!r} has format version {_short(version)}; this "
                                 f"bayesresnet ({__version__}) reads version {FORMAT_VERSION}")


def _draw_headers(reader: _FileReader, sites: Any, path: str) -> dict[str, Any]:
    """The draws datasets of the stored ``sites``: float64, (chain, draw, ...), both >= 1."""
    if not (isinstance(sites, list) and sites and all(isinstance(s, str) for s in sites)
            and len(set(sites)) == len(sites)):
        raise PosteriorFileError(f"{path!r}: the stored sites {_short(sites)} are not a list of "
                                 "distinct names")
    group = reader.group("posterior")
    headers = {site: reader.dataset(group, site, f"the draws of site {site!r}")
               for site in sites}
    for site, dataset in headers.items():
        shape = dataset.shape
        if dataset.dtype != np.float64 or len(shape) < 2 or min(shape[:2]) < 1:
            raise PosteriorFileError(f"{path!r}: site {site!r} has shape {shape} and dtype "
                                     f"{dataset.dtype}; expected (chain, draw, ...) float64 with "
                                     "at least one chain and one draw")
    leads = {site: tuple(dataset.shape[:2]) for site, dataset in headers.items()}
    if len(set(leads.values())) != 1:
        raise PosteriorFileError(f"{path!r}: sites disagree on (chain, draw): "
                                 f"{_short(leads, 300)}")
    return headers


def _rebuild_model(config: Any, stored_values: int, path: str) -> BayesianResNet:
    """The model of ``config``, refused before it is built when its network has more
    parameters per draw than the file's draws hold (``stored_values``)."""
    if not isinstance(config, dict):
        raise PosteriorFileError(f"{path!r}: the model config is not a JSON object")
    try:
        # Networks hold no tensors: counting their parameters allocates nothing.
        net = network_from_config(config["net"])
        outputs = likelihood_from_config(config["likelihood"]).net_outputs(net.out_dim)
        if outputs != net.out_dim:
            net = net.replace(out_dim=outputs)
        size = net.num_params
    except Exception as err:  # whatever the constructors raise for values from the file
        raise PosteriorFileError(f"{path!r}: cannot rebuild the model from its config: "
                                 f"{_short(str(err), 200)}") from err
    if size > stored_values:
        raise PosteriorFileError(f"{path!r}: the model config describes a network of {size} "
                                 f"parameters, but the file's draws hold {stored_values} "
                                 "values per draw")
    if net.depth > MAX_DEPTH:
        raise PosteriorFileError(f"{path!r}: the model config describes a network of depth "
                                 f"{net.depth}; at most {MAX_DEPTH} is read")
    try:
        return BayesianResNet.from_config(config)
    except Exception as err:
        raise PosteriorFileError(f"{path!r}: cannot rebuild the model from its config: "
                                 f"{_short(str(err), 200)}") from err


def _rebuild_method(config: Any, model: BayesianResNet, path: str) -> Any:
    """The inference method of the stored settings, checked against ``model``."""
    if not isinstance(config, dict):
        raise PosteriorFileError(f"{path!r}: the method settings are not a JSON object")
    settings = dict(config)
    name = settings.pop("name", None)
    method_type = method_class(name)
    if method_type is None:
        raise PosteriorFileError(f"{path!r}: unknown inference method {_short(name)}; expected "
                                 f"one of {method_names()}")
    try:
        # from_settings maps the old names of renamed settings and fills in settings added
        # since the file was written (InferenceMethod.renamed_settings, saved_settings).
        build = getattr(method_type, "from_settings", None)
        method = build(settings) if callable(build) else method_type(**settings)
        validate = getattr(method, "validate", None)
        if callable(validate):
            validate(model)
    except Exception as err:  # whatever the constructor raises for values from the file
        raise PosteriorFileError(f"{path!r}: cannot rebuild method {name!r} from its "
                                 f"settings: {_short(str(err), 200)}") from err
    return method


def _read_draws(reader: _FileReader, headers: Mapping[str, Any], model: BayesianResNet,
                path: str) -> dict[str, Tensor]:
    """The draws of every site: shapes per the model, finite, inside the prior's support."""
    draws = {}
    for site, latent in model.latent_sites.items():
        header = headers[site]
        if tuple(header.shape[2:]) != tuple(latent.shape):
            raise PosteriorFileError(f"{path!r}: site {site!r} has shape {header.shape}; "
                                     f"expected (chain, draw, *{tuple(latent.shape)})")
        value = torch.from_numpy(np.ascontiguousarray(reader.read(header), dtype=np.float64))
        if not bool(torch.isfinite(value).all()):
            raise PosteriorFileError(f"{path!r}: site {site!r} has draws that are NaN or "
                                     "infinite")
        # Inside the support, and off its boundary: every draw has a finite point in the
        # unconstrained space of the model's flat view (a zero noise scale has none).
        with torch.no_grad():
            inside = bool(latent.support.check(value).all()) \
                and bool(torch.isfinite(latent.transform.inv(value)).all())
        if not inside:
            raise PosteriorFileError(f"{path!r}: site {site!r} has draws outside the support "
                                     f"of its prior ({latent.support}) or on its boundary")
        draws[site] = value
    return draws


def _training_data(reader: _FileReader, key: str, columns: int, rows: int | None,
                   path: str) -> np.ndarray:
    """``x_train`` or ``y_train``: finite float64 of shape (N, columns), N >= 1 (or ``rows``)."""
    value = reader.root_array(key)
    expected = f"({'N' if rows is None else rows}, {columns})"
    if value.dtype != np.float64 or value.ndim != 2 or value.shape[1] != columns \
            or value.shape[0] < 1 or (rows is not None and value.shape[0] != rows):
        raise PosteriorFileError(f"{path!r}: {key} has shape {value.shape} and dtype "
                                 f"{value.dtype}; expected {expected} float64 with at least "
                                 "one row, as many as x_train")
    if not np.isfinite(value).all():
        raise PosteriorFileError(f"{path!r}: {key} holds NaN or infinite values")
    return value


def _scaler(attrs: Mapping[str, Any], key: str, columns: int, what: str,
            path: str) -> Standardizer:
    """A stored scaler, with one column per model input (or output)."""
    state = _json_attr(attrs, f"bayesresnet_{key}", path)
    try:
        scaler = Standardizer.from_dict(state)
    except (TypeError, ValueError) as err:
        raise PosteriorFileError(f"{path!r}: {key}: {_short(str(err), 200)}") from err
    if len(scaler.mean) != columns:
        raise PosteriorFileError(f"{path!r}: {key} scales {len(scaler.mean)} columns but the "
                                 f"model has {columns} {what}")
    return scaler


def _seed(value: Any, path: str) -> int:
    """The stored seed: an integer in [0, 2**63 - 1], as ``bayesresnet.fit`` accepts."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise PosteriorFileError(f"{path!r}: the seed {_short(value)} is not an integer in "
                                 "[0, 2**63 - 1]")
    return value


def _fit_seconds(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (math.isfinite(value) and value >= 0):
        raise PosteriorFileError(f"{path!r}: fit_seconds {_short(value)} is not a finite "
                                 "number >= 0")
    return float(value)


def _names(attrs: Mapping[str, Any], key: str, count: int, path: str) -> list[str] | None:
    """Stored column names: None (or absent, in files written before names were stored), or
    ``count`` strings."""
    attr = f"bayesresnet_{key}"
    value = _json_attr(attrs, attr, path) if attr in attrs else None
    if value is not None and not (isinstance(value, list) and len(value) == count
                                  and all(isinstance(v, str) for v in value)):
        raise PosteriorFileError(f"{path!r}: {key} is {_short(value)}, not a list of {count} "
                                 "strings")
    return value


def _fit_setting(attrs: Mapping[str, Any], key: str, path: str) -> str:
    """A stored ``fit_dtype`` or ``fit_device``: a short string, or the default of
    ``_FIT_DEFAULTS`` in files written before they were stored. What the string names is
    checked by :class:`~bayesresnet.Posterior`."""
    attr = f"bayesresnet_{key}"
    if attr not in attrs:
        return _FIT_DEFAULTS[key]
    value = _json_attr(attrs, attr, path)
    if not (isinstance(value, str) and 0 < len(value) <= _MAX_FIT_SETTING_CHARS):
        raise PosteriorFileError(f"{path!r}: {key} is {_short(value)}, not a name of at most "
                                 f"{_MAX_FIT_SETTING_CHARS} characters")
    return value


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_GLOBAL_HEAP = b"GCOL"
_SCAN_CHUNK = 1 << 20


def _check_global_heaps(path: str) -> None:
    """Refuse a file whose global heap would make libhdf5 loop forever.

    The JSON attributes of a run file are variable-length strings, which HDF5 keeps in
    "global heap collections" (signature ``GCOL``). libhdf5 (at least up to 2.0.0, the version
    in h5py 3.16 wheels) decodes a collection object by object, stepping over each by its
    declared size (``H5HG__cache_heap_deserialize``): a free-space object (index 0) of size 0
    makes it step in place forever, and a size close to 2**64 makes it step backwards. This
    finds every collection in the file and walks it the same way first, raising
    PosteriorFileError for those steps; sizes that run past a collection's end are left to
    libhdf5, which reports them as errors. Real collections do not overlap, so the walks
    together take at most one step per 8 bytes of file; more means a crafted file, refused.
    The file is read in chunks (no memory map, which a file truncated meanwhile would turn
    into a SIGBUS).
    """
    with open(path, "rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        head = os.pread(fd, 16, 0)
        if len(head) < 16 or head[:8] != _HDF5_SIGNATURE:
            return  # not HDF5, or a user block first: h5py refuses it or reads it as is
        # "Size of Lengths" of the superblock: byte 14 in versions 0 and 1, else byte 10.
        width = head[14] if head[8] in (0, 1) else head[10]
        if width not in (2, 4, 8):
            return  # libhdf5 refuses the superblock
        steps_left = size // 8 + 1
        offset, tail = 0, b""
        while True:
            chunk = os.pread(fd, _SCAN_CHUNK, offset)
            if not chunk:
                return
            data = tail + chunk
            base = offset - len(tail)
            found = data.find(_GLOBAL_HEAP)
            while found >= 0:
                steps_left -= _walk_global_heap(fd, base + found, size, width, steps_left,
                                                path)
                found = data.find(_GLOBAL_HEAP, found + 1)
            tail = data[-(len(_GLOBAL_HEAP) - 1):]
            offset += len(chunk)


def _walk_global_heap(fd: int, start: int, size: int, width: int, steps_left: int,
                      path: str) -> int:
    """Step through the collection at byte ``start`` as libhdf5 does (see
    :func:`_check_global_heaps`), in at most ``steps_left`` steps; returns the steps taken."""
    header = 8 + width  # a collection's header and an object's are both this long
    head = os.pread(fd, header, start)
    if len(head) < header or head[4] != 1:
        return 0  # libhdf5 reads version 1 only
    end = start + int.from_bytes(head[8:header], "little")
    if end < start + header or end > size:
        return 0  # libhdf5 refuses it (or it is no collection, just these bytes in data)
    offset, steps = start + header, 0
    while offset + header <= end:  # a smaller tail is free space, skipped at once
        steps += 1
        if steps > steps_left:
            raise PosteriorFileError(f"{path!r} is not a readable bayesresnet posterior file: "
                                     "its global heap collections overlap")
        head = os.pread(fd, header, offset)
        if len(head) < header:
            return steps  # the file shrank meanwhile: libhdf5 reports it
        index = int.from_bytes(head[:2], "little")
        length = int.from_bytes(head[8:header], "little")
        step = length if index == 0 else (header + -(-length // 8) * 8) % 2**64
        if step == 0 or step >= 2**63:
            raise PosteriorFileError(
                f"{path!r} is not a readable bayesresnet posterior file: the global heap "
                f"collection at byte {start} is corrupt (an object of size {length} at byte "
                f"{offset})")
        if step > end - offset:
            return steps  # libhdf5 reports the overrun
        offset += step
    return steps


def _read_attributes(handle: Any, size: int, path: str) -> dict[str, Any]:
    """The root attributes :func:`read` reads, each checked for size before it is read."""
    keys = [_FORMAT_KEY, _VERSION_KEY, *(f"bayesresnet_{key}" for key in _METADATA_KEYS)]
    attrs = {}
    with _reading(path):
        for key in keys:
            if key not in handle.attrs:
                continue
            header = handle.attrs.get_id(key)
            if math.prod(header.shape or ()) * header.dtype.itemsize > size:
                raise PosteriorFileError(f"{path!r}: attribute {key!r} declares more bytes "
                                         f"than the {size}-byte file holds")
            attrs[key] = handle.attrs[key]
    return attrs


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a run written by :func:`save`: the keyword arguments of its ``Posterior``.

    :func:`bayesresnet.load` (``Posterior(**read(path))``) is how a run is loaded. Only arrays
    and JSON are read; nothing is unpickled or executed, and no link to another file is
    followed. The model is rebuilt with ``BayesianResNet.from_config`` and the method with its
    registered class (``**settings``); draws, scalers, seed, training data, stats and extra are
    restored exactly, so ``predict`` gives the same numbers as the posterior that was saved.

    Everything read is checked against the model the file describes before it is used: the
    draws (float64, ``(chain, draw, *site_shape)``, finite, inside their prior's support and
    off its boundary), the training data (finite, ``(N, in_dim)`` and ``(N, out_dim)``), the
    scalers (valid, one column per input and output), the method settings (the method's own
    checks, and those against the model), the seed (an integer in [0, 2**63 - 1]),
    ``fit_seconds`` (finite, >= 0), the column names (strings, one per column), the fit's dtype
    and device (short strings; a file written before they were stored reads as ``"float64"``
    and ``"cpu"``), and the arrays in ``stats`` and ``extra`` (bool, integer or float, as
    their metadata says).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    dict
        ``model``, ``draws``, ``stats``, ``method``, ``x_scaler``, ``y_scaler``, ``seed``,
        ``fit_seconds``, ``x_train``, ``y_train``, ``extra``, ``feature_names``,
        ``target_names``, ``fit_dtype``, ``fit_device``: the keyword arguments of
        :class:`~bayesresnet.Posterior`.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    PosteriorFileError (a ValueError)
        Not a bayesresnet posterior file, a corrupt, truncated or tampered one, or an
        unsupported format version. No other error comes from the file's contents.

    Notes
    -----
    Limits, all checked before anything they bound is allocated:

    * Arrays are written uncompressed, so every array read must be stored in the file itself
      (no external storage, no filters) and together they may declare no more bytes than the
      file has: a header that declares terabytes is refused before it is read.
    * The model is built only when its network has no more parameters per draw than the
      file's draws hold (a config naming a width of a million is refused at once), and a
      depth of at most :data:`~bayesresnet.fileformat.MAX_DEPTH`.
    * JSON attributes are parsed only up to
      :data:`~bayesresnet.fileformat.MAX_ATTRIBUTE_CHARS` characters and
      :data:`~bayesresnet.fileformat.MAX_JSON_DEPTH` levels of nesting.

    Before libhdf5 opens the file, the global heap collections (where HDF5 keeps the JSON
    attributes) are walked as libhdf5 walks them, because some corrupt ones make libhdf5 (up
    to 2.0.0 at least) loop forever; that walk reads the whole file once. libhdf5 is not
    otherwise hardened here against files crafted to attack it.

    A run file carries no checksum: a change that leaves every value valid (a digit of a
    scaler, a bit of a draw) loads as a different, valid run.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise PosteriorFileError(f"{path!r} is a folder, not a posterior file")
    if not os.path.isfile(path):
        raise PosteriorFileError(f"{path!r} is not a regular file (a pipe or a device?)")
    with _reading(path):
        size = os.path.getsize(path)
        _check_global_heaps(path)
        handle = h5py.File(path, "r")
    try:
        attrs = _read_attributes(handle, size, path)
        return _rebuild(_FileReader(path, handle, size), attrs)
    finally:
        with contextlib.suppress(Exception):
            handle.close()


def _rebuild(reader: _FileReader, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The run of an open file as Posterior's keyword arguments, each part checked before the
    next is read."""
    path = reader.path
    _check_format(attrs, path)
    headers = _draw_headers(reader, _json_attr(attrs, "bayesresnet_sites", path), path)
    stored_values = sum(math.prod(header.shape[2:]) for header in headers.values())
    model = _rebuild_model(_json_attr(attrs, "bayesresnet_model", path), stored_values, path)
    if list(headers) != list(model.latent_sites):
        raise PosteriorFileError(f"{path!r}: stored sites {_short(list(headers), 300)} do not "
                                 f"match the model's {list(model.latent_sites)}")
    method = _rebuild_method(_json_attr(attrs, "bayesresnet_method", path), model, path)
    draws = _read_draws(reader, headers, model, path)
    x_train = _training_data(reader, "x_train", model.in_dim, None, path)
    y_train = _training_data(reader, "y_train", model.out_dim, len(x_train), path)
    x_scaler = _scaler(attrs, "x_scaler", model.in_dim, "inputs", path)
    y_scaler = _scaler(attrs, "y_scaler", model.out_dim, "outputs", path)
    seed = _seed(_json_attr(attrs, "bayesresnet_seed", path), path)
    fit_seconds = _fit_seconds(_json_attr(attrs, "bayesresnet_fit_seconds", path), path)
    trees = {}
    for key in ("stats", "extra"):
        tree = _decode_tree(_json_attr(attrs, f"bayesresnet_{key}", path), reader.root_array,
                            path)
        if not isinstance(tree, dict):
            raise PosteriorFileError(f"{path!r}: {key} is not a JSON object")
        trees[key] = tree
    names = {"feature_names": _names(attrs, "feature_names", model.in_dim, path),
             "target_names": _names(attrs, "target_names", model.out_dim, path)}
    fit_settings = {key: _fit_setting(attrs, key, path) for key in _FIT_DEFAULTS}
    return {"model": model, "draws": draws, "stats": trees["stats"], "method": method,
            "x_scaler": x_scaler, "y_scaler": y_scaler, "seed": seed, "fit_seconds": fit_seconds,
            "x_train": x_train, "y_train": y_train, "extra": trees["extra"], **names,
            **fit_settings}
