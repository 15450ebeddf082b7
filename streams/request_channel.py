"""The scorer's request/reply path: ``rec-requests`` in, ``recommendations`` out, on
librdkafka (confluent-kafka) rather than aiokafka.

Why a second client: at 200 requests/s aiokafka's fetch, produce and response handling ran in
the scorer's interpreter, on the same core as the model: the scorer's one busy thread took 84 %
of a core, of which the decode → score → encode path is about 1.7 ms per request, so Kafka
I/O cost more than the model. With librdkafka doing that work in its own C threads the same
run took 54 % on the event loop plus 8 % in librdkafka and the two pump threads (per-thread
CPU from /proc, same broker, back to back). The event loop now only decodes, scores and
encodes. The scorer's state side (interactions, deletions, model updates, with the
deletion barrier's offset reads) stays on aiokafka like every other worker.

Two daemon threads bridge librdkafka's blocking calls to the event loop, each blocked in C
(GIL released) until something happens: one polls the consumer and hands each burst of
requests to the loop; one polls the producer so delivery reports (and the end-to-end latency
they record) are served as they arrive, not whenever the loop next looks.

Requests are ephemeral: every partition is read from its end at start, nothing is committed
(the group id is random and never joins a group: partitions are assigned, not subscribed).

Overload (more requests than the model keeps up with) is paced like aiokafka's fetcher did:
the pump pauses while a batch is already waiting, so requests stay in librdkafka's queue (in
C) rather than piling up as Python objects, and librdkafka stops prefetching two batches
ahead; a batch's answers are queued with one ``produce_batch`` call, so they leave together
even with ``linger.ms`` 0. Without these, at 1,000 requests/s the broker served a stream of
one-record fetches and produce requests: 51–75 % of a core against 27–30 % with the aiokafka
path, and p50 7.6–18.9 s against 2.0–2.3 s. With them: broker 28–30 %, p50 1.7–4.0 s against
2.6–3.2 s (back to back on one broker, ``python -m benchmarks.scoring --rates 1000``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.config import LetheSettings
from streams.kafka_config import check_access, librdkafka_config

log = logging.getLogger("lethe.scorer")

#: how long a pump thread blocks in librdkafka before checking whether to stop
POLL_S = 0.1

Delivered = Callable[[KafkaError | None], None]
#: what librdkafka calls back with: a :data:`Delivered` wrapped by :func:`_reporter`
Reporter = Callable[[KafkaError | None, Message | None], None]


@dataclass(frozen=True)
class Received:
    """One consumed request; the fields the scorer and dead-lettering read (as aiokafka's
    ConsumerRecord names them)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms: the producer's CreateTime


