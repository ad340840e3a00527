"""Time to a passing posterior: our NUTS and MCLMC beside BlackJAX's MCLMC and NumPyro's NUTS.

Every contender samples the same posterior. The default settings are those at which each
passed its checks of mixing (R-hat, ESS, divergences) on the demo problem (seed 0): both NUTS
rows 4 chains x (300 warmup + 200 draws), ``max_tree_depth=12``, NumPyro's at
``target_accept=0.9`` (what docs/methods.rst found to pass; 0.6% divergent on 2026-12-07) and
ours at 0.95 (at 0.9 its runs of 2026-12-06 and 2026-12-07 had 1.6% and 1.75% divergent, over
the 1% limit; at 0.95, 0.1%, though 74% of its trees reach the depth cap), ours from random
network initializations (``init='network'``); both MCLMC rows 4 chains x (20 000 tuning +
300 000 sampling steps, every 300th kept; the demo's MCLMC settings). BlackJAX's MCLMC gets
our energy target unless ``--blackjax-energy-variance`` says otherwise; it fails our energy
check at 1e-4 and passed at 1e-6 on seed 0 (on 1 of seeds 0-4; ``sampling_seeds.py``). Every
setting is an option, and the report says per row which checks passed:

``nuts``
    ``bayesresnet.fit(..., NUTS(...))``: our vectorized NUTS, chains in lock-step, each begun at
    its own network initialization (``--nuts-init``; ``'map'`` begins at MAP fits from there
    and is judged chain by chain).
``mclmc``
    ``bayesresnet.fit(..., MCLMC(...))``: our microcanonical Langevin sampler (MILE-style
    tuning), chains in lock-step from MAP starts.
``blackjax``
    BlackJAX's MCLMC (``blackjax.mcmc.mclmc`` with its default isokinetic McLachlan
    integrator, tuned by ``blackjax.mclmc_find_L_and_step_size`` with a diagonal
    preconditioner) on our flat log density written in JAX (:func:`jax_log_density`), chains
    vectorized with ``jax.vmap``, started at the MAP points our
    :func:`~bayesresnet.inference.nuts.initial_positions` finds for the same seed (the points
    ``MCLMC`` starts from) and given the same tuning and sampling steps and the same
    ``desired_energy_variance`` as ``mclmc``.
``numpyro``
    NumPyro's NUTS with ``chain_method="vectorized"`` on the model of ``benchmarks/nuts.py``
    (:func:`nuts.numpyro_model`), NumPyro's own initialization (uniform in [-2, 2] in the
    unconstrained space).

Problems: (a) ``cubic``: exactly what ``bayesresnet demo`` fits (20 points of the cubic toy,
seed 0; ResNet of ``bayesresnet.cli.DEMO_NET``; ``priors.Normal(1.0)``, Gaussian likelihood with a
HalfNormal(1) noise), scored on ``brn.data.cubic(1000, seed=1)``; (b) ``yacht``: UCI yacht split
0 with the network and prior of ``benchmarks/uci.py``'s ``default_config()``, scored on the test
part of the split. The data are standardized as ``fit`` does.

Before sampling, the script checks that the JAX log density equals ``model.log_density`` at
random flat points (:func:`check_jax_density`, relative tolerance 1e-6 in float64, with the
gradient) and that NumPyro's model has our log joint (``nuts.check_same_density``).

Columns (see the report's definitions): wall time (MAP starts, compilation, tuning and warmup
included), gradient evaluations per chain and in total, the within-chain bulk ESS of the network
mean f at 20 test inputs and of the noise, ESS per second and per 1000 gradients, pooled and
chain-wise R-hat, test RMSE and NLL in original units, and whether the run passes its own
diagnostics. Ratios come from the same process.

Run from the repository root (one core each: torch and XLA at one thread, ``--cpus 1`` pins the
process)::

    python benchmarks/sampling.py --cpus 1 --tune-allocator                # both problems
    python benchmarks/sampling.py --problems cubic --cpus 1 --tune-allocator
    python benchmarks/sampling.py --problems yacht --merge --cpus 1 --tune-allocator
    python benchmarks/sampling.py --quick                                  # smoke run
    python benchmarks/sampling.py --contenders mclmc blackjax --chains 8 \
        --set yacht:mclmc_steps=240000 --set yacht:mclmc_thinning=240

``--merge`` keeps the rows of the problems not run now from the report at ``--out`` (the report
embeds its rows as JSON), so the problems can run one at a time; ``--set PROBLEM:NAME=VALUE``
changes a setting for one problem only.

Needs the ``bench`` extra (``pip install 'bayesresnet[bench]'``: NumPyro, JAX, BlackJAX); the JAX
contenders are skipped with a message without it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import bayesresnet as brn
from bayesresnet import arviz_compat, metrics
from bayesresnet import diagnostics as brn_diagnostics
from bayesresnet.arviz_compat import draws_dataset, ess, rhat
from bayesresnet.cli import DEMO_NET, DEMO_TEST_POINTS, DEMO_TRAIN_POINTS
from bayesresnet.diagnostics import (
    DIVERGENCE_MAX,
    EBFMI_MIN,
    ESS_PER_CHAIN,
    RHAT_MAX,
    TREE_DEPTH_MAX,
    ebfmi,
)
from bayesresnet.inference.mclmc import ENERGY_VARIANCE_LIMIT  # MCLMC's energy-error check

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nuts as nuts_bench  # (benchmarks/nuts.py: problems, NumPyro model, checks)
import uci as uci_bench  # (benchmarks/uci.py: the UCI network and prior)

REPO = Path(__file__).resolve().parents[1]
# The library's threshold for one chain's split R-hat under its chain-wise rule (chains begun at
# distinct modes), where it has one; else the pooled threshold.
CHAIN_RHAT_MAX = getattr(brn_diagnostics, "CHAIN_RHAT_MAX", RHAT_MAX)
F64 = torch.float64
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

CONTENDERS = {
    "nuts": "ours, NUTS",
    "mclmc": "ours, MCLMC",
    "blackjax": "BlackJAX MCLMC",
    "numpyro": "NumPyro NUTS",
}
JAX_CONTENDERS = ("blackjax", "numpyro")


# ---------------------------------------------------------------------------------- problems
@dataclass
class Bench:
    """One posterior to sample: the problem of ``benchmarks/nuts.py`` plus a test set.

    Attributes
    ----------
    key : str
        ``'cubic'`` or ``'yacht'``.
    problem : nuts.Problem
        Model, standardized training data and the 20 standardized inputs at which f is
        diagnosed (``problem.x_test``).
    x_eval, y_eval : ndarray
        Test inputs and targets in original units (RMSE, NLL).
    description : str
        A line for the report.
    """

    key: str
    problem: Any
    x_eval: np.ndarray
    y_eval: np.ndarray
    description: str


def demo_model(net: brn.ResNet) -> brn.BayesianResNet:
    """The model ``bayesresnet demo`` fits (see ``bayesresnet.cli._cmd_demo``)."""
    return brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                              likelihood=brn.likelihoods.Gaussian())


def make_bench(key: str, data_root: Path | None = None) -> Bench:
    """The demo problem (``'cubic'``) or UCI yacht split 0 (``'yacht'``).

    Parameters
    ----------
    key : {'cubic', 'yacht'}
    data_root : Path, optional
        Folder of the UCI data sets (needed for ``'yacht'``).

    Returns
    -------
    Bench
    """
    if key == "cubic":
        x, y = brn.data.cubic(DEMO_TRAIN_POINTS, seed=0)
        x_eval, y_eval = brn.data.cubic(DEMO_TEST_POINTS, seed=1)
        net = brn.ResNet(1, 1, **DEMO_NET)
        problem = nuts_bench.Problem(f"cubic demo (N={len(x)})", net, x, y,
                                     np.linspace(-4.0, 4.0, 20)[:, None])
        problem.model = demo_model(net)
        description = (f"the demo: cubic toy, {len(x)} points (seed 0), ResNet width "
                       f"{net.width}, depth {net.depth}, {DEMO_NET['basis']} basis, "
                       f"{problem.model.dim} parameters, priors.Normal(1.0), HalfNormal(1) noise; "
                       f"f at 20 inputs on [-4, 4]; test: {len(x_eval)} points (seed 1)")
        return Bench(key, problem, x_eval, y_eval, description)
    if key == "yacht":
        if data_root is None:
            raise ValueError("the yacht problem needs data_root")
        x, y, x_test, y_test = brn.data.uci("yacht", 0, root=data_root, download=False)
        config = uci_bench.default_config()
        spec = uci_bench.method_model(config, "nuts")
        net = brn.ResNet(x.shape[1], 1, width=spec["width"], depth=spec["depth"],
                         basis=spec["basis"], activation=spec["activation"],
                         horizon=spec["horizon"])
        problem = nuts_bench.Problem(f"yacht split 0 (N={len(x)})", net, x, y, x_test[:20])
        problem.model = uci_bench.build_model(config, x.shape[1], "nuts")
        description = (f"UCI yacht split 0: {len(x)} training points, ResNet width {net.width}, "
                       f"depth {net.depth}, {spec['basis']} basis, {problem.model.dim} "
                       f"parameters, priors.Normal({spec['prior_scale']}), "
                       f"HalfNormal({spec['noise_prior_scale']}) noise (benchmarks/uci.py); f at "
                       f"the first 20 test inputs; test: {len(x_test)} points")
        return Bench(key, problem, x_test, y_test, description)
    raise ValueError(f"unknown problem {key!r}; expected 'cubic' or 'yacht'")


# ---------------------------------------------------------------------------------- JAX side
def jax_available() -> bool:
    """Whether JAX, NumPyro and BlackJAX are installed (without importing them: XLA reads its
    flags at the first import, see :func:`import_jax`)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None
               for name in ("jax", "numpyro", "blackjax"))


