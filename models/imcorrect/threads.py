"""The threads IMCorrect's compiled kernels run on (they release the GIL): how many, and
one pool per process beside the calling thread."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba


def kernel_threads() -> int:
    """Kernel threads: numba's own setting (``NUMBA_NUM_THREADS``; by default the CPUs this
    process may run on, which a container's CPU quota does not lower)."""
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool_in_child() -> None:
    # a fork copies neither the pool's threads nor a lock another thread held at the time
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def pool() -> ThreadPoolExecutor:
    """The kernel threads of this process beside the calling one (a forked child starts its
    own: :func:`_forget_pool_in_child`)."""
    global _POOL
    with _POOL_LOCK:  # two first callers at once would each start a pool
        if _POOL is None:
            workers = max(1, kernel_threads() - 1)
            _POOL = ThreadPoolExecutor(workers, thread_name_prefix="lethe-kernel")
        return _POOL
