"""Run ``lethe worker imcorrect`` as a real subprocess and observe it through Kafka and its
snapshot folder (shared by the streaming tests, the stream benchmark and the demo tests)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from aiokafka import AIOKafkaConsumer

from models.imcorrect import IMCorrect
from streams.config import LetheSettings
from streams.kafka_config import client_kwargs
from streams.kafka_io import topic_partitions, tp_key
from streams.state import SnapshotStore, WorkerState
from streams.topics import topic_name

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """A worker subprocess with its own log file."""

    def __init__(self, settings: LetheSettings, log_path: Path, **env: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": settings.bootstrap_servers,
            "LETHE_TOPIC_PREFIX": settings.topic_prefix,
            "LETHE_STATE_DIR": str(settings.state_dir),
            "LETHE_METRICS_PORT": str(settings.metrics_port),
            "LETHE_IMCORRECT__SNAPSHOT_INTERVAL_S": "1",
            "LETHE_IMCORRECT__L2": str(settings.imcorrect.l2),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "imcorrect"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


async def end_offsets(settings: LetheSettings, logical: list[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None)
    await consumer.start()
    try:
        tps = []
        for name in logical:
            tps += await topic_partitions(consumer, topic_name(settings, name))
        ends = await consumer.end_offsets(tps)
        return {tp_key(tp): off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def read_all(settings: LetheSettings, logical: str, timeout_s: float = 10) -> list:
    """Every record currently in a topic."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic_name(settings, logical))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


def snapshot_meta(state_dir: Path) -> dict | None:
    latest = SnapshotStore(Path(state_dir) / "imcorrect").latest()
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


def load_state(state_dir: Path) -> WorkerState:
    state = SnapshotStore(Path(state_dir) / "imcorrect").load()
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