def import_jax(threads: int = 1) -> Any:
    """Import JAX with float64 on (and, for ``threads == 1``, XLA's CPU pool at one thread when
    JAX has not been imported yet: XLA reads its flags once)."""
    if threads == 1 and "jax" not in sys.modules:
        os.environ.setdefault("XLA_FLAGS", XLA_ONE_THREAD)
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _site_kind(site: Any) -> tuple[str, np.ndarray]:
    """``('normal', scale)`` or ``('halfnormal', scale)`` of a site's prior (scales flattened to
    the site's size), for the priors our JAX density knows."""
    prior = site.prior
    base = prior.base_dist if isinstance(prior, torch.distributions.Independent) else prior
    size = site.numel
    if isinstance(base, torch.distributions.Normal):
        if bool((base.loc != 0).any()):
            raise NotImplementedError(f"site {site.name}: a Normal prior with a nonzero mean")
        scale = base.scale.detach().to(F64).expand(site.shape).reshape(size).numpy()
        return "normal", scale
    if isinstance(base, torch.distributions.HalfNormal):
        scale = base.scale.detach().to(F64).expand(site.shape).reshape(size).numpy()
        return "halfnormal", scale
    raise NotImplementedError(f"site {site.name}: prior {type(base).__name__} is not written "
                              "in JAX here")


def _support_kind(site: Any) -> str:
    support = site.support
    while isinstance(support, torch.distributions.constraints.independent):
        support = support.base_constraint
    if support is torch.distributions.constraints.real:
        return "real"
    bounded_below = (torch.distributions.constraints.greater_than,
                     torch.distributions.constraints.greater_than_eq)
    if isinstance(support, bounded_below) and support.lower_bound == 0:
        return "positive"
    raise NotImplementedError(f"site {site.name}: support {support} is not written in JAX here")


def jax_log_density(model: brn.BayesianResNet, x: Tensor, y: Tensor) -> Callable[[Any], Any]:
    """``model.log_density(z, x, y)`` written in JAX, for one flat vector z of length ``dim``.

    The layout of z is the model's (``model.latent_sites`` in order, each site's unconstrained
    value flattened row-major at ``model.flat_slices()``); real sites are their own
    unconstrained value and positive ones are ``exp`` of it, with the log-Jacobian (the sum of
    their unconstrained coordinates) added. Written for what the benchmark needs: a
    :class:`~bayesresnet.ResNet` with the Euler integrator, Normal(0, scale) priors on the
    network, a Gaussian likelihood with learned HalfNormal-prior noise.

    Parameters
    ----------
    model : BayesianResNet
    x, y : Tensor
        Standardized training inputs (N, in_dim) and targets (N, out_dim) or (N,).

    Returns
    -------
    callable
        ``z (dim,) -> scalar`` JAX function (float64 when JAX's x64 mode is on).

    Raises
    ------
    NotImplementedError
        For a model outside that scope.
    """
    import jax
    import jax.numpy as jnp

    net = model.net
    if not isinstance(net, brn.ResNet) or net.integrator != "euler":
        raise NotImplementedError("jax_log_density covers ResNets with the Euler integrator")
    likelihood = model.likelihood
    if not likelihood.learns_noise:
        raise NotImplementedError("jax_log_density covers a learned (HalfNormal) noise scale")
    activation = {"tanh": jnp.tanh, "relu": jax.nn.relu, "silu": jax.nn.silu,
                  "identity": lambda v: v}[net.activation]
    slices = model.flat_slices()
    shapes = dict(model.latent_shapes)
    priors, positive = {}, {}
    for name, site in model.latent_sites.items():
        priors[name] = _site_kind(site)
        positive[name] = _support_kind(site) == "positive"
        if positive[name] != (priors[name][0] == "halfnormal"):
            raise NotImplementedError(f"site {name}: prior and support do not pair as expected")
    phi = jnp.asarray(net.basis.matrix(net.layer_times(), net.depth, net.horizon,
                                       dtype=F64).numpy())
    x_j = jnp.asarray(x.to(F64).numpy())
    y_j = jnp.asarray(y.to(F64).reshape(x.shape[0], -1).numpy())
    dt, depth = net.dt, net.depth
    half_log_2pi = 0.5 * math.log(2.0 * math.pi)
    constants = {name: (jnp.asarray(1.0 / scale), float(np.log(scale).sum()))
                 for name, (_, scale) in priors.items()}

    def log_density(z: Any) -> Any:
        values, total = {}, 0.0
        for name, (start, stop) in slices.items():
            u = z[start:stop]
            inv_scale, log_scale_sum = constants[name]
            n = stop - start
            if positive[name]:
                value = jnp.exp(u)
                total = total + jnp.sum(u)  # log|d exp(u) / du|
                # HalfNormal: log 2 - log scale - log sqrt(2 pi) - value^2 / (2 scale^2)
                total = total + n * (math.log(2.0) - half_log_2pi) - log_scale_sum \
                    - 0.5 * jnp.sum((value * inv_scale) ** 2)
            else:
                value = u
                total = total - n * half_log_2pi - log_scale_sum \
                    - 0.5 * jnp.sum((value * inv_scale) ** 2)
            values[name] = value.reshape(shapes[name])
        h = x_j @ values["input_weight"].T + values["input_bias"]
        weights = jnp.einsum("mk,kij->mij", phi, values["W_coef"])
        biases = phi @ values["b_coef"]
        for n in range(depth):
            h = h + dt * activation(h @ weights[n].T + biases[n])
        mean = h @ values["output_weight"].T + values["output_bias"]
        noise = values["noise"]
        resid = (y_j - mean) / noise
        log_lik = -0.5 * jnp.sum(resid ** 2) - y_j.shape[0] * jnp.sum(jnp.log(noise)) \
            - y_j.size * half_log_2pi
        return total + log_lik

    return log_density


def random_flat_points(model: brn.BayesianResNet, points: int, seed: int) -> Tensor:
    """Flat unconstrained points (points, dim): prior draws and, alternately, network
    initializations (Glorot weights, noise 0.5; where the samplers start) jittered by
    N(0, 0.1^2) in every coordinate, so that both wild and plausible networks are compared."""
    prior = model.unconstrain(model.sample_prior(seed, (points,))).detach()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(points):
        if i % 2 == 0:
            rows.append(prior[i])
            continue
        start = model.unconstrain(model.initial_values(generator)).detach()
        rows.append(start + 0.1 * torch.randn(start.shape, generator=generator, dtype=F64))
    return torch.stack(rows)


