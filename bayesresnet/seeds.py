"""The seed rules: which seeds the library accepts, checked once where a seed enters.

Imported by inference (``fit``, every method), ``Posterior.predict`` and the file format, so
it imports nothing of the library.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SEED_MAX", "check_seed"]

SEED_MAX = 2**63 - 1
"""The largest seed :func:`bayesresnet.fit`, ``Posterior.predict`` and ``flat_draws`` accept.

Seeds are integers in [0, 2**63 - 1]: every stream derived from one stays valid for
``torch.Generator.manual_seed`` (which takes at most 2**64 - 1): ``seed + 1`` and the 32-bit
``SeedSequence`` streams of :func:`~bayesresnet.inference.executor.derived_seed`. The range
also fits a signed 64-bit integer, so a seed survives any file format."""


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as a Python int, or a ValueError naming ``name`` and the accepted range.

    Parameters
    ----------
    seed : int or numpy integer
        In [0, :data:`~bayesresnet.seeds.SEED_MAX`]; bools, floats (even integral ones) and
        strings are rejected.
    name : str
        What the seed is called in the error message.

    Returns
    -------
    int
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= int(seed) <= SEED_MAX:
        raise ValueError(f"{name} must be an integer in [0, 2**63 - 1], got {seed!r}")
    return int(seed)
