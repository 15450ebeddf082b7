"""The scorer's librdkafka request channel on the real broker: a backlog is handed to the
event loop a batch at a time (the rest stays in librdkafka) with nothing lost, duplicated or
reordered within a partition, and a batch of replies is delivered keyed like single sends."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer

from streams.kafka_config import client_kwargs, librdkafka_config
from streams.kafka_io import read_all
from streams.request_channel import RequestChannel, assign_at_end
from streams.topics import create_topics, topic_name

pytestmark = pytest.mark.kafka

BATCH = 16
BACKLOG = 300


def open_channel(settings) -> RequestChannel:
    return RequestChannel(
        settings,
        topic_name(settings, "rec-requests"),
        topic_name(settings, "recommendations"),
        fetch_max_wait_ms=100,
        poll_batch=BATCH,
    )


async def send_requests(settings, n: int) -> None:
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    try:
        topic = topic_name(settings, "rec-requests")
        sent = [
            await producer.send(topic, f"{k}".encode(), key=f"u{k % 11}".encode()) for k in range(n)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def test_backlog_is_handed_over_a_batch_at_a_time_and_nothing_is_lost(settings):
    async def scenario() -> tuple[list[int], list]:
        await create_topics(settings)
        channel = open_channel(settings)
        await channel.open()
        try:
            await send_requests(settings, BACKLOG)
            await asyncio.sleep(3.0)  # time enough to pull the whole backlog, were it allowed
            waiting_before = channel.waiting
            received, sizes = [], []
            while len(received) < BACKLOG:
                batch = await asyncio.wait_for(channel.next_batch(BATCH, 0.0), 30)
                sizes.append(len(batch))
                received.extend(batch)
            return [waiting_before, *sizes], received
        finally:
            await channel.close()

    (waiting_before, *sizes), received = asyncio.run(scenario())
    # paused once a batch waited (it may have handed over one burst more), not all 300
    assert BATCH <= waiting_before < 2 * BATCH, waiting_before
    assert max(sizes) <= BATCH
    assert sorted(int(r.value) for r in received) == list(range(BACKLOG))  # none lost or twice
    by_partition = defaultdict(list)
    for record in received:
        by_partition[record.partition].append(record.offset)
    for offsets in by_partition.values():  # in order, no gaps: read from the end at open
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
        assert offsets[0] == 0


def test_batch_of_replies_is_delivered_and_keyed_like_single_sends(settings):
    replies = [(f"answer {k}".encode(), f"u{k % 7}".encode()) for k in range(50)]
    oversize = b"x" * (settings.limits.max_message_bytes + 1)
    reports: list[object | None] = []
    done = threading.Event()

    def delivered(error: object | None) -> None:
        reports.append(error)
        if len(reports) == len(replies) + 2:
            done.set()

    async def scenario() -> None:
        await create_topics(settings)
        channel = open_channel(settings)
        await channel.open()
        try:
            batch = [(value, key, delivered) for value, key in replies]
            batch.insert(10, (oversize, b"u1", delivered))  # refused; the rest still go
            channel.publish_batch(batch)
            channel.publish(b"single", b"u3", delivered)
            assert await asyncio.to_thread(done.wait, 30), f"{len(reports)} delivery reports"
        finally:
            await channel.close()

    asyncio.run(scenario())
    refused = [e for e in reports if e is not None]
    assert len(refused) == 1 and "too large" in str(refused[0]).lower(), refused
    assert sum(e is None for e in reports) == len(replies) + 1  # KafkaError == None raises
    records = asyncio.run(read_all(settings, "recommendations"))
    expected = [(key, value) for value, key in replies] + [(b"u3", b"single")]
    assert sorted((r.key, r.value) for r in records) == sorted(expected)
    partition_of = defaultdict(set)
    for record in records:
        partition_of[record.key].add(record.partition)
    assert all(len(p) == 1 for p in partition_of.values())  # one key, one partition
    assert len({p for ps in partition_of.values() for p in ps}) > 1  # spread by key


def test_assigning_a_topic_that_does_not_exist_fails_clearly(settings):
    consumer = Consumer({**librdkafka_config(settings), "group.id": "lethe-test-never-joined"})
    try:
        with pytest.raises(RuntimeError, match="end offsets of .*no-such-topic"):
            assign_at_end(consumer, f"{settings.topic_prefix}no-such-topic", timeout_s=2.0)
    finally:
        consumer.close()
