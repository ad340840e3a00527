"""The No-U-Turn Sampler on the model's flat unconstrained log density.

Every backend receives the same things: a log density of flat unconstrained vectors z, starting
points (C, D) for C chains, and the warmup and sampling settings. It returns the draws (C, S, D)
and per-draw statistics (C, S). What surrounds the backend is shared: the choice of starting
points (network initializations or prior draws, optionally improved by a short batched MAP
optimization), turning flat draws into constrained site draws, and evaluating the log joint of
every draw.

A run is planned as independent groups of chains (:meth:`NUTS.plan`, ``chains_per_unit``),
each a unit of work that runs here or on an executor (:mod:`bayesresnet.inference.executor`)
with the same result.

Backends
--------
``"vectorized"`` (default)
    Our No-U-Turn sampler (``bayesresnet.inference.nuts_kernel``,
    ``bayesresnet.inference.adaptation``) with all C chains advancing in lock-step: every
    leapfrog step is one batched gradient of the log density over a (C, D) tensor, chains whose
    trees have finished are masked, and each chain adapts its own mass matrix; the chains of a
    unit then sample with one step size, the geometric mean of their adapted ones (in
    lock-step every iteration waits for the chain with the smallest step; see
    ``adaptation.run_warmup``'s ``pool_step_size``).
``"pyro"``
    Pyro's ``NUTS`` kernel driven by ``MCMC``, one chain after another, on the potential
    ``-model.log_density(z, x, y)`` (no re-trace of the Pyro model), with Pyro's windowed
    step-size and mass-matrix adaptation. A small subclass of the kernel records the per-draw
    statistics that Pyro computes but does not keep (see :func:`sample_pyro`).

Per-draw statistics (arrays of shape (chain, draw), post-warmup only)
----------------------------------------------------------------------
``diverging``
    The energy error of a trajectory point exceeded 1000 (or was not finite) while the tree
    was built.
``tree_depth``
    Number of doublings merged into the trajectory, 0 <= depth <= ``max_tree_depth`` (Stan's
    ``treedepth__``; a subtree rejected for a U-turn or divergence inside it is not counted, so
    depth 0 means the very first leapfrog step diverged).
``num_steps``
    Leapfrog steps of the transition including those of a rejected last subtree (Stan's
    ``n_leapfrog__``): ``2**depth - 1 <= num_steps <= 2**(depth + 1) - 1``.
``reached_max_tree_depth``
    ``tree_depth == max_tree_depth``: the trajectory was cut by the depth limit.
``step_size``
    Leapfrog step size of the transition.
``accept_prob``
    Mean Metropolis acceptance probability over the new trajectory points (the statistic the
    step-size adaptation targets).
``log_density``
    Log density of the draw in z (log joint plus log-Jacobian); ``-potential``.
``log_joint``
    ``model.log_joint`` of the constrained draw (no Jacobian term).
``energy``
    The Hamiltonian H(z, r) = potential(z) + kinetic(r) of the selected point together with the
    momentum it had on its trajectory (Stan's ``energy__``, the input of E-BFMI). When the
    transition keeps its starting point, that is the starting point with the momentum drawn at
    the start of the transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pyro.infer
import torch
from torch import Tensor

from ..model import BayesianResNet
from . import adaptation
from .base import (
    InferenceMethod,
    MethodResult,
    check_positive_int,
    check_seed,
    make_progress,
    seeded_generator,
)
from .chains import (
    INITS,
    STREAM_INIT,
    LogDensity,
    TieredLogDensity,
    chain_group_plan,
    check_chain_settings,
    constrained_draws,
    initial_positions,
    start_positions,
)
from .executor import (
    Plan,
    derived_seed,
    private_pyro_state,
    run_plan,
    span,
    split_range,
)

__all__ = ["BACKENDS", "INITS", "NUTS", "SamplerOutput", "TieredLogDensity",
           "initial_positions", "sample_pyro"]

BACKENDS = ("vectorized", "pyro")

# Distinct streams derived from the fit's seed (STREAM_INIT, 1, is the starting draws').
_STREAM_CHAIN, _STREAM_UNIT = 2, 3
_STREAM_INIT = STREAM_INIT
_derived_seed = derived_seed


class SamplerOutput(NamedTuple):
    """What every backend returns.

    Attributes
    ----------
    samples : tensor (C, S, D)
        Flat unconstrained draws.
    stats : dict name -> ndarray (C, S)
        Per-draw statistics (the module docstring's, except ``log_joint``).
    inverse_mass : tensor (C, D) or (C, D, D)
        Adapted inverse mass matrix of each chain (diagonal or dense).
    warmup_divergences : ndarray (C,)
        Number of divergent warmup transitions of each chain.
    """

    samples: Tensor
    stats: dict[str, np.ndarray]
    inverse_mass: Tensor
    warmup_divergences: np.ndarray


# ---------------------------------------------------------------------------------- the method
@dataclass
class NUTS(InferenceMethod):
    """The No-U-Turn Sampler with adapted step size and mass matrix.

    Parameters
    ----------
    num_samples : int
        Draws kept per chain, after warmup.
    num_warmup : int
        Warmup (adaptation) iterations per chain, discarded; 0 disables adaptation entirely.
        Formerly ``warmup``, a name that still works, with a DeprecationWarning.
    chains : int
        Number of independent chains.
    target_accept : float
        Target mean acceptance probability of the step-size adaptation, in (0, 1).
    max_tree_depth : int
        Maximum number of trajectory doublings per iteration (at most 2**depth - 1 leapfrog
        steps).
    init : {'map', 'network', 'prior', 'prior-map'}
        Where each chain starts. ``'map'``: at ``init_steps`` Adam steps on the log density of
        z, begun at the chain's own draw of the network's initialization (Glorot weights, zero
        biases, noise 0.5; how ensemble members start). ``'network'``: at that draw itself.
        ``'prior'``: at the chain's own prior draw. ``'prior-map'``: at ``init_steps`` Adam
        steps begun at the prior draw (what ``'map'`` meant until 2026-11-27). Prior draws of a
        network's weights make wild functions, and the optimizer carries them to modes that
        fit the training data but generalize poorly, which the chains then cannot leave: on a
        held-out fifth of UCI yacht the chains of ``'prior-map'`` predicted with RMSE 0.43 to
        0.87, those of ``'map'`` with 0.26 to 0.31 (``benchmarks/uci.py``).
    backend : {'vectorized', 'pyro'}
        Sampler implementation (see the module docstring): ``'vectorized'`` (default) runs all
        chains in lock-step in one tensor program; ``'pyro'`` is Pyro's kernel, the reference.
    dense_mass : bool
        Adapt a dense mass matrix instead of a diagonal one.
    init_steps : int
        Adam steps of the MAP initialization.
    compile_after : int or None
        ``'vectorized'`` backend: after this many batched gradient evaluations the log density
        is compiled with ``torch.compile`` (inductor, static shapes) and the rest of the run
        uses the compiled program; ``0`` compiles from the first step, ``None`` never compiles.
        On the benchmark networks compiling takes 30-40 s and makes a gradient 1.2-3x faster
        (the gain shrinks as arithmetic outweighs per-operation overhead,
        ``benchmarks/compile.py``), so it pays only on long runs; the default, 20 000
        evaluations (about a minute of eager gradients on a small network), leaves short runs
        eager. The switch point is a count, not a time, so the draws stay reproducible. If
        compiling fails (no C++ compiler, for example) the run warns and stays eager.
    chains_per_unit : int, optional
        Chains per unit of work: the chains are split into consecutive groups of this size
        (the last may be smaller), each an independent unit that an executor can run on its own
        worker (see :func:`bayesresnet.fit`). Default: all chains in one unit for the
        ``'vectorized'`` backend (they run in lock-step), one chain per unit for ``'pyro'``.

    Notes
    -----
    Units and seeds: the draws the chains start from (network initializations or prior draws)
    are drawn for all chains at once from the fit's seed; each group then runs its own MAP
    initialization (batched over its chains) and its own sampler. With the vectorized backend,
    group 0 draws from the stream of the fit's seed and group k > 0 from a stream derived from
    (seed, k); with the Pyro backend chain c always uses a stream derived from (seed, c). The
    units depend only on these settings and the seed, not on where they run, so a fit with an
    executor gives the same draws as without one. Changing ``chains_per_unit`` changes the
    draws of the vectorized backend (except each chain's starting draw).
    """

    name: ClassVar[str] = "nuts"
    kind: ClassVar[str] = "mcmc"
    renamed_settings: ClassVar[Mapping[str, str]] = {"warmup": "num_warmup"}
    sampler_stats: ClassVar[frozenset[str] | None] = frozenset({
        "diverging", "tree_depth", "num_steps", "reached_max_tree_depth", "step_size",
        "accept_prob", "log_density", "log_joint", "energy"})

    num_samples: int = 1000
    num_warmup: int = 1000
    chains: int = 4
    target_accept: float = 0.8
    max_tree_depth: int = 10
    init: str = "map"
    backend: str = "vectorized"
    dense_mass: bool = False
    init_steps: int = 500
    compile_after: int | None = 20_000
    chains_per_unit: int | None = None

    # Only the 'pyro' backend uses Pyro's and torch's global state, under the global state lock.
    thread_safe: ClassVar[bool] = True

    def check_settings(self) -> None:
        check_positive_int("NUTS", "num_samples", self.num_samples)
        check_positive_int("NUTS", "chains", self.chains)
        check_positive_int("NUTS", "max_tree_depth", self.max_tree_depth)
        check_positive_int("NUTS", "init_steps", self.init_steps)
        check_chain_settings("NUTS", self.chains_per_unit, self.compile_after, self.init)
        if isinstance(self.num_warmup, bool) or not isinstance(
                self.num_warmup, (int, np.integer)) or self.num_warmup < 0:
            raise ValueError(f"NUTS: num_warmup must be a non-negative integer, got "
                             f"{self.num_warmup!r}")
        target = self.target_accept
        if isinstance(target, bool) or not isinstance(target, (int, float)) \
                or not (0.0 < target < 1.0):
            raise ValueError(f"NUTS: target_accept must be in the open interval (0, 1), "
                             f"got {target!r}")
        if not isinstance(self.dense_mass, bool):
            raise ValueError(f"NUTS: dense_mass must be True or False, got {self.dense_mass!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"NUTS: unknown backend {self.backend!r}; "
                             f"expected one of {list(BACKENDS)}")

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        """Sample the posterior of ``model`` given standardized ``x`` (N, in_dim), ``y``
        (N, out_dim).

        Returns
        -------
        MethodResult
            ``draws``: site -> (chains, num_samples, *site_shape), constrained; ``stats``: the
            per-draw statistics of the module docstring, each (chains, num_samples); ``extra``:
            ``initial_position`` (chains, dim), the flat unconstrained starting points;
            ``inverse_mass`` (chains, dim) or (chains, dim, dim), the adapted inverse mass
            matrices; ``warmup_divergences`` (chains,), divergent warmup transitions.
        """
        return run_plan(self.plan(model, x, y, seed), progress=progress)

    def chains_start_apart(self) -> bool:
        """True for ``init`` 'map' and 'prior-map', False for 'prior' and 'network'.

        'map' and 'prior-map' optimize each chain's start into the mode nearest its own
        initialization, so the chains begin at distinct modes on purpose and are diagnosed
        chain by chain (the pooled R-hat then measures how different the modes are). 'prior'
        and 'network' start each chain at an independent draw from one distribution (the
        prior, or the network initialization), not optimized: that is the classical setting of
        the pooled R-hat, whose chains should forget their starts and agree; if they settle in
        different modes, the run did not mix, and the pooled checks say so. On the demo problem
        NumPyro's randomly started chains do mix (pooled R-hat of f 1.009), so excusing them
        would hide a sampler that could.
        """
        return self.init in ("map", "prior-map")

    def chain_groups(self) -> list[range]:
        """The chains of each unit of work, in unit order (see ``chains_per_unit``)."""
        per_unit = self.chains_per_unit
        if per_unit is None:
            per_unit = self.chains if self.backend == "vectorized" else 1
        return split_range(self.chains, per_unit)

    def plan(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int) -> Plan:
        """The run as independent chain groups (one
        :class:`~bayesresnet.inference.executor.WorkUnit` each) and their merge.

        Running every unit and combining the results is exactly :meth:`run`; see
        :func:`bayesresnet.inference.executor.run_plan`.
        """
        self.validate(model)
        seed = check_seed(seed)
        return chain_group_plan("NUTS", self, model, x, y, seed, self.chain_groups(),
                                _sample_chain_group)


# ---------------------------------------------------------------------------------- a unit
def _sample_chain_group(method: NUTS, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
                        unit: int, chains: range, z_start: Tensor, *,
                        progress: bool) -> MethodResult:
    """One unit of work: start, sample and constrain the chains ``chains`` (unit ``unit``)."""
    z0 = start_positions(model, x, y, z_start, method.init, method.init_steps, chains.start)

    def log_density(z: Tensor) -> Tensor:
        return model.log_density(z, x, y)

    # The Pyro backend takes the global state lock itself (see sample_pyro).
    if method.backend == "pyro":
        out = _run_pyro(method, log_density, z0, seed, chains.start, progress)
    else:
        out = _run_vectorized(method, log_density, z0, seed, unit, chains.start, progress)
    draws, log_joint = constrained_draws(model, x, y, out.samples)
    stats = {**out.stats, "log_joint": log_joint}
    extra = {"initial_position": z0, "inverse_mass": out.inverse_mass,
             "warmup_divergences": out.warmup_divergences}
    return MethodResult(draws=draws, stats=stats, extra=extra)



# ---------------------------------------------------------------------------------- pyro backend
class _RecordingNUTS(pyro.infer.NUTS):
    """Pyro's NUTS kernel, unchanged, plus a record of every transition's statistics.

    Pyro builds the trajectory with ``_build_tree`` (one top-level call per doubling, recursing
    into itself and ``_build_basetree`` for single leapfrog steps) and draws the momentum with
    ``_sample_r``. Wrapping those three methods reads what the statistics need without touching
    the algorithm: the top-level subtrees' leapfrog counts, acceptance sums and divergence flags,
    the energy of every leaf, and the kinetic energy of the initial momentum.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []
        self._in_transition = False
        self._nesting = 0
        self._subtrees: list[tuple[int, Tensor, bool, bool]] = []
        self._leaves: dict[int, tuple[dict, Tensor]] = {}
        self._start_kinetic: Tensor | None = None

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        self.records = []
        super().setup(warmup_steps, *args, **kwargs)

    def _sample_r(self, name: str):
        r, r_unscaled = super()._sample_r(name)
        # The first draw inside a transition is its momentum; later ones come from the
        # step-size search at the end of an adaptation window.
        if self._in_transition and self._start_kinetic is None:
            self._start_kinetic = self._kinetic_energy(r_unscaled).detach()
        return r, r_unscaled

    def _build_basetree(self, z, r, z_grads, log_slice, direction, energy_current):
        leaf = super()._build_basetree(z, r, z_grads, log_slice, direction, energy_current)
        energy = leaf.z_proposal_pe + self._kinetic_energy(leaf.r_right_unscaled)
        # Keyed by identity: the kernel caches the selected leaf's own position dict.
        self._leaves[id(leaf.z_proposal)] = (leaf.z_proposal, energy.detach())
        return leaf

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):
        top = self._nesting == 0
        self._nesting += 1
        try:
            tree = super()._build_tree(z, r, z_grads, log_slice, direction, tree_depth,
                                       energy_current)
        finally:
            self._nesting -= 1
        if top:
            self._subtrees.append((int(tree.num_proposals), tree.sum_accept_probs.detach(),
                                   bool(tree.diverging), bool(tree.turning)))
        return tree

    def sample(self, params):
        self._subtrees, self._leaves, self._start_kinetic = [], {}, None
        step_size = float(self.step_size)
        self._in_transition = True
        try:
            out = super().sample(params)
        finally:
            self._in_transition = False
        z, potential, _ = self._fetch_from_cache()
        leaf = self._leaves.get(id(z))
        energy = leaf[1] if leaf is not None and leaf[0] is z else \
            potential.detach() + self._start_kinetic
        num_steps = sum(n for n, _, _, _ in self._subtrees)
        # Pyro merges a new subtree unless it diverged or turned inside (then it stops).
        depth = sum(not (d or t) for _, _, d, t in self._subtrees)
        self.records.append({
            "diverging": any(d for _, _, d, _ in self._subtrees),
            "tree_depth": depth,
            "num_steps": num_steps,
            "reached_max_tree_depth": depth >= self._max_tree_depth,
            "step_size": step_size,
            "accept_prob": float(sum(a for _, a, _, _ in self._subtrees)) / num_steps,
            "log_density": -float(potential),
            "energy": float(energy),
        })
        self._subtrees, self._leaves = [], {}
        return out


_STAT_DTYPES = {"diverging": bool, "tree_depth": np.int64, "num_steps": np.int64,
                "reached_max_tree_depth": bool, "step_size": np.float64,
                "accept_prob": np.float64, "log_density": np.float64, "energy": np.float64}


def sample_pyro(logdensity_fn: LogDensity, init_position: Tensor, num_warmup: int,
                num_samples: int, seed: int, *, target_accept: float = 0.8,
                max_tree_depth: int = 10, dense_mass: bool = False, progress: bool = False,
                first_chain: int = 0) -> SamplerOutput:
    """Run Pyro's NUTS on a flat log density, one chain after another.

    Parameters
    ----------
    logdensity_fn : callable(z (D,)) -> scalar tensor
        Log density (up to a constant) of the flat unconstrained vector, differentiable.
    init_position : tensor (C, D)
        Starting point of each of the C chains.
    num_warmup, num_samples : int
        Warmup (adaptation) iterations, discarded, and kept draws per chain.
    seed : int
        Chain c uses the torch seed derived from (seed, c); the caller's RNG state is restored.
        Pyro's MCMC draws from the global torch RNG and runs under Pyro's global handler stack,
        so the chains run under the global state lock with a private Pyro param store
        (:func:`~bayesresnet.inference.executor.private_pyro_state`): one such run at a time
        per process.
    target_accept, max_tree_depth, dense_mass
        As in :class:`NUTS`.
    progress : bool
        Show Pyro's progress bar.
    first_chain : int
        Index of the first of the C chains in the whole run: row i of ``init_position`` is
        chain ``first_chain + i`` (and uses that chain's seed).

    Returns
    -------
    SamplerOutput
    """
    seed = check_seed(seed)
    if init_position.dim() != 2:
        raise ValueError(f"init_position must have shape (chains, dim), "
                         f"got {tuple(init_position.shape)}")

    def potential_fn(params: dict[str, Tensor]) -> Tensor:
        return -logdensity_fn(params["z"])

    chain_samples, chain_records, chain_inverse_mass = [], [], []
    with private_pyro_state():
        for chain, z0 in enumerate(init_position.detach(), start=int(first_chain)):
            kernel = _RecordingNUTS(
                potential_fn=potential_fn, adapt_step_size=True, adapt_mass_matrix=True,
                full_mass=dense_mass, target_accept_prob=float(target_accept),
                max_tree_depth=int(max_tree_depth), jit_compile=False)
            mcmc = pyro.infer.MCMC(kernel, num_samples=int(num_samples),
                                   warmup_steps=int(num_warmup),
                                   initial_params={"z": z0.clone()}, num_chains=1,
                                   disable_progbar=not progress)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_derived_seed(seed, _STREAM_CHAIN, chain))
                mcmc.run()
            chain_samples.append(mcmc.get_samples()["z"].detach())
            chain_records.append(kernel.records)
            # One site, so the adapter holds one (diagonal or dense) block.
            (inverse_mass,) = kernel.inverse_mass_matrix.values()
            chain_inverse_mass.append(inverse_mass.detach().clone())
    stats = {name: np.array([[rec[name] for rec in records[num_warmup:]]
                             for records in chain_records], dtype=dtype)
             for name, dtype in _STAT_DTYPES.items()}
    warmup_divergences = np.array([sum(rec["diverging"] for rec in records[:num_warmup])
                                   for records in chain_records], dtype=np.int64)
    return SamplerOutput(torch.stack(chain_samples), stats, torch.stack(chain_inverse_mass),
                         warmup_divergences)


