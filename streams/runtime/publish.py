"""Everything a worker's runtime publishes: dead letters, announcements, receipts, answers.

Receipts are published and flushed together; the receipts topic's end is tracked from their
delivery reports, so staging the next receipts asks the broker nothing. :meth:`resolve`
publishes what an outbox still held at a crash: announcements again (idempotent), receipts
only when the topic does not already have them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from streams import metrics as m
from streams.config import LetheSettings
from streams.contracts import ContractError, DeletionReceipt, ModelUpdate, field_label
from streams.runtime.deadletter import bounded_key, dead_letter_bytes
from streams.runtime.kafka import tp_key
from streams.services.base import Outbox

log = logging.getLogger("lethe.runtime")


class Publisher:
    """One worker's producer with the topics it writes (logical name → Kafka name)."""

    def __init__(self, settings: LetheSettings, io: Any, topics: dict[str, str]) -> None:
        self.settings = settings
        self.io = io
        self.topics = topics
        self.producer = io.producer()
        self.undelivered = 0
        #: dead letters reported undelivered since the last snapshot
        self.lost_dead_letters = 0
        #: where the receipts topic ends at least, per partition (from delivery reports)
        self.receipt_ends: dict[str, int] = {}

    def start(self) -> None:
        """Learn where the receipts topic ends now (once, at start)."""
        topic = self.topics["deletion-receipts"]
        self.receipt_ends = self.io.end_offsets(topic, self.io.partitions(topic))

    def produce(
        self,
        logical: str,
        value: bytes,
        key: bytes | None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        topic = self.topics[logical]

        def delivered(err, msg) -> None:
            if err is not None:
                self.undelivered += 1
                log.error("could not publish to %s: %s", topic, err)
            if on_delivery is not None:
                on_delivery(err, msg)

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain it
                self.producer.poll(0.1)
        self.producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for deliveries (at shutdown: what is left stays in the
        outbox for the next start); returns how many messages are still undelivered."""
        return self.producer.flush(timeout_s)

    def settle(self) -> None:
        """Wait until every message produced so far has its delivery report: callers count
        what was not reported failed as published. librdkafka reports each message within
        its ``message.timeout.ms``, so this ends; a broker outage only makes it slow."""
        while (left := self.producer.flush(60)) > 0:
            log.warning("%d message(s) still awaiting delivery; waiting on", left)

    def dead_letter(self, msg: Any, error: ContractError, logical: str, held: bool = True) -> None:
        """Publish a dead letter for ``msg``. ``held``: its record's offset waits for the
        next snapshot, which must not pass it if the letter is lost (:meth:`check_dead_letters`);
        a request's position is committed by the request channel instead, so a lost letter
        of one is logged and counted (``lethe_events_total{outcome="dead_letter_lost"}``)."""
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
        m.DEAD_LETTERS.labels(logical, field_label(getattr(error, "field", None))).inc()
        m.EVENTS.labels(logical, "dead_letter").inc()

        def delivered(err, _msg) -> None:
            if err is None:
                return
            if held:
                self.lost_dead_letters += 1
            else:
                m.EVENTS.labels(logical, "dead_letter_lost").inc()

        self.produce("dead-letters", value, bounded_key(msg.key()), delivered)

    def check_dead_letters(self) -> None:
        """Raise if a dead letter was not delivered (call after :meth:`settle`): a snapshot
        must not pass its record, so the worker stops and, restarted, reads and dead-letters
        it again."""
        if self.lost_dead_letters:
            lost, self.lost_dead_letters = self.lost_dead_letters, 0
            raise RuntimeError(f"{lost} dead letter(s) not published; not snapshotting past them")

    # -- the outbox's contents ------------------------------------------------------------------
    def announce(self, updates: list[ModelUpdate]) -> None:
        """Publish model announcements and wait for them (receipts may name their version)."""
        failed: list[object] = []
        for update in updates:
            self.produce(
                "model-updates",
                update.to_bytes(),
                update.kind.split("-")[0].encode(),
                lambda err, _msg: failed.append(err) if err is not None else None,
            )
        self.settle()
        if failed:
            raise RuntimeError(f"{len(failed)} announcement(s) not published: {failed[0]}")

    def receipts(self, receipts: list[DeletionReceipt]) -> None:
        failed: list[object] = []
        topic = self.topics["deletion-receipts"]

        def delivered(err, msg) -> None:
            if err is not None:
                failed.append(err)
            else:  # the topic now ends at least past this receipt
                key = tp_key(topic, msg.partition())
                self.receipt_ends[key] = max(self.receipt_ends.get(key, 0), msg.offset() + 1)

        for receipt in receipts:
            self.produce(
                "deletion-receipts", receipt.to_bytes(), receipt.request_id.encode(), delivered
            )
        self.settle()
        if failed:
            # the outbox still holds them: a restart publishes what did not get out
            raise RuntimeError(f"{len(failed)} receipt(s) could not be published: {failed[0]}")
        self.count_receipts(receipts)

    def count_receipts(self, receipts: list[DeletionReceipt]) -> None:
        """Metrics and a log line for receipts that are out (by this producer or another)."""
        now = time.time()
        for receipt in receipts:
            m.RECEIPTS.labels(receipt.status).inc()
            if receipt.requested_at is not None:
                m.FORGET_LATENCY.observe(max(0.0, now - receipt.requested_at / 1000))
            log.info(
                "receipt %s for %s request: %s", receipt.status, receipt.scope, receipt.removed
            )

    def resolve(self, outbox: Outbox) -> None:
        """Publish an outbox left by a crash: receipts the topic does not have yet."""
        if outbox.announcements:
            self.announce(outbox.announcements)
        if not outbox.receipts:
            return
        topic = self.topics["deletion-receipts"]
        # the IMCorrect worker and the trainer both answer a request on this topic, each
        # with its own status: a receipt is ours when both match
        published: set[tuple[str, str]] = set()
        for msg in self.io.read_range(topic, outbox.receipts_end_offsets):
            try:
                found = DeletionReceipt.model_validate_json(msg.value())
            except ValueError:
                continue  # not a receipt: it cannot match a pending one
            published.add((found.request_id, found.status))
        self.receipts([r for r in outbox.receipts if (r.request_id, r.status) not in published])
