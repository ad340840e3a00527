"""Calibration on the cubic toy: NUTS, deep ensembles, Laplace and SWAG on fresh data, out-of-range
uncertainty, NUTS mixing.

The data set is ``data.cubic(20, seed=2)``: its realized noise (standard deviation of
y - x**3 over the 20 points, 2.96) is representative of the generating noise (3). Seed 0's is 2.09,
and on such a sample even the exact noise level gives a 95% interval that covers only about 83%
of fresh points, so a coverage target would test the sample rather than the method.

Each method must (1) cover at least 90% of 1000 fresh points with its central 95% predictive
interval, (2) do so with intervals narrower on average than 4 times the exact-noise interval
(2 x 1.96 x 3 = 11.8, so 47), so that coverage cannot come from explaining the data as noise, and
(3) widen its epistemic uncertainty out of the data's range: mean epistemic std at |x| = 6 at
least 3 times its mean over [-4, 4]. Mean-field and low-rank VI fail (2) and (3) on this toy:
their ELBO optimum explains most of y as noise (fitted noise about 14 against 3; interval widths
68-81 over fit seeds 0-2, ratio 1.8-1.9), so they are not tested here; ``test_vi.py`` checks both
families through ``fit`` against their closed-form optimum on a conjugate linear regression.

Networks (linear basis, N(0, 1) priors, learned noise). The optimization-based methods use width 6,
depth 4. NUTS on that network needs 4 x 500 draws at tree depth 8 (several minutes on 2 cores),
so the ``statistical`` tier that CI runs samples a width-4, depth-2 network, with
``target_accept=0.95``: at the default 0.8 (4 x 300 draws) the divergent fraction was 0.25%, 2.8%
and 0.33% for fit seeds 0, 1 and 2, against the bound of 1%. The larger network's NUTS run is
marked ``slow``; with the sampler of December 2026 it had 2.25% divergent transitions at fit
seed 2 (0.5% when the test was written), so its mixing test fails.

Numbers measured with these settings, fit seeds 0 / 1 / 2: coverage, mean 95% width, ratio.
Ensemble 0.998 / 0.998 / 0.995, 34.2 / 33.2 / 22.2, 7.8 / 7.9 / 5.4; Laplace 0.992 / 0.993 /
0.995, 21.7 / 20.4 / 22.7, 15.4 / 12.8 / 18.0; SWAG 0.997 / 0.988 / 0.966, 33.8 / 32.9 / 16.2,
6.1 / 6.5 / 3.5; NUTS (small network) 0.993 / 0.995 / 0.993, 21.3 / 22.2 / 21.5, 5.4 / 5.5 / 5.3,
with max split R-hat of f at 10 inputs 1.004 / 1.024 / 1.002 (smallest bulk ESS 793 / 204 / 725)
and 0.05% / 0% / 0.30% divergent. The fit seed is 2 for every method; the margins hold on the
other two seeds.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest

import bayesresnet as brn

DATA_SEED = 2
FIT_SEED = 2
FRESH_POINTS = 1000
TARGET_COVERAGE = 0.90
MAX_WIDTH = 4 * 2 * 1.96 * 3.0
TARGET_RATIO = 3.0


def _model(width: int = 6, depth: int = 4) -> brn.BayesianResNet:
    net = brn.ResNet(in_dim=1, out_dim=1, width=width, depth=depth, basis=brn.Linear())
    return brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                              likelihood=brn.likelihoods.Gaussian())


def _fit(method: brn.inference.InferenceMethod, **network: int) -> brn.Posterior:
    x, y = brn.data.cubic(20, seed=DATA_SEED)
    return brn.fit(_model(**network), x, y, method=method, seed=FIT_SEED, progress=False,
                   check=False)


def _check_calibrated(post: brn.Posterior) -> None:
    """Coverage of fresh points, interval width and out-of-range widening (module docstring)."""
    x_new, y_new = brn.data.cubic(FRESH_POINTS, seed=1000 + DATA_SEED)
    lower, upper = post.predict(x_new).interval(0.95)
    coverage = float(np.mean((y_new >= lower[:, 0]) & (y_new <= upper[:, 0])))
    width = float(np.mean(upper[:, 0] - lower[:, 0]))
    inside = post.predict(np.linspace(-4.0, 4.0, 101)[:, None]).epistemic_std.mean()
    outside = post.predict(np.array([[-6.0], [6.0]])).epistemic_std.mean()
    ratio = float(outside / inside)
    assert coverage >= TARGET_COVERAGE, (coverage, width, ratio)
    assert width <= MAX_WIDTH, (coverage, width, ratio)
    assert ratio >= TARGET_RATIO, (coverage, width, ratio)


NUTS_RUNS = {
    "small": ({"width": 4, "depth": 2},
              {"num_samples": 500, "num_warmup": 300, "chains": 4, "max_tree_depth": 8,
               "target_accept": 0.95}),
    "large": ({"width": 6, "depth": 4},
              {"num_samples": 500, "num_warmup": 500, "chains": 4, "max_tree_depth": 8}),
}


@pytest.fixture(scope="module", params=[pytest.param("small", marks=pytest.mark.statistical),
                                        pytest.param("large", marks=pytest.mark.slow)])
def nuts_posterior(request) -> brn.Posterior:
    network, settings = NUTS_RUNS[request.param]
    return _fit(brn.NUTS(**settings), **network)


def test_nuts_is_calibrated(nuts_posterior):
    _check_calibrated(nuts_posterior)


def test_nuts_mixes_on_function_values(nuts_posterior):
    # For chains that mix, split R-hat^2 is about 1 + M / ESS (M = 8 half-chains): the bound 1.05
    # fails only where a function value's bulk ESS falls below about 80 of the 2000 draws.
    chains, draws = nuts_posterior.stats["diverging"].shape
    f = nuts_posterior.predict(np.linspace(-4.0, 4.0, 10)[:, None]).f_samples[..., 0]
    f = np.asarray(f).reshape(chains, draws, -1)
    rhat = [float(az.rhat(az.convert_to_dataset({"f": f[:, :, i]}))["f"])
            for i in range(f.shape[-1])]
    assert max(rhat) < 1.05, rhat
    assert np.mean(nuts_posterior.stats["diverging"]) <= 0.01


@pytest.mark.statistical
@pytest.mark.parametrize("method", [
    pytest.param(lambda: brn.Ensemble(members=8, steps=3000), id="ensemble"),
    pytest.param(lambda: "laplace", id="laplace"),
    pytest.param(lambda: "swag", id="swag"),
])
def test_optimization_based_methods_are_calibrated(method):
    _check_calibrated(_fit(method()))
