"""Reading the IMCorrect change log: committed records in order, decoded and grouped into
the writer's whole steps (docs/scale-out.md). What to do with them is the replica's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from streams.config import LetheSettings
from streams.runtime import kafka
from streams.runtime.changelog import (
    Entry,
    LogDecodeError,
    LoggedStep,
    StepRecord,
    decode,
    merge_steps,
)

log = logging.getLogger("lethe.replica")

#: change-log records taken per read
_READ_CHUNK = 2_000


class LogGone(RuntimeError):
    """The change log no longer holds what this replica must apply next (retention passed
    it): the replica cannot catch up from the log and stops."""


class LogFollower:
    """A committed reader of the one-partition change log from ``start``.

    ``on_foreign`` sees each record no writer wrote (the writer dead-letters it); such a
    record is passed over by every replica alike, so they still apply the same log.
    """

    def __init__(
        self,
        settings: LetheSettings,
        topic: str,
        start: int,
        on_foreign: Callable[[Any, LogDecodeError], None],
    ) -> None:
        self.tp = TopicPartition(topic, 0)
        self.on_foreign = on_foreign
        #: records of a writer step whose last slice is not read yet
        self.partial: list[Entry] = []
        self.consumer = kafka.consumer(
            settings,
            **{
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 20,
                "max.partition.fetch.bytes": 4 << 20,
                # never skip ahead silently: a position the log no longer holds is fatal
                "auto.offset.reset": "error",
            },
        )
        try:
            low = kafka.log_start(self.consumer, self.tp)
        except BaseException:
            self.consumer.close()
            raise
        if start < low:
            self.consumer.close()
            raise LogGone(
                f"the change log begins at offset {low}, after this replica's next record "
                f"{start} (retention): start the replica from a copy of another replica's "
                "state folder (docs/scale-out.md)"
            )
        self.consumer.assign([TopicPartition(self.tp.topic, 0, start)])

    def read(self, wait_s: float, max_events: int) -> list[LoggedStep | Entry]:
        """The writer steps and markers completed by what the log has now (waiting up to
        ``wait_s`` for a first record; while more is behind what was fetched, up to
        ``max_events`` events are gathered so a backlog is applied in few steps)."""
        first = self.consumer.poll(wait_s)
        if first is None:
            return []
        fresh: list[Entry] = []
        events = self._decode([first], fresh)
        while events < max_events:
            more = self.consumer.consume(_READ_CHUNK, 0)
            if not more and self._behind(fresh[-1].offset if fresh else first.offset()):
                # wait for the next fetch (poll returns at its first record) rather than
                # apply a sliver of the backlog
                nxt = self.consumer.poll(0.5)
                more = [] if nxt is None else [nxt, *self.consumer.consume(_READ_CHUNK, 0)]
            if not more:
                break
            events += self._decode(more, fresh)
        units, self.partial = merge_steps(self.partial + fresh, _key(self.tp))
        return units

    def settled_position(self) -> int | None:
        """The consumer's position when no step is half read (it is then past every record
        applied and any transaction markers after them), else None."""
        if self.partial:
            return None
        (pos,) = self.consumer.position([self.tp])
        return pos.offset

    def high_watermark(self) -> int:
        """The log end the last fetch reported (-1 before any)."""
        return self.consumer.get_watermark_offsets(self.tp, cached=True)[1]

    def close(self) -> None:
        self.consumer.close()

    def _decode(self, msgs: list, entries: list[Entry]) -> int:
        events = 0
        for msg in msgs:
            if msg.error() is not None:
                if msg.error().code() == KafkaError._AUTO_OFFSET_RESET:
                    raise LogGone(f"the change log no longer holds the next record: {msg.error()}")
                log.warning("change-log consumer error: %s", msg.error())
                continue
            try:
                entry = decode(msg.offset(), msg.value())
            except LogDecodeError as exc:
                self.on_foreign(msg, exc)
                entry = Entry(msg.offset(), None)
            if isinstance(entry.record, StepRecord):
                events += len(entry.record.event_ids)
            entries.append(entry)
        return events

    def _behind(self, last_offset: int) -> bool:
        # more than the commit marker after the last record: the log goes on past the fetch
        return self.high_watermark() - (last_offset + 1) > 1


def _key(tp: TopicPartition) -> str:
    return kafka.tp_key(tp.topic, tp.partition)
