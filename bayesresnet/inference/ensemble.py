"""Deep ensembles, anchored (randomized-MAP) ensembles, and the MAP point estimate.

Every member is a MAP fit of the model from its own random initialization. All members are
trained together as one batched tensor program: their flat unconstrained parameters are stacked
in a (members, dim) tensor and ``bayesresnet.inference.optim.adam_maximize`` ascends the sum
of their objectives. Adam is elementwise and member c's objective depends only on row c, so this
is exactly ``members`` independent Adam runs at the Python cost of one.

A run is planned as groups of members (``members_per_unit``), each a unit of work that runs here
or on an executor (:mod:`bayesresnet.inference.executor`) with the same result: the starting
points and anchors of all members are drawn from the fit's seed first, then each group trains
on its own; group 0 continues the seed's stream for its minibatches (exactly the stream of an
undivided run) and group k > 0 uses a stream derived from (seed, k).

The optimization runs in the unconstrained space z without the log-Jacobian term, so its optimum
is the mode of the posterior density of the constrained values (the usual MAP), reached through
a reparameterization that keeps the noise scale positive.

The noise of an ensemble (``Ensemble(noise=...)``). A member's MAP noise is the root mean square
of its own training residuals, and those are small: the network spent some of its parameters
on fitting the noise of the very points they are measured at. On 20 points of the cubic toy
about 8 effective parameters (gamma, the trace of the linearized hat matrix) are fitted, the
MAP noise is about sqrt((N - gamma) / N) = 0.75 of the noise the sample carries, and 95%
intervals cover 57% of fresh points (``benchmarks/results/small_data.md``). Two corrections,
both from the network linearized at the member (Laplace's approximation, MacKay 1992):

* ``noise="posterior"``: each trained member's noise is replaced by a draw from its posterior
  with the network weights integrated out (:func:`noise_posterior`). Its mode is the
  effective-parameter estimate ``sqrt(RSS / (N - gamma))``; its spread is that of a noise
  estimated from N - gamma degrees of freedom.
* ``noise="predictive"`` (the default): that draw, times ``sqrt(N / (N - gamma))``. A member is
  one point of its mode, while the linearized posterior around it adds ``s^2 h(x)`` to the
  predictive variance at x, with h the leverage of x; at a left-out training point that is
  ``s^2 h_i / (1 - h_i)`` (its leave-one-out predictive variance is ``s^2 / (1 - h_i)``), and
  its average over the points, with h_i replaced by its mean gamma / N as in generalized
  cross-validation (Craven & Wahba 1979), is ``s^2 gamma / (N - gamma)``. The member's noise
  then carries that average model uncertainty of its own mode, which the ensemble's spread
  between modes does not hold: the predictive is calibrated for new points like the training
  inputs, and its ``aleatoric_std`` is larger than the data's noise by that factor (1.3 on the
  cubic toy, 1.5 on UCI yacht; ``stats['posterior_noise']`` keeps the draws before it).

The draws are stratified over the members (member m takes the quantile ``(pi_m + u_m) / M`` of
its own posterior, pi a random permutation, u uniform), so each is an exact draw of its own
posterior and together they cover it evenly. They use a random stream of their own, derived
from the fit's seed, so the networks are those of ``noise="map"``, which reproduces the draws of
earlier versions exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributions as tdist
from torch import Tensor

from ..diagnostics import linearization_fits, linearize
from ..model import BayesianResNet
from ..resnet import ResNet
from .base import (
    InferenceMethod,
    MethodResult,
    check_positive_float,
    check_positive_int,
    check_seed,
    make_progress,
    seeded_generator,
)
from .executor import (
    Plan,
    WorkUnit,
    derived_seed,
    global_state_lock,
    run_plan,
    span,
    split_range,
)
from .optim import adam_maximize, map_objective

__all__ = ["MAP", "NOISE_MODES", "Ensemble", "anchor_draws", "default_batch_size",
           "initial_points", "noise_posterior", "train_members"]

# Full-batch gradients up to this many training points; above it, minibatches of _BATCH_SIZE.
_FULL_BATCH_MAX = 1024
_BATCH_SIZE = 256

# Stream of the minibatch generators of member groups k > 0, derived from (seed, stream, k).
_STREAM_GROUP = 1
# Stream of the members' noise draws (noise="predictive" or "posterior"), derived from
# (seed, stream).
_STREAM_NOISE = 2

NOISE_MODES = ("predictive", "posterior", "map")
"""Values of ``Ensemble(noise=...)``: each member's noise drawn from its posterior given the
member's fit and widened by the member's own (linearized) model uncertainty at new inputs; the
draw alone; or the member's MAP estimate (the only behavior of earlier versions)."""

