"""Answering requests for a serving service: batches from the request channel, decoded,
scored by the service, answered through the channel (which commits only what the broker
acknowledged), with the latency of each leg recorded."""

from __future__ import annotations

import logging
import time
from functools import partial

from streams import metrics as m
from streams.config import LetheSettings
from streams.contracts import ContractError, RecRequest
from streams.runtime.decode import decode_one
from streams.runtime.publish import Publisher
from streams.runtime.requests import Received, RequestChannel
from streams.services.base import Service

log = logging.getLogger("lethe.serve")


class RequestServer:
    """Takes request batches from a :class:`RequestChannel` and answers them."""

    def __init__(
        self, settings: LetheSettings, service: Service, publisher: Publisher, group_id: str
    ) -> None:
        self.settings = settings
        self.cfg = settings.scorer
        self.service = service
        self.publisher = publisher
        self.channel = RequestChannel(
            settings,
            publisher.topics["rec-requests"],
            publisher.topics["recommendations"],
            group_id=group_id,
            fetch_max_wait_ms=self.cfg.fetch_max_wait_ms,
            poll_batch=self.cfg.max_batch,
            linger_ms=self.cfg.reply_linger_ms,
        )

    def open(self) -> None:
        self.channel.open()

    def close(self) -> None:
        self.channel.close()

    def serve(self, wait_s: float) -> int:
        """Answer one batch (waiting up to ``wait_s`` for its first request); returns its size."""
        batch = self.channel.next_batch(self.cfg.max_batch, wait_s, self.cfg.max_wait_ms / 1000)
        if not batch:
            return 0
        received, wall = time.monotonic(), time.time()
        requests: list[RecRequest] = []
        for record in batch:
            # the record's timestamp (append time on topics Lethe creates) to here
            m.SCORER_LATENCY.labels("transit").observe(max(0.0, wall - record.timestamp / 1000))
            try:
                requests.append(decode_one(RecRequest, record.value, self.settings.limits))
            except ContractError as exc:
                # the channel commits this position itself: a lost letter must not stop
                # the agent at its next snapshot (the request would not be read again)
                self.publisher.dead_letter(_AsMessage(record), exc, "rec-requests", held=False)
                continue
            m.EVENTS.labels("rec-requests", "valid").inc()
        replies = []
        if requests:
            m.SCORER_LATENCY.labels("queue").observe(time.monotonic() - received)
            bodies = self.service.answer(requests)
            replies = [
                (body, request.user_id.encode(), partial(_delivered, request))
                for request, body in zip(requests, bodies, strict=True)
            ]
        # not waited for: acks come back on the channel's delivery thread
        self.channel.publish_batch(batch, replies)
        return len(batch)


def _delivered(request: RecRequest, error: object | None) -> None:
    """Runs on the channel's delivery thread (logging and metrics only)."""
    if error is not None:
        log.error("recommendation for %s not delivered: %s", request.request_id, error)
        m.EVENTS.labels("recommendations", "undelivered").inc()
        return
    now_ms = time.time() * 1000
    m.SCORER_LATENCY.labels("end_to_end").observe(max(0.0, (now_ms - request.ts) / 1000))


class _AsMessage:
    """A :class:`Received` with the accessors dead-lettering reads from a librdkafka message."""

    def __init__(self, record: Received) -> None:
        self._r = record

    def topic(self) -> str:
        return self._r.topic

    def partition(self) -> int:
        return self._r.partition

    def offset(self) -> int:
        return self._r.offset

    def key(self) -> bytes | None:
        return self._r.key

    def value(self) -> bytes | None:
        return self._r.value
