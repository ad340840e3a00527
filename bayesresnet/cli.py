"""The ``bayesresnet`` command: demo, fit, predict and report.

Commands
--------
``bayesresnet demo [--out DIR] [--fast] [--seed 0] [--jobs 2]``
    Fits NUTS, MCLMC, mean-field VI, low-rank VI and a deep ensemble to the cubic toy (20 points),
    prints a comparison table with metrics on 1000 fresh test points, and writes
    ``DIR/index.html`` (the table and the five predictive bands side by side, see
    :func:`bayesresnet.report.compare_report`) plus one full report per method in
    ``DIR/<method>/`` (``index.html`` and ``posterior.nc``), and the table as ``DIR/summary.csv``.
    Timing (2 nearly idle cores, a fresh clone in a new virtual environment, 2026-12-07): 108 s
    of wall time with the fits in two worker processes (``--jobs 2``, the default), 125 s with
    torch's compiler cache empty (``TORCHINDUCTOR_CACHE_DIR`` a new folder, as on a fresh
    machine). MCLMC, whose 320 000 compiled steps per chain let its row pass on every seed
    tried (:data:`DEMO_SETTINGS`), takes 90-107 s in one worker; NUTS (21-22 s), the two VI
    fits and the ensemble share the other. Before the fused basis expansion
    (:func:`bayesresnet.resnet.combine_basis`): 127 s and 139 s, MCLMC 108-117 s. With
    220 000 sampling steps, before both: 107 s and 114 s, but the MCLMC
    row failed on 1 of 7 seeds, seed 0 among them since its noise is drawn in float32. Before
    MCLMC's longer runs: 74-110 s, with NUTS 39-81 s. Before VI's flat backend: 108 s, and
    159 s one after another (``--jobs 1``).
    The earlier settings (NUTS 300 + 300 iterations with trees of up to 127 steps, VI 3000 steps)
    took 829 s for NUTS alone at load 4-5, hence :data:`DEMO_SETTINGS`.
``bayesresnet fit DATA --target COL [--target COL ...] [--inputs COL ...] --out DIR``
    Fits a Bayesian ResNet to a data file and writes ``DIR/posterior.nc`` and ``DIR/index.html``.
    Options choose the network (``--basis``, ``--width``, ``--depth``, ``--rank``), the prior
    (``--prior``, ``--prior-scale``), the method and its settings (``--method``, ``--steps``,
    ``--batch-size``, ...) and where it computes (``--dtype``, ``--device``).
``bayesresnet predict RUN.nc DATA [--out predictions.csv]``
    Posterior predictive summaries at the inputs of a data file, as CSV.
``bayesresnet report RUN.nc [--test DATA] [--out DIR]``
    The HTML report of a saved run, optionally with test metrics and calibration.

Output folders
--------------
``fit`` and ``report`` write ``DIR`` as one unit: the run and its report go to a hidden sibling
folder (``.DIR.<random>.partial``), which then takes the place of ``DIR``, with Ctrl-C ignored
during the two renames. An interrupted or failed command leaves ``DIR`` as it was (and
nothing else); a folder never holds a new ``posterior.nc`` beside an old ``index.html``. Only a
kill (SIGKILL, power loss) between the two renames can leave ``DIR`` missing, with the previous
run in a hidden ``.DIR.<random>.old`` folder beside it. Because ``DIR`` is replaced as a
whole, it must be new, empty, or hold nothing but the files these commands write
(``index.html``, ``posterior.nc``): a folder with any other entry is refused, and so is the
current folder or a folder above it. ``predict`` writes its CSV to a temporary file that it
renames over ``--out``.

A command whose output is complete exits 0 even when Ctrl-C arrives afterwards (while the
final "wrote ..." line is printed, or while the process shuts down).

Data files
----------
A data file is either comma-separated (when its first line has a comma) or whitespace-separated.
Its first line is a header of column names when any of its fields is not a number; otherwise
there is no header. Every other line must hold one finite number per column; blank lines and
lines starting with ``#`` are skipped. A column is named by its header name or by its 0-based
number (a header name wins when a name is itself a number). Header names must be unique and not
empty (surrounding spaces do not count). Byte order marks (U+FEFF, invisible; one starts many
files saved on Windows) are dropped wherever they are. A CSV field is one line: a quote left
open ends with its line.

``fit`` stores the input and target columns in the run (``Posterior.extra["columns"]``).
``predict`` and ``report --test`` select the same columns: by name when the new file has a
header and the run was fitted on named columns, else by number; a headerless file with exactly
as many columns as the model has inputs is taken as the inputs in order (for ``predict``).

Errors about the user's files or arguments (missing file, unknown column, non-numeric data, a
file that is not a posterior, a column too large to standardize, predictions that are not
finite, an output folder that holds other files, ...) print one line
``bayesresnet: error: ...`` to stderr and exit with status 1 (2 for malformed command lines);
set ``BAYESRESNET_DEBUG=1`` to see the traceback instead.

The command, and the worker processes it spawns, fix glibc's allocator thresholds for
themselves (:func:`bayesresnet.tune_allocator`); a program that calls :func:`main` keeps its own.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bayesresnet.allocator import tune_allocator

__all__ = ["DEMO_SETTINGS", "RUN_FILES", "CLIError", "DataTable", "console", "main",
           "read_table"]

DEMO_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "nuts": {"num_samples": 150, "num_warmup": 150, "chains": 4, "max_tree_depth": 6},
        "mclmc": {"num_samples": 1000, "thinning": 300, "num_warmup": 20000, "chains": 4,
                  "compile_after": 0},
        "meanfield": {"steps": 1500, "num_draws": 500},
        "lowrank": {"steps": 1500, "num_draws": 500},
        "ensemble": {"members": 8, "steps": 2000},
    },
    "fast": {
        "nuts": {"num_samples": 40, "num_warmup": 40, "chains": 2, "max_tree_depth": 5,
                 "init_steps": 100},
        "mclmc": {"num_samples": 100, "thinning": 2, "num_warmup": 200, "chains": 2,
                  "init_steps": 100},
        "meanfield": {"steps": 300, "num_draws": 200},
        "lowrank": {"steps": 300, "num_draws": 200},
        "ensemble": {"members": 4, "steps": 300},
    },
}
"""Method settings of ``bayesresnet demo`` (full) and ``bayesresnet demo --fast``.