# Grid of the log noise on which a member's noise posterior is tabulated: a first pass over
# +-_NOISE_SPAN around the MAP finds where the density lies within exp(-_NOISE_DROP) of its
# peak, a second pass tabulates that range with _NOISE_POINTS points.
_NOISE_POINTS = 2001
_NOISE_SPAN = 12.0
_NOISE_DROP = 40.0


def default_batch_size(num_data: int) -> int | None:
    """The minibatch size used when ``batch_size=None``: full batch (None) for N <= 1024, else 256.

    On small data sets a full-batch gradient costs little more than a minibatch one (the cost is
    Python overhead, not arithmetic) and gives a deterministic, noise-free optimization.
    """
    return None if num_data <= _FULL_BATCH_MAX else _BATCH_SIZE


def _check_common(owner: str, steps: Any, lr: Any, batch_size: Any,
                  stiffness_penalty: Any) -> None:
    check_positive_int(owner, "steps", steps)
    check_positive_float(owner, "lr", lr)
    if batch_size is not None:
        check_positive_int(owner, "batch_size", batch_size)
    if isinstance(stiffness_penalty, bool) or not isinstance(stiffness_penalty, (int, float)) \
            or not (math.isfinite(stiffness_penalty) and stiffness_penalty >= 0):
        raise ValueError(f"{owner}: stiffness_penalty must be a non-negative number, "
                         f"got {stiffness_penalty!r}")


def _check_penalty_fits(owner: str, model: BayesianResNet, stiffness_penalty: float) -> None:
    if stiffness_penalty > 0 and not isinstance(model.net, ResNet):
        raise ValueError(f"{owner}: stiffness_penalty needs a ResNet (it penalizes the Jacobian "
                         f"of the ODE vector field); the model's network is a "
                         f"{type(model.net).__name__}")


def _is_zero_mean_normal(prior: tdist.Distribution) -> bool:
    while isinstance(prior, tdist.Independent):
        prior = prior.base_dist
    return isinstance(prior, tdist.Normal) and bool((prior.loc == 0).all())


def anchor_draws(model: BayesianResNet, seed: int, members: int) -> dict[str, Tensor]:
    """Prior draws that anchored members are pulled toward, one per member.

    Only sites with a zero-mean Normal prior are anchored (every network site under
    :class:`~bayesresnet.priors.Normal`, the ``*_raw`` sites under
    :class:`~bayesresnet.priors.Hierarchical`). Positive sites with half-normal priors (the noise
    scale, hierarchical scales) keep their ordinary prior term: shifting a half-normal by a draw
    is not a proper randomized-MAP prior, and these few scalars are well identified by the data.

    Returns
    -------
    dict site -> tensor (members, *site_shape)
    """
    # sample_prior seeds and draws from the global torch RNG (inside fork_rng).
    with global_state_lock():
        draws = model.sample_prior(seed, (members,))
    return {name: draws[name] for name, site in model.latent_sites.items()
            if _is_zero_mean_normal(site.prior)}


def initial_points(model: BayesianResNet, generator: torch.Generator, members: int) -> Tensor:
    """Flat unconstrained starting points, one per member, shape (members, dim).

    Member m starts from ``model.initial_values(generator)`` (Glorot initialization with its
    own draws from ``generator``), mapped to z with ``model.unconstrain``.
    """
    starts = [model.initial_values(generator) for _ in range(members)]
    stacked = {name: torch.stack([start[name] for start in starts]) for name in model.latent_sites}
    return model.unconstrain(stacked)


