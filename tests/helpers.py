"""Assertion helpers shared by several test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesresnet import cli
from bayesresnet.resnet import Network

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_script(file_name: str, module_name: str) -> Iterator[Any]:
    """Import ``benchmarks/<file_name>`` as module ``module_name`` (registered in
    ``sys.modules`` so that dataclasses and pickling inside it resolve), with ``benchmarks/`` on
    ``sys.path`` for the scripts that import one another; both undone on exit."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / file_name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop(module_name, None)


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Equal bit for bit: tensors, arrays, scalars, None and dicts of them."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif a is None:
        assert b is None, where
    else:
        np.testing.assert_array_equal(a, b, err_msg=where)


def cli_error(capsys: Any, argv: list[str]) -> str:
    """Run the command, expect exit status 1 and one ``bayesresnet: error:`` line; return it."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 1, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bayesresnet: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


class LinearNet(Network):
    """f(x) = x W^T + b: a network linear in its parameters (a Bayesian linear regression)."""

    def __init__(self, in_dim: int) -> None:
        self.in_dim, self.out_dim, self.width, self.depth = in_dim, 1, 1, 1
        self.activation = "identity"

    @property
    def param_shapes(self) -> OrderedDict[str, tuple[int, ...]]:
        return OrderedDict(output_weight=(1, self.in_dim), output_bias=(1,))

    def forward(self, params, x):
        self._check_input(x)
        self.sample_shape(params)
        return (x.to(params["output_weight"].dtype) @ params["output_weight"].transpose(-1, -2)
                + params["output_bias"].unsqueeze(-2))

    def config(self):
        return {"name": "LinearNet", "in_dim": self.in_dim}
