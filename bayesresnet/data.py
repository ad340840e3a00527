"""Data helpers: standardization, toy regression problems, physics-based surrogate benchmark
problems (:func:`kinetics`, :func:`potential`, :func:`adsorption`), and the UCI loader."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from .uci import (
    CACHE_ENV_VAR,
    DATA_ENV_VAR,
    URL_ENV_VAR,
    DataIntegrityError,
    DataUnavailableError,
    cache_dir,
    fetch_uci,
    standard_splits,
    uci,
    uci_names,
)

__all__ = ["ADSORPTION_INPUTS", "CACHE_ENV_VAR", "DATA_ENV_VAR", "KINETICS_RATES",
           "KINETICS_SPECIES", "KINETICS_TIMES", "POTENTIAL_ATOMS", "POTENTIAL_REFERENCE",
           "URL_ENV_VAR", "DataIntegrityError", "DataUnavailableError", "Standardizer",
           "adsorption", "adsorption_energy", "cache_dir", "cubic", "fetch_uci", "gap",
           "kinetics", "kinetics_states", "morse_cluster_energy", "morse_energy", "potential",
           "sine", "standard_splits", "uci", "uci_names"]


def _as_float_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return array.astype(np.float64)


def _column_label(index: int, names: Sequence[Any] | None) -> str:
    """``column 2`` without names; with names, the column's name (``column 'age'``), or its
    number when the name is an integer (``column 7`` for a file without a header)."""
    if names is None:
        return f"column {index}"
    name = names[index]
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        return f"column {name}"
    return f"column {str(name)!r}"


def _scale_parameters(mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``mean`` and ``std``: 1-D float64 arrays of one length, finite, std > 0."""
    arrays = []
    for key, value in (("mean", mean), ("std", std)):
        try:
            array = np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"Standardizer {key} must be numbers, got {value!r}") from None
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"Standardizer {key} must be a non-empty 1-D array, got shape "
                             f"{array.shape}")
        arrays.append(array)
    mean, std = arrays
    if mean.shape != std.shape:
        raise ValueError(f"Standardizer mean and std differ in length: {mean.size} and "
                         f"{std.size}")
    for key, array in (("mean", mean), ("std", std)):
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            raise ValueError(f"Standardizer {key} of column {bad[0]} is not finite: "
                             f"{array[bad[0]]}")
    bad = np.flatnonzero(std <= 0)
    if bad.size:
        raise ValueError(f"Standardizer std of column {bad[0]} must be positive, got "
                         f"{std[bad[0]]}")
    return mean, std