def noise_posterior(model: BayesianResNet, values: dict[str, Tensor], x: Tensor, y: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """The posterior of a member's noise scale, tabulated: a grid of log noise and its CDF.

    For each output, the density of the noise s given the data is the noise's prior times the
    Laplace approximation of the marginal likelihood at the member, with the network
    linearized there (:func:`bayesresnet.diagnostics.linearize`; MacKay 1992, Immer et al.
    2021): ``p(s) s^-N exp(-RSS / (2 s^2)) det(I + K / s^2)^(-1/2)``, with RSS the member's
    residual sum of squares and K the linearized kernel ``J diag(v) J^T``. The last factor
    integrates the weights out: it charges the ``gamma(s) = trace K (K + s^2 I)^-1``
    effective parameters the data determine, so the mode solves MacKay's
    ``s^2 = RSS / (N - gamma(s))`` where the MAP has ``s^2 = RSS / N`` (up to the prior). With
    no parameters (K = 0) it is the exact posterior of the noise of a fixed function. Each
    output is taken on its own data.

    Parameters
    ----------
    model : BayesianResNet
        With a learned noise (site ``noise``).
    values : dict site -> tensor of the site's shape
        The member (constrained, no sample dimensions).
    x, y : tensors (N, in_dim), (N, out_dim)
        Standardized training data.

    Returns
    -------
    log_noise : tensor (out_dim, G)
        Increasing grid of log noise covering the posterior.
    cdf : tensor (out_dim, G)
        The posterior CDF at those points (0 at the first, 1 at the last).
    effective_parameters : tensor (out_dim, G)
        ``gamma(s)`` at those points.
    """
    if "noise" not in model.latent_sites:
        raise ValueError("noise_posterior needs a model with a learned noise (site 'noise')")
    prior = model.latent_sites["noise"].prior
    while isinstance(prior, tdist.Independent):
        prior = prior.base_dist
    fits = linearize(model, values, x)
    with torch.no_grad():
        loc = model.loc_scale(values, x)[0]
    rss = ((y.reshape(loc.shape).to(torch.float64) - loc) ** 2).sum(0)
    n, out_dim = loc.shape
    grids, cdfs, gammas = [], [], []
    for k, fit in enumerate(fits):
        def log_density(log_noise: Tensor, k: int = k, fit: Any = fit) -> Tensor:
            noise = torch.exp(log_noise)
            variance = noise * noise
            prior_term = prior.log_prob(noise.unsqueeze(-1).expand(-1, out_dim))[:, k]
            # (1 - n) log_noise: s^-n times ds/dlog(s) = s, the density of log(noise).
            return (prior_term + (1 - n) * log_noise - rss[k] / (2 * variance)
                    - 0.5 * fit.log_det(variance))

        center = math.log(float(values["noise"].reshape(-1)[k]))
        grid = center + torch.linspace(-_NOISE_SPAN, _NOISE_SPAN, _NOISE_POINTS,
                                       dtype=torch.float64)
        density = log_density(grid)
        inside = torch.nonzero(density >= density.max() - _NOISE_DROP).reshape(-1)
        step = float(grid[1] - grid[0])
        grid = torch.linspace(float(grid[inside[0]]) - step, float(grid[inside[-1]]) + step,
                              _NOISE_POINTS, dtype=torch.float64)
        density = log_density(grid)
        weight = torch.exp(density - density.max())
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.cumsum(0.5 * (weight[1:] + weight[:-1]) * (grid[1:] - grid[:-1]),
                                      0)])
        grids.append(grid)
        cdfs.append(cdf / cdf[-1])
        variance = torch.exp(2 * grid).unsqueeze(-1)
        gammas.append((fit.eigenvalues / (fit.eigenvalues + variance)).sum(-1))
    return torch.stack(grids), torch.stack(cdfs), torch.stack(gammas)


def _draw_noise(log_noise: Tensor, cdf: Tensor, generator: torch.Generator) -> Tensor:
    """One noise per member from its tabulated posterior, stratified across members.

    log_noise, cdf: (members, out_dim, G). For each output, member m takes the quantile
    ``(pi_m + u_m) / M`` of its own posterior (pi a random permutation of 0..M-1, u_m uniform):
    marginally an exact draw, jointly one per M-quantile stratum. Returns (members, out_dim).
    """
    members, out_dim, _ = log_noise.shape
    noise = torch.empty((members, out_dim), dtype=torch.float64)
    for k in range(out_dim):
        order = torch.randperm(members, generator=generator).to(torch.float64)
        jitter = torch.rand(members, generator=generator, dtype=torch.float64)
        quantiles = ((order + jitter) / members).numpy()
        for m in range(members):
            noise[m, k] = math.exp(float(np.interp(quantiles[m], cdf[m, k].numpy(),
                                                   log_noise[m, k].numpy())))
    return noise


