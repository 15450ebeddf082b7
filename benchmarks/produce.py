"""Producer SDK throughput against a real broker.

    python -m benchmarks.produce [--events 100000] [--users 5000]

Measures events/s through :class:`streams.client.LetheProducer` (validated contracts, keyed by
user, idempotent acks=all) and, as the same-process baseline, a bare aiokafka producer sending
pre-serialised bytes with the same producer settings. Uses ``KAFKA_BOOTSTRAP`` if set, otherwise
starts the local broker for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid

from aiokafka import AIOKafkaProducer

from benchmarks.common import Timer, emit
from streams.client import LetheProducer
from streams.config import LetheSettings
from streams.contracts import InteractionEvent
from streams.kafka_config import producer_kwargs
from streams.localkafka import kafka_broker
from streams.runtime.admin import create_topics
from streams.topics import topic_name


def _events(n: int, users: int) -> list[InteractionEvent]:
    rng = random.Random(0)
    return [
        InteractionEvent(
            event_id=f"e{i}",
            user_id=f"u{rng.randrange(users)}",
            item_id=f"i{rng.randrange(3000)}",
            ts=1_700_000_000_000 + i,
        )
        for i in range(n)
    ]


async def _bench(settings: LetheSettings, n: int, users: int) -> None:
    await create_topics(settings)
    events = _events(n, users)
    with Timer() as sdk:
        async with LetheProducer(settings) as producer:
            await producer.interactions(events)
    payloads = [(e.user_id.encode(), e.to_bytes()) for e in events]
    raw = AIOKafkaProducer(**producer_kwargs(settings))
    await raw.start()
    with Timer() as bare:
        topic = topic_name(settings, "interactions")
        for key, value in payloads:
            await raw.send(topic, value=value, key=key)
        await raw.flush()
    await raw.stop()
    emit(
        {
            "bench": "produce",
            "events": n,
            "users": users,
            "partitions": settings.topics.partitions,
            "sdk_events_per_s": round(n / sdk.seconds),
            "bare_aiokafka_events_per_s": round(n / bare.seconds),
            "sdk_vs_bare_ratio": round(bare.seconds / sdk.seconds, 3),
            "idempotent": settings.producer.idempotent,
            "linger_ms": settings.producer.linger_ms,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    args = parser.parse_args()
    with kafka_broker() as (bootstrap, _how):
        settings = LetheSettings(
            bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}."
        )
        asyncio.run(_bench(settings, args.events, args.users))


if __name__ == "__main__":
    main()
