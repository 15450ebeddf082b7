"""Durable files: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import msgspec


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so a rename in it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write to a temp file in the same folder, fsync, rename over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def write_json_atomically(path: Path, data: Any, *, compact: bool = False) -> None:
    """``data`` as JSON, written with :func:`atomic_write`. ``compact`` encodes with msgspec,
    an order of magnitude faster for large files; only for data without floats, since it
    writes a NaN as null."""
    body = msgspec.json.encode(data) if compact else json.dumps(data).encode()
    write_bytes_atomically(path, body)


def write_bytes_atomically(path: Path, body: bytes) -> None:
    """``body`` written with :func:`atomic_write`."""
    atomic_write(Path(path), lambda f: f.write(body))


def temp_files(path: Path) -> list[Path]:
    """The temp files of :func:`atomic_write` for ``path``: one being written now, or ones a
    process killed while writing left behind (they may hold data forgotten since)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f"{_temp_prefix(path)}*.tmp"))


def remove_temp_files(path: Path) -> int:
    """Remove the leftovers of :func:`temp_files`. Only for the one process that writes
    ``path`` (it holds the folder's lock), before it writes: another's write would fail.
    Returns how many there were."""
    found = temp_files(path)
    for leftover in found:
        leftover.unlink(missing_ok=True)
    return len(found)