def _stiffness(model: BayesianResNet, weight: float
               ) -> Callable[[dict[str, Tensor], Tensor], Tensor] | None:
    if weight == 0:
        return None
    from ..ode import jacobian_penalty

    def penalty(values: dict[str, Tensor], xb: Tensor) -> Tensor:
        return weight * jacobian_penalty(model.net, model.net_params(values), xb)

    return penalty


def train_members(model: BayesianResNet, x: Tensor, y: Tensor, z0: Tensor, *, steps: int,
                  lr: float, batch_size: int | None = None,
                  anchor: dict[str, Tensor] | None = None, stiffness_penalty: float = 0.0,
                  generator: torch.Generator | None = None, progress: bool = False,
                  desc: str = "ensemble") -> tuple[Tensor, Tensor, Tensor]:
    """Train C MAP fits together from ``z0`` (C, dim).

    Parameters
    ----------
    model : BayesianResNet
    x, y : tensors (N, in_dim), (N, out_dim)
    z0 : tensor (C, dim)
        Flat unconstrained starting points.
    steps, lr : int, float
        Adam steps and initial learning rate (cosine-decayed).
    batch_size : int, optional
        Minibatch size; None or >= N means full batch.
    anchor : dict site -> tensor (C, *site_shape), optional
        Randomized-MAP anchors (see :func:`anchor_draws`).
    stiffness_penalty : float
        Weight of ``bayesresnet.ode.jacobian_penalty``, subtracted from the objective.
    generator : torch.Generator, optional
        Draws the minibatches.
    progress : bool
        Show a progress bar (updated about every 1% of the steps).

    Returns
    -------
    z : tensor (C, dim)
        Final parameters.
    history : tensor (steps, C)
        Objective at each step (on that step's minibatch, rescaled to N points).
    final : tensor (C,)
        Objective at ``z`` on the full training data.
    """
    objective = map_objective(model, x, y, anchor=anchor,
                              penalty=_stiffness(model, stiffness_penalty))
    every = max(1, steps // 100)
    with make_progress(progress, steps, desc) as bar:
        def callback(step: int, values: Tensor) -> None:
            if (step + 1) % every == 0 or step + 1 == steps:
                bar.update(step + 1 - bar.n)
                bar.set_postfix(loss=f"{-values.mean().item():.4g}", refresh=False)

        z, history = adam_maximize(objective, z0, steps, lr, num_data=x.shape[0],
                                   batch_size=batch_size, generator=generator,
                                   callback=callback if progress else None)
    # Outside no_grad: a stiffness penalty may differentiate the vector field with autograd.
    final = objective(z, None).detach()
    return z, history, final


def _plan(model: BayesianResNet, x: Tensor, y: Tensor, seed: int, *, members: int,
          members_per_unit: int | None, steps: int, lr: float, anchored: bool,
          batch_size: int | None, stiffness_penalty: float, title: str,
          noise: str = "map") -> Plan:
    """The member groups of a run as units of work, and their merge."""
    generator = seeded_generator(seed)
    z0 = initial_points(model, generator, members).to(x)  # in the data's dtype, on its device
    # Drawn whether or not it is used, so anchored and plain ensembles with the same seed share
    # their initializations and minibatch streams and differ only by the anchoring.
    anchor_seed = int(torch.randint(0, 2**62, (), generator=generator))
    anchor = ({name: value.to(x) for name, value in
               anchor_draws(model, anchor_seed, members).items()} if anchored else None)
    effective_batch = default_batch_size(x.shape[0]) if batch_size is None else batch_size
    groups = split_range(members, members if members_per_unit is None else members_per_unit)
    units = []
    for k, group in enumerate(groups):
        stream = generator if k == 0 else \
            seeded_generator(derived_seed(seed, _STREAM_GROUP, k))
        part = slice(group.start, group.stop)
        settings = {"steps": steps, "lr": lr, "batch_size": effective_batch,
                    "stiffness_penalty": stiffness_penalty, "noise": noise,
                    "desc": f"{title.lower()} {span(group, 'member')}"}
        units.append(WorkUnit(
            f"{title} member group {k} of {len(groups)} ({span(group, 'member')})",
            _train_member_group,
            (model, x, y, z0[part], None if anchor is None else
             {name: value[part] for name, value in anchor.items()},
             stream.get_state(), settings)))
    used = x.shape[0] if effective_batch is None else min(effective_batch, x.shape[0])
    hint = ""
    if len(groups) == 1 and members > 1:
        hint = (f"{title}: all {members} members form one unit of work, so an executor trains "
                f"them on one worker; set {title}(members_per_unit=...) to spread them")
    draw = noise != "map" and model.likelihood.learns_noise
    merge = partial(_combine_member_groups, batch_size=used, model=model, x=x, y=y,
                    noise_seed=derived_seed(seed, _STREAM_NOISE) if draw else None,
                    widen=noise == "predictive")
    return Plan(tuple(units), merge, desc=f"{title} ({len(groups)} member groups)", hint=hint)


def _train_member_group(model: BayesianResNet, x: Tensor, y: Tensor, z0: Tensor,
                        anchor: dict[str, Tensor] | None, generator_state: Tensor,
                        settings: dict[str, Any], *, progress: bool) -> MethodResult:
    """One unit of work: train the members starting at ``z0`` (C, dim)."""
    generator = torch.Generator()
    generator.set_state(generator_state)
    z, history, final = train_members(
        model, x, y, z0, steps=settings["steps"], lr=settings["lr"],
        batch_size=settings["batch_size"], anchor=anchor,
        stiffness_penalty=settings["stiffness_penalty"], generator=generator, progress=progress,
        desc=settings["desc"])
    with torch.no_grad():
        values, _ = model.constrain(z)
        log_joint = model.log_joint(values, x, y)
    draws = {name: value.unsqueeze(0) for name, value in values.items()}
    stats = {
        "final_loss": (-final).cpu().numpy(),
        "loss": (-history).cpu().numpy(),
        "log_joint": log_joint.unsqueeze(0).cpu().numpy(),
    }
    if settings.get("noise", "map") != "map" and model.likelihood.learns_noise \
            and linearization_fits(model, x.shape[0]):
        # Each member's noise posterior, tabulated; the merge draws from them (stratified
        # across all members, which needs every group's tables). Tabulated in float64 on the
        # CPU whatever the fit's dtype and device: a small one-off computation.
        cpu64 = {"device": "cpu", "dtype": torch.float64}
        tables = [noise_posterior(model, {name: value[c].to(**cpu64)
                                          for name, value in values.items()},
                                  x.to(**cpu64), y.to(**cpu64)) for c in range(z.shape[0])]
        for i, key in enumerate(_NOISE_TABLES):
            stats[key] = torch.stack([table[i] for table in tables]).numpy()
    return MethodResult(draws, stats)


# The tables of the members' noise posteriors that a unit hands to the merge.
_NOISE_TABLES = ("noise_grid", "noise_cdf", "noise_gamma")
# Axis of the members in each statistic.
_MEMBER_AXIS = {"final_loss": 0, "loss": 1, "log_joint": 1, "noise_grid": 0, "noise_cdf": 0,
                "noise_gamma": 0}


def _combine_member_groups(results: list[MethodResult], *, batch_size: int,
                           model: BayesianResNet | None = None, x: Tensor | None = None,
                           y: Tensor | None = None, noise_seed: int | None = None,
                           widen: bool = False) -> MethodResult:
    """One result with every group's members, in group order; with ``noise_seed``, each
    member's noise drawn from its posterior (the tables its group computed), and with
    ``widen`` multiplied by ``sqrt(N / (N - gamma))`` at the drawn noise."""
    first = results[0]
    draws = {name: torch.cat([r.draws[name] for r in results], dim=1) for name in first.draws}
    stats = {name: np.concatenate([r.stats[name] for r in results], axis=_MEMBER_AXIS[name])
             for name in first.stats}
    extra: dict[str, Any] = {"batch_size": int(batch_size)}
    if noise_seed is None:
        return MethodResult(draws, stats, extra=extra)
    if "noise_grid" not in stats:
        warnings.warn(f"Ensemble(noise='{'predictive' if widen else 'posterior'}'): the "
                      f"Jacobian of {x.shape[0]} points is too large for the linearized noise "
                      "posterior (see bayesresnet.diagnostics.LINEARIZE_MAX_JACOBIAN); the "
                      "members keep their MAP noise, biased low by about sqrt((N - gamma) / N) "
                      "for gamma effective parameters (little where N is far above the number "
                      "of parameters)", UserWarning, stacklevel=2)
        return MethodResult(draws, stats, extra={**extra, "noise": "map"})
    grid, cdf, gamma = (torch.as_tensor(stats.pop(key), device="cpu") for key in _NOISE_TABLES)
    stats["map_noise"] = draws["noise"][0].cpu().numpy().copy()
    noise = _draw_noise(grid, cdf, seeded_generator(noise_seed))
    effective = np.array([[np.interp(math.log(float(noise[m, k])), grid[m, k].numpy(),
                                     gamma[m, k].numpy())
                           for k in range(noise.shape[1])] for m in range(noise.shape[0])])
    stats["effective_parameters"] = effective
    if widen:
        stats["posterior_noise"] = noise.numpy().copy()
        num = x.shape[0]
        noise = noise * torch.as_tensor(np.sqrt(num / (num - effective)), device="cpu")
    draws["noise"] = noise.unsqueeze(0).to(draws["noise"])  # its dtype and device
    with torch.no_grad():
        stats["log_joint"] = model.log_joint({name: value[0] for name, value in draws.items()},
                                             x, y).unsqueeze(0).cpu().numpy()
    return MethodResult(draws, stats,
                        extra={**extra, "noise": "predictive" if widen else "posterior"})


@dataclass
class Ensemble(InferenceMethod):
    """Deep ensemble: MAP fits from distinct random initializations, trained together.

    Parameters
    ----------
    members : int
        Number of members M (the draws of the result: one chain of M draws).
    steps : int
        Adam steps per member.
    lr : float
        Initial Adam learning rate, cosine-decayed to a tenth of it.
    anchored : bool
        Randomized-MAP anchored ensembling (Pearce et al. 2020): each member's prior term is
        centered at its own draw from the prior instead of at zero, which makes the members
        approximate posterior samples rather than a set of modes. Sites with a half-normal prior
        (the noise scale) keep their ordinary prior term (see :func:`anchor_draws`).
    batch_size : int, optional
        Minibatch size. None: full batch when N <= 1024, else 256 (:func:`default_batch_size`).
    stiffness_penalty : float
        Weight of a penalty on the Jacobian of the ResNet's vector field
        (``bayesresnet.ode.jacobian_penalty``); 0 disables it. Requires a ResNet.
    members_per_unit : int, optional
        Members per unit of work: consecutive groups of this size (the last may be smaller),
        each trained on its own and runnable on its own worker (see :func:`bayesresnet.fit`).
        Default: all members in one unit. Changing it changes the minibatches (and so the
        result) of every group but the first when ``batch_size`` is below the number of
        training points; full-batch training gives the same members for any grouping up to
        floating-point rounding.
    noise : {'predictive', 'posterior', 'map'}
        With a learned noise, what each trained member's noise becomes (module docstring):
        ``'posterior'``, a draw from its posterior given the member's fit, with the network
        weights integrated out in the Laplace approximation at the member
        (:func:`noise_posterior`); ``'predictive'`` (default), that draw widened by
        ``sqrt(N / (N - gamma))`` for the model uncertainty within the member's mode at new
        inputs (gamma: the member's effective number of parameters); ``'map'``, the member's
        MAP noise, which is biased low on small data because it is fitted to the residuals of
        the very points the network was fitted to. On 20 points of the cubic toy (seeds 0-4),
        95% intervals covered 86-100% of fresh points with ``'predictive'`` (mean 0.96),
        74-99% with ``'posterior'`` (mean 0.91) and 56-91% with ``'map'`` (mean 0.77)
        (``benchmarks/results/small_data.md``). The networks are the same in
        every mode, and ``'map'`` gives the draws of earlier versions. Without a learned noise
        (fixed or heteroscedastic) the setting changes nothing. When the training data's
        Jacobian is too large for the linearization
        (``bayesresnet.diagnostics.linearization_fits``), the members keep their MAP noise, with
        a warning.
    Notes
    -----
    ``MethodResult.draws`` holds every latent site as (1, members, *site_shape), constrained.
    ``stats``: ``final_loss`` (members,), the negative objective at the end on the full data;
    ``loss`` (steps, members), the negative objective during training (on each step's minibatch,
    rescaled to N points); ``log_joint`` (1, members), the unanchored, unpenalized log joint of
    the draws on the full training data (with the drawn noise where the noise was drawn, while
    ``final_loss`` is the training objective at the MAP noise). Where the noise was drawn
    (standardized units, (members, out_dim) each): ``map_noise``, the members' MAP noise;
    ``effective_parameters``, gamma at the drawn noise; with ``noise='predictive'``,
    ``posterior_noise``, the draws before widening. ``extra['noise']`` says which noise the
    draws hold (``'predictive'``, ``'posterior'``, or ``'map'`` where the linearization was too
    large).
    """

    members: int = 8
    steps: int = 3000
    lr: float = 0.01
    anchored: bool = False
    batch_size: int | None = None
    stiffness_penalty: float = 0.0
    members_per_unit: int | None = None
    noise: str = "predictive"

    name: ClassVar[str] = "ensemble"
    kind: ClassVar[str] = "ensemble"
    thread_safe: ClassVar[bool] = True

    @classmethod
    def saved_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        # Runs saved before ``noise`` existed kept each member's MAP noise.
        return {"noise": "map", **settings}

    def check_settings(self) -> None:
        check_positive_int("Ensemble", "members", self.members)
        if self.members_per_unit is not None:
            check_positive_int("Ensemble", "members_per_unit", self.members_per_unit)
        _check_common("Ensemble", self.steps, self.lr, self.batch_size, self.stiffness_penalty)
        if not isinstance(self.anchored, (bool, np.bool_)):
            raise ValueError(f"Ensemble: anchored must be True or False, got {self.anchored!r}")
        if not isinstance(self.noise, str) or self.noise not in NOISE_MODES:
            raise ValueError(f"Ensemble: noise must be one of {NOISE_MODES}, got {self.noise!r}")

    def validate(self, model: BayesianResNet) -> None:
        _check_penalty_fits("Ensemble", model, self.stiffness_penalty)

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        return run_plan(self.plan(model, x, y, seed), progress=progress)

    def plan(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int) -> Plan:
        """The run as independent member groups (one unit of work each) and their merge;
        running every unit and combining is exactly :meth:`run`."""
        self.validate(model)
        return _plan(model, x, y, check_seed(seed), members=self.members,
                     members_per_unit=self.members_per_unit, steps=self.steps, lr=self.lr,
                     anchored=bool(self.anchored), batch_size=self.batch_size,
                     stiffness_penalty=float(self.stiffness_penalty), title="Ensemble",
                     noise=self.noise)


@dataclass
class MAP(InferenceMethod):
    """Maximum a posteriori point estimate: the non-Bayesian baseline.

    An ensemble of one without anchoring, with its MAP noise (``Ensemble(members=1,
    noise="map")``); the result has one chain with one draw, so its predictive uncertainty is
    the noise alone. Parameters as in :class:`Ensemble`.
    """

    steps: int = 3000
    lr: float = 0.01
    batch_size: int | None = None
    stiffness_penalty: float = 0.0

    name: ClassVar[str] = "map"
    kind: ClassVar[str] = "optimization"
    thread_safe: ClassVar[bool] = True

    def check_settings(self) -> None:
        _check_common("MAP", self.steps, self.lr, self.batch_size, self.stiffness_penalty)

    def validate(self, model: BayesianResNet) -> None:
        _check_penalty_fits("MAP", model, self.stiffness_penalty)

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        return run_plan(self.plan(model, x, y, seed), progress=progress)

    def plan(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int) -> Plan:
        """The run as a single unit of work (see :meth:`Ensemble.plan`)."""
        self.validate(model)
        return _plan(model, x, y, check_seed(seed), members=1, members_per_unit=None,
                     steps=self.steps, lr=self.lr, anchored=False, batch_size=self.batch_size,
                     stiffness_penalty=float(self.stiffness_penalty), title="MAP")
