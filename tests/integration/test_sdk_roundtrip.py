"""The producer SDK against the real broker: keys, per-user order, delivery errors."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer

from streams.client import DeliveryError, LetheProducer, SyncLetheProducer
from streams.config import LetheSettings
from streams.contracts import InteractionEvent, decode
from streams.kafka_config import client_kwargs
from streams.runtime.admin import create_topics
from streams.topics import topic_name

pytestmark = pytest.mark.kafka


async def _consume_all(settings: LetheSettings, logical: str, n: int, timeout_s: float = 60):
    consumer = AIOKafkaConsumer(
        topic_name(settings, logical),
        **client_kwargs(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(records) < n and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def _events(n: int, n_users: int, seed: int = 7) -> list[InteractionEvent]:
    rng = random.Random(seed)
    return [
        InteractionEvent(
            event_id=f"e{i}",
            user_id=f"user-{rng.randrange(n_users)}",
            item_id=f"item-{rng.randrange(500)}",
            ts=1_700_000_000_000 + i,
        )
        for i in range(n)
    ]


def test_ten_thousand_events_round_trip_with_keys_and_per_user_order(settings):
    async def run():
        await create_topics(settings)
        events = _events(10_000, n_users=300)
        async with LetheProducer(settings) as producer:
            assert await producer.interactions(events) == 10_000
        return events, await _consume_all(settings, "interactions", 10_000)

    events, records = asyncio.run(run())
    assert len(records) == 10_000
    received = [decode(InteractionEvent, r.value) for r in records]
    assert sorted(e.event_id for e in received) == sorted(e.event_id for e in events)
    partition_of_user: dict[str, int] = {}
    per_user = defaultdict(list)
    for record, event in zip(records, received, strict=True):
        assert record.key.decode() == event.user_id
        # one user -> one partition, so their events keep their order
        assert partition_of_user.setdefault(event.user_id, record.partition) == record.partition
        per_user[event.user_id].append(event.ts)
    assert len({p for p in partition_of_user.values()}) > 1, "keys should spread over partitions"
    for user, stamps in per_user.items():
        assert stamps == sorted(stamps), f"order of {user} broken"


def test_sync_facade_publishes_deletions(settings):
    asyncio.run(create_topics(settings))
    with SyncLetheProducer(settings) as producer:
        a = producer.forget_user("u1")
        b = producer.forget_item("i7")
        c = producer.forget_interactions("u2", ["i1", "i2"])
    records = asyncio.run(_consume_all(settings, "deletions", 3))
    keys = sorted(r.key.decode() for r in records)
    assert keys == sorted(["u1", "item:i7", "u2"])
    assert {a.request_id, b.request_id, c.request_id} <= {
        __import__("json").loads(r.value)["request_id"] for r in records
    }


def test_delivery_errors_reach_the_caller(settings):
    """A record larger than the broker accepts fails delivery and flush raises."""

    async def run():
        await create_topics(settings)
        async with LetheProducer(settings) as producer:
            huge = InteractionEvent(event_id="e", user_id="u", item_id="i" * 100, ts=1)
            # bypass the client-side size guard to provoke a broker-side rejection
            producer._producer._max_request_size = 50_000_000
            payload = huge.model_copy(update={"item_id": "x" * 100})
            fut = await producer._producer.send(
                topic_name(settings, "interactions"), value=b"x" * 3_000_000, key=b"u"
            )
            producer._pending.add(fut)
            fut.add_done_callback(lambda f: producer._settle(f, "u"))
            with pytest.raises(DeliveryError):
                await producer.flush()
            # the producer stays usable after a failure
            await producer.send("interactions", "u", payload)
            await producer.flush()

    asyncio.run(run())
