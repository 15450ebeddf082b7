"""Small aiokafka helpers shared by the workers: partitions, end offsets, dead letters."""

from __future__ import annotations

import base64
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from streams.contracts import ContractError, DeadLetter
from streams.metrics import DEAD_LETTERS, EVENTS


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


def tp_key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


async def send_dead_letter(
    producer: AIOKafkaProducer,
    topic: str,
    record: ConsumerRecord,
    error: ContractError | str,
    logical_source: str,
):
    """Publish a malformed record to dead-letters with its origin and reason."""
    letter = DeadLetter(
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        error=str(error),
        raw_value_b64=base64.b64encode(record.value or b"").decode("ascii"),
        key=record.key.decode("utf-8", "replace") if record.key else None,
        ts=int(time.time() * 1000),
    )
    field = getattr(error, "field", None) or "message"
    DEAD_LETTERS.labels(logical_source, field).inc()
    EVENTS.labels(logical_source, "dead_letter").inc()
    return await producer.send(topic, value=letter.to_bytes(), key=record.key)