class Standardizer:
    """Per-column affine scaling to zero mean and unit standard deviation.

    Columns with zero standard deviation are left unscaled (std set to 1), as in the UCI protocol.
    Works on NumPy arrays and torch tensors; outputs have the input's type.

    Parameters
    ----------
    mean, std : array (d,), optional
        Known scaling (both or neither): finite, ``std > 0``. Without them, call :meth:`fit`.

    Attributes
    ----------
    mean, std : ndarray of shape (d,)

    Raises
    ------
    ValueError
        ``mean`` or ``std`` not 1-D, of different lengths, not finite, or ``std <= 0``.

    Notes
    -----
    Magnitudes. :meth:`fit` divides each column by a power of two near its largest absolute
    value before it averages and squares (exact: only the exponent changes), so columns of any
    representable magnitude (1e-300 or 1e300 alike) get an accurate mean and standard
    deviation, with no overflow or underflow in the squares; for ordinary data the result is
    bit for bit NumPy's ``mean`` and ``std``. It raises a ``ValueError`` naming the column (its
    number, or its name when ``names`` is given) where a value is NaN or infinite, or where
    the standardized data or their way back to original units would not be finite: that
    happens only for values within a factor of about two of the float64 limit (1.8e308),
    whose distance from the mean overflows. :meth:`transform` raises the same way when new
    values are so far from the mean that their standardized value overflows.
    :meth:`inverse_transform` and :meth:`inverse_scale` do not check: results in original
    units beyond 1.8e308 come back infinite, for the caller to test.
    """

    def __init__(self, mean: ArrayLike | None = None, std: ArrayLike | None = None) -> None:
        if mean is None and std is None:
            self.mean: np.ndarray | None = None
            self.std: np.ndarray | None = None
        elif mean is None or std is None:
            raise ValueError("Standardizer needs both mean and std, or neither")
        else:
            self.mean, self.std = _scale_parameters(mean, std)

    @classmethod
    def identity(cls, dim: int) -> Standardizer:
        """A scaler that changes nothing."""
        return cls(np.zeros(dim), np.ones(dim))

    def fit(self, values: ArrayLike, names: Sequence[Any] | None = None) -> Standardizer:
        """Learn mean and std from ``values`` of shape (N, d) or (N,).

        Parameters
        ----------
        values : array (N, d) or (N,)
            Finite numbers, N >= 1.
        names : sequence of d labels, optional
            Column names for error messages (e.g. a data file's header): an error names the
            column by its name instead of its position in ``values``, which may differ from
            its place in the caller's data (integers are shown as column numbers).

        Returns
        -------
        Standardizer
            ``self``.

        Raises
        ------
        ValueError
            Wrong shape; or, naming the column, a value that is not finite, or standardized
            values that would overflow (see the class notes).
        """
        array = _as_float_array(values, "values")
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"cannot fit a Standardizer on shape {array.shape}")
        if names is not None:
            names = list(names)
            if len(names) != array.shape[1]:
                raise ValueError(f"names has {len(names)} entries for {array.shape[1]} columns")
        finite = np.isfinite(array)
        if not finite.all():
            row, column = (int(i[0]) for i in np.nonzero(~finite))
            raise ValueError(f"cannot standardize {_column_label(column, names)}: the value in "
                             f"row {row} is {array[row, column]}, not a finite number")
        # x / 2**e is exact, lies in [-1, 1], and its squares cannot overflow.
        _, exponent = np.frexp(np.abs(array).max(axis=0))
        unit = np.ldexp(array, -exponent)
        mean = np.ldexp(unit.mean(axis=0), exponent)
        std = np.ldexp(unit.std(axis=0), exponent)
        std = np.where(std > 0, std, 1.0)
        with np.errstate(over="ignore", invalid="ignore"):
            standardized = (array - mean) / std
            overflow = ~(np.isfinite(standardized)
                         & np.isfinite(standardized * std + mean)).all(axis=0)
        if overflow.any():
            column = int(np.flatnonzero(overflow)[0])
            peak = np.abs(array[:, column]).max()
            raise ValueError(f"cannot standardize {_column_label(column, names)}: its values "
                             f"reach {peak:.3g} in magnitude, so close to the float64 limit "
                             f"({np.finfo(np.float64).max:.3g}) that standardizing them or "
                             "undoing it overflows; rescale the column")
        self.mean, self.std = mean, std
        return self

    def _params_like(self, values: Any) -> tuple[Any, Any]:
        if self.mean is None or self.std is None:
            raise RuntimeError("Standardizer is not fitted; call fit() first")
        if isinstance(values, torch.Tensor):
            return (torch.as_tensor(self.mean, dtype=values.dtype),
                    torch.as_tensor(self.std, dtype=values.dtype))
        return self.mean, self.std

    def transform(self, values: Any) -> Any:
        """(values - mean) / std, broadcasting over the last axis.

        Raises
        ------
        ValueError
            Naming the column, where a finite value gives a standardized value that is not
            finite (it lies beyond the float64 range in standard deviations from the mean).
        """
        mean, std = self._params_like(values)
        if isinstance(values, torch.Tensor):
            result = (values - mean) / std
            overflow = (torch.isfinite(values) & ~torch.isfinite(result)).cpu().numpy()
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                result = (values - mean) / std
            overflow = np.isfinite(values) & ~np.isfinite(result)
        if overflow.any():
            index = tuple(int(i) for i in np.argwhere(overflow)[0])
            column = index[-1] if self.mean.size > 1 else 0
            source = _as_float_array(values, "values")
            value = np.broadcast_to(source, overflow.shape)[index]
            raise ValueError(f"cannot standardize {_column_label(column, None)}: the value "
                             f"{value:.3g} lies too far from the mean {self.mean[column]:.3g} "
                             f"(std {self.std[column]:.3g}); its standardized value overflows")
        return result

    def inverse_transform(self, values: Any) -> Any:
        """values * std + mean: back to original units."""
        mean, std = self._params_like(values)
        return values * std + mean

    def inverse_scale(self, scales: Any) -> Any:
        """Standard deviations back to original units: scales * std."""
        _, std = self._params_like(scales)
        return scales * std

    def to_dict(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}``, for :meth:`from_dict`."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Standardizer:
        """The scaler stored by :meth:`to_dict`.

        Raises
        ------
        ValueError
            ``state`` lacks ``mean`` or ``std``, or they are invalid (see the class).
        """
        if not isinstance(state, Mapping) or "mean" not in state or "std" not in state:
            raise ValueError("a Standardizer state needs the keys 'mean' and 'std'")
        return cls(state["mean"], state["std"])

    def __repr__(self) -> str:
        return f"Standardizer(mean={self.mean}, std={self.std})"


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def cubic(n: int = 20, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """The cubic toy of Hernandez-Lobato & Adams (2015): x ~ U[-4, 4], y = x^3 + N(0, 3^2).

    Returns
    -------
    x : ndarray (n, 1), y : ndarray (n,)
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4.0, 4.0, size=(n, 1))
    y = x[:, 0] ** 3 + rng.normal(0.0, 3.0, size=n)
    return x, y


def gap(n: int = 40, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """In-between uncertainty toy (Foong et al. 2019): half of x ~ U[-1, -0.7], half ~ U[0.5, 1],
    y = cos(4x + 0.8) + N(0, 0.1^2).

    Returns
    -------
    x : ndarray (n, 1), y : ndarray (n,)
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    left = n // 2
    x = np.concatenate([rng.uniform(-1.0, -0.7, size=left), rng.uniform(0.5, 1.0, size=n - left)])
    y = np.cos(4.0 * x + 0.8) + rng.normal(0.0, 0.1, size=n)
    return x[:, None], y


def sine(n: int = 50, seed: int | None = 0, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Smooth 1-D toy: x ~ U[-3, 3], y = sin(x) + N(0, noise^2).

    Returns
    -------
    x : ndarray (n, 1), y : ndarray (n,)
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 3.0, size=(n, 1))
    y = np.sin(x[:, 0]) + rng.normal(0.0, noise, size=n)
    return x, y


# ------------------------------------------------------------------------------ physics surrogates
def _frames(x: np.ndarray, y: np.ndarray, inputs: Sequence[str], outputs: Sequence[str]
            ) -> tuple[Any, Any]:
    """``x`` and ``y`` as pandas objects with named columns (pandas is imported here only)."""
    import pandas as pd

    frame_x = pd.DataFrame(x, columns=list(inputs))
    if y.ndim == 1:
        return frame_x, pd.Series(y, name=outputs[0])
    return frame_x, pd.DataFrame(y, columns=list(outputs))


def _check_noise(noise: float) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) \
            or not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a non-negative number, got {noise!r}")
    return float(noise)


