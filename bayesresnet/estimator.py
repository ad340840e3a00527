"""A scikit-learn regressor around :func:`bayesresnet.fit`.

:class:`BayesianResNetRegressor` builds a :class:`~bayesresnet.ResNet`, a
:class:`~bayesresnet.BayesianResNet` and an inference method from plain, clonable parameters,
so the Bayesian ResNet works wherever scikit-learn expects a regressor: in a ``Pipeline``, in
``cross_val_score`` and in ``GridSearchCV``. scikit-learn is an optional dependency of
bayesresnet (``pip install "bayesresnet[sklearn]"``); ``import bayesresnet`` never needs it.
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as error:
    raise ImportError(
        "bayesresnet.BayesianResNetRegressor needs scikit-learn >= 1.6, an optional dependency; "
        'install it with: pip install "bayesresnet[sklearn]"'
    ) from error

from . import likelihoods as _likelihoods
from . import priors as _priors
from .basis import Basis, get_basis
from .inference.base import InferenceMethod
from .inference.fit import FIT_DTYPES, METHODS, check_dtype_device, fit
from .model import BayesianResNet
from .resnet import ResNet

__all__ = ["BayesianResNetRegressor"]

PRIORS = _priors.NAMED
"""Prior names accepted by ``BayesianResNetRegressor(prior=...)``: the registry
:data:`bayesresnet.priors.NAMED` itself (this name is kept for code that imported it from
here); a name becomes a prior through :func:`bayesresnet.priors.from_name` with
``prior_scale``."""

LIKELIHOODS = {"gaussian": {}, "heteroscedastic": {"heteroscedastic": True}}
"""Likelihood names accepted by ``BayesianResNetRegressor(likelihood=...)``, with the arguments
of :class:`~bayesresnet.likelihoods.Gaussian` that each stands for."""

EXPECTED_FAILED_CHECKS: dict[str, str] = {}
"""scikit-learn estimator checks that :class:`BayesianResNetRegressor` is known to fail, with
the reason: the ``expected_failed_checks`` argument of scikit-learn's ``check_estimator`` and
``parametrize_with_checks``. Empty: every check that scikit-learn runs on a regressor passes
(see the Notes of :class:`BayesianResNetRegressor`)."""


def _as_int(name: str, value: Any) -> int:
    """A Python int from any integral, non-bool value (e.g. a NumPy integer from a grid)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    """A Python float from any real, non-bool value."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise ValueError(f"{name} must be a positive number, got {value!r}")


DTYPES: dict[str, torch.dtype] = {str(dtype).removeprefix("torch."): dtype
                                  for dtype in FIT_DTYPES}
"""The names ``BayesianResNetRegressor(dtype=...)`` accepts, with the torch dtype of each."""


def _as_torch_dtype(value: Any) -> torch.dtype:
    """The torch dtype of ``dtype=``: a name of :data:`DTYPES` or one of its torch dtypes."""
    if isinstance(value, torch.dtype) and value in FIT_DTYPES:
        return value
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    names = " or ".join(repr(name) for name in DTYPES)
    raise ValueError(f"dtype must be {names} (or the torch dtype of one), got {value!r}")


class BayesianResNetRegressor(RegressorMixin, BaseEstimator):
    """Bayesian weight-parameterized ResNet regression, as a scikit-learn estimator.

    ``fit`` builds ``ResNet(n_features, n_outputs, width, depth, basis, activation, horizon,
    integrator, rank)``, puts the prior and likelihood on it (a
    :class:`~bayesresnet.BayesianResNet`) and runs :func:`bayesresnet.fit` with ``method``,
    ``dtype`` and ``device``; the result is kept as ``posterior_``.
    ``predict`` returns the posterior predictive mean, and with ``return_std=True`` the total
    predictive standard deviation (epistemic and noise), both in the units of ``y``.

    Parameters
    ----------
    width : int, default=16
        Hidden state size of the ResNet.
    depth : int, default=8
        Number of residual steps L.
    basis : str or Basis, default="linear"
        Depth basis of the weights: ``"piecewise"`` (one matrix per layer, the ordinary ResNet),
        ``"constant"``, ``"linear"``, ``"cubic"``, ``"legendre<k>"`` (e.g. ``"legendre2"``),
        ``"monomial<k>"``, or a basis object such as ``bayesresnet.Legendre(3)``.
    activation : {"tanh", "relu", "silu", "identity"}, default="tanh"
        Activation of the residual vector field.
    horizon : float, default=1.0
        Final time T of the ODE that the ResNet integrates.
    integrator : {"euler", "midpoint", "rk4"}, default="euler"
        Scheme of the residual steps; ``"euler"`` is the ResNet.
    prior : {"normal", "hierarchical", "random_walk", "decaying", "horseshoe"} or Prior, \
