"""Ingest at the speed of the log: the IMCorrect worker against a plain consumer, one run.

    python -m benchmarks.ingest [--dataset ml-1m] [--events N] [--deletions 20]
                                [--compression lz4] [--live-events 200000]

1. Preloads the dataset's interactions into ``interactions`` (librdkafka producer, one JSON
   value per event, keyed by user).
2. Baseline: a plain librdkafka consumer reads the whole backlog and ``json.loads`` every
   value (nothing else): ``plain_consumer_events_per_s``.
3. ``lethe worker imcorrect`` (a subprocess) drains the same backlog: events / seconds from
   its "ready" line until ``lethe_interactions_applied_total`` reaches the count. After a
   clean stop, its snapshot's mapping (the maintained one, written on that stop) is
   compared with a batch fit on the same X: ``max_abs_diff``.
4. Forget latency on that state: deletion requests one at a time, request ts → receipt read.
5. Live stream: a fresh worker on a fresh prefix while the producer sends as fast as it
   can: ``live_events_per_s`` from the first produce to the last event applied, beside
   the producer's own rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Producer, TopicPartition

from benchmarks.common import emit, log
from models.datasets import load
from models.imcorrect import IMCorrect
from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, DeletionRequest
from streams.kafka_config import librdkafka_config
from streams.localkafka import kafka_broker
from streams.procs import WorkerProcess, free_port, scrape
from streams.runtime import kafka
from streams.runtime.admin import create_topics
from streams.state import SnapshotStore
from streams.topics import topic_name


def _values(dataset, limit: int | None) -> tuple[list[bytes], list[bytes]]:
    keys, values = [], []
    for k, row in enumerate(dataset.replay()):
        if limit is not None and k >= limit:
            break
        keys.append(row.user_id.encode())
        values.append(
            json.dumps(
                {
                    "event_id": row.event_id,
                    "user_id": row.user_id,
                    "item_id": row.item_id,
                    "ts": row.ts_ms,
                    "kind": "rating",
                    "value": row.value,
                },
                separators=(",", ":"),
            ).encode()
        )
    return keys, values


def _produce(settings: LetheSettings, topic: str, keys, values, compression: str) -> float:
    producer = Producer(
        {
            **librdkafka_config(settings),
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": compression,
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    start = time.perf_counter()
    for key, value in zip(keys, values, strict=True):
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    return time.perf_counter() - start


def _plain_consumer_rate(settings: LetheSettings, topic: str, n: int) -> float:
    """Events/s of a consumer that only reads and json-decodes every value."""
    consumer = kafka.consumer(settings, **{"max.partition.fetch.bytes": 4 << 20})
    parts = kafka.partitions(consumer, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    seen = 0
    start = time.perf_counter()
    while seen < n:
        for msg in consumer.consume(min(10_000, n - seen), 1.0):
            if msg.error() is None:
                json.loads(msg.value())
                seen += 1
    seconds = time.perf_counter() - start
    consumer.close()
    return n / seconds


def _wait_applied(port: int, n: int, worker: WorkerProcess, timeout_s: float = 1800) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if scrape(port).get("lethe_interactions_applied_total", 0.0) >= n:
            return time.perf_counter()
        if not worker.alive():
            raise RuntimeError(f"worker died:\n{worker.log_tail()}")
        time.sleep(0.05)
    raise TimeoutError("the worker did not apply the backlog in time")


def _ready_time(worker: WorkerProcess, timeout_s: float = 120) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "worker ready" in worker.log_tail(50):
            return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError(f"worker not ready:\n{worker.log_tail()}")


def _settings(bootstrap: str, state: Path, port: int) -> LetheSettings:
    return LetheSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"b{uuid.uuid4().hex[:8]}.",
        state_dir=state,
        metrics_port=port,
        imcorrect={
            "snapshot_interval_s": 3600.0,
            # the clean stop writes the maintained mapping, so it can be compared to a fit
            "mapping_persist_interval_s": 0.001,
            "answer_requests": False,
        },
    )


def _forget_latencies(settings: LetheSettings, users: list[str]) -> list[float]:
    topic = topic_name(settings, "deletions")
    receipts = topic_name(settings, "deletion-receipts")
    reader = kafka.consumer(settings)
    parts = kafka.partitions(reader, receipts)
    ends = kafka.end_offsets(kafka.admin(settings), receipts, parts)
    reader.assign([TopicPartition(receipts, p, ends[kafka.tp_key(receipts, p)]) for p in parts])
    producer = Producer({**librdkafka_config(settings), "linger.ms": 0})
    out = []
    for k, user in enumerate(users):
        request = DeletionRequest(
            request_id=f"bench-forget-{k}",
            scope="user",
            user_id=user,
            reason="privacy",
            ts=int(time.time() * 1000),
        )
        sent = time.perf_counter()
        producer.produce(topic, value=request.to_bytes(), key=user.encode())
        producer.flush(10)
        got = None
        while got != request.request_id:
            msg = reader.poll(0.5)
            if msg is not None and msg.error() is None:
                got = DeletionReceipt.model_validate_json(msg.value()).request_id
            if time.perf_counter() - sent > 60:
                raise TimeoutError("no receipt within 60 s")
        out.append(time.perf_counter() - sent)
        time.sleep(0.2)
    reader.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m", choices=["ml-100k", "ml-1m"])
    parser.add_argument("--events", type=int, default=None, help="first N events only")
    parser.add_argument("--deletions", type=int, default=20)
    parser.add_argument("--compression", default="lz4")
    parser.add_argument("--live-events", type=int, default=200_000)
    args = parser.parse_args()

    dataset = load(args.dataset)
    keys, values = _values(dataset, args.events)
    n = len(values)
    log(f"[ingest] {n} events of {args.dataset}")
    with kafka_broker() as (bootstrap, how), tempfile.TemporaryDirectory() as tmp:
        log(f"[ingest] broker {bootstrap} ({how})")
        import asyncio

        port = free_port()
        settings = _settings(bootstrap, Path(tmp) / "state", port)
        asyncio.run(create_topics(settings))
        topic = topic_name(settings, "interactions")
        produce_s = _produce(settings, topic, keys, values, args.compression)
        log(f"[ingest] preloaded in {produce_s:.1f} s")
        plain = _plain_consumer_rate(settings, topic, n)
        log(f"[ingest] plain consumer {plain:,.0f} events/s")

        worker = WorkerProcess(settings, Path(tmp) / "worker.log").start()
        try:
            ready = _ready_time(worker)
            done = _wait_applied(port, n, worker)
            worker_rate = n / (done - ready)
            log(f"[ingest] worker {worker_rate:,.0f} events/s")
            users = sorted({k.decode() for k in keys})
            rng = np.random.default_rng(0)
            forget = [str(u) for u in rng.choice(users, size=args.deletions, replace=False)]
            latencies = _forget_latencies(settings, forget)
            log(f"[ingest] forget latencies (ms, in order): {[round(x * 1000) for x in latencies]}")
            for line in worker.log_tail(400).splitlines():
                if "receipt(s)" in line or "deletion(s)" in line:
                    log(f"[ingest] worker: {line}")
            assert worker.stop() == 0, worker.log_tail()
        finally:
            if worker.alive():
                worker.kill()
        state = SnapshotStore(settings.state_dir / "imcorrect").load()
        assert state is not None
        fit = IMCorrect("ease", l2=settings.imcorrect.ease.l2).fit(state.model.interactions)
        diff = float(np.max(np.abs(state.model.mapping - fit.mapping)))
        lat_ms = np.array(latencies) * 1000
        emit(
            {
                "bench": "ingest",
                "dataset": args.dataset,
                "events": n,
                "compression": args.compression,
                "mapping": settings.imcorrect.mapping,
                "plain_consumer_events_per_s": round(plain),
                "worker_events_per_s": round(worker_rate),
                "ratio": round(worker_rate / plain, 3),
                "max_abs_diff": diff,
                "forget_requests": len(latencies),
                "forget_p50_ms": round(float(np.percentile(lat_ms, 50)), 1),
                "forget_p99_ms": round(float(np.percentile(lat_ms, 99)), 1),
                "forget_max_ms": round(float(lat_ms.max()), 1),
                "preload_s": round(produce_s, 2),
            }
        )
        _live(bootstrap, Path(tmp), keys, values, args)


def _live(bootstrap: str, tmp: Path, keys, values, args) -> None:
    """A fresh worker on a fresh prefix, the producer sending as fast as it can."""
    import asyncio

    n = min(args.live_events, len(values))
    port = free_port()
    settings = _settings(bootstrap, tmp / "live-state", port)
    asyncio.run(create_topics(settings))
    worker = WorkerProcess(settings, tmp / "live.log").start()
    try:
        _ready_time(worker)
        start = time.perf_counter()
        produce_s = _produce(
            settings, topic_name(settings, "interactions"), keys[:n], values[:n], args.compression
        )
        done = _wait_applied(port, n, worker)
        assert worker.stop() == 0, worker.log_tail()
    finally:
        if worker.alive():
            worker.kill()
    emit(
        {
            "bench": "ingest-live",
            "dataset": args.dataset,
            "events": n,
            "compression": args.compression,
            "producer_events_per_s": round(n / produce_s),
            "live_events_per_s": round(n / (done - start)),
            "applied_after_last_produce_s": round(done - start - produce_s, 3),
        }
    )


if __name__ == "__main__":
    main()
