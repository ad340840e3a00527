"""Chain-wise diagnostics: chains started at distinct modes are judged chain by chain.

The posteriors here are built from draws set directly (no sampler runs): two chains of exact
iid draws placed at two separated modes of a bimodal target are what a perfect local sampler
started at two MAP fits returns. They must pass chain-wise and show a large pooled R-hat; a
stuck chain or a random walk must fail.
"""

import math

import numpy as np
import pytest
import torch

import bayesresnet as brn
from bayesresnet.arviz_compat import (
    draws_dataset,
    ess,
    ess_by_chain,
    import_arviz,
    rhat,
    rhat_by_chain,
)
from bayesresnet.data import Standardizer, cubic
from bayesresnet.diagnostics import CHAIN_RHAT_MAX, ESS_PER_CHAIN, RHAT_MAX, diagnose
from bayesresnet.inference.nuts import NUTS
from bayesresnet.posterior import Posterior
from bayesresnet.pyro_interop import PyroMCMC
from bayesresnet.report import convergence_text, summary_rows

pytestmark = pytest.mark.arviz

# Draws per chain. The chain-wise R-hat of one chain of n independent draws has a standard
# deviation of about 1.6 / n (its four quarters against each other); with n = 1000 the max over
# 2 chains and 21 quantities stayed below 1.013 in 40 simulated replicates, far below
# CHAIN_RHAT_MAX = 1.05, and the ESS of each chain is about 1000, far above 100.
DRAWS = 1000


@pytest.fixture(scope="module")
def data():
    return cubic(20, seed=0)


@pytest.fixture(scope="module")
def model():
    return brn.BayesianResNet(brn.ResNet(1, 1, width=2, depth=2, basis=brn.Constant()))


def two_mode_draws(model, draws=DRAWS, seed=0):
    """Chain 0 iid around one mode, chain 1 iid around another, 2 prior SDs away in every
    network coordinate (so the network means f differ by far more than their spread)."""
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for site, shape in model.latent_shapes.items():
        value = 0.1 * torch.randn((2, draws, *shape), generator=gen, dtype=torch.float64)
        if site == "noise":
            value = value.abs() * 0.1 + torch.tensor([0.5, 0.8]).reshape(2, 1, 1)
        else:
            value[1] += 2.0
        values[site] = value
    return values


def healthy_stats(chains, draws, seed=0):
    rng = np.random.default_rng(seed)
    size = (chains, draws)
    return {"diverging": np.zeros(size, bool), "reached_max_tree_depth": np.zeros(size, bool),
            "energy": rng.normal(size=size)}


def make_posterior(model, data, values, method, stats=None):
    x, y = data
    chains, draws = next(iter(values.values())).shape[:2]
    stats = healthy_stats(chains, draws) if stats is None else stats
    return Posterior(model=model, draws=values, stats=stats, method=method,
                     x_scaler=Standardizer().fit(x), y_scaler=Standardizer().fit(y), seed=0,
                     fit_seconds=1.0, x_train=x, y_train=y)


# ---------------------------------------------------------------------------------- the hook
def test_which_runs_start_their_chains_apart():
    assert NUTS(init="map").chains_start_apart()
    assert NUTS(init="prior-map").chains_start_apart()
    assert not NUTS(init="prior").chains_start_apart()
    assert not NUTS(init="network").chains_start_apart()
    assert not brn.MeanField().chains_start_apart()  # the base class's default
    assert not PyroMCMC().chains_start_apart()  # a user's run: nothing known, pooled checks


