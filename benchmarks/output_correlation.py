#!/usr/bin/env python
"""Does a noise model correlated across outputs matter on the 10-output kinetics problem?

An ensemble with independent Gaussian noise per output is fitted on 90% of
``data.kinetics(2000, seed=0)``. Its standardized residuals (y - mean) / std give the residual
correlation matrix R on the training points. On the held-out 10%, the script compares the NLL
of the model's own predictive (independent outputs) with that of a multivariate Gaussian with the
same per-output variances and correlation R: the gain is what an output-correlated likelihood
could at most add at this fit. Prints the correlations and the gain with its standard error.

Usage::

    python benchmarks/output_correlation.py
"""

from __future__ import annotations

import time
import warnings

import numpy as np

import bayesresnet as brn


def main() -> None:
    warnings.simplefilter("ignore", brn.ConvergenceWarning)
    x, y = brn.data.kinetics(2000, seed=0)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1800], order[1800:]
    net = brn.ResNet(15, 10, width=32, depth=4, basis=brn.Legendre(2))
    start = time.time()
    post = brn.fit(brn.BayesianResNet(net), x[train], y[train],
                   method=brn.Ensemble(members=4, steps=1500), seed=0, progress=False)
    print(f"Ensemble(members=4, steps=1500) fitted in {time.time() - start:.0f} s")

    def residuals(rows: np.ndarray) -> np.ndarray:
        prediction = post.predict(x[rows])
        return (y[rows] - prediction.mean) / prediction.std

    off_diagonal = ~np.eye(y.shape[1], dtype=bool)
    r_train, r_test = residuals(train), residuals(test)
    corr = np.corrcoef(r_train.T)
    for label, matrix in [("training", corr), ("test", np.corrcoef(r_test.T))]:
        values = np.abs(matrix[off_diagonal])
        print(f"{label} residual correlations: median |r| {np.median(values):.2f}, "
              f"max |r| {values.max():.2f}")
    # Per test point, in nats; the per-output scales' log-determinant is common to both models.
    independent = 0.5 * (r_test ** 2).sum(1)
    _, logdet = np.linalg.slogdet(corr)
    correlated = 0.5 * np.einsum("ni,ij,nj->n", r_test, np.linalg.inv(corr), r_test) \
        + 0.5 * logdet
    gain = independent - correlated
    print(f"NLL gain per test point of the correlated model (nats, all 10 outputs): "
          f"{gain.mean():.3f} +- {gain.std(ddof=1) / np.sqrt(len(gain)):.3f}")


if __name__ == "__main__":
    main()
