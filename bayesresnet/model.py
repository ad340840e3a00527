"""The Bayesian ResNet: a Pyro model and the same density as batched tensor functions.

Two views of one joint density p(theta, y | x):

* ``BayesianResNet(x, y)`` is a Pyro model (a ``PyroModule``): each latent site is sampled from
  its prior, the network runs, and ``obs`` is observed inside a ``data`` plate. Pyro's autoguides,
  ``Predictive`` and ``poutine`` work on it unchanged.
* ``log_joint``, ``log_likelihood`` and ``log_density`` evaluate the same density for parameter
  dicts (or flat vectors) with any leading sample dimensions S, in one batched tensor program.

Flat unconstrained view (what samplers and optimizers move in). The latent sites, in the order of
``latent_sites``, are mapped to unconstrained reals with ``torch.distributions.biject_to`` of each
prior's support (identity for real sites, ``exp`` for positive ones), flattened in row-major order
and concatenated into one vector z of length ``dim``. ``constrain(z)`` returns the constrained
values and the log absolute determinant of the Jacobian of that map, and

    log_density(z, x, y) = log_joint(constrain(z), x, y) + log|det J(z)|,

the density of z that MCMC targets.

Units: the model works in standardized units. ``bayesresnet.fit`` standardizes x and y (each
column to mean 0, standard deviation 1) before the model sees them, so a ``Posterior``'s draws
are parameters of the standardized model. Running the Pyro model yourself (``Predictive``,
``poutine``, your own MCMC or SVI) needs standardized data too: ``pyro.infer.Predictive`` with a
posterior's draws on raw inputs runs without error and returns silently wrong values. Use
``Posterior.predict`` (original units in and out), or transform with the posterior's scalers, as
in the example of :class:`BayesianResNet`; to run your own inference and wrap it in a
``Posterior``, see :mod:`bayesresnet.pyro_interop` (``standardize`` and ``from_pyro``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor
from torch.distributions import constraints

from . import likelihoods as _likelihoods
from . import priors as _priors
from .globalstate import global_state_lock
from .resnet import Network

__all__ = ["BayesianResNet"]


def _as_2d_targets(y: Tensor, out_dim: int) -> Tensor:
    if y.dim() == 1:
        y = y.unsqueeze(-1)
    if y.dim() != 2 or y.shape[-1] != out_dim:
        raise ValueError(f"y must have shape (N,) or (N, {out_dim}), got {tuple(y.shape)}")
    return y


class BayesianResNet(PyroModule):
    """Priors on a network's parameters plus a likelihood: a Pyro model with batched densities.

    Parameters
    ----------
    net : ResNet or MLP
        The architecture. With a heteroscedastic likelihood the model uses a copy of ``net``
        whose output layer is doubled (mean and log-scale per output); ``out_dim`` stays the
        number of observed outputs.
    prior : Prior
        :class:`~bayesresnet.priors.Normal` (default scale 1),
        :class:`~bayesresnet.priors.Hierarchical`, or a prior over depth:
        :class:`~bayesresnet.priors.RandomWalk`, :class:`~bayesresnet.priors.Decaying`,
        :class:`~bayesresnet.priors.Horseshoe` (see :doc:`/depth_priors`). Structured priors are
        non-centered: their latent sites (``<site>_raw`` and hyperparameters) differ from the
        network's parameter sites, which :meth:`net_params` computes from them.
    likelihood : likelihoods.Gaussian
        Observation model (default: one learned noise scale per output).

    Notes
    -----
    **Units.** The model sees standardized data: ``fit`` maps x and y to zero mean and unit
    standard deviation per column (``Posterior.x_scaler``, ``Posterior.y_scaler``), and the
    draws of a ``Posterior`` belong to that standardized model. ``pyro.infer.Predictive`` on
    raw inputs is therefore wrong, without any error. Use ``post.predict(x_new)``, or
    standardize the inputs and map the outputs back::

        from pyro.infer import Predictive

        x_scaled = post.x_scaler.transform(torch.as_tensor(x_new, dtype=torch.float64))
        out = Predictive(model, posterior_samples=post.flat_draws(),
                         return_sites=["_RETURN", "obs"])(x_scaled)
        f = post.y_scaler.inverse_transform(out["_RETURN"])  # (M, N, out_dim) network means
        y_rep = post.y_scaler.inverse_transform(out["obs"])  # (M, N, out_dim) new observations

    ``f`` equals ``post.predict(x_new).f_samples``.

    Your own MCMC or SVI must run on the standardized data as well:
    ``x_scaled, y_scaled, _, _ = bayesresnet.pyro_interop.standardize(model, x, y)``, then
    ``bayesresnet.from_pyro(model, x, y, samples=...)`` (or ``guide=...``) makes a
    ``Posterior`` of the run with the same scalers.
    """

    max_plate_nesting: int = 1
    """Plates of the Pyro model: the data plate only (dim -1). Inference passes it to Pyro so
    Pyro need not guess it from a trial run."""

    def __init__(self, net: Network, prior: _priors.Prior | None = None,
                 likelihood: _likelihoods.Gaussian | None = None) -> None:
        super().__init__(name="")
        if not isinstance(net, Network):
            raise ValueError(f"net must be a ResNet or MLP, got {type(net).__name__}")
        prior = _priors.Normal(1.0) if prior is None else prior
        likelihood = _likelihoods.Gaussian() if likelihood is None else likelihood
        if not isinstance(prior, _priors.Prior):
            raise ValueError(f"prior must be a bayesresnet.priors.Prior, got {prior!r}")
        if not isinstance(likelihood, _likelihoods.Gaussian):
            raise ValueError(f"likelihood must be a bayesresnet.likelihoods.Gaussian, "
                             f"got {likelihood!r}")
        self.user_net = net
        self.out_dim = net.out_dim
        self.in_dim = net.in_dim
        wanted = likelihood.net_outputs(net.out_dim)
        self.net = net if wanted == net.out_dim else net.replace(out_dim=wanted)
        self.prior = prior
        self.likelihood = likelihood
        sites = prior.latent_sites(self.net.param_shapes) + likelihood.latent_sites(net.out_dim)
        self._sites: OrderedDict[str, _priors.LatentSite] = OrderedDict((s.name, s) for s in sites)
        self._offsets: dict[str, tuple[int, int]] = {}
        start = 0
        for site in sites:
            self._offsets[site.name] = (start, start + site.numel)
            start += site.numel
        self.dim = start
        self._normal_block = _NormalBlock.of(self._sites, self._offsets)

    # ------------------------------------------------------------------ structure
    @property
    def latent_sites(self) -> OrderedDict[str, _priors.LatentSite]:
        """Sampled sites in model order: name -> :class:`~bayesresnet.priors.LatentSite`."""
        return self._sites

    @property
    def latent_shapes(self) -> OrderedDict[str, tuple[int, ...]]:
        """Sampled site name -> event shape."""
        return OrderedDict((name, site.shape) for name, site in self._sites.items())

    def flat_slices(self) -> dict[str, tuple[int, int]]:
        """Start and stop of each site in the flat vector."""
        return dict(self._offsets)

    def net_params(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Network parameters from latent values, each (*S, *param_shape) for values with
        leading sample dims S (identity for the Normal prior)."""
        return self.prior.net_params(values, self.net.param_shapes)

    def config(self) -> dict[str, Any]:
        """JSON-serializable description of net, prior and likelihood."""
        return {"net": self.user_net.config(), "prior": self.prior.config(),
                "likelihood": self.likelihood.config()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BayesianResNet:
        from .resnet import network_from_config

        return cls(network_from_config(config["net"]),
                   _priors.prior_from_config(config["prior"]),
                   _likelihoods.likelihood_from_config(config["likelihood"]))

    # ------------------------------------------------------------------ Pyro model
    def forward(self, x: Tensor, y: Tensor | None = None, *, subsample_size: int | None = None,
                subsample: Tensor | None = None) -> Tensor:
        """The Pyro model. ``x`` (N, in_dim); ``y`` (N,) or (N, out_dim) or None.

        Returns the network's mean output, shape (*S, N, out_dim) (B in place of N with a
        subsample).

        ``subsample_size`` (B) or ``subsample`` (B indices) are passed to the ``data`` plate
        (``pyro.plate``): the model then observes only those points and Pyro scales their log
        likelihood by N / B, an unbiased estimate of the full data's (minibatch VI).

        ``x`` and ``y`` are in the model's standardized units, not the data's original units:
        pass ``post.x_scaler.transform(x)`` (and map outputs back with
        ``post.y_scaler.inverse_transform``), or the data from
        ``bayesresnet.pyro_interop.standardize``; see the class notes.
        """
        priors = self.site_priors(x)
        values = {name: pyro.sample(name, priors[name]) for name in self._sites}
        if y is not None:
            y = _as_2d_targets(y, self.out_dim)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample,
                        dim=-self.max_plate_nesting) as index:
            if index.shape[0] != x.shape[0]:  # a minibatch: the plate's indices
                x = x[index]
                y = None if y is None else y[index]
            loc, scale = self.loc_scale(values, x)
            # Under enclosing plates (e.g. vectorized ELBO particles) global sites carry a
            # size-1 slot at the data plate's dim; the network's own N axis takes that place.
            sample_dims = self._check_values(values)
            if len(sample_dims) and sample_dims[-1] == 1:
                loc, scale = loc.squeeze(-3), scale.squeeze(-3)
            if y is not None:
                y = y.to(loc.dtype)
            obs_dist = dist.Normal(loc, scale, validate_args=False).to_event(1)
            pyro.sample("obs", obs_dist, obs=y)
        return loc

    # ------------------------------------------------------------------ batched densities
    def _check_values(self, values: Mapping[str, Tensor]) -> torch.Size:
        missing = [name for name in self._sites if name not in values]
        if missing:
            raise ValueError(f"values are missing latent sites {missing}")
        first, site = next(iter(self._sites.items()))
        value = values[first]
        return value.shape[: value.dim() - len(site.shape)]

    def log_prior(self, values: Mapping[str, Tensor]) -> Tensor:
        """Sum of the prior log densities of all latent sites, shape (*S,)."""
        total = 0.0
        priors = self.site_priors(values[next(iter(self._sites))])
        for name in self._sites:
            total = total + priors[name].log_prob(values[name])
        return total

    def site_priors(self, like: Tensor) -> dict[str, torch.distributions.Distribution]:
        """Each latent site's prior with its parameters in the dtype and on the device of
        ``like`` (the float64 CPU priors of :attr:`latent_sites` themselves for float64 CPU
        tensors), so that densities and draws stay in the fit's dtype and on its device."""
        key = (like.dtype, like.device)
        if key == (torch.float64, torch.device("cpu")):
            return {name: site.prior for name, site in self._sites.items()}
        cache = self.__dict__.setdefault("_site_prior_cache", {})
        if key not in cache:
            cache[key] = {name: _distribution_to(site.prior, like.dtype, like.device)
                          for name, site in self._sites.items()}
        return cache[key]

    def loc_scale(self, values: Mapping[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and noise scale of each observation, each (*S, N, out_dim)."""
        output = self.net.forward(self.net_params(values), x)
        loc, scale = self.likelihood.loc_scale(output, values)
        return loc, scale.expand_as(loc)

    def log_likelihood(self, values: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Pointwise log-likelihood, summed over outputs.

        Parameters
        ----------
        values : mapping of latent site -> tensor (*S, *site_shape), constrained
        x : tensor (N, in_dim)
        y : tensor (N,) or (N, out_dim)

        Returns
        -------
        Tensor of shape (*S, N).
        """
        self._check_values(values)
        loc, scale = self.loc_scale(values, x)
        y = _as_2d_targets(y, self.out_dim).to(loc.dtype)
        z = (y - loc) / scale
        log_norm = torch.log(scale) + 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=loc.dtype,
                                                                     device=loc.device))
        return (-0.5 * z * z - log_norm).sum(-1)

    def log_joint(self, values: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """log p(values) + log p(y | x, values) for constrained values, shape (*S,).

        Equals the ``log_prob_sum()`` of a Pyro trace of this model at the same values.
        """
        return self.log_prior(values) + self.log_likelihood(values, x, y).sum(-1)

    # ------------------------------------------------------------------ flat unconstrained view
    def constrain(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Constrained latent values from flat unconstrained vectors.

        Parameters
        ----------
        z : tensor (*S, dim)

        Returns
        -------
        values : dict site -> tensor (*S, *site_shape)
        log_abs_det_jacobian : tensor (*S,)
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"flat parameters must have last dimension {self.dim}, "
                             f"got shape {tuple(z.shape)}")
        batch = z.shape[:-1]
        values: dict[str, Tensor] = {}
        log_det = torch.zeros(batch, dtype=z.dtype, device=z.device)
        for name, site in self._sites.items():
            start, stop = self._offsets[name]
            u = z[..., start:stop].reshape(batch + site.shape)
            transform = site.transform
            value = transform(u)
            if not _is_real(site.support):
                ladj = transform.log_abs_det_jacobian(u, value)
                log_det = log_det + ladj.reshape((*batch, -1)).sum(-1)
            values[name] = value
        return values, log_det

    def unconstrain(self, values: Mapping[str, Tensor]) -> Tensor:
        """Flat unconstrained vectors (*S, dim) from constrained values; inverse of constrain."""
        batch = self._check_values(values)
        parts = []
        for name, site in self._sites.items():
            u = site.transform.inv(values[name])
            parts.append(u.reshape((*batch, -1)))
        return torch.cat(parts, dim=-1)

    def log_density(self, z: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Log density of the flat unconstrained parameters z (*S, dim), shape (*S,).

        Equals ``log_joint(constrain(z)) + log|J|``; the sites with a Normal prior are scored
        in one pass over their block of z, because samplers call this at every step.
        """
        values, log_det = self.constrain(z)
        block = self._normal_block
        log_prior = block.log_prob(z)
        priors = self.site_priors(z) if block.other_sites else {}
        for name in block.other_sites:
            log_prior = log_prior + priors[name].log_prob(values[name])
        return log_prior + self.log_likelihood(values, x, y).sum(-1) + log_det

    # ------------------------------------------------------------------ draws
    def sample_prior(self, seed: int, sample_shape: tuple[int, ...] = ()) -> dict[str, Tensor]:
        """Draws from the prior of every latent site, each (*sample_shape, *site_shape).

        Uses a private RNG stream seeded by ``seed``; the global torch RNG is left untouched.
        """
        # fork_rng saves and restores the global RNG: one thread at a time.
        with global_state_lock(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return {name: site.prior.sample(torch.Size(sample_shape))
                    for name, site in self._sites.items()}

    def initial_values(self, generator: torch.Generator | None = None,
                       noise: float = 0.5) -> dict[str, Tensor]:
        """A starting point for optimization: the network's Glorot initialization mapped to the
        latent sites, and a learned noise (if any) set to ``noise``."""
        values = self.prior.latent_from_net(self.net.init_params(generator))
        if "noise" in self._sites:
            values["noise"] = torch.full(self._sites["noise"].shape, noise, dtype=torch.float64)
        return values


class _NormalBlock:
    """The sites with a Normal prior on the real line, scored together on the flat vector.

    Their unconstrained coordinates equal their values, so their joint prior log density is
    ``-0.5 * sum(((z_i - loc_i) / scale_i) ** 2) - sum(log scale_i) - n/2 log(2 pi)`` over their
    coordinates i: a few tensor ops instead of several per site, which matters at every sampler
    step. ``other_sites`` are scored by their own distributions.
    """

    def __init__(self, index: Tensor, loc: Tensor, inv_scale: Tensor, log_norm: float,
                 other_sites: list[str]) -> None:
        self.other_sites = other_sites
        self._log_norm = log_norm
        n = index.numel()
        contiguous = n > 0 and bool((index == torch.arange(n) + index[0]).all())
        self._slice = (int(index[0]), int(index[0]) + n) if contiguous else None
        self._index = index
        self._loc = loc if bool((loc != 0).any()) else None
        self._inv_scale = inv_scale
        self._cast: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    @classmethod
    def of(cls, sites: Mapping[str, _priors.LatentSite],
           offsets: Mapping[str, tuple[int, int]]) -> _NormalBlock:
        index, loc, scale, other = [], [], [], []
        for name, site in sites.items():
            prior = site.prior
            base = prior.base_dist if isinstance(prior, torch.distributions.Independent) else prior
            covers_event = (isinstance(base, torch.distributions.Normal)
                            and tuple(base.batch_shape) == site.shape
                            and tuple(prior.event_shape) == site.shape)
            if not covers_event:
                other.append(name)
                continue
            start, stop = offsets[name]
            index.append(torch.arange(start, stop))
            loc.append(base.loc.detach().reshape(-1).to(torch.float64))
            scale.append(base.scale.detach().reshape(-1).to(torch.float64))
        if not index:
            empty = torch.zeros(0, dtype=torch.float64)
            return cls(torch.zeros(0, dtype=torch.long), empty, empty, 0.0, other)
        scales = torch.cat(scale)
        log_norm = float(scales.log().sum()) + 0.5 * scales.numel() * math.log(2 * math.pi)
        return cls(torch.cat(index), torch.cat(loc), 1.0 / scales, log_norm, other)

    def log_prob(self, z: Tensor) -> Tensor:
        """Joint prior log density of the block, shape (*S,) for z (*S, dim)."""
        if self._index.numel() == 0:
            return torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        u = z[..., self._slice[0]:self._slice[1]] if self._slice else z[..., self._index]
        if self._loc is not None:
            u = u - self._loc.to(dtype=z.dtype, device=z.device)
        inv_scale = self._inv_scale
        if (z.dtype, z.device) != (inv_scale.dtype, inv_scale.device):
            key = (z.dtype, z.device)  # one copy per dtype and device, not one per call
            if key not in self._cast:
                self._cast[key] = inv_scale.to(dtype=z.dtype, device=z.device)
            inv_scale = self._cast[key]
        standardized = u * inv_scale
        return -0.5 * (standardized * standardized).sum(-1) - self._log_norm


def _distribution_to(distribution: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """A copy of a torch (or Pyro) distribution, or transform, with its floating tensors in
    ``dtype`` on ``device``: the parameters of it and of the distributions and transforms it
    wraps (``Independent``, expanded, transformed distributions), cached ones included."""
    if isinstance(distribution, Tensor):
        if distribution.is_floating_point():
            return distribution.to(dtype=dtype, device=device)
        return distribution.to(device=device)
    if isinstance(distribution, (list, tuple)) and not hasattr(distribution, "_fields"):
        return type(distribution)(_distribution_to(item, dtype, device) for item in distribution)
    if not isinstance(distribution, (torch.distributions.Distribution,
                                     torch.distributions.Transform)):
        return distribution
    copied = object.__new__(type(distribution))
    copied.__dict__.update({key: _distribution_to(value, dtype, device)
                            for key, value in vars(distribution).items()})
    return copied


def _is_real(support: constraints.Constraint) -> bool:
    """True for supports whose bijection is the identity (no Jacobian term)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real
