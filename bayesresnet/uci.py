"""Loader for the UCI regression benchmark data in the standard split layout.

The layout is the one used by the Bayesian-neural-network regression benchmark
(Hernandez-Lobato & Adams 2015; Gal & Ghahramani 2016). A data root holds one folder per data set::

    ROOT/NAME/data.txt             whitespace-separated numbers, one row per record
    ROOT/NAME/index_features.txt   0-based input columns, one per line
    ROOT/NAME/index_target.txt     the 0-based target column
    ROOT/NAME/n_splits.txt         number of train/test splits (optional, default 20)
    ROOT/NAME/index_train_{i}.txt  0-based row indices of the training part of split i (optional)
    ROOT/NAME/index_test_{i}.txt   0-based row indices of the test part of split i (optional)

Split index files that are absent are regenerated in memory with the standard protocol
(:func:`standard_splits`); nothing is ever written into the data folder.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path

import numpy as np

__all__ = ["DATA_ENV_VAR", "standard_splits", "uci", "uci_names"]

DATA_ENV_VAR = "BAYESRESNET_DATA"
"""Environment variable naming the default data root for :func:`uci` and :func:`uci_names`."""

DEFAULT_N_SPLITS = 20
_REQUIRED_FILES = ("data.txt", "index_features.txt", "index_target.txt")
_LAYOUT_HELP = (
    "Expected layout: ROOT/NAME/ holding data.txt (whitespace-separated numbers, one row per "
    "record), index_features.txt (0-based input columns, one per line), index_target.txt "
    "(the 0-based target column), and optionally n_splits.txt (default 20) and "
    "index_train_{i}.txt / index_test_{i}.txt (0-based row indices; regenerated with the "
    f"standard protocol when absent). Pass root=ROOT or set the {DATA_ENV_VAR} environment "
    "variable to ROOT."
)


def standard_splits(
    n: int, n_splits: int = DEFAULT_N_SPLITS
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The standard random train/test splits of the UCI regression benchmark.

    Reproduces ``numpy.random.seed(1)`` followed, for each split in order, by
    ``perm = numpy.random.choice(range(n), n, replace=False)``, with the first ``round(0.9 * n)``
    entries of ``perm`` as training rows and the rest as test rows. A private
    ``numpy.random.RandomState(1)`` gives the identical stream, so numpy's global random state is
    left untouched.

    Parameters
    ----------
    n : int
        Number of rows in the data set (at least 5, so that both parts are non-empty).
    n_splits : int, default 20
        Number of splits to generate.

    Returns
    -------
    list of (train, test)
        ``n_splits`` pairs of int64 index arrays of shapes (round(0.9 n),) and
        (n - round(0.9 n),); each pair is a permutation of ``range(n)``.
    """
    n = _as_int(n, "n")
    n_splits = _as_int(n_splits, "n_splits")
    # Python's round (half to even) is part of the protocol: it fixes the train size.
    n_train = round(0.9 * n)
    if n_train < 1 or n_train >= n:
        raise ValueError(f"n must be at least 5 so that train and test are non-empty, got {n}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be at least 1, got {n_splits}")
    rng = np.random.RandomState(1)
    splits = []
    for _ in range(n_splits):
        perm = rng.choice(n, size=n, replace=False).astype(np.int64)
        splits.append((perm[:n_train], perm[n_train:]))
    return splits


def uci_names(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the data-set folders under ``root`` that have the standard layout.

    Parameters
    ----------
    root : path-like, optional
        The data root; defaults to the ``BAYESRESNET_DATA`` environment variable.

    Returns
    -------
    list of str
        Sorted folder names that hold data.txt, index_features.txt and index_target.txt.

    Raises
    ------
    FileNotFoundError
        If no root is given and the environment variable is unset, or the root is not a folder.
    """
    return _names_under(_resolve_root(root))


def uci(
    name: str, split: int = 0, root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load one standard train/test split of a UCI regression data set.

    Parameters
    ----------
    name : str
        Folder name of the data set under ``root``, e.g. ``"yacht"``.
    split : int, default 0
        Split index in ``0 .. n_splits - 1``.
    root : path-like, optional
        The data root; defaults to the ``BAYESRESNET_DATA`` environment variable.

    Returns
    -------
    x_train : ndarray of shape (N_train, d), float64
    y_train : ndarray of shape (N_train,), float64
    x_test : ndarray of shape (N_test, d), float64
    y_test : ndarray of shape (N_test,), float64
        Raw (unstandardized) inputs and target of the split's rows, in the order of the index files.

    Raises
    ------
    FileNotFoundError
        If the root, the data-set folder or one of its required files is missing, or only one of
        a split's two index files is present.
    ValueError
        If ``split`` is out of range, or the files are malformed: non-numeric or non-finite
        values, ragged rows, or column / row indices out of range.
    """
    root_path = _resolve_root(root)
    if not isinstance(name, str) or not name or name in (".", "..") or any(
        sep in name for sep in ("/", "\\", os.sep)
    ):
        raise ValueError(f"dataset name must be a plain folder name, got {name!r}")
    folder = root_path / name
    if not folder.is_dir():
        found = _names_under(root_path)
        listing = ", ".join(found) if found else "none"
        raise FileNotFoundError(
            f"no UCI dataset {name!r} under {root_path} (datasets found there: {listing}). "
            + _LAYOUT_HELP
        )
    for filename in _REQUIRED_FILES:
        if not (folder / filename).is_file():
            raise FileNotFoundError(
                f"UCI dataset folder {folder} lacks the required file {filename}. " + _LAYOUT_HELP
            )

    n_splits = _read_n_splits(folder)
    split = _as_int(split, "split")
    if not 0 <= split < n_splits:
        raise ValueError(
            f"split must be in 0..{n_splits - 1} for dataset {name!r} ({n_splits} splits), "
            f"got {split}"
        )

    data = _read_data(folder / "data.txt")
    n_rows, n_cols = data.shape
    features = _read_indices(folder / "index_features.txt", n_cols, "column")
    target = _read_indices(folder / "index_target.txt", n_cols, "column")
    if features.size == 0:
        raise ValueError(f"{folder / 'index_features.txt'} lists no input columns")
    if np.unique(features).size != features.size:
        raise ValueError(f"{folder / 'index_features.txt'} lists a column more than once")
    if target.size != 1:
        raise ValueError(
            f"{folder / 'index_target.txt'} must hold exactly one column, got {target.size}"
        )
    if target[0] in features:
        raise ValueError(
            f"target column {target[0]} is also listed as an input in "
            f"{folder / 'index_features.txt'}"
        )

    train, test = _split_indices(folder, split, n_rows)
    y = data[:, target[0]]
    return (
        data[np.ix_(train, features)],
        y[train],
        data[np.ix_(test, features)],
        y[test],
    )


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        env = os.environ.get(DATA_ENV_VAR, "")
        if not env:
            raise FileNotFoundError(
                f"no UCI data root given: pass root= or set {DATA_ENV_VAR}. " + _LAYOUT_HELP
            )
        root = env
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"UCI data root {path} is not a folder. " + _LAYOUT_HELP)
    return path


def _names_under(root: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and all((entry / f).is_file() for f in _REQUIRED_FILES)
    )


def _load_numbers(path: Path) -> np.ndarray:
    """All numbers in a whitespace-separated text file as a 2-D float64 array."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file") from None
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path} is empty")
    try:
        return np.loadtxt(lines, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"cannot parse {path} as whitespace-separated numbers: {err}") from None


def _read_data(path: Path) -> np.ndarray:
    data = _load_numbers(path)
    bad = np.argwhere(~np.isfinite(data))
    if bad.size:
        row, col = bad[0]
        raise ValueError(
            f"{path} holds {len(bad)} non-finite value(s); first at row {row}, column {col}: "
            f"{data[row, col]}"
        )
    return data


def _read_indices(path: Path, bound: int, kind: str) -> np.ndarray:
    """A file of 0-based indices (any whitespace layout), checked to lie in ``0 .. bound - 1``."""
    values = _load_numbers(path).ravel()
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise ValueError(f"{path} must hold integer {kind} indices")
    indices = values.astype(np.int64)
    out = (indices < 0) | (indices >= bound)
    if out.any():
        raise ValueError(
            f"{path} holds {kind} index {indices[out][0]} outside 0..{bound - 1}"
        )
    return indices


def _read_n_splits(folder: Path) -> int:
    path = folder / "n_splits.txt"
    if not path.is_file():
        return DEFAULT_N_SPLITS
    values = _load_numbers(path).ravel()
    if values.size != 1 or not np.isfinite(values[0]) or values[0] != round(values[0]) or (
        values[0] < 1
    ):
        raise ValueError(f"{path} must hold one positive integer, got {values.tolist()}")
    return int(values[0])


def _split_indices(folder: Path, split: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    train_path = folder / f"index_train_{split}.txt"
    test_path = folder / f"index_test_{split}.txt"
    have_train, have_test = train_path.is_file(), test_path.is_file()
    if have_train != have_test:
        missing = test_path if have_train else train_path
        raise FileNotFoundError(
            f"{missing} is missing while its partner is present; supply both index files of "
            f"split {split} or neither (then the standard splits are regenerated)"
        )
    if not have_train:
        # The stream is shared across splits, so split i needs the first i + 1 permutations.
        return standard_splits(n_rows, split + 1)[split]
    train = _read_indices(train_path, n_rows, "row")
    test = _read_indices(test_path, n_rows, "row")
    if train.size == 0 or test.size == 0:
        raise ValueError(f"split {split} of {folder} has an empty train or test part")
    if np.intersect1d(train, test).size:
        raise ValueError(f"{train_path} and {test_path} share rows")
    return train, test
