"""The IMCorrect writer's side of the change log: transactions, and the sequencer's service.

Only the elected writer appends to the change log, through one transactional producer whose
``transactional.id`` is the same for every replica of a prefix. Starting it
(:meth:`TransactionalLog.start`) fences any earlier writer: the broker aborts that writer's
open transaction and refuses its later commits, so a writer that lost the election while
stalled can never append after its successor has read the log to its end.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import ClassVar

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, RecRequest
from streams.runtime import kafka
from streams.runtime.changelog import PublishedRecord, encode, step_records
from streams.services.base import Effects, Inputs, NoOutbox

log = logging.getLogger("lethe.replica")

#: attempts at one transaction before the writer gives up its term
_ATTEMPTS = 10
#: how long one commit is waited for (the producer's ``transaction.timeout.ms``)
_COMMIT_WAIT_S = 60.0
_FENCED = (
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
)


class WriterLost(RuntimeError):
    """This writer can append no more: stop writing, keep following, and stand for the role
    again later (a fresh producer's ``init_transactions`` aborts whatever this one left open)."""


class Fenced(WriterLost):
    """Another writer took over (or this one may not write)."""


class TransactionsFailing(WriterLost):
    """No transaction committed in :data:`_ATTEMPTS` tries, one could not be aborted, or a
    commit's outcome is unknown."""


def writer_transactional_id(settings: LetheSettings) -> str:
    return f"{settings.client_id}-imcorrect-writer-{settings.topic_prefix}"


class TransactionalLog:
    """Appends records (to the change log and, with markers, to the receipts topic) in
    transactions that either all appear or none does."""

    def __init__(self, settings: LetheSettings, producer: Producer | None = None) -> None:
        self.producer = producer or kafka.producer(
            settings,
            **{
                "transactional.id": writer_transactional_id(settings),
                "transaction.timeout.ms": int(_COMMIT_WAIT_S * 1000),
                # the broker checks the topic's limit against a whole batch, and librdkafka
                # does not split a refused one: a batch of slices must fit it too
                "batch.size": min(1_000_000, settings.limits.max_message_bytes),
            },
        )

    def start(self, timeout_s: float = 60) -> None:
        """Take the writer's role: fences every earlier writer (see the module's note)."""
        try:
            self.producer.init_transactions(timeout_s)
        except KafkaException as exc:
            raise _classify(exc) from exc

    def commit(self, records: list[tuple[str, bytes, bytes | None]]) -> None:
        """Append ``(topic, value, key)`` records in one transaction.

        A failure a lost broker explains is aborted and the whole step written again: the
        transaction turned abortable (which ``produce`` reports as a plain ``_STATE`` error,
        not flagged by ``txn_requires_abort()``), or a call that timed out. Fencing ends the
        writer's term; so does a commit whose outcome is unknown, since writing the step
        again could append it twice (the next writer's ``init_transactions`` settles it).
        Any other error is raised as it is."""
        for _ in range(_ATTEMPTS):
            try:
                self.producer.begin_transaction()
                for topic, value, key in records:
                    self._produce(topic, value, key)
                self._commit()
                return
            except KafkaException as exc:
                error = exc.args[0]
                if _is_fenced(error):
                    raise Fenced(str(error)) from exc
                if not _passes_with_an_abort(error):
                    raise
                log.warning("change-log transaction failed (%s): aborting, writing it again", error)
                self._abort(error)
        raise TransactionsFailing(f"no transaction committed in {_ATTEMPTS} attempts")

    def _abort(self, cause: KafkaError) -> None:
        for _ in range(_ATTEMPTS):
            try:
                self.producer.abort_transaction(60)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if _is_fenced(error):
                    raise Fenced(str(error)) from exc
                if error.code() == KafkaError._CONFLICT:  # a timed-out commit still going on
                    raise TransactionsFailing(f"commit outcome unknown after {cause}") from exc
                if error.code() == KafkaError._STATE:  # no transaction open: nothing to abort
                    return
                if not (error.retriable() or error.txn_requires_abort()):
                    raise TransactionsFailing(f"abort failed ({error}) after {cause}") from exc
        raise TransactionsFailing(f"the transaction could not be aborted after {cause}")

    def _produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _commit(self) -> None:
        # a timed-out commit may be called again until it completes; bounded by the
        # transaction's own timeout, after which the broker aborts it anyway
        deadline = time.monotonic() + _COMMIT_WAIT_S
        for _ in range(_ATTEMPTS):
            try:
                self.producer.commit_transaction(max(1.0, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                if not exc.args[0].retriable() or time.monotonic() >= deadline:
                    raise
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "commit kept timing out"))

    def close(self) -> None:
        """Let what is in flight finish; a fenced producer raises its fatal error here, and
        has nothing left that may still be appended."""
        try:
            self.producer.flush(5)
        except KafkaException as exc:
            log.info("the writer's producer closed on: %s", exc.args[0])


def _is_fenced(error: KafkaError) -> bool:
    return error.fatal() or error.code() in _FENCED


def _passes_with_an_abort(error: KafkaError) -> bool:
    return (
        error.txn_requires_abort()
        or error.retriable()
        or error.code() in (KafkaError._STATE, KafkaError._TIMED_OUT)
    )


def _classify(exc: KafkaException) -> Exception:
    return Fenced(str(exc.args[0])) if _is_fenced(exc.args[0]) else exc


class LogWriter(NoOutbox):
    """The sequencer's service: a runtime step goes into the change log, not into a model.

    It runs inside a :class:`streams.runtime.loop.Runtime` (decoding, dead letters, the
    deletion barrier), so the writer orders input exactly as a single worker would apply it.
    Its offsets start where the change log ends and move with each committed step.
    """

    name: ClassVar[str] = "imcorrect-writer"
    reads: ClassVar[tuple[str, ...]] = ("interactions", "deletions")
    replays: ClassVar[tuple[str, ...]] = ()
    dead_letters_for: ClassVar[tuple[str, ...]] = ("interactions", "deletions")
    wants_sources: ClassVar[bool] = False

    def __init__(
        self,
        settings: LetheSettings,
        txlog: TransactionalLog,
        log_topic: str,
        offsets: dict[str, int],
        before_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.txlog = txlog
        #: flushes the dead letters of the records a step passes before the step is logged
        #: (a crash after the commit must not lose them; one before it repeats them)
        self.before_commit = before_commit
        self.log_topic = log_topic
        self._offsets = dict(offsets)
        self.steps_written = 0

    @property
    def offsets(self) -> dict[str, int]:
        return self._offsets

    @property
    def snapshot_interval_s(self) -> float:
        return math.inf  # the replicas snapshot; the writer holds nothing of its own

    @property
    def batch_max_events(self) -> int:
        return self.settings.imcorrect.batch_max_events

    @property
    def batch_max_wait_ms(self) -> float:
        return self.settings.imcorrect.batch_max_wait_ms

    def apply(self, inputs: Inputs) -> Effects:
        self._write(inputs, dead=0)
        return Effects()

    def note_dead_letters(self, n: int, offsets: dict[str, int]) -> None:
        self._write(Inputs(offsets=dict(offsets)), dead=n)

    def _write(self, inputs: Inputs, dead: int) -> None:
        limit = self.settings.limits.max_message_bytes
        values = step_records(inputs, dead, limit)
        self.before_commit()
        self.txlog.commit([(self.log_topic, v, None) for v in values])
        self._offsets.update(inputs.offsets)
        self.steps_written += 1

    def publish_receipts(self, receipts_topic: str, receipts: list[DeletionReceipt]) -> None:
        """Receipts and their marker in one transaction: a replica that later reads the
        marker drops them from its outbox; without the marker, none of them is visible."""
        marker = PublishedRecord(receipts=[(r.request_id, r.status) for r in receipts])
        records: list[tuple[str, bytes, bytes | None]] = [
            (receipts_topic, r.to_bytes(), r.request_id.encode()) for r in receipts
        ]
        records.append((self.log_topic, encode(marker), None))
        self.txlog.commit(records)

    # -- the rest of the service protocol: nothing of its own to keep -----------------------
    def tick(self) -> Effects:
        return Effects()

    def answer(self, requests: list[RecRequest]) -> list[bytes]:
        raise NotImplementedError("replicas answer requests, the sequencer does not")

    def save(self, *, for_receipt: bool = False) -> None:
        return None

    def gauges(self) -> None:
        return None

    def close(self) -> None:
        return None
