"""The one place IMCorrect's compiled kernels are declared: numba's ``njit`` with an
on-disk cache, so that a process loads the machine code instead of compiling it again.

numba keeps the cache beside the module when it may write there, else in the user's cache
folder; where neither is writable (a read-only install run by a user without a home) it
would refuse to cache at all, so this sets a folder under the system's temporary directory
first. ``NUMBA_CACHE_DIR`` set by the deployment (the image sets one on its volume) wins.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numba

if not numba.config.CACHE_DIR and not os.access(Path(__file__).parent, os.W_OK):
    home_cache = Path(os.path.expanduser("~")) / ".cache"
    if not os.access(home_cache if home_cache.exists() else home_cache.parent, os.W_OK):
        numba.config.CACHE_DIR = str(Path(tempfile.gettempdir()) / "lethe-numba-cache")

#: ``numba.njit(cache=True)``; pass ``inline="always"`` etc. as usual
njit = functools.partial(numba.njit, cache=True)
