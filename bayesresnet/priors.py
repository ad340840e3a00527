"""Prior families for the network's parameter sites.

A prior turns the network's parameter shapes into a list of latent sites (each a name, a shape and
a torch distribution whose event shape is that shape) and maps values of those sites back to
network parameters. Keeping both directions here lets the Pyro model, the batched log density and
the samplers share one definition.

Families: :class:`Normal` (independent Gaussians), :class:`Hierarchical` (a learned scale per
site), and priors over depth for the coefficients of any basis (:func:`depth_sites`):
:class:`RandomWalk` (a mean-reverting Gaussian random walk, or a plain one, over the depth axis
with a learned step scale), :class:`Decaying` (coefficient scales that decay with the polynomial
degree at a learned rate) and :class:`Horseshoe` (the regularized horseshoe, for sparsity). Every
structured prior is non-centered: the sampled sites are standard normals ``<site>_raw`` and
positive hyperparameters, and the network's weights are deterministic functions of them.

Naming: a prior's scalar hyperparameter sites end in ``_scale`` (``W_coef_scale``,
``W_coef_step_scale``, ``W_coef_decay_scale``, ``W_coef_global_scale``, ``W_coef_slab_scale``);
summaries, diagnostics and the ArviZ export list the scalar sites so named as identifiable
quantities, next to ``noise`` and ``f``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyro.distributions as pdist
import torch
import torch.distributions as tdist
from torch import Tensor
from torch.distributions import constraints

__all__ = [
    "NAMED",
    "Decaying",
    "Hierarchical",
    "Horseshoe",
    "LatentSite",
    "Normal",
    "Prior",
    "RandomWalk",
    "depth_sites",
    "from_name",
    "prior_from_config",
]


@dataclass(frozen=True)
class LatentSite:
    """One sampled site of the model.

    Attributes
    ----------
    name : str
        Pyro site name.
    shape : tuple of int
        Event shape of one draw.
    prior : torch.distributions.Distribution
        Prior with ``batch_shape == ()`` and ``event_shape == shape``.
    """

    name: str
    shape: tuple[int, ...]
    prior: tdist.Distribution

    @property
    def support(self) -> constraints.Constraint:
        return self.prior.support

    @property
    def transform(self) -> tdist.Transform:
        """Bijection from unconstrained reals to the site's support."""
        return tdist.biject_to(self.prior.support)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _normal(scale: float, shape: tuple[int, ...]) -> tdist.Distribution:
    zero = torch.zeros((), dtype=torch.float64)
    base = pdist.Normal(zero, zero + scale, validate_args=False)
    return base.expand(shape).to_event(len(shape))


def _half_normal(scale: float, shape: tuple[int, ...]) -> tdist.Distribution:
    base = pdist.HalfNormal(torch.tensor(scale, dtype=torch.float64), validate_args=False)
    return base.expand(shape).to_event(len(shape)) if shape else base


half_normal = _half_normal  # public name for other modules (the noise prior in likelihoods)


