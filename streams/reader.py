"""The SDK's reading side: a client of Lethe reads its topics (answers to its requests,
receipts, any topic's records) with aiokafka, for asyncio callers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.client import LetheProducer, send_acknowledged
from streams.config import LetheSettings
from streams.contracts import (
    ContractError,
    DeletionReceipt,
    DeletionRequest,
    Recommendation,
    decode,
)
from streams.kafka_config import client_kwargs
from streams.topics import topic_name

T = TypeVar("T")


@contextlib.asynccontextmanager
async def _running(consumer: AIOKafkaConsumer) -> AsyncIterator[AIOKafkaConsumer]:
    """``consumer`` started and stopped on the way out, also when its start fails: it has
    opened connections and tasks by then (left open, they are reported as unclosed)."""
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """All partitions of ``topic``, whether or not the consumer reads it (waits briefly for
    the metadata of a freshly created topic)."""
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


async def end_offsets(settings: LetheSettings, logical: list[str]) -> dict[str, int]:
    async with _running(AIOKafkaConsumer(**client_kwargs(settings), group_id=None)) as consumer:
        tps = []
        for name in logical:
            tps += await topic_partitions(consumer, topic_name(settings, name))
        ends = await consumer.end_offsets(tps)
        return {f"{tp.topic}:{tp.partition}": off for tp, off in ends.items()}


def _committed_reader(settings: LetheSettings) -> AIOKafkaConsumer:
    """A group-less consumer of committed records only: receipts are written in transactions
    by hot IMCorrect replicas, and an aborted one was never published."""
    return AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )


async def read_all(settings: LetheSettings, logical: str, timeout_s: float = 10) -> list:
    """Every record currently in a topic (up to its end offsets when called)."""
    async with _running(_committed_reader(settings)) as consumer:
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


async def request_and_wait(
    settings: LetheSettings, user_id: str, k: int = 10, *, timeout_s: float = 10.0
) -> Recommendation:
    """Send a rec-request for ``user_id`` and return the reply carrying its request_id.

    The consumer is positioned at the end of every partition *before* the request is sent, so
    the reply cannot be missed. Raises :class:`TimeoutError` when no reply comes in time.
    """
    topic = topic_name(settings, "recommendations")
    reader = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    async with _running(reader) as consumer:
        await read_from_end(consumer, topic)
        async with LetheProducer(settings, for_requests=True) as producer:
            request = await producer.request_recommendations(user_id, k)
        rec = await _first(
            consumer,
            lambda value: decode(Recommendation, value, settings.limits),
            lambda r: r.request_id == request.request_id,
            timeout_s,
        )
        if rec is None:
            raise TimeoutError(f"no recommendation for request {request.request_id}")
        return rec


async def _first(
    consumer: AIOKafkaConsumer,
    read: Callable[[bytes], T],
    wanted: Callable[[T], bool],
    timeout_s: float,
) -> T | None:
    """The first record read from ``consumer`` within ``timeout_s`` that decodes (``read``)
    and is ``wanted``; None when none does in time. Undecodable records are skipped."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        batches = await consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
        for records in batches.values():
            for record in records:
                try:
                    found = read(record.value)
                except ContractError:
                    continue
                if wanted(found):
                    return found
    return None


class ReceiptTimeout(TimeoutError):
    """No receipt came in time for a deletion request that was sent."""


async def forget_and_wait(
    settings: LetheSettings,
    send: Callable[[LetheProducer], Awaitable[DeletionRequest]],
    *,
    timeout_s: float = 60.0,
) -> tuple[DeletionRequest, DeletionReceipt]:
    """Send a deletion request with ``send`` and return it with the IMCorrect worker's
    receipt for it (``applied`` or ``rejected``; the trainer's ``neural-retrained`` one
    follows after its next round).

    The receipts are read from their end as it was *before* the request went out, committed
    records only (hot replicas write receipts in transactions). Raises
    :class:`ReceiptTimeout` when no receipt comes in time (the request stays sent).
    """
    async with _running(_committed_reader(settings)) as consumer:
        await read_from_end(consumer, topic_name(settings, "deletion-receipts"))
        request = await send_acknowledged(settings, send)
        try:
            receipt = await _first(
                consumer,
                lambda value: decode(DeletionReceipt, value, settings.limits),
                lambda r: (
                    r.request_id == request.request_id and r.status in ("applied", "rejected")
                ),
                timeout_s,
            )
        except KafkaError as exc:
            # the request is out: a failure to read its receipt must not read as "not sent"
            raise ReceiptTimeout(
                f"receipts of deletion request {request.request_id} could not be read: {exc}"
            ) from exc
        if receipt is None:
            raise ReceiptTimeout(
                f"no receipt for deletion request {request.request_id} within {timeout_s:g} s"
            )
        return request, receipt