def _run_pyro(method: NUTS, logdensity_fn: LogDensity, z0: Tensor, seed: int, first_chain: int,
              progress: bool) -> SamplerOutput:
    return sample_pyro(logdensity_fn, z0, method.num_warmup, method.num_samples, seed,
                       target_accept=method.target_accept, max_tree_depth=method.max_tree_depth,
                       dense_mass=method.dense_mass, progress=progress, first_chain=first_chain)


# ---------------------------------------------------------------------------------- vectorized
def _run_vectorized(method: NUTS, logdensity_fn: LogDensity, z0: Tensor, seed: int, unit: int,
                    first_chain: int, progress: bool) -> SamplerOutput:
    """All chains of a unit in lock-step: one batched gradient over (C, D) per leapfrog step."""
    # Unit 0 keeps the stream an undivided run has always used.
    stream = _derived_seed(seed, _STREAM_CHAIN) if unit == 0 else \
        _derived_seed(seed, _STREAM_UNIT, unit)
    generator = seeded_generator(stream)
    if z0.device.type != "cpu":  # the kernel draws on the chains' device
        generator = torch.Generator(device=z0.device).manual_seed(stream)
    total = method.num_warmup + method.num_samples
    chains = range(first_chain, first_chain + z0.shape[0])
    with make_progress(progress, total, f"NUTS {span(chains, 'chain')}") as bar:

        def callback(i: int, info: Any) -> None:
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(steps=int(info.num_steps.max()),
                                warmup=i < method.num_warmup, refresh=False)

        logdensity_fn = TieredLogDensity(logdensity_fn, method.compile_after, "NUTS")
        samples, stats = adaptation.sample(
            logdensity_fn, z0, method.num_warmup, method.num_samples, generator,
            target_accept=method.target_accept, max_tree_depth=method.max_tree_depth,
            dense_mass=method.dense_mass, callback=callback if progress else None,
            pool_step_size=True)  # one step for the lock-step chains: docs/methods.rst
    inverse_mass = stats.pop("inverse_mass")
    warmup_divergences = stats.pop("warmup_diverging").sum(-1).cpu().numpy().astype(np.int64)
    arrays = {name: stats[name].detach().cpu().numpy().astype(dtype)
              for name, dtype in _STAT_DTYPES.items()}
    return SamplerOutput(samples.detach(), arrays, inverse_mass.detach(), warmup_divergences)

