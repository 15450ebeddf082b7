"""The request/reply path of a serving worker: ``rec-requests`` in, ``recommendations`` out.

Replicas share the requests. Every scorer with the same settings joins one consumer group on
``rec-requests`` (cooperative-sticky assignment), so each partition has one owner and every
request is answered by one replica in steady state. The position a replica commits is that
of requests whose answers the broker acknowledged, never of requests merely read. When a
replica dies or joins, its partitions move and the new owner starts at the committed position:
requests read but not answered are answered by the new owner, and requests answered but not
yet committed are answered twice. A consumer of ``recommendations`` keeps the first answer per
``request_id`` (README, "Scaling out"). A partition nobody committed yet starts at its end as
it is assigned (requests are ephemeral), and that position is committed at once, so a request
sent after the group formed is never skipped by a later owner.

librdkafka does the Kafka work in its own C threads. Two daemon threads bridge its blocking
calls, each blocked in C (GIL released) until something happens: one polls the consumer and
queues each burst of requests; one polls the producer, so delivery reports (the end-to-end
latency, the positions to commit) are served as they arrive. The requests pump pauses while a
batch is already waiting, so overload leaves requests in librdkafka's queue (in C) rather than
piling up as Python objects, and a batch's answers are queued with one ``produce_batch`` call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_INVALID,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.config import LetheSettings
from streams.kafka_config import check_access, librdkafka_config, librdkafka_log

log = logging.getLogger("lethe.requests")

#: how long a pump thread blocks in librdkafka before checking whether to stop
POLL_S = 0.1
#: how often answered positions are committed (and always at a rebalance and at close)
COMMIT_EVERY_S = 0.2

Delivered = Callable[[KafkaError | None], None]


def scorer_group(settings: LetheSettings) -> str:
    """The consumer group scorer replicas share (``<client_id>-scorer-<topic_prefix>``,
    under the ACL prefix ``<client_id>-scorer-`` of docs/security.md)."""
    return settings.scorer.group_id or f"{settings.client_id}-scorer-{settings.topic_prefix}"


@dataclass(frozen=True)
class Received:
    """One consumed request."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms: the record's Kafka timestamp (append time on topics Lethe creates)


@dataclass
class _Acks:
    """The answers of one batch still unacknowledged, and the positions they settle."""

    left: int
    positions: dict[int, int] = field(default_factory=dict)