# Reaction network of :func:`kinetics`: (reactant, product, catalyst or -1) on the species
# A..F (0..5). Reactions 0-2 are Robertson's (1966) stiff autocatalytic system.
_KINETICS_REACTIONS = (
    (0, 1, -1), (1, 2, 1), (1, 0, 2), (0, 3, -1), (3, 0, -1), (3, 4, 1), (4, 3, -1),
    (2, 5, -1), (5, 2, -1), (4, 5, 2), (1, 3, -1), (5, 0, 4), (3, 2, 0), (4, 1, -1), (2, 4, 3))
KINETICS_SPECIES = ("A", "B", "C", "D", "E", "F")
"""Species of :func:`kinetics`, in the order of the columns of :func:`kinetics_states`."""
KINETICS_RATES = np.array([4e-2, 3e7, 1e4, 1e-2, 1e-3, 1e5, 1e-1, 1e-2, 1e-3, 1e3, 1e-1, 1e2,
                           1e1, 1e-2, 1e2])
"""Nominal rate constants of the 15 reactions of :func:`kinetics` (units of 1/s for the
uncatalysed reactions and 1/(M s) for the catalysed ones); the first three are Robertson's."""
KINETICS_TIMES = np.logspace(-2.0, 3.0, 10)
"""The 10 output times of :func:`kinetics`, 0.01 to 1000 s, evenly spaced in log time."""
# rtol of the LSODA solves; atol is far below any concentration the outputs reach (> 1e-6).
_KINETICS_RTOL = 1e-6
_KINETICS_ATOL = 1e-12