def check_jax_density(model: brn.BayesianResNet, x: Tensor, y: Tensor,
                      fn: Callable[[Any], Any], points: int = 5, seed: int = 0,
                      rtol: float = 1e-6) -> float:
    """Assert that a JAX log density equals ``model.log_density`` at random flat points.

    The points are those of :func:`random_flat_points`. The value
    and the gradient (by ``jax.grad`` against torch's autograd) must agree at every point within
    ``rtol`` relative to the larger of 1 and the value's (the gradient's) magnitude.

    Parameters
    ----------
    model : BayesianResNet
    x, y : Tensor
        Standardized data, as given to :func:`jax_log_density`.
    fn : callable
        The JAX log density of one flat vector.
    points : int
        Random points to compare at.
    seed : int
    rtol : float

    Returns
    -------
    float
        The largest relative difference of the values.

    Raises
    ------
    AssertionError
        When the value or the gradient differs at a point.
    """
    import jax
    import jax.numpy as jnp

    z = random_flat_points(model, points, seed).requires_grad_(True)
    ours = model.log_density(z, x, y)
    (grads,) = torch.autograd.grad(ours.sum(), z)
    ours = ours.detach()
    value_and_grad = jax.jit(jax.value_and_grad(fn))
    worst = 0.0
    for i in range(points):
        theirs, their_grad = value_and_grad(jnp.asarray(z[i].detach().numpy()))
        ref = float(ours[i])
        err = abs(float(theirs) - ref) / max(1.0, abs(ref))
        gref = grads[i].numpy()
        gerr = float(np.max(np.abs(np.asarray(their_grad) - gref))) / max(
            1.0, float(np.max(np.abs(gref))))
        if not (err <= rtol and gerr <= rtol):
            raise AssertionError(f"the JAX log density differs from model.log_density at point "
                                 f"{i}: {float(theirs)!r} against {ref!r} (relative {err:.2e}), "
                                 f"gradient relative difference {gerr:.2e} (rtol {rtol})")
        worst = max(worst, err)
    return worst


# ---------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One contender's draws and costs.

    Attributes
    ----------
    key : str
        Contender key (:data:`CONTENDERS`).
    settings : str
        Its settings, for the report.
    posterior : Posterior
        Our posterior (ours) or the draws wrapped by ``brn.from_pyro`` (JAX contenders).
    seconds : float
        Wall time: MAP starts, compilation, tuning or warmup, and sampling.
    cpu_seconds : float
        CPU time of this process over the same span.
    grads_per_chain : float
        Gradient evaluations each chain paid for, in lock-step (see the report).
    chains : int
    start : {'map', 'random'}
        Where the chains began; MAP starts are diagnosed chain by chain.
    stats : dict
        ``diverging``, ``reached_max_tree_depth``, ``energy`` (chain, draw) for NUTS rows,
        ``diverging`` for BlackJAX's MCLMC.
    initial_position : Tensor or None
        Flat starting points (chains, dim) of MAP-started chains.
    own_ok : bool or None
        ``posterior.diagnose().ok`` for our samplers.
    own_failed : list of str
        The checks of ``diagnose()`` that failed.
    notes : list of str
    """

    key: str
    settings: str
    posterior: Any
    seconds: float
    cpu_seconds: float
    grads_per_chain: float
    chains: int
    start: str
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    initial_position: Tensor | None = None
    own_ok: bool | None = None
    own_failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Clock:
    """Wall and process CPU time of a block."""

    def __enter__(self) -> _Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu


@contextlib.contextmanager
def count_batched_gradients() -> Iterator[list[int]]:
    """Count the batched gradient evaluations our samplers make in their integration steps
    (each one value and gradient over all chains of a chain group) while the block runs.

    Wraps ``TieredLogDensity.__call__``, the log density NUTS calls per leapfrog step, and
    ``mclmc_kernel.Stepper.__call__``, MCLMC's step (counted as its integrator's gradients per
    step, since a compiled step evaluates the log density inside one program). The MAP start
    and MCLMC's one evaluation at its starting points are not counted. Yields a one-element
    list holding the count.
    """
    from bayesresnet.inference.chains import TieredLogDensity
    from bayesresnet.inference.mclmc_kernel import Stepper

    counter = [0]
    density_call, step_call = TieredLogDensity.__call__, Stepper.__call__

    def counting_density(self: Any, z: Tensor) -> Tensor:
        counter[0] += 1
        return density_call(self, z)

    def counting_step(self: Any, state: Any, params: Any) -> Any:
        counter[0] += self.advance.cost_per_call
        return step_call(self, state, params)

    TieredLogDensity.__call__, Stepper.__call__ = counting_density, counting_step
    try:
        yield counter
    finally:
        TieredLogDensity.__call__, Stepper.__call__ = density_call, step_call


def _initial_positions() -> Callable[..., Tensor]:
    try:
        from bayesresnet.inference.chains import initial_positions
    except ImportError:
        from bayesresnet.inference.nuts import initial_positions
    return initial_positions


def _own_diagnostics(run: Run) -> None:
    diagnostics = run.posterior.diagnose()
    run.own_ok = bool(diagnostics.ok)
    run.own_failed = list(diagnostics.failed)


def run_nuts(bench: Bench, settings: dict[str, Any], seed: int) -> Run:
    """Our NUTS through ``brn.fit``; gradients counted per lock-step evaluation, plus the MAP
    start's ``init_steps`` Adam steps when ``init`` optimizes."""
    method = brn.NUTS(**settings)
    problem = bench.problem
    with count_batched_gradients() as calls, _Clock() as clock:
        post = brn.fit(problem.model, problem.x_raw, problem.y_raw, method=method, seed=seed,
                       progress=False, check=False)
    map_steps = method.init_steps if method.init in ("map", "prior-map") else 0
    stats = {k: np.asarray(post.stats[k]) for k in ("diverging", "reached_max_tree_depth",
                                                    "energy", "num_steps") if k in post.stats}
    run = Run("nuts", _settings_text(settings), post, clock.seconds, clock.cpu_seconds,
              float(calls[0] + map_steps), method.chains,
              "map" if method.init in ("map", "prior-map") else "random", stats)
    run.notes.append(f"mean leapfrog steps per draw {np.mean(stats['num_steps']):.0f}")
    _own_diagnostics(run)
    return run


def mclmc_available() -> bool:
    """Whether the library has ``bayesresnet.MCLMC``."""
    return hasattr(brn, "MCLMC")


def run_mclmc(bench: Bench, settings: dict[str, Any], seed: int) -> Run:
    """Our MCLMC through ``brn.fit``. Gradients per chain counted as for NUTS (lock-step
    evaluations, the one at the starting points, and the MAP start's Adam steps); a note says
    so where the count disagrees with ``posterior.extra['num_gradients']``, the library's own
    record (which leaves the MAP start out)."""
    method = brn.MCLMC(**settings)
    problem = bench.problem
    with count_batched_gradients() as calls, _Clock() as clock:
        post = brn.fit(problem.model, problem.x_raw, problem.y_raw, method=method, seed=seed,
                       progress=False, check=False)
    init = getattr(method, "init", "map")
    map_steps = getattr(method, "init_steps", 0) if init in ("map", "prior-map") else 0
    recorded = post.extra.get("num_gradients")
    stats = {"diverging": np.asarray(post.stats["diverging"])} if "diverging" in post.stats \
        else {}
    if "energy_variance" in post.extra:
        stats["energy_variance"] = np.asarray(post.extra["energy_variance"])
    stats["desired_energy_variance"] = getattr(method, "desired_energy_variance", math.nan)
    calls[0] += 1  # the evaluation at the starting points (mclmc_kernel.init)
    run = Run("mclmc", _settings_text(settings), post, clock.seconds, clock.cpu_seconds,
              float(calls[0] + map_steps), method.chains,
              "map" if init in ("map", "prior-map") else "random", stats,
              initial_position=post.extra.get("initial_position"))
    if recorded is not None:
        per_chain = float(np.max(np.asarray(recorded)))
        if not math.isclose(per_chain, calls[0], rel_tol=0.01) and \
                not math.isclose(per_chain, calls[0] + map_steps, rel_tol=0.01):
            run.notes.append(f"extra['num_gradients'] {per_chain:.0f} per chain, counted "
                             f"{calls[0]} lock-step evaluations + {map_steps} MAP steps")
    tuned = [f"{name} {np.median(np.asarray(post.stats[name])):.3g}"
             for name in ("step_size", "decoherence_length") if name in post.stats]
    if tuned:
        run.notes.append(", ".join(tuned) + " (medians over chains)")
    if "energy_variance" in post.extra:
        run.notes.append(f"energy variance per dim "
                         f"{np.median(np.asarray(post.extra['energy_variance'])):.2g}")
    if "diverging" in post.stats:
        run.notes.append(f"{int(np.asarray(post.stats['diverging']).sum())} draws after a "
                         "non-finite step")
    if "tuning_rejections" in post.extra:
        run.notes.append(f"{int(np.asarray(post.extra['tuning_rejections']).sum())} tuning "
                         "steps undone")
    _own_diagnostics(run)
    return run


