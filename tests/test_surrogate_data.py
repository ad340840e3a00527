"""The physics-based surrogate problems of bayesresnet.data and the benchmark that uses them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import benchmark_script

from bayesresnet import data

GENERATORS = {
    "kinetics": (data.kinetics, 15, 10, 12),
    "potential": (data.potential, 30, None, 200),
    "adsorption": (data.adsorption, 6, None, 200),
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_shapes_seeds_and_finite_values(name):
    generator, in_dim, out_dim, n = GENERATORS[name]
    x, y = generator(n, seed=3)
    assert x.shape == (n, in_dim) and x.dtype == np.float64
    assert y.shape == ((n,) if out_dim is None else (n, out_dim)) and y.dtype == np.float64
    assert np.isfinite(x).all() and np.isfinite(y).all()
    x2, y2 = generator(n, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, y3 = generator(n, seed=4)
    assert not np.allclose(x, x3) and not np.allclose(y, y3)
    with pytest.raises(ValueError, match="n must be"):
        generator(0)
    with pytest.raises(ValueError, match="noise"):
        generator(2, noise=-1.0)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_noise_is_additive_gaussian_at_the_stated_level(name):
    # With the same seed the inputs are the same and only the noise term differs. The sample
    # standard deviation of m residuals has a relative standard error of about 1/sqrt(2m):
    # 2% for kinetics (120 values) and 5% for the others (200); bounds of 4 standard errors.
    generator, _, _, n = GENERATORS[name]
    noise = 0.03
    x, y = generator(n, seed=1, noise=noise)
    x0, y0 = generator(n, seed=1, noise=0.0)
    assert np.array_equal(x, x0)
    residual = (y - y0).ravel()
    tolerance = 4.0 / math.sqrt(2 * residual.size)
    assert abs(residual.std() / noise - 1) < tolerance
    assert abs(residual.mean()) < 4 * noise / math.sqrt(residual.size)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_named_columns(name):
    pytest.importorskip("pandas")
    generator, in_dim, _, n = GENERATORS[name]
    frame_x, frame_y = generator(n, seed=0, as_frame=True)
    x, y = generator(n, seed=0)
    assert list(frame_x.columns) == list(dict.fromkeys(frame_x.columns))  # unique names
    assert frame_x.shape == (n, in_dim) and np.array_equal(frame_x.to_numpy(), x)
    assert np.array_equal(frame_y.to_numpy(), y)


# ------------------------------------------------------------------ kinetics: the physics

def test_kinetics_conserves_mass_and_matches_the_outputs():
    x, y = data.kinetics(5, seed=0, noise=0.0)
    states = data.kinetics_states(data.KINETICS_RATES * 10.0 ** x)
    assert states.shape == (5, 10, 6)
    # Every reaction turns one molecule into one: the total stays 1 (to the solver's rtol).
    assert np.allclose(states.sum(-1), 1.0, rtol=0, atol=1e-5)
    assert (states > -1e-9).all()
    assert np.allclose(y, np.log10(states[..., 2]), rtol=0, atol=1e-12)
    assert (-0.5 <= x).all() and (x <= 0.5).all()


def test_kinetics_solver_matches_closed_form_first_order_decay():
    # Only A -> B active (every other rate 1e-30): [A](t) = exp(-k t), [B] = 1 - [A]. The
    # solver's rtol is 1e-6; a wrong stoichiometry, sign or Jacobian misses by far more.
    rates = np.full(15, 1e-30)
    rates[0] = 0.5
    times = np.array([0.1, 1.0, 3.0, 10.0])
    states = data.kinetics_states(rates, times)
    assert states.shape == (4, 6)
    assert np.allclose(states[:, 0], np.exp(-0.5 * times), rtol=1e-4)
    assert np.allclose(states[:, 1], 1 - np.exp(-0.5 * times), rtol=1e-4)
    with pytest.raises(ValueError, match="rates"):
        data.kinetics_states(-rates)


def test_kinetics_is_stiff_and_fast_enough():
    # Robertson's constants make the system stiff; LSODA with the analytic Jacobian solves a
    # run in milliseconds (about 5 ms on an idle core): 20 runs well under a second each.
    import time

    start = time.process_time()
    data.kinetics(20, seed=0)
    assert (time.process_time() - start) / 20 < 0.25


# ------------------------------------------------------------------ potential: the physics

def test_morse_pair_minimum():
    r = np.linspace(0.8, 1.5, 7001)
    energy = data.morse_energy(r, depth=2.0, stiffness=6.0, r_eq=1.1)
    assert r[np.argmin(energy)] == pytest.approx(1.1, abs=1e-3)
    assert energy.min() == pytest.approx(-2.0, abs=1e-9)
    assert abs(data.morse_energy(50.0)) < 1e-100


def test_cluster_energy_invariances():
    rng = np.random.default_rng(0)
    positions = data.POTENTIAL_REFERENCE + rng.uniform(-0.07, 0.07, size=(10, 3))
    energy = data.morse_cluster_energy(positions)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert data.morse_cluster_energy(positions + np.array([0.3, -1.0, 2.0])) == \
        pytest.approx(energy, rel=1e-12)
    assert data.morse_cluster_energy(positions @ q.T) == pytest.approx(energy, rel=1e-12)
    assert data.morse_cluster_energy(positions[rng.permutation(10)]) == \
        pytest.approx(energy, rel=1e-12)
    # A dimer at the pair equilibrium: -1; the reference fragment has 23 bonds of length 1.
    assert data.morse_cluster_energy(np.array([[0.0, 0, 0], [1.0, 0, 0]])) == pytest.approx(-1)
    reference = data.POTENTIAL_REFERENCE
    distance = np.linalg.norm(reference[:, None] - reference[None], axis=-1)
    assert int(np.isclose(distance, 1.0).sum()) // 2 == 23


def test_potential_outputs_are_the_cluster_energy():
    x, y = data.potential(50, seed=2, noise=0.0)
    expected = data.morse_cluster_energy(data.POTENTIAL_REFERENCE + x.reshape(50, 10, 3))
    assert np.allclose(y, expected, rtol=0, atol=1e-12)
    assert np.abs(x).max() <= 0.07


# ------------------------------------------------------------------ adsorption: the physics

def _configuration(**values):
    point = {"u": 0.3, "v": 0.2, "z": 1.8, "theta": 0.7, "phi": 0.4, "r": 0.8, **values}
    return np.array([[point[name] for name in data.ADSORPTION_INPUTS]])


def test_adsorption_symmetries_and_gas_phase_limit():
    energy = data.adsorption_energy(_configuration())[0]
    # The surface lattice is periodic: a shift by a lattice vector (u or v by 1) changes the
    # energy only through the truncation of the surface patch (< 1e-5 eV).
    assert data.adsorption_energy(_configuration(u=1.3))[0] == pytest.approx(energy, abs=1e-5)
    assert data.adsorption_energy(_configuration(v=-0.8))[0] == pytest.approx(energy, abs=1e-5)
    # H2 is homonuclear: reversing the bond (theta -> pi - theta, phi -> phi + pi) is exact.
    flipped = _configuration(theta=math.pi - 0.7, phi=0.4 + math.pi)
    assert data.adsorption_energy(flipped)[0] == pytest.approx(energy, abs=1e-12)
    # Far from the surface: the free molecule, minimum 0 at the H2 bond length 0.741 A.
    bonds = np.linspace(0.5, 1.2, 701)
    far = np.concatenate([np.repeat(_configuration(z=30.0), bonds.size, 0)[:, :5],
                          bonds[:, None]], axis=1)
    free = data.adsorption_energy(far)
    assert bonds[np.argmin(free)] == pytest.approx(0.741, abs=1e-3)
    assert free.min() == pytest.approx(0.0, abs=1e-6)
    # Attraction near the surface: the molecule is bound (negative energy) at 2 A.
    assert data.adsorption_energy(_configuration(z=2.0, r=0.741))[0] < -0.5


def test_adsorption_inputs_lie_in_the_stated_ranges():
    x, _ = data.adsorption(500, seed=0)
    low = np.array([0.0, 0.0, 1.2, 0.0, 0.0, 0.6])
    high = np.array([1.0, 1.0, 3.2, math.pi, 2 * math.pi, 1.1])
    assert (x >= low).all() and (x <= high).all()


# ------------------------------------------------------------------ the benchmark


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("surrogate.py", "surrogate_benchmark") as module:
        yield module


def test_benchmark_quick_unit_and_report(bench):
    config = bench.default_config(quick=True)
    record = bench.run_unit(config, "kinetics", "map")
    assert record["n_train"] + record["n_test"] == config["sizes"]["kinetics"]
    assert record["n_test"] == round(0.1 * config["sizes"]["kinetics"])
    for key in ("rmse", "nll", "coverage_95", "width_95"):
        assert len(record[f"{key}_per_output"]) == 10
        assert record[key] == pytest.approx(np.mean(record[f"{key}_per_output"]))
    assert record["peak_mb"] > 0 and record["fit_seconds"] > 0
    report = bench.render_report(config, [record])
    assert "## kinetics" in report and "| MAP |" in report and "Per output" in report
    assert "kinetics, MAP: 95% coverage of every output" in report


def test_benchmark_per_output_metrics_are_the_marginal_metrics(bench):
    # Against the metrics computed by hand from the prediction's draws: RMSE of output j's
    # predictive mean, and the coverage of the marginal mixture's central interval.
    import torch

    from bayesresnet import metrics
    from bayesresnet.posterior import Prediction

    rng = np.random.default_rng(0)
    f = torch.as_tensor(rng.normal(size=(40, 30, 3)))
    scale = torch.as_tensor(0.5 + rng.uniform(size=(40, 30, 3)))
    pred = Prediction(f, scale, torch.Generator().manual_seed(0))
    y = rng.normal(size=(30, 3))
    scores = bench.per_output_scores(pred, y)
    for j in range(3):
        assert scores["rmse"][j] == pytest.approx(np.sqrt(np.mean((pred.mean[:, j] - y[:, j])
                                                                  ** 2)))
        single = Prediction(f[..., j:j + 1], scale[..., j:j + 1], torch.Generator())
        assert scores["nll"][j] == pytest.approx(metrics.nll(single, y[:, j]))
        lower, upper = single.interval(0.95)
        inside = (y[:, j] >= lower[:, 0]) & (y[:, j] <= upper[:, 0])
        assert scores["coverage_95"][j] == pytest.approx(inside.mean())
    # Averaged over outputs, the marginal NLLs differ from the joint NLL of the library.
    assert np.sum(scores["nll"]) != pytest.approx(metrics.nll(pred, y))


@pytest.fixture(scope="module")
def calibration():
    with benchmark_script("surrogate_calibration.py", "surrogate_calibration") as module:
        yield module


def test_calibration_binomial_range_probability(calibration):
    from scipy import stats

    # 180..196 of 200 is [0.90, 0.98]; summed by hand from the binomial pmf.
    expected = sum(stats.binom.pmf(k, 200, 0.95) for k in range(180, 197))
    assert calibration.binomial_in_range(200, 0.95, 0.90, 0.98) == pytest.approx(expected)
    assert 0.985 < expected < 0.995
    assert calibration.binomial_in_range(10, 0.5, 0.0, 1.0) == pytest.approx(1.0)


def test_calibration_report_checks_the_refit_against_the_benchmark_record(calibration):
    config = calibration.bench.default_config(quick=True)
    key = calibration.bench.unit_key(config, "kinetics", "map")
    test = {"coverage_95": [0.95] * 10, "rmse": [0.1] * 10}
    record = {"method": "map", "config": key, "test": test, "n_holdout": 1000,
              "holdout": {"coverage_95": [0.95] * 9 + [0.85], "rmse": [0.1] * 10},
              "cpu_seconds": 1.0}
    same = {"problem": "kinetics", "method": "map", "coverage_95_per_output": [0.95] * 10,
            "rmse_per_output": [0.1] * 10}
    text = calibration.render([record], [same], 200)
    row = next(line for line in text.splitlines() if line.startswith("| MAP |"))
    assert "| yes |" in row and "| no |" in row  # same fit; output 10 out of range
    other = {**same, "rmse_per_output": [0.2] * 10}
    row = next(line for line in calibration.render([record], [other], 200).splitlines()
               if line.startswith("| MAP |"))
    assert "| NO |" in row
