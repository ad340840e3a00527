"""Inference method classes by name, filled in as the method modules are imported.

A method class registers itself by defining ``name`` (see
:class:`bayesresnet.inference.base.InferenceMethod`); :func:`bayesresnet.fit` resolves
``method="..."`` strings here and the file format rebuilds a saved run's method from it, without
importing any inference code itself.
"""

from __future__ import annotations

from typing import Any

__all__ = ["method_class", "method_names", "register_method"]

_METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Register ``cls`` under ``cls.name``; a second class with the same name is an error."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} has no method name to register")
    known = _METHODS.get(name)
    if known is not None and known is not cls and \
            (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"method name {name!r} is taken by {known.__qualname__}")
    _METHODS[name] = cls
    return cls


def method_class(name: Any) -> type | None:
    """The class registered as ``name``, or None."""
    return _METHODS.get(name) if isinstance(name, str) else None


def method_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(_METHODS)