The full settings aim at the demo's budget of about two minutes on two idle cores; MCLMC takes
most of it, in one worker. NUTS's trees nearly always reach the depth cap on this posterior, so
its cost is about (num_warmup + num_samples) x 2**max_tree_depth batched gradients, and the
short run is not enough for the diagnostics to pass: the demo reports that, the honest outcome
of the budget.
Measured (docs/methods.rst, "NUTS on the demo network"): the data pin the network's function
down so tightly that a stable leapfrog step is 0.003-0.013 while the weights spread over the
prior's scale (marginal sd about 1), so a trajectory needs 1000-2000 steps to turn; a run that
passes ``diagnose()`` takes ``max_tree_depth=12``, ``target_accept=0.9`` and about a million
batched gradients (NumPyro: 40 s; ours: 741 s, compiled after the first 20 000). No prior, mass
matrix or warmup schedule we tried changed that without a worse fit, and the demo's budget
buys 60 000-140 000 gradients, so the NUTS row fails here by design of the budget, not of the
adaptation. MCLMC's row passes: 4 chains of 20 000 tuning and 300 000 sampling steps, the
whole step compiled from the first (``compile_after=0``; docs/methods.rst), chain-wise R-hat
1.01, bulk ESS above 290 and tail ESS above 330 per chain, energy error 0.001 per dimension,
and draws that agree with a NUTS reference (``benchmarks/results/mclmc_bias.md``). Over seeds
0-7 it passed every time with 300 000 sampling steps (lowest per-chain ESS 156 with the
current code, 141 before its fused basis expansion) and with 250 000 (114), and 6 of 7 times
with 200 000 (``benchmarks/results/mclmc_demo_seeds.md``); the margin of 300 000 over
250 000 costs the demo about 15 s. VI at these step counts has
not converged either, and its PSIS k-hat says so. See the module docstring for measured
timings."""

# Demo problem: the cubic toy with a small linear-basis ResNet.
DEMO_TRAIN_POINTS = 20
DEMO_TEST_POINTS = 1000
DEMO_NET = {"width": 10, "depth": 8, "basis": "linear"}


class CLIError(Exception):
    """A problem with the user's files or arguments, reported as one line."""


# ------------------------------------------------------------------------------- data files
@dataclass
class DataTable:
    """A numeric table read from a data file.

    Attributes
    ----------
    path : str
    names : list of str or None
        Header names (None when the file has no header).
    values : ndarray (rows, columns)
    """

    path: str
    names: list[str] | None
    values: np.ndarray

    @property
    def num_columns(self) -> int:
        return self.values.shape[1]

    def column(self, spec: str | int) -> int:
        """The 0-based index of a column given by header name or number."""
        text = str(spec).strip()
        if self.names is not None and text in self.names:
            if self.names.count(text) > 1:
                raise CLIError(f"{self.path}: column name {text!r} appears more than once")
            return self.names.index(text)
        if text.isdigit():
            index = int(text)
            if index >= self.num_columns:
                raise CLIError(f"{self.path}: column {index} is out of range (the file has "
                               f"{self.num_columns} columns, numbered 0 to "
                               f"{self.num_columns - 1})")
            return index
        known = (", ".join(self.names) if self.names is not None
                 else f"numbers 0 to {self.num_columns - 1} (the file has no header)")
        raise CLIError(f"{self.path}: unknown column {text!r}; columns are {known}")

    def label(self, index: int) -> str | int:
        """The column's header name, or its number without a header."""
        return self.names[index] if self.names is not None else index


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_fields(path: str, number: int, line: str) -> list[str]:
    """The stripped fields of one CSV line (a quote left open ends with the line)."""
    try:
        return [field.strip() for field in next(csv.reader([line]), [])]
    except csv.Error as err:
        raise CLIError(f"{path} line {number}: {err}") from None


