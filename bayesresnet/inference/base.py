"""What every inference method is: a small configuration object that can run itself.

A method receives the model and the (standardized) training data and returns a
:class:`MethodResult`: constrained draws of every latent site shaped (chain, draw, *site_shape)
plus per-method statistics. :func:`bayesresnet.fit` wraps that into a
:class:`~bayesresnet.Posterior`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from abc import ABC, ABCMeta, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..model import BayesianResNet
from ..registry import register_method
from ..seeds import SEED_MAX, check_seed

__all__ = [
    "SEED_MAX",
    "InferenceMethod",
    "MethodResult",
    "check_positive_float",
    "check_positive_int",
    "check_seed",
    "current_settings",
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


def current_settings(cls: type, settings: Mapping[str, Any], *,
                     warn: bool = False, stacklevel: int = 2) -> dict[str, Any]:
    """``settings`` with the old names of renamed settings replaced by the current ones.

    Parameters
    ----------
    cls : type
        A method class; its :attr:`InferenceMethod.renamed_settings` (old name -> new name)
        says what was renamed (none: ``settings`` come back as they are).
    settings : mapping
        Settings by name: constructor keywords, or stored settings (a run file's, a
        benchmark record's).
    warn : bool
        Issue a :class:`DeprecationWarning` naming the new name for each old name used (for
        code a user wrote; stored settings are mapped silently).
    stacklevel : int
        Passed to ``warnings.warn``.

    Returns
    -------
    dict

    Raises
    ------
    TypeError
        When a setting is given under both its old and its new name.
    """
    renamed = getattr(cls, "renamed_settings", None) or {}
    out = dict(settings)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise TypeError(f"{cls.__name__}: {old!r} is the old name of {new!r}; give only "
                            f"{new!r}")
        if warn:
            warnings.warn(f"{cls.__name__}: the setting {old!r} is now called {new!r}; the old "
                          "name will be removed in a future release", DeprecationWarning,
                          stacklevel=stacklevel)
        out[new] = out.pop(old)
    return out


class RenamedSettingsMeta(ABCMeta):
    """Metaclass of :class:`InferenceMethod`: constructor keywords under the old name of a
    renamed setting (:attr:`InferenceMethod.renamed_settings`) are passed on under the new one,
    with a :class:`DeprecationWarning`. (A metaclass, because the dataclass decorator writes a
    method's ``__init__`` after the class is created.)"""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if getattr(cls, "renamed_settings", None):
            kwargs = current_settings(cls, kwargs, warn=True, stacklevel=3)
        return super().__call__(*args, **kwargs)


def renamed_attribute(old: str, new: str) -> property:
    """A property that reads and writes setting ``new`` under its old name ``old``, with a
    :class:`DeprecationWarning`."""

    def message(owner: Any) -> str:
        return (f"{type(owner).__name__}.{old} is now called {new}; the old name will be "
                "removed in a future release")

    def get(self: Any) -> Any:
        warnings.warn(message(self), DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    def set(self: Any, value: Any) -> None:
        warnings.warn(message(self), DeprecationWarning, stacklevel=2)
        setattr(self, new, value)

    return property(get, set, doc=f"Deprecated name of ``{new}``.")


class InferenceMethod(ABC, metaclass=RenamedSettingsMeta):
    """Base class of the method configurations (``NUTS``, ``MeanField``, ...).

    Subclasses are dataclasses; :meth:`check_settings` validates settings that do not depend
    on the model (at construction, and again in :func:`bayesresnet.fit`, so settings changed
    after construction are checked too), :meth:`validate` those that do.
    """

    renamed_settings: ClassVar[Mapping[str, str]] = MappingProxyType({})
    """Settings renamed since they were public: old name -> new name. A subclass that renames a
    field declares it here, and the old name keeps working: as a constructor keyword and as an
    attribute (each with a :class:`DeprecationWarning` that names the new one), and in stored
    settings (run files, :meth:`~bayesresnet.inference.base.InferenceMethod.from_settings`),
    which are mapped without a warning. A subclass inherits its base's renames and adds its
    own."""

    name: ClassVar[str]
    kind: ClassVar[str]
    """What the draws are, which says what MCMC diagnostics mean for them: ``"mcmc"`` (Markov
    chains), ``"variational"`` (independent draws from a fitted approximation), ``"ensemble"``
    (independently optimized members) or ``"optimization"`` (one point estimate)."""

    thread_safe: ClassVar[bool] = False
    """True when the method holds
    :func:`~bayesresnet.inference.executor.global_state_lock` (with a private Pyro param store)
    itself wherever it uses process-global state: Pyro's param store and handler stack, the
    global torch RNG. :func:`bayesresnet.fit` runs other methods, e.g. one written elsewhere,
    entirely under that lock with a private param store."""

    records_elbo: ClassVar[bool] = True
    """Whether a ``"variational"`` method's fit optimizes an ELBO (and records ``stats["elbo"]``);
    False for Gaussians fitted otherwise (Laplace, SWAG), whose diagnostics then do not miss it."""

    sampler_stats: ClassVar[frozenset[str] | None] = None
    """The per-draw statistics an ``"mcmc"`` method's runs record (e.g. NUTS's ``diverging``,
    ``reached_max_tree_depth``, ``energy``), or None where that is not known (draws made
    outside the library). The diagnostics skip a check whose statistic the method declares it
    never records (e.g. tree depth for a sampler that builds no trees) without a note, and note
    a statistic that is missing where the method should have it or is not known."""

    def chains_start_apart(self) -> bool:
        """Whether the method starts its chains at distinct modes on purpose.

        Chains started at distinct modes (e.g. each at its own MAP fit) form an ensemble of
        local samplers: each is expected to mix within its own mode, not to reach the others,
        so :func:`~bayesresnet.diagnostics.diagnose` judges them chain by chain (split R-hat
        and ESS of each chain) and reports the pooled between-chain R-hat as a figure of mode
        diversity. Chains started from one distribution (False, the default) are expected to
        forget their starts and agree, and keep the pooled checks.
        """
        return False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("renamed_settings")
        if own is not None:
            renamed = {**getattr(super(cls, cls), "renamed_settings", {}), **own}
            for old, new in renamed.items():
                if not (isinstance(old, str) and isinstance(new, str)) or old == new:
                    raise TypeError(f"{cls.__name__}.renamed_settings must map old names to "
                                    f"other, new names; got {old!r} -> {new!r}")
                if old in getattr(cls, "__annotations__", {}):
                    raise TypeError(f"{cls.__name__}: {old!r} is renamed to {new!r} but is "
                                    "still a field")
                setattr(cls, old, renamed_attribute(old, new))
            cls.renamed_settings = MappingProxyType(renamed)
        if "name" in cls.__dict__:  # concrete methods; abstract bases define no name
            register_method(cls)

    def __post_init__(self) -> None:
        """Check the settings when a (dataclass) method is constructed."""
        self.check_settings()

    def check_settings(self) -> None:  # optional hook
        """Raise ValueError for settings that are invalid whatever the model (e.g. steps=0)."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> InferenceMethod:
        """The method of stored settings (a run file's, a benchmark record's), without the
        ``name``: old names of renamed settings mapped (silently), :meth:`saved_settings`
        applied, then the constructor."""
        return cls(**cls.saved_settings(current_settings(cls, settings)))

    @classmethod
    def saved_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Settings of a run saved by an earlier version, brought to this version's meaning.

        A setting added later with a default that changes behaviour must be filled in here
        with its old behaviour, so that a loaded run's method says what made its draws.
        """
        return settings

    def check_runnable(self) -> None:  # optional hook
        """Raise ValueError when :func:`bayesresnet.fit` cannot run this method at all (e.g. a
        record of draws made outside the library); ``fit`` calls it before any work."""

    def validate(self, model: BayesianResNet) -> None:  # optional hook
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
    generator.manual_seed(check_seed(seed))
    return generator
