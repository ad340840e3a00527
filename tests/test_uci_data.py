"""Tests for the UCI benchmark loader (bayesresnet.uci) against the shipped data sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bayesresnet.uci import DATA_ENV_VAR, standard_splits, uci, uci_names

UCI_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "uci"
SHIPPED = ("energy", "wine-quality-red", "yacht")

pytestmark = pytest.mark.skipif(
    not all((UCI_ROOT / name / "data.txt").is_file() for name in SHIPPED),
    reason=f"UCI benchmark data not found under {UCI_ROOT} (expected shared/ beside the repo)",
)


def copy_dataset(name: str, dest_root: Path, keep_splits: bool = True) -> Path:
    """Writable copy of a shipped data set (copytree would keep the read-only modes)."""
    folder = dest_root / name
    folder.mkdir(parents=True)
    for src in (UCI_ROOT / name).iterdir():
        if keep_splits or not src.name.startswith(("index_train_", "index_test_")):
            shutil.copyfile(src, folder / src.name)
    return folder


def read_index(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.int64, ndmin=1)


@pytest.mark.parametrize("name", SHIPPED)
def test_regenerated_splits_equal_shipped_index_files(name):
    n = np.loadtxt(UCI_ROOT / name / "data.txt", ndmin=2).shape[0]
    splits = standard_splits(n, 20)
    assert len(splits) == 20
    for i, (train, test) in enumerate(splits):
        np.testing.assert_array_equal(train, read_index(UCI_ROOT / name / f"index_train_{i}.txt"))
        np.testing.assert_array_equal(test, read_index(UCI_ROOT / name / f"index_test_{i}.txt"))


@pytest.mark.parametrize("n", [15, 37, 308])
def test_standard_splits_follow_the_global_seed_protocol(n):
    # Reference: the protocol as written, on numpy's global RNG (state restored afterwards).
    # n = 15 exercises Python's half-to-even round: round(13.5) == 14.
    # The legacy global-RNG calls are the point here, hence the noqa.
    saved = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(1)  # noqa: NPY002
        reference = [
            np.random.choice(range(n), n, replace=False)  # noqa: NPY002
            for _ in range(4)
        ]
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    n_train = round(0.9 * n)
    for (train, test), perm in zip(standard_splits(n, 4), reference, strict=True):
        np.testing.assert_array_equal(train, perm[:n_train])
        np.testing.assert_array_equal(test, perm[n_train:])
        assert train.dtype == np.int64


def test_standard_splits_rejects_bad_sizes():
    with pytest.raises(ValueError, match="at least 5"):
        standard_splits(4)
    with pytest.raises(ValueError, match="n_splits must be at least 1"):
        standard_splits(100, 0)
    with pytest.raises(ValueError, match="integer"):
        standard_splits(100.0)


def test_yacht_split_0_has_documented_shapes_and_rows():
    x_train, y_train, x_test, y_test = uci("yacht", 0, root=UCI_ROOT)
    assert x_train.shape == (277, 6) and y_train.shape == (277,)
    assert x_test.shape == (31, 6) and y_test.shape == (31,)
    for array in (x_train, y_train, x_test, y_test):
        assert array.dtype == np.float64
    data = np.loadtxt(UCI_ROOT / "yacht" / "data.txt")
    train = read_index(UCI_ROOT / "yacht" / "index_train_0.txt")
    test = read_index(UCI_ROOT / "yacht" / "index_test_0.txt")
    np.testing.assert_array_equal(x_train, data[train, :6])
    np.testing.assert_array_equal(y_train, data[train, 6])
    np.testing.assert_array_equal(x_test, data[test, :6])
    np.testing.assert_array_equal(y_test, data[test, 6])


@pytest.mark.parametrize(("name", "rows", "inputs"), [("energy", 768, 8),
                                                      ("wine-quality-red", 1599, 11)])
def test_other_datasets_have_documented_shapes(name, rows, inputs):
    x_train, y_train, x_test, y_test = uci(name, 3, root=UCI_ROOT)
    assert x_train.shape == (round(0.9 * rows), inputs)
    assert x_test.shape == (rows - round(0.9 * rows), inputs)
    assert y_train.shape == (x_train.shape[0],) and y_test.shape == (x_test.shape[0],)


@pytest.mark.parametrize("split", [0, 7, 19])
def test_copy_without_index_files_loads_the_same_arrays(tmp_path, split):
    folder = copy_dataset("yacht", tmp_path)
    for path in folder.glob("index_t*_*.txt"):
        path.unlink()
    before = sorted(p.name for p in folder.iterdir())
    regenerated = uci("yacht", split, root=tmp_path)
    shipped = uci("yacht", split, root=UCI_ROOT)
    for got, want in zip(regenerated, shipped, strict=True):
        np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_loading_leaves_numpy_global_rng_untouched(tmp_path):
    copy_dataset("yacht", tmp_path, keep_splits=False)
    # numpy's legacy global RNG is exactly what must stay untouched, hence the noqa.
    np.random.seed(12345)  # noqa: NPY002
    expected = np.random.random(3)  # noqa: NPY002
    np.random.seed(12345)  # noqa: NPY002
    uci("yacht", 5, root=tmp_path)  # regenerates splits
    uci("energy", 0, root=UCI_ROOT)
    standard_splits(50, 3)
    np.testing.assert_array_equal(np.random.random(3), expected)  # noqa: NPY002


def test_uci_names_lists_only_folders_with_the_layout(tmp_path):
    assert set(SHIPPED) <= set(uci_names(UCI_ROOT))
    copy_dataset("yacht", tmp_path, keep_splits=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "half").mkdir()
    shutil.copyfile(UCI_ROOT / "yacht" / "data.txt", tmp_path / "half" / "data.txt")
    (tmp_path / "notes.txt").write_text("not a data set")
    assert uci_names(tmp_path) == ["yacht"]


def test_env_var_is_the_default_root_and_explicit_root_wins(tmp_path, monkeypatch):
    copy_dataset("yacht", tmp_path)
    (tmp_path / "yacht").rename(tmp_path / "boat")
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert uci_names() == ["boat"]
    for got, want in zip(uci("boat", 2), uci("yacht", 2, root=UCI_ROOT), strict=True):
        np.testing.assert_array_equal(got, want)
    assert uci_names(UCI_ROOT) != ["boat"]


def test_missing_root_errors_say_where_to_put_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setenv("BAYESRESNET_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=f"pass root= or set {DATA_ENV_VAR}"):
        uci("yacht", download=False)
    with pytest.raises(FileNotFoundError, match=r"index_features\.txt"):
        uci_names()
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        uci("yacht", root=tmp_path / "nowhere")
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere is not a folder"):
        uci_names()


def test_unknown_dataset_lists_what_is_there(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"datasets found there: .*wine-quality-red.*yacht"):
        uci("concrete", root=UCI_ROOT)
    with pytest.raises(FileNotFoundError, match="datasets found there: none"):
        uci("yacht", root=tmp_path)
    with pytest.raises(ValueError, match="plain folder name"):
        uci("../uci/yacht", root=UCI_ROOT)


def test_missing_required_file_is_named(tmp_path):
    folder = copy_dataset("yacht", tmp_path)
    (folder / "index_target.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks the required file index_target\.txt"):
        uci("yacht", root=tmp_path)


def test_half_a_split_pair_is_an_error(tmp_path):
    folder = copy_dataset("yacht", tmp_path)
    (folder / "index_test_4.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"index_test_4\.txt is missing"):
        uci("yacht", 4, root=tmp_path)
    uci("yacht", 3, root=tmp_path)  # other splits unaffected


@pytest.mark.parametrize("split", [-1, 20, 100])
def test_bad_split_names_the_valid_range(split):
    with pytest.raises(ValueError, match=r"split must be in 0\.\.19"):
        uci("yacht", split, root=UCI_ROOT)


def test_non_integer_split_is_rejected():
    with pytest.raises(ValueError, match="split must be an integer"):
        uci("yacht", 1.0, root=UCI_ROOT)
    with pytest.raises(ValueError, match="split must be an integer"):
        uci("yacht", True, root=UCI_ROOT)
    assert uci("yacht", np.int64(1), root=UCI_ROOT)[0].shape == (277, 6)


def test_n_splits_file_sets_the_range(tmp_path):
    folder = copy_dataset("yacht", tmp_path, keep_splits=False)
    (folder / "n_splits.txt").write_text("3\n")
    with pytest.raises(ValueError, match=r"0\.\.2"):
        uci("yacht", 3, root=tmp_path)
    (folder / "n_splits.txt").unlink()  # absent: the standard 20
    assert uci("yacht", 19, root=tmp_path)[2].shape == (31, 6)


def test_non_finite_data_names_the_file(tmp_path):
    folder = copy_dataset("yacht", tmp_path)
    lines = (folder / "data.txt").read_text().splitlines()
    lines[10] = lines[10].replace("0.568", "nan", 1)
    (folder / "data.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"data\.txt holds 1 non-finite value.*row 10, column 1"):
        uci("yacht", root=tmp_path)


def test_ragged_or_text_data_is_a_clear_error(tmp_path):
    folder = copy_dataset("yacht", tmp_path)
    (folder / "data.txt").write_text("1 2 3\n4 five 6\n")
    with pytest.raises(ValueError, match=r"cannot parse .*data\.txt"):
        uci("yacht", root=tmp_path)
    (folder / "data.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"data\.txt is empty"):
        uci("yacht", root=tmp_path)


def test_row_indices_out_of_range(tmp_path):
    folder = copy_dataset("yacht", tmp_path)
    train = read_index(folder / "index_train_0.txt")
    train[5] = 308
    np.savetxt(folder / "index_train_0.txt", train, fmt="%d")
    message = r"index_train_0\.txt holds row index 308 outside 0\.\.307"
    with pytest.raises(ValueError, match=message):
        uci("yacht", 0, root=tmp_path)


def test_overlapping_split_is_rejected(tmp_path):
    folder = copy_dataset("yacht", tmp_path)
    test = read_index(folder / "index_test_0.txt")
    test[0] = read_index(folder / "index_train_0.txt")[0]
    np.savetxt(folder / "index_test_0.txt", test, fmt="%d")
    with pytest.raises(ValueError, match="share rows"):
        uci("yacht", 0, root=tmp_path)


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("index_features.txt", "0\n1\n7\n", r"column index 7 outside 0\.\.6"),
        ("index_features.txt", "0\n1\n6\n", "target column 6 is also listed as an input"),
        ("index_features.txt", "0\n0\n1\n", "more than once"),
        ("index_features.txt", "0\n1.5\n", "integer column indices"),
        ("index_target.txt", "5\n6\n", "exactly one column"),
        ("n_splits.txt", "0\n", "one positive integer"),
    ],
)
def test_malformed_column_files(tmp_path, filename, content, message):
    folder = copy_dataset("yacht", tmp_path)
    (folder / filename).write_text(content)
    with pytest.raises(ValueError, match=message):
        uci("yacht", root=tmp_path)
