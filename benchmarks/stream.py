"""End-to-end streaming benchmark of the IMCorrect worker on a real broker.

    python -m benchmarks.stream [--dataset ml-100k] [--events N] [--deletions 100]

1. Starts ``lethe worker imcorrect`` (a subprocess with its own /metrics).
2. Publishes the dataset's interactions through the producer SDK as fast as it can and
   measures the time from the first produce until the worker's
   ``lethe_interactions_applied_total`` reaches the count: end-to-end ingest events/s.
   The SDK's produce rate alone is reported beside it as the same-run baseline.
3. Sends deletion requests one at a time (every 200 ms) and measures request ts → receipt
   consumed from ``deletion-receipts``: forget latency p50/p99 (this includes the snapshot
   written before each receipt).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer

from benchmarks.common import emit, log
from models.datasets import load
from streams.client import LetheProducer
from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, decode
from streams.kafka_config import client_kwargs
from streams.localkafka import kafka_broker
from streams.procs import WorkerProcess, free_port, scrape
from streams.reader import read_from_end
from streams.replay import to_event
from streams.runtime.admin import create_topics
from streams.topics import topic_name


async def _ingest(settings: LetheSettings, events, port: int) -> tuple[float, float]:
    start = time.perf_counter()
    async with LetheProducer(settings) as producer:
        for e in events:
            await producer.send("interactions", e.user_id, e)
        await producer.flush()
    produced = time.perf_counter() - start
    key = "lethe_interactions_applied_total"
    while scrape(port).get(key, 0.0) < len(events):
        await asyncio.sleep(0.02)
    return produced, time.perf_counter() - start


async def _forget_latencies(settings: LetheSettings, users: list[str]) -> list[float]:
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None)
    await consumer.start()
    latencies = []
    try:
        await read_from_end(consumer, topic_name(settings, "deletion-receipts"))
        async with LetheProducer(settings) as producer:
            for user in users:
                sent = time.time()
                req = await producer.forget_user(user)
                await producer.flush()
                while True:
                    batch = await consumer.getmany(timeout_ms=1000)
                    got = [decode(DeletionReceipt, r.value) for rs in batch.values() for r in rs]
                    if any(r.request_id == req.request_id for r in got):
                        latencies.append(time.time() - sent)
                        break
                await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["ml-100k", "ml-1m"], default="ml-100k")
    parser.add_argument("--events", type=int, default=None, help="default: the whole dataset")
    parser.add_argument("--deletions", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-log", action="store_true", help="print the worker's log tail")
    args = parser.parse_args()
    data = load(args.dataset)
    events = [to_event(r) for r in data.replay()][: args.events]
    users = sorted({e.user_id for e in events})
    targets = random.Random(args.seed).sample(users, min(args.deletions, len(users)))
    with kafka_broker() as (bootstrap, how), tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        settings = LetheSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
            state_dir=Path(tmp) / "state",
            metrics_port=port,
        )
        asyncio.run(create_topics(settings))
        worker = WorkerProcess(settings, Path(tmp) / "worker.log").start()
        try:
            worker.wait_ready()
            log(f"ingesting {len(events)} events of {args.dataset} ({how})")
            produced_s, applied_s = asyncio.run(_ingest(settings, events, port))
            log(f"forgetting {len(targets)} users one at a time")
            lat = np.array(asyncio.run(_forget_latencies(settings, targets)))
            metrics = scrape(port)
        finally:
            worker.stop()
            if args.show_log:
                print(worker.log_tail(40))
    emit(
        {
            "bench": "stream",
            "dataset": args.dataset,
            "events": len(events),
            "mapping": settings.imcorrect.mapping,
            "batch_max_events": settings.imcorrect.batch_max_events,
            "produce_events_per_s": round(len(events) / produced_s),
            "ingest_events_per_s": round(len(events) / applied_s),
            "ingest_vs_produce_ratio": round(produced_s / applied_s, 3),
            "deletions": len(lat),
            "forget_latency_p50_s": round(float(np.percentile(lat, 50)), 4),
            "forget_latency_p99_s": round(float(np.percentile(lat, 99)), 4),
            "snapshots_written": int(metrics.get("lethe_snapshot_seconds_count", 0)),
            "seed": args.seed,
        }
    )


if __name__ == "__main__":
    main()
