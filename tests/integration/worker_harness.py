"""Run ``lethe worker imcorrect`` as a real subprocess and observe it through Kafka and its
snapshot folder (shared by the streaming tests, the stream benchmark and the demo tests)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.imcorrect import IMCorrect
from streams.config import LetheSettings
from streams.procs import WorkerProcess
from streams.reader import end_offsets, read_all
from streams.state import SnapshotStore, WorkerState

__all__ = ["WorkerProcess", "assert_equals_batch_fit", "load_state", "read_all", "wait_caught_up"]


def snapshot_meta(state_dir: Path, folder: str = "imcorrect") -> dict | None:
    latest = SnapshotStore(Path(state_dir) / folder).latest()
    if latest is None:
        return None
    try:
        return json.loads((latest / "worker.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # pruned while reading


def wait_caught_up(
    settings: LetheSettings, worker: WorkerProcess, n_receipts: int, timeout_s: float = 240
) -> None:
    """Block until the newest snapshot covers every input record and all receipts are out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not worker.alive():
            raise AssertionError(f"worker died:\n{worker.log_tail()}")
        ends = asyncio.run(end_offsets(settings, ["interactions", "deletions"]))
        meta = snapshot_meta(settings.state_dir)
        if meta is not None and all(meta["offsets"].get(k, 0) >= v for k, v in ends.items()):
            receipts = asyncio.run(read_all(settings, "deletion-receipts"))
            if len(receipts) >= n_receipts:
                return
        time.sleep(1.0)
    raise AssertionError(f"worker did not catch up in {timeout_s} s:\n{worker.log_tail()}")


def load_state(state_dir: Path, folder: str = "imcorrect") -> WorkerState:
    state = SnapshotStore(Path(state_dir) / folder).load()
    assert state is not None, "no snapshot written"
    return state


def expected_matrix(state: WorkerState, pairs: list[tuple[str, str]]) -> sp.csr_matrix:
    """X built independently from the retained events, in the worker's index layout."""
    rows = np.array([state.users.get(u) for u, _ in pairs], dtype=np.int64)
    cols = np.array([state.items.get(i) for _, i in pairs], dtype=np.int64)
    x = sp.csr_matrix((np.ones(len(pairs)), (rows, cols)), shape=state.model.interactions.shape)
    x.data[:] = 1.0
    return x


def assert_equals_batch_fit(state: WorkerState, pairs: list[tuple[str, str]], l2: float) -> float:
    """The worker's X equals the retained events and its mapping a batch fit on them."""
    expected = expected_matrix(state, pairs)
    assert (state.model.interactions != expected).nnz == 0, "interaction matrix differs"
    batch = IMCorrect("ease", l2=l2).fit(expected)
    diff = float(np.max(np.abs(state.model.mapping - batch.mapping)))
    assert diff <= 1e-8, f"mapping differs from a batch fit by {diff}"
    return diff
