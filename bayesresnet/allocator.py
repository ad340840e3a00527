"""Opt-in tuning of glibc's memory allocator for batched sampling on CPU.

Every leapfrog step of the vectorized NUTS backend, every ensemble step and every predictive
chunk allocates and frees tens of megabytes of tensors of one or two sizes (for 32 chains on
UCI yacht, about forty 1.1 MB hidden-state tensors per gradient). glibc's ``malloc`` adapts
two thresholds to such a program: it serves blocks above the *mmap threshold* with fresh
``mmap`` calls and hands the heap's free top back to the kernel once it exceeds the *trim
threshold*. Either way the next step touches new pages, and the kernel zeroes each one on a
page fault: 1 000 to 2 000 faults per gradient on yacht. On idle cores that costs a few
percent of a sampling run; beside another busy job, whose memory traffic slows the zeroing,
about a sixth (``benchmarks/nuts.py --tune-allocator`` measures the sampler with it).

Fixing both thresholds high keeps freed blocks in the heap, where the next step reuses them.
The price is memory: the process keeps up to ``trim_threshold`` bytes of freed heap resident
instead of returning them to the system.

The setting is process-wide, so importing ``bayesresnet`` never changes it: the
``bayesresnet`` command calls :func:`tune_allocator` for its own process, and a program of
yours may call it, or start Python with ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` set, which glibc reads at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

__all__ = ["tune_allocator"]

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2, which is 32 MiB on 64-bit systems.
_MAX_MMAP_THRESHOLD = 32 * 2**20
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def tune_allocator(mmap_threshold: int = _MAX_MMAP_THRESHOLD,
                   trim_threshold: int = 256 * 2**20) -> bool:
    """Fix glibc's mmap and trim thresholds so freed tensors are reused, not refaulted.

    Changes the whole process (every library in it allocates through the same ``malloc``), which
    is why nothing in ``bayesresnet`` calls it on import. Does nothing where the allocator is not
    glibc's (macOS, Windows, musl) or where the environment already sets the thresholds.

    Parameters
    ----------
    mmap_threshold : int
        Blocks of at least this many bytes get their own ``mmap``; at most 32 MiB, glibc's
        ceiling.
    trim_threshold : int
        Free bytes at the top of the heap that glibc keeps before returning them to the system.

    Returns
    -------
    bool
        True if both thresholds were set, False if the call changed nothing.

    Raises
    ------
    ValueError
        If a threshold is not a positive integer, ``mmap_threshold`` exceeds 32 MiB or
        ``trim_threshold`` does not fit a C int (2**31 bytes or more).
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"tune_allocator: {name} must be a positive integer number of "
                             f"bytes, got {value!r}")
    if mmap_threshold > _MAX_MMAP_THRESHOLD:
        raise ValueError(f"tune_allocator: mmap_threshold must be at most {_MAX_MMAP_THRESHOLD} "
                         f"bytes (glibc's ceiling), got {mmap_threshold}")
    if trim_threshold >= 2**31:
        raise ValueError(f"tune_allocator: trim_threshold must be below 2**31 bytes (mallopt "
                         f"takes a C int), got {trim_threshold}")
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (any(os.environ.get(name) for name in _ENVIRONMENT)
            or any(name in tunables for name in _TUNABLES)):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    # Setting either threshold also switches off glibc's adjustment of the other, so both must
    # be set: the trim threshold alone leaves every block above 128 KiB to mmap.
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
                and mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    if not hasattr(os, "confstr"):
        return None
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
    if not libc_version or not libc_version.startswith("glibc"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
