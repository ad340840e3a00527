"""Prior families for the network's parameter sites.

A prior turns the network's parameter shapes into a list of latent sites (each a name, a shape and
a torch distribution whose event shape is that shape) and maps values of those sites back to
network parameters. Keeping both directions here lets the Pyro model, the batched log density and
the samplers share one definition.
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

__all__ = ["Hierarchical", "LatentSite", "Normal", "Prior", "prior_from_config"]


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


def prior_from_config(config: Mapping[str, Any]) -> Prior:
    """Rebuild a prior from its ``config()``."""
    config = dict(config)
    name = config.pop("name", None)
    if name == "Normal":
        return Normal(**config)
    if name == "Hierarchical":
        return Hierarchical(**config)
    raise ValueError(f"unknown prior {name!r}; expected 'Normal' or 'Hierarchical'")
