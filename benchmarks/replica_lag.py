"""How far a hot IMCorrect follower trails the writer under a live stream (part of
``python -m benchmarks.scaleout``; alone: ``python -m benchmarks.replica_lag``).

Two replicas (``imcorrect.replicated``) run as subprocesses; ML-100K's events are sent at
``--lag-rate`` events/s. Every replica reports on the heartbeat topic, every
``heartbeat_interval_s``, how many events it has applied; the benchmark reads those
heartbeats. For each writer heartbeat (time t, e events applied) the follower's lag is the
time until it reported e events too, and, in events, how many fewer it had at t.

One JSON line: ``bench: "scaleout"``, ``scenario: "imcorrect-follower"``, ``rate_per_s``,
``events``, ``follower_lag_events_p50`` / ``_p99`` / ``_max``, ``follower_lag_ms_p50`` /
``_p99`` / ``_max``, ``writer_events_per_s``. Then (``--backlog ml-1m``) one line
``scenario: "imcorrect-backlog"``: a backlog drained by a single worker and, on fresh topics,
by two replicas (every event through the change log), in events/s, and their ``ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks import ingest
from benchmarks.common import emit, log
from models.datasets import load
from streams.client import LetheProducer
from streams.config import LetheSettings
from streams.localkafka import kafka_broker
from streams.procs import WorkerProcess, free_port, scrape
from streams.replay import to_event
from streams.runtime import kafka
from streams.runtime.admin import create_topics
from streams.topics import topic_name

HEARTBEAT_S = 0.1


class Heartbeats(threading.Thread):
    """Collects ``(wall ms, replica, events applied, is writer)`` from the heartbeat topic."""

    def __init__(self, settings: LetheSettings) -> None:
        super().__init__(daemon=True)
        self.consumer = kafka.consumer(settings)
        kafka.assign_at_end(self.consumer, topic_name(settings, "imcorrect-replicas"))
        self.beats: list[tuple[int, str, int, bool]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for msg in self.consumer.consume(500, 0.2):
                if msg.error() is None:
                    b = json.loads(msg.value())
                    self.beats.append((b["ts"], b["replica"], b["events"], b["writer"]))
        self.consumer.close()

    def latest(self, replica: str) -> int:
        return max((e for _, r, e, _ in self.beats if r == replica), default=0)


def _lags(beats: list[tuple[int, str, int, bool]]) -> tuple[list[int], list[float]]:
    writer = next(r for _, r, _, w in reversed(beats) if w)
    w = [(t, e) for t, r, e, _ in beats if r == writer]
    f = sorted((t, e) for t, r, e, _ in beats if r != writer)
    f_ts = np.array([t for t, _ in f])
    f_ev = np.array([e for _, e in f])
    lag_events, lag_ms = [], []
    for t, e in w:
        before = f_ev[f_ts <= t]
        if len(before):
            lag_events.append(max(0, e - int(before[-1])))
        later = np.nonzero((f_ev >= e) & (f_ts >= t - 1000 * HEARTBEAT_S))[0]
        if len(later):
            lag_ms.append(max(0.0, float(f_ts[later[0]] - t)))
    return lag_events, lag_ms


def _pct(values: list, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def measure(bootstrap: str, tmp: Path, rate: float, total: int) -> dict:
    settings = LetheSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"lag{uuid.uuid4().hex[:6]}.",
        state_dir=tmp / "lag-state",
        metrics_port=-1,
    )
    asyncio.run(create_topics(settings))
    procs = []
    for rid in ("a", "b"):
        own = settings.model_copy(
            update={
                "imcorrect": settings.imcorrect.model_copy(
                    update={
                        "replicated": True,
                        "replica_id": rid,
                        "memory_budget_gb": 4.0,
                        "answer_requests": False,
                        "heartbeat_interval_s": HEARTBEAT_S,
                        "snapshot_interval_s": 30.0,
                    }
                )
            }
        )
        procs.append(WorkerProcess(own, tmp / f"replica-{rid}.log").start())
    try:
        for p in procs:
            p.wait_ready(120)
        deadline = time.monotonic() + 60
        while not any("is the writer" in p.log_tail(400) for p in procs):
            assert time.monotonic() < deadline, procs[0].log_tail()
            time.sleep(0.2)
        beats = Heartbeats(settings)
        beats.start()
        events = [to_event(r) for r in load("ml-100k").replay()][:total]
        log(f"sending {len(events)} events at {rate:.0f}/s to two replicas")
        start = time.monotonic()

        async def send() -> None:
            async with LetheProducer(settings) as producer:
                for k, e in enumerate(events):
                    await producer.send("interactions", e.user_id, e)
                    if k % 100 == 99:
                        await asyncio.sleep(max(0.0, start + (k + 1) / rate - time.monotonic()))
                await producer.flush()

        asyncio.run(send())
        sent_s = time.monotonic() - start
        deadline = time.monotonic() + 120
        while min(beats.latest("a"), beats.latest("b")) < len(events):
            assert time.monotonic() < deadline and all(p.alive() for p in procs), "no catch-up"
            time.sleep(0.2)
        applied_s = time.monotonic() - start
        beats.done.set()
        beats.join(5)
    finally:
        for p in procs:
            p.stop()
    lag_events, lag_ms = _lags(beats.beats)
    return {
        "bench": "scaleout",
        "scenario": "imcorrect-follower",
        "replicas": 2,
        "rate_per_s": rate,
        "events": len(events),
        "sent_s": round(sent_s, 2),
        "writer_events_per_s": round(len(events) / applied_s),
        "heartbeat_interval_s": HEARTBEAT_S,
        "follower_lag_events_p50": _pct(lag_events, 50),
        "follower_lag_events_p99": _pct(lag_events, 99),
        "follower_lag_events_max": max(lag_events, default=None),
        "follower_lag_ms_p50": _pct(lag_ms, 50),
        "follower_lag_ms_p99": _pct(lag_ms, 99),
        "follower_lag_ms_max": _pct(lag_ms, 100),
    }


def _replicated(settings: LetheSettings, replica: str) -> LetheSettings:
    imcorrect = settings.imcorrect.model_copy(
        update={"replicated": True, "replica_id": replica, "memory_budget_gb": 4.0}
    )
    return settings.model_copy(update={"imcorrect": imcorrect})


def _drain(settings: LetheSettings, tmp: Path, n: int, replicas: list[str | None]) -> float:
    """Seconds from every process ready to every one having applied the ``n`` events
    already on ``interactions``; None in ``replicas`` is the single (unreplicated) worker."""
    procs = []
    for rid in replicas:
        own = settings if rid is None else _replicated(settings, rid)
        port = free_port()
        name = "single" if rid is None else f"replica-{rid}"
        proc = WorkerProcess(own, tmp / f"{name}.log", LETHE_METRICS_PORT=str(port))
        procs.append((proc.start(), port))
    try:
        ready = max(ingest._ready_time(p) for p, _ in procs)
        done = max(_wait_applied(port, n, p) for p, port in procs)
        return done - ready
    finally:
        for p, _ in procs:
            p.stop()


def _wait_applied(port: int, n: int, proc: WorkerProcess, timeout_s: float = 1800) -> float:
    """When the process had applied ``n`` events (a busy replica may leave a scrape
    unanswered for seconds: that is retried, not fatal)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if scrape(port).get("lethe_interactions_applied_total", 0.0) >= n:
                return time.perf_counter()
        except OSError:
            pass
        if not proc.alive():
            raise RuntimeError(f"replica died:\n{proc.log_tail()}")
        time.sleep(0.05)
    raise TimeoutError("the backlog was not applied in time")


