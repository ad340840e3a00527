"""The one result every inference method returns, and the predictions made from it.

This module is above the modules that work on a run (:mod:`~bayesresnet.convert`,
:mod:`~bayesresnet.diagnostics`, :mod:`~bayesresnet.fileformat`, :mod:`~bayesresnet.stacking`):
those take any object with a posterior's attributes
(:data:`bayesresnet.validation.POSTERIOR_ATTRIBUTES`) and never import this module, so
:class:`Posterior`'s convenience methods call them directly and :func:`load` builds the
:class:`Posterior` of what :func:`bayesresnet.fileformat.read` read.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .arviz_compat import import_arviz
from .convert import pointwise_log_likelihood
from .convert import to_arviz as convert_to_arviz
from .data import Standardizer
from .diagnostics import KHAT_MAX, Diagnostics, diagnose
from .fileformat import PosteriorFileError, read, save
from .model import BayesianResNet
from .ode import posterior_stability
from .seeds import check_seed
from .stacking import apportion_draws, chain_elpd
from .stacking import stacking_weights as weights_of_chains
from .validation import as_float_tensor, check_inputs
from .validation import check_targets as check_targets  # importable from here, as before
from .validation import column_names as column_names  # importable from here, as before

if TYPE_CHECKING:
    from pathlib import Path

    import xarray as xr

    from .inference.base import InferenceMethod

__all__ = ["Posterior", "Prediction", "load"]

# Budget, in bytes, for the hidden states of one chunk of draws in a batched forward pass. Small
# enough for a CPU's L2 cache: with 1000 draws, chunks of this size ran about twice as fast as
# one pass over all draws (benchmarks/predict.py), whose states go out to main memory.
_CHUNK_BYTES = 1 << 21


def draws_per_chunk(net: Any, num_inputs: int, total: int) -> int:
    """How many draws one chunk of a batched forward pass at ``num_inputs`` inputs takes."""
    per_draw = 8 * num_inputs * (getattr(net, "width", 1) + 2 * net.out_dim)
    return max(1, min(total, _CHUNK_BYTES // max(per_draw, 1)))


def _checked_names(names: Any, count: int, what: str) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} must be a list of strings, got {names!r}")
    names = list(names)
    if len(names) != count:
        raise ValueError(f"{what} has {len(names)} names for {count} columns")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} has duplicate names: {names}")
    return names


# The values of Posterior.fit_dtype: the names of the dtypes bayesresnet.fit computes in.
_FIT_DTYPE_NAMES = ("float64", "float32")


def _checked_fit_dtype_device(dtype: Any, device: Any) -> tuple[str, str]:
    """``fit_dtype`` and ``fit_device`` of a Posterior: a name of ``_FIT_DTYPE_NAMES``, and a
    device string that torch parses (not necessarily a device of this machine: a run fitted on
    a GPU loads anywhere)."""
    if not isinstance(dtype, str) or dtype not in _FIT_DTYPE_NAMES:
        raise ValueError(f"fit_dtype must be one of {list(_FIT_DTYPE_NAMES)}, got {dtype!r}")
    if not isinstance(device, str):
        raise ValueError(f"fit_device must be a device string such as 'cpu' or 'cuda:0', got "
                         f"{type(device).__name__}")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"fit_device {device!r} is not a device name torch understands") \
            from None
    return dtype, device


def _power_of_two_scale(values: np.ndarray) -> np.ndarray:
    """Per (point, output), the power of two at or above the largest magnitude over draws
    (1 where all are 0 or not finite); dividing by it is exact."""
    top = np.abs(values).max(axis=0)
    top = np.where(np.isfinite(top) & (top > 0), top, 1.0)
    return np.ldexp(1.0, np.frexp(top)[1])


def _mixture_quantile(loc: Tensor, scale: Tensor, q: float, iterations: int = 60) -> Tensor:
    """Quantile q of the equal-weight Gaussian mixture over the first axis, by bisection.

    loc, scale: (M, N, k); returns (N, k).
    """
    lo = (loc - 10 * scale).amin(0)
    hi = (loc + 10 * scale).amax(0)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        cdf = torch.special.ndtr((mid - loc) / scale).mean(0)
        below = cdf < q
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class Prediction:
    """Posterior predictive at N inputs, in original units.

    Built from M posterior draws of the network mean ``f_samples`` (M, N, out_dim) and the noise
    scale ``noise_scale`` (M, N, out_dim); the predictive distribution is the equal-weight mixture
    of the M Gaussians N(f_m, noise_m^2).

    Attributes
    ----------
    mean : ndarray (N, out_dim)
        Predictive mean.
    epistemic_std : ndarray (N, out_dim)
        Standard deviation of the network mean across draws (model uncertainty).
    aleatoric_std : ndarray (N, out_dim)
        Root mean squared noise scale (data noise).
    std : ndarray (N, out_dim)
        Total predictive standard deviation, sqrt(epistemic^2 + aleatoric^2).
    f_samples : ndarray (M, N, out_dim)
        Draws of the network mean (no noise).
    samples : ndarray (M, N, out_dim)
        Draws of new observations (mean plus noise).
    noise_scale : ndarray (M, N, out_dim)
    """

    def __init__(self, f_samples: Tensor, noise_scale: Tensor, generator: torch.Generator,
                 x: np.ndarray | None = None, *, chains: int = 1,
                 input_names: list[str] | None = None,
                 output_names: list[str] | None = None) -> None:
        if chains < 1 or f_samples.shape[0] % chains:
            raise ValueError(f"{f_samples.shape[0]} draws cannot be split into {chains} chains")
        self._loc = f_samples
        self._scale = noise_scale
        self.x = x
        self.num_chains = int(chains)
        self.input_names = None if input_names is None else list(input_names)
        self.output_names = None if output_names is None else list(output_names)
        self.f_samples = f_samples.numpy()
        self.noise_scale = noise_scale.numpy()
        eps = torch.randn(f_samples.shape, generator=generator, dtype=f_samples.dtype)
        self.samples = (f_samples + noise_scale * eps).numpy()
        # Moments of values scaled by a power of two near their size: exact (the same bits as
        # unscaled) for ordinary data, and no overflow in the squares for data near 1e200.
        f_unit = _power_of_two_scale(self.f_samples)
        noise_unit = _power_of_two_scale(self.noise_scale)
        self.mean = (self.f_samples / f_unit).mean(0) * f_unit
        num = f_samples.shape[0]
        self.epistemic_std = (self.f_samples / f_unit).std(0, ddof=1) * f_unit if num > 1 \
            else np.zeros_like(self.mean)
        self.aleatoric_std = np.sqrt(((self.noise_scale / noise_unit)**2).mean(0)) * noise_unit
        total_unit = np.maximum(f_unit, noise_unit)
        self.std = np.sqrt((self.epistemic_std / total_unit)**2
                           + (self.aleatoric_std / total_unit)**2) * total_unit
        # Each interval is a bisection over the mixture; metrics and reports ask for the same
        # level several times (coverage, width, calibration), so keep the results per level.
        self._intervals: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def num_draws(self) -> int:
        return self.f_samples.shape[0]

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Central predictive interval including noise.

        Exact quantiles (to 1e-15 relative, by bisection) of the Gaussian mixture over draws.

        Returns
        -------
        lower, upper : ndarrays (N, out_dim)
        """
        if isinstance(level, (bool, np.bool_)) or not isinstance(
                level, (int, float, np.integer, np.floating)) or not 0 < float(level) < 1:
            raise ValueError(f"level must be a number in (0, 1), got {level!r}")
        level = float(level)
        if level not in self._intervals:
            tail = (1.0 - level) / 2.0
            bounds = (_mixture_quantile(self._loc, self._scale, tail).numpy(),
                      _mixture_quantile(self._loc, self._scale, 1.0 - tail).numpy())
            if not all(np.isfinite(bound).all() for bound in bounds):
                raise ValueError(f"the {level} predictive interval is not finite: the "
                                 "predictive scales overflow float64")
            self._intervals[level] = bounds
        lower, upper = self._intervals[level]
        return lower.copy(), upper.copy()

    def quantile(self, q: float) -> np.ndarray:
        """Predictive quantile q in (0, 1), shape (N, out_dim)."""
        if isinstance(q, (bool, np.bool_)) or not isinstance(
                q, (int, float, np.integer, np.floating)) or not 0 < float(q) < 1:
            raise ValueError(f"q must be a number in (0, 1), got {q!r}")
        quantile = _mixture_quantile(self._loc, self._scale, float(q)).numpy()
        if not np.isfinite(quantile).all():
            raise ValueError(f"the {float(q)} predictive quantile is not finite: the predictive "
                             "scales overflow float64")
        return quantile

    def log_density(self, y: Any) -> np.ndarray:
        """Log predictive density of observations y (N,) or (N, out_dim), per point, shape (N,).

        log (1/M) sum_m prod_j N(y_j | f_mj, noise_mj^2).
        """
        y = as_float_tensor(y, "y")
        if y.dim() == 1:
            y = y.unsqueeze(-1)
        if tuple(y.shape) != tuple(self._loc.shape[1:]):
            raise ValueError(f"y must have shape {tuple(self._loc.shape[1:])} (or (N,) for one "
                             f"output), got {tuple(y.shape)}")
        z = (y - self._loc) / self._scale
        logp = (-0.5 * z * z - torch.log(self._scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return (torch.logsumexp(logp, 0) - math.log(self.num_draws)).numpy()

    def to_xarray(self) -> xr.Dataset:
        """The prediction as an ``xarray.Dataset``, with the dim names of the ArviZ export.

        Returns
        -------
        xarray.Dataset
            Dims ``chain``, ``draw``, ``pred_id`` (the N points) and ``output``; ``input`` for
            the inputs. Variables: ``f`` and ``obs`` (chain, draw, pred_id, output), the draws of
            the network mean and of new observations (as ``predictions`` in
            :meth:`Posterior.to_arviz`); ``noise_scale`` (chain, draw, pred_id, output);
            ``mean``, ``std``, ``epistemic_std``, ``aleatoric_std``, ``lower_95``, ``upper_95``
            (pred_id, output); and ``x`` (pred_id, input), the inputs, when known. The
            ``input`` and ``output`` coordinates are the feature and target names where the
            training data had them (pandas columns, CSV headers), else 0, 1, ... When the
            prediction used a random subset of draws (``predict(num_draws=...)``), the subset
            is one chain.
        """
        import xarray as xr

        n, k = self.mean.shape
        chains = self.num_chains
        draws = self.num_draws // chains
        sample_dims = ("chain", "draw", "pred_id", "output")
        point_dims = ("pred_id", "output")

        def by_chain(values: np.ndarray) -> np.ndarray:
            return values.reshape(chains, draws, n, k)

        lower, upper = self.interval(0.95)
        data = {
            "f": (sample_dims, by_chain(self.f_samples)),
            "obs": (sample_dims, by_chain(self.samples)),
            "noise_scale": (sample_dims, by_chain(self.noise_scale)),
            "mean": (point_dims, self.mean),
            "std": (point_dims, self.std),
            "epistemic_std": (point_dims, self.epistemic_std),
            "aleatoric_std": (point_dims, self.aleatoric_std),
            "lower_95": (point_dims, lower),
            "upper_95": (point_dims, upper),
        }
        coords: dict[str, Any] = {
            "chain": np.arange(chains), "draw": np.arange(draws), "pred_id": np.arange(n),
            "output": self.output_names if self.output_names is not None else np.arange(k)}
        if self.x is not None:
            data["x"] = (("pred_id", "input"), np.asarray(self.x))
            coords["input"] = (self.input_names if self.input_names is not None
                               else np.arange(np.asarray(self.x).shape[1]))
        return xr.Dataset(data, coords=coords)

    def __repr__(self) -> str:
        n, k = self.mean.shape
        return f"Prediction(points={n}, outputs={k}, draws={self.num_draws})"


class Posterior:
    """Draws from an approximate posterior, with the data scaling and the method that made them.

    Attributes
    ----------
    model : BayesianResNet
    draws : dict site -> tensor (chain, draw, *site_shape)
        Constrained draws of every latent site (one chain for VI and ensembles).
    stats : dict
        Per-method statistics (see :class:`bayesresnet.inference.base.MethodResult`).
    method : InferenceMethod
        The configuration that produced the draws.
    x_scaler, y_scaler : Standardizer
        Maps between original units and the standardized units the model saw.
    seed : int
        The seed of the fit.
    fit_seconds : float
        Wall time of the inference run.
    x_train, y_train : ndarray (N, in_dim), (N, out_dim)
        Training data in original units.
    extra : dict
        Method-specific extras (e.g. fitted guide parameters).
    feature_names, target_names : list of str or None
        Names of the input and output columns where the training data had them (pandas
        columns, CSV headers); they label the ``input`` and ``output`` coordinates of exports.
    fit_dtype, fit_device : str
        The floating type and device the fit computed in (``fit(dtype=..., device=...)``),
        e.g. ``"float32"`` and ``"cuda:0"``; the draws are float64 on the CPU whatever they
        are. Saved with the run and recorded in the ArviZ export's attributes; a run saved
        before they were recorded loads with the defaults, ``"float64"`` and ``"cpu"``.
    """

    fit_dtype: str = "float64"
    fit_device: str = "cpu"

    def __init__(self, *, model: BayesianResNet, draws: Mapping[str, Tensor],
                 stats: Mapping[str, Any], method: InferenceMethod, x_scaler: Standardizer,
                 y_scaler: Standardizer, seed: int, fit_seconds: float, x_train: np.ndarray,
                 y_train: np.ndarray, extra: Mapping[str, Any] | None = None,
                 feature_names: list[str] | None = None,
                 target_names: list[str] | None = None, fit_dtype: str = "float64",
                 fit_device: str = "cpu") -> None:
        missing = [name for name in model.latent_sites if name not in draws]
        if missing:
            raise ValueError(f"draws are missing latent sites {missing}")
        self.model = model
        self.draws = {name: draws[name].detach().to(device="cpu", dtype=torch.float64)
                      for name in model.latent_sites}
        self.stats = dict(stats)
        self.method = method
        self.x_scaler = x_scaler
        self.y_scaler = y_scaler
        self.seed = int(seed)
        self.fit_seconds = float(fit_seconds)
        self.x_train = np.asarray(x_train, dtype=np.float64)
        self.y_train = np.asarray(y_train, dtype=np.float64).reshape(len(self.x_train), -1)
        self.extra = dict(extra or {})
        self.feature_names = _checked_names(feature_names, model.in_dim, "feature_names")
        self.target_names = _checked_names(target_names, model.out_dim, "target_names")
        self.fit_dtype, self.fit_device = _checked_fit_dtype_device(fit_dtype, fit_device)

    @property
    def num_chains(self) -> int:
        return next(iter(self.draws.values())).shape[0]

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        return next(iter(self.draws.values())).shape[1]

    def flat_draws(self, num_draws: int | None = None, seed: int | None = None
                   ) -> dict[str, Tensor]:
        """Draws with (chain, draw) merged into one axis of length M, optionally thinned.

        With ``num_draws`` < total, a random subset of that size is taken (without
        replacement, reproducibly from ``seed``, an integer in [0, 2**63 - 1]; default: the
        fit's seed); with ``num_draws`` >= total, all draws.
        """
        if num_draws is not None and (isinstance(num_draws, (bool, np.bool_)) or not isinstance(
                num_draws, (int, np.integer)) or num_draws < 1):
            raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
        seed = None if seed is None else check_seed(seed)
        total = self.num_chains * self.num_draws
        flat = {k: v.reshape((total, *v.shape[2:])) for k, v in self.draws.items()}
        if num_draws is None or num_draws >= total:
            return flat
        generator = torch.Generator().manual_seed(
            check_seed(self.seed, "Posterior.seed") if seed is None else seed)
        index = torch.randperm(total, generator=generator)[:num_draws].sort().values
        return {k: v[index] for k, v in flat.items()}

    def _loc_scale(self, values: Mapping[str, Tensor], x_scaled: Tensor, network_only: bool = False
                   ) -> tuple[Tensor, Tensor]:
        """Batched predictive mean and noise (standardized units), chunked over draws.

        A method whose predictive is not the network at the draws (e.g. a linearized Laplace
        predictive) defines ``predictive_loc_scale(model, values, x_scaled, extra)``; it is used
        here, so predictions, the export and the diagnostics all follow it.
        """
        total = next(iter(values.values())).shape[0]
        chunk = draws_per_chunk(self.model.net, x_scaled.shape[0], total)
        own = None if network_only else getattr(self.method, "predictive_loc_scale", None)
        locs, scales = [], []
        with torch.no_grad():
            for start in range(0, total, chunk):
                part = {k: v[start:start + chunk] for k, v in values.items()}
                loc, scale = (self.model.loc_scale(part, x_scaled) if own is None
                              else own(self.model, part, x_scaled, self.extra))
                locs.append(loc)
                scales.append(scale)
        return torch.cat(locs), torch.cat(scales)

    def stacking_weights(self) -> np.ndarray:
        """Stacking weights of the chains (Yao, Vehtari & Gelman 2022).

        Chains begun at distinct modes (NUTS ``init='map'``, MCLMC) rarely move between them,
        so pooling their draws with equal weights weighs each mode by how many chains happened
        to start there. Stacking weighs each chain by how well it predicts each training point
        left out: the PSIS-LOO log predictive density of every point under every chain
        (:func:`bayesresnet.stacking.chain_elpd`, from :meth:`evaluate`'s log-likelihood, so a
        method's own predictive is used where it has one), then the weights on the simplex
        that maximize the mixture's leave-one-out log score
        (:func:`bayesresnet.stacking.stacking_weights`). Use them with
        ``predict(x, weights="stacking")``.

        Returns
        -------
        ndarray (chain,)
            Non-negative weights summing to 1; ``[1.0]`` for one chain (VI, ensembles).

        Warns
        -----
        UserWarning
            When some chain's leave-one-out estimate is unreliable at some points (Pareto
            k-hat above 0.7): the weights then lean on rough estimates; more draws per chain
            help.
        """
        return self._stacking_weights(stacklevel=3)

    def _stacking_weights(self, stacklevel: int) -> np.ndarray:
        """:meth:`stacking_weights`, warning ``stacklevel`` frames up (the user's call)."""
        if self.num_chains == 1:
            return np.ones(1)
        elpd, khat = chain_elpd(pointwise_log_likelihood(self))
        bad = khat > KHAT_MAX
        if bad.any():
            warnings.warn(f"stacking weights: the leave-one-out estimate of {int(bad.sum())} of "
                          f"{bad.size} (chain, point) pairs has Pareto k-hat above {KHAT_MAX} "
                          f"(worst {float(khat.max()):.2f}), so it is unreliable; more draws per "
                          "chain help (a chain that predicts some points badly has high k-hat "
                          "there, and little weight)", UserWarning, stacklevel=stacklevel)
        return weights_of_chains(elpd)

    def _chain_weights(self, weights: Any) -> np.ndarray | None:
        """``predict``'s ``weights`` argument checked: None, or weights (chain,) summing to 1."""
        if weights is None:
            return None
        chains = self.num_chains
        if isinstance(weights, str):
            if weights != "stacking":
                raise ValueError(f"weights must be None, 'stacking' or an array of {chains} "
                                 f"per-chain weights, got {weights!r}")
            return self._stacking_weights(stacklevel=4)
        if isinstance(weights, Tensor):
            weights = weights.detach().cpu().numpy()
        array = np.asarray(weights)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"weights must be None, 'stacking' or an array of {chains} numbers, "
                             f"got {weights!r}")
        array = array.astype(np.float64)
        if array.shape != (chains,):
            raise ValueError(f"weights must have one entry per chain, shape ({chains},), got "
                             f"shape {array.shape}")
        if not np.isfinite(array).all() or (array < 0).any():
            raise ValueError(f"weights must be finite and non-negative, got {array.tolist()}")
        if not math.isclose(float(array.sum()), 1.0, abs_tol=1e-6):
            raise ValueError(f"weights must sum to 1 (to within 1e-6), got sum "
                             f"{float(array.sum())!r}")
        return array / array.sum()

    def predict(self, x: Any, num_draws: int | None = None, seed: int | None = None, *,
                weights: Any = None) -> Prediction:
        """Posterior predictive at new inputs, in original units.

        Parameters
        ----------
        x : array (N, in_dim)
            Inputs in original units.
        num_draws : int, optional
            Use a random subset of this many posterior draws (default: all). Asking for more
            draws than the posterior has uses all of them, with a warning.
        seed : int, optional
            Seeds the subset and the observation noise of ``Prediction.samples``
            (default: the fit's seed); an integer in [0, 2**63 - 1].
        weights : None, 'stacking' or array (chain,), optional
            How much each chain counts. None (default): every draw equally, so each chain in
            proportion to its draws. ``"stacking"``: :meth:`stacking_weights`. An array:
            non-negative weights of the chains, summing to 1. The prediction then uses M draws
            (``num_draws``, default all), of which chain k contributes ``round(w_k M)``
            (:func:`bayesresnet.stacking.apportion_draws`: a random subset of the chain's
            draws, reproducibly from ``seed``, each draw repeated where the chain's share
            exceeds its draws), so that its equal-weight mixture is the chain-weighted one up
            to rounding each chain's share to a multiple of 1/M. Equal weights with all draws
            give exactly the unweighted prediction. A weighted prediction with unequal shares
            is one chain in ``Prediction.to_xarray``.

        Returns
        -------
        Prediction

        Raises
        ------
        ValueError
            For invalid inputs, ``num_draws``, ``seed`` or ``weights``, and when the
            predictive mean or scale is not finite in float64 (inputs, or the data scaling, too
            large).
        """
        x = check_inputs(x, self.model.in_dim)
        seed = check_seed(self.seed, "Posterior.seed") if seed is None else check_seed(seed)
        chain_weights = self._chain_weights(weights)
        x_scaled = self.x_scaler.transform(x)
        total = self.num_chains * self.num_draws
        if chain_weights is None:
            values = self.flat_draws(num_draws, seed)
            whole = next(iter(values.values())).shape[0] == total
        else:
            self.flat_draws(num_draws)  # checks num_draws
            count = total if num_draws is None else min(int(num_draws), total)
            index = torch.as_tensor(apportion_draws(chain_weights, self.num_draws, count, seed))
            # Every draw once, in order (equal weights, all draws): the unweighted prediction.
            whole = count == total and bool((index == torch.arange(total)).all())
            values = self.flat_draws() if whole else \
                {k: v[index] for k, v in self.flat_draws().items()}
        if num_draws is not None and num_draws > total:
            warnings.warn(f"{num_draws} draws were asked for but the posterior has {total}; "
                          f"using all {total}", UserWarning, stacklevel=2)
        loc, scale = self._loc_scale(values, x_scaled)
        f_samples = self.y_scaler.inverse_transform(loc)
        noise = self.y_scaler.inverse_scale(scale)

        def overflow() -> ValueError:
            return ValueError(
                "the predictive mean or scale is not finite in float64: the inputs or the data "
                f"scaling overflowed (largest |x| {float(x.abs().max()):.3g}, output scale "
                f"{np.asarray(self.y_scaler.std).tolist()}); rescale the data")

        if not (torch.isfinite(f_samples).all() and torch.isfinite(noise).all()):
            raise overflow()
        generator = torch.Generator().manual_seed(seed + 1)
        chains = self.num_chains if whole else 1
        with np.errstate(over="ignore", invalid="ignore"):
            prediction = Prediction(f_samples, noise, generator, x=x.numpy(), chains=chains,
                                    input_names=self.feature_names,
                                    output_names=self.target_names)
        if not all(np.isfinite(array).all() for array in (
                prediction.mean, prediction.std, prediction.samples)):
            raise overflow()
        return prediction

    def evaluate(self, x: Any, y: Any = None, *, network_only: bool = False
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Network mean, noise scale and pointwise log-likelihood of every draw, original units.

        The one path that evaluates all draws (chunked to stay in cache); predictions, the
        ArviZ export and the diagnostics use it.

        Parameters
        ----------
        x : array (N, in_dim)
            Inputs in original units.
        y : array (N,) or (N, out_dim), optional
            Observations in original units.
        network_only : bool
            Run the network at the draws even when the method defines its own predictive
            (``predictive_loc_scale``, e.g. a linearized Laplace predictive); for prior draws.

        Returns
        -------
        loc, scale : tensors (chain, draw, N, out_dim)
            Mean and standard deviation of the Gaussian observation model of each draw.
        log_likelihood : tensor (chain, draw, N, out_dim) or None
            ``log N(y_ij | loc, scale^2)`` per observation and output, in original units (the
            log density of the standardized value minus the log of the output's scale); None
            without ``y``.
        """
        x = check_inputs(x, self.model.in_dim)
        values = self.flat_draws()
        loc, scale = self._loc_scale(values, self.x_scaler.transform(x), network_only)
        n, k = x.shape[0], self.model.out_dim
        shape = (self.num_chains, self.num_draws, n, k)
        loc = self.y_scaler.inverse_transform(loc).reshape(shape)
        scale = self.y_scaler.inverse_scale(scale).reshape(shape)
        if y is None:
            return loc, scale, None
        y = as_float_tensor(y, "y")
        if y.dim() == 1:
            y = y.unsqueeze(-1)
        if tuple(y.shape) != (n, k):
            raise ValueError(f"y must have shape ({n},) or ({n}, {k}) to match x, got "
                             f"{tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("y contains NaN or inf values")
        z = (y - loc) / scale
        log_likelihood = -0.5 * z * z - torch.log(scale) - 0.5 * math.log(2 * math.pi)
        return loc, scale, log_likelihood

    def summary(self, var_names: list[str] | None = None, **kwargs: Any) -> Any:
        """ArviZ's summary table of the identifiable quantities.

        The network's raw coefficients are not identifiable (permutation and sign symmetries
        of the hidden units), so their R-hat and ESS say nothing about convergence. By default
        the table lists what is: ``f`` (the network mean at the training inputs, original
        units), the ``noise`` and the prior's hyperparameters (sites ending in ``_scale``).

        Parameters
        ----------
        var_names : list of str, optional
            Variables of the ``posterior`` group to list instead (raw sites included).
        **kwargs
            Passed to ``arviz.summary``.

        Returns
        -------
        pandas.DataFrame
        """
        data = self.to_arviz(predictive=False, prior=False)
        if var_names is None:
            var_names = [name for name, value in self.draws.items() if name == "noise"
                         or (name.endswith("_scale") and value.dim() == 2)] + ["f"]
        return import_arviz().summary(data, var_names=var_names, **kwargs)

    def __repr__(self) -> str:
        return (f"Posterior(method={self.method.name}, chains={self.num_chains}, "
                f"draws={self.num_draws}, params={self.model.dim}, "
                f"fit_seconds={self.fit_seconds:.1f})")

    def to_arviz(self, x_new: Any = None, y_new: Any = None, predictive: bool = True,
                 prior: bool = True, prior_draws: int = 500) -> Any:
        """The run as ArviZ data (``InferenceData`` on ArviZ 0.x, ``DataTree`` on 1.x).

        See :func:`bayesresnet.convert.to_arviz` for the groups, dims and units.
        """
        return convert_to_arviz(self, x_new=x_new, y_new=y_new, predictive=predictive, prior=prior,
                        prior_draws=prior_draws)

    def diagnose(self) -> Diagnostics:
        """Convergence checks for this run; see :func:`bayesresnet.diagnostics.diagnose`."""
        return diagnose(self)

    def stability(self, x: Any, **options: Any) -> xr.Dataset:
        """Posterior of the layer Jacobians' eigenvalues along the trajectories of ``x``
        (original units) and the probability that the Euler steps are stable; see
        :func:`bayesresnet.ode.posterior_stability` (``options``: ``thin``, ``scheme``,
        ``level``, ``tolerance``, ``eigenvalues``)."""
        return posterior_stability(self, x, **options)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this posterior to one netCDF file; see :func:`bayesresnet.fileformat.save`."""
        return save(self, path)


def load(path: str | os.PathLike) -> Posterior:
    """Read a posterior saved by :meth:`bayesresnet.Posterior.save`.

    The file is read and every part of it checked by :func:`bayesresnet.fileformat.read` (only
    arrays and JSON; nothing is unpickled or executed; see there for the checks and limits), so
    ``predict`` gives the same numbers as the posterior that was saved.

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
        Not a bayesresnet posterior file, a corrupt, truncated or tampered one, or an
        unsupported format version. No other error comes from the file's contents.
    """
    record = read(path)
    try:
        return Posterior(**record)
    except ValueError as err:
        raise PosteriorFileError(f"{os.fspath(path)!r}: inconsistent run: {err}") from err
