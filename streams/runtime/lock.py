"""One process per state folder: an OS file lock held for the worker's lifetime."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path


class StateLock:
    """An exclusive ``flock`` on ``<state_dir>/<name>/.lock``; the OS frees it when the
    process dies, so a crashed worker never leaves a stale lock behind.

    A second process on the same folder exits at once with a message naming the holder.
    """

    def __init__(self, state_dir: str | os.PathLike, name: str, *, exit_on_conflict: bool = True):
        folder = Path(state_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            message = f"state folder {folder} is in use by pid {holder}; one process per folder"
            if exit_on_conflict:
                print(f"lethe: {message}", file=sys.stderr)
                raise SystemExit(3) from None
            raise RuntimeError(message) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
