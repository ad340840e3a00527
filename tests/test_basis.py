import numpy as np
import pytest
import torch

import bayesresnet as brn
from bayesresnet.basis import basis_from_config, get_basis


@pytest.mark.parametrize("depth", [1, 3, 6, 7, 8, 10, 16, 49, 100])
@pytest.mark.parametrize("horizon", [1.0, 0.3, 7.0])
def test_piecewise_grid_lands_in_its_own_layer(depth, horizon):
    dt = horizon / depth
    t = torch.arange(depth, dtype=torch.float64) * dt
    phi = brn.Piecewise().matrix(t, depth, horizon)
    assert torch.equal(phi, torch.eye(depth, dtype=torch.float64))
    # Midpoints and the final time.
    mid = brn.Piecewise().matrix(t + dt / 2, depth, horizon)
    assert torch.equal(mid, torch.eye(depth, dtype=torch.float64))
    last = brn.Piecewise().matrix(torch.tensor([horizon], dtype=torch.float64), depth, horizon)
    assert last[0, -1] == 1 and last.sum() == 1


def test_legendre_columns_are_orthogonal_on_the_horizon():
    horizon, degree = 2.5, 5
    nodes, weights = np.polynomial.legendre.leggauss(20)
    t = torch.tensor((nodes + 1) * horizon / 2)
    w = torch.tensor(weights * horizon / 2)
    phi = brn.Legendre(degree).matrix(t, depth=4, horizon=horizon)
    gram = phi.T @ (w[:, None] * phi)
    expected = torch.diag(torch.tensor([horizon / (2 * k + 1) for k in range(degree + 1)],
                                       dtype=torch.float64))
    assert torch.allclose(gram, expected, atol=1e-12)


def test_monomial_values():
    phi = brn.Monomial(3).matrix(torch.tensor([1.5]), depth=5, horizon=3.0)
    assert torch.allclose(phi, torch.tensor([[1.0, 0.5, 0.25, 0.125]], dtype=torch.float64))
    assert brn.Cubic().size(10) == 4 and brn.Linear().size(10) == 2
    assert brn.Constant().size(10) == 1 and brn.Piecewise().size(10) == 10
    assert brn.Cubic().names(3) == ["t^0", "t^1", "t^2", "t^3"]
    assert brn.Legendre(2).names(3) == ["P0", "P1", "P2"]
    assert brn.Piecewise().names(2) == ["layer0", "layer1"]


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_bad_degree(bad):
    with pytest.raises(ValueError, match="degree"):
        brn.Monomial(bad)
    with pytest.raises(ValueError, match="degree"):
        brn.Legendre(bad)


def test_bad_times_and_depth():
    with pytest.raises(ValueError, match="depth"):
        brn.Cubic().matrix(torch.tensor([0.1]), depth=0)
    with pytest.raises(ValueError, match="horizon"):
        brn.Cubic().matrix(torch.tensor([0.1]), depth=2, horizon=-1.0)
    with pytest.raises(ValueError, match="lie in"):
        brn.Cubic().matrix(torch.tensor([1.5]), depth=2, horizon=1.0)
    with pytest.raises(ValueError, match="finite"):
        brn.Cubic().matrix(torch.tensor([float("nan")]), depth=2)


@pytest.mark.parametrize("basis", [brn.Piecewise(), brn.Constant(), brn.Linear(), brn.Cubic(),
                                   brn.Legendre(4), brn.Monomial(2)])
def test_config_round_trip(basis):
    assert basis_from_config(basis.config()) == basis


def test_get_basis_names():
    assert get_basis("legendre3") == brn.Legendre(3)
    assert get_basis("Cubic") == brn.Cubic()
    with pytest.raises(ValueError, match="unknown basis"):
        get_basis("spline")