def read_table(path: str | os.PathLike) -> DataTable:
    """Read a comma- or whitespace-separated numeric file (see the module docstring).

    Raises
    ------
    CLIError
        Missing or empty file, ragged rows, non-numeric or non-finite values, empty or repeated
        header names.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a folder, not a data file")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().replace("\ufeff", "")  # byte order marks, invisible
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not a text data file (not UTF-8 text)") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise CLIError(f"{path} holds no data")
    comma = "," in lines[0][1]
    rows = [(number, _csv_fields(path, number, line) if comma else line.split())
            for number, line in lines]
    names = None
    if not all(_is_number(field) for field in rows[0][1]):
        names = rows[0][1]
        rows = rows[1:]
        if any(not name for name in names):
            raise CLIError(f"{path}: the header has an empty column name")
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise CLIError(f"{path}: column name {name!r} appears more than once in the "
                               f"header (columns {names.index(name)} and {index}); names must "
                               "be unique")
    if not rows:
        raise CLIError(f"{path} has a header but no data rows")
    width = len(names) if names is not None else len(rows[0][1])
    values = np.empty((len(rows), width))
    for r, (number, fields) in enumerate(rows):
        if len(fields) != width:
            raise CLIError(f"{path} line {number}: {len(fields)} fields, expected {width}")
        for c, field in enumerate(fields):
            try:
                value = float(field)
            except ValueError:
                column = names[c] if names is not None else c
                raise CLIError(f"{path} line {number}, column {column!r}: {field!r} is not a "
                               "number") from None
            if not math.isfinite(value):
                column = names[c] if names is not None else c
                raise CLIError(f"{path} line {number}, column {column!r}: {field!r} is not a "
                               "finite number")
            values[r, c] = value
    return DataTable(path, names, values)


def _run_columns(posterior: Any) -> dict[str, Any] | None:
    columns = posterior.extra.get("columns")
    if isinstance(columns, dict) and isinstance(columns.get("inputs"), list) and \
            isinstance(columns.get("targets"), list):
        return columns
    return None


def _select(table: DataTable, labels: list[Any], numbers: list[int], named: bool) -> list[int]:
    """Column indices in ``table`` of the run's columns (by name or by number)."""
    if named and table.names is not None:
        if len(set(map(str, labels))) != len(labels):
            raise CLIError(f"the run's columns {', '.join(map(str, labels))} repeat a name, so "
                           "they cannot be found by name; fit it again with unique names")
        return [table.column(str(label)) for label in labels]
    for number in numbers:
        if number >= table.num_columns:
            raise CLIError(f"{table.path} has {table.num_columns} columns but the run uses "
                           f"column {number}")
    return list(numbers)