def _kinetics_system(k: np.ndarray) -> tuple[Any, Any]:
    """Mass-action right-hand side and its Jacobian for rate constants ``k`` (15,)."""
    reactions = np.array(_KINETICS_REACTIONS)
    source, target, catalyst = reactions.T
    species = len(KINETICS_SPECIES)
    stoichiometry = np.zeros((species, len(reactions)))
    columns = np.arange(len(reactions))
    np.add.at(stoichiometry, (source, columns), -1.0)
    np.add.at(stoichiometry, (target, columns), 1.0)
    catalysed = catalyst >= 0
    cat_rows = columns[catalysed]
    cat_species = catalyst[catalysed]

    def rhs(_t: float, c: np.ndarray) -> np.ndarray:
        rate = k * c[source]
        rate[catalysed] *= c[cat_species]
        return stoichiometry @ rate

    def jacobian(_t: float, c: np.ndarray) -> np.ndarray:
        # d rate_j / d c: k_j (times the catalyst) on the reactant, k_j c_reactant on the catalyst
        slope = np.zeros((len(reactions), species))
        factor = k.copy()
        factor[catalysed] *= c[cat_species]
        slope[columns, source] = factor
        np.add.at(slope, (cat_rows, cat_species), k[catalysed] * c[source[catalysed]])
        return stoichiometry @ slope

    return rhs, jacobian


def kinetics_states(rates: ArrayLike, times: ArrayLike = KINETICS_TIMES) -> np.ndarray:
    """Concentrations of the six species of :func:`kinetics` at ``times``, one solve per row.

    Parameters
    ----------
    rates : array (n, 15) or (15,)
        Positive rate constants of the reactions (see :func:`kinetics`).
    times : array (T,)
        Increasing positive output times in seconds (default :data:`KINETICS_TIMES`).

    Returns
    -------
    ndarray (n, T, 6) or (T, 6)
        Concentrations (mol/L) of A..F, starting from [A] = 1 and nothing else at t = 0.

    Raises
    ------
    ValueError
        Rates not positive and finite or of the wrong shape, or times not increasing.
    RuntimeError
        If a solve fails.
    """
    from scipy.integrate import solve_ivp

    k = np.asarray(rates, dtype=np.float64)
    single = k.ndim == 1
    k = np.atleast_2d(k)
    count = len(_KINETICS_REACTIONS)
    if k.ndim != 2 or k.shape[1] != count or not (np.isfinite(k).all() and (k > 0).all()):
        raise ValueError(f"rates must be positive finite numbers of shape (n, {count})")
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or not (t > 0).all() or (np.diff(t) <= 0).any():
        raise ValueError("times must be a non-empty increasing 1-D array of positive numbers")
    start = np.zeros(len(KINETICS_SPECIES))
    start[0] = 1.0
    states = np.empty((k.shape[0], t.size, start.size))
    for i, row in enumerate(k):
        rhs, jacobian = _kinetics_system(row)
        solution = solve_ivp(rhs, (0.0, float(t[-1])), start, method="LSODA", t_eval=t,
                             jac=jacobian, rtol=_KINETICS_RTOL, atol=_KINETICS_ATOL)
        if solution.status != 0:
            raise RuntimeError(f"kinetics: the solve of row {i} failed: {solution.message}")
        states[i] = solution.y.T
    return states[0] if single else states


