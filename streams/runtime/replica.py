"""Hot IMCorrect replicas (docs/scale-out.md): every replica applies the change log; the one
the election picked also writes it.

* **Election.** Every replica is a member of one consumer group on the single-partition
  heartbeat topic ``imcorrect-replicas``; the member that holds its partition is the writer
  (cooperative-sticky keeps it there while others join). A dead writer's partition moves
  after the group's session timeout.
* **Writer.** It fences earlier writers (:class:`TransactionalLog`), applies the log to its
  end, then runs a :class:`~streams.runtime.loop.Runtime` step loop over the input topics
  whose service (:class:`LogWriter`) appends each decoded step, deletions released by the
  barrier included, to the change log in a transaction. Input positions live in the log's
  records, so a new writer resumes exactly where the last committed step ended.
* **Every replica** (the writer too) applies the log in order to its own
  :class:`~streams.services.imcorrect.IMCorrectService`, snapshots into its own folder, and
  reports on the heartbeat topic how far it has applied the log.
* **Receipts.** A deletion's receipt waits until every live replica (heard from within
  ``replica_timeout_s``) has applied the deletion and snapshotted; the writer then publishes
  it, naming those replicas, in one transaction with a marker on the change log. Replicas drop
  a receipt from their outbox when they apply its marker, so whichever replica writes next
  publishes exactly the receipts not yet out.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from streams import metrics as m
from streams.config import LetheSettings
from streams.contracts import ContractError, DeletionReceipt
from streams.runtime import kafka
from streams.runtime.changelog import (
    Entry,
    LogDecodeError,
    LoggedStep,
    PublishedRecord,
)
from streams.runtime.follower import LogFollower, LogGone
from streams.runtime.lock import StateLock
from streams.runtime.log_writer import LogWriter, TransactionalLog, WriterLost
from streams.runtime.loop import _TOPICS, Runtime, seconds_since
from streams.runtime.publish import Publisher
from streams.runtime.roster import Heartbeat, Roster, new_instance
from streams.runtime.snapshots import SnapshotClock
from streams.services.base import Effects
from streams.services.imcorrect import IMCorrectService, imcorrect_folder
from streams.topics import topic_name

log = logging.getLogger("lethe.replica")

#: the election group's session timeout: how long a dead writer keeps the role
_SESSION_TIMEOUT_S = 6.0


def writer_group(settings: LetheSettings) -> str:
    return f"{settings.client_id}-imcorrect-writer-{settings.topic_prefix}"


def request_group(settings: LetheSettings) -> str:
    """Replicas that answer ``rec-requests`` share them through this group."""
    return f"{settings.client_id}-imcorrect-{settings.topic_prefix}"


class ReplicaRuntime:
    """One IMCorrect replica: follower always, writer while elected."""

    def __init__(self, settings: LetheSettings, io: kafka.KafkaIO | None = None) -> None:
        self.settings = settings
        self.cfg = settings.imcorrect
        self.io = io or kafka.KafkaIO(settings)
        self.replica = self.cfg.replica_id or "0"
        self.name = imcorrect_folder(settings)
        self.topics = {logical: topic_name(settings, logical) for logical in _TOPICS}
        self.log_topic = self.topics["imcorrect-log"]
        self.log_key = kafka.tp_key(self.log_topic, 0)
        self._stop = False
        self._want_writer = False
        self._recheck_at = 0.0
        self.sequencer: Runtime | None = None
        self.writer: LogWriter | None = None
        self.writer_since = 0.0
        #: (change-log offset of the deletion, receipt) not yet published
        self.pending: list[tuple[int, DeletionReceipt]] = []
        #: published by this writer, marker not read back yet
        self._in_flight: set[tuple[str, str]] = set()
        self.roster = Roster(self.cfg.replica_timeout_s)
        #: names this process's heartbeats apart from another configured with the same id
        self.instance = new_instance()
        self._conflicts: set[str] = set()
        self.server = None
        self._beat_at = 0.0
        self._gauges_at = 0.0
        self.snapshots = SnapshotClock()
        #: ts of the oldest deletion whose receipt waits in ``pending`` (set by the main
        #: thread, read by the metrics thread)
        self._oldest_pending_ms: int | None = None
        m.DELETION_PENDING_AGE.set_function(self._deletion_age)

    def stop(self) -> None:
        self._stop = True

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.settings
        lock = StateLock(cfg.state_dir, self.name, wait=cfg.standby, stopped=lambda: self._stop)
        if not lock.held:
            return
        try:
            self.service = IMCorrectService(cfg, Path(cfg.state_dir) / self.name)
            gc.freeze()
            gc.set_threshold(100_000, 50, 100)
            port = m.serve(cfg.metrics_host, cfg.metrics_port, m.port_may_move(cfg))
            self.io.create_topics()
            self.publisher = Publisher(cfg, self.io, self.topics)
            retention = self.io.retention()
            if retention is not None:
                self.service.use_retention(retention)
            self._restore_pending()
            m.IMCORRECT_WRITER.labels(self.replica).set(0)
            self.snapshots.track(self.service)
            try:
                start = self.service.offsets.get(self.log_key, 0)
                self.follower = LogFollower(cfg, self.log_topic, start, self._foreign)
            except LogGone as exc:
                log.critical("replica %s: %s", self.replica, exc)
                raise SystemExit(4) from None
            self.election = self._election_consumer()
            if self.cfg.answer_requests:
                from streams.runtime.serve import RequestServer

                self.server = RequestServer(cfg, self.service, self.publisher, request_group(cfg))
                self.server.open()
            log.info("imcorrect worker ready: replica %s (metrics on :%s)", self.replica, port)
            clean = False
            try:
                while not self._stop:
                    self._iteration()
                clean = True
            except LogGone as exc:
                log.critical("%s", exc)
                raise SystemExit(4) from None
            finally:
                # a step that failed halfway left a half-applied state: saving it would keep
                # its dedup entries without its events, which the next life then skips
                self._leave(save=clean)
        finally:
            lock.release()

    def _leave(self, save: bool) -> None:
        """Snapshot (after a clean stop only), say goodbye (receipts stop waiting for this
        replica), close."""
        if self.sequencer is not None:
            self._stop_writing("stopping")
        if save:
            self.service.save()
        self._heartbeat(force=True, leaving=True)
        if self.server is not None:
            self.server.close()
        self.publisher.flush(30)
        self.election.close()
        self.follower.close()
        self.service.close()

    def _dead_letters_out(self) -> None:
        """Before the writer commits a step past records it dead-lettered: their letters are
        out, or the writer stops (its successor reads and dead-letters them again)."""
        self.publisher.settle()
        self.publisher.check_dead_letters()

    def _restore_pending(self) -> None:
        # the offset of each staged deletion is not kept: the snapshot's log position is at
        # or after it, so a restored receipt waits at most a little longer than it had to
        applied = self.service.offsets.get(self.log_key, 0)
        self.pending = [(applied - 1, r) for r in self.service.outbox.receipts]

    def _election_consumer(self) -> Any:
        consumer = kafka.consumer(
            self.settings,
            **{
                "group.id": writer_group(self.settings),
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": int(_SESSION_TIMEOUT_S * 1000),
                "heartbeat.interval.ms": 1000,
                "auto.offset.reset": "latest",
                "fetch.wait.max.ms": 20,
            },
        )
        topic = self.topics["imcorrect-replicas"]

        def assigned(_consumer: Any, parts: list) -> None:
            if any(p.topic == topic for p in parts):
                self._want_writer = True

        def revoked(_consumer: Any, parts: list) -> None:
            if any(p.topic == topic for p in parts):
                self._want_writer = False

        consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked, on_lost=revoked)
        return consumer

    # -- one iteration ------------------------------------------------------------------------
    def _iteration(self) -> None:
        self._read_heartbeats()
        self._recheck()
        if self._want_writer and self.sequencer is None:
            self._become_writer()
        elif not self._want_writer and self.sequencer is not None:
            self._stop_writing("lost the election")
        wrote = False
        if self.sequencer is not None and self.writer is not None:
            before = self.writer.steps_written
            try:
                self.sequencer.step()
            except WriterLost as exc:
                self._stop_writing(f"{type(exc).__name__}: {exc}")
                self._recheck_later()
            wrote = self.writer is not None and self.writer.steps_written > before
        idle_wait = self.cfg.batch_max_wait_ms / 1000
        self._follow(0.05 if wrote else (0.0 if self.sequencer is not None else idle_wait))
        if self.server is not None:
            self.server.serve(0.0)
        self._heartbeat()
        if self.sequencer is not None:
            self._read_heartbeats()  # the newest word of every replica, after a long step
            self._publish_due()
        self._maybe_snapshot()
        self._gauges()

    # -- following the change log -------------------------------------------------------------
    def _follow(self, wait_s: float) -> int:
        """Apply the writer's steps and markers the change log has; returns how many."""
        units = self.follower.read(wait_s, self.cfg.batch_max_events)
        for unit in units:
            if isinstance(unit, LoggedStep):
                self._apply(unit)
            else:
                self._published(unit)
        # over transaction markers the consumer skipped: a log that ends in a commit marker
        # is applied to its end, not to one before it
        position = self.follower.settled_position()
        if position is not None and position > self._applied():
            self.service.note_dead_letters(0, {self.log_key: position})
        return len(units)

    def _foreign(self, msg: Any, exc: LogDecodeError) -> None:
        if self.sequencer is not None:  # one dead letter, from the writer
            self.publisher.dead_letter(msg, ContractError(str(exc)), "imcorrect-log")

    def _apply(self, step: LoggedStep) -> None:
        inputs = step.inputs
        effects = self.service.apply(inputs) if inputs else Effects()
        if inputs:
            m.APPLY_SECONDS.observe(effects.apply_seconds)
        if step.dead or not inputs:
            self.service.note_dead_letters(step.dead, inputs.offsets)
        if effects.receipts:
            now = int(time.time() * 1000)
            for receipt in effects.receipts:
                self.pending.append(
                    (step.last_offset, receipt.model_copy(update={"applied_at": now}))
                )
            self._stage()
            self._save(for_receipt=True)  # gone from this replica's disk before it says so
            self._heartbeat(force=True)
        elif effects.snapshot:
            self._save(for_receipt=True)

    def _published(self, entry: Entry) -> None:
        assert isinstance(entry.record, PublishedRecord)
        out = {tuple(key) for key in entry.record.receipts}
        self.pending = [(o, r) for o, r in self.pending if (r.request_id, r.status) not in out]
        self._in_flight -= out
        self._stage()
        self.service.note_dead_letters(0, {self.log_key: entry.offset + 1})

    def _stage(self) -> None:
        self.service.stage(Effects(receipts=[r for _, r in self.pending]), {})

    def _applied(self) -> int:
        return self.service.offsets.get(self.log_key, 0)

    # -- heartbeats ---------------------------------------------------------------------------
    def _heartbeat(self, force: bool = False, leaving: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._beat_at < self.cfg.heartbeat_interval_s:
            return
        self._beat_at = now
        beat = Heartbeat(
            replica=self.replica,
            applied=self._applied(),
            events=self.service.state.counters.get("events_accepted", 0),
            writer=self.sequencer is not None,
            leaving=leaving,
            ts=int(time.time() * 1000),
            instance=self.instance,
        )
        self.publisher.produce("imcorrect-replicas", beat.to_bytes(), self.replica.encode())
        self.roster.note(beat, now)

    def _read_heartbeats(self) -> None:
        for msg in self.election.consume(500, 0):
            if msg.error() is not None:
                continue
            try:
                beat = Heartbeat.from_bytes(msg.value())
            except ValueError:
                continue  # nothing to learn from it
            if beat.instance != self.instance or beat.replica != self.replica:
                self.roster.note(beat)
        self._report_conflicts()

    def _report_conflicts(self) -> None:
        """Two live processes beating under one replica id: receipts wait for both (the
        roster counts the id at the slower one), but they name the id once, and
        ``verify-erasure --replica`` can check only one folder. Said loudly, per id."""
        now = set(self.roster.conflicts())
        for replica in sorted(now - self._conflicts):
            log.error(
                "two live IMCorrect processes use replica id %r: give each its own "
                "imcorrect.replica_id (docs/scale-out.md)",
                replica,
            )
        for replica in now | self._conflicts:
            m.IMCORRECT_REPLICA_ID_CONFLICT.labels(replica).set(int(replica in now))
        self._conflicts = now

    # -- the writer's role --------------------------------------------------------------------
    def _become_writer(self) -> None:
        txlog = TransactionalLog(self.settings)
        try:
            txlog.start()
            end = self.io.end_offsets(self.log_topic, [0])[self.log_key]
        except (WriterLost, KafkaException, kafka.OffsetsUnavailable) as exc:
            self._not_the_writer_yet(txlog, exc)
            return
        if not self._follow_to(end):
            txlog.close()
            return  # stopped, or the role moved on while catching up
        offsets = {k: v for k, v in self.service.offsets.items() if k != self.log_key}
        writer = LogWriter(self.settings, txlog, self.log_topic, offsets, self._dead_letters_out)
        sequencer = Runtime(self.settings, lambda _s: writer, self.io, name=writer.name)
        # the sequencer's own age covers deletions held and committed to the change log;
        # receipts then wait here for the replicas: the gauge covers both
        m.DELETION_PENDING_AGE.set_function(self._deletion_age)
        try:
            sequencer.attach(writer, self.publisher)
        except (KafkaException, kafka.OffsetsUnavailable) as exc:  # asked while brokers move
            sequencer.detach()
            self._not_the_writer_yet(txlog, exc)
            return
        self.writer, self.sequencer = writer, sequencer
        self.writer_since = time.monotonic()
        self._in_flight.clear()
        m.IMCORRECT_WRITER.labels(self.replica).set(1)
        log.info("replica %s is the writer (change log applied to %d)", self.replica, end)

    def _not_the_writer_yet(self, txlog: TransactionalLog, exc: Exception) -> None:
        log.warning("replica %s: could not take the writer's role yet: %s", self.replica, exc)
        txlog.close()
        self._recheck_later()

    def _follow_to(self, end: int) -> bool:
        """Apply the change log up to ``end`` (its end once earlier writers are fenced),
        staying a live member of the group and reporting progress meanwhile; False when the
        replica stops or loses the role first."""
        while self._applied() < end:
            if self._stop or not self._want_writer:
                return False
            self._follow(0.2)
            self._read_heartbeats()
            self._heartbeat()
        return True

    def _recheck_later(self) -> None:
        """After a refused start or a fence: stop trying until the group has settled (a
        member whose revocation is still on its way must not fence the new writer back),
        then look at the assignment itself."""
        self._want_writer = False
        self._recheck_at = time.monotonic() + _SESSION_TIMEOUT_S

    def _recheck(self) -> None:
        if self._recheck_at and time.monotonic() >= self._recheck_at:
            self._recheck_at = 0.0
            topic = self.topics["imcorrect-replicas"]
            self._want_writer = any(tp.topic == topic for tp in self.election.assignment())

    def _stop_writing(self, reason: str) -> None:
        assert self.sequencer is not None and self.writer is not None
        sequencer, writer = self.sequencer, self.writer
        self.sequencer = self.writer = None  # no longer the writer, whatever closing raises
        sequencer.detach()
        writer.txlog.close()
        m.IMCORRECT_WRITER.labels(self.replica).set(0)
        log.info("replica %s stopped writing: %s", self.replica, reason)

    def _publish_due(self) -> None:
        assert self.writer is not None
        if not self.pending:
            return
        # a replica alive when this writer started has been heard from after one timeout
        if time.monotonic() - self.writer_since < self.cfg.replica_timeout_s:
            return
        due, names = [], None
        for offset, receipt in self.pending:
            if (receipt.request_id, receipt.status) in self._in_flight:
                continue
            past = self.roster.all_past(offset)
            if past is not None:
                due.append(receipt)
                names = past
        if not due or names is None:
            return
        receipts = [r.model_copy(update={"replicas": names}) for r in due]
        try:
            self.writer.publish_receipts(self.topics["deletion-receipts"], receipts)
        except WriterLost as exc:
            self._stop_writing(f"{type(exc).__name__}: {exc}")
            self._recheck_later()
            return
        self._in_flight |= {(r.request_id, r.status) for r in receipts}
        self.publisher.count_receipts(receipts)

    # -- snapshots and gauges -----------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        if self.snapshots.due(self.service):
            self._save()

    def _save(self, for_receipt: bool = False) -> None:
        self.snapshots.save(self.service, for_receipt=for_receipt)

    def _deletion_age(self) -> float:
        """Seconds since the ts of the oldest deletion without a receipt: held or being
        committed by the writer's sequencer, or applied and waiting for the replicas."""
        mine = seconds_since(self._oldest_pending_ms)
        sequencer = self.sequencer
        return max(mine, sequencer._deletion_age() if sequencer is not None else 0.0)

    def _note_pending(self) -> None:
        waiting = [r.requested_at for _, r in self.pending if r.requested_at is not None]
        self._oldest_pending_ms = min(waiting, default=None)

    def _gauges(self) -> None:
        now = time.monotonic()
        self._note_pending()
        m.SNAPSHOT_AGE.set(self.snapshots.age_s)
        if now - self._gauges_at < 2.0:
            return
        self._gauges_at = now
        self.service.gauges()
        high = self.follower.high_watermark()
        if high >= 0:
            m.IMCORRECT_LOG_LAG.labels(self.replica).set(max(0, high - self._applied()))
