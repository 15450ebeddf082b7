"""The consumer loop of the IMCorrect worker: Kafka in, service calls, effects out.

Exactly-once state: the service's snapshot records the input offsets it reflects; on start
the runtime assigns every input partition at those offsets (the beginning when none), so a
crash re-reads exactly what the snapshot does not hold. Duplicate deliveries are absorbed by
the service's dedup window.

One batch: take what librdkafka has already fetched (waiting ``batch_max_wait_ms`` for the
first record, never for more), so batches stay small while the worker keeps up and grow to
``batch_max_events`` while it drains a backlog; decode (dead-lettering what fails); hold
deletions at the barrier; apply; publish receipts through the outbox; answer requests.

Receipts go out only after a snapshot that no longer holds the forgotten data is on disk;
the receipts are in that snapshot (the outbox) with the receipts topic's end offsets, and a
restart publishes those the topic does not have yet: exactly one receipt per request.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from dataclasses import dataclass, field

from streams import metrics as m
from streams.config import LetheSettings
from streams.contracts import ContractError, DeletionReceipt, DeletionRequest, RecRequest
from streams.runtime import kafka
from streams.runtime.barrier import Held, OrderedBarrier
from streams.runtime.deadletter import bounded_key, dead_letter_bytes
from streams.runtime.decode import decode_interactions, decode_one
from streams.runtime.lock import StateLock
from streams.runtime.memory import MemoryIO
from streams.services.batch import InteractionColumns
from streams.services.imcorrect import IMCorrectService
from streams.topics import topic_name

log = logging.getLogger("lethe.imcorrect")

#: records asked of librdkafka per consume call
_CONSUME_CHUNK = 10_000
#: a batch this large is followed by gc.freeze() (see _apply)
_FREEZE_AFTER = 50_000


@dataclass
class _Batch:
    """What one step read: decoded interactions, the offsets they move, requests to answer."""

    interactions: InteractionColumns = field(default_factory=InteractionColumns)
    offsets: dict[str, int] = field(default_factory=dict)
    requests: list = field(default_factory=list)
    dead: int = 0
    size: int = 0


class IMCorrectRuntime:
    """Runs an :class:`IMCorrectService` on Kafka until :meth:`stop`."""

    def __init__(self, settings: LetheSettings, io: kafka.KafkaIO | MemoryIO | None = None) -> None:
        self.settings = settings
        self.io = io or kafka.KafkaIO(settings)
        self.topics = {
            name: topic_name(settings, name)
            for name in (
                "interactions",
                "deletions",
                "rec-requests",
                "recommendations",
                "deletion-receipts",
                "dead-letters",
            )
        }
        self.logical = {v: k for k, v in self.topics.items()}
        self.barrier = OrderedBarrier()
        self._stop = False
        self._last_snapshot = time.monotonic()
        self._snapshot_offsets: dict[str, int] = {}
        self._lag_at = 0.0
        self._undelivered = 0

    def stop(self) -> None:
        self._stop = True

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.settings
        lock = StateLock(cfg.state_dir, "imcorrect")  # exits with a message if held
        try:
            self.service = IMCorrectService(cfg)
            # the state is long-lived: keep the collector off it, and let batches of 10⁵
            # short-lived objects pass without a collection every 700 allocations
            gc.freeze()
            gc.set_threshold(100_000, 50, 100)
            self._snapshot_offsets = dict(self.service.offsets)
            port = m.serve(cfg.metrics_host, cfg.metrics_port)
            self.io.create_topics()
            self.consumer = self.io.consumer()
            self.producer = self.io.producer()
            try:
                self._assign()
                self._resolve_outbox()
                log.info("imcorrect worker ready (metrics on :%s)", port)
                # receipts say how long the logs keep data; warns past the erasure deadline
                # (the service starts from the settings' values; the broker's are the truth)
                retention = self.io.retention()
                if retention is not None:
                    self.service.applier.retention = retention
                while not self._stop:
                    self._step()
                self._snapshot()  # clean shutdown
            finally:
                self.producer.flush(30)
                self.consumer.close()
        finally:
            lock.release()

    def _assign(self) -> None:
        names = ["interactions", "deletions", "deletion-receipts", "rec-requests"]
        self.parts = {name: self.io.partitions(self.topics[name]) for name in names}
        for name in ("interactions", "deletions"):
            self.io.assign(self.consumer, self.topics[name], self.parts[name], self.service.offsets)
        topic = self.topics["deletion-receipts"]
        self._receipt_ends = self.io.end_offsets(topic, self.parts["deletion-receipts"])
        if self.settings.imcorrect.answer_requests:  # else the scoring agent answers them
            # requests are ephemeral: answer what arrives from now on
            topic = self.topics["rec-requests"]
            self.io.assign(self.consumer, topic, self.parts["rec-requests"], None)

    def _resolve_outbox(self) -> None:
        """Publish receipts decided before a crash, unless they already went out."""
        pending = self.service.outbox
        if not pending:
            return
        topic = self.topics["deletion-receipts"]
        published: set[str] = set()
        for msg in self.io.read_range(topic, self.service.state.receipts_end_offsets):
            try:
                published.add(DeletionReceipt.model_validate_json(msg.value()).request_id)
            except ValueError:
                continue  # not a receipt of ours: it cannot match a pending one
        self._publish_receipts([r for r in pending if r.request_id not in published])
        self.service.clear_outbox()
        self._snapshot()

    # -- one batch ----------------------------------------------------------------------------
    def _step(self) -> None:
        cfg = self.settings.imcorrect
        batch = _Batch()
        # poll returns as soon as one record is there (a batch consume would wait out its
        # whole timeout for a full batch); what else is already fetched is taken at once,
        # decoded a chunk at a time, so a backlog makes one large batch without holding
        # all of its raw records
        first = self.consumer.poll(cfg.batch_max_wait_ms / 1000)
        if first is not None:
            self._absorb(batch, [first])
        backlog = None  # records behind the log end, asked once a chunk comes back full
        while first is not None and batch.size < cfg.batch_max_events and not self._stop:
            want = min(_CONSUME_CHUNK, cfg.batch_max_events - batch.size)
            # while draining a known backlog, wait briefly for the next fetch instead of
            # cutting the batch short (each batch costs one correction of the mapping)
            draining = backlog is not None and batch.size < backlog
            more = self.consumer.consume(want, 0.5 if draining else 0)
            if not more:
                break
            self._absorb(batch, more)
            if backlog is None and len(more) == want:
                backlog = batch.size + self._input_lag()
        if batch.size:
            self._apply(batch)
        self._maybe_snapshot()
        self._gauges()

    def _input_lag(self) -> int:
        """Records of ``interactions`` not yet read (by the consumer's positions)."""
        topic = self.topics["interactions"]
        ends = self.io.end_offsets(topic, self.parts["interactions"])
        read = self.io.positions(self.consumer, topic, self.parts["interactions"])
        return sum(max(0, end - read[key]) if read[key] >= 0 else end for key, end in ends.items())

    def _absorb(self, batch: _Batch, records: list) -> None:
        """Decode a chunk of records into the batch; dead-letter what fails."""
        interactions, values, deletions = [], [], []
        last: dict[int, int] = {}  # interactions partition → offset of its last record
        topic = self.topics["interactions"]
        for msg in records:
            if msg.error() is not None:
                log.warning("consumer error: %s", msg.error())
                continue
            if msg.topic() == topic:  # the hot path: one comparison, no lookups
                interactions.append(msg)
                values.append(msg.value())
                last[msg.partition()] = msg.offset()
            elif self.logical[msg.topic()] == "deletions":
                deletions.append(msg)
            else:
                batch.requests.append(msg)
        batch.size += len(records)
        if interactions:
            cols, rejected = decode_interactions(values, self.settings.limits)
            for r in rejected:
                self._dead_letter(interactions[r.position], r.error, "interactions")
            batch.dead += len(rejected)
            batch.interactions.extend(cols)
            for partition, offset in last.items():
                batch.offsets[kafka.tp_key(topic, partition)] = offset + 1
            m.EVENTS.labels("interactions", "valid").inc(len(cols))
        batch.dead += self._hold_deletions(deletions)

    def _apply(self, batch: _Batch) -> None:
        offsets, interactions = batch.offsets, batch.interactions
        positions = {**self.service.offsets, **offsets}
        deletions: list[DeletionRequest] = []
        for held in self.barrier.release(positions):
            offsets[held.key] = held.offset + 1
            if held.request is not None:
                deletions.append(held.request)
        if len(interactions) or deletions:
            outcome = self.service.apply(interactions, deletions, offsets)
            if len(interactions) >= _FREEZE_AFTER:
                # a large batch leaves a large long-lived state: move it out of the
                # collector's sight, so a later full collection does not walk it. A
                # precaution, not a measured gain: the multi-second forget stalls seen on
                # ML-1M were the admin list_offsets, gone since (docs/measurements.md)
                gc.collect(1)
                gc.freeze()
            m.BATCH_SIZE.observe(len(interactions) + len(deletions))
            m.APPLIED.inc(outcome.learned)
            m.APPLY_SECONDS.observe(outcome.apply_seconds)
            if deletions or outcome.apply_seconds > 1.0:
                log.info(
                    "applied %d events with %d deletion(s) in %.3f s",
                    len(interactions),
                    len(deletions),
                    outcome.apply_seconds,
                )
            if outcome.receipts:
                self._deliver_receipts(outcome.receipts)
        if batch.dead or (offsets and not (len(interactions) or deletions)):
            self.service.note_dead_letters(batch.dead, offsets)
        for msg in batch.requests:
            self._answer(msg)

    def _hold_deletions(self, records: list) -> int:
        """Hold each deletion read with the interactions end offsets asked for after it was
        read (one question for all records of a batch); returns how many were malformed."""
        if not records:
            return 0
        topic = self.topics["interactions"]
        ends = self.io.end_offsets(topic, self.parts["interactions"])
        dead = 0
        for msg in records:
            try:
                request = decode_one(DeletionRequest, msg.value(), self.settings.limits)
                m.EVENTS.labels("deletions", "valid").inc()
            except ContractError as exc:
                self._dead_letter(msg, exc, "deletions")
                request, dead = None, dead + 1
            key = kafka.tp_key(msg.topic(), msg.partition())
            self.barrier.hold(Held(key, msg.offset(), request, ends))
        return dead

    # -- effects ------------------------------------------------------------------------------
    def _dead_letter(self, msg, error: ContractError, logical: str) -> None:
        value = dead_letter_bytes(
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
            error=error,
            max_message_bytes=self.settings.limits.max_message_bytes,
        )
        log.warning(
            "dead letter from %s[%d]@%d: %s",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            str(error)[:200],
        )
        m.DEAD_LETTERS.labels(logical, getattr(error, "field", None) or "message").inc()
        m.EVENTS.labels(logical, "dead_letter").inc()
        self._produce(self.topics["dead-letters"], value, bounded_key(msg.key()))

    def _produce(self, topic: str, value: bytes, key: bytes | None, on_delivery=None) -> None:
        def delivered(err, _msg) -> None:
            if err is not None:
                self._undelivered += 1
                log.error("could not publish to %s: %s", topic, err)
            if on_delivery is not None:
                on_delivery(err, _msg)

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain it
                self.producer.poll(0.1)
        self.producer.poll(0)

    def _deliver_receipts(self, receipts: list[DeletionReceipt]) -> None:
        t0 = time.perf_counter()
        # where the receipts topic ended at most (known from the last deliveries, no broker
        # question on a deletion's path); a restart looks for staged receipts after it
        ends = dict(self._receipt_ends)
        # applied_at is when the data is gone from memory *and* disk, i.e. after the snapshot
        now = int(time.time() * 1000)
        receipts = [r.model_copy(update={"applied_at": now}) for r in receipts]
        self.service.stage_receipts(receipts, ends)
        t1 = time.perf_counter()
        self._snapshot(for_receipt=True)  # the forgotten data is gone from disk first
        t2 = time.perf_counter()
        self._publish_receipts(receipts)
        self.service.clear_outbox()
        log.info(
            "published %d receipt(s): offsets %.3f s, snapshot %.3f s, publish %.3f s",
            len(receipts),
            t1 - t0,
            t2 - t1,
            time.perf_counter() - t2,
        )

    def _publish_receipts(self, receipts: list[DeletionReceipt]) -> None:
        failed: list[object] = []
        topic = self.topics["deletion-receipts"]

        def delivered(err, msg) -> None:
            if err is not None:
                failed.append(err)
            else:  # the topic now ends at least past this receipt
                key = kafka.tp_key(topic, msg.partition())
                self._receipt_ends[key] = max(self._receipt_ends.get(key, 0), msg.offset() + 1)

        for receipt in receipts:
            self._produce(topic, receipt.to_bytes(), receipt.request_id.encode(), delivered)
        self.producer.flush(60)
        if failed:
            # the outbox still holds them: a restart publishes what did not get out
            raise RuntimeError(f"{len(failed)} receipt(s) could not be published: {failed[0]}")
        now = time.time()
        for receipt in receipts:
            m.RECEIPTS.labels(receipt.status).inc()
            if receipt.requested_at is not None:
                m.FORGET_LATENCY.observe(max(0.0, now - receipt.requested_at / 1000))
            log.info(
                "receipt %s for %s request: %s", receipt.status, receipt.scope, receipt.removed
            )

    def _answer(self, msg) -> None:
        try:
            request = decode_one(RecRequest, msg.value(), self.settings.limits)
        except ContractError as exc:
            self._dead_letter(msg, exc, "rec-requests")
            return
        m.EVENTS.labels("rec-requests", "valid").inc()
        rec = self.service.answer(request)
        self._produce(self.topics["recommendations"], rec.to_bytes(), request.user_id.encode())
        m.RECOMMENDATIONS.labels(rec.strategy).inc()

    # -- snapshots and gauges -----------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        due = time.monotonic() - self._last_snapshot >= self.settings.imcorrect.snapshot_interval_s
        if due and self.service.offsets != self._snapshot_offsets:
            self._snapshot()  # an idle worker rewrites nothing
        elif due:
            self._last_snapshot = time.monotonic()

    def _snapshot(self, for_receipt: bool = False) -> None:
        self.producer.flush(60)  # dead letters of records the snapshot passes are out
        start = time.perf_counter()
        self.service.save(for_receipt=for_receipt)
        m.SNAPSHOT_SECONDS.observe(time.perf_counter() - start)
        self._last_snapshot = time.monotonic()
        self._snapshot_offsets = dict(self.service.offsets)

    def _gauges(self) -> None:
        now = time.monotonic()
        m.SNAPSHOT_AGE.set(now - self._last_snapshot)
        oldest = self.barrier.oldest_ts()
        m.DELETION_PENDING_AGE.set(max(0.0, time.time() - oldest / 1000) if oldest else 0.0)
        if now - self._lag_at < 2.0:
            return
        self._lag_at = now
        st = self.service.state
        model = st.model
        m.STATE_SIZE.labels("users").set(len(st.users))
        m.STATE_SIZE.labels("items").set(len(st.items))
        m.STATE_SIZE.labels("interactions").set(model.n_interactions)
        m.MODEL_VERSION.labels("imcorrect").set(model.version)
        m.REFACTORISATIONS.set(model.refactorisations)
        for name in ("interactions", "deletions"):
            topic, parts = self.topics[name], self.parts[name]
            for key, end in self.io.fetched_end_offsets(self.consumer, topic, parts).items():
                if end < 0:
                    continue  # nothing fetched from this partition yet
                lag = end - self.service.offsets.get(key, 0)
                m.CONSUMER_LAG.labels(name, key.rsplit(":", 1)[1]).set(max(lag, 0))


def run_worker(settings: LetheSettings) -> None:
    """Run until SIGINT/SIGTERM, then snapshot and exit cleanly."""
    runtime = IMCorrectRuntime(settings)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runtime.stop())
    runtime.run()