def _wrap_draws(bench: Bench, draws: dict[str, Tensor]) -> Any:
    problem = bench.problem
    return brn.from_pyro(problem.model, problem.x_raw, problem.y_raw, samples=draws,
                         check=False)


def _constrained(model: brn.BayesianResNet, z: np.ndarray) -> dict[str, Tensor]:
    """Site draws (chain, draw, *shape) from flat unconstrained draws (chain, draw, dim)."""
    values, _ = model.constrain(torch.as_tensor(np.array(z), dtype=F64))
    return {k: v.detach() for k, v in values.items()}


def blackjax_gradients_per_step(logdensity: Callable[[Any], Any], dim: int) -> int:
    """Gradient evaluations of one step of BlackJAX's MCLMC kernel (default integrator),
    counted by tracing the step and counting calls of the log density."""
    import blackjax
    import jax
    import jax.numpy as jnp

    calls = [0]

    def counted(z: Any) -> Any:
        calls[0] += 1
        return logdensity(z)

    kernel = blackjax.mcmc.mclmc.build_kernel()
    state = jax.eval_shape(lambda: blackjax.mcmc.mclmc.init(jnp.zeros(dim), logdensity,
                                                            jax.random.PRNGKey(0)))
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)
    jax.make_jaxpr(lambda s: kernel(jax.random.PRNGKey(0), s, counted, jnp.ones(dim), 1.0,
                                    0.1))(state)
    return calls[0]


def run_blackjax(bench: Bench, chains: int, tune_steps: int, num_steps: int, thinning: int,
                 seed: int, init_steps: int = 500, desired_energy_var: float = 5e-4) -> Run:
    """BlackJAX's MCLMC on :func:`jax_log_density`, chains vectorized, from our MAP starts.

    Tuning: ``blackjax.mclmc_find_L_and_step_size`` per chain (vectorized), with its phase
    fractions set so that its phases take 30%, 30% (+10% step-size readjustment after the
    diagonal preconditioner) and 30% of ``tune_steps``, the split of our MCLMC. Sampling:
    ``num_steps`` kernel steps per chain, every ``thinning``-th kept.
    """
    import blackjax
    import jax
    import jax.numpy as jnp

    problem = bench.problem
    model = problem.model
    if num_steps % thinning:
        raise ValueError(f"num_steps {num_steps} must be a multiple of thinning {thinning}")
    with _Clock() as clock:
        z0 = _initial_positions()(model, problem.x, problem.y, chains, seed, init="map",
                                  init_steps=init_steps)
        logdensity = jax_log_density(model, problem.x, problem.y)
        kernel = blackjax.mcmc.mclmc.build_kernel()
        frac = 0.3 * tune_steps / num_steps

        def tune(position: Any, key: Any) -> Any:
            init_key, tune_key = jax.random.split(key)
            state = blackjax.mcmc.mclmc.init(position, logdensity, init_key)
            state, params, _ = blackjax.mclmc_find_L_and_step_size(
                kernel, num_steps, state, tune_key, logdensity_fn=logdensity,
                frac_tune1=frac, frac_tune2=frac, frac_tune3=frac,
                desired_energy_var=desired_energy_var, diagonal_preconditioning=True)
            return state, params

        def sample(state: Any, params: Any, key: Any) -> Any:
            def one_step(carry: Any, step_key: Any) -> Any:
                carry, info = kernel(step_key, carry, logdensity, params.inverse_mass_matrix,
                                     params.L, params.step_size)
                return carry, (info.energy_change, ~info.nonans)

            def one_draw(carry: Any, draw_key: Any) -> Any:
                carry, (energy, bad) = jax.lax.scan(one_step, carry,
                                                    jax.random.split(draw_key, thinning))
                return carry, (carry.position, jnp.mean(energy ** 2), jnp.sum(bad))

            _, out = jax.lax.scan(one_draw, state, jax.random.split(key, num_steps // thinning))
            return out

        keys = jax.random.split(jax.random.PRNGKey(seed), 2 * chains)
        start = jnp.asarray(z0.numpy())
        states, params = jax.jit(jax.vmap(tune))(start, keys[:chains])
        positions, energy_sq, bad = jax.jit(jax.vmap(sample))(states, params, keys[chains:])
        positions = np.asarray(jax.block_until_ready(positions))
    dim = model.dim
    per_step = blackjax_gradients_per_step(logdensity, dim)
    steps1 = round(num_steps * frac)
    tuning = steps1 + steps1 + round(steps1 / 3) + (steps1 if steps1 >= 2 else 0)
    grads = init_steps + 1 + per_step * (tuning + num_steps)
    post = _wrap_draws(bench, _constrained(model, positions))
    settings = (f"{chains} chains, {tuning} tuning + {num_steps} steps, thinning {thinning}, "
                f"MAP start {init_steps} Adam steps")
    # As our MCLMC records it: a step since the previous draw ended in a non-finite state.
    stats = {"diverging": np.asarray(bad) > 0}
    run = Run("blackjax", settings, post, clock.seconds, clock.cpu_seconds, float(grads),
              chains, "map", stats, initial_position=z0)
    energy_var = np.asarray(energy_sq).mean(axis=1) / dim
    run.notes.append(f"step size {np.median(np.asarray(params.step_size)):.3g}, L "
                     f"{np.median(np.asarray(params.L)):.3g} (medians over chains); energy "
                     f"variance per dim {np.median(energy_var):.2g}; "
                     f"{int(np.asarray(bad).sum())} non-finite steps; {per_step} gradients "
                     "per step")
    run.stats["energy_variance"] = energy_var
    run.stats["desired_energy_variance"] = desired_energy_var
    return run


def run_numpyro(bench: Bench, chains: int, warmup: int, samples: int, max_tree_depth: int,
                target_accept: float, seed: int) -> Run:
    """NumPyro's NUTS, ``chain_method='vectorized'``, on ``nuts.numpyro_model``.

    The warmup's transitions are collected in the same single pass as the draws, so their
    leapfrog steps can be counted; gradients per chain are the lock-step count, the sum over
    iterations of the largest tree among the chains (vectorized chains wait for the longest),
    plus one for the start (the few of NumPyro's initial step-size search are not counted).
    """
    jax = import_jax()
    import jax.numpy as jnp
    from numpyro.infer import MCMC
    from numpyro.infer import NUTS as NumPyroNUTS

    problem = bench.problem
    fields = ("num_steps", "diverging", "energy")
    with _Clock() as clock:
        model = nuts_bench.numpyro_model(problem.phi.numpy(), problem.net.width,
                                         problem.net.horizon)
        kernel = NumPyroNUTS(model, max_tree_depth=max_tree_depth,
                             target_accept_prob=target_accept)
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains,
                    chain_method="vectorized", progress_bar=False)
        # Keep the warmup transitions too (what warmup(collect_warmup=True) does), in the one
        # compiled loop that run() makes anyway.
        mcmc._set_collection_params(0, warmup + samples, warmup + samples, "sample")
        mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(problem.x.numpy()),
                 jnp.asarray(problem.y[:, 0].numpy()), extra_fields=fields)
        everything = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    if extra["num_steps"].shape != (chains, warmup + samples):
        raise RuntimeError(f"expected {warmup + samples} transitions per chain, got "
                           f"{extra['num_steps'].shape}")
    draws = nuts_bench.from_user_sites({k: v[:, warmup:] for k, v in everything.items()})
    post = _wrap_draws(bench, draws)
    steps = extra["num_steps"].astype(np.int64)
    grads = float(steps.max(axis=0).sum()) + 1
    tree_depth = np.floor(np.log2(steps[:, warmup:] + 1)).astype(int)
    stats = {"diverging": extra["diverging"][:, warmup:].astype(bool),
             "reached_max_tree_depth": tree_depth >= max_tree_depth,
             "energy": extra["energy"][:, warmup:], "num_steps": steps[:, warmup:]}
    settings = (f"{chains} chains, warmup {warmup}, {samples} draws, max_tree_depth "
                f"{max_tree_depth}, target_accept {target_accept}")
    run = Run("numpyro", settings, post, clock.seconds, clock.cpu_seconds, grads, chains,
              "random", stats)
    run.notes.append(f"mean leapfrog steps per draw {steps[:, warmup:].mean():.0f}; "
                     f"{int(extra['diverging'][:, :warmup].sum())} divergent warmup transitions")
    return run


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


