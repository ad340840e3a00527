"""Chain stacking: weights for chains that sit in different modes (Yao, Vehtari & Gelman 2022).

Chains begun at distinct modes (NUTS ``init='map'``, MCLMC) rarely move between modes, so the
equal weight each chain gets in the pooled draws is an accident of where they started, not the
posterior mass of their modes. Stacking weighs the chains instead by how well each predicts
held-out data, estimated without refitting by leave-one-out cross-validation within each chain:

1. :func:`chain_elpd`: for each chain k and training point i, the PSIS-LOO estimate of
   ``elpd_ik = log p(y_i | y_-i, chain k)`` from that chain's draws alone (Pareto-smoothed
   importance weights ``1 / p(y_i | theta)``, Vehtari, Gelman & Gabry 2017).
2. :func:`stacking_weights`: the weights on the simplex that maximize the leave-one-out log
   score of the mixture, ``sum_i log sum_k w_k exp(elpd_ik)``.
3. :func:`apportion_draws`: which draws a prediction uses so that chain k contributes the
   fraction ``w_k`` of them (``Posterior.predict(x, weights="stacking")``).

The objective of step 2 is concave in w (a sum of logs of linear functions), so its maximum on
the simplex is global. It is maximized over unconstrained logits, ``w = softmax(a)`` with the
last logit fixed at 0, by L-BFGS with the exact gradient: the softmax maps the logits one to
one onto the open simplex, so a stationary point there is the constrained maximum; a chain
whose weight belongs at 0 gets a logit that falls until its weight no longer changes the
objective (below about 1e-8).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arviz_compat import draws_dataset, ess_by_chain, psislw

__all__ = ["apportion_draws", "chain_elpd", "stacking_objective", "stacking_weights"]


def _as_array(values: Any, name: str, ndim: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return array


def chain_elpd(log_likelihood: Any) -> tuple[np.ndarray, np.ndarray]:
    """PSIS-LOO pointwise expected log predictive density of each chain on its own.

    Parameters
    ----------
    log_likelihood : array (chain, draw, N)
        ``log p(y_i | theta)`` of each training observation under each draw (e.g.
        :func:`bayesresnet.convert.pointwise_log_likelihood`).

    Returns
    -------
    elpd : ndarray (chain, N)
        ``log sum_s w_s p(y_i | theta_s)`` over the draws of the chain, with the
        Pareto-smoothed, self-normalized importance weights ``w_s`` of ``1 / p(y_i | theta_s)``
        (:func:`bayesresnet.arviz_compat.psislw`). The relative efficiency that sets the length
        of the smoothed tail is each chain's ESS of ``p(y_i | theta)`` over its draws (1 where
        the likelihood does not vary).
    khat : ndarray (chain, N)
        Pareto k-hat of each importance ratio: above 0.7 that chain's leave-one-out estimate at
        that point is unreliable (Vehtari et al. 2024); ``inf`` where a chain has too few
        draws to fit the tail.
    """
    log_lik = _as_array(log_likelihood, "log_likelihood", 3)
    chains, draws, points = log_lik.shape
    if draws < 2:
        raise ValueError(f"log_likelihood needs at least 2 draws per chain, got {draws}")
    # Relative efficiency of each chain at each point: ESS of the likelihood (scaled by its
    # largest value, which ESS ignores) over the number of draws, as the loo package uses.
    scaled = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
    reff = ess_by_chain(draws_dataset({"lik": scaled}), "mean")["lik"].values / draws
    reff = np.where(np.isfinite(reff) & (reff > 0), reff, 1.0)
    elpd = np.empty((chains, points))
    khat = np.empty((chains, points))
    for k in range(chains):
        for i in range(points):
            values = log_lik[k, :, i]
            smoothed, khat[k, i] = psislw(-values, reff=float(reff[k, i]))
            elpd[k, i] = _logsumexp(smoothed + values)
    return elpd, khat


def _logsumexp(values: np.ndarray) -> float:
    top = float(values.max())
    return top + math.log(float(np.exp(values - top).sum()))


def _check_elpd(pointwise_elpd: Any) -> np.ndarray:
    return _as_array(pointwise_elpd, "pointwise_elpd", 2)


def stacking_objective(weights: Any, pointwise_elpd: Any) -> float:
    """The leave-one-out log score of a weighted mixture of chains.

    Parameters
    ----------
    weights : array (chain,)
        Non-negative weights (not checked to sum to 1).
    pointwise_elpd : array (chain, N)
        As returned by :func:`chain_elpd`.

    Returns
    -------
    float
        ``sum_i log sum_k w_k exp(elpd_ik)``, computed without overflow.
    """
    elpd = _check_elpd(pointwise_elpd)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (elpd.shape[0],):
        raise ValueError(f"weights must have shape ({elpd.shape[0]},), got {w.shape}")
    top = elpd.max(axis=0)
    with np.errstate(divide="ignore"):
        return float(np.sum(top + np.log(w @ np.exp(elpd - top))))


def stacking_weights(pointwise_elpd: Any, *, gtol: float = 1e-10,
                     max_iter: int = 10_000) -> np.ndarray:
    """Stacking weights of chains: the mixture that predicts left-out points best.

    Maximizes ``sum_i log sum_k w_k exp(elpd_ik)`` over the simplex (``w_k >= 0``,
    ``sum_k w_k = 1``; Yao, Vehtari & Gelman 2022, eq. 3), by L-BFGS over softmax logits (see
    the module docstring).

    Parameters
    ----------
    pointwise_elpd : array (chain, N)
        Leave-one-out log predictive density of each point under each chain, as returned by
        :func:`chain_elpd`.
    gtol : float
        Convergence tolerance on the gradient of the mean log score with respect to the
        logits.
    max_iter : int
        Most L-BFGS iterations.

    Returns
    -------
    ndarray (chain,)
        Non-negative weights that sum to 1. Chains that predict identically share their weight
        equally (the start, equal weights, is then already optimal). One chain gets weight 1.

    Raises
    ------
    ValueError
        For an input that is not a finite (chain, N) array.
    """
    from scipy.optimize import minimize
    from scipy.special import softmax

    elpd = _check_elpd(pointwise_elpd)
    chains, points = elpd.shape
    if chains == 1:
        return np.ones(1)
    # p_ik = exp(elpd_ik - max_k elpd_ik): the largest of each column is 1, so no overflow and
    # w @ p >= min_k w_k > 0 for weights from a softmax.
    p = np.exp(elpd - elpd.max(axis=0))

    def negative_score(free: np.ndarray) -> tuple[float, np.ndarray]:
        w = softmax(np.append(free, 0.0))
        mix = w @ p  # (N,)
        # d/dw_k of the mean log score is mean_i p_ik / mix_i; through the softmax,
        # d/da_k = w_k (g_k - sum_j w_j g_j), and sum_j w_j g_j = 1.
        g = p @ (1.0 / mix) / points
        grad = w * (g - 1.0)
        return -float(np.log(mix).mean()), -grad[:-1]

    result = minimize(negative_score, np.zeros(chains - 1), jac=True, method="L-BFGS-B",
                      options={"gtol": gtol, "ftol": 0.0, "maxiter": max_iter})
    weights = softmax(np.append(result.x, 0.0))
    return weights / weights.sum()


def apportion_draws(weights: Any, draws: int, total: int, seed: int) -> np.ndarray:
    """Which draws a weighted prediction uses: chain k contributes ``round(w_k * total)``.

    The counts are the largest-remainder rounding of ``w_k * total``, so they sum to ``total``
    and each differs from ``w_k * total`` by less than 1. A chain whose count n is at most its
    number of draws contributes a random subset of n of them (without replacement); a larger
    count repeats every draw ``n // draws`` times plus a random subset of ``n % draws``.

    Parameters
    ----------
    weights : array (chain,)
        Non-negative weights that sum to 1.
    draws : int
        Draws per chain.
    total : int
        Draws to select, at least 1.
    seed : int
        Seeds the subsets (NumPy's ``default_rng``).

    Returns
    -------
    ndarray (total,) of int
        Flat indices ``chain * draws + draw``, ascending (chain by chain). Equal weights and
        ``total = chain * draws`` select every draw once, in order.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any() or \
            not math.isclose(float(w.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"weights must be non-negative, finite and sum to 1, got {w}")
    if draws < 1 or total < 1:
        raise ValueError(f"draws and total must be positive, got {draws} and {total}")
    quotas = w / w.sum() * total
    counts = np.floor(quotas).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:  # the largest fractional parts (ties: the earlier chain) get one more
        order = np.argsort(-(quotas - counts), kind="stable")
        counts[order[:short]] += 1
    rng = np.random.default_rng(seed)
    parts = []
    for chain, count in enumerate(counts):
        repeats, rest = divmod(int(count), draws)
        picked = np.concatenate([np.repeat(np.arange(draws), repeats),
                                 rng.permutation(draws)[:rest]])
        parts.append(chain * draws + np.sort(picked))
    return np.concatenate(parts).astype(np.int64)
