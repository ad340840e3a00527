"""Variational inference: mean-field and low-rank Gaussian families over the parameters.

Both methods fit a Gaussian q(z) over the unconstrained latent space of the model by maximizing
the ELBO, then draw from q. Two backends fit the same family to the same objective:

* ``'flat'`` (default): :func:`~bayesresnet.inference.flat_vi.fit_flat_gaussian` on the model's
  fused, batched ``log_density`` of the flat unconstrained vector;
* ``'pyro'``: Pyro's SVI with ``Trace_ELBO`` and vectorized particles, with ``AutoNormal`` or
  ``AutoLowRankMultivariateNormal`` (which push q through the same ``biject_to`` transforms the
  model uses). One training routine, ``_fit_guide``, serves any Pyro model and autoguide class.

Minibatches (``batch_size=B``, for large N): each step estimates the ELBO on B of the N points
with their log likelihood scaled by N / B, an unbiased estimate of the full-data ELBO and its
gradient. The flat backend draws the batches (:func:`~bayesresnet.inference.flat_vi.minibatches`)
and scales with :func:`minibatch_log_density`; the Pyro backend passes ``subsample_size=B`` to
the model's ``data`` plate, whose scaling Pyro applies. The ``'map'`` initialization uses the
same batches; the final ``log_joint`` of the draws is computed on all the data, in chunks of
draws sized to the data (``_CHUNK_BYTES``).

Besides the draws, a run keeps what importance-sampling diagnostics (PSIS) need: ``log_q``, the
log density of each draw under q, and ``log_joint``, log p(theta, y) of the same draw, both for
the constrained values, so log p - log q is the log importance weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoGuide, AutoLowRankMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.util import is_validation_enabled
from torch import Tensor

from ..model import BayesianResNet
from .base import (
    InferenceMethod,
    MethodResult,
    check_positive_float,
    check_positive_int,
    check_seed,
    make_progress,
    seeded_generator,
    update_running_mean,
)
from .executor import derived_seed, private_pyro_state
from .flat_vi import fit_flat_gaussian
from .optim import adam_maximize, map_objective

__all__ = ["BACKENDS", "INITS", "LowRank", "MeanField", "default_rank",
           "minibatch_log_density"]

BACKENDS = ("flat", "pyro")
"""Backends of the VI methods: the direct fit on the flat log density, and Pyro's SVI."""

INITS = ("network", "map")
"""Where q's means start: the network's initialization, or a MAP fit reached from it."""

# The learning rate decays geometrically to this fraction of ``lr`` over the run: large early
# steps move the means, small late steps let the scales settle with less gradient noise.
_FINAL_LR_FRACTION = 0.1
# Elementwise gradient clipping of ClippedAdam; guards against rare huge gradients early on.
_CLIP_NORM = 10.0
# Memory budget of one chunk when evaluating the log joint of many draws.
_CHUNK_BYTES = 1 << 28
# Stream of the minibatches of the 'map' initialization, derived from (seed, stream).
_STREAM_MAP_BATCHES = 1


@dataclass
class _GuideFit:
    """What :func:`_fit_guide` returns.

    Attributes
    ----------
    elbo : ndarray (steps,)
        ELBO estimate at each step (``-loss``).
    draws : dict site -> tensor (num_draws, *site_shape)
        Constrained draws of every latent (non-auxiliary) site of the guide.
    log_q : tensor (num_draws,)
        Log density of each draw (constrained values) under the fitted guide.
    params : dict name -> tensor
        The guide's fitted parameters (constrained), as named in Pyro's param store.
    """

    elbo: np.ndarray
    draws: dict[str, Tensor]
    log_q: Tensor
    params: dict[str, Tensor]


