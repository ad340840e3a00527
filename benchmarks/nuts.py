"""NUTS effective samples per second: Pyro, our two backends, and NumPyro on one model.

Contenders, all on the same posterior (same priors, likelihood, architecture, standardized data
as ``fit()`` makes it) and with the same ``max_tree_depth`` and target acceptance 0.8:

(a) Pyro's ``NUTS(model, jit_compile=True)`` + ``MCMC`` on the model as a Pyro user writes it
    (a ``PyroModule`` with ``PyroSample`` priors, :class:`PyroUserResNet` below), chains one
    after another, Pyro's default initialization; its budget is capped (fewer draws) so the
    script ends in reasonable time;
(b) ``brn.fit(..., NUTS(backend="pyro"))``: Pyro's kernel on our flat log density;
(c) ``brn.fit(..., NUTS())``: our vectorized backend, all chains in lock-step;
(d) NumPyro's NUTS with ``chain_method="vectorized"`` on the same model written in NumPyro
    (:func:`numpyro_model`), skipped with a message when NumPyro is not installed.

Before sampling, the script asserts that the log joint of models (a) and (d) equals
``BayesianResNet.log_joint`` at a random point (so every contender targets the same density).

Per run: wall seconds including compilation and initialization, the minimum bulk ESS (ArviZ)
over the network output at 20 test inputs and the noise scale, the largest R-hat of those
quantities, ESS per second, and ESS/s relative to (a) and to (d).

Problems: the cubic toy (20 points, width 10, depth 8, Linear basis) and UCI yacht split 0
(277 points, width 16, depth 8, Legendre(2) basis), both with tanh activations.

Run from the repository root::

    python benchmarks/nuts.py [--quick] [--chains 4] [--warmup 100] [--samples 100]
        [--pyro-budget 1x30+30] [--pyro-backend-budget 1x30+30] [--max-tree-depth 5]

The defaults take about 20 minutes on two busy cores; every contender's trees hit the depth
cap there and the ESS are small, so the table measures throughput more than mixing. Larger
budgets (``--warmup 500 --samples 500 --max-tree-depth 8``) give ESS/s that mean more.

``--compare-with TREE`` instead times our vectorized sampler in this checkout against the one
in another checkout ``TREE`` (say ``git worktree add /tmp/old HEAD``): ``adaptation.sample``
on the cubic problem (``--chains``, ``--warmup``, ``--samples``, ``--max-tree-depth``), each
run in a fresh single-threaded process, the two alternating for ``--rounds`` rounds. It prints
each side's seconds per iteration and per lock-step leapfrog step, and the ratio this / TREE
of every round (its median and range), and checks that both sides drew the same samples (so
they did the same work)::

    python benchmarks/nuts.py --compare-with /tmp/old --chains 32 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from torch import Tensor, nn

import bayesresnet as brn
from bayesresnet.arviz_compat import import_arviz
from bayesresnet.data import Standardizer

az = import_arviz()

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64


# ---------------------------------------------------------------------------------- problems
class Problem:
    """A model with its standardized training data and test inputs (20 rows)."""

    def __init__(self, label: str, net: brn.ResNet, x: np.ndarray, y: np.ndarray,
                 x_test: np.ndarray) -> None:
        self.label, self.net = label, net
        self.model = brn.BayesianResNet(net)
        self.x_raw, self.y_raw = x, y
        x_t = torch.as_tensor(x, dtype=F64).reshape(len(x), -1)
        y_t = torch.as_tensor(y, dtype=F64).reshape(len(x), 1)
        x_scaler = Standardizer().fit(x_t)
        self.x = x_scaler.transform(x_t)
        self.y = Standardizer().fit(y_t).transform(y_t)
        self.x_test = x_scaler.transform(torch.as_tensor(x_test, dtype=F64).reshape(20, -1))

    @property
    def phi(self) -> Tensor:
        """Depth basis on the Euler grid, (depth, K)."""
        return self.net.basis.matrix(self.net.layer_times(), self.net.depth, self.net.horizon,
                                     dtype=F64)


def make_problems(data_root: Path, names: list[str]) -> list[Problem]:
    problems = []
    if "cubic" in names:
        x, y = brn.data.cubic(20, seed=0)
        net = brn.ResNet(1, 1, width=10, depth=8, basis=brn.Linear())
        problems.append(Problem("cubic (N=20)", net, x, y, np.linspace(-4.0, 4.0, 20)[:, None]))
    if "yacht" in names:
        x, y, x_test, _ = brn.data.uci("yacht", 0, root=data_root)
        net = brn.ResNet(x.shape[1], 1, width=16, depth=8, basis=brn.Legendre(2))
        problems.append(Problem("yacht split 0 (N=277)", net, x, y, x_test[:20]))
    return problems


# ---------------------------------------------------------------------------------- (a) Pyro user
def _normal_prior(*shape: int) -> dist.Distribution:
    return dist.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)) \
        .expand(list(shape)).to_event(len(shape))


class PyroUserResNet(PyroModule):
    """The Bayesian ResNet as a Pyro user writes it: ``nn.Linear`` layers with ``PyroSample``
    priors, coefficient tensors of the depth basis, an Euler loop and a Gaussian likelihood."""

    def __init__(self, in_dim: int, width: int, depth: int, phi: Tensor,
                 horizon: float = 1.0) -> None:
        super().__init__()
        k = phi.shape[1]
        self.depth, self.dt = depth, horizon / depth
        self.register_buffer("phi", phi)
        self.inp = PyroModule[nn.Linear](in_dim, width, dtype=F64)
        self.inp.weight = PyroSample(_normal_prior(width, in_dim))
        self.inp.bias = PyroSample(_normal_prior(width))
        self.W_coef = PyroSample(_normal_prior(k, width, width))
        self.b_coef = PyroSample(_normal_prior(k, width))
        self.out = PyroModule[nn.Linear](width, 1, dtype=F64)
        self.out.weight = PyroSample(_normal_prior(1, width))
        self.out.bias = PyroSample(_normal_prior(1))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.inp(x)
        weights = torch.einsum("mk,kij->mij", self.phi, self.W_coef)
        biases = self.phi @ self.b_coef
        for n in range(self.depth):
            h = h + self.dt * torch.tanh(h @ weights[n].T + biases[n])
        mean = self.out(h).squeeze(-1)
        sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


# user-style site name -> our site name (sigma is a scalar there, shape (1,) here)
USER_SITES = {"inp.weight": "input_weight", "inp.bias": "input_bias", "W_coef": "W_coef",
              "b_coef": "b_coef", "out.weight": "output_weight", "out.bias": "output_bias",
              "sigma": "noise"}


def from_user_sites(values: dict[str, Any]) -> dict[str, Tensor]:
    """User-style draws (or NumPyro's, same names) -> our site dict, float64 tensors."""
    out = {ours: torch.as_tensor(np.array(values[theirs]), dtype=F64)
           for theirs, ours in USER_SITES.items()}
    out["noise"] = out["noise"].unsqueeze(-1)
    return out


def to_user_sites(values: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {theirs: values[ours] for theirs, ours in USER_SITES.items()}
    out["sigma"] = out["sigma"].squeeze(-1)
    return out


def pyro_user_log_joint(user: PyroUserResNet, values: dict[str, Tensor], x: Tensor,
                        y: Tensor) -> float:
    conditioned = pyro.poutine.condition(user, data=to_user_sites(values))
    return float(pyro.poutine.trace(conditioned).get_trace(x, y[:, 0]).log_prob_sum())


def run_pyro_user(problem: Problem, budget: tuple[int, int, int], max_tree_depth: int,
                  seed: int) -> dict[str, Any]:
    chains, warmup, samples = budget
    user = PyroUserResNet(problem.x.shape[1], problem.net.width, problem.net.depth, problem.phi)
    draws = []
    start = time.perf_counter()
    for chain in range(chains):
        pyro.set_rng_seed(seed + chain)
        kernel = pyro.infer.NUTS(user, jit_compile=True, ignore_jit_warnings=True,
                                 max_tree_depth=max_tree_depth, target_accept_prob=0.8)
        mcmc = pyro.infer.MCMC(kernel, num_samples=samples, warmup_steps=warmup,
                               num_chains=1, disable_progbar=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings of the JIT
            mcmc.run(problem.x, problem.y[:, 0])
        draws.append({k: v.detach() for k, v in mcmc.get_samples().items()})
    seconds = time.perf_counter() - start
    stacked = {k: torch.stack([d[k] for d in draws]) for k in draws[0]}
    return {"draws": from_user_sites(stacked), "seconds": seconds, "steps": math.nan}


# ---------------------------------------------------------------------------------- (b), (c) ours
def run_ours(problem: Problem, backend: str, budget: tuple[int, int, int], max_tree_depth: int,
             seed: int) -> dict[str, Any]:
    chains, warmup, samples = budget
    method = brn.NUTS(num_samples=samples, num_warmup=warmup, chains=chains,
                      max_tree_depth=max_tree_depth, backend=backend)
    start = time.perf_counter()
    post = brn.fit(problem.model, problem.x_raw, problem.y_raw, method=method, seed=seed,
                   progress=False, check=False)
    seconds = time.perf_counter() - start
    return {"draws": post.draws, "seconds": seconds,
            "steps": float(np.mean(post.stats["num_steps"]))}


# ---------------------------------------------------------------------------------- (d) NumPyro
def numpyro_available() -> bool:
    try:
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError:
        return False
    return True


def numpyro_model(phi: np.ndarray, width: int, horizon: float = 1.0) -> Callable[..., Any]:
    """The same Bayesian ResNet written in NumPyro (as a NumPyro user writes it)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    depth, k = phi.shape
    dt = horizon / depth
    phi = jnp.asarray(phi)

    def prior(*shape: int) -> Any:
        return nd.Normal(0.0, 1.0).expand(list(shape)).to_event(len(shape))

    def model(x: Any, y: Any = None) -> Any:
        w_in = numpyro.sample("inp.weight", prior(width, x.shape[1]))
        b_in = numpyro.sample("inp.bias", prior(width))
        w_coef = numpyro.sample("W_coef", prior(k, width, width))
        b_coef = numpyro.sample("b_coef", prior(k, width))
        w_out = numpyro.sample("out.weight", prior(1, width))
        b_out = numpyro.sample("out.bias", prior(1))
        h = x @ w_in.T + b_in
        weights = jnp.einsum("mk,kij->mij", phi, w_coef)
        biases = phi @ b_coef
        for n in range(depth):
            h = h + dt * jnp.tanh(h @ weights[n].T + biases[n])
        mean = (h @ w_out.T + b_out)[:, 0]
        sigma = numpyro.sample("sigma", nd.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("obs", nd.Normal(mean, sigma), obs=y)
        return mean

    return model


def numpyro_log_joint(problem: Problem, values: dict[str, Tensor]) -> float:
    import jax.numpy as jnp
    from numpyro.infer.util import log_density

    model = numpyro_model(problem.phi.numpy(), problem.net.width)
    params = {k: jnp.asarray(v.numpy()) for k, v in to_user_sites(values).items()}
    args = (jnp.asarray(problem.x.numpy()), jnp.asarray(problem.y[:, 0].numpy()))
    return float(log_density(model, args, {}, params)[0])


def run_numpyro(problem: Problem, budget: tuple[int, int, int], max_tree_depth: int,
                seed: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC
    from numpyro.infer import NUTS as NumPyroNUTS

    chains, warmup, samples = budget
    start = time.perf_counter()
    model = numpyro_model(problem.phi.numpy(), problem.net.width)
    kernel = NumPyroNUTS(model, max_tree_depth=max_tree_depth, target_accept_prob=0.8)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(problem.x.numpy()),
             jnp.asarray(problem.y[:, 0].numpy()), extra_fields=("num_steps",))
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    seconds = time.perf_counter() - start
    steps = float(np.mean(np.asarray(mcmc.get_extra_fields()["num_steps"])))
    return {"draws": from_user_sites(draws), "seconds": seconds, "steps": steps}


# ---------------------------------------------------------------------------------- checks, ESS
def check_same_density(problem: Problem, with_numpyro: bool, seed: int) -> dict[str, float]:
    """Assert that models (a) and (d) have our log joint at a random prior draw."""
    values = problem.model.sample_prior(seed, ())
    ours = float(problem.model.log_joint(values, problem.x, problem.y))
    user = PyroUserResNet(problem.x.shape[1], problem.net.width, problem.net.depth, problem.phi)
    errors = {"pyro_user": abs(pyro_user_log_joint(user, values, problem.x, problem.y) - ours)}
    if with_numpyro:
        errors["numpyro"] = abs(numpyro_log_joint(problem, values) - ours)
    for name, err in errors.items():
        assert err <= 1e-8 * max(1.0, abs(ours)), \
            f"{problem.label}: the {name} model's log joint differs from ours by {err}"
    return errors


def summaries(problem: Problem, draws: dict[str, Tensor]) -> np.ndarray:
    """Network output at the 20 test inputs and the noise scale, (chain, draw, 21)."""
    with torch.no_grad():
        loc, _ = problem.model.loc_scale(draws, problem.x_test)
    return np.concatenate([loc[..., 0].numpy(), draws["noise"].numpy()], axis=-1)


def ess_rhat(values: np.ndarray) -> tuple[float, float]:
    """Minimum bulk ESS and maximum rank-normalized split R-hat over the last axis.

    A single chain's R-hat compares its two halves (ArviZ needs two chains).
    """
    halves = values if values.shape[0] > 1 else \
        values[:, :values.shape[1] // 2 * 2].reshape(2, values.shape[1] // 2, -1)
    ess = [float(az.ess(values[..., j], method="bulk")) for j in range(values.shape[-1])]
    rhat = [float(az.rhat(halves[..., j])) for j in range(values.shape[-1])]
    return min(ess), max(rhat)


# ---------------------------------------------------------------------------------- main
def parse_budget(text: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)\+(\d+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"budget must look like CHAINSxWARMUP+SAMPLES, "
                                         f"e.g. 1x30+30; got {text!r}")
    chains, warmup, samples = (int(g) for g in match.groups())
    if chains < 1 or samples < 2:
        raise argparse.ArgumentTypeError(f"budget needs >= 1 chain and >= 2 draws: {text!r}")
    return chains, warmup, samples


def fmt_budget(budget: tuple[int, int, int]) -> str:
    return f"{budget[0]} x ({budget[1]}+{budget[2]})"


CONTENDERS = {
    "a": "(a) Pyro NUTS, PyroModule model, JIT",
    "b": "(b) ours, backend='pyro'",
    "c": "(c) ours, vectorized",
    "d": "(d) NumPyro, vectorized chains",
}


def pin_cores(cpus: int | None) -> str:
    """Pin this process (and the threads it starts later) to its first ``cpus`` allowed cores.

    Returns a phrase for the report saying what the contenders ran on.
    """
    if cpus is None:
        return "no core pinning"
    if cpus < 1:
        raise SystemExit(f"--cpus must be at least 1, got {cpus}")
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("--cpus needs os.sched_setaffinity (Linux)")
    allowed = sorted(os.sched_getaffinity(0))
    if cpus > len(allowed):
        raise SystemExit(f"--cpus {cpus}: only {len(allowed)} cores are available")
    os.sched_setaffinity(0, allowed[:cpus])
    return f"process pinned to core(s) {', '.join(map(str, allowed[:cpus]))}"


# ------------------------------------------------------------------------ A/B of the kernel
def kernel_timing(chains: int, warmup: int, samples: int, max_tree_depth: int,
                  seed: int) -> dict[str, float]:
    """Wall and CPU seconds of ``adaptation.sample`` on the cubic problem in this process
    (whichever ``bayesresnet`` it imports), its number of batched gradient calls and a checksum
    of the draws."""
    from bayesresnet.inference import adaptation

    torch.set_num_threads(1)
    problem = make_problems(Path("."), ["cubic"])[0]
    calls = [0]

    def log_density(z: Tensor) -> Tensor:
        calls[0] += 1
        return problem.model.log_density(z, problem.x, problem.y)

    z0 = 0.1 * torch.randn(chains, problem.model.dim, dtype=F64,
                           generator=torch.Generator().manual_seed(seed))
    # First gradient outside the timing: it fills caches (and a gradient through
    # torch.autograd.grad with grad_outputs imports sympy, 0.25 s of CPU once per process).
    adaptation.init(z0, log_density)
    calls[0] = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    draws, _ = adaptation.sample(log_density, z0, warmup, samples,
                                 torch.Generator().manual_seed(seed + 1),
                                 max_tree_depth=max_tree_depth, pool_step_size=True)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu_start,
            "calls": calls[0], "checksum": float(draws.sum())}


def compare_kernels(other: Path, args: argparse.Namespace) -> None:
    """Alternate timing runs of this checkout and ``other`` (fresh processes) and print the
    per-round ratios."""
    def run(tree: Path) -> dict[str, float]:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--timing-worker",
             f"{args.chains},{args.warmup},{args.samples},{args.max_tree_depth},{args.seed}"],
            env=env, cwd=str(tree), capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    this = REPO
    rows: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
    for r in range(args.rounds):
        order = [("this", this), ("other", other)] if r % 2 == 0 else \
            [("other", other), ("this", this)]
        for key, tree in order:
            rows[key].append(run(tree))
        print(f"round {r}: this {rows['this'][-1]['seconds']:.2f} s "
              f"({rows['this'][-1]['cpu']:.2f} s CPU), other {rows['other'][-1]['seconds']:.2f} s "
              f"({rows['other'][-1]['cpu']:.2f} s CPU)", flush=True)
    same = all(a["checksum"] == b["checksum"] and a["calls"] == b["calls"]
               for a, b in zip(rows["this"], rows["other"], strict=True))
    iters = args.warmup + args.samples
    for clock in ("seconds", "cpu"):
        label = "wall" if clock == "seconds" else "CPU"
        for key in ("this", "other"):
            secs = sorted(row[clock] for row in rows[key])
            med = secs[len(secs) // 2]
            print(f"{label:4s} {key:5s} ({this if key == 'this' else other}): median {med:.2f} s,"
                  f" {1e3 * med / iters:.1f} ms per iteration, "
                  f"{1e3 * med / rows[key][0]['calls']:.3f} ms per lock-step leapfrog step")
        ratios = sorted(a[clock] / b[clock]
                        for a, b in zip(rows["this"], rows["other"], strict=True))
        print(f"{label} ratio this / other over {args.rounds} rounds: median "
              f"{ratios[len(ratios) // 2]:.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}")
    print(f"same draws and gradient calls: {same}; 1-minute load average now "
          f"{os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny budgets and max tree depth 4 (numbers meaningless)")
    parser.add_argument("--chains", type=int, default=4, help="chains of (c) and (d)")
    parser.add_argument("--warmup", type=int, default=100, help="warmup of (c) and (d)")
    parser.add_argument("--samples", type=int, default=100, help="draws per chain of (c), (d)")
    parser.add_argument("--pyro-budget", type=parse_budget, default=(1, 30, 30),
                        help="CHAINSxWARMUP+SAMPLES of (a), default 1x30+30")
    parser.add_argument("--pyro-backend-budget", type=parse_budget, default=(1, 30, 30),
                        help="CHAINSxWARMUP+SAMPLES of (b), default 1x30+30")
    parser.add_argument("--max-tree-depth", type=int, default=5)
    parser.add_argument("--problems", nargs="+", default=["cubic", "yacht"],
                        choices=["cubic", "yacht"])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                        choices=list(CONTENDERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (and XLA's, when NumPyro runs)")
    parser.add_argument("--data-root", type=Path, default=REPO / ".." / "shared" / "data" / "uci")
    parser.add_argument("--cpus", type=int, default=None,
                        help="pin the process to this many cores (os.sched_setaffinity) so every "
                             "contender gets the same ones: JAX runs helper threads besides "
                             "XLA's intra-op pool and takes an idle second core otherwise")
    parser.add_argument("--tune-allocator", action="store_true",
                        help="call bayesresnet.tune_allocator() first, as the bayesresnet "
                             "command does (fixes glibc's malloc thresholds for every "
                             "contender in this process)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file (default benchmarks/results/nuts.md, "
                             "nuts_quick.md with --quick)")
    parser.add_argument("--compare-with", type=Path, default=None, metavar="TREE",
                        help="time our vectorized sampler here against the checkout TREE "
                             "(see the module docstring) instead of the contenders")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of --compare-with")
    parser.add_argument("--timing-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timing_worker:
        chains, warmup, samples, depth, seed = map(int, args.timing_worker.split(","))
        print(json.dumps(kernel_timing(chains, warmup, samples, depth, seed)))
        return
    if args.compare_with is not None:
        compare_kernels(args.compare_with.resolve(), args)
        return
    if args.quick:
        args.chains, args.warmup, args.samples = 2, 20, 20
        args.pyro_budget, args.pyro_backend_budget = (1, 5, 5), (1, 10, 10)
        args.max_tree_depth = 4
    out = args.out or REPO / "benchmarks" / "results" / ("nuts_quick.md" if args.quick
                                                         else "nuts.md")
    torch.set_num_threads(args.threads)
    cores = pin_cores(args.cpus)
    allocator = "glibc malloc thresholds fixed by `bayesresnet.tune_allocator()`" if (
        args.tune_allocator and brn.tune_allocator()) else "the allocator's defaults"
    # ArviZ warns about one-chain inputs; the ESS of one chain is what (a) and (b) have.
    logging.getLogger("arviz").setLevel(logging.ERROR)
    with_numpyro = "d" in args.contenders and numpyro_available()
    if "d" in args.contenders and not with_numpyro:
        print("NumPyro/JAX not installed: skipping contender (d) "
              "(pip install 'bayesresnet[bench]' to include it)")
    if with_numpyro:
        if args.threads == 1:
            os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                               "intra_op_parallelism_threads=1")
        import jax
        import numpyro

        jax.config.update("jax_enable_x64", True)
        numpyro.set_host_device_count(1)
    contenders = [c for c in args.contenders if c != "d" or with_numpyro]
    ours_budget = (args.chains, args.warmup, args.samples)
    budgets = {"a": args.pyro_budget, "b": args.pyro_backend_budget, "c": ours_budget,
               "d": ours_budget}

    problems = make_problems(args.data_root.resolve(), args.problems)
    rows: list[dict[str, Any]] = []
    checks: dict[str, dict[str, float]] = {}
    for problem in problems:
        checks[problem.label] = check_same_density(problem, with_numpyro, args.seed + 17)
        print(f"{problem.label}: {problem.model.dim} parameters; |log joint - ours| at a prior "
              "draw: " + ", ".join(f"{k} {v:.1e}" for k, v in checks[problem.label].items()))
        for key in contenders:
            budget = budgets[key]
            load = os.getloadavg()[0]
            if key == "a":
                result = run_pyro_user(problem, budget, args.max_tree_depth, args.seed)
            elif key == "b":
                result = run_ours(problem, "pyro", budget, args.max_tree_depth, args.seed)
            elif key == "c":
                result = run_ours(problem, "vectorized", budget, args.max_tree_depth, args.seed)
            else:
                result = run_numpyro(problem, budget, args.max_tree_depth, args.seed)
            ess, rhat = ess_rhat(summaries(problem, result["draws"]))
            row = {"problem": problem.label, "key": key, "budget": budget, "ess": ess,
                   "rhat": rhat, "seconds": result["seconds"], "steps": result["steps"],
                   "ess_s": ess / result["seconds"], "load": (load + os.getloadavg()[0]) / 2}
            rows.append(row)
            print(f"  {CONTENDERS[key]:40s} {fmt_budget(budget):>14s}: "
                  f"{row['seconds']:7.1f} s, min bulk ESS {ess:7.1f}, max R-hat {rhat:5.2f}, "
                  f"{row['ess_s']:8.3f} ESS/s (load {row['load']:.1f})", flush=True)

    table = render_table(rows)
    print()
    print(table)
    lines = [
        "# NUTS: effective samples per second",
        "",
        f"`python benchmarks/nuts.py{' --quick' if args.quick else ''} --chains {args.chains} "
        f"--warmup {args.warmup} --samples {args.samples} --pyro-budget "
        f"{'{}x{}+{}'.format(*args.pyro_budget)} --pyro-backend-budget "
        f"{'{}x{}+{}'.format(*args.pyro_backend_budget)} --max-tree-depth "
        f"{args.max_tree_depth} --threads {args.threads}"
        f"{f' --cpus {args.cpus}' if args.cpus else ''}"
        f"{' --tune-allocator' if args.tune_allocator else ''}`",
        "",
        f"Every contender samples the same posterior (priors N(0, 1) on all network "
        f"coefficients, HalfNormal(1) noise, Gaussian likelihood, tanh ResNet, data "
        f"standardized as `fit()` does) with max_tree_depth {args.max_tree_depth} (at most "
        f"{2 ** args.max_tree_depth - 1} leapfrog steps per draw) and target acceptance 0.8. "
        "Budgets are chains x (warmup + draws per chain). (a) is capped: its budget is far "
        "smaller than the others', so its ESS is itself very uncertain and its adaptation "
        "short; (b) runs Pyro's kernel (one chain after another) on a reduced budget too. "
        "Wall seconds include JIT compilation (a, d), MAP initialization (b, c: 500 Adam "
        "steps) and warmup. ESS: minimum ArviZ bulk ESS over the network output at 20 test "
        "inputs and the noise scale; R-hat: the largest over the same quantities. "
        "Leapfrog: mean leapfrog steps per kept draw.",
        "",
        "Check that the models are identical: |log joint of the model - "
        "`BayesianResNet.log_joint`| at a prior draw: " + "; ".join(
            f"{label}: " + ", ".join(f"{k} {v:.1e}" for k, v in c.items())
            for label, c in checks.items()) + ".",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs; "
        f"{cores}; torch {torch.__version__} with {args.threads} thread(s), "
        f"pyro {pyro.__version__}"
        + (f", numpyro {__import__('numpyro').__version__}, jax {__import__('jax').__version__}"
           if with_numpyro else ", NumPyro not installed (d skipped)")
        + f", float64 everywhere; memory: {allocator}. The load column is the 1-minute load "
        "average during the run: with load above the core count, wall times (of all "
        "contenders) are inflated.",
        "",
        table,
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| problem | contender | budget | wall (s) | leapfrog/draw | min bulk ESS | "
             "max R-hat | ESS/s | vs (a) | vs (d) | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        same = {r["key"]: r for r in rows if r["problem"] == row["problem"]}

        def ratio(key: str, row: dict[str, Any] = row, same: dict = same) -> str:
            if key not in same or same[key]["ess_s"] <= 0:
                return "-"
            return f"{row['ess_s'] / same[key]['ess_s']:.2g}x"

        capped = " (capped)" if row["key"] in "ab" else ""
        steps = "-" if math.isnan(row["steps"]) else f"{row['steps']:.0f}"
        lines.append(f"| {row['problem']} | {CONTENDERS[row['key']]} | "
                     f"{fmt_budget(row['budget'])}{capped} | {row['seconds']:.1f} | {steps} | "
                     f"{row['ess']:.1f} | {row['rhat']:.2f} | {row['ess_s']:.3g} | "
                     f"{ratio('a')} | {ratio('d')} | {row['load']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
