"""The package's layering (docs/architecture.rst): module imports form no cycle, no module
imports another's private names, and ``Posterior`` is built with keywords only.

The import graph is read from the source (the AST of every module), so it counts imports inside
functions as well as at the top, which is where a cycle broken by a late import hides. Imports
under ``if TYPE_CHECKING:`` are for annotations only and do not count.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import bayesresnet as brn
from bayesresnet import cli
from bayesresnet.data import Standardizer
from bayesresnet.inference.base import InferenceMethod, current_settings
from bayesresnet.pyro_interop import PyroGuide, PyroMCMC

PACKAGE = Path(brn.__file__).resolve().parent


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    """Dotted name of the module at ``path`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def package_modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, whether it is a package)."""
    return dict((_module_name(path, root)[0], (path, _module_name(path, root)[1]))
                for path in sorted(root.rglob("*.py")))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs at some point: top level, in functions and classes,
    in ``try``/``if`` blocks; not the body of ``if TYPE_CHECKING:`` (its ``else`` counts)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.orelse:
                    visit_statement(statement)
                continue
            visit_statement(child)

    def visit_statement(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        visit(node)

    visit(tree)
    return found


def _source_module(node: ast.ImportFrom, name: str, is_package: bool) -> str | None:
    """The absolute module an ``ImportFrom`` in module ``name`` reads from."""
    if node.level == 0:
        return node.module
    base = name.split(".") if is_package else name.split(".")[:-1]
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool,
                   modules: set[str]) -> list[tuple[str, str | None]]:
    """(package module imported, name taken from it or None for a whole module) per alias.

    ``from . import x`` names the submodule ``x`` when there is one, so a module that imports
    its sibling through the package is not counted as importing the package's ``__init__``.
    """
    targets: list[tuple[str, str | None]] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in modules:
                targets.append((alias.name, None))
        return targets
    source = _source_module(node, name, is_package)
    if source is None:
        return targets
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        if submodule in modules:
            targets.append((submodule, None))
        elif source in modules:
            targets.append((source, alias.name))
    return targets


def import_graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """The runtime import graph of the package (module -> modules it imports) and the imports
    of private names (``_x``, not dunders) from another module of the package."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in runtime_imports(tree):
            for target, imported in import_targets(node, name, is_package, set(modules)):
                # A module reached by its own dotted prefix (``bayesresnet.inference`` from
                # ``bayesresnet.inference.nuts``) is a parent package that Python imports
                # first anyway; only an explicit import of it from inside counts, as an edge.
                if target != name:
                    graph[name].add(target)
                if imported is not None and imported.startswith("_") and \
                        not (imported.startswith("__") and imported.endswith("__")):
                    private.append(f"{name} (line {node.lineno}) imports {imported} from "
                                   f"{target}")
    return graph, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle is not None:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle is not None:
                return cycle
    return None


# ----------------------------------------------------------------------- the checks themselves
def test_the_module_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert graph.get("bayesresnet.posterior")  # the graph is read at all
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_private_name_of_another():
    _, private = import_graph()
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def test_the_file_format_and_the_run_modules_import_neither_inference_nor_posterior():
    graph, _ = import_graph()

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for low in ("fileformat", "convert", "diagnostics", "stacking", "validation"):
        below = reachable(f"bayesresnet.{low}")
        assert "bayesresnet.posterior" not in below, low
        assert not any(m.startswith("bayesresnet.inference") for m in below), (low, below)


def test_posterior_takes_keywords_only():
    model = brn.BayesianResNet(brn.ResNet(in_dim=1, out_dim=1, width=2, depth=2,
                                          basis=brn.Constant()))
    x = np.linspace(-1, 1, 5)[:, None]
    y = np.sin(x)
    draws = model.sample_prior(0, (1, 3))
    settings = dict(model=model, draws=draws, stats={}, method=brn.MAP(),
                    x_scaler=Standardizer().fit(torch.as_tensor(x)),
                    y_scaler=Standardizer().fit(torch.as_tensor(y)), seed=0, fit_seconds=1.0,
                    x_train=x, y_train=y)
    post = brn.Posterior(**settings)
    assert post.num_draws == 3
    with pytest.raises(TypeError):
        brn.Posterior(*settings.values())
    with pytest.raises(TypeError):
        brn.Posterior(model, **{k: v for k, v in settings.items() if k != "model"})


# ------------------------------------------------------------- the checks catch what they should
def _write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for relative, text in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from .high import g\n    return g\n",
        "high.py": "from .low import f\n\ndef g():\n    return f\n",
        "other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from .high import g\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "from .. import low\nfrom ..other import TYPE_CHECKING\n",
    })
    graph, _ = import_graph(package)
    assert graph["pkg.high"] == {"pkg.low"}
    assert graph["pkg.low"] == {"pkg.high"}
    assert graph["pkg.other"] == set()  # TYPE_CHECKING imports do not count
    assert graph["pkg.sub.leaf"] == {"pkg.low", "pkg.other"}
    assert find_cycle(graph) in (["pkg.high", "pkg.low", "pkg.high"],
                                 ["pkg.low", "pkg.high", "pkg.low"])
    del graph["pkg.low"]
    assert find_cycle(graph) is None


def test_a_private_import_is_found(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "from ._version import __version__\n",
        "_version.py": "__version__ = '1'\n",
        "a.py": "_hidden = 1\n",
        "b.py": "def f():\n    from .a import _hidden\n    return _hidden\n",
    })
    _, private = import_graph(package)
    assert private == ["pkg.b (line 2) imports _hidden from pkg.a"]


# ------------------------------------------------------------------------------------ names
@dataclass
class _Settings(InferenceMethod):
    """A method with a renamed setting (no ``name``: it does not register)."""

    kind: ClassVar[str] = "mcmc"
    renamed_settings: ClassVar[Mapping[str, str]] = {"warmup": "num_warmup"}

    num_samples: int = 10
    num_warmup: int = 5

    def run(self, model, x, y, seed, progress):
        raise NotImplementedError


@dataclass
class _MoreSettings(_Settings):
    renamed_settings: ClassVar[Mapping[str, str]] = {"draws": "num_draws"}

    num_draws: int = 3


def test_an_old_setting_name_works_with_a_deprecation_warning_naming_the_new_one():
    with pytest.warns(DeprecationWarning, match="'warmup' is now called 'num_warmup'"):
        method = _Settings(warmup=7)
    assert method == _Settings(num_warmup=7)
    assert dataclasses.asdict(method) == {"num_samples": 10, "num_warmup": 7}  # saved so
    with pytest.warns(DeprecationWarning, match=r"_Settings\.warmup is now called num_warmup"):
        assert method.warmup == 7
    with pytest.warns(DeprecationWarning, match="num_warmup"):
        method.warmup = 9
    assert method.num_warmup == 9
    with pytest.raises(TypeError, match="give only 'num_warmup'"):
        _Settings(warmup=1, num_warmup=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _Settings(num_warmup=7).num_warmup == 7  # the new name warns about nothing
        # Stored settings (a run file's, a benchmark record's) map without a warning.
        assert _Settings.from_settings({"warmup": 4, "num_samples": 2}) == \
            _Settings(num_samples=2, num_warmup=4)
        assert current_settings(_Settings, {"warmup": 1, "other": 2}) == \
            {"num_warmup": 1, "other": 2}


def test_renames_are_inherited_and_a_renamed_name_cannot_stay_a_field():
    assert dict(_MoreSettings.renamed_settings) == {"warmup": "num_warmup", "draws": "num_draws"}
    with pytest.warns(DeprecationWarning) as caught:
        method = _MoreSettings(warmup=2, draws=8)
    assert len(caught) == 2
    assert (method.num_warmup, method.num_draws) == (2, 8)
    with pytest.raises(TypeError, match="still a field"):
        @dataclass
        class _Broken(_Settings):  # pragma: no cover (class creation fails)
            renamed_settings: ClassVar[Mapping[str, str]] = {"num_samples": "count"}
            num_samples: int = 1


def test_the_library_methods_use_the_names_of_the_rule():
    # The rule of docs/architecture.rst ("Names"): MCMC draws kept per chain are num_samples,
    # discarded tuning iterations num_warmup, draws from a fitted approximation num_draws,
    # and counts of a method's own units (chains, members, steps) plain plurals.
    for method, old, new in [(brn.NUTS, "warmup", "num_warmup"),
                             (brn.MCLMC, "tune_steps", "num_warmup"),
                             (PyroMCMC, "num_chains", "chains"),
                             (PyroGuide, "num_samples", "num_draws")]:
        assert method.renamed_settings[old] == new
        names = {f.name for f in dataclasses.fields(method)}
        assert new in names and old not in names
    for method in (brn.MeanField, brn.LowRank, brn.Laplace, brn.SWAG, PyroGuide):
        names = {f.name for f in dataclasses.fields(method)}
        assert "num_draws" in names and "num_samples" not in names, method
    for method in (brn.NUTS, brn.MCLMC, PyroMCMC):
        names = {f.name for f in dataclasses.fields(method)}
        assert "num_samples" in names and "num_draws" not in names, method
    with pytest.warns(DeprecationWarning, match="'tune_steps' is now called 'num_warmup'"):
        assert brn.MCLMC(tune_steps=30) == brn.MCLMC(num_warmup=30)


@pytest.mark.arviz
def test_a_run_file_with_an_old_setting_name_loads_without_a_warning(tmp_path):
    model = brn.BayesianResNet(brn.ResNet(in_dim=1, out_dim=1, width=2, depth=2,
                                          basis=brn.Constant()))
    x = np.linspace(-1, 1, 6)[:, None]
    y = np.cos(x)
    post = brn.Posterior(model=model, draws=model.sample_prior(0, (2, 4)), stats={},
                         method=brn.MCLMC(num_warmup=20), x_scaler=Standardizer().fit(
                             torch.as_tensor(x)), y_scaler=Standardizer().fit(
                             torch.as_tensor(y)), seed=1, fit_seconds=0.5, x_train=x,
                         y_train=y)
    path = post.save(tmp_path / "run.nc")
    import h5py

    with h5py.File(path, "r+") as handle:
        settings = json.loads(handle.attrs["bayesresnet_method"])
        settings["tune_steps"] = settings.pop("num_warmup")  # as a file from before the rename
        handle.attrs["bayesresnet_method"] = json.dumps(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        back = brn.load(path)
        fixture = brn.load(Path(__file__).parent / "data" / "run_arviz0.nc")
    assert back.method == brn.MCLMC(num_warmup=20)
    assert fixture.method.name == "ensemble"


def _uci_benchmark():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "uci.py"
    spec = importlib.util.spec_from_file_location("uci_benchmark_names", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_renamed_settings_keep_the_labels_of_the_uci_benchmark_records():
    bench = _uci_benchmark()
    config = bench.default_config(False, "vectorized")
    # The MCLMC settings of the committed records, under the names of the rule; their records
    # (benchmarks/results/uci.jsonl) were labelled when num_warmup was called tune_steps.
    config["methods"]["mclmc"] = {"num_samples": 400, "thinning": 5, "num_warmup": 2000,
                                  "chains": 4, "init_steps": 1000}
    label = bench.unit_key(config, "mclmc")
    assert label == "full-a531dc2fdc"
    results = Path(bench.__file__).parent / "results" / "uci.jsonl"
    recorded = {json.loads(line)["config"] for line in results.read_text().splitlines()
                if line.strip()}
    assert label in recorded
    # A configuration still written with the old name: the same method, the same label.
    old = dict(config["methods"]["mclmc"])
    old["tune_steps"] = old.pop("num_warmup")
    before = {**config, "methods": {**config["methods"], "mclmc": old}}
    with pytest.warns(DeprecationWarning):
        assert bench.build_method(before, "mclmc") == bench.build_method(config, "mclmc")
    assert bench.unit_key(before, "mclmc") == label


def test_the_command_line_takes_the_new_flags_and_the_old_ones_with_a_note(capsys):
    parser = cli.build_parser()
    base = ["fit", "data.csv", "--target", "y", "--out", "out"]
    new = cli._method(parser.parse_args([*base, "--method", "mclmc", "--num-samples", "5",
                                         "--num-warmup", "20"]))
    assert (new.num_samples, new.num_warmup) == (5, 20)
    assert capsys.readouterr().err == ""
    draws = cli._method(parser.parse_args([*base, "--method", "meanfield", "--num-draws", "7"]))
    assert draws.num_draws == 7
    old = cli._method(parser.parse_args([*base, "--method", "mclmc", "--samples", "5",
                                         "--warmup", "20"]))
    assert old == new
    err = capsys.readouterr().err
    assert "--samples is deprecated; use --num-samples" in err
    assert "--warmup is deprecated; use --num-warmup" in err
    vi = cli._method(parser.parse_args([*base, "--method", "meanfield", "--samples", "7"]))
    assert vi == draws and "use --num-draws" in capsys.readouterr().err
    with pytest.raises(cli.CLIError, match="does not apply"):
        cli._method(parser.parse_args([*base, "--method", "nuts", "--num-draws", "3"]))
