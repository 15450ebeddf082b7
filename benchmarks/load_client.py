"""Open-loop load for the scoring agent: requests on ``rec-requests`` at a fixed rate, each
answer on ``recommendations`` timed on the client's clock (send → receive).

Two interchangeable clients. ``librdkafka`` (confluent-kafka, the default) does its Kafka
work in C threads, so on a 2-core machine the load generator takes little of the CPU that
the broker and the scorer under test need; ``aiokafka`` is the pure-Python client the rest
of Lethe uses (measured: about 0.35 of a core at 200 requests/s, ~0.1 with librdkafka).

Both return ``(latencies_s, send_s, all_send_s)``: per answered request its latency and its
send time (s after the first send), and the send times of all requests.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from collections.abc import Callable

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.client import new_id, now_ms
from streams.config import LetheSettings
from streams.kafka_config import client_kwargs, reply_producer_kwargs
from streams.reader import read_from_end
from streams.runtime.kafka import assign_at_end
from streams.topics import topic_name

CLIENTS = ("librdkafka", "aiokafka")
#: answers still missing this long after the last send count as lost
DRAIN_S = 30.0


class _Schedule:
    """Request bodies and send times of an open loop (rate fixed in advance, not paced by
    answers), with the bookkeeping both clients share."""

    def __init__(self, users: list[str], rate: float, seconds: float) -> None:
        self.users, self.rate, self.total = users, rate, int(rate * seconds)
        self.rng = np.random.default_rng(len(users))
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.sends: list[float] = []
        self.answers: dict[str, int] = {}
        self.start = 0.0

    def take(self) -> tuple[bytes, bytes]:
        """The next request's value and key, its send time recorded as now."""
        user = self.users[int(self.rng.integers(len(self.users)))]
        rid = new_id()
        body = json.dumps({"request_id": rid, "user_id": user, "k": 10, "ts": now_ms()})
        self.sent_at[rid] = time.perf_counter()
        return body.encode(), user.encode()

    def delay_after(self, n: int) -> float:
        """Seconds to wait before request ``n + 1`` is due."""
        return self.start + (n + 1) / self.rate - time.perf_counter()

    def answered(self, value: bytes, now: float) -> None:
        rid = json.loads(value)["request_id"]
        sent = self.sent_at.get(rid)
        self.answers[rid] = self.answers.get(rid, 0) + 1
        if sent is not None and self.answers[rid] == 1:  # the first answer counts
            self.latencies.append(now - sent)
            self.sends.append(sent - self.start)

    @property
    def duplicates(self) -> int:
        """Answers beyond the first, summed over requests."""
        return sum(n - 1 for n in self.answers.values() if n > 1)

    def done(self) -> bool:
        return len(self.latencies) >= len(self.sent_at)

    def on_send(self, n: int) -> None:
        """Called after request ``n`` went out (a hook for scripted events mid-run)."""

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        all_sends = np.array(list(self.sent_at.values())) - self.start
        return np.array(self.latencies), np.array(self.sends), all_sends


class Scripted(_Schedule):
    """A schedule that runs ``actions[n]()`` right after request ``n`` was sent."""

    def __init__(self, users, rate, seconds, actions: dict[int, Callable[[], None]]) -> None:
        super().__init__(users, rate, seconds)
        self.actions = actions
        self.action_at: dict[int, float] = {}

    def on_send(self, n: int) -> None:
        action = self.actions.get(n)
        if action is not None:
            self.action_at[n] = time.perf_counter() - self.start
            action()


def open_loop(
    settings: LetheSettings,
    users: list[str],
    rate: float,
    seconds: float,
    fetch_wait_ms: int,
    client: str = "librdkafka",
    schedule: _Schedule | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Send ``rate`` requests/s for ``seconds`` and time every answer (the first one per
    request; ``schedule.duplicates`` counts the others).

    The caller's heap (dataset, trained model) is frozen first, as the scorer does after
    loading, so the collector's full passes over it do not stall the clock it measures."""
    gc.collect()
    gc.freeze()
    schedule = schedule or _Schedule(users, rate, seconds)
    if client == "librdkafka":
        _librdkafka_loop(settings, schedule, fetch_wait_ms)
    elif client == "aiokafka":
        asyncio.run(_aiokafka_loop(settings, schedule, fetch_wait_ms))
    else:
        raise ValueError(f"unknown client {client!r}; one of {CLIENTS}")
    return schedule.result()


def _librdkafka_loop(settings: LetheSettings, schedule: _Schedule, fetch_wait_ms: int) -> None:
    from confluent_kafka import Consumer, Producer

    if settings.security.protocol != "PLAINTEXT":
        raise ValueError("the librdkafka load client speaks PLAINTEXT only; use --client aiokafka")
    common = {"bootstrap.servers": settings.bootstrap_servers, "client.id": "lethe-bench"}
    # same request settings as the Lethe SDK's reply producer: at once, acks=1
    producer = Producer({**common, "linger.ms": 0, "acks": 1, "enable.idempotence": False})
    consumer = Consumer(
        {
            **common,
            "group.id": f"lethe-bench-{new_id()}",  # required by librdkafka; never committed
            "enable.auto.commit": False,
            "fetch.wait.max.ms": fetch_wait_ms,
        }
    )
    assign_at_end(consumer, topic_name(settings, "recommendations"))
    sending = threading.Event()
    sending.set()

    def receive() -> None:
        deadline = None
        while True:
            message = consumer.poll(0.02)
            now = time.perf_counter()
            if message is not None and message.error() is None:
                schedule.answered(message.value(), now)
            if not sending.is_set():
                deadline = deadline or now + DRAIN_S
                if schedule.done() or now > deadline:
                    return

    receiver = threading.Thread(target=receive, name="bench-receiver", daemon=True)
    receiver.start()
    topic = topic_name(settings, "rec-requests")
    try:
        schedule.start = time.perf_counter()
        for n in range(schedule.total):
            body, key = schedule.take()
            producer.produce(topic, value=body, key=key)
            producer.poll(0)  # delivery callbacks (none registered) and queue housekeeping
            schedule.on_send(n)
            delay = schedule.delay_after(n)
            if delay > 0:
                time.sleep(delay)
        producer.flush(10)
    finally:
        sending.clear()
        receiver.join()
        consumer.close()


async def _aiokafka_loop(settings: LetheSettings, schedule: _Schedule, fetch_wait_ms: int) -> None:
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), group_id=None, fetch_max_wait_ms=fetch_wait_ms
    )
    await consumer.start()
    try:
        await read_from_end(consumer, topic_name(settings, "recommendations"))
        sending = True

        async def receive() -> None:
            deadline = None
            while True:
                got = await consumer.getmany(timeout_ms=20)
                now = time.perf_counter()
                for records in got.values():
                    for record in records:
                        schedule.answered(record.value, now)
                if not sending:
                    deadline = deadline or now + DRAIN_S
                    if schedule.done() or now > deadline:
                        return

        receiver = asyncio.create_task(receive())
        producer = AIOKafkaProducer(**reply_producer_kwargs(settings))
        await producer.start()
        topic = topic_name(settings, "rec-requests")
        try:
            schedule.start = time.perf_counter()
            for n in range(schedule.total):
                body, key = schedule.take()
                await producer.send(topic, value=body, key=key)
                delay = schedule.delay_after(n)
                if delay > 0:
                    await asyncio.sleep(delay)
            await producer.flush()
        finally:
            sending = False
            await producer.stop()
        await receiver
    finally:
        await consumer.stop()