# ---------------------------------------------------------------------------------- measures
def per_chain_figures(values: np.ndarray) -> dict[str, np.ndarray]:
    """Bulk and tail ESS and split R-hat of each chain, and the pooled figures.

    Parameters
    ----------
    values : ndarray (chain, draw, Q)
        Q scalar quantities.

    Returns
    -------
    dict
        ``bulk``, ``tail``, ``rhat`` (chain, Q): each chain on its own (R-hat: its two halves
        as two chains, rank-normalized split R-hat of ArviZ); ``pooled_rhat``,
        ``pooled_bulk``, ``pooled_tail`` (Q,): all chains together.
    """
    pooled = draws_dataset({"q": values})
    if hasattr(arviz_compat, "rhat_by_chain"):  # the library's own chain-wise figures
        bulk = arviz_compat.ess_by_chain(pooled, "bulk")["q"].values
        tail = arviz_compat.ess_by_chain(pooled, "tail")["q"].values
        split = arviz_compat.rhat_by_chain(pooled)["q"].values
    else:
        chains, draws, _ = values.shape
        half = draws // 2
        bulk, tail, split = [], [], []
        for c in range(chains):
            one = draws_dataset({"q": values[c:c + 1]})
            bulk.append(ess(one, "bulk")["q"].values)
            tail.append(ess(one, "tail")["q"].values)
            halves = values[c, :2 * half].reshape(2, half, -1)
            split.append(rhat(draws_dataset({"q": halves}))["q"].values)
    return {"bulk": np.array(bulk), "tail": np.array(tail), "rhat": np.array(split),
            "pooled_rhat": np.asarray(rhat(pooled)["q"].values),
            "pooled_bulk": np.asarray(ess(pooled, "bulk")["q"].values),
            "pooled_tail": np.asarray(ess(pooled, "tail")["q"].values)}


def _worst(values: np.ndarray, largest: bool) -> float:
    """The max (min) of an array, NaN (a quantity that did not move) counting as worst."""
    if np.isnan(values).any():
        return math.nan
    return float(values.max() if largest else values.min())


def evaluate(bench: Bench, run: Run) -> dict[str, Any]:
    """Every column of the report for one run (see the report's definitions)."""
    post = run.posterior
    values = nuts_bench.summaries(bench.problem, post.draws)  # (chain, draw, 21)
    fig = per_chain_figures(values)
    chains = values.shape[0]
    within = fig["bulk"].sum(axis=0)  # per quantity: sum over chains of per-chain bulk ESS
    row: dict[str, Any] = {
        "problem": bench.key, "key": run.key, "settings": run.settings, "chains": chains,
        "draws": values.shape[1], "seconds": run.seconds, "cpu_seconds": run.cpu_seconds,
        "grads_per_chain": run.grads_per_chain, "grads": run.grads_per_chain * chains,
        "ess": _worst(within, largest=False),
        "ess_chain_min": _worst(fig["bulk"], largest=False),
        "tail_chain_min": _worst(fig["tail"], largest=False),
        "pooled_ess": _worst(fig["pooled_bulk"], largest=False),
        "pooled_tail": _worst(fig["pooled_tail"], largest=False),
        "pooled_rhat": _worst(fig["pooled_rhat"], largest=True),
        "chain_rhat": _worst(fig["rhat"], largest=True),
        "start": run.start, "own_ok": run.own_ok, "own_failed": run.own_failed,
        "load": os.getloadavg()[0],
        "notes": list(run.notes),
    }
    names = [f"f[{i}]" for i in range(values.shape[-1] - 1)] + ["noise"]
    worst = int(np.nanargmin(within)) if not np.isnan(within).all() else 0
    row["notes"].append(f"lowest ESS at {names[worst]}")
    row["ess_s"] = row["ess"] / run.seconds
    row["ess_kgrad"] = 1000.0 * row["ess"] / row["grads"]
    pred = post.predict(bench.x_eval)
    row["rmse"] = metrics.rmse(pred, bench.y_eval)
    row["nll"] = metrics.nll(pred, bench.y_eval)
    checks = threshold_checks(row, run.stats, chains)
    row["checks"] = checks
    row["rule"] = "chain-wise" if run.start == "map" else "pooled"
    row["passes_thresholds"] = all(ok for _, ok in checks.values())
    row["divergent"] = (float(run.stats["diverging"].mean()) if "diverging" in run.stats
                        else math.nan)
    row["passes"] = run.own_ok if run.own_ok is not None else row["passes_thresholds"]
    row["passes_core"] = all(ok for name, (_, ok) in checks.items() if name in CORE_CHECKS)
    row["failed"] = (list(run.own_failed) if run.own_ok is not None else
                     [name for name, (_, ok) in checks.items() if not ok])
    return row


CORE_CHECKS = frozenset({"chain-wise R-hat", "min chain bulk ESS", "min chain tail ESS",
                         "pooled R-hat", "pooled bulk ESS", "pooled tail ESS", "divergent"})
"""The checks of :func:`threshold_checks` that judge mixing and validity (R-hat, ESS,
divergences), without the sampler-efficiency and tuning checks (tree depth, E-BFMI, MCLMC's
energy error)."""


def threshold_checks(row: dict[str, Any], stats: dict[str, np.ndarray], chains: int
                     ) -> dict[str, tuple[float, bool]]:
    """The thresholds of ``bayesresnet.diagnostics`` applied to a run's figures.

    Chains begun at MAP points (``row['start'] == 'map'``) are judged chain by chain: the worst
    per-chain split R-hat below ``CHAIN_RHAT_MAX`` and every chain's bulk and tail ESS above
    ``ESS_PER_CHAIN``. Chains begun at random points are judged pooled: R-hat below
    ``RHAT_MAX`` and pooled bulk and tail ESS above ``ESS_PER_CHAIN`` times the chains. NUTS
    runs also need at most ``DIVERGENCE_MAX`` divergent and ``TREE_DEPTH_MAX`` depth-capped
    transitions and an E-BFMI of at least ``EBFMI_MIN`` in every chain; MCLMC runs at most
    ``DIVERGENCE_MAX`` of draws after a non-finite step and, in every chain, a mean squared
    energy error per dimension over the sampling steps of at most ``ENERGY_VARIANCE_LIMIT``
    (``MCLMC.add_checks``).

    Returns
    -------
    dict check name -> (value, passed)
    """
    def below(value: float, limit: float) -> bool:
        return not math.isnan(value) and value < limit

    def above(value: float, limit: float) -> bool:
        return not math.isnan(value) and value > limit

    if row["start"] == "map":
        checks = {"chain-wise R-hat": (row["chain_rhat"],
                                       below(row["chain_rhat"], CHAIN_RHAT_MAX)),
                  "min chain bulk ESS": (row["ess_chain_min"],
                                         above(row["ess_chain_min"], ESS_PER_CHAIN)),
                  "min chain tail ESS": (row["tail_chain_min"],
                                         above(row["tail_chain_min"], ESS_PER_CHAIN))}
    else:
        need = ESS_PER_CHAIN * chains
        checks = {"pooled R-hat": (row["pooled_rhat"], below(row["pooled_rhat"], RHAT_MAX)),
                  "pooled bulk ESS": (row["pooled_ess"], above(row["pooled_ess"], need)),
                  "pooled tail ESS": (row["pooled_tail"], above(row["pooled_tail"], need))}
    if "diverging" in stats:
        fraction = float(np.mean(stats["diverging"]))
        checks["divergent"] = (fraction, fraction <= DIVERGENCE_MAX)
    if "reached_max_tree_depth" in stats:
        fraction = float(np.mean(stats["reached_max_tree_depth"]))
        checks["max tree depth"] = (fraction, fraction <= TREE_DEPTH_MAX)
    if "energy_variance" in stats:
        value = float(np.max(stats["energy_variance"]))
        checks["max energy variance / dim"] = (value, value <= ENERGY_VARIANCE_LIMIT)
    if "energy" in stats and stats["energy"].shape[1] >= 3:
        value = float(np.min(ebfmi(stats["energy"])))
        checks["min E-BFMI"] = (value, value >= EBFMI_MIN)
    return checks