class RequestChannel:
    """Consume ``requests_topic`` from its end; publish replies to ``replies_topic``."""

    def __init__(
        self,
        settings: LetheSettings,
        requests_topic: str,
        replies_topic: str,
        fetch_max_wait_ms: int,
        poll_batch: int,
        linger_ms: float = 0.0,
    ) -> None:
        self.requests_topic, self.replies_topic = requests_topic, replies_topic
        self._settings = settings
        #: the most requests handed over at once, and how many may wait before the pump pauses
        self._poll_batch = max(1, poll_batch)
        common = {**librdkafka_config(settings), "error_cb": _log_client_error}
        self._consumer_config = {
            **common,
            "group.id": f"{settings.client_id}-scorer-{uuid.uuid4().hex}",  # never joined
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": fetch_max_wait_ms,
            # librdkafka keeps fetching until this many requests wait locally (default
            # 100,000): under overload that was a stream of small fetches the broker paid for;
            # two batches ahead keeps the model fed and lets later fetches come back full
            "queued.min.messages": 2 * self._poll_batch,
        }
        # as the aiokafka reply producer (kafka_config.reply_producer_kwargs): at once, acks=1
        self._producer_config = {
            **common,
            "linger.ms": linger_ms,
            "acks": 1,
            "enable.idempotence": False,
            "message.max.bytes": settings.limits.max_message_bytes,
        }
        self._pending: deque[Received] = deque()
        self._arrived = asyncio.Event()
        # requests handed to the loop (or on their way) and not yet taken by next_batch;
        # counted by the pump itself, so a busy loop cannot make it overshoot
        self._outstanding = 0
        self._room = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._connect)
        self._threads = [
            threading.Thread(target=self._pump_requests, args=(loop,), name="lethe-requests"),
            threading.Thread(target=self._pump_deliveries, name="lethe-deliveries"),
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def _connect(self) -> None:
        if self._settings.security.protocol != "PLAINTEXT":
            # librdkafka retries a failed SASL handshake forever: name the cause instead
            check_access(self._settings, [self.requests_topic, self.replies_topic])
        self._consumer = Consumer(self._consumer_config)
        self._producer = Producer(self._producer_config)
        assign_at_end(self._consumer, self.requests_topic)

    async def close(self, flush_s: float = 10.0) -> None:
        """Stop reading, deliver what was published (up to ``flush_s``), close both clients."""
        self._stopping.set()
        await asyncio.to_thread(self._shutdown, flush_s)

    def _shutdown(self, flush_s: float) -> None:
        for thread in self._threads:
            thread.join()
        if self._producer is not None:
            left = self._producer.flush(flush_s)
            if left:
                log.error("%d recommendations not delivered at shutdown", left)
        if self._consumer is not None:
            self._consumer.close()

    # -- requests ---------------------------------------------------------------------------
    def _pump_requests(self, loop: asyncio.AbstractEventLoop) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            with self._room:
                if self._outstanding >= self._poll_batch:
                    self._room.wait(POLL_S)
                    continue
            try:
                first = consumer.poll(POLL_S)  # returns as soon as one request is there
                if first is None:
                    continue
                # and whatever else has already arrived, without waiting for more
                burst = [first, *consumer.consume(self._poll_batch - 1, 0)]
            except KafkaException as exc:
                log.error("request consumer failed: %s", exc)
                continue
            got = [r for r in map(_received, burst) if r is not None]
            if got:
                with self._room:
                    self._outstanding += len(got)
                try:
                    loop.call_soon_threadsafe(self._deliver, got)
                except RuntimeError:  # the loop closed under us: shutting down
                    return

    def _deliver(self, got: list[Received]) -> None:
        self._pending.extend(got)
        self._arrived.set()

    @property
    def waiting(self) -> int:
        """Requests taken from librdkafka and not yet by ``next_batch``: fewer than two
        batches (the pump pauses at one and hands over at most one more)."""
        with self._room:
            return self._outstanding

    async def next_batch(self, max_batch: int, max_wait_s: float) -> list[Received]:
        """Up to ``max_batch`` requests: waits for the first, then up to ``max_wait_s`` more
        for the batch to fill (0: only what has already arrived)."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        if max_wait_s > 0 and len(self._pending) < max_batch:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max_wait_s
            while len(self._pending) < max_batch and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
        n = min(max_batch, len(self._pending))
        batch = [self._pending.popleft() for _ in range(n)]
        with self._room:
            self._outstanding -= n
            if self._outstanding < self._poll_batch:
                self._room.notify()
        return batch

    # -- replies ----------------------------------------------------------------------------
    def publish(self, value: bytes, key: bytes, on_delivery: Delivered) -> None:
        """Queue one reply; ``on_delivery(error or None)`` runs on the delivery thread."""
        self._produce(value, key, _reporter(on_delivery))

    def publish_batch(self, replies: list[tuple[bytes, bytes, Delivered]]) -> None:
        """Queue ``(value, key, on_delivery)`` replies together, so librdkafka sends them in
        one produce request per partition leader rather than one each. A reply refused at
        once (too large, say) is reported to its ``on_delivery`` here, before returning."""
        producer = self._producer
        assert producer is not None
        messages = [
            {"value": value, "key": key, "callback": _reporter(on_delivery)}
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

    def _produce(self, value: bytes, key: bytes, report: Reporter) -> None:
        producer = self._producer
        assert producer is not None
        try:
            producer.produce(self.replies_topic, value=value, key=key, on_delivery=report)
        except BufferError:  # librdkafka's local queue is full: let deliveries drain, retry
            producer.poll(1.0)
            producer.produce(self.replies_topic, value=value, key=key, on_delivery=report)

    def _pump_deliveries(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._stopping.is_set():
            producer.poll(POLL_S)  # serves delivery reports as soon as they come


def assign_at_end(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> None:
    """Assign every partition of ``topic`` at its end offset, read now: OFFSET_END would
    resolve on a later fetch and could skip what is produced in between. A topic created a
    moment ago may not have its leaders yet; that is retried until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            consumer.assign(_end_offsets(consumer, topic, max(0.5, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            error = exc.args[0]
            transient = error.retriable() or error.code() in _LEADERLESS
            if not transient or time.monotonic() >= deadline:
                raise RuntimeError(f"cannot read the end offsets of {topic}: {error}") from exc
            time.sleep(0.2)


#: what a topic's partitions answer until their leaders are known
_LEADERLESS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
    }
)


def _end_offsets(consumer: Consumer, topic: str, timeout_s: float) -> list[TopicPartition]:
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


def _reporter(on_delivery: Delivered) -> Reporter:
    def report(error: KafkaError | None, _message: Message | None) -> None:
        try:
            on_delivery(error)
        except Exception:  # a callback must not take the delivery thread down
            log.exception("delivery callback failed")

    return report


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