def _inputs_for(posterior: Any, table: DataTable, with_targets: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs (and targets) of a run's columns from a new data file."""
    in_dim, out_dim = posterior.model.in_dim, posterior.model.out_dim
    columns = _run_columns(posterior)
    if columns is None:
        wanted = in_dim + (out_dim if with_targets else 0)
        if table.num_columns != wanted:
            what = (f"{in_dim} input and {out_dim} target column(s), in that order"
                    if with_targets else f"{in_dim} input column(s)")
            raise CLIError(f"the run stores no column names, so {table.path} must hold exactly "
                           f"{what}; it has {table.num_columns}")
        x = table.values[:, :in_dim]
        return x, (table.values[:, in_dim:] if with_targets else None)
    named = bool(columns.get("named"))
    if not with_targets and table.num_columns == in_dim and \
            (table.names is None or not named):
        return table.values, None
    x_cols = _select(table, columns["inputs"], columns["input_numbers"], named)
    x = table.values[:, x_cols]
    if not with_targets:
        return x, None
    y_cols = _select(table, columns["targets"], columns["target_numbers"], named)
    return x, table.values[:, y_cols]


# ------------------------------------------------------------------------------- output files
RUN_FILES = ("index.html", "posterior.nc")
"""The files ``fit`` and ``report`` write into their output folder: the only entries a folder
may hold for them to replace it (see the module docstring)."""


def _output_folder(out: str | os.PathLike) -> Path:
    """The absolute, resolved ``--out`` folder, checked before any work is done.

    Raises
    ------
    CLIError
        ``out`` is a file, the current folder or above it, or a folder holding entries other
        than :data:`RUN_FILES`.
    """
    target = Path(out).resolve()
    if target.exists() and not target.is_dir():
        raise CLIError(f"{out} exists and is not a folder")
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise CLIError(f"{out} is the current folder or holds it; the output folder is "
                       "replaced as a whole, so give a folder of its own, e.g. --out run")
    if target.is_dir():
        foreign = sorted(entry.name for entry in target.iterdir()
                         if entry.name not in RUN_FILES or entry.is_symlink()
                         or not entry.is_file())
        if foreign:
            listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise CLIError(f"{out} holds files bayesresnet did not write ({listed}); the output "
                           "folder is replaced as a whole, so give a new or empty folder, or "
                           f"one that holds only {' and '.join(RUN_FILES)} of an earlier run")
    return target


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A new hidden sibling folder of ``target`` to write the output into; removed on exit
    unless :func:`_commit_folder` has moved it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{secrets.token_hex(6)}.partial"
    staging.mkdir()
    try:
        if target.is_dir():
            shutil.copymode(target, staging)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Ignore SIGINT (Ctrl-C) during the block, a short step that must not stop half-way. Only
    the main thread can change signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is None:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _commit_folder(staging: Path, target: Path, args: argparse.Namespace) -> None:
    """Move ``staging`` into the place of ``target`` (checked again first) with Ctrl-C
    ignored, and mark the command's output complete (``args.committed``)."""
    _output_folder(target)
    with _sigint_held():
        if target.exists():
            old = target.parent / f".{target.name}.{secrets.token_hex(6)}.old"
            os.rename(target, old)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
        args.committed = True


def _write_file_atomically(path: Path, write: Callable[[Any], None],
                           args: argparse.Namespace) -> None:
    """Write a text file through a temporary sibling that is renamed over ``path`` only when
    complete (through a symbolic link: into its target), and mark the command's output complete
    (``args.committed``)."""
    path = path.resolve()
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.partial"
    try:
        with open(temporary, "x", newline="", encoding="utf-8") as handle:
            write(handle)
        with _sigint_held():
            os.replace(temporary, path)
            args.committed = True
    finally:
        if temporary.exists():
            temporary.unlink()


# ------------------------------------------------------------------------------- commands
@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads, restoring the previous number afterwards."""
    import torch

    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _format_rows(rows: list[dict[str, Any]]) -> str:
    """The demo's table; MCMC rows show both R-hat figures and the rule that judged them."""
    header = (f"{'method':<10} {'RMSE':>7} {'NLL':>7} {'cov95':>6} {'fit s':>7} "
              f"{'convergence':<20} {'R-hat pooled / chain-wise':<32} {'diagnose':<8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        conv = (f"{r['convergence']} {r['convergence_value']:.3g}" if r["convergence"] else "-")
        rhat = "-"
        if r.get("rhat_rule"):
            rhat = (f"{r['rhat_pooled']:.3f} / {r['rhat_chainwise']:.3f} "
                    f"({r['rhat_rule']} rule)")
        lines.append(f"{r['name']:<10} {r['rmse']:7.3f} {r['nll']:7.3f} "
                     f"{r['coverage_95']:6.3f} {r['fit_seconds']:7.1f} {conv:<20} {rhat:<32} "
                     f"{'ok' if r['diagnostics_ok'] else 'FAILED':<8}")
    if any(r.get("rhat_rule") for r in rows):
        lines.append("R-hat rules: chain-wise = chains started at distinct modes, each must "
                     "mix within its own\n  (each chain's split R-hat is checked; the pooled "
                     "R-hat measures mode diversity);\n  pooled = chains started from one "
                     "distribution must agree (the pooled R-hat is checked).")
    return "\n".join(lines)


def _write_summary_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = ["name", "method", "data", "rmse", "nll", "coverage_95", "width_95", "crps",
            "fit_seconds", "convergence", "convergence_value", "diagnostics_ok", "rhat_rule",
            "rhat_pooled", "rhat_chainwise"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for r in rows:
            writer.writerow([r[k] for k in keys])


def _cmd_demo(args: argparse.Namespace) -> int:
    import bayesresnet as brn
    from bayesresnet.report import compare_report, shared_results, summary_rows

    fast = args.fast or os.environ.get("BAYESRESNET_FAST", "") not in ("", "0")
    settings = DEMO_SETTINGS["fast" if fast else "full"]
    out = Path(args.out)
    x, y = brn.data.cubic(DEMO_TRAIN_POINTS, seed=args.seed)
    x_test, y_test = brn.data.cubic(DEMO_TEST_POINTS, seed=args.seed + 1)
    net = brn.ResNet(in_dim=1, out_dim=1, **DEMO_NET)
    model = brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                               likelihood=brn.likelihoods.Gaussian())
    methods = {"nuts": brn.NUTS(**settings["nuts"]),
               "mclmc": brn.MCLMC(**settings["mclmc"]),
               "meanfield": brn.MeanField(**settings["meanfield"]),
               "lowrank": brn.LowRank(**settings["lowrank"]),
               "ensemble": brn.Ensemble(**settings["ensemble"])}
    print(f"bayesresnet demo: cubic toy, {DEMO_TRAIN_POINTS} training points, "
          f"{DEMO_TEST_POINTS} test points; ResNet width {DEMO_NET['width']}, depth "
          f"{DEMO_NET['depth']}, {DEMO_NET['basis']} basis ({model.dim} parameters)"
          + (" [fast settings]" if fast else ""), flush=True)
    start = time.perf_counter()
    posteriors = _demo_fits(model, x, y, methods, args)
    with _threads(args.threads):
        with shared_results():  # the table's predictions serve the pages too
            rows = summary_rows(posteriors, x_test, y_test)
            print()
            print(_format_rows(rows))
            page = compare_report(posteriors, out, x_test, y_test,
                                  title="bayesresnet demo: the cubic toy")
    _write_summary_csv(rows, out / "summary.csv")
    print(f"\nreports written to {page} (one per method in {out}/<method>/); total "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def _fit_quietly(model: Any, x: np.ndarray, y: np.ndarray, method: Any, seed: int,
                 threads: int) -> Any:
    """One demo fit in a worker process: no progress bar, no convergence warnings (the table
    reports convergence). The worker is a process the command spawned, so it tunes its
    allocator as :func:`console` does."""
    import bayesresnet as brn
    from bayesresnet.diagnostics import ConvergenceWarning

    tune_allocator()
    with warnings.catch_warnings(), _threads(threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return brn.fit(model, x, y, method=method, seed=seed, progress=False)


def _demo_fits(model: Any, x: np.ndarray, y: np.ndarray, methods: dict[str, Any],
               args: argparse.Namespace) -> dict[str, Any]:
    """Fit every method: one after another here (``--jobs 1``), or in ``--jobs`` worker
    processes, the samplers first because they take longest. The
    seeds are the same either way, so are the draws."""
    import bayesresnet as brn

    def done(name: str, post: Any) -> None:
        print(f"  {name:<10} fitted in {post.fit_seconds:6.1f} s", flush=True)

    jobs = args.jobs if args.jobs is not None else min(2, os.cpu_count() or 1)
    if jobs == 1:
        posteriors = {}
        with _threads(args.threads):
            for name, method in methods.items():
                posteriors[name] = brn.fit(model, x, y, method=method, seed=args.seed,
                                           progress=_progress(args))
                done(name, posteriors[name])
        return posteriors
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # "spawn": a forked copy of a process that already ran torch can deadlock in its threads.
    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(methods))
    print(f"  fitting in {workers} processes", flush=True)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {name: pool.submit(_fit_quietly, model, x, y, method, args.seed, args.threads)
                   for name, method in methods.items()}
        names = {future: name for name, future in futures.items()}
        for future in as_completed(names):
            done(names[future], future.result())
        return {name: future.result() for name, future in futures.items()}


_METHOD_FLAGS = {
    "nuts": {"num_samples": "num_samples", "num_warmup": "num_warmup", "chains": "chains"},
    "meanfield": {"steps": "steps", "num_draws": "num_draws", "batch_size": "batch_size"},
    "lowrank": {"steps": "steps", "num_draws": "num_draws", "batch_size": "batch_size"},
    "ensemble": {"steps": "steps", "members": "members", "batch_size": "batch_size"},
    "map": {"steps": "steps", "batch_size": "batch_size"},
    "swag": {"members": "members", "num_draws": "num_draws", "batch_size": "batch_size"},
    "laplace": {"steps": "steps", "members": "members", "num_draws": "num_draws",
                "batch_size": "batch_size"},
    "mclmc": {"num_samples": "num_samples", "num_warmup": "num_warmup", "chains": "chains"},
}
"""The method-setting flags of ``fit`` that each method takes: flag (argparse dest) -> the
setting of the method class it sets. ``--batch-size`` (minibatches) only for the methods
whose class has a ``batch_size`` setting; NUTS and MCLMC use every point at every step."""

# Flags of 'fit' that set a method's settings, in the order of the parser.
_SETTING_FLAGS = ("num_samples", "num_draws", "num_warmup", "chains", "steps", "members",
                  "batch_size")

# Deprecated flags of 'fit': old flag -> the new flags it stood for (the first one the method
# takes is meant).
_OLD_FIT_FLAGS = {"samples": ("num_samples", "num_draws"), "warmup": ("num_warmup",)}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _renamed_flag(args: argparse.Namespace, old: str, new: str) -> None:
    """Move a deprecated flag's value to its new flag, with a note on stderr."""
    value = getattr(args, old)
    if value is None:
        return
    if getattr(args, new) is not None:
        raise CLIError(f"{_flag(old)} is the old name of {_flag(new)}; give only {_flag(new)}")
    print(f"bayesresnet: {_flag(old)} is deprecated; use {_flag(new)}", file=sys.stderr)
    setattr(args, new, value)


def _method(args: argparse.Namespace) -> Any:
    from bayesresnet.inference.fit import METHODS

    allowed = _METHOD_FLAGS[args.method]
    for old, news in _OLD_FIT_FLAGS.items():
        _renamed_flag(args, old, next((new for new in news if new in allowed), news[0]))
    settings = {}
    for flag in _SETTING_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        if flag not in allowed:
            takers = sorted(name for name, flags in _METHOD_FLAGS.items() if flag in flags)
            raise CLIError(f"{_flag(flag)} does not apply to method {args.method!r} (its "
                           f"flags: {', '.join(_flag(f) for f in allowed)}; {_flag(flag)} "
                           f"applies to {', '.join(takers)})")
        settings[allowed[flag]] = value
    return METHODS[args.method](**settings)


def _fit_dtype_device(args: argparse.Namespace) -> tuple[Any, Any]:
    """The torch dtype of ``--dtype`` and the device of ``--device``, checked before any work
    (a CUDA device that this machine lacks is an error)."""
    import torch

    from bayesresnet.inference.fit import check_dtype_device

    try:
        return check_dtype_device(getattr(torch, args.dtype), args.device)
    except ValueError as err:
        raise CLIError(f"--device {args.device}: {err}") from None


def _cmd_fit(args: argparse.Namespace) -> int:
    import bayesresnet as brn
    from bayesresnet.report import report

    table = read_table(args.data)
    targets = [table.column(spec) for spec in args.target]
    if len(set(targets)) != len(targets):
        raise CLIError("the same column is given twice as --target")
    if args.inputs:
        inputs = [table.column(spec) for spec in args.inputs]
        if len(set(inputs)) != len(inputs):
            raise CLIError("the same column is given twice in --inputs")
        both = sorted(set(inputs) & set(targets))
        if both:
            raise CLIError(f"column(s) {', '.join(str(table.label(c)) for c in both)} are "
                           "both inputs and targets")
    else:
        inputs = [c for c in range(table.num_columns) if c not in targets]
        if not inputs:
            raise CLIError(f"{table.path} has no columns left as inputs besides the targets")
    method = _method(args)
    dtype, device = _fit_dtype_device(args)
    if args.rank is not None and args.rank > args.width:
        raise CLIError(f"--rank {args.rank} exceeds --width {args.width}: low-rank hidden "
                       "weights have a rank from 1 to the width")
    x, y = table.values[:, inputs], table.values[:, targets]
    if args.batch_size is not None and args.batch_size > len(x):
        raise CLIError(f"--batch-size {args.batch_size} exceeds the {len(x)} rows of "
                       f"{table.path}")
    for columns, values in ((inputs, x), (targets, y)):
        try:  # fit() would raise the same, but without the file's column names
            brn.data.Standardizer().fit(values, names=[table.label(c) for c in columns])
        except ValueError as err:
            raise CLIError(f"{table.path}: {err}") from None
    test = None
    if args.test is not None:
        test_table = read_table(args.test)
        named = table.names is not None
        labels = [table.label(c) for c in inputs], [table.label(c) for c in targets]
        test = (test_table.values[:, _select(test_table, labels[0], inputs, named)],
                test_table.values[:, _select(test_table, labels[1], targets, named)])
    target_folder = _output_folder(args.out)  # checked again when the output is swapped in
    net = brn.ResNet(in_dim=len(inputs), out_dim=len(targets), width=args.width,
                     depth=args.depth, basis=args.basis, rank=args.rank)
    prior = brn.priors.from_name(args.prior, args.prior_scale)
    model = brn.BayesianResNet(net, prior=prior, likelihood=brn.likelihoods.Gaussian())
    try:
        method.validate(model)  # e.g. Laplace takes the normal prior only
    except ValueError as err:
        raise CLIError(f"--method {args.method} cannot fit this model (--prior {args.prior}): "
                       f"{err}") from None
    with _threads(args.threads):
        post = brn.fit(model, x, y, method=method, seed=args.seed, progress=_progress(args),
                       dtype=dtype, device=device)
        post.extra["columns"] = {
            "named": table.names is not None,
            "inputs": [table.label(c) for c in inputs],
            "targets": [table.label(c) for c in targets],
            "input_numbers": inputs,
            "target_numbers": targets,
        }
        with _staging(target_folder) as staging:
            report(post, staging, *(test if test is not None else (None, None)))
            print(f"fitted {method.name} in {post.fit_seconds:.1f} s: {len(x)} rows, inputs "
                  f"{', '.join(map(str, post.extra['columns']['inputs']))}; targets "
                  f"{', '.join(map(str, post.extra['columns']['targets']))}")
            print(post.diagnose())
            _commit_folder(staging, target_folder, args)
    print(f"wrote {Path(args.out) / 'posterior.nc'} and {Path(args.out) / 'index.html'}")
    return 0


def _load(path: str) -> Any:
    from bayesresnet.export import load

    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    return load(path)


def _cmd_predict(args: argparse.Namespace) -> int:
    post = _load(args.run)
    table = read_table(args.data)
    x, _ = _inputs_for(post, table, with_targets=False)
    _renamed_flag(args, "draws", "num_draws")
    pred = post.predict(x, num_draws=args.num_draws)
    lower, upper = pred.interval(0.95)
    out_dim = post.model.out_dim
    columns = _run_columns(post)
    target_names = ([str(t) for t in columns["targets"]] if columns is not None
                    else [f"y{j}" for j in range(out_dim)])
    fields = {"mean": pred.mean, "std": pred.std, "epistemic_std": pred.epistemic_std,
              "aleatoric_std": pred.aleatoric_std, "lower_95": lower, "upper_95": upper}
    header, blocks = [], []
    for j in range(out_dim):
        for key, values in fields.items():
            header.append(key if out_dim == 1 else f"{target_names[j]}_{key}")
            blocks.append(np.asarray(values, dtype=np.float64)[:, j])
    table_out = np.stack(blocks, axis=1)
    bad = np.flatnonzero(~np.isfinite(table_out).all(axis=1))
    if bad.size:
        raise CLIError(f"the predictions at {bad.size} of {len(x)} rows of {table.path} are not "
                       f"finite (first: data row {bad[0] + 1}), beyond the float64 range; "
                       "their inputs or the run's values are too large or too far from the "
                       "training data; no file written")
    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"{out} is a folder; --out needs a file name")
    if not out.parent.is_dir():
        raise CLIError(f"folder {out.parent} does not exist")

    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in table_out:
            writer.writerow([repr(float(v)) for v in row])

    _write_file_atomically(out, write, args)
    print(f"wrote {len(x)} predictions ({', '.join(header[:len(fields)])}"
          f"{' per output' if out_dim > 1 else ''}) to {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bayesresnet.report import report

    run = Path(args.run)
    out = Path(args.out) if args.out is not None else run.with_name(f"{run.stem}_report")
    post = _load(args.run)
    x_test = y_test = None
    if args.test is not None:
        x_test, y_test = _inputs_for(post, read_table(args.test), with_targets=True)
    target_folder = _output_folder(out)
    with _staging(target_folder) as staging:
        report(post, staging, x_test, y_test)
        _commit_folder(staging, target_folder, args)
    print(f"wrote {out / 'index.html'}")
    return 0


# ------------------------------------------------------------------------------- parser
def _int_at_least(minimum: int, kind: str):
    """An argparse type: an integer >= minimum, else an error naming ``kind``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a {kind} integer, got {value}")
        return value
    return parse


_positive = _int_at_least(1, "positive")
_non_negative = _int_at_least(0, "non-negative")


def _positive_float(text: str) -> float:
    """An argparse type: a positive, finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayesresnet`` command."""
    from bayesresnet._version import __version__
    from bayesresnet.inference.fit import FIT_DTYPES, METHODS
    from bayesresnet.priors import NAMED as NAMED_PRIORS

    parser = argparse.ArgumentParser(
        prog="bayesresnet",
        description="Bayesian weight-parameterized residual networks: fit, predict, report.",
        epilog="Run 'bayesresnet COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"bayesresnet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="fit five methods to the cubic toy and compare them",
        description="Fit NUTS, MCLMC, mean-field VI, low-rank VI and a deep ensemble to the cubic "
                    "toy (20 points; ResNet width 10, depth 8, linear basis), print RMSE, NLL "
                    "and 95%% coverage on 1000 fresh test points with each method's fit time "
                    "and convergence check, and write OUT/index.html (comparison), "
                    "OUT/<method>/index.html and posterior.nc (one report per method) and "
                    "OUT/summary.csv.")
    demo.add_argument("--out", default="demo_report", help="output folder (default: %(default)s)")
    demo.add_argument("--fast", action="store_true",
                      help="tiny settings for a quick check (also BAYESRESNET_FAST=1)")
    demo.add_argument("--seed", type=_non_negative, default=0, help="seed (default: 0)")
    demo.add_argument("--threads", type=_positive, default=1,
                      help="torch threads; the demo's model is tiny, so 1 is fastest "
                           "(default: 1)")
    demo.add_argument("--jobs", type=_positive, default=None,
                      help="fits running at once, each in its own process (no progress bars); "
                           "NUTS takes about as long as the other three together, so 2 nearly "
                           "halves the fitting time on two cores; 1 fits them one after "
                           "another in this process (default: 2, or 1 on a one-core machine)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_cmd_demo)

    fit = commands.add_parser(
        "fit", help="fit a Bayesian ResNet to a data file",
        description="Fit a Bayesian ResNet to DATA (CSV with a header, columns by name, or "
                    "whitespace-separated numbers, columns by 0-based number) and write "
                    "OUT/posterior.nc and the report OUT/index.html. Method settings not given "
                    "are the method's defaults.")
    fit.add_argument("data", metavar="DATA", help="training data file")
    fit.add_argument("--target", action="append", required=True, metavar="COL",
                     help="target column (repeat for several outputs)")
    fit.add_argument("--inputs", nargs="+", metavar="COL",
                     help="input columns (default: every column that is not a target)")
    fit.add_argument("--method", choices=sorted(METHODS), default="nuts",
                     help="inference method (default: %(default)s)")
    fit.add_argument("--basis", default="cubic",
                     help="depth basis: piecewise, constant, linear, cubic, legendre<k>, "
                          "monomial<k> (default: %(default)s)")
    fit.add_argument("--width", type=_positive, default=16, help="hidden width (default: 16)")
    fit.add_argument("--depth", type=_positive, default=8, help="residual steps (default: 8)")
    fit.add_argument("--rank", type=_positive,
                     help="low-rank hidden weights W(t) = U(t) V(t)^T of this rank, at most the "
                          "width (default: dense)")
    fit.add_argument("--prior", choices=sorted(NAMED_PRIORS), default="normal",
                     help="prior on the network's parameters: normal, hierarchical, or a depth "
                          "prior (random_walk, a stationary walk over depth; decaying; "
                          "horseshoe; not with --method laplace) "
                          "(default: %(default)s)")
    fit.add_argument("--prior-scale", type=_positive_float, default=1.0, metavar="SCALE",
                     help="scale of the prior (standardized units): the normal and depth priors' "
                          "scale, the hierarchical prior's hyper_scale (default: 1.0)")
    fit.add_argument("--seed", type=_non_negative, default=0, help="seed (default: 0)")
    fit.add_argument("--out", required=True, help="output folder")
    fit.add_argument("--test", metavar="DATA",
                     help="held-out data with the same columns: test metrics in the report")
    fit.add_argument("--num-samples", type=_positive,
                     help="draws kept per chain (NUTS, MCLMC)")
    fit.add_argument("--num-draws", type=_positive,
                     help="draws from the fitted approximation (meanfield, lowrank, swag, "
                          "laplace)")
    fit.add_argument("--num-warmup", type=_non_negative,
                     help="warmup (tuning) iterations per chain, discarded (NUTS, MCLMC)")
    fit.add_argument("--samples", type=_positive, help=argparse.SUPPRESS)  # deprecated
    fit.add_argument("--warmup", type=_non_negative, help=argparse.SUPPRESS)  # deprecated
    fit.add_argument("--chains", type=_positive, help="chains (NUTS, MCLMC)")
    fit.add_argument("--steps", type=_positive,
                     help="optimization steps (VI, ensemble, MAP, Laplace)")
    fit.add_argument("--members", type=_positive,
                     help="members: independent fits (ensemble, SWAG, Laplace)")
    fit.add_argument("--batch-size", type=_positive, metavar="N",
                     help="minibatch size of the optimizer (meanfield, lowrank, ensemble, map, "
                          "swag, laplace; default: the method's)")
    fit.add_argument("--dtype", choices=[str(d).removeprefix("torch.") for d in FIT_DTYPES],
                     default="float64",
                     help="floating type the fit computes in; the saved draws are float64 "
                          "either way (default: %(default)s)")
    fit.add_argument("--device", default="cpu",
                     help="where the fit computes: cpu, cuda, cuda:1, ... (default: %(default)s)")
    fit.add_argument("--threads", type=_positive, help="torch threads (default: torch's)")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    fit.set_defaults(handler=_cmd_fit)

    predict = commands.add_parser(
        "predict", help="posterior predictive summaries at new inputs, as CSV",
        description="Predict at the inputs of DATA with a saved run. Writes the columns mean, "
                    "std, epistemic_std, aleatoric_std, lower_95, upper_95 (prefixed by the "
                    "target name with several outputs), one row per row of DATA. Inputs are "
                    "the run's input columns, by name when DATA has a header, else by number; "
                    "a headerless DATA with exactly as many columns as the model has inputs is "
                    "taken as the inputs in order.")
    predict.add_argument("run", metavar="RUN.nc", help="a run saved by 'bayesresnet fit'")
    predict.add_argument("data", metavar="DATA", help="data file with the input columns")
    predict.add_argument("--out", default="predictions.csv",
                         help="output CSV file (default: %(default)s)")
    predict.add_argument("--num-draws", type=_positive,
                         help="use a random subset of this many posterior draws")
    predict.add_argument("--draws", type=_positive, help=argparse.SUPPRESS)  # deprecated
    predict.set_defaults(handler=_cmd_predict)

    rep = commands.add_parser(
        "report", help="HTML report of a saved run",
        description="Write the HTML diagnostic report of a saved run (and a copy of the run as "
                    "posterior.nc) into OUT. With --test, adds test metrics and a calibration "
                    "curve; the test file needs the run's input and target columns.")
    rep.add_argument("run", metavar="RUN.nc", help="a saved run")
    rep.add_argument("--test", metavar="DATA", help="held-out data with inputs and targets")
    rep.add_argument("--out", help="output folder (default: RUN_report next to RUN.nc)")
    rep.set_defaults(handler=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bayesresnet`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 1 for an error in the user's files or arguments (one line
        on stderr), 2 for a malformed command line (argparse's usage message), 130 when
        interrupted before the command's output was complete (0 after: see the module
        docstring).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    handler: Callable[[argparse.Namespace], int] = args.handler
    from bayesresnet.diagnostics import ConvergenceWarning
    from bayesresnet.export import PosteriorFileError

    args.committed = False  # set once the command's output is complete
    try:
        with warnings.catch_warnings():
            # Every command prints or writes the diagnostics itself.
            warnings.simplefilter("ignore", ConvergenceWarning)
            return handler(args)
    except KeyboardInterrupt:
        if args.committed:
            return 0
        print("bayesresnet: interrupted", file=sys.stderr)
        return 130
    except (CLIError, PosteriorFileError, ValueError, OSError) as err:
        if os.environ.get("BAYESRESNET_DEBUG", "") not in ("", "0"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"bayesresnet: error: {message}", file=sys.stderr)
        return 1


def console(argv: Sequence[str] | None = None) -> int:
    """Entry point of the installed ``bayesresnet`` command and of ``python -m bayesresnet``.

    The process is the command's own, so it fixes glibc's allocator thresholds first
    (:func:`bayesresnet.tune_allocator`: freed tensors are reused instead of faulted in anew);
    then it runs :func:`main` on ``argv`` and returns its exit status. Once :func:`main` has
    returned, Ctrl-C is ignored, so that a SIGINT while the interpreter shuts down cannot turn
    a finished command's status into death by signal.
    """
    tune_allocator()
    status = main(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status
