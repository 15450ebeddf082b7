"""Helpers shared by the benchmark scripts: JSON lines out, a broker for the run."""

from __future__ import annotations

import json
import platform
import sys
import time
from typing import Any


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line (machine-readable, one result per line)."""
    record.setdefault("host_cpus", _cpus())
    record.setdefault("python", platform.python_version())
    print(json.dumps(record, sort_keys=False), flush=True)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
