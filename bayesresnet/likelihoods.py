"""Gaussian likelihoods: learned, fixed or input-dependent (heteroscedastic) noise."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .priors import LatentSite, half_normal

__all__ = ["Gaussian", "likelihood_from_config"]

# Bounds on the emitted log-scale of the heteroscedastic likelihood: exp(+-15) spans any sensible
# noise level of standardized data while keeping exp() and its gradient finite.
_LOG_SCALE_BOUND = 15.0


class Gaussian:
    """Gaussian observation noise, independent across outputs.

    Parameters
    ----------
    noise : float or sequence of float, optional
        Fixed noise standard deviation (one value, or one per output). ``None`` learns one scale
        per output as site ``noise`` with a ``HalfNormal(noise_prior_scale)`` prior.
    heteroscedastic : bool
        The network emits a log-scale per output beside the mean (its output layer is doubled),
        so the noise depends on the input. Excludes ``noise``.
    noise_prior_scale : float
        Scale of the half-normal prior on a learned noise (in the units the model sees, i.e.
        standardized outputs under :func:`bayesresnet.fit`).
    """

    def __init__(self, noise: float | Sequence[float] | None = None, heteroscedastic: bool = False,
                 noise_prior_scale: float = 1.0) -> None:
        if heteroscedastic and noise is not None:
            raise ValueError("heteroscedastic=True learns the noise; do not also pass noise=")
        if noise is not None:
            values = [noise] if isinstance(noise, (int, float)) else list(noise)
            if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                     for v in values):
                raise ValueError(f"noise must be positive finite number(s), got {noise!r}")
            noise = [float(v) for v in values]
        if not (math.isfinite(noise_prior_scale) and noise_prior_scale > 0):
            raise ValueError(f"noise_prior_scale must be positive, got {noise_prior_scale!r}")
        self.noise = noise
        self.heteroscedastic = bool(heteroscedastic)
        self.noise_prior_scale = float(noise_prior_scale)

    @property
    def learns_noise(self) -> bool:
        return self.noise is None and not self.heteroscedastic

    def net_outputs(self, out_dim: int) -> int:
        """How many network outputs the likelihood reads for ``out_dim`` observed outputs."""
        return 2 * out_dim if self.heteroscedastic else out_dim

    def latent_sites(self, out_dim: int) -> list[LatentSite]:
        if self.noise is not None and len(self.noise) not in (1, out_dim):
            raise ValueError(f"noise has {len(self.noise)} values for {out_dim} outputs")
        if not self.learns_noise:
            return []
        return [LatentSite("noise", (out_dim,), half_normal(self.noise_prior_scale, (out_dim,)))]

    def loc_scale(self, output: Tensor, values: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of the observations.

        Parameters
        ----------
        output : tensor (*S, N, net_outputs)
            Network output.
        values : mapping
            Latent values (for ``noise`` of shape (*S, out_dim)).

        Returns
        -------
        loc, scale : tensors broadcastable to (*S, N, out_dim)
        """
        if self.heteroscedastic:
            k = output.shape[-1] // 2
            log_scale = output[..., k:].clamp(-_LOG_SCALE_BOUND, _LOG_SCALE_BOUND)
            return output[..., :k], torch.exp(log_scale)
        if self.noise is None:
            return output, values["noise"].unsqueeze(-2)
        return output, torch.tensor(self.noise, dtype=output.dtype, device=output.device)

    def config(self) -> dict[str, Any]:
        return {"name": "Gaussian", "noise": self.noise, "heteroscedastic": self.heteroscedastic,
                "noise_prior_scale": self.noise_prior_scale}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"likelihoods.Gaussian({args})"


def likelihood_from_config(config: Mapping[str, Any]) -> Gaussian:
    """Rebuild a likelihood from its ``config()``."""
    config = dict(config)
    name = config.pop("name", None)
    if name != "Gaussian":
        raise ValueError(f"unknown likelihood {name!r}; expected 'Gaussian'")
    return Gaussian(**config)