# ---------------------------------------------------------------------------------- report
def _ratio(value: float, base: float | None) -> str:
    if base is None or not (base > 0) or math.isnan(value):
        return "-"
    return f"{value / base:.2g}x"


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def render_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of all rows, with ratios against NumPyro's NUTS (ESS/s, wall time)
    and BlackJAX's MCLMC (ESS per 1000 gradients) of the same problem."""
    head = ("| problem | contender | passes: all / core (rule) | wall s | CPU s | grads/chain | "
            "grads total | "
            "ESS | min chain ESS | ESS/s | ESS/1k grads | pooled R-hat | chain-wise R-hat | "
            "div. | test RMSE | test NLL | ESS/s vs NumPyro | ESS/1k grads vs BlackJAX | "
            "wall vs NumPyro |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for row in rows:
        same = {r["key"]: r for r in rows if r["problem"] == row["problem"]}
        numpyro, blackjax = same.get("numpyro"), same.get("blackjax")
        passes = ("yes" if row["passes"] else "**no**") + " / " + (
            "yes" if row["passes_core"] else "**no**")
        divergent = "-" if math.isnan(row["divergent"]) else f"{row['divergent']:.1%}"
        lines.append(
            f"| {row['problem']} | {CONTENDERS[row['key']]} | {passes} ({row['rule']}) | "
            f"{row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['grads_per_chain']:.0f} | "
            f"{row['grads']:.0f} | {_fmt(row['ess'], 4)} | {_fmt(row['ess_chain_min'], 3)} | "
            f"{_fmt(row['ess_s'])} | {_fmt(row['ess_kgrad'])} | {_fmt(row['pooled_rhat'], 4)} | "
            f"{_fmt(row['chain_rhat'], 4)} | "
            f"{divergent} | "
            f"{row['rmse']:.3f} | {row['nll']:.3f} | "
            f"{_ratio(row['ess_s'], numpyro and numpyro['ess_s'])} | "
            f"{_ratio(row['ess_kgrad'], blackjax and blackjax['ess_kgrad'])} | "
            f"{_ratio(row['seconds'], numpyro and numpyro['seconds'])} |")
    return "\n".join(lines)


def render_details(rows: list[dict[str, Any]]) -> str:
    """One bullet per row: settings, the checks with their values, notes."""
    lines = []
    for row in rows:
        checks = "; ".join(f"{name} {_fmt(value, 4)} {'ok' if ok else 'FAIL'}"
                           for name, (value, ok) in row["checks"].items())
        own = ""
        if row["own_ok"] is not None:
            own = (" `diagnose().ok` " + ("True" if row["own_ok"] else
                                          "False (failed: " + ", ".join(row["own_failed"]) + ")")
                   + ";")
        lines.append(f"- **{row['problem']}, {CONTENDERS[row['key']]}** ({row['settings']}):"
                     f"{own} thresholds ({row['rule']}): {checks}; pooled bulk ESS "
                     f"{_fmt(row['pooled_ess'], 4)}"
                     + (f"; {'; '.join(row['notes'])}" if row["notes"] else "") + ".")
    return "\n".join(lines)


def render_targets(rows: list[dict[str, Any]]) -> str:
    """The issue's targets, read off the rows of the cubic problem."""
    by_key = {r["key"]: r for r in rows if r["problem"] == "cubic"}
    lines = []
    ours, theirs = by_key.get("mclmc"), by_key.get("blackjax")
    if ours and theirs:
        cpu = (ours["ess"] / ours["cpu_seconds"]) / (theirs["ess"] / theirs["cpu_seconds"])
        lines.append(f"- Our MCLMC against BlackJAX's on the demo problem: "
                     f"{ours['ess_kgrad'] / theirs['ess_kgrad']:.2f}x the ESS per 1000 "
                     f"gradients (target >= 0.8x) and {ours['ess_s'] / theirs['ess_s']:.2f}x the "
                     f"ESS per second (target >= 1x; per CPU second {cpu:.2f}x). Passes: ours "
                     f"{ours['passes']}, BlackJAX's {theirs['passes']}.")
    numpyro = by_key.get("numpyro")
    if numpyro:
        for flag, criterion in (("passes", "all checks"),
                                ("passes_core", "R-hat, ESS and divergences only")):
            lines.append(_time_to_pass(by_key, numpyro, flag, criterion))
    return "\n".join(lines)


def _time_to_pass(by_key: dict[str, dict[str, Any]], numpyro: dict[str, Any], flag: str,
                  criterion: str) -> str:
    passing = [r for k, r in by_key.items() if k in ("nuts", "mclmc") and r[flag]]
    head = f"- Time to a passing posterior on the demo problem ({criterion}): "
    if not passing:
        return head + ("none of our rows passes; NumPyro's NUTS "
                       + ("passes" if numpyro[flag] else "does not pass either")
                       + f" ({numpyro['seconds']:.1f} s, CPU {numpyro['cpu_seconds']:.1f} s).")
    best = min(passing, key=lambda r: r["seconds"])
    verdict = "passes" if numpyro[flag] else "does NOT pass at its settings"
    return head + (f"ours {best['seconds']:.1f} s ({CONTENDERS[best['key']]}) against NumPyro's "
                   f"NUTS {numpyro['seconds']:.1f} s, which {verdict}: "
                   f"{best['seconds'] / numpyro['seconds']:.2f}x its time (target <= 1x); in CPU "
                   f"time {best['cpu_seconds']:.1f} s against {numpyro['cpu_seconds']:.1f} s, "
                   f"{best['cpu_seconds'] / numpyro['cpu_seconds']:.2f}x.")


def versions() -> str:
    import pyro

    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}",
             f"pyro {pyro.__version__}", f"bayesresnet {brn.__version__}"]
    for name in ("jax", "jaxlib", "numpyro", "blackjax", "arviz"):
        module = sys.modules.get(name)
        if module is not None:
            parts.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------- main
