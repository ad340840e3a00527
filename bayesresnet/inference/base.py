"""What every inference method is: a small configuration object that can run itself.

A method receives the model and the (standardized) training data and returns a
:class:`MethodResult`: constrained draws of every latent site shaped (chain, draw, *site_shape)
plus per-method statistics. :func:`bayesresnet.fit` wraps that into a
:class:`~bayesresnet.Posterior`.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..model import BayesianResNet

__all__ = [
    "InferenceMethod",
    "MethodResult",
    "check_positive_float",
    "check_positive_int",
    "make_progress",
]


@dataclass
class MethodResult:
    """Output of one method run.

    Attributes
    ----------
    draws : dict site -> tensor (chain, draw, *site_shape)
        Constrained values of every latent site of the model.
    stats : dict name -> array
        NUTS: per-draw statistics (chain, draw). VI: ``elbo`` history (steps,). Ensembles:
        ``final_loss`` per member (members,) and ``loss`` history (steps, members).
    extra : dict
        Anything else worth keeping (e.g. a guide's fitted parameters), JSON-able or tensors.
    """

    draws: dict[str, Tensor]
    stats: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class InferenceMethod(ABC):
    """Base class of the method configurations (``NUTS``, ``MeanField``, ...).

    Subclasses are dataclasses; ``__post_init__`` validates settings that do not depend on the
    model, :meth:`validate` those that do.
    """

    name: ClassVar[str]

    def validate(self, model: BayesianResNet) -> None:  # noqa: B027 (optional hook)
        """Raise ValueError for settings that do not fit this model (e.g. rank > dim)."""

    @abstractmethod
    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        """Approximate the posterior of ``model`` given standardized ``x`` (N, in_dim) and
        ``y`` (N, out_dim), reproducibly from ``seed``."""

    def config(self) -> dict[str, Any]:
        """Settings as a JSON-able dict, with the method's ``name``."""
        return {"name": self.name, **dataclasses.asdict(self)}


def check_positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


def check_positive_float(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: {name} must be a positive number, got {value!r}")


def make_progress(enabled: bool, total: int, desc: str):
    """A tqdm bar (or a no-op stand-in when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def update_running_mean(bar: Any, history: np.ndarray, step: int, label: str) -> None:
    """After ``step`` of ``len(history)`` steps, advance ``bar`` about 100 times per run, each
    time showing the mean of ``history`` over the steps since the last update as ``label``."""
    every = max(1, len(history) // 100)
    if (step + 1) % every == 0 or step + 1 == len(history):
        recent = history[max(0, step + 1 - every):step + 1]
        bar.set_postfix({label: f"{recent.mean():.4g}"}, refresh=False)
        bar.update(step + 1 - bar.n)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``; independent of the global torch RNG."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator
