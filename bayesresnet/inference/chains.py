"""Parts every sampler of the model's flat log density shares: where its chains start, how
their flat draws become site draws, how chain groups run as units and join, and the log density
that switches to a compiled program after a number of calls.

Used by :class:`~bayesresnet.inference.nuts.NUTS` and :class:`~bayesresnet.inference.mclmc.MCLMC`,
so for one seed both samplers' chains begin at the same points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model import BayesianResNet
from .base import MethodResult, check_positive_int, check_seed
from .compilation import TieredFunction
from .executor import Plan, WorkUnit, derived_seed, global_state_lock, span
from .optim import map_fit

__all__ = ["INITS", "OPTIMIZED_INITS", "PRIOR_INITS", "STREAM_INIT", "LogDensity",
           "TieredLogDensity", "chain_group_plan", "check_chain_settings",
           "combine_chain_groups", "constrained_draws", "initial_positions", "start_positions",
           "starting_draws"]

LogDensity = Callable[[Tensor], Tensor]

INITS = ("map", "network", "prior", "prior-map")
"""Where chains may start (see :class:`~bayesresnet.inference.nuts.NUTS`'s ``init``)."""
OPTIMIZED_INITS = ("map", "prior-map")
PRIOR_INITS = ("prior", "prior-map")

# Learning rate of the MAP initialization. Adam moves each coordinate by about lr per step
# whatever the gradient's scale, so 500 steps can carry an extreme prior draw (e.g. a noise
# scale of 1e-4, z = log noise = -9) back into the bulk; the cosine decay then settles it.
_INIT_LR = 0.05

# Budget (bytes) for one chunk of draws when the log joint of all draws is evaluated.
_CHUNK_BYTES = 1 << 28

STREAM_INIT = 1
"""Stream (of :func:`~bayesresnet.inference.executor.derived_seed`) of the starting draws."""


def initial_positions(model: BayesianResNet, x: Tensor, y: Tensor, chains: int, seed: int,
                      init: str = "map", init_steps: int = 500) -> Tensor:
    """Flat unconstrained starting points of the chains, shape (chains, dim).

    Each chain's start is its own draw of the network's initialization (``init='network'``) or
    of the prior (``init='prior'``), for ``'map'`` and ``'prior-map'`` respectively improved by
    ``init_steps`` Adam steps on the log density of z, batched over chains (see
    :class:`~bayesresnet.inference.nuts.NUTS`).

    Raises
    ------
    ValueError
        If a starting point has a non-finite log density.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {list(INITS)}")
    seed = check_seed(seed)
    z_start = starting_draws(model, init, chains, seed)
    return start_positions(model, x, y, z_start, init, init_steps)


def starting_draws(model: BayesianResNet, init: str, chains: int, seed: int) -> Tensor:
    """The flat draws (chains, dim) the chains start from, before any optimization: prior draws
    for ``init`` 'prior' and 'prior-map', network initializations otherwise; all from one
    stream of the fit's seed, chain after chain."""
    stream = derived_seed(seed, STREAM_INIT)
    if init in PRIOR_INITS:
        # sample_prior seeds and draws from the global torch RNG (inside fork_rng).
        with global_state_lock():
            values = model.sample_prior(stream, (chains,))
    else:
        generator = torch.Generator().manual_seed(stream)
        draws = [model.initial_values(generator) for _ in range(chains)]
        values = {name: torch.stack([draw[name] for draw in draws]) for name in draws[0]}
    return model.unconstrain(values).detach()


def start_positions(model: BayesianResNet, x: Tensor, y: Tensor, z_start: Tensor, init: str,
                    init_steps: int, first_chain: int = 0, owner: str = "NUTS") -> Tensor:
    """Starting points (C, dim) of chains first_chain, first_chain + 1, ... from their flat
    starting draws ``z_start`` (C, dim): unchanged, or after a MAP optimization batched over
    C. The starting points are in the dtype and on the device of ``x``."""
    z_start = z_start.to(x)
    if init in OPTIMIZED_INITS:
        z0, start = map_fit(model, x, y, z_start, init_steps, _INIT_LR)
    else:
        z0 = z_start
        with torch.no_grad():
            start = model.log_density(z0, x, y)
    bad = (~torch.isfinite(start)).nonzero().flatten().tolist()
    if bad:
        chains = [first_chain + b for b in bad]
        raise ValueError(f"{owner}: the starting point of chain(s) {chains} has a non-finite log "
                         f"density ({start[bad].tolist()}) after init={init!r}")
    return z0


def _concat_chains(parts: list[Any]) -> Any:
    """Tensors or arrays of several chain groups joined along the chain axis (0)."""
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return np.concatenate(parts)


def combine_chain_groups(results: list[MethodResult]) -> MethodResult:
    """One result with every group's chains, in group order."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    return MethodResult(
        draws={name: _concat_chains([r.draws[name] for r in results]) for name in first.draws},
        stats={name: _concat_chains([r.stats[name] for r in results]) for name in first.stats},
        extra={name: _concat_chains([r.extra[name] for r in results]) for name in first.extra})


def constrained_draws(model: BayesianResNet, x: Tensor, y: Tensor,
                       samples: Tensor) -> tuple[dict[str, Tensor], np.ndarray]:
    """Site draws (C, S, *site_shape) and their log joint (C, S) from flat draws (C, S, D)."""
    chains, num = samples.shape[:2]
    flat = samples.reshape(chains * num, -1)
    per_draw = 8 * x.shape[0] * (getattr(model.net, "width", 1) * 4 + 2 * model.out_dim)
    chunk = max(1, _CHUNK_BYTES // max(per_draw, 1))
    parts: dict[str, list[Tensor]] = {name: [] for name in model.latent_sites}
    log_joint = []
    with torch.no_grad():
        for start in range(0, flat.shape[0], chunk):
            values, _ = model.constrain(flat[start:start + chunk])
            log_joint.append(model.log_joint(values, x, y))
            for name, value in values.items():
                parts[name].append(value)
    draws = {name: torch.cat(v).reshape((chains, num, *model.latent_shapes[name]))
             for name, v in parts.items()}
    return draws, torch.cat(log_joint).reshape(chains, num).cpu().numpy()


class TieredLogDensity(TieredFunction):
    """A log density that runs eagerly for its first ``compile_after`` calls, then compiled
    (:class:`~bayesresnet.inference.compilation.TieredFunction` with the same function both
    ways, one call per gradient).

    Parameters
    ----------
    fn : callable
        Batched log density, (C, D) -> (C,).
    compile_after : int or None
        Calls before switching to ``torch.compile(fn, dynamic=False)``; 0: compiled from the
        first call; None: never.
    owner : str
        The sampler's name, for the warning when compiling fails.
    """

    def __init__(self, fn: LogDensity, compile_after: int | None, owner: str = "NUTS") -> None:
        super().__init__(fn, fn, compile_after, owner=owner, what="log density")
        self.fn = fn


def chain_group_plan(owner: str, method: Any, model: BayesianResNet, x: Tensor, y: Tensor,
                     seed: int, groups: list[range], run_group: Callable[..., MethodResult]
                     ) -> Plan:
    """A sampler's run as one unit of work per chain group, joined by
    :func:`combine_chain_groups`.

    Parameters
    ----------
    owner : str
        The sampler's name, for the units' labels and the hint.
    method : NUTS or MCLMC
        Its settings; ``method.init`` and ``method.chains`` choose the starting draws, which are
        drawn for all chains at once so that they do not depend on the grouping.
    model, x, y, seed
        What :meth:`~bayesresnet.inference.base.InferenceMethod.run` receives.
    groups : list of range
        The chains of each unit.
    run_group : callable
        ``run_group(method, model, x, y, seed, unit, chains, z_start, *, progress)``, a
        module-level function (units are pickled to run elsewhere).
    """
    z_start = starting_draws(model, method.init, method.chains, seed)
    units = tuple(
        WorkUnit(f"{owner} chain group {k} of {len(groups)} ({span(chains, 'chain')})", run_group,
                 (method, model, x, y, int(seed), k, chains, z_start[chains.start:chains.stop]))
        for k, chains in enumerate(groups))
    hint = ""
    if len(groups) == 1 and method.chains > 1:
        hint = (f"{owner}: all {method.chains} chains form one unit of work, so an executor runs "
                f"them on one worker; set {owner}(chains_per_unit=...) to spread them")
    return Plan(units, combine_chain_groups, desc=f"{owner} ({len(groups)} chain groups)",
                hint=hint)


def check_chain_settings(owner: str, chains_per_unit: Any, compile_after: Any, init: Any) -> None:
    """Raise ValueError for the settings every sampler of this module shares: ``init`` one of
    :data:`INITS`, ``chains_per_unit`` None or a positive integer, ``compile_after`` None or a
    non-negative integer."""
    if chains_per_unit is not None:
        check_positive_int(owner, "chains_per_unit", chains_per_unit)
    if compile_after is not None and (isinstance(compile_after, bool) or not isinstance(
            compile_after, (int, np.integer)) or compile_after < 0):
        raise ValueError(f"{owner}: compile_after must be a non-negative integer or None, "
                         f"got {compile_after!r}")
    if init not in INITS:
        raise ValueError(f"{owner}: unknown init {init!r}; expected one of {list(INITS)}")