class RequestChannel:
    """Requests from ``requests_topic`` (shared through ``group_id``), replies to
    ``replies_topic``. All public methods are for the worker's main thread."""

    def __init__(
        self,
        settings: LetheSettings,
        requests_topic: str,
        replies_topic: str,
        *,
        group_id: str,
        fetch_max_wait_ms: int,
        poll_batch: int,
        linger_ms: float = 0.0,
    ) -> None:
        self.requests_topic, self.replies_topic = requests_topic, replies_topic
        self._settings = settings
        self._poll_batch = max(1, poll_batch)
        common = {
            **librdkafka_config(settings),
            "error_cb": _log_client_error,
            "logger": librdkafka_log,
        }
        self._consumer_config = {
            **common,
            "group.id": group_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest",
            "on_commit": self._on_commit,
            "fetch.wait.max.ms": fetch_max_wait_ms,
            # a replica that dies is replaced within this (its partitions wait that long)
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            # librdkafka keeps fetching until this many requests wait locally (default
            # 100,000): under overload that was a stream of small fetches the broker paid for
            "queued.min.messages": 2 * self._poll_batch,
        }
        self._producer_config = {
            **common,
            "linger.ms": linger_ms,
            "acks": 1,  # an answer lost with a broker is asked again; speed matters more
            "enable.idempotence": False,
            "message.max.bytes": settings.limits.max_message_bytes,
        }
        self._pending: deque[Received] = deque()
        self._arrived = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        #: partitions owned now
        self.assigned: set[int] = set()
        self._ready = threading.Event()
        self._acks: deque[_Acks] = deque()
        self._settled: dict[int, int] = {}  # partition → position safe to commit
        self._committed: dict[int, int] = {}
        self._acks_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def open(self, timeout_s: float = 30.0) -> None:
        """Join the group and return once this replica owns its first partitions (or the
        group gave them all to others: ``timeout_s``)."""
        if self._settings.security.protocol != "PLAINTEXT":
            # librdkafka retries a failed SASL handshake forever: name the cause instead
            check_access(self._settings, [self.requests_topic, self.replies_topic])
        self._consumer = Consumer(self._consumer_config)
        self._producer = Producer(self._producer_config)
        self._consumer.subscribe(
            [self.requests_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self._threads = [
            threading.Thread(target=self._pump_requests, name="lethe-requests", daemon=True),
            threading.Thread(target=self._pump_deliveries, name="lethe-deliveries", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if not self._ready.wait(timeout_s):
            log.warning("no rec-requests partition assigned after %.0f s", timeout_s)

    def close(self, flush_s: float = 10.0) -> None:
        """Deliver what was answered (up to ``flush_s``), commit it, leave the group."""
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        if self._producer is not None:
            left = self._producer.flush(flush_s)
            if left:
                log.error("%d recommendations not delivered at shutdown", left)
        if self._consumer is not None:
            self._commit(sync=True)
            self._consumer.close()

    # -- group membership (called on the requests pump thread, inside poll) -----------------
    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        if parts:
            start = self._start_positions(consumer, parts)
            consumer.incremental_assign(start)
            known = [tp for tp in start if tp.offset >= 0]
            # a later owner starts where this one did, not at a later end
            committed = self._commit_start(consumer, known) if known else False
            with self._acks_lock:
                for tp in known:
                    if committed:
                        self._committed[tp.partition] = tp.offset
                    else:  # the next periodic commit sends it
                        self._settled[tp.partition] = tp.offset
            self.assigned |= {tp.partition for tp in parts}
            log.info("rec-requests partitions assigned: %s", sorted(tp.partition for tp in parts))
        self._ready.set()

    def _commit_start(self, consumer: Consumer, known: list[TopicPartition]) -> bool:
        try:
            consumer.commit(offsets=known, asynchronous=False)
            return True
        except KafkaException as exc:
            log.warning("could not commit the starting positions yet: %s", exc)
            return False

    def _start_positions(
        self, consumer: Consumer, parts: list[TopicPartition], timeout_s: float = 10.0
    ) -> list[TopicPartition]:
        """The committed position of each partition; where there is none, its end now.
        Retried while leaders or the group coordinator move; as a last resort OFFSET_STORED,
        with which librdkafka keeps asking for the committed position itself (and starts at
        the end only where nobody committed one), so that no answered-for position is
        skipped."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                start = []
                for tp in consumer.committed(parts, timeout=timeout_s):
                    if tp.error is not None:  # this partition's position was not read
                        raise KafkaException(tp.error)
                    if tp.offset == OFFSET_INVALID:  # nobody answered here yet: from the end
                        _, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
                        tp = TopicPartition(tp.topic, tp.partition, high)
                    start.append(tp)
                return start
            except KafkaException as exc:
                if time.monotonic() >= deadline:
                    log.warning("starting positions unknown (%s): left to the consumer", exc)
                    return [TopicPartition(tp.topic, tp.partition, OFFSET_STORED) for tp in parts]
                time.sleep(0.2)

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in parts}
        self._commit(sync=True, only=gone)  # what was answered stays answered
        self.assigned -= gone
        with self._arrived:  # their new owner answers what this one had not
            self._pending = deque(r for r in self._pending if r.partition not in gone)
        with self._acks_lock:
            for p in gone:
                self._settled.pop(p, None)
                self._committed.pop(p, None)
        log.info("rec-requests partitions revoked: %s", sorted(gone))

    # -- requests ---------------------------------------------------------------------------
    def _pump_requests(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        last_commit = time.monotonic()
        while not self._stopping.is_set():
            if time.monotonic() - last_commit >= COMMIT_EVERY_S:
                self._commit(sync=False)
                last_commit = time.monotonic()
            with self._arrived:
                if len(self._pending) >= self._poll_batch:
                    self._arrived.wait(POLL_S)
                    continue
            try:
                first = consumer.poll(POLL_S)  # returns as soon as one request is there
                if first is None:
                    continue
                # and whatever else has already arrived, without waiting for more
                burst = [first, *consumer.consume(self._poll_batch - 1, 0)]
            except Exception:  # the pump must outlive any one failure (a rebalance's, say)
                log.exception("request consumer failed")
                time.sleep(POLL_S)
                continue
            got = [r for m in burst if (r := _received(m)) is not None]
            if got:
                with self._arrived:
                    self._pending.extend(got)
                    self._arrived.notify_all()

    def next_batch(self, max_batch: int, wait_s: float, fill_s: float = 0.0) -> list[Received]:
        """Up to ``max_batch`` requests: waits up to ``wait_s`` for the first, then up to
        ``fill_s`` more for the batch to fill. Empty when none came."""
        with self._arrived:
            if not self._pending and wait_s > 0:
                self._arrived.wait(wait_s)
            if self._pending and fill_s > 0 and len(self._pending) < max_batch:
                deadline = time.monotonic() + fill_s
                while len(self._pending) < max_batch and (left := deadline - time.monotonic()) > 0:
                    self._arrived.wait(left)
            n = min(max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(n)]
            self._arrived.notify_all()  # room again for the pump
        return batch

    @property
    def waiting(self) -> int:
        with self._arrived:
            return len(self._pending)

    # -- replies ----------------------------------------------------------------------------
    def publish_batch(
        self, batch: list[Received], replies: list[tuple[bytes, bytes, Delivered]]
    ) -> None:
        """Queue the answers of ``batch`` (``(value, key, on_delivery)``, any number: requests
        that were dead-lettered have none) in one call. The batch's positions become
        committable once every answer is acknowledged."""
        producer = self._producer
        assert producer is not None
        acks = _Acks(left=len(replies))
        for r in batch:
            if r.partition in self.assigned:  # a revoked partition's new owner answers it
                acks.positions[r.partition] = max(acks.positions.get(r.partition, 0), r.offset + 1)
        with self._acks_lock:
            self._acks.append(acks)
        if not replies:
            self._settle()
            return
        messages = [
            {"value": value, "key": key, "callback": self._reporter(acks, on_delivery)}
            for value, key, on_delivery in replies
        ]
        if producer.produce_batch(self.replies_topic, messages) == len(messages):
            return
        for message in messages:
            error = message.get("_error")
            if error is None:
                continue
            if error.code() == KafkaError._QUEUE_FULL:  # one by one, waiting for room
                self._produce(message["value"], message["key"], message["callback"])
            else:  # refused for good: reported like a failed delivery
                message["callback"](error, None)

    def _produce(self, value: bytes, key: bytes, report) -> None:
        producer = self._producer
        assert producer is not None
        while True:
            try:
                producer.produce(self.replies_topic, value=value, key=key, on_delivery=report)
                return
            except BufferError:  # librdkafka's local queue is full: let deliveries drain
                producer.poll(0.1)

    def _reporter(self, acks: _Acks, on_delivery: Delivered):
        def report(error: KafkaError | None, _message: Message | None) -> None:
            try:
                on_delivery(error)
            except Exception:  # a callback must not take the delivery thread down
                log.exception("delivery callback failed")
            with self._acks_lock:
                acks.left -= 1
            if acks.left <= 0:
                self._settle()

        return report

    def _settle(self) -> None:
        """Settle positions of fully acknowledged batches, in batch order."""
        with self._acks_lock:
            while self._acks and self._acks[0].left <= 0:
                done = self._acks.popleft()
                for p, pos in done.positions.items():
                    if p in self.assigned:
                        self._settled[p] = max(self._settled.get(p, 0), pos)

    def _commit(self, *, sync: bool, only: set[int] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        with self._acks_lock:
            todo = {
                p: pos
                for p, pos in self._settled.items()
                if pos > self._committed.get(p, -1) and (only is None or p in only)
            }
            self._committed.update(todo)
        if not todo:
            return
        offsets = [TopicPartition(self.requests_topic, p, pos) for p, pos in todo.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=not sync)
        except KafkaException as exc:  # a later commit covers it; a rebalance may repeat some
            log.warning("commit of answered requests failed: %s", exc)
            self._uncommitted(offsets)

    def _on_commit(self, err: KafkaError | None, parts: list[TopicPartition]) -> None:
        """An asynchronous commit's outcome (on the pump thread, inside poll)."""
        failed = [tp for tp in parts if err is not None or tp.error is not None]
        if failed:
            log.warning("commit of answered requests failed: %s", err or failed[0].error)
            self._uncommitted(failed)

    def _uncommitted(self, parts: list[TopicPartition]) -> None:
        # forget these positions as committed, so that the next commit sends them again
        # (else a coordinator moving during the commit left them to be answered twice)
        with self._acks_lock:
            for tp in parts:
                if self._committed.get(tp.partition) == tp.offset:
                    del self._committed[tp.partition]

    def _pump_deliveries(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._stopping.is_set():
            producer.poll(POLL_S)  # serves delivery reports as soon as they come


def _received(message: Message) -> Received | None:
    error = message.error()
    if error is not None:
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("request consumer: %s", error)
        return None
    _, timestamp = message.timestamp()
    return Received(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        key=message.key(),
        value=message.value(),
        timestamp=timestamp,
    )


def _log_client_error(error: KafkaError) -> None:
    log.warning("librdkafka: %s", error)
