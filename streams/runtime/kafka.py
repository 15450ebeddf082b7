"""librdkafka clients for the workers' runtime: configuration, partitions, offsets, reads.

Every Kafka compression codec (gzip, snappy, lz4, zstd) is decoded by librdkafka itself, so
no codec package can be missing from an environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from streams.config import LetheSettings
from streams.kafka_config import librdkafka_config, librdkafka_log

T = TypeVar("T")


def tp_key(topic: str, partition: int) -> str:
    """The key of a partition in offset maps and snapshots."""
    return f"{topic}:{partition}"


def consumer(settings: LetheSettings, **extra: Any) -> Consumer:
    """A consumer for manual assignment: offsets live in snapshots, never in the group."""
    conf = {
        **librdkafka_config(settings),
        # librdkafka wants a group id even for manual assignment; nothing is committed to it
        "group.id": f"{settings.client_id}.runtime",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",
        "logger": librdkafka_log,
        **extra,
    }
    return Consumer(conf)


def producer(settings: LetheSettings, **extra: Any) -> Producer:
    """An idempotent producer (acks=all) bounded by the configured message size."""
    p = settings.producer
    conf = {
        **librdkafka_config(settings),
        "enable.idempotence": p.idempotent,
        "acks": "all",
        "linger.ms": p.linger_ms,
        "message.max.bytes": max(settings.limits.max_message_bytes + 65536, 1_000_000),
        "request.timeout.ms": p.request_timeout_ms,
        "compression.type": p.compression or "none",
        "logger": librdkafka_log,
        **extra,
    }
    return Producer(conf)


class OffsetsUnavailable(RuntimeError):
    """The brokers gave no partitions or offsets of a topic in time (a cluster down or a
    topic missing, not a leader moving)."""


def partitions(client: Consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    """Partition ids of ``topic``, waiting briefly for a freshly created topic's metadata."""
    deadline = time.monotonic() + timeout_s
    while True:
        meta = client.list_topics(topic, timeout=max(0.5, deadline - time.monotonic()))
        info = meta.topics.get(topic)
        if info is not None and info.error is None and info.partitions:
            return sorted(info.partitions)
        if time.monotonic() >= deadline:
            raise OffsetsUnavailable(f"topic {topic} has no partitions (does it exist?)")
        time.sleep(0.2)


def admin(settings: LetheSettings) -> AdminClient:
    """An admin client: end offsets of many partitions in one request per broker."""
    return AdminClient(librdkafka_config(settings))


