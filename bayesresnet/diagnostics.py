"""Convergence diagnostics for every inference method, with documented pass/fail thresholds.

MCMC: NUTS, MCLMC, a user's Pyro run
    (Vehtari, Gelman, Simpson, Carpenter & Buerkner 2021; Betancourt 2017; Sommer, Wimmer,
    Papamarkou, Bothmann, Bischl & Ruegamer 2024.)
    R-hat and ESS are taken of the identifiable quantities: the noise, the hierarchical scales,
    and the network mean ``f`` at up to ``MAX_FUNCTION_POINTS`` training inputs (raw weights are
    not identifiable because of the network's permutation and sign symmetries, so their R-hat
    says nothing). Which of two rules judges them depends on how the chains started
    (``method.chains_start_apart()``, recorded as ``Diagnostics.rule``); both R-hat figures
    are always in the table, the one the rule does not judge as a row that cannot fail.

    Pooled rule, for chains started from one distribution (NUTS ``init='prior'`` or
    ``'network'``, runs made outside the library):

    * R-hat: rank-normalized split R-hat of all chains together (``arviz.rhat``), max over the
      quantities. Passes below ``RHAT_MAX = 1.01``, Vehtari et al.'s recommendation (1.05 is
      often tolerated for rough work; we flag it). A quantity that does not vary within chains
      has no R-hat and fails.
    * Bulk and tail ESS (``arviz.ess``) of all chains together, min over the same quantities;
      pass above ``ESS_PER_CHAIN = 100`` per chain (Vehtari et al.: 100 per chain makes R-hat
      and the ESS estimate themselves reliable).

    Chain-wise rule, for chains started at distinct modes on purpose (NUTS ``init='map'`` or
    ``'prior-map'``, MCLMC): each chain is a local sampler of its own mode, so between-chain
    disagreement measures how different the modes are, not whether the chains mixed (Sommer
    et al. 2024). The pooled R-hat is reported as that figure of mode diversity; the checks are:

    * Chain-wise R-hat: ArviZ's rank-normalized split R-hat of each chain on its own (its two
      halves as two chains, :func:`~bayesresnet.arviz_compat.rhat_by_chain`), max over chains
      and quantities; passes below ``CHAIN_RHAT_MAX = 1.05``. One chain's R-hat rests on a
      quarter as many chains as the pooled R-hat of four, and is that much noisier: for
      independent draws, 150 per chain and 21 quantities, the max over 4 chains had a median of
      1.047 chain-wise against 1.010 pooled (300 per chain: 1.025 and 1.005). 1.05 holds one
      chain to about the standard that 1.01 holds four; a stuck chain (no R-hat: fails), a
      drifting chain or a random walk is far above it.
    * Bulk and tail ESS of each chain on its own, min over chains and quantities; pass above
      ``ESS_PER_CHAIN`` (the same requirement per chain as the pooled rule's).

    Sampler checks, where the run records the statistics (a method's ``sampler_stats`` says
    which it records; a check it cannot have is skipped without a note):

    * Divergences (``diverging``): fraction of post-warmup transitions that diverged; pass at most
      ``DIVERGENCE_MAX = 1%``. Any divergence is listed as a warning, since even a few can mean
      the sampler misses a region of the posterior.
    * Maximum tree depth: fraction of transitions whose trajectory was cut at ``max_tree_depth``;
      pass at most ``TREE_DEPTH_MAX = 5%``. Saturation costs efficiency rather than validity,
      but beyond a few percent the sampler degrades toward a random walk.
    * E-BFMI per chain, ``mean(diff(E)^2) / var(E)`` of the energies (as ``arviz.bfmi``); pass
      at least ``EBFMI_MIN = 0.3`` in every chain (Betancourt 2016).

VI
    * ELBO convergence: the least-squares drift of the ELBO over the last 10% of steps (at least
      100 steps where the run has 200) against the larger of the ELBO's own noise there (residual
      SD) and 1% of its total change; passes when the ratio is at most 1 (see
      :func:`trend_ratio`).
    * Pareto k-hat of the PSIS importance weights ``log p(theta, y) - log q(theta)`` of the
      draws (Yao, Vehtari, Simpson & Gelman 2018): passes at most ``KHAT_MAX = 0.7``; between
      0.5 and 0.7 a warning that the approximation is only roughly right.
Ensembles and MAP
    * Optimization convergence of each member's loss, as for the ELBO (max over members).
    * Ensembles: spread of the member predictions at the training inputs (mean SD of ``f``
      across members) relative to the mean noise scale; below ``COLLAPSE_MIN = 0.01`` the members
      collapsed to one point and the ensemble quantifies no model uncertainty.
    * Ensembles: leave-one-out PIT of the training data (:func:`ensemble_loo_pit`; each member
      refitted without the point in the network linearized at the member): the fraction of
      points outside the central 95% of their leave-one-out predictive passes at most the
      binomial bound ``binom.ppf(1 - LOO_PIT_ALPHA, N, LOO_PIT_TAIL) / N`` (a calibrated
      ensemble exceeds it with probability at most ``LOO_PIT_ALPHA = 1%``); above it the
      ensemble is likely overconfident. With 20 points the bound is 4 of 20, so only clear
      overconfidence is caught.
    * MAP: one point; a note that no model uncertainty is quantified.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .arviz_compat import draws_dataset, ess, ess_by_chain, psislw, rhat_by_chain
from .arviz_compat import rhat as compat_rhat
from .validation import as_numpy, check_posterior

if TYPE_CHECKING:
    import pandas as pd

    from .model import BayesianResNet
    from .posterior import Posterior

__all__ = [
    "CHAIN_RHAT_MAX",
    "COLLAPSE_MIN",
    "DIVERGENCE_MAX",
    "EBFMI_MIN",
    "ESS_PER_CHAIN",
    "INFO_RULE",
    "KHAT_MAX",
    "LINEARIZE_MAX_JACOBIAN",
    "LINEARIZE_MAX_RANK",
    "LOO_PIT_ALPHA",
    "LOO_PIT_TAIL",
    "RHAT_MAX",
    "TREE_DEPTH_MAX",
    "ConvergenceWarning",
    "Diagnostics",
    "LinearizedFit",
    "diagnose",
    "ebfmi",
    "ensemble_loo_pit",
    "gaussian_prior_scales",
    "linearization_fits",
    "linearize",
    "psis_khat",
    "trend_ratio",
    "warn_if_failed",
]

RHAT_MAX = 1.01
CHAIN_RHAT_MAX = 1.05
ESS_PER_CHAIN = 100
DIVERGENCE_MAX = 0.01
TREE_DEPTH_MAX = 0.05
EBFMI_MIN = 0.3
KHAT_MAX = 0.7
KHAT_GOOD = 0.5
TREND_MAX = 1.0
COLLAPSE_MIN = 0.01
# LOO-PIT check of ensembles: values outside the central 1 - LOO_PIT_TAIL, and the false-alarm
# probability of the binomial bound on their count.
LOO_PIT_TAIL = 0.05
LOO_PIT_ALPHA = 0.01
# R-hat and ESS of f are computed at this many training inputs at most (evenly spaced).
MAX_FUNCTION_POINTS = 256


class ConvergenceWarning(UserWarning):
    """An inference run failed a convergence check of :func:`~bayesresnet.diagnostics.diagnose`."""


# The ``rule`` of a row that reports a figure and cannot fail.
INFO_RULE = "info"


@dataclass
class _Check:
    check: str
    value: float
    rule: str  # "<", "<=", ">", ">=", or INFO_RULE for a figure that is reported, not checked
    threshold: float
    about: str = ""  # what an INFO_RULE figure means

    @property
    def informative(self) -> bool:
        """A figure shown with the checks that cannot fail."""
        return self.rule == INFO_RULE

    @property
    def passed(self) -> bool:
        if self.informative:
            return True
        if not math.isfinite(self.value):
            return False
        return {"<": self.value < self.threshold, "<=": self.value <= self.threshold,
                ">": self.value > self.threshold, ">=": self.value >= self.threshold}[self.rule]


@dataclass
class Diagnostics:
    """The outcome of :func:`~bayesresnet.diagnostics.diagnose`.

    Attributes
    ----------
    method : str
        Name of the inference method.
    checks : list
        The checks in order (see :attr:`table`), with the figures that are reported but not
        checked (rule ``"info"``, see :meth:`add_figure`).
    warnings : list of str
        Human-readable problems (every failed check, plus softer issues).
    notes : list of str
        Context that is not a problem (e.g. a check that does not apply).
    details : dict
        Per-quantity numbers behind the checks (e.g. ``"ebfmi"`` per chain, ``"rhat"`` per
        quantity name). MCMC runs: ``"rhat"`` (pooled) and ``"rhat_by_chain"`` (dim ``chain``
        first) per quantity, ``"pooled_rhat"`` and ``"chainwise_rhat"`` their maxima (floats,
        both computed under either rule), and the ESS the rule used (``"ess_bulk"``,
        ``"ess_tail"`` pooled; ``"ess_bulk_by_chain"``, ``"ess_tail_by_chain"`` per chain).
    rule : str or None
        MCMC runs: which rule judged mixing, ``"chain-wise"`` (chains started at distinct
        modes: each chain checked on its own, the pooled R-hat reported as mode diversity) or
        ``"pooled"`` (chains started from one distribution: all chains checked together).
        None for other methods.
    """

    method: str
    shape: tuple[int, int]
    checks: list[_Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(c.passed for c in self.checks)

    @property
    def num_checks(self) -> int:
        """How many rows of the table are checks (the rest are figures that cannot fail)."""
        return sum(not c.informative for c in self.checks)

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [c.check for c in self.checks if not c.passed]

    @property
    def table(self) -> pd.DataFrame:
        """One row per check: ``check``, ``value``, ``rule``, ``threshold``, ``passed``.

        A figure that is reported but not checked (:meth:`add_figure`) has rule ``"info"``,
        threshold NaN and passed True."""
        import pandas as pd

        rows = [{"check": c.check, "value": c.value, "rule": c.rule, "threshold": c.threshold,
                 "passed": c.passed} for c in self.checks]
        return pd.DataFrame(rows, columns=["check", "value", "rule", "threshold", "passed"])

    def __str__(self) -> str:
        chains, draws = self.shape
        failed = self.failed
        verdict = ("all checks passed" if not failed else
                   f"{len(failed)} of {self.num_checks} checks FAILED")
        lines = [f"{self.method} diagnostics ({chains} chain(s) x {draws} draw(s)): {verdict}"]
        if self.rule is not None:
            lines.append(f"mixing judged by the {self.rule} rule ({_RULE_MEANING[self.rule]})")
        if self.checks:
            width = max(len(c.check) for c in self.checks)
            for c in self.checks:
                if c.informative:
                    lines.append(f"  {c.check:<{width}}  {c.value:>10.4g}  (reported, not "
                                 "checked)")
                    continue
                lines.append(f"  {c.check:<{width}}  {c.value:>10.4g}  {c.rule} "
                             f"{c.threshold:<8.4g}  {'ok' if c.passed else 'FAIL'}")
        for title, items in (("warnings", self.warnings), ("notes", self.notes)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines)

    def add_check(self, check: str, value: float, rule: str, threshold: float,
                  warning: str) -> None:
        """Record a check: ``value rule threshold`` (rule ``<``, ``<=``, ``>`` or ``>=``) passes;
        when it fails, ``warning`` says what went wrong and what to do."""
        if rule not in _COMPARISONS:
            raise ValueError(f"rule must be one of {sorted(_COMPARISONS)}, got {rule!r}")
        self._add(check, value, rule, threshold, warning)

    def add_figure(self, check: str, value: float, about: str) -> None:
        """Record a figure that is shown with the checks but cannot fail (rule ``"info"``),
        e.g. the pooled R-hat of chains started at distinct modes; ``about`` says what it
        means and is added to the notes."""
        self.checks.append(_Check(check, float(value), INFO_RULE, math.nan, about))
        self.notes.append(about)

    def _add(self, check: str, value: float, rule: str, threshold: float,
             warning: str | None = None) -> _Check:
        item = _Check(check, float(value), rule, float(threshold))
        self.checks.append(item)
        if not item.passed and warning:
            self.warnings.append(warning)
        return item


_COMPARISONS = frozenset({"<", "<=", ">", ">="})
_RULE_MEANING = {
    "chain-wise": "chains started at distinct modes: each chain must mix within its own; the "
                  "pooled R-hat measures mode diversity",
    "pooled": "chains started from one distribution: all chains must agree",
}


# ---------------------------------------------------------------------------------- statistics
def ebfmi(energy: Any) -> np.ndarray:
    """Estimated Bayesian fraction of missing information of each chain.

    Parameters
    ----------
    energy : array (chain, draw)
        Hamiltonian energy of each transition.

    Returns
    -------
    ndarray (chain,)
        ``mean(diff(E)^2) / var(E)`` per chain (unbiased variance, as ``arviz.bfmi``).
    """
    energy = np.atleast_2d(np.asarray(energy, dtype=np.float64))
    if energy.ndim != 2 or energy.shape[1] < 3:
        raise ValueError(f"energy must have shape (chain, draw) with at least 3 draws, "
                         f"got {energy.shape}")
    return np.square(np.diff(energy, axis=1)).mean(axis=1) / energy.var(axis=1, ddof=1)


def psis_khat(log_weights: Any) -> float:
    """Pareto k-hat of the upper tail of importance weights (PSIS, ``arviz.psislw``).

    Parameters
    ----------
    log_weights : array (S,)
        Unnormalized log importance weights, e.g. ``log p(theta_s, y) - log q(theta_s)``.

    Returns
    -------
    float
        k-hat; above 0.7 the importance-weighted estimates are unreliable (Yao et al. 2018).
        ``inf`` when too few draws fall in the tail to fit it (fewer than ~25 draws).
    """
    log_weights = np.array(log_weights, dtype=np.float64).reshape(-1)
    if log_weights.size < 2 or not np.isfinite(log_weights).all():
        raise ValueError("log_weights must hold at least 2 finite values")
    _, khat = psislw(log_weights, reff=1.0)
    return float(khat)


def trend_ratio(history: Any, fraction: float = 0.1) -> float:
    """How much an optimization objective still moves at the end, relative to its noise.

    Over the last ``fraction`` of the steps (at least ``min(100, steps // 2)`` steps), a
    least-squares line is fitted; its change across that window is divided by the larger of the
    residual standard deviation (the objective's own step-to-step noise) and 1% of the total
    change from the first step to the window's median. Values at most 1 mean converged: the
    objective moves less than its noise, or by less than 1% of what it already gained.

    Parameters
    ----------
    history : array (steps,)
        Objective per step (ELBO or loss; the sign does not matter).

    Returns
    -------
    float
        The ratio; NaN with fewer than 20 steps or non-finite values in the window.
    """
    h = np.asarray(history, dtype=np.float64).reshape(-1)
    n = h.size
    window = max(math.ceil(fraction * n), min(100, n // 2))
    if n < 20 or window < 10:
        return math.nan
    tail = h[-window:]
    if not np.isfinite(tail).all() or not math.isfinite(h[0]):
        return math.nan
    t = np.arange(window, dtype=np.float64)
    slope, intercept = np.polyfit(t, tail, 1)
    noise = (tail - (slope * t + intercept)).std(ddof=2)
    drift = abs(slope) * (window - 1)
    center = float(np.median(tail))
    scale = max(noise, 0.01 * abs(center - h[0]), 1e-12 * (1.0 + abs(center)))
    return float(drift / scale)


# ---------------------------------------------------------------------------------- per method
def _function_values(posterior: Posterior) -> np.ndarray:
    """f at (up to MAX_FUNCTION_POINTS) training inputs, (chain, draw, points, out_dim)."""
    x = posterior.x_train
    if x.shape[0] > MAX_FUNCTION_POINTS:
        x = x[np.linspace(0, x.shape[0] - 1, MAX_FUNCTION_POINTS).round().astype(int)]
    loc, _, _ = posterior.evaluate(x)
    return loc.numpy()


def _identifiable(posterior: Posterior) -> dict[str, np.ndarray]:
    """Quantities whose R-hat and ESS are meaningful, each (chain, draw, ...)."""
    out = {name: value.numpy() for name, value in posterior.draws.items()
           if name == "noise" or (name.endswith("_scale") and value.dim() == 2)}
    out["f"] = _function_values(posterior)
    return out


def _worst(dataset: Any, largest: bool) -> tuple[float, str]:
    """The max (or min) over every element of every variable, and where it is."""
    best_value, best_where = (-math.inf if largest else math.inf), ""
    for name, var in dataset.data_vars.items():
        values = np.asarray(var.values, dtype=np.float64).reshape(-1)
        if values.size == 0:
            continue
        if np.isnan(values).any():
            return math.nan, f"{name} (not computable: no variation within chains)"
        index = int(values.argmax() if largest else values.argmin())
        value = float(values[index])
        if (value > best_value) if largest else (value < best_value):
            where = name if var.ndim == 0 else \
                f"{name}[{', '.join(map(str, np.unravel_index(index, var.shape)))}]"
            best_value, best_where = value, where
    return best_value, best_where


def _worst_by_chain(dataset: Any, largest: bool) -> tuple[float, str]:
    """As :func:`_worst` over a dataset with a leading ``chain`` dim, naming the chain."""
    best_value, best_where = (-math.inf if largest else math.inf), ""
    for chain in range(dataset.sizes["chain"]):
        value, where = _worst(dataset.isel(chain=chain), largest)
        if math.isnan(value):
            return value, f"chain {chain}: {where}"
        if (value > best_value) if largest else (value < best_value):
            best_value, best_where = value, f"chain {chain}: {where}"
    return best_value, best_where


def _diagnose_mcmc(posterior: Posterior, diag: Diagnostics) -> None:
    """R-hat and ESS by the rule that fits how the chains started; the sampler's own checks."""
    chains = diag.shape[0]
    quantities = draws_dataset(_identifiable(posterior))
    pooled, by_chain = compat_rhat(quantities), rhat_by_chain(quantities)
    diag.details["rhat"], diag.details["rhat_by_chain"] = pooled, by_chain
    pooled_value, pooled_where = _worst(pooled, largest=True)
    chain_value, chain_where = _worst_by_chain(by_chain, largest=True)
    diag.details["pooled_rhat"], diag.details["chainwise_rhat"] = pooled_value, chain_value
    start_apart = getattr(posterior.method, "chains_start_apart", None)
    diag.rule = "chain-wise" if start_apart is not None and start_apart() else "pooled"
    if diag.rule == "chain-wise":
        diag.add_check(
            "max chain-wise R-hat", chain_value, "<", CHAIN_RHAT_MAX,
            f"chain-wise R-hat {chain_value:.3f} in {chain_where} (should be < "
            f"{CHAIN_RHAT_MAX}): the chain has not mixed within its own mode (its quarters "
            "disagree: it drifts or sticks); run longer or improve the adaptation")
        diag.add_figure(
            "max R-hat", pooled_value,
            f"pooled R-hat {pooled_value:.3f} (at {pooled_where}) measures how different the "
            f"modes of the {chains} chains are, which started apart on purpose; it is "
            "reported, not checked (Posterior.stacking_weights() weighs the chains by their "
            "predictions)" if chains > 1 else
            "one chain: no pooled R-hat (it compares chains); reported, not checked")
        for label in ("bulk", "tail"):
            data = ess_by_chain(quantities, label)
            diag.details[f"ess_{label}_by_chain"] = data
            value, where = _worst_by_chain(data, largest=False)
            diag.add_check(
                f"min {label} ESS per chain", value, ">", ESS_PER_CHAIN,
                f"{label} ESS {value:.0f} in {where} (should be > {ESS_PER_CHAIN} in every "
                "chain): draw more samples")
    else:
        diag.add_check("max R-hat", pooled_value, "<", RHAT_MAX,
                       f"R-hat {pooled_value:.3f} at {pooled_where} (should be < {RHAT_MAX}): "
                       "chains disagree; run longer or reparameterize")
        diag.add_figure(
            "max chain-wise R-hat", chain_value,
            f"chain-wise R-hat {chain_value:.3f} (worst: {chain_where}): how well each "
            "chain mixed on its own; reported, not checked, since these chains started from "
            "one distribution and must agree (the pooled R-hat)")
        min_ess = ESS_PER_CHAIN * chains
        for label in ("bulk", "tail"):
            data = ess(quantities, label)
            diag.details[f"ess_{label}"] = data
            value, where = _worst(data, largest=False)
            diag.add_check(f"min {label} ESS", value, ">", min_ess,
                           f"{label} ESS {value:.0f} at {where} (should be > {min_ess}, i.e. "
                           f"{ESS_PER_CHAIN} per chain): draw more samples")
    _add_sampler_checks(posterior, diag)


def _add_sampler_checks(posterior: Posterior, diag: Diagnostics) -> None:
    """Divergences, tree depth and E-BFMI, where the run records what they need.

    A statistic that the method declares it never records (``sampler_stats``) is skipped
    without a note; one it declares is noted when missing. A method that declares nothing (a
    run made elsewhere) is judged by what it recorded: missing statistics are noted where it
    recorded some of a tree sampler's (e.g. NumPyro's, without tree depths), and once where it
    recorded none at all; a run with statistics of another kind of sampler only is not noted.
    """
    draws = diag.shape[1]
    stats = posterior.stats
    declared = getattr(posterior.method, "sampler_stats", None)
    if declared is None and not stats:
        diag.notes.append("no per-draw statistics recorded; divergence, tree depth and E-BFMI "
                          "checks skipped")
    tree_sampler = bool(_TREE_SAMPLER_STATS & set(stats))

    def missing(name: str, what: str) -> None:
        if (name in declared) if declared is not None else tree_sampler:
            diag.notes.append(f"stats lack {name!r}; {what} check skipped")

    if "diverging" in stats:
        diverging = as_numpy(stats["diverging"], np.float64).astype(bool)
        fraction = float(diverging.mean())
        diag._add("divergence fraction", fraction, "<=", DIVERGENCE_MAX,
                  f"{fraction:.1%} of transitions diverged (at most {DIVERGENCE_MAX:.0%} "
                  "allowed): raise target_accept or reparameterize")
        if 0 < fraction <= DIVERGENCE_MAX:
            diag.warnings.append(f"{int(diverging.sum())} divergent transition(s): the sampler "
                                 "may miss part of the posterior; consider a higher "
                                 "target_accept")
    else:
        missing("diverging", "divergence")
    if "reached_max_tree_depth" in stats:
        fraction = float(as_numpy(stats["reached_max_tree_depth"], np.float64).astype(bool).mean())
        diag._add("max tree depth fraction", fraction, "<=", TREE_DEPTH_MAX,
                  f"{fraction:.1%} of transitions hit the maximum tree depth (at most "
                  f"{TREE_DEPTH_MAX:.0%} allowed): raise max_tree_depth or improve warmup")
    else:
        missing("reached_max_tree_depth", "tree depth")
    if "energy" in stats and draws >= 3:
        values = ebfmi(as_numpy(stats["energy"], np.float64))
        diag.details["ebfmi"] = values
        worst = int(np.argmin(values))
        diag._add("min E-BFMI", float(values[worst]), ">=", EBFMI_MIN,
                  f"E-BFMI {values[worst]:.2f} in chain {worst} (should be >= {EBFMI_MIN}): "
                  "momentum resampling explores the energy poorly; reparameterize")
    elif "energy" in stats:
        diag.notes.append("fewer than 3 draws; E-BFMI check skipped")
    else:
        missing("energy", "E-BFMI")


# Per-draw statistics of a tree-building Hamiltonian sampler (NUTS: ours, Pyro's, NumPyro's).
_TREE_SAMPLER_STATS = frozenset({"diverging", "reached_max_tree_depth", "energy", "tree_depth",
                                 "num_steps", "accept_prob"})


def _add_trend(diag: Diagnostics, histories: np.ndarray, label: str) -> None:
    """histories: (steps, members)."""
    steps = histories.shape[0]
    ratios = np.array([trend_ratio(histories[:, m]) for m in range(histories.shape[1])])
    diag.details[f"{label}_trend"] = ratios
    value = float(np.nan if np.isnan(ratios).any() else ratios.max())
    if math.isfinite(value):
        message = (f"the {label} still moves at the end of the run ({value:.2g} x its noise or "
                   "1% of its total change): run more steps")
    elif steps < 20:
        message = f"only {steps} optimization steps: too few to judge the {label}'s convergence"
    else:
        message = f"the {label} is not finite at the end of the run"
    diag._add(f"{label} trend (last 10%)", value, "<=", TREND_MAX, message)


def _diagnose_vi(posterior: Posterior, diag: Diagnostics) -> None:
    stats = posterior.stats
    if "elbo" in stats:
        _add_trend(diag, as_numpy(stats["elbo"], np.float64).reshape(-1, 1), "ELBO")
    elif getattr(posterior.method, "records_elbo", True):
        diag.notes.append("stats lack 'elbo'; ELBO convergence check skipped")
    if "log_joint" in stats and "log_q" in stats:
        log_w = (as_numpy(stats["log_joint"], np.float64)
                 - as_numpy(stats["log_q"], np.float64)).reshape(-1)
        if not np.isfinite(log_w).all():
            diag._add("PSIS k-hat", math.nan, "<=", KHAT_MAX,
                      "non-finite importance weights: the guide puts mass where the model "
                      "has none")
            return
        khat = psis_khat(log_w)
        diag.details["khat"] = khat
        diag._add("PSIS k-hat", khat, "<=", KHAT_MAX,
                  f"Pareto k-hat {khat:.2f} > {KHAT_MAX}: the variational approximation is "
                  "far from the posterior (Yao et al. 2018); its uncertainty is untrustworthy")
        if KHAT_GOOD < khat <= KHAT_MAX:
            diag.warnings.append(f"Pareto k-hat {khat:.2f} is between {KHAT_GOOD} and "
                                 f"{KHAT_MAX}: the approximation is only roughly right")
        if log_w.size < 100:
            diag.notes.append(f"k-hat from only {log_w.size} draws is a rough estimate")
    else:
        diag.notes.append("stats lack 'log_joint'/'log_q'; PSIS k-hat check skipped")


# ---------------------------------------------------------------------------------- linearization
# Largest problems the linearization takes on: min(N, P) for its eigendecomposition and N * P
# for the Jacobian held in memory (2**25 float64 values: 256 MiB).
LINEARIZE_MAX_RANK = 4096
LINEARIZE_MAX_JACOBIAN = 2**25
# Rows of x per reverse-mode Jacobian call: the cost of one call grows with rows squared, its
# overhead per call; 64 was fastest on UCI yacht (277 points: 0.02 s, against 0.24 s with 256).
_JACOBIAN_ROWS = 64


def gaussian_prior_scales(model: BayesianResNet) -> dict[str, Tensor]:
    """The latent sites with a zero-mean Normal prior and their prior standard deviations.

    These are the coordinates a linearization treats as Gaussian: every network site under
    :class:`~bayesresnet.priors.Normal`, the ``*_raw`` sites under
    :class:`~bayesresnet.priors.Hierarchical`. Other sites (the noise, hierarchical scales)
    are held at their values.

    Returns
    -------
    dict site -> tensor of the site's shape
    """
    out = {}
    for name, site in model.latent_sites.items():
        prior = site.prior
        while isinstance(prior, torch.distributions.Independent):
            prior = prior.base_dist
        if isinstance(prior, torch.distributions.Normal) and bool((prior.loc == 0).all()):
            out[name] = prior.scale.detach().to(torch.float64).expand(site.shape)
    return out


def linearization_fits(model: BayesianResNet, num_points: int) -> bool:
    """Whether :func:`linearize` takes on ``num_points`` training points of this model.

    False when the Jacobian (``num_points * out_dim`` rows, one column per Gaussian-prior
    coordinate) would exceed ``LINEARIZE_MAX_JACOBIAN`` values or its smaller side
    ``LINEARIZE_MAX_RANK``, or when the model has no Gaussian-prior site.
    """
    params = sum(scale.numel() for scale in gaussian_prior_scales(model).values())
    rows = num_points * model.out_dim
    return 0 < params and min(num_points, params) <= LINEARIZE_MAX_RANK \
        and rows * params <= LINEARIZE_MAX_JACOBIAN


class LinearizedFit:
    """One output of a network linearized at one parameter point, on the training inputs.

    The network mean is replaced by its first-order expansion in the Gaussian-prior
    coordinates theta (:func:`gaussian_prior_scales`), ``f(theta') = f(theta) + J (theta' -
    theta)``, with their prior N(mu, diag(v)) and Gaussian noise of variance s2: Bayesian linear
    regression, whose posterior precision is ``J^T J / s2 + diag(1 / v)`` (the generalized
    Gauss-Newton curvature). With ``A = J diag(sqrt(v))`` and ``K = A A^T``, its hat matrix is
    ``H(s2) = K (K + s2 I)^-1``: leaving observation i out moves the fit's residual there from
    r_i to ``r_i / (1 - h_i)``, with the leverage ``h_i = H_ii``. One eigendecomposition (of K,
    N x N, or of A^T A, P x P, whichever is smaller) serves every s2.

    Parameters
    ----------
    scaled_jacobian : tensor (N, P)
        ``A = J diag(sqrt(v))``.
    """

    def __init__(self, scaled_jacobian: Tensor) -> None:
        a = scaled_jacobian.to(torch.float64)
        self.num_points, self.num_params = a.shape
        # K = U diag(d) U^T with U (N, r) orthonormal; the other N - r directions have d = 0.
        if self.num_points <= self.num_params:
            eig, basis = torch.linalg.eigh(a @ a.T)
            self.eigenvalues, self._basis = eig.clamp_min(0.0), basis
        else:
            eig, vectors = torch.linalg.eigh(a.T @ a)
            keep = eig > eig.max().clamp_min(0.0) * 1e-12
            self.eigenvalues = eig[keep]
            self._basis = (a @ vectors[:, keep]).div_(self.eigenvalues.sqrt())

    def leverage(self, noise_var: float) -> Tensor:
        """Diagonal of the hat matrix ``H(s2)``, shape (N,), each in [0, 1)."""
        weights = self.eigenvalues / (self.eigenvalues + noise_var)
        return (self._basis ** 2 * weights).sum(-1).clamp(0.0, 1.0)

    def effective_parameters(self, noise_var: float) -> float:
        """``trace H(s2)``: how many parameters the data determine (MacKay's gamma)."""
        return float(self.leverage(noise_var).sum())

    def log_det(self, noise_var: Tensor) -> Tensor:
        """``log det(I + K / s2)`` (= log det of the posterior precision over the prior's) for
        each noise variance s2, shape of ``noise_var``."""
        s2 = torch.as_tensor(noise_var, dtype=torch.float64)
        return torch.log1p(self.eigenvalues / s2.reshape(-1, 1)).sum(-1).reshape(s2.shape)


def linearize(model: BayesianResNet, values: dict[str, Tensor], x: Tensor
              ) -> list[LinearizedFit]:
    """Linearize the network at one parameter point, one :class:`LinearizedFit` per output.

    Parameters
    ----------
    model : BayesianResNet
    values : dict site -> tensor of the site's shape
        One constrained parameter point (no sample dimensions), in the model's units.
    x : tensor (N, in_dim)
        Training inputs, standardized as the model sees them.

    Returns
    -------
    list of LinearizedFit, one per output. Each output is taken on its own: its hat matrix
    ignores what the other outputs say about the shared weights.

    Raises
    ------
    ValueError
        When :func:`linearization_fits` is False for these N points.
    """
    if not linearization_fits(model, x.shape[0]):
        raise ValueError(f"linearize: {x.shape[0]} points are too many for this model's "
                         f"Jacobian (limits LINEARIZE_MAX_RANK={LINEARIZE_MAX_RANK}, "
                         f"LINEARIZE_MAX_JACOBIAN={LINEARIZE_MAX_JACOBIAN})")
    scales = gaussian_prior_scales(model)
    names = list(scales)
    theta = torch.cat([values[name].reshape(-1).to(torch.float64) for name in names])
    sd = torch.cat([scales[name].reshape(-1) for name in names])
    sizes = [scales[name].numel() for name in names]

    def mean(flat: Tensor, xb: Tensor) -> Tensor:
        point = dict(values)
        for name, part in zip(names, torch.split(flat, sizes), strict=True):
            point[name] = part.reshape(scales[name].shape)
        return model.loc_scale(point, xb)[0]  # (B, out_dim)

    # Filled block by block and scaled in place: at N x P near LINEARIZE_MAX_JACOBIAN every
    # copy of the Jacobian costs up to 256 MiB.
    jacobian = torch.empty(x.shape[0], model.out_dim, theta.numel(), dtype=torch.float64)
    with torch.enable_grad():
        for start in range(0, x.shape[0], _JACOBIAN_ROWS):
            rows = x[start:start + _JACOBIAN_ROWS]
            jacobian[start:start + rows.shape[0]] = torch.func.jacrev(mean)(theta, rows).detach()
    jacobian.mul_(sd)
    return [LinearizedFit(jacobian[:, k]) for k in range(jacobian.shape[1])]


# ---------------------------------------------------------------------------------- LOO-PIT
def ensemble_loo_pit(posterior: Posterior) -> np.ndarray:
    """Leave-one-out PIT values of the training data under an ensemble's predictive.

    The ensemble predicts with the equal-weight mixture of its members' Gaussians
    N(f_m(x), s_m^2). Leaving observation i out of member m's training moves its mean at x_i;
    in the network linearized at the member (:func:`linearize`; exact for a linear model with
    Gaussian prior at its posterior mean), its residual there becomes ``e_im / (1 - h_im)``,
    with ``e_im = y_i - f_m(x_i)`` and the leverage ``h_im`` of point i at the noise the member
    was trained with (``stats['map_noise']`` where the ensemble drew its noise afterwards, else
    the draws' noise). This assumes trained members (modes of their objective, anchored or
    not). The LOO-PIT value of ``y_i``
    is the mixture's CDF there with every member so refitted:
    ``mean_m Phi(e_im / ((1 - h_im) s_m))``. For a calibrated ensemble these values are close
    to uniform on [0, 1]; an overconfident one (noise too small, members too alike) piles them
    up near 0 and 1.

    Importance weighting of the members instead (PSIS-LOO, weights ``1 / p(y_i | theta_m)``)
    cannot show this: every member was fitted to ``y_i``, and reweighting them does not undo
    that, so the in-sample residuals look calibrated exactly when the noise was fitted to them
    (``benchmarks/results/small_data.md``).

    Parameters
    ----------
    posterior : Posterior
        An ensemble (or MAP fits) with a Gaussian likelihood whose noise is learned or fixed
        (not heteroscedastic), and ``linearization_fits(posterior.model, N)``.

    Returns
    -------
    ndarray (N, out_dim)
    """
    model = posterior.model
    if model.likelihood.heteroscedastic:
        raise ValueError("ensemble_loo_pit needs a homoscedastic likelihood")
    x = posterior.x_scaler.transform(torch.as_tensor(posterior.x_train, dtype=torch.float64))
    y = posterior.y_scaler.transform(torch.as_tensor(posterior.y_train, dtype=torch.float64))
    draws = posterior.flat_draws()
    members = next(iter(draws.values())).shape[0]
    trained_noise = posterior.stats.get("map_noise")
    if trained_noise is not None:
        trained_noise = as_numpy(trained_noise, np.float64).reshape(members, -1)
    pit = torch.zeros(y.shape, dtype=torch.float64)
    for m in range(members):
        values = {name: value[m] for name, value in draws.items()}
        fits = linearize(model, values, x)
        with torch.no_grad():
            loc, scale = model.loc_scale(values, x)
        for k, fit in enumerate(fits):
            noise = scale[:, k]
            trained = float(noise[0]) if trained_noise is None else float(trained_noise[m, k])
            keep = (1.0 - fit.leverage(trained ** 2)).clamp_min(1e-12)
            pit[:, k] += torch.special.ndtr((y[:, k] - loc[:, k]) / (keep * noise))
    return (pit / members).numpy()


def _add_loo_pit_check(posterior: Posterior, diag: Diagnostics) -> None:
    """The LOO-PIT tail check of an ensemble (see the module docstring)."""
    model = posterior.model
    n = posterior.x_train.shape[0]
    if model.likelihood.heteroscedastic:
        diag.notes.append("heteroscedastic likelihood: the LOO-PIT calibration check is skipped")
        return
    if getattr(posterior.method, "predictive_loc_scale", None) is not None:
        diag.notes.append("the method defines its own predictive: the LOO-PIT calibration "
                          "check, which refits the members' network means, is skipped")
        return
    if not linearization_fits(model, n):
        diag.notes.append(f"the LOO-PIT calibration check is skipped: the Jacobian of {n} "
                          "points is too large (see diagnostics.LINEARIZE_MAX_JACOBIAN)")
        return
    from scipy.stats import binom

    pit = ensemble_loo_pit(posterior)
    lower, upper = LOO_PIT_TAIL / 2, 1 - LOO_PIT_TAIL / 2
    outside = int(((pit < lower) | (pit > upper)).sum())
    total = pit.size
    # A calibrated ensemble puts each value outside with probability LOO_PIT_TAIL: the count is
    # about Binomial(total, LOO_PIT_TAIL), above `limit` with probability at most LOO_PIT_ALPHA.
    limit = int(binom.ppf(1 - LOO_PIT_ALPHA, total, LOO_PIT_TAIL))
    diag.details["loo_pit"] = pit
    diag.details["loo_pit_outside"] = outside
    diag.add_check(
        "LOO-PIT outside central 95%", outside / total, "<=", limit / total,
        f"{outside} of {total} training points ({outside / total:.0%}) fall outside the "
        f"central 95% of their leave-one-out predictive, where a calibrated ensemble puts at "
        f"most {limit} ({limit / total:.0%}; binomial, {LOO_PIT_ALPHA:.0%} false alarms): the "
        "ensemble is likely overconfident (its noise or its spread too small); with a learned "
        "noise, Ensemble(noise='predictive'), the default, corrects the members' MAP noise")
    if total < 100:
        diag.notes.append(f"the LOO-PIT check (members linearized at their modes) rests on "
                          f"{total} values: it catches clear overconfidence only")


def _diagnose_ensemble(posterior: Posterior, diag: Diagnostics, single: bool) -> None:
    if "loss" in posterior.stats:
        loss = as_numpy(posterior.stats["loss"], np.float64)
        _add_trend(diag, loss.reshape(loss.shape[0], -1), "loss")
    else:
        diag.notes.append("stats lack 'loss'; optimization convergence check skipped")
    if single:
        diag.notes.append("MAP is one point: no model (epistemic) uncertainty is quantified; "
                          "predictive intervals contain the observation noise only")
        return
    members = diag.shape[0] * diag.shape[1]
    if members < 2:
        diag.notes.append("an ensemble of one member quantifies no model uncertainty")
        return
    loc, scale, _ = posterior.evaluate(posterior.x_train)
    f = loc.reshape(members, *loc.shape[2:]).numpy()
    spread = float(f.std(axis=0, ddof=1).mean())
    noise = float(scale.mean())
    ratio = spread / noise if noise > 0 else math.inf
    diag.details["member_spread"], diag.details["noise_scale"] = spread, noise
    diag._add("member spread / noise", ratio, ">=", COLLAPSE_MIN,
              f"the {members} members collapsed to one point (prediction spread {spread:.3g} "
              f"vs noise {noise:.3g}): the ensemble quantifies no model uncertainty; use "
              "distinct initializations or anchored=True")
    _add_loo_pit_check(posterior, diag)


def diagnose(posterior: Posterior) -> Diagnostics:
    """Check whether an inference run converged, with the checks fitting its method.

    See the module docstring for the checks and their thresholds.

    Parameters
    ----------
    posterior : Posterior

    Returns
    -------
    Diagnostics
        ``ok``, ``table`` (check, value, rule, threshold, passed), ``warnings``, ``notes``.
    """
    check_posterior(posterior)
    name = posterior.method.name
    kind = getattr(posterior.method, "kind", None)
    diag = Diagnostics(name, (posterior.num_chains, posterior.num_draws))
    if kind == "mcmc":
        _diagnose_mcmc(posterior, diag)
    elif kind == "variational":
        _diagnose_vi(posterior, diag)
    elif kind in ("ensemble", "optimization"):
        _diagnose_ensemble(posterior, diag, single=kind == "optimization")
    else:
        diag.notes.append(f"no convergence checks are defined for method {name!r}")
    # Checks only one method can make (e.g. a Laplace fit's curvature) come from the method.
    own_checks = getattr(posterior.method, "add_checks", None)
    if own_checks is not None:
        own_checks(posterior, diag)
    return diag


def warn_if_failed(diagnostics: Diagnostics, stacklevel: int = 2) -> bool:
    """Issue a :class:`ConvergenceWarning` when any check failed.

    Parameters
    ----------
    diagnostics : Diagnostics
    stacklevel : int
        Passed to ``warnings.warn``: 2 points at the caller of this function, 3 at its caller
        (e.g. the user's call of ``fit``).

    Returns
    -------
    bool
        Whether a warning was issued.
    """
    if not isinstance(diagnostics, Diagnostics):
        raise ValueError(f"expected Diagnostics, got {type(diagnostics).__name__}")
    if diagnostics.ok:
        return False
    problems = "; ".join(diagnostics.warnings) or ", ".join(diagnostics.failed)
    warnings.warn(f"{diagnostics.method} failed {len(diagnostics.failed)} convergence "
                  f"check(s): {problems}. See Posterior.diagnose() for the table.",
                  ConvergenceWarning, stacklevel=stacklevel)
    return True