QUICK = {"nuts_chains": 2, "nuts_warmup": 20, "nuts_samples": 20, "nuts_max_tree_depth": 4,
         "nuts_target_accept": 0.8, "numpyro_target_accept": 0.8,
         "nuts_init_steps": 50, "chains": 2, "mclmc_tune_steps": 200, "mclmc_steps": 400,
         "mclmc_thinning": 4, "init_steps": 50, "numpyro_chains": 2, "numpyro_warmup": 20,
         "numpyro_samples": 20, "numpyro_max_tree_depth": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny budgets (numbers meaningless); writes "
                             "sampling_quick.md")
    parser.add_argument("--problems", nargs="+", default=["cubic", "yacht"],
                        choices=["cubic", "yacht"])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                        choices=list(CONTENDERS))
    parser.add_argument("--seed", type=int, default=0)
    # Both NUTS rows default to settings at which they passed R-hat, ESS and divergences on the
    # demo problem (docs/methods.rst, "NUTS on the demo network"): 4 x (300 + 200), depth 12,
    # target_accept 0.95 for ours (0.9 for NumPyro; see the docstring), chains from random
    # network initializations for ours (as NumPyro's start at random points; pooled rule). At
    # max_tree_depth 10 every tree is cut (fails the depth check); at target 0.8 NumPyro had
    # 1.0-3.3% divergent transitions.
    group = parser.add_argument_group("our NUTS")
    group.add_argument("--nuts-chains", type=int, default=4)
    group.add_argument("--nuts-warmup", type=int, default=300)
    group.add_argument("--nuts-samples", type=int, default=200)
    group.add_argument("--nuts-target-accept", type=float, default=0.95)
    group.add_argument("--nuts-init", default="network", help="NUTS(init=...)")
    group.add_argument("--nuts-max-tree-depth", type=int, default=12)
    group.add_argument("--nuts-init-steps", type=int, default=None, help="default: NUTS's")
    group.add_argument("--nuts-option", action="append", default=[], metavar="NAME=VALUE",
                       help="further NUTS(...) settings (Python literals), repeatable")
    group = parser.add_argument_group("MCLMC (ours and BlackJAX's, same chains and steps)")
    group.add_argument("--chains", type=int, default=4, help="chains of both MCLMC rows")
    # 20 000 + 300 000 steps: at 40 000 + 40 000 neither MCLMC row had 100 effective draws of
    # the noise in every chain on the demo problem (43 and 58 in the worst chain); at
    # 20 000 + 120 000 with the energy target 1e-4 ours had a tail ESS of 81; at 200 000
    # sampling steps 2 of 14 runs of ours (seeds 0-6, two noise precisions) fell below 100
    # (91 and 95), at 300 000 none of 8 (lowest 141; docs/methods.rst).
    group.add_argument("--mclmc-tune-steps", type=int, default=20_000,
                       help="tuning steps (integration steps) per chain")
    group.add_argument("--mclmc-steps", type=int, default=300_000,
                       help="sampling steps per chain (draws = steps / thinning)")
    group.add_argument("--mclmc-thinning", type=int, default=300)
    group.add_argument("--init-steps", type=int, default=None,
                       help="Adam steps of the MAP starts of both MCLMC rows (default: "
                            "MCLMC's)")
    group.add_argument("--mclmc-option", action="append", default=[], metavar="NAME=VALUE",
                       help="further MCLMC(...) settings (Python literals), repeatable")
    group.add_argument("--blackjax-energy-variance", type=float, default=None,
                       help="BlackJAX's desired_energy_var (default: our MCLMC's target)")
    group = parser.add_argument_group("NumPyro NUTS")
    group.add_argument("--numpyro-chains", type=int, default=4)
    group.add_argument("--numpyro-warmup", type=int, default=300)
    group.add_argument("--numpyro-samples", type=int, default=200)
    group.add_argument("--numpyro-max-tree-depth", type=int, default=12)
    group.add_argument("--numpyro-target-accept", type=float, default=0.9)
    parser.add_argument("--set", action="append", default=[], metavar="PROBLEM:NAME=VALUE",
                        help="a setting for one problem only, by its option's name with "
                             "underscores, e.g. yacht:nuts_chains=8 (repeatable)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (XLA's pool is set to one thread with 1)")
    parser.add_argument("--cpus", type=int, default=None,
                        help="pin the process to this many cores (JAX runs helper threads "
                             "that take an idle second core otherwise)")
    parser.add_argument("--tune-allocator", action="store_true",
                        help="call bayesresnet.tune_allocator() first, as the bayesresnet "
                             "command does")
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("BAYESRESNET_DATA",
                                                    REPO / ".." / "shared" / "data" / "uci")))
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of the problems not run now from the report "
                             "already at --out (run the problems one at a time)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file (default benchmarks/results/sampling.md, "
                             "sampling_quick.md with --quick)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    return args