def _fit_guide(model: Callable[..., Any], guide_class: type[AutoGuide], args: tuple,
               *, guide_kwargs: Mapping[str, Any], steps: int, lr: float, num_particles: int,
               num_draws: int, seed: int, progress: bool = False, desc: str = "vi",
               model_kwargs: Mapping[str, Any] | None = None) -> _GuideFit:
    """Fit ``guide_class(model, **guide_kwargs)`` to ``model(*args)`` by SVI and draw from it.

    The model must be batched over leading sample dimensions (particles are vectorized with a
    plate left of the model's own plates). Everything random is seeded by ``seed`` inside a
    forked torch RNG, and the fit runs in a private Pyro param store: the caller's global RNG
    state and param store are left as they were. Pyro's SVI needs those process globals and
    Pyro's handler stack, so the fit holds the global state lock
    (:func:`~bayesresnet.inference.executor.private_pyro_state`): one at a time per process.

    Parameters
    ----------
    model : callable
        A Pyro model.
    guide_class : AutoGuide subclass
        E.g. ``AutoNormal`` or ``AutoLowRankMultivariateNormal``.
    args : tuple
        Arguments of the model (and guide).
    guide_kwargs : mapping
        Keyword arguments of the guide (``init_loc_fn``, ``init_scale``, ``rank``, ...).
    steps, lr, num_particles, num_draws, seed : int, float, int, int, int
        SVI steps, initial Adam learning rate, ELBO particles per step, draws taken after
        fitting, seed.
    progress : bool
        Show a progress bar with the running ELBO.
    desc : str
        Label of the progress bar.
    model_kwargs : mapping, optional
        Keyword arguments of the model (and guide) at every step, e.g. ``subsample_size`` of
        :class:`~bayesresnet.model.BayesianResNet`; not passed when drawing from the guide.

    Returns
    -------
    _GuideFit
    """
    store = pyro.get_param_store()
    with private_pyro_state(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        guide = guide_class(model, **guide_kwargs)
        elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                          max_plate_nesting=getattr(model, "max_plate_nesting", math.inf))
        optim = pyro.optim.ClippedAdam({"lr": lr, "clip_norm": _CLIP_NORM,
                                        "lrd": _FINAL_LR_FRACTION ** (1.0 / steps)})
        svi = SVI(model, guide, optim, loss=elbo)
        history = np.empty(steps)
        with make_progress(progress, steps, desc) as bar:
            for step in range(steps):
                # Pyro's argument and shape validation runs on the first step only: it costs
                # about a quarter of a step and the shapes do not change afterwards.
                with pyro.validation_enabled(step == 0 and is_validation_enabled()):
                    loss = svi.step(*args, **(model_kwargs or {}))
                if not math.isfinite(loss):
                    raise RuntimeError(f"{desc}: the ELBO became non-finite at step {step}; "
                                       "try a smaller lr or init_scale")
                history[step] = -loss
                update_running_mean(bar, history, step, "elbo")
        # The ELBO's nesting counts the model's plates plus its particle plate, so a draws plate
        # just left of it clears every plate of the model.
        with torch.no_grad():
            draws, log_q = _draw(guide, args, num_draws, elbo.max_plate_nesting)
        params = {name: value.detach().clone() for name, value in store.items()}
    return _GuideFit(history, draws, log_q, params)


def _draw(guide: AutoGuide, args: tuple, num_draws: int, max_plate_nesting: int
          ) -> tuple[dict[str, Tensor], Tensor]:
    """``num_draws`` vectorized draws from a fitted autoguide and their log density under it.

    The log density of the constrained values is the sum of every guide site's log probability:
    the Gaussian of the auxiliary unconstrained draw plus the Delta sites' log-Jacobian terms.
    """
    with pyro.plate("_vi_draws", num_draws, dim=-(max_plate_nesting + 1)):
        trace = poutine.trace(guide).get_trace(*args)
    trace.compute_log_prob()
    first = next(site["value"] for site in trace.nodes.values() if site["type"] == "sample")
    log_q = torch.zeros(num_draws, dtype=first.dtype, device=first.device)  # the guide's
    draws = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        log_q = log_q + site["log_prob"].reshape(num_draws, -1).sum(-1)
        if not site["infer"].get("is_auxiliary", False):
            shape = guide.prototype_trace.nodes[name]["value"].shape
            draws[name] = site["value"].reshape((num_draws, *shape))
    return draws, log_q