def kinetics(n: int = 2000, seed: int | None = 0, noise: float = 0.02, *,
             as_frame: bool = False) -> tuple[Any, Any]:
    """A stiff chemical-kinetics network: log-concentrations at 10 times from 15 rate constants.

    Six species A..F react by 15 mass-action reactions, each turning one species into another,
    some catalysed by a third species (rate ``k [reactant] [catalyst]``): Robertson's (1966)
    stiff autocatalytic system ``A -> B``, ``2B -> B + C``, ``B + C -> A + C``, extended by
    reversible side channels through D, E and F (:data:`KINETICS_RATES` lists the nominal
    constants, which span 10 orders of magnitude; the reactions are in the source). Every
    reaction conserves the number of molecules, so ``[A] + ... + [F] = 1`` at all times. Each
    run starts from ``[A] = 1`` and is solved with ``scipy.integrate.solve_ivp`` (LSODA, the
    analytic Jacobian, rtol 1e-6, atol 1e-12); about 5 ms per run on one idle core (2 000 runs
    in about 10 s).

    Inputs are ``log10(k_j / k_j^nominal)``, uniform on [-0.5, 0.5] (each rate log-uniform
    within a factor of sqrt(10) of its nominal value). Outputs are ``log10 [C]`` at the 10
    :data:`KINETICS_TIMES` (0.01 s to 1000 s, log-spaced), plus Gaussian measurement noise of
    standard deviation ``noise`` (0.02 in log10 units: about 5% relative error). The outputs
    range over about -4 to -0.3 (standard deviation 0.2-0.3 at each time) and are strongly
    correlated across times; by the last three times most runs are near equilibrium.

    Parameters
    ----------
    n : int
        Number of runs.
    seed : int or None
        Seed of the inputs and the noise.
    noise : float
        Standard deviation of the additive noise on each output (log10 units).
    as_frame : bool
        Return pandas objects with named columns (``log10_k01`` ..., ``log10_C_t01`` ...;
        ``bayesresnet.fit`` takes the names from them) instead of arrays.

    Returns
    -------
    x : ndarray (n, 15)
        Log10 rate multipliers.
    y : ndarray (n, 10)
        Noisy log10 concentration of C at the output times.
    """
    _check_n(n)
    noise = _check_noise(noise)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.5, 0.5, size=(n, len(_KINETICS_REACTIONS)))
    states = kinetics_states(KINETICS_RATES * 10.0 ** x)
    y = np.log10(states[..., KINETICS_SPECIES.index("C")])
    y = y + rng.normal(0.0, 1.0, size=y.shape) * noise
    if as_frame:
        return _frames(x, y, [f"log10_k{j + 1:02d}" for j in range(x.shape[1])],
                       [f"log10_C_t{j + 1:02d}" for j in range(y.shape[1])])
    return x, y


def morse_energy(r: ArrayLike, depth: float = 1.0, stiffness: float = 6.0, r_eq: float = 1.0
                 ) -> np.ndarray:
    """The Morse pair potential ``depth * ((1 - e)^2 - 1)``, ``e = exp(-stiffness (r - r_eq))``.

    Parameters
    ----------
    r : array (...)
        Distances.
    depth, stiffness, r_eq : float
        Well depth D, range parameter a (1/length) and equilibrium distance.

    Returns
    -------
    ndarray (...)
        Energies; the minimum ``-depth`` is at ``r = r_eq`` and the energy tends to 0 far away.
    """
    e = np.exp(-stiffness * (np.asarray(r, dtype=np.float64) - r_eq))
    return depth * (e * e - 2.0 * e)