def _options(pairs: list[str]) -> dict[str, Any]:
    import ast

    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"option {pair!r} must look like NAME=VALUE")
        try:
            out[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[name] = text
    return out


def nuts_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``NUTS(...)`` keyword arguments from the command line."""
    settings = {"num_samples": args.nuts_samples, "num_warmup": args.nuts_warmup,
                "chains": args.nuts_chains, "max_tree_depth": args.nuts_max_tree_depth,
                "target_accept": args.nuts_target_accept, "init": args.nuts_init,
                "init_steps": args.nuts_init_steps, **_options(args.nuts_option)}
    return {k: v for k, v in settings.items() if v is not None}


def mclmc_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``MCLMC(...)`` keyword arguments from the command line (field names of
    ``bayesresnet.MCLMC``: draws = steps / thinning)."""
    if args.mclmc_steps % args.mclmc_thinning:
        raise SystemExit("--mclmc-steps must be a multiple of --mclmc-thinning")
    settings = {"num_samples": args.mclmc_steps // args.mclmc_thinning,
                "thinning": args.mclmc_thinning, "num_warmup": args.mclmc_tune_steps,
                "chains": args.chains, "init_steps": args.init_steps,
                # The whole step compiled from the start: the run is long enough to pay the
                # compilation back many times (docs/methods.rst).
                "compile_after": 0, **_options(args.mclmc_option)}
    return {k: v for k, v in settings.items() if v is not None}


def map_init_steps(args: argparse.Namespace) -> int:
    """Adam steps of the MAP starts of the MCLMC rows: ``--init-steps``, else MCLMC's default
    (500, NUTS's, before ``bayesresnet.MCLMC`` existed)."""
    if args.init_steps is not None:
        return args.init_steps
    return brn.MCLMC().init_steps if mclmc_available() else 500


def run_contender(key: str, bench: Bench, args: argparse.Namespace) -> Run:
    """Run one contender on one problem with the command line's settings."""
    if key == "nuts":
        return run_nuts(bench, nuts_settings(args), args.seed)
    if key == "mclmc":
        return run_mclmc(bench, mclmc_settings(args), args.seed)
    if key == "blackjax":
        # The same energy-error target as ours unless --blackjax-energy-variance says otherwise
        # (the two tunings reach different errors for the same target; see the report).
        target = args.blackjax_energy_variance or mclmc_settings(args).get(
            "desired_energy_variance", brn.MCLMC().desired_energy_variance)
        return run_blackjax(bench, args.chains, args.mclmc_tune_steps, args.mclmc_steps,
                            args.mclmc_thinning, args.seed, map_init_steps(args), target)
    return run_numpyro(bench, args.numpyro_chains, args.numpyro_warmup, args.numpyro_samples,
                       args.numpyro_max_tree_depth, args.numpyro_target_accept, args.seed)


def problem_args(args: argparse.Namespace, problem: str) -> argparse.Namespace:
    """The settings for one problem: ``args`` with that problem's ``--set`` entries applied."""
    import ast

    out = argparse.Namespace(**vars(args))
    for entry in args.set:
        target, sep, assignment = entry.partition(":")
        name, eq, text = assignment.partition("=")
        if not (sep and eq) or not hasattr(args, name) or name in ("set", "problems"):
            raise SystemExit(f"--set {entry!r}: expected PROBLEM:NAME=VALUE with NAME an "
                             "option's name with underscores (e.g. yacht:nuts_chains=8)")
        if target == problem:
            value = ast.literal_eval(text) if name not in ("nuts_option", "mclmc_option") \
                else [*getattr(args, name), text]
            setattr(out, name, value)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or REPO / "benchmarks" / "results" / ("sampling_quick.md" if args.quick
                                                         else "sampling.md")
    torch.set_num_threads(args.threads)
    cores = nuts_bench.pin_cores(args.cpus)
    allocator = "glibc malloc thresholds fixed by `bayesresnet.tune_allocator()`" if (
        args.tune_allocator and brn.tune_allocator()) else "the allocator's defaults"
    logging.getLogger("arviz").setLevel(logging.ERROR)
    contenders = list(args.contenders)
    skipped = []
    if any(k in JAX_CONTENDERS for k in contenders):
        if jax_available():
            import_jax(args.threads)
        else:
            skipped.append("the JAX contenders (pip install 'bayesresnet[bench]')")
            contenders = [k for k in contenders if k not in JAX_CONTENDERS]
    if "mclmc" in contenders and not mclmc_available():
        skipped.append("our MCLMC (bayesresnet.MCLMC does not exist yet)")
        contenders.remove("mclmc")
    for what in skipped:
        print(f"skipping {what}")
    command = "python benchmarks/sampling.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    env = environment(args, cores, allocator)
    kept = read_report_data(out) if args.merge else {"sections": [], "rows": []}
    sections = [s for s in kept["sections"] if s["problem"] not in args.problems]
    rows = [r for r in kept["rows"] if r["problem"] not in args.problems]
    for key in args.problems:
        bench = make_bench(key, args.data_root.resolve())
        problem = bench.problem
        section = {"problem": key, "description": bench.description, "check": None,
                   "command": command, "environment": env, "skipped": skipped}
        sections.append(section)
        if any(k in JAX_CONTENDERS for k in contenders):
            worst = check_jax_density(problem.model, problem.x, problem.y,
                                      jax_log_density(problem.model, problem.x, problem.y),
                                      points=5, seed=args.seed + 11)
            numpyro = nuts_bench.check_same_density(problem, True, args.seed + 17)
            section["check"] = (
                f"{key}: JAX log density against `model.log_density` at 5 random points, "
                f"largest relative difference {worst:.1e} (gradients within 1e-6 too); "
                f"NumPyro's log joint against `BayesianResNet.log_joint`: "
                f"{numpyro['numpyro']:.1e}")
            print(section["check"], flush=True)
        starts = {}
        settings = problem_args(args, key)
        for contender in contenders:
            load = os.getloadavg()[0]
            run = run_contender(contender, bench, settings)
            if run.initial_position is not None and contender in ("mclmc", "blackjax"):
                starts[contender] = run.initial_position
            row = evaluate(bench, run)
            row["load"] = (load + os.getloadavg()[0]) / 2
            rows.append(row)
            if len(starts) == 2 and contender in starts:
                same = torch.equal(torch.as_tensor(np.asarray(starts["mclmc"])),
                                   torch.as_tensor(np.asarray(starts["blackjax"])))
                row["notes"].append("starting points identical to our MCLMC's" if same else
                                    "starting points DIFFER from our MCLMC's")
            print(f"  {key:6s} {CONTENDERS[contender]:15s} {row['seconds']:7.1f} s, "
                  f"{row['grads']:9.0f} grads, ESS {row['ess']:7.1f} (min chain "
                  f"{row['ess_chain_min']:6.1f}), R-hat pooled {row['pooled_rhat']:.3f} "
                  f"chain-wise {row['chain_rhat']:.3f}, RMSE {row['rmse']:.3f}, NLL "
                  f"{row['nll']:.3f}, passes {row['passes']} (load {row['load']:.1f})",
                  flush=True)
    order = {key: i for i, key in enumerate(["cubic", "yacht"])}
    sections.sort(key=lambda section: order[section["problem"]])
    rows.sort(key=lambda row: (order[row["problem"]], list(CONTENDERS).index(row["key"])))
    write_report(out, sections, rows)
    print(render_table(rows))
    print(f"wrote {out}")


REPORT_DATA = "<!-- sampling.py data: "


def read_report_data(path: Path) -> dict[str, Any]:
    """The sections and rows a report embeds (for ``--merge``); empty when there are none."""
    import json

    if not path.exists():
        return {"sections": [], "rows": []}
    text = path.read_text()
    start = text.rfind(REPORT_DATA)
    if start < 0:
        return {"sections": [], "rows": []}
    body = text[start + len(REPORT_DATA):text.index(" -->", start)]
    return json.loads(body)


def _git_commit() -> str:
    """The checkout's commit (with ``+changes`` when files differ from it), or ``'?'``."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+changes" if dirty.strip() else "")


def environment(args: argparse.Namespace, cores: str, allocator: str) -> str:
    """A line on the commit, machine, threads, allocator and versions of this invocation."""
    return (f"commit {_git_commit()}, "
            f"{datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores "
            f"shared with other jobs; {cores}; torch at {args.threads} thread(s), XLA flags "
            f"`{os.environ.get('XLA_FLAGS', '')}`; memory: {allocator}; float64 everywhere; "
            f"{versions()}")


def write_report(out: Path, sections: list[dict[str, Any]], rows: list[dict[str, Any]]
                 ) -> None:
    """Write the markdown report, with its sections and rows embedded as JSON at the end (what
    ``--merge`` reads back).

    Parameters
    ----------
    out : Path
    sections : list of dict
        One per problem: ``problem``, ``description``, ``check`` (the density checks, or
        None), ``command``, ``environment``, ``skipped`` (list of str).
    rows : list of dict
        :func:`evaluate`'s rows (with ``load``).
    """
    import json

    runs: dict[tuple[str, str], list[str]] = {}
    for section in sections:
        runs.setdefault((section["command"], section["environment"]), []).append(
            section["problem"])
    loads = ", ".join(f"{r['problem']}/{r['key']} {r['load']:.1f}" for r in rows)
    skipped = sorted({item for section in sections for item in section["skipped"]})
    text = [
        "# Sampling: time to a passing posterior",
        "",
        *[f"- {', '.join(problems)}: `{command}` ({env})."
          for (command, env), problems in runs.items()],
        "",
        f"1-minute load average during each row: {loads} (above the core count every wall time "
        "is inflated; CPU s is the process's CPU time over the same span).",
        "",
        "Problems:",
        "",
        *[f"- **{section['problem']}**: {section['description']}." for section in sections],
        "",
        "Same density: " + ("; ".join(section["check"] for section in sections
                                      if section["check"]) or "not checked (no JAX contender)")
        + ".",
        "",
        *(["Skipped: " + "; ".join(skipped) + ".", ""] if skipped else []),
        render_table(rows),
        "",
        "Definitions:",
        "",
        "- **wall s**: from the call to the last draw: MAP starts (Adam steps per chain: ours "
        "and BlackJAX's MCLMC start at the same points, our MCLMC's), JIT compilation (JAX "
        "rows), tuning or warmup, sampling. Predictions and diagnostics are not timed.",
        "- **grads/chain**: gradient evaluations of the log density that each chain paid for "
        "in lock-step: the MAP start's Adam steps, tuning or warmup, sampling. Vectorized NUTS "
        "(ours and NumPyro's) evaluates every chain at each leapfrog step until the longest tree "
        "of the iteration is done, so its count is the sum over iterations of the longest "
        "tree; MCLMC takes a fixed number per step (2 with the minimal-norm / McLachlan "
        "integrator of both MCLMC rows). **grads total** = grads/chain x chains.",
        "- **ESS**: for each of the 21 quantities (f at the 20 inputs, the noise), the ArviZ "
        "bulk ESS of every chain on its own, summed over the chains; the column is the minimum "
        "over the quantities (within-chain ESS: mixing inside each chain, which is what counts "
        "when chains begin at different modes). **min chain ESS**: the smallest single-chain "
        "bulk ESS over chains and quantities. ESS/s and ESS/1k grads use ESS.",
        "- **pooled R-hat**: rank-normalized split R-hat of all chains together (ArviZ), the "
        "largest over the 21 quantities: for chains begun at MAP points a figure of how "
        "different their modes are. **chain-wise R-hat**: each chain's two halves as two "
        "chains (ArviZ splits them again), the largest over chains and quantities.",
        "- **passes: all / core**: *all*: every check below; *core*: only R-hat, ESS and "
        "divergences (the checks of mixing and validity, without tree depth, E-BFMI and "
        "MCLMC's energy error, which judge the sampler's efficiency and tuning). "
        f"All checks: ours: `posterior.diagnose().ok` (the library's rules, which use f at "
        f"up to 20 training inputs). JAX rows: the same thresholds on this table's figures, "
        f"`chain-wise` for chains begun at MAP points (every chain's split R-hat < "
        f"{CHAIN_RHAT_MAX}, the library's threshold for one chain, "
        f"bulk and tail ESS > {ESS_PER_CHAIN} per chain), `pooled` for NumPyro's random starts "
        f"(pooled R-hat < {RHAT_MAX}, pooled bulk and tail ESS > {ESS_PER_CHAIN} x chains); "
        f"NUTS also at most {DIVERGENCE_MAX:.0%} divergent and {TREE_DEPTH_MAX:.0%} "
        f"depth-capped transitions, E-BFMI >= {EBFMI_MIN}; MCLMC at most {DIVERGENCE_MAX:.0%} "
        "of draws after a non-finite step and, in every chain, an energy error variance per "
        f"dimension over the sampling steps of at most {ENERGY_VARIANCE_LIMIT:g} (our MCLMC's "
        "check). **div.**: divergent transitions after warmup (NUTS);"
        " draws after a step that ended in a non-finite state and was undone (MCLMC).",
        "- **test RMSE / NLL**: the posterior predictive of all draws in original units "
        "(`Posterior.predict`, `bayesresnet.metrics`): cubic on `brn.data.cubic(1000, seed=1)`, "
        "yacht on its test split.",
        "- Ratios are from this process: ESS/s and wall time against NumPyro's NUTS, ESS per "
        "1000 gradients against BlackJAX's MCLMC, on the same problem.",
        "",
        "Targets (issue 18):",
        "",
        render_targets(rows) or "- (need the cubic rows of mclmc, blackjax, numpyro and ours)",
        "",
        "Per row:",
        "",
        render_details(rows),
        "",
        REPORT_DATA + json.dumps({"sections": sections, "rows": rows}, default=_jsonable)
        + " -->",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


if __name__ == "__main__":
    main()