def measure_backlog(bootstrap: str, tmp: Path, dataset: str) -> dict:
    """A backlog drained by one worker, then (same events, fresh topics) by two replicas."""
    keys, values = ingest._values(load(dataset), None)
    seconds = {}
    for mode, replicas in (("single", [None]), ("replicas", ["a", "b"])):
        settings = ingest._settings(bootstrap, tmp / f"backlog-{mode}", -1)
        asyncio.run(create_topics(settings))
        ingest._produce(settings, topic_name(settings, "interactions"), keys, values, "lz4")
        log(f"draining {len(values)} events of {dataset}: {mode}")
        seconds[mode] = _drain(settings, tmp, len(values), replicas)
    single, both = len(values) / seconds["single"], len(values) / seconds["replicas"]
    return {
        "bench": "scaleout",
        "scenario": "imcorrect-backlog",
        "dataset": dataset,
        "events": len(values),
        "single_worker_events_per_s": round(single),
        "two_replicas_events_per_s": round(both),
        "ratio": round(both / single, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lag-rate", type=float, default=5000.0)
    parser.add_argument("--lag-events", type=int, default=100_000)
    parser.add_argument("--backlog", default="ml-1m", choices=["ml-100k", "ml-1m", "none"])
    args = parser.parse_args()
    with kafka_broker() as (bootstrap, _how), tempfile.TemporaryDirectory() as tmp:
        emit(measure(bootstrap, Path(tmp), args.lag_rate, args.lag_events))
        if args.backlog != "none":
            emit(measure_backlog(bootstrap, Path(tmp), args.backlog))


if __name__ == "__main__":
    main()