def morse_cluster_energy(positions: ArrayLike, rho: float = 6.0) -> np.ndarray:
    """Total energy of a cluster of atoms bound by Morse pair potentials (reduced units).

    ``E = sum_{i<j} V(r_ij)`` with ``V(r) = (1 - exp(-rho (r - 1)))^2 - 1``: well depth 1 and
    pair equilibrium distance 1; ``rho = 6`` is the range of the Morse clusters of Doye & Wales
    (1997), near that of many metals.

    Parameters
    ----------
    positions : array (..., atoms, 3)
        Cartesian coordinates, in units of the pair equilibrium distance.
    rho : float
        Range parameter of the potential (larger: shorter-ranged, stiffer).

    Returns
    -------
    ndarray (...)
        Energies in units of the well depth.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim < 2 or positions.shape[-1] != 3:
        raise ValueError(f"positions must have shape (..., atoms, 3), got {positions.shape}")
    first, second = np.triu_indices(positions.shape[-2], 1)
    separation = positions[..., first, :] - positions[..., second, :]
    return morse_energy(np.sqrt((separation * separation).sum(-1)), 1.0, rho, 1.0).sum(-1)


def _fcc_cluster(atoms: int) -> np.ndarray:
    """The ``atoms`` sites of a face-centred cubic lattice (nearest-neighbour distance 1) nearest
    to a lattice site, ties broken by coordinates: that site and its nearest neighbours."""
    span = range(-2, 3)
    sites = [(i, j, k) for i in span for j in span for k in span if (i + j + k) % 2 == 0]
    sites.sort(key=lambda s: (s[0] ** 2 + s[1] ** 2 + s[2] ** 2, s))
    return np.array(sites[:atoms], dtype=np.float64) / math.sqrt(2.0)


POTENTIAL_ATOMS = 10
"""Atoms of the cluster of :func:`potential` (3 coordinates each: 30 inputs)."""
POTENTIAL_REFERENCE = _fcc_cluster(POTENTIAL_ATOMS)
"""Reference positions (10, 3) of :func:`potential`: an fcc fragment, a central atom and nine of
its twelve nearest neighbours at distance 1."""


def potential(n: int = 20000, seed: int | None = 0, noise: float = 0.05, amplitude: float = 0.07,
              *, as_frame: bool = False) -> tuple[Any, Any]:
    """Potential energy of a 10-atom Morse cluster as a function of its 30 atomic displacements.

    The atoms start at :data:`POTENTIAL_REFERENCE` (a fragment of an fcc crystal, 23 nearest-
    neighbour bonds) and each coordinate is displaced by an amount uniform on
    ``[-amplitude, amplitude]`` (in units of the bond length); the energy is that of Morse pair
    potentials with well depth 1 and ``rho = 6`` (:func:`morse_cluster_energy`), in units of the
    well depth. Deterministic, smooth, and invariant under translations, rotations and
    permutations of the atoms, with strong couplings between the coordinates of bonded atoms;
    at the default amplitude the energies range over about -24 to -13 (mean -21.4, standard
    deviation 1.2), anharmonic towards the repulsive wall.

    Parameters
    ----------
    n : int
        Number of configurations.
    seed : int or None
        Seed of the displacements and the noise.
    noise : float
        Standard deviation of the additive Gaussian noise on the energy (default 0.05, about 4%
        of the energies' spread).
    amplitude : float
        Half-width of the uniform displacement of each coordinate (bond-length units).
    as_frame : bool
        Return pandas objects with named columns (``dx01``, ``dy01``, ``dz01``, ... and
        ``energy``) instead of arrays.

    Returns
    -------
    x : ndarray (n, 30)
        Displacements, atom by atom (x, y, z of atom 1, then of atom 2, ...).
    y : ndarray (n,)
        Noisy energy.
    """
    _check_n(n)
    noise = _check_noise(noise)
    if isinstance(amplitude, bool) or not isinstance(amplitude, (int, float)) \
            or not (np.isfinite(amplitude) and amplitude > 0):
        raise ValueError(f"amplitude must be a positive number, got {amplitude!r}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-amplitude, amplitude, size=(n, POTENTIAL_ATOMS * 3))
    y = morse_cluster_energy(POTENTIAL_REFERENCE + x.reshape(n, POTENTIAL_ATOMS, 3))
    y = y + rng.normal(0.0, 1.0, size=n) * noise
    if as_frame:
        inputs = [f"d{axis}{atom + 1:02d}" for atom in range(POTENTIAL_ATOMS) for axis in "xyz"]
        return _frames(x, y, inputs, ["energy"])
    return x, y


# Model of :func:`adsorption` (eV and angstrom): H-H and H-metal Morse parameters and the
# in-plane lattice constant of Cu(111).
_H2_MORSE = (4.746, 1.943, 0.741)
_SURFACE_MORSE = (0.35, 1.5, 1.9)
_SURFACE_LATTICE = 2.556
# Surface atoms in a (2 * 6 + 1)^2 patch around the cell: the truncation changes energies by
# less than 1e-5 eV for molecules above the central cell.
_SURFACE_SPAN = 6
ADSORPTION_INPUTS = ("u", "v", "z", "theta", "phi", "r")
"""Inputs of :func:`adsorption`."""


def _surface_sites() -> np.ndarray:
    """Positions (sites, 3) of the surface layer's atoms, in the plane z = 0."""
    a1, a2 = _surface_vectors()
    index = np.arange(-_SURFACE_SPAN, _SURFACE_SPAN + 1, dtype=np.float64)
    i, j = (grid.ravel() for grid in np.meshgrid(index, index, indexing="ij"))
    plane = i[:, None] * a1 + j[:, None] * a2
    return np.concatenate([plane, np.zeros((plane.shape[0], 1))], axis=1)


def _surface_vectors() -> tuple[np.ndarray, np.ndarray]:
    """The two in-plane lattice vectors of the (111) surface, at 60 degrees."""
    length = _SURFACE_LATTICE
    return np.array([length, 0.0]), np.array([0.5 * length, 0.5 * math.sqrt(3.0) * length])


def adsorption_energy(x: ArrayLike) -> np.ndarray:
    """Energy (eV) of an H2 molecule above a Cu(111)-like surface layer, relative to the free
    molecule at rest at its equilibrium bond length.

    ``E = V_HH(r) + D_HH + sum_{atoms a} sum_{surface sites s} V_HS(|p_a - s|)`` with Morse
    potentials ``V_HH`` (D 4.746 eV, a 1.943 1/A, r_e 0.741 A: the H2 molecule) and ``V_HS``
    (D 0.35 eV, a 1.5 1/A, r_e 1.9 A: a pair-additive H-metal attraction), summed over a
    13 x 13 patch of a hexagonal layer of lattice constant 2.556 A (Cu(111)) in the plane z = 0.
    A six-dimensional potential-energy surface in the spirit of the pair-additive models of
    H2 on metal surfaces.

    Parameters
    ----------
    x : array (n, 6)
        ``u, v`` fractional position of the molecule's centre along the two surface lattice
        vectors; ``z`` height of the centre above the layer (A); ``theta`` polar angle of the
        bond from the surface normal, ``phi`` its azimuth (rad); ``r`` bond length (A).

    Returns
    -------
    ndarray (n,)
        Energies in eV (0 for the free molecule at equilibrium; negative where it is bound).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(ADSORPTION_INPUTS):
        raise ValueError(f"x must have shape (n, {len(ADSORPTION_INPUTS)}), got {x.shape}")
    u, v, height, theta, phi, bond = x.T
    a1, a2 = _surface_vectors()
    centre = np.concatenate([u[:, None] * a1 + v[:, None] * a2, height[:, None]], axis=1)
    axis = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi),
                     np.cos(theta)], axis=-1)
    sites = _surface_sites()
    depth, _, _ = _H2_MORSE
    energy = morse_energy(bond, *_H2_MORSE) + depth
    for sign in (0.5, -0.5):
        atom = centre + sign * bond[:, None] * axis
        distance = np.linalg.norm(atom[:, None, :] - sites[None], axis=-1)
        energy = energy + morse_energy(distance, *_SURFACE_MORSE).sum(-1)
    return energy


def adsorption(n: int = 10000, seed: int | None = 0, noise: float = 0.02, *,
               as_frame: bool = False) -> tuple[Any, Any]:
    """A six-dimensional potential-energy surface: H2 above a metal surface layer.

    The energy of :func:`adsorption_energy` at inputs drawn uniformly from: ``u, v`` in [0, 1)
    (one surface unit cell), height ``z`` in [1.2, 3.2] A, polar angle ``theta`` in [0, pi],
    azimuth ``phi`` in [0, 2 pi), bond length ``r`` in [0.6, 1.1] A; plus Gaussian noise of
    standard deviation ``noise`` (0.02 eV, about 2.5% of the energies' spread: -2.9 to +0.5 eV
    for 98% of the inputs, mean -1.2, standard deviation 0.8, with a repulsive tail up to
    about +6 eV close to the surface at compressed or stretched bonds).

    Parameters
    ----------
    n : int
        Number of configurations.
    seed : int or None
        Seed of the inputs and the noise.
    noise : float
        Standard deviation of the additive noise (eV).
    as_frame : bool
        Return pandas objects with named columns (:data:`ADSORPTION_INPUTS` and ``energy``).

    Returns
    -------
    x : ndarray (n, 6)
        ``u, v, z, theta, phi, r``.
    y : ndarray (n,)
        Noisy energy (eV).
    """
    _check_n(n)
    noise = _check_noise(noise)
    rng = np.random.default_rng(seed)
    low = np.array([0.0, 0.0, 1.2, 0.0, 0.0, 0.6])
    high = np.array([1.0, 1.0, 3.2, math.pi, 2.0 * math.pi, 1.1])
    x = rng.uniform(low, high, size=(n, low.size))
    y = adsorption_energy(x) + rng.normal(0.0, 1.0, size=n) * noise
    if as_frame:
        return _frames(x, y, ADSORPTION_INPUTS, ["energy"])
    return x, y
