"""Small aiokafka helpers shared by the workers: partitions, end offsets, dead letters."""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from streams.config import LetheSettings
from streams.contracts import ContractError
from streams.kafka_config import client_kwargs
from streams.metrics import DEAD_LETTERS, EVENTS
from streams.runtime.deadletter import bounded_key, dead_letter_bytes
from streams.topics import topic_name


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """All partitions of ``topic``, whether or not the consumer reads it (waits briefly for
    the metadata of a freshly created topic)."""
    import asyncio

    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            # the consumer's own metadata only covers assigned topics: ask for all of them
            cluster = await consumer._client.fetch_all_metadata()
            parts = cluster.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")


async def read_from_end(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` at its current end, resolved now: what is
    produced after this returns is read, nothing before (replies to requests sent next)."""
    tps = await topic_partitions(consumer, topic)
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)  # seek_to_end is lazy: resolve it before anything is sent
    return tps


def tp_key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


async def send_dead_letter(
    producer: AIOKafkaProducer,
    topic: str,
    record: ConsumerRecord,
    error: ContractError | str,
    logical_source: str,
    max_message_bytes: int = 1_048_576,
):
    """Publish a malformed record to dead-letters with its origin and reason (the raw value
    cut to what fits, see :mod:`streams.runtime.deadletter`)."""
    value = dead_letter_bytes(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        error=error,
        max_message_bytes=max_message_bytes,
    )
    field = getattr(error, "field", None) or "message"
    logging.getLogger("lethe.deadletters").warning(
        "dead letter from %s[%d]@%d: %s",
        record.topic,
        record.partition,
        record.offset,
        str(error)[:200],
    )
    DEAD_LETTERS.labels(logical_source, field).inc()
    EVENTS.labels(logical_source, "dead_letter").inc()
    return await producer.send(topic, value=value, key=bounded_key(record.key))


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
    """Every record currently in a topic (up to its end offsets when called)."""
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
