"""Gaussian variational inference directly on a flat unconstrained log density.

The families and the objective are those of Pyro's ``AutoNormal`` and
``AutoLowRankMultivariateNormal`` under ``Trace_ELBO``: a Gaussian q over the flat unconstrained
parameter vector z, pushed through the model's constraining bijection, fitted by maximizing

    ELBO(q) = E_q[log p(constrain(z), y) + log|det J(z)|] + H[q]
            = E_q[log_density(z)] + H[q].

What differs is the route. Pyro traces the model and the guide site by site at every step; here
each step is one batched call of the model's fused ``log_density`` on a (particles, D) tensor,
and the entropy H[q] is taken in closed form rather than estimated from the particles (the same
objective with a lower-variance gradient). On large data sets a step may use a minibatch of
B of the N points, its log likelihood scaled by N / B: an unbiased estimate of the ELBO and
its gradient (:func:`minibatches`). A mean-field step is 4-5 times cheaper and a
low-rank step 2-2.5 times (``benchmarks/vi.py``), which is what lets VI run the tens of
thousands of steps a neural-network ELBO needs.

The optimizer matches Pyro's ``ClippedAdam`` as :mod:`~bayesresnet.inference.vi` configures
it: Adam on gradients clamped elementwise to ``[-clip, clip]``, the learning rate multiplied by
a constant factor after every step. Scales are parameterized through softplus, as Pyro's
``softplus_positive`` constraint does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, LowRankMultivariateNormal, Normal

from .base import check_seed, make_progress, update_running_mean

__all__ = ["FlatGaussianFit", "fit_flat_gaussian", "minibatches"]


def _softplus_inverse(value: float) -> float:
    return value + math.log(-math.expm1(-value))


@dataclass
class FlatGaussianFit:
    """What :func:`fit_flat_gaussian` returns.

    Attributes
    ----------
    elbo : ndarray (steps,)
        The ELBO estimate of each step.
    draws : tensor (num_draws, D)
        Draws of the flat unconstrained vector from the fitted q.
    log_q : tensor (num_draws,)
        Their log density under q (unconstrained; subtract the log-Jacobian for the density of
        the constrained values).
    params : dict name -> tensor
        The fitted ``loc`` (D,), ``scale`` (D,) and, for the low-rank family, ``cov_factor``
        (D, rank); q = N(loc, diag(scale) (F F^T + I) diag(scale)) with F = ``cov_factor``
        (F = 0 for the diagonal family).
    """

    elbo: np.ndarray
    draws: Tensor
    log_q: Tensor
    params: dict[str, Tensor]


def _distribution(loc: Tensor, scale: Tensor, factor: Tensor | None) -> Distribution:
    """q = N(loc, diag(scale) (F F^T + I) diag(scale)), diagonal when there is no factor F."""
    if factor is None:
        return Independent(Normal(loc, scale), 1)
    return LowRankMultivariateNormal(loc, factor * scale.unsqueeze(-1), scale * scale)


def _sample(loc: Tensor, scale: Tensor, factor: Tensor | None, num: int,
            generator: torch.Generator) -> Tensor:
    """``num`` reparameterized draws (num, D) of q from ``generator``, not the global RNG."""
    # Drawn on the generator's device (the CPU), so a seed gives the same q on any device.
    like = {"dtype": loc.dtype, "device": generator.device}
    noise = torch.randn(num, loc.shape[-1], generator=generator, **like).to(loc.device)
    if factor is not None:
        noise = noise + torch.randn(num, factor.shape[-1], generator=generator,
                                    **like).to(loc.device) @ factor.T
    return loc + noise * scale


def minibatches(num_data: int, batch_size: int, generator: torch.Generator
                ) -> Iterator[Tensor]:
    """Endless minibatches of indices: each epoch a fresh random permutation of
    ``range(num_data)``, cut into ``num_data // batch_size`` disjoint batches (the remainder of
    the permutation is left out of that epoch).

    Every index lies in a given batch with probability ``batch_size / num_data``, so
    ``num_data / batch_size`` times a sum over a batch is an unbiased estimate of the sum over
    all the data; within an epoch every point is used at most once.

    Parameters
    ----------
    num_data, batch_size : int
        ``1 <= batch_size <= num_data``.
    generator : torch.Generator
        Draws the permutations.

    Yields
    ------
    tensor (batch_size,) of int64
    """
    if not 1 <= batch_size <= num_data:
        raise ValueError(f"batch_size must lie in [1, {num_data}], got {batch_size}")
    per_epoch = num_data // batch_size
    while True:
        order = torch.randperm(num_data, generator=generator)
        for k in range(per_epoch):
            yield order[k * batch_size:(k + 1) * batch_size]


def fit_flat_gaussian(log_density: Callable[..., Tensor], init_loc: Tensor, *,
                      rank: int | None, init_scale: float, steps: int, lr: float,
                      num_particles: int, num_draws: int, seed: int, clip: float,
                      final_lr_fraction: float, progress: bool = False,
                      desc: str = "vi", num_data: int | None = None,
                      batch_size: int | None = None) -> FlatGaussianFit:
    """Fit a diagonal (``rank=None``) or low-rank-plus-diagonal Gaussian to ``log_density``.

    Parameters
    ----------
    log_density : callable
        Maps z of shape (P, D) to the unnormalized log posterior density (P,) of the flat
        unconstrained vector, log-Jacobian included (``BayesianResNet.log_density``). With
        minibatches (``batch_size < num_data``) it is called as ``log_density(z, batch)``, with
        ``batch`` the (B,) indices of the step's data points, and must return an unbiased
        estimate of that density: the log likelihood of the batch scaled by ``N / B``
        (:func:`~bayesresnet.inference.vi.minibatch_log_density`).
    init_loc : tensor (D,)
        Starting mean.
    rank : int or None
        Rank of the covariance factor; ``None`` for the mean-field (diagonal) family.
    init_scale : float
        Starting standard deviation (for the low-rank family, as in Pyro: the diagonal starts
        at ``init_scale / sqrt(2)`` and the factor at N(0, 1/rank) entries, so the marginal
        standard deviations start near ``init_scale``).
    steps, lr, num_particles, num_draws, seed : int, float, int, int, int
        Optimizer steps, initial learning rate, particles per ELBO estimate, draws taken after
        fitting, seed of every random choice.
    clip : float
        Elementwise bound on the gradients.
    final_lr_fraction : float
        The learning rate decays geometrically to this fraction of ``lr`` over the run.
    progress : bool
        Show a progress bar with the running ELBO.
    desc : str
        Label of the progress bar and of errors.
    num_data, batch_size : int, optional
        With both given and ``batch_size < num_data``, each step estimates the ELBO on a
        minibatch from :func:`minibatches` (drawn with the fit's generator); the recorded
        ``elbo`` is then that unbiased, noisier estimate.

    Returns
    -------
    FlatGaussianFit

    Raises
    ------
    RuntimeError
        If the ELBO becomes non-finite.
    """
    dim = init_loc.shape[-1]
    dtype = init_loc.dtype
    generator = torch.Generator().manual_seed(check_seed(seed))
    loc = init_loc.detach().clone().requires_grad_(True)
    start_scale = init_scale if rank is None else init_scale * math.sqrt(0.5)
    raw_scale = torch.full((dim,), _softplus_inverse(start_scale), dtype=dtype,
                           device=init_loc.device, requires_grad=True)
    factor = None
    if rank is not None:
        factor = (torch.randn(dim, rank, generator=generator, dtype=dtype,
                              device=generator.device).to(init_loc.device)
                  / math.sqrt(rank)).requires_grad_(True)
    params = [p for p in (loc, raw_scale, factor) if p is not None]
    optimizer = torch.optim.Adam(params, lr=lr)
    decay = final_lr_fraction ** (1.0 / steps)

    batches = None
    if num_data is not None and batch_size is not None and batch_size < num_data:
        batches = minibatches(num_data, batch_size, generator)

    history = np.empty(steps)
    with make_progress(progress, steps, desc) as bar:
        for step in range(steps):
            scale = torch.nn.functional.softplus(raw_scale)
            z = _sample(loc, scale, factor, num_particles, generator)
            density = log_density(z) if batches is None else log_density(z, next(batches))
            elbo = density.mean() + _distribution(loc, scale, factor).entropy()
            if not torch.isfinite(elbo):
                raise RuntimeError(f"{desc}: the ELBO became non-finite at step {step}; "
                                   "try a smaller lr or init_scale")
            optimizer.zero_grad(set_to_none=True)
            (-elbo).backward()
            for p in params:
                p.grad.clamp_(-clip, clip)
            optimizer.step()
            for group in optimizer.param_groups:
                group["lr"] *= decay
            history[step] = elbo.item()
            update_running_mean(bar, history, step, "elbo")

    with torch.no_grad():
        scale = torch.nn.functional.softplus(raw_scale)
        draws = _sample(loc, scale, factor, num_draws, generator)
        log_q = _distribution(loc, scale, factor).log_prob(draws)
        fitted = {"loc": loc.detach().clone(), "scale": scale.clone()}
        if factor is not None:
            fitted["cov_factor"] = factor.detach().clone()
    return FlatGaussianFit(history, draws, log_q, fitted)