# ---------------------------------------------------------------------------------- ArviZ
def test_per_chain_rhat_and_ess_are_arviz_values_of_each_chain():
    """rhat_by_chain: ArviZ's R-hat of the chain's two halves as two chains; ess_by_chain:
    ArviZ's ESS of the chain as a run of one chain (an odd last draw is left out of R-hat)."""
    az = import_arviz()
    rng = np.random.default_rng(0)
    f = rng.normal(size=(3, 101, 4))
    f[1] += 5.0
    f[2] = np.cumsum(f[2], axis=0)
    dataset = draws_dataset({"f": f, "noise": rng.normal(size=(3, 101))})
    by_chain = rhat_by_chain(dataset)
    bulk, tail = ess_by_chain(dataset, "bulk"), ess_by_chain(dataset, "tail")
    assert by_chain["f"].dims == ("chain", "f_dim_0")
    for c in range(3):
        halves = draws_dataset({"f": f[c, :100].reshape(2, 50, 4)})
        np.testing.assert_allclose(by_chain["f"].values[c],
                                   az.rhat(halves, method="rank")["f"].values)
        one = draws_dataset({"f": f[c:c + 1]})
        np.testing.assert_allclose(bulk["f"].values[c], az.ess(one, method="bulk")["f"].values)
        np.testing.assert_allclose(tail["f"].values[c], az.ess(one, method="tail")["f"].values)
    # the chains at different levels do not raise the chain-wise R-hat, only the pooled one
    assert float(by_chain["f"][:2].max()) < 1.1 < float(rhat(dataset)["f"].max())
    assert float(by_chain["f"][2].max()) > 1.5  # the random walk
    assert float(ess(dataset)["f"].min()) < float(bulk["f"][:2].min())


# ---------------------------------------------------------------------------------- the rule
def test_two_chains_at_two_modes_pass_chainwise_and_report_mode_diversity(model, data):
    post = make_posterior(model, data, two_mode_draws(model), NUTS(init="map"))
    diag = diagnose(post)
    assert diag.rule == "chain-wise"
    assert diag.ok, str(diag)
    table = diag.table.set_index("check")
    assert list(diag.table["check"][:4]) == ["max chain-wise R-hat", "max R-hat",
                                             "min bulk ESS per chain", "min tail ESS per chain"]
    # the pooled R-hat is large (the chains sit at different modes) but cannot fail
    pooled = table.loc["max R-hat"]
    assert pooled["rule"] == "info" and bool(pooled["passed"]) and math.isnan(pooled["threshold"])
    # (rank-normalized R-hat is bounded: fully separated chains give about 1.8)
    assert pooled["value"] > 1.5
    assert pooled["value"] == diag.details["pooled_rhat"]
    chainwise = table.loc["max chain-wise R-hat"]
    assert (chainwise["rule"], chainwise["threshold"]) == ("<", CHAIN_RHAT_MAX)
    assert chainwise["value"] < 1.02 and chainwise["value"] == diag.details["chainwise_rhat"]
    assert table.loc["min bulk ESS per chain", "threshold"] == ESS_PER_CHAIN
    assert table.loc["min bulk ESS per chain", "value"] > 5 * ESS_PER_CHAIN
    assert diag.details["rhat_by_chain"]["f"].sizes["chain"] == 2
    assert diag.num_checks == len(diag.table) - 1 and diag.warnings == []
    assert any("mode" in note and "not checked" in note for note in diag.notes)
    text = str(diag)
    assert "all checks passed" in text and "chain-wise rule" in text
    assert "reported, not checked" in text

    # The same draws recorded as chains started from one distribution: they disagree, so the
    # pooled rule fails them, and the chain-wise R-hat is the figure that cannot fail.
    pooled_run = diagnose(make_posterior(model, data, two_mode_draws(model), NUTS(init="prior")))
    assert pooled_run.rule == "pooled"
    # (pooled over two modes, the ESS counts the switches between them: a handful)
    assert pooled_run.failed == ["max R-hat", "min bulk ESS", "min tail ESS"]
    rows = pooled_run.table.set_index("check")
    assert rows.loc["max R-hat", "threshold"] == RHAT_MAX
    assert rows.loc["max chain-wise R-hat", "rule"] == "info"
    assert rows.loc["min bulk ESS", "threshold"] == 2 * ESS_PER_CHAIN
    assert pooled_run.details["pooled_rhat"] == diag.details["pooled_rhat"]
    assert pooled_run.details["chainwise_rhat"] == diag.details["chainwise_rhat"]
    assert "3 of 6 checks FAILED" in str(pooled_run)


def test_a_stuck_chain_fails(model, data):
    values = two_mode_draws(model)
    for value in values.values():
        value[1] = value[1, :1]  # chain 1 never moves
    diag = diagnose(make_posterior(model, data, values, NUTS(init="map")))
    assert not diag.ok and "max chain-wise R-hat" in diag.failed
    assert math.isnan(diag.details["chainwise_rhat"])
    assert any("chain 1" in w and "not computable" in w for w in diag.warnings)