def _check_scale(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class Prior:
    """Base class: a prior over the network's parameters."""

    def latent_sites(self, param_shapes: Mapping[str, tuple[int, ...]]) -> list[LatentSite]:
        """The sampled sites for a network with these parameter shapes."""
        raise NotImplementedError

    def net_params(self, values: Mapping[str, Tensor],
                   param_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
        """Network parameters from latent values (each with leading sample dims)."""
        raise NotImplementedError

    def latent_from_net(self, net_params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Latent values that reproduce given network parameters (for initialization)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"priors.{type(self).__name__}({args})"


class Normal(Prior):
    """Independent Normal(0, scale) priors on every network parameter.

    Parameters
    ----------
    scale : float
        Prior standard deviation for every site.
    site_scales : mapping of site name to float, optional
        Per-site overrides, e.g. ``{"W_coef": 0.5}``.
    """

    def __init__(self, scale: float = 1.0, site_scales: Mapping[str, float] | None = None) -> None:
        self.scale = _check_scale("scale", scale)
        self.site_scales = {k: _check_scale(f"site_scales[{k!r}]", v)
                            for k, v in (site_scales or {}).items()}

    def scale_of(self, site: str) -> float:
        return self.site_scales.get(site, self.scale)

    def latent_sites(self, param_shapes: Mapping[str, tuple[int, ...]]) -> list[LatentSite]:
        unknown = set(self.site_scales) - set(param_shapes)
        if unknown:
            raise ValueError(f"site_scales names unknown sites {sorted(unknown)}; "
                             f"the network has {list(param_shapes)}")
        return [LatentSite(name, tuple(shape), _normal(self.scale_of(name), tuple(shape)))
                for name, shape in param_shapes.items()]

    def net_params(self, values, param_shapes):
        return {name: values[name] for name in param_shapes}

    def latent_from_net(self, net_params):
        return dict(net_params)

    def config(self) -> dict[str, Any]:
        return {"name": "Normal", "scale": self.scale, "site_scales": dict(self.site_scales)}


class Hierarchical(Prior):
    """A learned prior scale per site, non-centered.

    For each network site ``w``: ``w_scale ~ HalfNormal(hyper_scale)`` and
    ``w_raw ~ Normal(0, 1)`` elementwise, with ``w = w_scale * w_raw``. Samplers see the
    standardized ``w_raw``, which avoids the funnel of the centered form.

    Parameters
    ----------
    hyper_scale : float
        Scale of the half-normal hyperprior on each site's scale.
    """

    def __init__(self, hyper_scale: float = 1.0) -> None:
        self.hyper_scale = _check_scale("hyper_scale", hyper_scale)

    def latent_sites(self, param_shapes):
        sites = []
        for name, shape in param_shapes.items():
            sites.append(LatentSite(f"{name}_scale", (), _half_normal(self.hyper_scale, ())))
            sites.append(LatentSite(f"{name}_raw", tuple(shape), _normal(1.0, tuple(shape))))
        return sites

    def net_params(self, values, param_shapes):
        out = {}
        for name, shape in param_shapes.items():
            scale = values[f"{name}_scale"]
            out[name] = values[f"{name}_raw"] * scale.reshape(scale.shape + (1,) * len(shape))
        return out

    def latent_from_net(self, net_params):
        out = {}
        for name, value in net_params.items():
            scale = torch.full((), self.hyper_scale, dtype=value.dtype)
            out[f"{name}_scale"] = scale
            out[f"{name}_raw"] = value / scale
        return out

    def config(self) -> dict[str, Any]:
        return {"name": "Hierarchical", "hyper_scale": self.hyper_scale}


DEPTH_SITE_SUFFIX = "_coef"
"""Network sites whose names end in this suffix are indexed by depth (``ResNet``'s coefficients)."""

MLP_DEPTH_SITES = ("hidden_weight", "hidden_bias")
"""The ``MLP`` sites indexed by layer."""


def depth_sites(param_shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The network sites whose first axis runs over depth, in model order.

    For a :class:`~bayesresnet.resnet.ResNet` these are the basis coefficients, the sites whose
    names end in ``_coef`` (``W_coef`` of shape (K, width, width), ``b_coef`` of shape (K, width)):
    their first axis is the basis index k, which is the layer for the
    :class:`~bayesresnet.basis.Piecewise` basis and the polynomial degree for ``Monomial`` and
    ``Legendre`` bases. For an :class:`~bayesresnet.resnet.MLP` they are ``hidden_weight`` and
    ``hidden_bias``, whose first axis is the layer.

    Parameters
    ----------
    param_shapes : mapping of site name to shape

    Returns
    -------
    list of str
    """
    return [name for name, shape in param_shapes.items()
            if len(shape) >= 1 and (name.endswith(DEPTH_SITE_SUFFIX) or name in MLP_DEPTH_SITES)]


def _check_sites(sites: Any) -> tuple[str, ...] | None:
    if sites is None:
        return None
    if isinstance(sites, str):
        sites = [sites]
    if not isinstance(sites, (list, tuple)) or not sites \
            or not all(isinstance(name, str) for name in sites):
        raise ValueError(f"sites must be None or a non-empty list of site names, got {sites!r}")
    if len(set(sites)) != len(sites):
        raise ValueError(f"sites names a site twice: {list(sites)}")
    return tuple(sites)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _trailing(value: Tensor, dims: int) -> Tensor:
    """``value`` (*S,) reshaped to (*S, 1, ..., 1) with ``dims`` trailing singleton axes."""
    return value.reshape(value.shape + (1,) * dims)


class _DepthPrior(Prior):
    """A structured, non-centered prior on chosen sites and Normal(0, scale) on the others.

    Each chosen site ``w`` of shape (K, *rest) becomes the subclass's hyperparameter sites plus
    ``w_raw`` ~ Normal(0, 1) of the same shape, and ``w`` is a deterministic function of them
    (:meth:`_weights`): samplers and optimizers move in standard-normal coordinates, free of the
    funnel between a scale and the weights it scales. Every other network site keeps its name
    and a Normal(0, ``scale``) prior, as under :class:`Normal`.
    """

    def __init__(self, scale: float, sites: Any) -> None:
        self.scale = _check_scale("scale", scale)
        self.sites = _check_sites(sites)
        self._chosen: dict[tuple[Any, ...], frozenset[str]] = {}

    def structured_sites(self, param_shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
        """The network sites that get the structured prior, in model order.

        Parameters
        ----------
        param_shapes : mapping of site name to shape
            The network's parameter sites.

        Returns
        -------
        list of str
            ``sites`` if given, else :func:`depth_sites`.

        Raises
        ------
        ValueError
            If ``sites`` names a site the network lacks or a scalar site, or if the network has
            no depth-indexed site and ``sites`` is not given.
        """
        kind = type(self).__name__
        if self.sites is None:
            chosen = depth_sites(param_shapes)
            if not chosen:
                raise ValueError(f"priors.{kind}: the network has no depth-indexed site (names "
                                 f"ending in '_coef', or {list(MLP_DEPTH_SITES)}); name the "
                                 f"sites with sites=[...]; the network has {list(param_shapes)}")
            return chosen
        unknown = [name for name in self.sites if name not in param_shapes]
        if unknown:
            raise ValueError(f"priors.{kind}: sites names unknown sites {unknown}; the network "
                             f"has {list(param_shapes)}")
        scalar = [name for name in self.sites if len(param_shapes[name]) == 0]
        if scalar:
            raise ValueError(f"priors.{kind}: sites {scalar} are scalars and have no depth axis")
        return [name for name in param_shapes if name in self.sites]

    def _structured(self, param_shapes: Mapping[str, tuple[int, ...]]) -> frozenset[str]:
        # net_params runs at every sampler step: remember the choice per network layout.
        key = tuple((name, tuple(shape)) for name, shape in param_shapes.items())
        if key not in self._chosen:
            self._chosen[key] = frozenset(self.structured_sites(param_shapes))
        return self._chosen[key]

    # Subclasses define the hyperparameter sites, the map to weights and its inverse.
    def _hyper_sites(self, name: str, shape: tuple[int, ...]) -> list[LatentSite]:
        raise NotImplementedError

    def _weights(self, name: str, shape: tuple[int, ...], values: Mapping[str, Tensor]
                 ) -> Tensor:
        raise NotImplementedError

    def _latent(self, name: str, value: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def latent_sites(self, param_shapes: Mapping[str, tuple[int, ...]]) -> list[LatentSite]:
        chosen = self._structured(param_shapes)
        sites = []
        for name, shape in param_shapes.items():
            shape = tuple(shape)
            if name in chosen:
                sites.extend(self._hyper_sites(name, shape))
                sites.append(LatentSite(f"{name}_raw", shape, _normal(1.0, shape)))
            else:
                sites.append(LatentSite(name, shape, _normal(self.scale, shape)))
        return sites

    def net_params(self, values: Mapping[str, Tensor],
                   param_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
        chosen = self._structured(param_shapes)
        return {name: self._weights(name, tuple(shape), values) if name in chosen
                else values[name] for name, shape in param_shapes.items()}

    def latent_from_net(self, net_params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Latent values that reproduce ``net_params`` (one parameter set, no sample dims).

        Each hyperparameter is set to a fixed typical value (see the subclass) and the raw site
        solves for the given weights.
        """
        chosen = self._structured({name: tuple(v.shape) for name, v in net_params.items()})
        out: dict[str, Tensor] = {}
        for name, value in net_params.items():
            if name in chosen:
                out.update(self._latent(name, value))
            else:
                out[name] = value
        return out

    def _base_config(self) -> dict[str, Any]:
        return {"scale": self.scale, "sites": None if self.sites is None else list(self.sites)}


class RandomWalk(_DepthPrior):
    """A Gaussian random walk over depth with a learned step scale, non-centered.

    For each depth-indexed site ``w`` of shape (K, *rest) (see :func:`depth_sites`; the layers
    of a :class:`~bayesresnet.basis.Piecewise` ResNet) every entry follows its own walk over
    k = 0..K-1 on the normalized depth grid u_k = k / K (the layers' start times t_k over the
    horizon). The default, ``stationary=True``, is mean-reverting (a discretized
    Ornstein-Uhlenbeck process, the Gaussian process with an exponential kernel)::

        w_0 = scale * z_0,    w_k = rho * w_{k-1} + scale * sqrt(1 - rho^2) * z_k,
        rho = exp(-w_step_scale^2 / (2 scale^2 K)),    z ~ Normal(0, 1)

    so ``Cov(w_i, w_j) = scale^2 * rho^|i - j|``: its marginal scale is ``scale`` at every
    layer, and it moves from constant in depth (step scale 0, rho = 1) to independent per layer
    (large step scale, rho -> 0, which is :class:`Normal` with ``scale``). For small steps its
    increments are those of the plain walk, ``stationary=False``::

        w_0 = scale * z_0,    w_k = w_{k-1} + (w_step_scale / sqrt(K)) * z_k

    with ``Cov(w_i, w_j) = scale^2 + w_step_scale^2 * min(i, j) / K``: a Brownian motion in
    depth, whose variance grows along depth. Either way the law does not depend on how finely
    the depth is cut, and ``w_step_scale ~ HalfNormal(step_hyper_scale)`` is learned; a step
    scale near 0 makes the weights constant in depth, a large one lets neighbouring layers
    differ freely.

    The stationary walk is the default because it is the one that matched the fixed bases: on
    UCI yacht at depth 16 (Piecewise, NUTS, 20 splits; ``benchmarks/results/depth_priors.md``)
    it reached test RMSE 0.351 +- 0.033 and NLL -0.233 +- 0.069 against Linear's
    0.345 +- 0.031 and -0.175 +- 0.091, where the plain walk, whose deep layers may grow,
    overfitted (0.464 +- 0.047 and 0.394 +- 0.493).

    Latent sites for each such ``w``: ``w_step_scale`` (scalar) and ``w_raw`` (the z, shape of
    ``w``); other network sites keep their name and a Normal(0, ``scale``) prior. A run saved
    with either walk keeps it: ``config()`` records ``stationary``.

    Parameters
    ----------
    step_hyper_scale : float
        Scale of the half-normal hyperprior on each site's step scale.
    scale : float
        Prior standard deviation of the first coefficient (k = 0) and, with
        ``stationary=True``, of every coefficient; also the Normal prior scale of the other sites.
    stationary : bool
        The mean-reverting walk (default); ``False`` gives the plain random walk.
    sites : list of str, optional
        The sites to put the walk on (default :func:`depth_sites`); each site's first axis is
        the walk's axis.
    """

    def __init__(self, step_hyper_scale: float = 1.0, scale: float = 1.0,
                 stationary: bool = True, sites: list[str] | None = None) -> None:
        super().__init__(scale, sites)
        self.step_hyper_scale = _check_scale("step_hyper_scale", step_hyper_scale)
        if not isinstance(stationary, bool):
            raise ValueError(f"stationary must be True or False, got {stationary!r}")
        self.stationary = stationary

    def cholesky(self, step_scale: Tensor, size: int) -> Tensor:
        """Lower-triangular L with ``w = L z`` along the depth axis.

        Parameters
        ----------
        step_scale : tensor (*S,)
            Step scales.
        size : int
            Length K of the depth axis.

        Returns
        -------
        Tensor (*S, K, K): ``L @ L^T`` is the covariance of (w_0, ..., w_{K-1}).
        """
        dtype = step_scale.dtype
        k = torch.arange(size, device=step_scale.device)
        lag = k.unsqueeze(-1) - k
        lower = lag >= 0
        if not self.stationary:
            walk = (lower & (k >= 1)).to(dtype) / math.sqrt(size)
            level = torch.zeros(size, size, dtype=dtype, device=step_scale.device)
            level[:, 0] = self.scale
            return level + _trailing(step_scale, 2) * walk
        rate = _trailing((step_scale / self.scale) ** 2 / (2 * size), 2)  # -log rho
        powers = torch.exp(-rate * lag.clamp(min=0).to(dtype)) * lower.to(dtype)  # rho^(k-j)
        innovation = torch.sqrt(-torch.expm1(-2.0 * rate))  # sqrt(1 - rho^2), (*S, 1, 1)
        first = (k == 0).to(dtype)
        columns = first + (1.0 - first) * innovation  # (*S, 1, K)
        return self.scale * powers * columns

    def covariance(self, step_scale: float | Tensor, size: int) -> Tensor:
        """Prior covariance over the depth axis given the step scale.

        Parameters
        ----------
        step_scale : float or tensor (*S,)
        size : int
            Length K of the depth axis.

        Returns
        -------
        Tensor (*S, K, K).
        """
        factor = self.cholesky(torch.as_tensor(step_scale, dtype=torch.float64), size)
        return factor @ factor.transpose(-1, -2)

    def _hyper_sites(self, name, shape):
        return [LatentSite(f"{name}_step_scale", (), _half_normal(self.step_hyper_scale, ()))]

    def _weights(self, name, shape, values):
        raw = values[f"{name}_raw"]
        factor = self.cholesky(values[f"{name}_step_scale"], shape[0])
        batch = raw.shape[: raw.dim() - len(shape)]
        return (factor @ raw.reshape(*batch, shape[0], -1)).reshape(raw.shape)

    def _latent(self, name, value):
        """Step scale ``step_hyper_scale``; ``w_raw = L^{-1} w``."""
        step = torch.full((), self.step_hyper_scale, dtype=value.dtype)
        factor = self.cholesky(step, value.shape[0])
        raw = torch.linalg.solve_triangular(factor, value.reshape(value.shape[0], -1),
                                            upper=False)
        return {f"{name}_step_scale": step, f"{name}_raw": raw.reshape(value.shape)}

    def config(self) -> dict[str, Any]:
        return {"name": "RandomWalk", "step_hyper_scale": self.step_hyper_scale,
                "stationary": self.stationary, **self._base_config()}


class Decaying(_DepthPrior):
    """Coefficient scales that decay with the basis index at a learned rate, non-centered.

    For each depth-indexed site ``w`` of shape (K, *rest) (see :func:`depth_sites`; for a
    ``Legendre`` or ``Monomial`` basis the index k is the polynomial degree)::

        w_k = scale * exp(-k / w_decay_scale) * z_k,    z ~ Normal(0, 1),
        w_decay_scale ~ HalfNormal(decay_hyper_scale)

    ``w_decay_scale`` is the number of degrees over which the prior standard deviation falls
    by a factor e. Near 0 only the constant term is free (weights constant in depth); large
    values give every degree the scale ``scale``. The hyperprior's mode is at 0, so the higher
    degrees of a large basis stay near zero unless the data need them.

    Latent sites for each such ``w``: ``w_decay_scale`` (scalar) and ``w_raw`` (the z, shape of
    ``w``); other network sites keep their name and a Normal(0, ``scale``) prior. Meant for
    polynomial bases; on ``Piecewise`` it makes later layers smaller.

    Parameters
    ----------
    decay_hyper_scale : float
        Scale of the half-normal hyperprior on each site's decay scale.
    scale : float
        Prior standard deviation of the degree-0 coefficients and of the other sites.
    sites : list of str, optional
        The sites to put the decay on (default :func:`depth_sites`); each site's first axis is
        the index k.
    """

    def __init__(self, decay_hyper_scale: float = 2.0, scale: float = 1.0,
                 sites: list[str] | None = None) -> None:
        super().__init__(scale, sites)
        self.decay_hyper_scale = _check_scale("decay_hyper_scale", decay_hyper_scale)

    def coefficient_scales(self, decay_scale: Tensor, size: int) -> Tensor:
        """Prior standard deviation of each index k.

        Parameters
        ----------
        decay_scale : tensor (*S,)
        size : int
            Number K of coefficients.

        Returns
        -------
        Tensor (*S, K): ``scale * exp(-k / decay_scale)``.
        """
        k = torch.arange(size, dtype=decay_scale.dtype, device=decay_scale.device)
        # The clamp keeps k = 0 at exp(0) = 1 for a decay scale that underflowed to zero.
        inverse = 1.0 / decay_scale.clamp_min(torch.finfo(decay_scale.dtype).tiny)
        return self.scale * torch.exp(-k * _trailing(inverse, 1))

    def _hyper_sites(self, name, shape):
        return [LatentSite(f"{name}_decay_scale", (), _half_normal(self.decay_hyper_scale, ()))]

    def _weights(self, name, shape, values):
        scales = self.coefficient_scales(values[f"{name}_decay_scale"], shape[0])
        return values[f"{name}_raw"] * _trailing(scales, len(shape) - 1)

    def _latent(self, name, value):
        """Decay scale ``decay_hyper_scale``; ``w_raw = w / scale_k``."""
        decay = torch.full((), self.decay_hyper_scale, dtype=value.dtype)
        scales = self.coefficient_scales(decay, value.shape[0])
        return {f"{name}_decay_scale": decay,
                f"{name}_raw": value / _trailing(scales, value.dim() - 1)}

    def config(self) -> dict[str, Any]:
        return {"name": "Decaying", "decay_hyper_scale": self.decay_hyper_scale,
                **self._base_config()}


def _slab(df: float, slab_scale: float) -> tdist.Distribution:
    """The law of c with c^2 ~ InverseGamma(df / 2, df * slab_scale^2 / 2): c = X^(-1/2) with
    X ~ Gamma(df / 2, rate=df * slab_scale^2 / 2)."""
    shape = torch.tensor(df / 2, dtype=torch.float64)
    rate = torch.tensor(df * slab_scale**2 / 2, dtype=torch.float64)
    power = pdist.transforms.PowerTransform(torch.tensor(-0.5, dtype=torch.float64))
    return pdist.TransformedDistribution(pdist.Gamma(shape, rate, validate_args=False), [power],
                                         validate_args=False)


class Horseshoe(_DepthPrior):
    """The regularized horseshoe (Piironen & Vehtari 2017), non-centered: a sparsity prior.

    For each chosen site ``w`` (default: the depth-indexed sites, :func:`depth_sites`)::

        w = z * tau * lambda_tilde,    z ~ Normal(0, 1) elementwise,
        lambda_tilde^2 = c^2 lambda^2 / (c^2 + tau^2 lambda^2),
        tau ~ HalfCauchy(tau0),  lambda ~ HalfCauchy(1) elementwise,
        c^2 ~ InverseGamma(slab_df / 2, slab_df * slab_scale^2 / 2).

    A coefficient with a small local scale is shrunk to zero by the global scale tau; one with
    a large local scale escapes the shrinkage but not the slab: its scale tends to c, so large
    coefficients are regularized like Student-t(slab_df, 0, slab_scale) ones instead of left
    unbounded. The data choose which coefficients are nonzero.

    Latent sites for each such ``w``: ``w_global_scale`` (tau, scalar), ``w_slab_scale`` (c,
    scalar), ``w_local_scale`` (lambda, shape of ``w``) and ``w_raw`` (z, shape of ``w``); other
    network sites keep their name and a Normal(0, ``scale``) prior.

    The global scale's prior scale tau0 is ``global_scale`` if given, else from the expected
    fraction of nonzero coefficients f = p0 / D as in the paper, tau0 = p0 / (D - p0) *
    sigma / sqrt(n) = f / (1 - f) / sqrt(num_data) with sigma = 1 (the model sees standardized
    targets), else 0.1.

    Parameters
    ----------
    global_scale : float, optional
        tau0, the scale of the half-Cauchy prior on tau.
    nonzero_fraction : float in (0, 1), optional
        Expected fraction of nonzero coefficients (needs ``num_data``; not with
        ``global_scale``).
    num_data : int, optional
        Number of training points n, for ``nonzero_fraction``.
    slab_scale, slab_df : float
        Scale and degrees of freedom of the slab.
    scale : float
        Normal prior scale of the sites without the horseshoe.
    sites : list of str, optional
        The sites to put the horseshoe on (default :func:`depth_sites`).
    """

    DEFAULT_GLOBAL_SCALE = 0.1

    def __init__(self, global_scale: float | None = None, nonzero_fraction: float | None = None,
                 num_data: int | None = None, slab_scale: float = 2.0, slab_df: float = 4.0,
                 scale: float = 1.0, sites: list[str] | None = None) -> None:
        super().__init__(scale, sites)
        if global_scale is not None and nonzero_fraction is not None:
            raise ValueError("give global_scale or nonzero_fraction, not both")
        self.global_scale = None if global_scale is None \
            else _check_scale("global_scale", global_scale)
        self.nonzero_fraction = None
        self.num_data = None if num_data is None else _check_positive_int("num_data", num_data)
        if nonzero_fraction is not None:
            if isinstance(nonzero_fraction, bool) or not isinstance(nonzero_fraction,
                                                                    (int, float)) \
                    or not 0 < nonzero_fraction < 1:
                raise ValueError(f"nonzero_fraction must lie in (0, 1), got {nonzero_fraction!r}")
            if self.num_data is None:
                raise ValueError("nonzero_fraction needs num_data (tau0 = f / (1 - f) / "
                                 "sqrt(num_data))")
            self.nonzero_fraction = float(nonzero_fraction)
        self.slab_scale = _check_scale("slab_scale", slab_scale)
        self.slab_df = _check_scale("slab_df", slab_df)

    @property
    def tau0(self) -> float:
        """Scale of the half-Cauchy prior on each site's global scale tau."""
        if self.global_scale is not None:
            return self.global_scale
        if self.nonzero_fraction is not None:
            f = self.nonzero_fraction
            return f / (1.0 - f) / math.sqrt(self.num_data)
        return self.DEFAULT_GLOBAL_SCALE

    def effective_scales(self, global_scale: Tensor, slab_scale: Tensor, local_scale: Tensor
                         ) -> Tensor:
        """The prior standard deviation tau * lambda_tilde of each coefficient given the scales.

        Parameters
        ----------
        global_scale, slab_scale : tensor (*S, 1, ..., 1)
            tau and c, broadcastable against ``local_scale``.
        local_scale : tensor (*S, *site_shape)
            lambda.

        Returns
        -------
        Tensor (*S, *site_shape): ``c tau lambda / sqrt(c^2 + tau^2 lambda^2)``.
        """
        u = global_scale * local_scale
        return slab_scale * u / torch.hypot(slab_scale, u)

    def _hyper_sites(self, name, shape):
        local = pdist.HalfCauchy(torch.ones((), dtype=torch.float64), validate_args=False)
        return [
            LatentSite(f"{name}_global_scale", (),
                       pdist.HalfCauchy(torch.tensor(self.tau0, dtype=torch.float64),
                                        validate_args=False)),
            LatentSite(f"{name}_slab_scale", (), _slab(self.slab_df, self.slab_scale)),
            LatentSite(f"{name}_local_scale", shape, local.expand(shape).to_event(len(shape))),
        ]

    def _weights(self, name, shape, values):
        tau = _trailing(values[f"{name}_global_scale"], len(shape))
        c = _trailing(values[f"{name}_slab_scale"], len(shape))
        return values[f"{name}_raw"] * self.effective_scales(tau, c, values[f"{name}_local_scale"])

    def _latent(self, name, value):
        """tau = tau0, c = ``slab_scale``, lambda = 1; ``w_raw = w / (tau lambda_tilde)``."""
        tau = torch.full((), self.tau0, dtype=value.dtype)
        c = torch.full((), self.slab_scale, dtype=value.dtype)
        local = torch.ones_like(value)
        return {f"{name}_global_scale": tau, f"{name}_slab_scale": c,
                f"{name}_local_scale": local,
                f"{name}_raw": value / self.effective_scales(tau, c, local)}

    def config(self) -> dict[str, Any]:
        return {"name": "Horseshoe", "global_scale": self.global_scale,
                "nonzero_fraction": self.nonzero_fraction, "num_data": self.num_data,
                "slab_scale": self.slab_scale, "slab_df": self.slab_df, **self._base_config()}


PRIORS: dict[str, type[Prior]] = {"Normal": Normal, "Hierarchical": Hierarchical,
                                  "RandomWalk": RandomWalk, "Decaying": Decaying,
                                  "Horseshoe": Horseshoe}
"""Prior classes by the ``name`` of their ``config()``."""


def prior_from_config(config: Mapping[str, Any]) -> Prior:
    """Rebuild a prior from its ``config()``."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; expected one of {sorted(PRIORS)}")
    return PRIORS[name](**config)


NAMED: dict[str, type[Prior]] = {"normal": Normal, "hierarchical": Hierarchical,
                                 "random_walk": RandomWalk, "decaying": Decaying,
                                 "horseshoe": Horseshoe}
"""Prior classes by the short names that :func:`from_name` takes: the names of
``BayesianResNetRegressor(prior=...)`` and of ``bayesresnet fit --prior``."""

# The keyword argument that the ``scale`` of from_name sets, where it is not ``scale``.
_SCALE_KEYWORD: dict[type[Prior], str] = {Hierarchical: "hyper_scale"}


def from_name(name: str, scale: float = 1.0) -> Prior:
    """The prior of a short name (:data:`NAMED`) with one scale, its other settings at defaults.

    Parameters
    ----------
    name : str
        ``"normal"``, ``"hierarchical"``, ``"random_walk"``, ``"decaying"`` or
        ``"horseshoe"`` (case does not matter).
    scale : float
        A positive, finite number: the ``scale`` of :class:`Normal` and of the depth priors
        (:class:`RandomWalk`, :class:`Decaying`, :class:`Horseshoe`), the ``hyper_scale`` of
        :class:`Hierarchical`.

    Returns
    -------
    Prior

    Raises
    ------
    ValueError
        For a name not in :data:`NAMED`, or a scale that is not a positive finite number.

    Examples
    --------
    >>> from bayesresnet import priors
    >>> priors.from_name("hierarchical", 0.5)
    priors.Hierarchical(hyper_scale=0.5)
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in NAMED:
        raise ValueError(f"unknown prior {name!r}; expected one of {sorted(NAMED)}")
    prior_class = NAMED[key]
    return prior_class(**{_SCALE_KEYWORD.get(prior_class, "scale"): scale})