def _log_joint(model: BayesianResNet, values: Mapping[str, Tensor], x: Tensor, y: Tensor
               ) -> Tensor:
    """``model.log_joint`` of M draws (M, *site_shape), chunked over draws to bound memory."""
    total = next(iter(values.values())).shape[0]
    net = model.net
    per_draw = 8 * x.shape[0] * (getattr(net, "width", 1) * (getattr(net, "depth", 1) + 4)
                                 + 2 * model.out_dim)
    chunk = max(1, min(total, _CHUNK_BYTES // per_draw))
    with torch.no_grad():
        parts = [model.log_joint({k: v[start:start + chunk] for k, v in values.items()}, x, y)
                 for start in range(0, total, chunk)]
    return torch.cat(parts)


def default_rank(dim: int) -> int:
    """Default rank of the low-rank guide for ``dim`` parameters: round(sqrt(dim)), at least 2,
    at most ``dim``."""
    return min(dim, max(2, round(math.sqrt(dim))))


def minibatch_log_density(model: BayesianResNet, x: Tensor, y: Tensor
                          ) -> Callable[[Tensor, Tensor | None], Tensor]:
    """The model's log density of flat unconstrained parameters, estimated on a minibatch.

    Parameters
    ----------
    model : BayesianResNet
    x, y : tensors (N, in_dim), (N,) or (N, out_dim)

    Returns
    -------
    callable(z (*S, D), batch (B,) int64 or None) -> (*S,)
        ``log p(theta) + log|J| + (N / B) * sum_{i in batch} log p(y_i | x_i, theta)``, with
        theta = constrain(z); with ``batch=None``, ``model.log_density(z, x, y)``. Averaged
        over the disjoint batches of a permutation of the data (or over uniformly random
        batches) it equals ``model.log_density(z, x, y)``.
    """
    num = x.shape[0]

    def log_density(z: Tensor, batch: Tensor | None = None) -> Tensor:
        if batch is None:
            return model.log_density(z, x, y)
        values, log_det = model.constrain(z)
        likelihood = model.log_likelihood(values, x[batch], y[batch]).sum(-1)
        return model.log_prior(values) + log_det + likelihood * (num / batch.shape[0])

    return log_density


def _map_values(model: BayesianResNet, x: Tensor, y: Tensor, start: dict[str, Tensor],
                steps: int, lr: float, batch_size: int | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The latent values after ``steps`` Adam steps (full batch, or minibatches of
    ``batch_size`` drawn by ``generator``) on the log density of z from ``start``: the mode
    the ELBO's integrand tends to as q's scales shrink to zero."""
    z, _ = adam_maximize(map_objective(model, x, y, jacobian=True),
                         model.unconstrain(start).unsqueeze(0), steps, lr,
                         num_data=x.shape[0], batch_size=batch_size, generator=generator)
    with torch.no_grad():
        values, _ = model.constrain(z[0])
        reached = _log_joint(model, {k: v.unsqueeze(0) for k, v in values.items()}, x, y)
    if not torch.isfinite(reached).all():
        raise RuntimeError("the MAP initialization of the variational means reached a "
                           "non-finite log density; try a smaller lr or init='network'")
    return dict(values)


class _AutoGuideVI(InferenceMethod):
    """Shared validation and run of the Gaussian-guide methods; subclasses choose the guide."""

    steps: int
    lr: float
    num_particles: int
    num_draws: int
    init_scale: float
    init: str
    init_steps: int
    backend: str
    batch_size: int | None

    # Only the 'pyro' backend uses Pyro's global state, under the global state lock.
    thread_safe: ClassVar[bool] = True

    def check_settings(self) -> None:
        owner = type(self).__name__
        for setting in ("steps", "num_particles", "num_draws", "init_steps"):
            check_positive_int(owner, setting, getattr(self, setting))
        for setting in ("lr", "init_scale"):
            check_positive_float(owner, setting, getattr(self, setting))
        if self.backend not in BACKENDS:
            raise ValueError(f"{owner}: unknown backend {self.backend!r}; "
                             f"expected one of {list(BACKENDS)}")
        if self.init not in INITS:
            raise ValueError(f"{owner}: unknown init {self.init!r}; "
                             f"expected one of {list(INITS)}")
        if self.batch_size is not None:
            check_positive_int(owner, "batch_size", self.batch_size)

    def _batch(self, num_data: int) -> int | None:
        """The minibatch size of a run on ``num_data`` points; None for full batch.

        Raises
        ------
        ValueError
            If ``batch_size`` exceeds ``num_data``.
        """
        if self.batch_size is None:
            return None
        if self.batch_size > num_data:
            raise ValueError(f"{type(self).__name__}: batch_size={self.batch_size} exceeds the "
                             f"number of training points ({num_data})")
        return None if self.batch_size == num_data else int(self.batch_size)

    def _rank(self, model: BayesianResNet) -> int | None:
        """Rank of the covariance factor; ``None`` for the diagonal (mean-field) family."""
        raise NotImplementedError

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        """Fit the Gaussian and draw ``num_draws`` samples from it.

        Returns
        -------
        MethodResult
            ``draws``: site -> (1, num_draws, *site_shape). ``stats``: ``elbo`` (steps,),
            ``log_q`` and ``log_joint`` (1, num_draws). ``extra``: ``backend``; for
            ``'flat'`` the fitted ``loc``, ``scale`` (D,) and, for the low-rank family,
            ``cov_factor`` (D, rank); for ``'pyro'`` ``guide`` (class name) and
            ``guide_params`` (name -> tensor); ``rank`` for the low-rank family;
            ``batch_size`` (B, or N for full batch).
        """
        self.validate(model)
        seed = check_seed(seed)
        batch = self._batch(x.shape[0])
        # Start the means at the network's Glorot initialization rather than at the prior
        # median: in the all-zero network every hidden unit is interchangeable, a symmetric
        # saddle point that only the sampling noise of a narrow q would break.
        init = {name: value.to(x)  # in the data's dtype, on its device
                for name, value in model.initial_values(seeded_generator(seed)).items()}
        if self.init == "map":
            # The minibatches of the MAP start come from a stream of their own, so the VI fit
            # that follows draws the same particles as without minibatches at this stage.
            init = _map_values(model, x, y, init, self.init_steps, float(self.lr), batch,
                               seeded_generator(derived_seed(seed, _STREAM_MAP_BATCHES)))
        rank = self._rank(model)
        run = self._run_flat if self.backend == "flat" else self._run_pyro
        values, log_q, extra, elbo = run(model, x, y, init, rank, seed, progress, batch)
        if rank is not None:
            extra["rank"] = rank
        extra["batch_size"] = x.shape[0] if batch is None else batch
        log_joint = _log_joint(model, values, x, y)
        return MethodResult(
            draws={name: value.unsqueeze(0) for name, value in values.items()},
            stats={"elbo": elbo, "log_q": log_q.unsqueeze(0).cpu().numpy(),
                   "log_joint": log_joint.unsqueeze(0).cpu().numpy()},
            extra={"backend": self.backend, **extra})

    def _run_flat(self, model: BayesianResNet, x: Tensor, y: Tensor, init: dict[str, Tensor],
                  rank: int | None, seed: int, progress: bool, batch: int | None
                  ) -> tuple[dict[str, Tensor], Tensor, dict[str, Any], np.ndarray]:
        fit = fit_flat_gaussian(minibatch_log_density(model, x, y), model.unconstrain(init),
                                rank=rank, init_scale=float(self.init_scale), steps=self.steps,
                                lr=float(self.lr), num_particles=self.num_particles,
                                num_draws=self.num_draws, seed=seed, clip=_CLIP_NORM,
                                final_lr_fraction=_FINAL_LR_FRACTION, progress=progress,
                                desc=self.name, num_data=x.shape[0], batch_size=batch)
        with torch.no_grad():
            values, log_det = model.constrain(fit.draws)
        # q's density of the constrained values: the Gaussian's minus the log-Jacobian.
        return dict(values), fit.log_q - log_det, dict(fit.params), fit.elbo

    def _run_pyro(self, model: BayesianResNet, x: Tensor, y: Tensor, init: dict[str, Tensor],
                  rank: int | None, seed: int, progress: bool, batch: int | None
                  ) -> tuple[dict[str, Tensor], Tensor, dict[str, Any], np.ndarray]:
        guide_class = AutoNormal if rank is None else AutoLowRankMultivariateNormal
        kwargs: dict[str, Any] = {"init_loc_fn": init_to_value(values=init),
                                  "init_scale": float(self.init_scale)}
        if rank is not None:
            kwargs["rank"] = rank
        fit = _fit_guide(model, guide_class, (x, y), guide_kwargs=kwargs, steps=self.steps,
                         lr=float(self.lr), num_particles=self.num_particles,
                         num_draws=self.num_draws, seed=seed, progress=progress, desc=self.name,
                         model_kwargs=None if batch is None else {"subsample_size": batch})
        missing = [name for name in model.latent_sites if name not in fit.draws]
        if missing:
            raise RuntimeError(f"{self.name}: the guide produced no draws for sites {missing}")
        values = {name: fit.draws[name] for name in model.latent_sites}
        extra = {"guide": guide_class.__name__, "guide_params": fit.params}
        return values, fit.log_q, extra, fit.elbo


@dataclass
class MeanField(_AutoGuideVI):
    """Mean-field Gaussian variational inference (the family of Pyro's ``AutoNormal``).

    q is a product of independent Gaussians over the unconstrained parameters, fitted by
    maximizing the ELBO. Cheap and robust, but it underestimates posterior variances where
    parameters are correlated (its variances are the inverse diagonal of the precision).

    Parameters
    ----------
    steps : int
        Optimizer steps (Adam on clipped gradients, learning rate decayed geometrically to
        0.1 * ``lr``).
    lr : float
        Initial learning rate.
    num_particles : int
        Monte Carlo draws per ELBO gradient (vectorized).
    num_draws : int
        Draws taken from the fitted guide.
    init_scale : float
        Initial standard deviation of q.
    init : {'network', 'map'}
        Where q's means start: ``'network'``, the network's initialization (Glorot weights,
        noise 0.5); ``'map'``, after ``init_steps`` full-batch Adam steps (at ``lr``, cosine
        decayed) on the log density from there. On networks with hundreds of weights the ELBO
        may then end in a better optimum: low-rank VI's did on UCI yacht and energy, mean-field
        VI's did not (``benchmarks/uci.py`` records the comparison).
    init_steps : int
        Adam steps of the ``'map'`` initialization.
    backend : {'flat', 'pyro'}
        ``'flat'`` (default) fits q directly on the model's batched flat log density
        (:mod:`~bayesresnet.inference.flat_vi`), 4-5 times faster per step
        (``benchmarks/vi.py``); ``'pyro'`` runs Pyro's SVI with ``AutoNormal``, the reference
        implementation. Same family, same objective; the draws of a given seed differ between
        the two.
    batch_size : int, optional
        Minibatch size B (1 <= B <= N): each step's ELBO uses B points with their log
        likelihood scaled by N / B (an unbiased estimate; the flat backend cycles through
        random permutations of the data, the Pyro backend subsamples the model's ``data``
        plate). None (default) or N: full batch. Worth it for N in the thousands, where a
        full-batch step's cost grows with N; the ELBO trace is then noisier.
    """

    steps: int = 5000
    lr: float = 0.01
    num_particles: int = 8
    num_draws: int = 1000
    init_scale: float = 0.01
    init: str = "network"
    init_steps: int = 1000
    backend: str = "flat"
    batch_size: int | None = None

    name: ClassVar[str] = "meanfield"
    kind: ClassVar[str] = "variational"

    def _rank(self, model: BayesianResNet) -> int | None:
        return None


@dataclass
class LowRank(_AutoGuideVI):
    """Gaussian variational inference with a low-rank-plus-diagonal covariance
    (the family of Pyro's ``AutoLowRankMultivariateNormal``).

    q = N(mu, D (F F^T + I) D) over the flat unconstrained parameters, with F of shape
    (dim, rank): captures the ``rank`` leading directions of posterior correlation.

    Parameters
    ----------
    rank : int, optional
        Rank of F; default :func:`default_rank` (about sqrt(dim)). Must not exceed the model's
        number of parameters.
    steps, lr, num_particles, num_draws, init_scale, init, init_steps, batch_size
        As for :class:`MeanField`.
    backend : {'flat', 'pyro'}
        As for :class:`MeanField`; ``'pyro'`` uses ``AutoLowRankMultivariateNormal``.
    """

    rank: int | None = None
    steps: int = 5000
    lr: float = 0.01
    num_particles: int = 8
    num_draws: int = 1000
    init_scale: float = 0.01
    init: str = "network"
    init_steps: int = 1000
    backend: str = "flat"
    batch_size: int | None = None

    name: ClassVar[str] = "lowrank"
    kind: ClassVar[str] = "variational"

    def check_settings(self) -> None:
        super().check_settings()
        if self.rank is not None:
            check_positive_int(type(self).__name__, "rank", self.rank)

    def validate(self, model: BayesianResNet) -> None:
        if self.rank is not None and self.rank > model.dim:
            raise ValueError(f"LowRank: rank={self.rank} exceeds the model's number of "
                             f"parameters ({model.dim})")

    def _rank(self, model: BayesianResNet) -> int | None:
        return default_rank(model.dim) if self.rank is None else int(self.rank)
