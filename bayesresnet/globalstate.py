"""The one process-wide lock around code that uses the global torch RNG or Pyro's globals.

Code that seeds and draws from the global torch RNG (``torch.manual_seed``, Pyro's MCMC and SVI,
prior draws through ``torch.distributions``) is not reproducible when two such runs share the
process in threads, and two Pyro runs at once corrupt each other through Pyro's handler stack
(``pyro.poutine.runtime``) and param store. Every such place in the library holds
:func:`global_state_lock`, so they run one at a time; everything else runs in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["global_state_lock"]

_GLOBAL_STATE_LOCK = threading.RLock()


@contextmanager
def global_state_lock() -> Iterator[None]:
    """Hold the process-wide lock of code that uses the global torch RNG or Pyro's globals.

    Re-entrant: a locked block may call other code that takes the lock.
    """
    with _GLOBAL_STATE_LOCK:
        yield