default="normal"
        Prior on the network's parameters: ``"normal"`` is
        ``priors.Normal(prior_scale)``, ``"hierarchical"`` is
        ``priors.Hierarchical(hyper_scale=prior_scale)``, and the depth priors
        ``"random_walk"``, ``"decaying"`` and ``"horseshoe"`` are ``priors.RandomWalk``,
        ``priors.Decaying`` and ``priors.Horseshoe`` with ``scale=prior_scale`` and their other
        settings at their defaults (:func:`bayesresnet.priors.from_name`; the random walk is
        then the stationary one); or a prior object from :mod:`bayesresnet.priors`, used as
        given.
    prior_scale : float, default=1.0
        Scale of a prior given by name (in standardized units when ``standardize=True``). Must be
        left at 1.0 when ``prior`` is an object, which carries its own scale.
    likelihood : {"gaussian", "heteroscedastic"} or Gaussian, default="gaussian"
        Observation model: ``"gaussian"`` learns one noise scale per output,
        ``"heteroscedastic"`` lets the network predict the noise scale of each input; or a
        :class:`bayesresnet.likelihoods.Gaussian` object (e.g. with a fixed ``noise``).
    method : str or InferenceMethod, default="ensemble"
        Inference method: a name of :data:`bayesresnet.inference.fit.METHODS` (``"nuts"``,
        ``"meanfield"``, ``"lowrank"``, ``"ensemble"``, ``"map"``), configured by
        ``method_params``; or a method object such as ``bayesresnet.Ensemble(members=4,
        steps=500)``.
    method_params : dict, default=None
        Settings of the method class when ``method`` is a name, e.g. ``{"members": 4, "steps":
        500}`` for ``"ensemble"`` or ``{"num_samples": 200, "chains": 4}`` for ``"nuts"``.
        Must be empty when ``method`` is an object.
    standardize : bool, default=True
        Standardize ``X`` and ``y`` on the training data before inference. Predictions are in
        the units of ``y`` either way.
    random_state : int, RandomState instance or None, default=None
        Seed of the fit. An int in [0, 2**32) is passed as ``seed`` to
        :func:`bayesresnet.fit`, so ``random_state=0`` reproduces ``bayesresnet.fit(...,
        seed=0)``; a ``numpy.random.RandomState`` or None (NumPy's global generator) supplies
        a seed drawn from it at each ``fit``.
    progress : bool, default=False
        Show progress bars during inference.
    check : bool, default=False
        Run the convergence diagnostics after inference and issue a
        :class:`bayesresnet.ConvergenceWarning` when a check fails.
    rank : int or None, default=None
        Rank of the hidden weights, W(t) = U(t) V(t)^T (``ResNet(rank=...)``); None is dense.
    dtype : {"float64", "float32"} or torch.dtype, default="float64"
        Floating type the fit computes in (``dtype=`` of :func:`bayesresnet.fit`):
        ``"float32"`` (or ``torch.float32``) is faster per gradient on large data, with
        float32 rounding. The posterior's draws and the predictions are float64 either way.
    device : str or torch.device, default="cpu"
        Where the fit computes (``device=`` of :func:`bayesresnet.fit`): ``"cpu"`` or a CUDA
        device such as ``"cuda"`` or ``"cuda:1"``; ``fit`` raises a ValueError for a device
        that this machine does not have. Prediction runs on the CPU.

    Attributes
    ----------
    posterior_ : Posterior
        The approximate posterior: draws, diagnostics (``posterior_.diagnose()``), ArviZ export
        (``posterior_.to_arviz()``), full predictive distributions (``posterior_.predict(X)``,
        with intervals and samples; ``X`` as a NumPy array of shape (n_samples, n_features)).
    model_ : BayesianResNet
        The model that was fitted (network, prior and likelihood).
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of the features seen during ``fit``. Defined only when ``X`` has feature names
        that are all strings (e.g. a pandas DataFrame).
    n_outputs_ : int
        Number of outputs (columns of ``y``) seen during ``fit``.

    See Also
    --------
    bayesresnet.fit : The function this estimator calls, with every option.

    Notes
    -----
    scikit-learn compatibility: every check of scikit-learn's ``check_estimator`` that applies
    to a regressor passes, with each inference method, so the estimator declares no expected
    failure (``EXPECTED_FAILED_CHECKS`` is empty; checked with scikit-learn 1.9). Not run:

    - ``check_array_api_input``: scikit-learn skips it unless the environment variable
      ``SCIPY_ARRAY_API=1`` is set before SciPy is imported; with it set, it passes. The
      estimator takes NumPy-convertible inputs and does not declare array-API support.
    - The sample-weight checks: ``fit`` takes no ``sample_weight``, so scikit-learn does not
      generate them.
    - Checks for classifiers, transformers, clusterers, ``partial_fit`` and ``max_iter``: they
      do not apply.

    The tags declare multi-output support: a 2-D ``y`` of shape (n_samples, n_outputs) fits
    one network with ``n_outputs`` outputs and one noise scale per output. The tags do not
    declare ``poor_score``: ``check_regressors_train`` asks for R^2 > 0.5 on its training data,
    which a fit with a sensible budget reaches; a very small one (say 100 optimizer steps with
    a heteroscedastic likelihood) can miss it. Checks that compare two fits (idempotence,
    pickling, pipelines, sample order) need an int ``random_state``; with None every ``fit``
    draws a new seed, as scikit-learn's convention asks. The fit computes in ``dtype`` (float64
    by default) whatever the dtype of ``X``, and predictions are float64.

    ``score`` is the coefficient of determination R^2 of the predictive mean (averaged over
    outputs); it does not judge the predictive uncertainty, for which see
    :mod:`bayesresnet.metrics` (NLL, coverage, CRPS) on ``posterior_.predict(X)``.

    Examples
    --------
    >>> import bayesresnet as brn
    >>> x, y = brn.data.cubic(40, seed=0)
    >>> est = brn.BayesianResNetRegressor(width=8, depth=4, method="map",
    ...                                   method_params={"steps": 500}, random_state=0)
    >>> mean, std = est.fit(x, y).predict(x, return_std=True)
    >>> mean.shape, std.shape
    ((40,), (40,))
    """

    def __init__(
        self,
        width: int = 16,
        depth: int = 8,
        basis: str | Basis = "linear",
        activation: str = "tanh",
        horizon: float = 1.0,
        integrator: str = "euler",
        prior: str | _priors.Prior = "normal",
        prior_scale: float = 1.0,
        likelihood: str | _likelihoods.Gaussian = "gaussian",
        method: str | InferenceMethod = "ensemble",
        method_params: Mapping[str, Any] | None = None,
        standardize: bool = True,
        random_state: int | np.random.RandomState | None = None,
        progress: bool = False,
        check: bool = False,
        rank: int | None = None,
        dtype: str | torch.dtype = "float64",
        device: str | torch.device = "cpu",
    ) -> None:
        self.width = width
        self.depth = depth
        self.basis = basis
        self.activation = activation
        self.horizon = horizon
        self.integrator = integrator
        self.prior = prior
        self.prior_scale = prior_scale
        self.likelihood = likelihood
        self.method = method
        self.method_params = method_params
        self.standardize = standardize
        self.random_state = random_state
        self.progress = progress
        self.check = check
        self.rank = rank
        self.dtype = dtype
        self.device = device

    # ------------------------------------------------------------------ parameters to objects
    def _make_basis(self) -> Basis:
        if isinstance(self.basis, Basis):
            return copy.deepcopy(self.basis)
        return get_basis(self.basis)

    def _make_prior(self) -> _priors.Prior:
        if isinstance(self.prior, _priors.Prior):
            if _as_float("prior_scale", self.prior_scale) != 1.0:
                raise ValueError(
                    f"prior_scale={self.prior_scale!r} applies to a prior given by name; "
                    f"the prior object {self.prior!r} carries its own scale"
                )
            return copy.deepcopy(self.prior)
        key = self.prior.lower() if isinstance(self.prior, str) else None
        if key not in _priors.NAMED:
            raise ValueError(
                f"prior must be one of {sorted(_priors.NAMED)} or a bayesresnet.priors.Prior, "
                f"got {self.prior!r}"
            )
        return _priors.from_name(key, _as_float("prior_scale", self.prior_scale))

    def _make_likelihood(self) -> _likelihoods.Gaussian:
        if isinstance(self.likelihood, _likelihoods.Gaussian):
            return copy.deepcopy(self.likelihood)
        key = self.likelihood.lower() if isinstance(self.likelihood, str) else None
        if key not in LIKELIHOODS:
            raise ValueError(
                f"likelihood must be one of {sorted(LIKELIHOODS)} or a "
                f"bayesresnet.likelihoods.Gaussian, got {self.likelihood!r}"
            )
        return _likelihoods.Gaussian(**LIKELIHOODS[key])

    def _make_method(self) -> InferenceMethod:
        settings = self.method_params
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"method_params must be a dict or None, got {settings!r}")
        settings = dict(settings or {})
        if isinstance(self.method, InferenceMethod):
            if settings:
                raise ValueError(
                    "method_params configures a method given by name; the method object "
                    f"{self.method!r} carries its own settings"
                )
            return copy.deepcopy(self.method)
        key = self.method.lower() if isinstance(self.method, str) else None
        if key not in METHODS:
            raise ValueError(
                f"method must be one of {sorted(METHODS)} or a method object such as "
                f"bayesresnet.Ensemble(...), got {self.method!r}"
            )
        cls = METHODS[key]
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(
                f"method_params has settings {unknown} that {cls.__name__} does not take; "
                f"its settings are {known}"
            )
        return cls(**settings)

    def _make_network(self, in_dim: int, out_dim: int) -> ResNet:
        for name in ("activation", "integrator"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a name, got {getattr(self, name)!r}")
        return ResNet(
            in_dim,
            out_dim,
            width=_as_int("width", self.width),
            depth=_as_int("depth", self.depth),
            basis=self._make_basis(),
            activation=self.activation,
            horizon=_as_float("horizon", self.horizon),
            integrator=self.integrator,
            rank=None if self.rank is None else _as_int("rank", self.rank),
        )

    def _seed(self) -> int:
        state = self.random_state
        if isinstance(state, numbers.Integral) and not isinstance(state, (bool, np.bool_)):
            if not 0 <= state < 2**32:
                raise ValueError(f"random_state must be in [0, 2**32), got {state!r}")
            return int(state)
        # None (NumPy's global generator) or a RandomState; check_random_state rejects the rest.
        return int(check_random_state(state).randint(np.iinfo(np.int32).max))

    # ------------------------------------------------------------------ estimator API
    def fit(self, X: Any, y: Any) -> BayesianResNetRegressor:
        """Approximate the posterior of the Bayesian ResNet given training data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (a pandas DataFrame records ``feature_names_in_``).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Training targets; a 2-D ``y`` fits one network with ``n_outputs`` outputs.

        Returns
        -------
        self : BayesianResNetRegressor
            The fitted estimator.
        """
        prior = self._make_prior()
        likelihood = self._make_likelihood()
        method = self._make_method()
        dtype, device = check_dtype_device(_as_torch_dtype(self.dtype), self.device)
        for name in ("standardize", "progress", "check"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        y_2d = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        net = self._make_network(X.shape[1], y_2d.shape[1])
        model = BayesianResNet(net, prior=prior, likelihood=likelihood)
        posterior = fit(model, X, y_2d, method=method, seed=self._seed(),
                        standardize=bool(self.standardize), progress=bool(self.progress),
                        check=bool(self.check), dtype=dtype, device=device)
        self.model_ = model
        self.posterior_ = posterior
        self.n_outputs_ = y_2d.shape[1]
        self._y_ndim = np.ndim(y)
        return self

    def predict(self, X: Any, return_std: bool = False) -> np.ndarray | tuple[np.ndarray,
                                                                               np.ndarray]:
        """Posterior predictive mean, and optionally its standard deviation, at new inputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs, with the features (and feature names, if any) seen in ``fit``.
        return_std : bool, default=False
            Also return the total predictive standard deviation: the spread of the network
            mean across posterior draws (epistemic) combined with the noise scale (aleatoric),
            ``sqrt(epistemic_std**2 + aleatoric_std**2)`` of :class:`bayesresnet.Prediction`.

        Returns
        -------
        y_mean : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predictive mean in the units of ``y``; 1-D when ``y`` was 1-D in ``fit``.
        y_std : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predictive standard deviation in the units of ``y``. Only when ``return_std``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        prediction = self.posterior_.predict(X)
        mean, std = prediction.mean, prediction.std
        if self._y_ndim == 1:
            mean, std = mean[:, 0], std[:, 0]
        return (mean, std) if return_std else mean

    # ------------------------------------------------------------------ scikit-learn tags
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        return tags