def test_a_chain_that_random_walks_fails(model, data):
    """Chain 1 moves by steps of 0.01 prior SDs: it explores its mode far too slowly."""
    values = two_mode_draws(model)
    gen = torch.Generator().manual_seed(1)
    for site, value in values.items():
        steps = 0.01 * torch.randn(value[1].shape, generator=gen, dtype=torch.float64)
        value[1] = value[1, :1] + torch.cumsum(steps, 0)
        if site == "noise":
            value[1] = value[1].abs()
    diag = diagnose(make_posterior(model, data, values, NUTS(init="map")))
    assert {"max chain-wise R-hat", "min bulk ESS per chain"} <= set(diag.failed)
    assert diag.details["chainwise_rhat"] > CHAIN_RHAT_MAX
    assert any("R-hat" in w and "chain 1" in w for w in diag.warnings)
    assert any("bulk ESS" in w and "chain 1" in w for w in diag.warnings)


def test_one_chain_has_no_pooled_figure_but_is_judged(model, data):
    values = {k: v[:1] for k, v in two_mode_draws(model).items()}
    diag = diagnose(make_posterior(model, data, values, NUTS(init="map", chains=1)))
    assert diag.rule == "chain-wise" and diag.ok, str(diag)
    assert math.isnan(diag.details["pooled_rhat"])
    assert any("one chain" in note for note in diag.notes)


# ---------------------------------------------------------------------------------- stats
class _TreelessSampler(NUTS):
    """Stands in for a sampler that builds no trees (as MCLMC): it declares its statistics."""

    sampler_stats = frozenset({"energy_change", "step_size"})


def test_statistics_a_method_never_records_are_skipped_quietly(model, data):
    values = two_mode_draws(model)
    stats = {"energy_change": np.zeros((2, DRAWS)), "step_size": np.ones((2, DRAWS))}
    diag = diagnose(make_posterior(model, data, values, _TreelessSampler(), stats))
    assert diag.ok and diag.rule == "chain-wise"
    assert set(diag.table["check"]) == {"max chain-wise R-hat", "max R-hat",
                                        "min bulk ESS per chain", "min tail ESS per chain"}
    assert not any("lack" in note or "skipped" in note for note in diag.notes), diag.notes
    # NUTS records them: missing ones are noted
    notes = diagnose(make_posterior(model, data, values, NUTS(), stats)).notes
    assert sum("lack" in note for note in notes) == 3, notes
    # A run made elsewhere declares nothing: judged by what it recorded. Statistics of another
    # kind of sampler only: not noted; some of a tree sampler's: the others noted; none: once.
    undeclared = [(stats, 0), ({"diverging": np.zeros((2, DRAWS), bool)}, 2)]
    for recorded, lacking in undeclared:
        notes = diagnose(make_posterior(model, data, values, PyroMCMC(), recorded)).notes
        assert sum("lack" in note for note in notes) == lacking, notes
    notes = diagnose(make_posterior(model, data, values, PyroMCMC(), {})).notes
    assert sum("no per-draw statistics" in note for note in notes) == 1, notes


# ---------------------------------------------------------------------------------- outputs
def test_summary_rows_and_report_show_the_rule_and_both_figures(model, data, tmp_path):
    x, y = data
    runs = {"apart": make_posterior(model, data, two_mode_draws(model), NUTS(init="map")),
            "together": make_posterior(model, data, two_mode_draws(model), NUTS(init="prior"))}
    rows = summary_rows(runs, x, y)
    apart, together = rows
    assert (apart["rhat_rule"], together["rhat_rule"]) == ("chain-wise", "pooled")
    for row in rows:
        assert row["convergence"] == "R-hat"
        assert row["rhat_pooled"] > 1.5 and row["rhat_chainwise"] < 1.02
    assert apart["convergence_value"] == apart["rhat_chainwise"] and apart["diagnostics_ok"]
    assert together["convergence_value"] == together["rhat_pooled"]
    assert not together["diagnostics_ok"]
    text = convergence_text(apart)
    assert "chain-wise" in text and f"pooled {apart['rhat_pooled']:.4g}" in text
    assert "pooled" in convergence_text(together) and "chain-wise" in convergence_text(together)
    page = brn.report(runs["apart"], tmp_path / "apart").read_text()
    assert "chain-wise</b> rule" in page and "not checked" in page
    assert "max chain-wise R-hat" in page and "max R-hat" in page
