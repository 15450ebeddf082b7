"""Producer SDK for the systems that feed Lethe.

``LetheProducer`` (async) and ``SyncLetheProducer`` (blocking facade) publish validated
contracts keyed by user id, so that one user's events stay in one partition and keep their
order. The underlying aiokafka producer is idempotent with ``acks=all`` (configurable), so a
retried batch is not written twice. Delivery errors surface to the caller: ``send`` returns a
future that raises, and ``flush`` raises :class:`DeliveryError` listing every failure.

Example
-------
>>> with SyncLetheProducer(load_settings()) as p:          # doctest: +SKIP
...     p.item("i9", "Toy Story", year=1995, genres=["Animation"])
...     p.interaction("u1", "i9", ts=1700000000000)
...     p.forget_user("u1")
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import ValidationError

from streams.config import LetheSettings
from streams.contracts import (
    DEFAULT_LIMITS,
    Contract,
    ContractError,
    DeletionRequest,
    InteractionEvent,
    ItemMetadata,
    RecRequest,
    decode,
)
from streams.kafka_config import (
    KafkaAccessError,
    check_access,
    producer_kwargs,
    reply_producer_kwargs,
)
from streams.topics import topic_name

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("lethe.client")


class DeliveryError(RuntimeError):
    """One or more messages could not be delivered; ``failures`` holds (key, exception)."""

    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        first = failures[0][1]
        super().__init__(f"{len(failures)} message(s) not delivered; first error: {first!r}")
        self.failures = failures


#: what a send can fail with: no broker, a refused delivery, a record the contract (or the
#: configured limits) refuses
NOT_SENT: tuple[type[Exception], ...] = (
    DeliveryError,
    KafkaError,
    KafkaAccessError,
    ContractError,
    ValidationError,
)


#: what a command that reaches no broker at all fails with
BROKER_UNREACHABLE: tuple[type[Exception], ...] = (KafkaConnectionError,)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return uuid.uuid4().hex


class LetheProducer:
    """Async producer of Lethe events. Use as ``async with LetheProducer(settings) as p``."""

    def __init__(self, settings: LetheSettings, *, for_requests: bool = False) -> None:
        """``for_requests=True``: a low-latency producer for recommendation requests (sent at
        once, not idempotent; see :func:`reply_producer_kwargs`). Keep the default for
        interactions and deletions, which must not be duplicated."""
        self.settings = settings
        self.for_requests = for_requests
        self._producer: AIOKafkaProducer | None = None
        self._pending: set[asyncio.Future] = set()
        self._failures: list[tuple[str, BaseException]] = []

    async def start(self) -> None:
        kwargs = (reply_producer_kwargs if self.for_requests else producer_kwargs)(self.settings)
        self._producer = AIOKafkaProducer(**kwargs)
        try:
            await self._producer.start()
        except Exception as exc:
            producer, self._producer = self._producer, None
            await producer.stop()  # its connections and tasks, opened before the failure
            if isinstance(exc, KafkaConnectionError) and self.settings.security.protocol != (
                "PLAINTEXT"
            ):
                # aiokafka says "unable to bootstrap" for a wrong password too: ask why
                await asyncio.to_thread(check_access, self.settings, (), 10.0)
            raise

    async def stop(self) -> None:
        if self._producer is not None:
            try:
                await self.flush()
            finally:
                await self._producer.stop()
                self._producer = None

    async def __aenter__(self) -> LetheProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def send(self, logical_topic: str, key: str, record: Contract) -> asyncio.Future:
        """Queue one record; the returned future resolves to its RecordMetadata or raises."""
        if self.settings.limits != DEFAULT_LIMITS:
            # the constructors checked the default limits; the workers apply these, and a
            # record they refuse would only become a dead letter (a deletion: no receipt)
            decode(type(record), record.to_bytes(), self.settings.limits)
        if self._producer is None:
            raise RuntimeError("producer not started")
        fut = await self._producer.send(
            topic_name(self.settings, logical_topic),
            value=record.to_bytes(),
            key=key.encode("utf-8"),
        )
        self._pending.add(fut)
        fut.add_done_callback(lambda f, k=key: self._settle(f, k))
        return fut

    def _settle(self, fut: asyncio.Future, key: str) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self._failures.append((key, fut.exception()))

    async def flush(self) -> None:
        """Wait for every queued record; raise :class:`DeliveryError` if any failed."""
        if self._producer is not None:
            await self._producer.flush()
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(failures)

    async def interaction(
        self,
        user_id: str,
        item_id: str,
        *,
        ts: int | None = None,
        event_id: str | None = None,
        kind: str = "view",
        value: float | None = None,
    ) -> asyncio.Future:
        event = InteractionEvent(
            event_id=event_id or new_id(),
            user_id=user_id,
            item_id=item_id,
            ts=now_ms() if ts is None else ts,
            kind=kind,  # type: ignore[arg-type]
            value=value,
        )
        return await self.send("interactions", user_id, event)

    async def interactions(self, events: Iterable[InteractionEvent]) -> int:
        """Queue many events (keyed by user) and wait for all of them; returns the count."""
        n = 0
        for event in events:
            await self.send("interactions", event.user_id, event)
            n += 1
        await self.flush()
        return n

    async def item(
        self,
        item_id: str,
        title: str,
        *,
        year: int | None = None,
        genres: Iterable[str] = (),
        text: str | None = None,
        ts: int | None = None,
    ) -> ItemMetadata:
        """Announce what an item is on ``items`` (key ``item_id``; the newest record per
        item is kept). The trainer reads it as text, so the next exported model can rank
        the item before it has many interactions. Not for personal data."""
        meta = ItemMetadata(
            item_id=item_id,
            title=title,
            year=year,
            genres=list(genres),
            text=text,
            ts=now_ms() if ts is None else ts,
        )
        await self.send("items", meta.kafka_key(), meta)
        return meta

    async def items(self, records: Iterable[ItemMetadata]) -> int:
        """Queue many item records (keyed by item) and wait for all of them; the count."""
        n = 0
        for meta in records:
            await self.send("items", meta.kafka_key(), meta)
            n += 1
        await self.flush()
        return n

    async def forget(self, request: DeletionRequest) -> asyncio.Future:
        return await self.send("deletions", request.kafka_key(), request)

    async def forget_user(self, user_id: str, *, reason: str = "privacy") -> DeletionRequest:
        req = DeletionRequest(
            request_id=new_id(),
            scope="user",
            user_id=user_id,
            reason=reason,
            ts=now_ms(),  # type: ignore[arg-type]
        )
        await self.forget(req)
        return req

    async def forget_item(self, item_id: str, *, reason: str = "utility") -> DeletionRequest:
        req = DeletionRequest(
            request_id=new_id(),
            scope="item",
            item_id=item_id,
            reason=reason,
            ts=now_ms(),  # type: ignore[arg-type]
        )
        await self.forget(req)
        return req

    async def forget_interactions(
        self, user_id: str, item_ids: list[str], *, reason: str = "privacy"
    ) -> DeletionRequest:
        req = DeletionRequest(
            request_id=new_id(),
            scope="interactions",
            user_id=user_id,
            item_ids=item_ids,
            reason=reason,  # type: ignore[arg-type]
            ts=now_ms(),
        )
        await self.forget(req)
        return req

    async def request_recommendations(
        self, user_id: str, k: int = 10, *, exclude_seen: bool = True
    ) -> RecRequest:
        req = RecRequest(
            request_id=new_id(), user_id=user_id, k=k, ts=now_ms(), exclude_seen=exclude_seen
        )
        await self.send("rec-requests", user_id, req)
        return req


async def send_acknowledged(
    settings: LetheSettings, send: Callable[[LetheProducer], Awaitable[R]]
) -> R:
    """Run ``send`` on a fresh producer and wait until the broker has acknowledged what it
    queued. A failure to close the producer after that does not unsend it, so it is not
    raised: a caller told "not sent" would send a deletion twice."""
    delivered: list[R] = []
    try:
        async with LetheProducer(settings) as producer:
            record = await send(producer)
            await producer.flush()
            delivered.append(record)
    except Exception:  # noqa: BLE001 - whatever closing raises, an acknowledged record is out
        if not delivered:
            raise
        log.warning("the producer failed to close after the broker acknowledged the record")
    return delivered[0]


class SyncLetheProducer:
    """Blocking facade over :class:`LetheProducer`, running its own event loop thread."""

    def __init__(self, settings: LetheSettings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._async = LetheProducer(settings)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self._run(self._async.start())

    def close(self) -> None:
        try:
            self._run(self._async.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def __enter__(self) -> SyncLetheProducer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def interaction(self, user_id: str, item_id: str, **kw: Any) -> None:
        self._run(self._async.interaction(user_id, item_id, **kw))

    def interactions(self, events: Iterable[InteractionEvent]) -> int:
        return self._run(self._async.interactions(events))

    def item(self, item_id: str, title: str, **kw: Any) -> ItemMetadata:
        return self._run(self._async.item(item_id, title, **kw))

    def items(self, records: Iterable[ItemMetadata]) -> int:
        return self._run(self._async.items(records))

    def forget_user(self, user_id: str, **kw: Any) -> DeletionRequest:
        return self._run(self._async.forget_user(user_id, **kw))

    def forget_item(self, item_id: str, **kw: Any) -> DeletionRequest:
        return self._run(self._async.forget_item(item_id, **kw))

    def forget_interactions(self, user_id: str, item_ids: list[str], **kw: Any) -> DeletionRequest:
        return self._run(self._async.forget_interactions(user_id, item_ids, **kw))

    def flush(self) -> None:
        self._run(self._async.flush())
