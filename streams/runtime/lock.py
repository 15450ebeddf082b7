"""One process per state folder: an OS file lock held for the worker's lifetime."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("lethe.lock")


class StateLock:
    """An exclusive ``flock`` on ``<state_dir>/<name>/.lock``; the OS frees it when the
    process dies, so a crashed worker never leaves a stale lock behind.

    A second process on the same folder exits at once with a message naming the holder, or,
    as a *standby* (``wait``), waits until the holder is gone and then takes the folder over,
    continuing from the newest snapshot the holder left. ``stopped`` ends the wait (the
    lock is then not held: :attr:`held` is False).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike,
        name: str,
        *,
        exit_on_conflict: bool = True,
        wait: bool = False,
        stopped: Callable[[], bool] = lambda: False,
    ):
        folder = Path(state_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.held = False
        announced = False
        while not self._try_lock():
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "another process"
            message = f"state folder {folder} is in use by pid {holder}; one process per folder"
            if wait:
                if not announced:
                    log.info("standby: waiting for pid %s to give up %s", holder, folder)
                    announced = True
                if stopped():
                    os.close(self._fd)
                    self._fd = -1
                    return
                time.sleep(0.2)
                continue
            os.close(self._fd)
            if exit_on_conflict:
                print(f"lethe: {message}", file=sys.stderr)
                raise SystemExit(3) from None
            raise RuntimeError(message) from None
        self.held = True
        if announced:
            log.info("standby: took over %s", folder)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
