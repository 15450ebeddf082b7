"""An in-memory log with the runtime's Kafka surface, for service tests without a broker.

:class:`MemoryLog` holds partitioned topics as lists of records; :class:`MemoryIO` gives the
runtime the same calls :class:`streams.runtime.kafka.KafkaIO` does (consumers that poll at
an assigned offset, producers that append, end offsets, reads of a range). Records keep
Kafka's per-partition order and offsets, so the runtime's offsets, barrier and outbox run
unchanged; what it does not model is the network (no latency, no broker failures).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MemoryRecord:
    """One record, with the accessors of a librdkafka message."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    #: append time (ms), as a broker stamps records of a LogAppendTime topic
    _timestamp: int = -1

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        """(librdkafka's TIMESTAMP_LOG_APPEND_TIME, ms), or not available (0, -1)."""
        return (2, self._timestamp) if self._timestamp >= 0 else (0, -1)


@dataclass
class MemoryLog:
    """Topics of ``partitions`` partitions each, created on first use."""

    partitions: int = 4
    topics: dict[str, list[list[MemoryRecord]]] = field(default_factory=dict)

    def topic(self, name: str) -> list[list[MemoryRecord]]:
        return self.topics.setdefault(name, [[] for _ in range(self.partitions)])

    def append(self, topic: str, value: bytes | None, key: bytes | None = None) -> MemoryRecord:
        """Append like a producer's default partitioner would (by key, else partition 0)."""
        parts = self.topic(topic)
        p = zlib.crc32(key) % len(parts) if key is not None else 0
        record = MemoryRecord(topic, p, len(parts[p]), key, value, int(time.time() * 1000))
        parts[p].append(record)
        return record

    def records(self, topic: str) -> list[MemoryRecord]:
        """Every record of ``topic``, partition by partition."""
        return [r for part in self.topic(topic) for r in part]


class MemoryConsumer:
    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self.positions: dict[tuple[str, int], int] = {}

    def assign(self, topic: str, partition: int, offset: int | None) -> None:
        end = len(self.log.topic(topic)[partition])
        self.positions[(topic, partition)] = end if offset is None else offset

    def consume(self, n: int, _timeout: float = 0) -> list[MemoryRecord]:
        out: list[MemoryRecord] = []
        for (topic, p), pos in sorted(self.positions.items()):
            part = self.log.topic(topic)[p]
            take = part[pos : pos + n - len(out)]
            out.extend(take)
            self.positions[(topic, p)] = pos + len(take)
            if len(out) >= n:
                break
        return out

    def poll(self, timeout: float = 0) -> MemoryRecord | None:
        got = self.consume(1, timeout)
        return got[0] if got else None

    def close(self) -> None:
        self.positions.clear()


class MemoryProducer:
    def __init__(self, log: MemoryLog) -> None:
        self.log = log

    def produce(self, topic: str, value=None, key=None, on_delivery=None) -> None:
        record = self.log.append(topic, value, key)
        if on_delivery is not None:
            on_delivery(None, record)

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        return 0


class MemoryIO:
    """The runtime's Kafka calls on a :class:`MemoryLog`."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log

    def create_topics(self) -> None:
        return None

    def consumer(self) -> MemoryConsumer:
        return MemoryConsumer(self.log)

    def producer(self) -> MemoryProducer:
        return MemoryProducer(self.log)

    def partitions(self, topic: str) -> list[int]:
        return list(range(len(self.log.topic(topic))))

    def end_offsets(self, topic: str, parts: list[int]) -> dict[str, int]:
        return {f"{topic}:{p}": len(self.log.topic(topic)[p]) for p in parts}

    def fetched_end_offsets(self, consumer: MemoryConsumer, topic: str, parts) -> dict[str, int]:
        return self.end_offsets(topic, parts)

    def assign(self, consumer: MemoryConsumer, topic: str, parts, offsets) -> None:
        for p in parts:
            start = None if offsets is None else offsets.get(f"{topic}:{p}", 0)
            consumer.assign(topic, p, start)

    def positions(self, consumer: MemoryConsumer, topic: str, parts) -> dict[str, int]:
        return {f"{topic}:{p}": consumer.positions.get((topic, p), 0) for p in parts}

    def read_range(self, topic: str, start: dict[str, int]) -> Iterator[MemoryRecord]:
        for p, part in enumerate(self.log.topic(topic)):
            yield from part[start.get(f"{topic}:{p}", 0) :]

    def retention(self) -> None:
        """No broker to ask: the service keeps the retention its settings give."""
        return None
