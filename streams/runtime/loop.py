"""The consumer loop every worker runs: Kafka in, service calls, effects out.

Exactly-once state: the service's snapshot records the input offsets it reflects; on start
the runtime assigns every input partition at those offsets (the beginning when none), so a
crash re-reads exactly what the snapshot does not hold. Duplicate deliveries are absorbed by
the service's dedup window.

One step: take what librdkafka has already fetched (waiting ``batch_max_wait_ms`` for the
first record, never for more), so batches stay small while the worker keeps up and grow to
``batch_max_events`` while it drains a backlog; decode (dead-lettering what fails); hold
deletions at the barrier; apply; make the effects durable and public in the order of
:mod:`streams.services.base`; answer requests.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams import metrics as m
from streams.config import LetheSettings
from streams.contracts import (
    ContractError,
    DeletionRequest,
    ItemMetadata,
    ModelUpdate,
    RecRequest,
)
from streams.runtime import kafka
from streams.runtime.barrier import Held, OrderedBarrier
from streams.runtime.decode import decode_interactions, decode_one, reference_ms
from streams.runtime.lock import StateLock
from streams.runtime.memory import MemoryIO
from streams.runtime.publish import Publisher
from streams.runtime.snapshots import SnapshotClock
from streams.services.base import Effects, Inputs, Service, StepAbandoned
from streams.topics import topic_name

log = logging.getLogger("lethe.runtime")

#: records asked of librdkafka per consume call
_CONSUME_CHUNK = 10_000
#: a batch this large is followed by gc.freeze() (see _apply)
_FREEZE_AFTER = 50_000
#: the topics a runtime may touch (logical names)
_TOPICS = (
    "interactions",
    "deletions",
    "model-updates",
    "rec-requests",
    "recommendations",
    "deletion-receipts",
    "dead-letters",
    "imcorrect-log",
    "imcorrect-replicas",
    "items",
)


@dataclass
class _Step:
    """What one step read: decoded input, the offsets it moves, requests to answer."""

    inputs: Inputs = field(default_factory=Inputs)
    requests: list = field(default_factory=list)
    dead: int = 0
    size: int = 0


def seconds_since(epoch_ms: int | None) -> float:
    """Seconds from an epoch-ms time (a deletion's ts) to now; 0 for none."""
    return max(0.0, time.time() - epoch_ms / 1000) if epoch_ms else 0.0


class Runtime:
    """Runs one :class:`~streams.services.base.Service` on Kafka until :meth:`stop`.

    ``make_service`` builds the service once the state folder's lock is held.
    """

    def __init__(
        self,
        settings: LetheSettings,
        make_service: Callable[[LetheSettings], Service],
        io: kafka.KafkaIO | MemoryIO | None = None,
        *,
        name: str,
        answer_requests: bool = False,
        serve_group: str | None = None,
    ) -> None:
        self.settings = settings
        self.make_service = make_service
        self.name = name
        #: answer ``rec-requests`` read with the input (a worker that also learns)
        self.answer_requests = answer_requests
        #: answer them through a request channel shared by this consumer group (a scorer)
        self.serve_group = serve_group
        self.server = None
        self._busy = False
        self.io = io or kafka.KafkaIO(settings)
        self.topics = {logical: topic_name(settings, logical) for logical in _TOPICS}
        self.logical = {v: k for k, v in self.topics.items()}
        self.barrier = OrderedBarrier()
        # ts of the oldest deletion read and not yet receipted (held, or being applied),
        # read at scrape time: a step that takes minutes (a retrain) still ages it
        self._oldest_deletion_ms: int | None = None
        self._applying_ms: int | None = None
        m.DELETION_PENDING_AGE.set_function(self._deletion_age)
        self._stop = False
        self.attached = False  # run inside another worker's loop (attach)
        self.snapshots = SnapshotClock()
        self._lag_at = 0.0

    def stop(self) -> None:
        self._stop = True

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.settings
        # exits with a message if held; a standby waits for the holder to go
        lock = StateLock(cfg.state_dir, self.name, wait=cfg.standby, stopped=lambda: self._stop)
        if not lock.held:
            return  # a standby stopped before it took over
        try:
            self.service = self.make_service(cfg)
            interrupt_when = getattr(self.service, "interrupt_when", None)
            if interrupt_when is not None:  # long work gives way to a stop request
                interrupt_when(lambda: self._stop)
            # the state is long-lived: keep the collector off it, and let batches of 10⁵
            # short-lived objects pass without a collection every 700 allocations
            gc.freeze()
            gc.set_threshold(100_000, 50, 100)
            self.snapshots.track(self.service)
            port = m.serve(cfg.metrics_host, cfg.metrics_port, m.port_may_move(cfg))
            self.io.create_topics()
            self.consumer = self.io.consumer()
            self.publisher = Publisher(cfg, self.io, self.topics)
            try:
                self._assign()
                self.publisher.start()
                if self.serve_group is not None:
                    from streams.runtime.serve import RequestServer

                    self.server = RequestServer(cfg, self.service, self.publisher, self.serve_group)
                    self.server.open()
                # receipts say how long the logs keep data; warns past the erasure deadline
                # (a service starts from the settings' values; the broker's are the truth)
                retention = self.io.retention()
                if retention is not None:
                    self.service.use_retention(retention)
                self._resolve_outbox()
                log.info("%s worker ready (metrics on :%s)", self.name, port)
                try:
                    while not self._stop:
                        self._step()
                except StepAbandoned:
                    # half-applied in memory: nothing of it is saved or published, as after
                    # a crash; the last snapshot's offsets bring the step back
                    log.warning(
                        "%s worker stopped during a step; it is read again at the next start",
                        self.name,
                    )
                else:
                    self._snapshot()  # clean shutdown
            finally:
                if self.server is not None:
                    self.server.close()
                self.publisher.flush(30)
                self.consumer.close()
                self.service.close()
        finally:
            lock.release()

    def attach(self, service: Service, publisher: Publisher) -> None:
        """Run :meth:`step` for ``service`` inside another worker's loop, which holds the
        lock, the metrics port and ``publisher`` (the IMCorrect writer's sequencer)."""
        self.service = service
        self.publisher = publisher
        # the host owns the snapshot and apply metrics (this service only commits steps)
        self.attached = True
        self.snapshots.track(service)
        self.consumer = self.io.consumer()
        self._assign()

    def step(self) -> None:
        """One step of an attached service."""
        self._step()

    def detach(self) -> None:
        self.consumer.close()
        # a writer that lost its role holds no deletion any more: its age must not grow,
        # and its lag must not stay exported beside the new writer's
        self._oldest_deletion_ms = self._applying_ms = None
        m.CONSUMER_LAG.clear()

    def _assign(self) -> None:
        svc = self.service
        self.parts = {
            name: self.io.partitions(self.topics[name]) for name in (*svc.reads, *svc.replays)
        }
        for name in svc.reads:
            self.io.assign(self.consumer, self.topics[name], self.parts[name], svc.offsets)
        for name in svc.replays:  # compacted: the newest record of each key, from the start
            self.io.assign(self.consumer, self.topics[name], self.parts[name], {})
        if self.answer_requests:
            # requests are ephemeral: answer what arrives from now on
            topic = self.topics["rec-requests"]
            self.parts["rec-requests"] = self.io.partitions(topic)
            self.io.assign(self.consumer, topic, self.parts["rec-requests"], None)

    def _resolve_outbox(self) -> None:
        """Publish effects decided before a crash, unless they already went out."""
        if not self.service.outbox:
            return
        self.publisher.resolve(self.service.outbox)
        self.service.clear_outbox()
        self._snapshot()

    # -- one step -----------------------------------------------------------------------------
    def _step(self) -> None:
        svc = self.service
        step = _Step()
        wait = svc.batch_max_wait_ms / 1000
        if self.server is not None:
            # requests first; the input is read without waiting while requests may come
            self.server.serve(0.0 if self._busy else wait)
            wait = 0.0
        # poll returns as soon as one record is there (a batch consume would wait out its
        # whole timeout for a full batch); what else is already fetched is taken at once,
        # decoded a chunk at a time, so a backlog makes one large batch without holding
        # all of its raw records
        first = self.consumer.poll(wait)
        self._busy = first is not None
        if first is not None:
            self._absorb(step, [first])
        backlog = None  # records behind the log end, asked once a chunk comes back full
        limit = svc.batch_max_events
        while first is not None and step.size < limit and not self._stop:
            want = min(_CONSUME_CHUNK, limit - step.size)
            # while draining a known backlog, wait briefly for the next fetch instead of
            # cutting the batch short (each batch costs one correction of the mapping)
            draining = backlog is not None and step.size < backlog
            more = self.consumer.consume(want, 0.5 if draining else 0)
            if not more:
                break
            self._absorb(step, more)
            # (a serving worker never waits on its input: requests would wait with it)
            growing = self.server is None and "interactions" in svc.reads
            if backlog is None and len(more) == want and growing:
                backlog = step.size + self._input_lag()
        if step.size or len(self.barrier):  # a held deletion may wait on skipped markers
            self._apply(step)
        if not self._stop:  # work due by time (a round) waits for the next start
            self._effects(svc.tick())
        self._maybe_snapshot()
        self._gauges()

    def _input_lag(self) -> int:
        """Records of ``interactions`` not yet read (by the consumer's positions)."""
        topic = self.topics["interactions"]
        ends = self.io.end_offsets(topic, self.parts["interactions"])
        read = self.io.positions(self.consumer, topic, self.parts["interactions"])
        return sum(max(0, end - read[key]) if read[key] >= 0 else end for key, end in ends.items())

    def _absorb(self, step: _Step, records: list) -> None:
        """Decode a chunk of records into the step; dead-letter what fails."""
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
                continue
            logical = self.logical[msg.topic()]
            if logical == "deletions":
                deletions.append(msg)
            elif logical == "model-updates":
                self._absorb_update(step, msg)
            elif logical == "items":
                self._absorb_item(step, msg)
            else:
                step.requests.append(msg)
        step.size += len(records)
        if interactions:
            self._absorb_interactions(step, interactions, values)
            for partition, offset in last.items():
                step.inputs.offsets[kafka.tp_key(topic, partition)] = offset + 1
        step.dead += self._hold_deletions(deletions)

    def _absorb_interactions(self, step: _Step, records: list, values: list) -> None:
        now = int(time.time() * 1000)
        references = [reference_ms(r, now) for r in records]
        cols, rejected = decode_interactions(values, self.settings.limits, references=references)
        for r in rejected:
            self._rejected(records[r.position], r.error, "interactions")
        step.dead += len(rejected)
        if self.service.wants_sources:
            cols.sources = [
                (kafka.tp_key(records[p].topic(), records[p].partition()), records[p].offset())
                for p in cols.positions
            ]
        step.inputs.interactions.extend(cols)
        m.EVENTS.labels("interactions", "valid").inc(len(cols))

    def _absorb_update(self, step: _Step, msg: Any) -> None:
        try:
            update = decode_one(ModelUpdate, msg.value(), self.settings.limits)
        except ContractError as exc:
            self._rejected(msg, exc, "model-updates")
            return
        step.inputs.updates.append(update)

    def _absorb_item(self, step: _Step, msg: Any) -> None:
        """Item metadata (read from the state's offsets, like interactions). A null value is
        a compaction tombstone: passed over, not a dead letter."""
        step.inputs.offsets[kafka.tp_key(msg.topic(), msg.partition())] = msg.offset() + 1
        if msg.value() is None:
            m.EVENTS.labels("items", "tombstone").inc()
            return
        try:
            item = self._decode_input(ItemMetadata, msg)
            if msg.key() != item.kafka_key().encode():
                # compaction keeps the newest record per key: under another item's key this
                # one would replace that item's text, and a tombstone for its own key would
                # never remove it
                raise ContractError("key: an items record is keyed by its item_id", "item_id")
        except ContractError as exc:
            self._rejected(msg, exc, "items")
            step.dead += 1
            return
        step.inputs.items.append(item)
        m.EVENTS.labels("items", "valid").inc()

    def _decode_input(self, contract: type, msg: Any) -> Any:
        """One record of an input topic, its ``ts`` bounded by the record's append time
        (:func:`~streams.runtime.decode.reference_ms`); raises :class:`ContractError`."""
        now = int(time.time() * 1000)
        return decode_one(contract, msg.value(), self.settings.limits, reference_ms(msg, now))

    def _rejected(self, msg: Any, error: ContractError, logical: str) -> None:
        if logical in self.service.dead_letters_for:
            # requests are read from the end at every start: a lost letter of one cannot be
            # written again, so it must not stop the worker either
            self.publisher.dead_letter(msg, error, logical, held=logical != "rec-requests")
        else:  # the worker that owns this topic's dead letters writes one
            m.EVENTS.labels(logical, "invalid").inc()

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
                request = self._decode_input(DeletionRequest, msg)
                m.EVENTS.labels("deletions", "valid").inc()
            except ContractError as exc:
                self._rejected(msg, exc, "deletions")
                request, dead = None, dead + 1
            key = kafka.tp_key(msg.topic(), msg.partition())
            self.barrier.hold(Held(key, msg.offset(), request, ends))
        return dead

    def _past_undelivered(self, step: _Step) -> None:
        """Move the step's ``interactions`` offsets to the consumer's positions where it has
        passed records it never delivers: transaction markers and aborted records (a topic
        written in transactions ends in a commit marker), or records retention removed.
        Otherwise a held deletion would wait for an offset no delivered record reaches."""
        if "interactions" not in self.parts:
            return
        topic = self.topics["interactions"]
        known = self.service.offsets
        for key, pos in self.io.positions(self.consumer, topic, self.parts["interactions"]).items():
            if pos > step.inputs.offsets.get(key, known.get(key, 0)):
                step.inputs.offsets[key] = pos

    def _apply(self, step: _Step) -> None:
        self._past_undelivered(step)
        inputs = step.inputs
        positions = {**self.service.offsets, **inputs.offsets}
        for held in self.barrier.release(positions):
            inputs.offsets[held.key] = held.offset + 1
            if held.request is not None:
                inputs.deletions.append(held.request)
                inputs.deletion_sources.append((held.key, held.offset))
        if inputs.deletions:
            self._applying_ms = min(d.ts for d in inputs.deletions)
        self._note_oldest_deletion()  # the deletions held by this step count from now
        try:
            self._apply_inputs(step, inputs)
        finally:
            self._applying_ms = None  # receipted, or the step failed (its state is not kept)
            self._note_oldest_deletion()
        if step.requests:
            self._answer(step.requests)

    def _apply_inputs(self, step: _Step, inputs: Inputs) -> None:
        n_interactions = len(inputs.interactions)
        if inputs:
            effects = self.service.apply(inputs)
            if n_interactions >= _FREEZE_AFTER:
                # a large batch leaves a large long-lived state: move it out of the
                # collector's sight, so a later full collection does not walk it. A
                # precaution, not a measured gain: the multi-second forget stalls seen on
                # ML-1M were the admin list_offsets, gone since (docs/measurements.md)
                gc.collect(1)
                gc.freeze()
            m.BATCH_SIZE.observe(n_interactions + len(inputs.deletions))
            if not self.attached:  # a replica times its own apply
                m.APPLY_SECONDS.observe(effects.apply_seconds)
            if inputs.deletions or effects.apply_seconds > 1.0:
                log.info(
                    "applied %d events with %d deletion(s) in %.3f s",
                    n_interactions,
                    len(inputs.deletions),
                    effects.apply_seconds,
                )
            self._effects(effects)  # receipts out: no longer pending
        if step.dead or (inputs.offsets and not inputs):
            self.service.note_dead_letters(step.dead, inputs.offsets)

    # -- effects ------------------------------------------------------------------------------
    def _effects(self, effects: Effects) -> None:
        """Stage, snapshot, publish, clear (the order of :mod:`streams.services.base`)."""
        if not effects.to_publish:
            if effects.snapshot:
                self._snapshot(for_receipt=True)
            return
        t0 = time.perf_counter()
        # applied_at is when the data is gone from memory *and* disk, i.e. after the snapshot
        now = int(time.time() * 1000)
        effects.receipts = [r.model_copy(update={"applied_at": now}) for r in effects.receipts]
        # where the receipts topic ended at most (known from the last deliveries, no broker
        # question on a deletion's path); a restart looks for staged receipts after it
        self.service.stage(effects, dict(self.publisher.receipt_ends))
        self._snapshot(for_receipt=True)  # the forgotten data is gone from disk first
        t1 = time.perf_counter()
        if effects.announcements:
            self.publisher.announce(effects.announcements)
        if effects.receipts:
            self.publisher.receipts(effects.receipts)
        self.service.clear_outbox()
        if effects.receipts:
            log.info(
                "published %d receipt(s): snapshot %.3f s, publish %.3f s",
                len(effects.receipts),
                t1 - t0,
                time.perf_counter() - t1,
            )

    def _answer(self, records: list) -> None:
        requests, keys = [], []
        for msg in records:
            try:
                requests.append(decode_one(RecRequest, msg.value(), self.settings.limits))
            except ContractError as exc:
                self._rejected(msg, exc, "rec-requests")
                continue
            keys.append(requests[-1].user_id.encode())
            m.EVENTS.labels("rec-requests", "valid").inc()
        if requests:
            for body, key in zip(self.service.answer(requests), keys, strict=True):
                self.publisher.produce("recommendations", body, key)

    # -- snapshots and gauges -----------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        if self.snapshots.due(self.service):
            self._snapshot()

    def _snapshot(self, for_receipt: bool = False) -> None:
        self.publisher.settle()  # dead letters of records the snapshot passes are out
        self.publisher.check_dead_letters()
        self.snapshots.save(self.service, for_receipt=for_receipt)

    def _note_oldest_deletion(self) -> None:
        waiting = [t for t in (self.barrier.oldest_ts(), self._applying_ms) if t is not None]
        self._oldest_deletion_ms = min(waiting, default=None)

    def _deletion_age(self) -> float:
        """Seconds since the oldest unreceipted deletion's ts (called by the metrics thread:
        it only reads one attribute the main thread sets)."""
        return seconds_since(self._oldest_deletion_ms)

    def _gauges(self) -> None:
        now = time.monotonic()
        if not self.attached:
            m.SNAPSHOT_AGE.set(self.snapshots.age_s)
        self._note_oldest_deletion()
        if now - self._lag_at < 2.0:
            return
        self._lag_at = now
        self.service.gauges()
        for name in self.service.reads:
            topic, parts = self.topics[name], self.parts[name]
            for key, end in self.io.fetched_end_offsets(self.consumer, topic, parts).items():
                if end < 0:
                    continue  # nothing fetched from this partition yet
                lag = end - self.service.offsets.get(key, 0)
                m.CONSUMER_LAG.labels(name, key.rsplit(":", 1)[1]).set(max(lag, 0))


def run_until_signalled(runtime: Any) -> None:
    """Run a runtime (anything with ``run`` and ``stop``) until SIGINT/SIGTERM, then snapshot
    and exit cleanly."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runtime.stop())
    try:
        runtime.run()
    finally:
        # the interpreter resets handlers to the defaults while it finalises (librdkafka and
        # onnxruntime threads still winding down): a second signal then (Ctrl-C reaches the
        # worker, then its parent's SIGTERM) would kill it with -15 after a clean stop
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