def end_offsets(
    client: AdminClient, topic: str, parts: list[int], committed: bool = False
) -> dict[str, int]:
    """Log-end offset of each partition, asked of the broker now (one try); ``committed``:
    the last stable offset instead, where a transaction still open stops committed reads
    (for reading to the end; the deletion barrier keeps the log end, which the broker-loss
    test holds it to)."""
    ask = {TopicPartition(topic, p): OffsetSpec.latest() for p in parts}
    level = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED
    futures = client.list_offsets(ask, isolation_level=level, request_timeout=10)
    return {tp_key(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}


def asked_through_leadership(
    ask: Callable[[], T],
    what: str,
    timeout_s: float = 60.0,
    after_failure: Callable[[], None] = lambda: None,
) -> T:
    """``ask()``, asked again while its answer is one of a moving leadership (leader
    elections, a lost broker) for up to ``timeout_s``; raised at once for anything else."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ask()
        except KafkaException as exc:
            if not passes_with_leadership(exc.args[0]):
                raise
            if time.monotonic() > deadline:
                raise OffsetsUnavailable(f"no {what}: {exc}") from exc
            time.sleep(0.2)
            after_failure()


def log_start(client: Consumer, tp: TopicPartition) -> int:
    """The first offset ``tp`` still holds."""
    return asked_through_leadership(
        lambda: client.get_watermark_offsets(tp, timeout=10)[0], f"log start of {tp.topic}"
    )


def end_offsets_retrying(
    settings: LetheSettings,
    topic: str,
    parts: list[int],
    client: AdminClient | None = None,
    committed: bool = False,
) -> tuple[dict[str, int], AdminClient]:
    """:func:`end_offsets` through leader elections, with a fresh client after each failure
    (a client that was answered FENCED_LEADER_EPOCH kept asking with its stale epoch).
    Returns the client that answered, for the next question."""
    clients = [client or admin(settings)]

    def renew() -> None:
        clients[0] = admin(settings)

    ends = asked_through_leadership(
        lambda: end_offsets(clients[0], topic, parts, committed),
        f"end offsets of {topic}",
        after_failure=renew,
    )
    return ends, clients[0]


def passes_with_leadership(error: KafkaError) -> bool:
    """Whether an answer to an offsets question goes away once a partition's leadership has
    settled: librdkafka's retriable errors and the ones below, which it does not mark."""
    return error.retriable() or error.code() in _LEADERLESS


#: answers while a partition's leadership moves (a just-created topic, a lost broker);
#: OFFSET_NOT_AVAILABLE: a new leader whose high watermark has not caught up yet (retriable
#: in Kafka's own client, not marked so by librdkafka)
_LEADERLESS = (
    KafkaError.OFFSET_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
)


def assign_from(client: Consumer, topic: str, parts: list[int], offsets: dict[str, int]) -> None:
    """Add partitions to the assignment at the saved offsets (the beginning when none)."""
    client.incremental_assign(
        [TopicPartition(topic, p, offsets.get(tp_key(topic, p), OFFSET_BEGINNING)) for p in parts]
    )


def read_range(
    settings: LetheSettings, topic: str, start: dict[str, int], timeout_s: float = 30.0
) -> Iterator[Any]:
    """Every record of ``topic`` from ``start`` (per partition, default 0) to its end now."""
    reader = consumer(settings)
    try:
        parts = partitions(reader, topic)
        ends, _ = end_offsets_retrying(settings, topic, parts, committed=True)
        todo = {p for p in parts if ends[tp_key(topic, p)] > start.get(tp_key(topic, p), 0)}
        if not todo:
            return
        reader.assign([TopicPartition(topic, p, start.get(tp_key(topic, p), 0)) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end in {timeout_s} s")
            for msg in reader.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                yield msg
                if msg.offset() + 1 >= ends[tp_key(topic, msg.partition())]:
                    todo.discard(msg.partition())
            # a partition may end in a transaction marker or an aborted record, which no
            # message carries (committed reads): its end is reached when the position is
            for tp in reader.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset >= ends[tp_key(topic, tp.partition)]:
                    todo.discard(tp.partition)
    finally:
        reader.close()


class KafkaIO:
    """The runtime's Kafka calls for one worker (its in-memory twin for tests without a
    broker is :class:`streams.runtime.memory.MemoryIO`)."""

    def __init__(self, settings: LetheSettings) -> None:
        self.settings = settings
        self._metadata: Consumer | None = None
        self._admin: AdminClient | None = None

    def create_topics(self) -> None:
        import asyncio

        from streams.runtime.admin import create_topics

        asyncio.run(create_topics(self.settings))

    def consumer(self) -> Consumer:
        return consumer(self.settings, **{"max.partition.fetch.bytes": 4 << 20})

    def producer(self) -> Producer:
        return producer(self.settings)

    def partitions(self, topic: str) -> list[int]:
        # metadata on a client of its own: on the reading consumer the question would queue
        # behind a long-polling fetch
        if self._metadata is None:
            self._metadata = consumer(self.settings)
        return partitions(self._metadata, topic)

    def end_offsets(self, topic: str, parts: list[int]) -> dict[str, int]:
        ends, self._admin = end_offsets_retrying(self.settings, topic, parts, self._admin)
        return ends

    def fetched_end_offsets(self, client: Consumer, topic: str, parts: list[int]) -> dict[str, int]:
        """The log ends the consumer's last fetches reported (no broker question: for the
        lag gauge, which must not hold up the loop); -1 where nothing was fetched yet."""
        out = {}
        for p in parts:
            _, high = client.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            out[tp_key(topic, p)] = high
        return out

    def assign(
        self, client: Consumer, topic: str, parts: list[int], offsets: dict[str, int] | None
    ) -> None:
        """Assign at the saved offsets (the beginning when none), or at the end (None)."""
        if offsets is None:
            client.incremental_assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
        else:
            assign_from(client, topic, parts, offsets)

    def positions(self, client: Consumer, topic: str, parts: list[int]) -> dict[str, int]:
        """Next offset the consumer will read per partition (-1001 before its first fetch)."""
        got = client.position([TopicPartition(topic, p) for p in parts])
        return {tp_key(topic, tp.partition): tp.offset for tp in got}

    def read_range(self, topic: str, start: dict[str, int]) -> Iterator[Any]:
        return read_range(self.settings, topic, start)

    def retention(self) -> Any:
        import asyncio

        from streams.runtime.admin import topic_retention

        return asyncio.run(topic_retention(self.settings))


def assign_at_end(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> None:
    """Assign every partition of ``topic`` at its end offset, read now: OFFSET_END would
    resolve on a later fetch and could skip what is produced in between. A topic created a
    moment ago may not have its leaders yet; that is asked again until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    try:
        ends = asked_through_leadership(
            lambda: _ends_now(consumer, topic, max(0.5, deadline - time.monotonic())),
            f"end offsets of {topic}",
            timeout_s,
        )
    except (KafkaException, OffsetsUnavailable) as exc:
        raise RuntimeError(f"cannot read the end offsets of {topic}: {exc}") from exc
    consumer.assign(ends)


def _ends_now(consumer: Consumer, topic: str, timeout_s: float) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is not None and meta.error is not None:
        raise KafkaException(meta.error)
    if meta is None or not meta.partitions:  # not (yet) known to this broker
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    ends = []
    for partition in sorted(meta.partitions):
        _, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s
        )
        ends.append(TopicPartition(topic, partition, high))
    return ends
