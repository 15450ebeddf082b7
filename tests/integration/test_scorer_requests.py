"""The scoring agent's request path on the real broker: every valid request answered,
malformed ones dead-lettered without stopping the worker, requests read from the end, a clean
stop."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaProducer

from streams.client import LetheProducer, new_id, now_ms
from streams.contracts import DeadLetter, InteractionEvent, Recommendation, RecRequest, decode
from streams.kafka_config import client_kwargs
from streams.procs import WorkerProcess
from streams.reader import read_all
from streams.runtime.admin import create_topics
from streams.topics import topic_name

pytestmark = pytest.mark.kafka

MALFORMED = [b"{not json", b'{"request_id": "r", "user_id": "u0", "k": 0, "ts": 1}']


def wait_for(settings, logical: str, n: int, worker: WorkerProcess, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        records = asyncio.run(read_all(settings, logical))
        if len(records) >= n:
            return records
        assert worker.alive(), f"scorer died:\n{worker.log_tail()}"
        assert time.monotonic() < deadline, f"{len(records)}/{n} on {logical}:\n{worker.log_tail()}"
        time.sleep(0.5)


def test_scorer_answers_requests_and_dead_letters_malformed_ones(settings, tmp_path):
    asyncio.run(create_topics(settings))
    events = [
        InteractionEvent(event_id=f"e{k}", user_id=f"u{k % 5}", item_id=f"i{k % 13}", ts=now_ms())
        for k in range(60)
    ]
    scorer = WorkerProcess(settings, tmp_path / "scorer.log", "scorer").start()
    try:
        scorer.wait_ready(120)

        async def send() -> list[RecRequest]:
            async with LetheProducer(settings) as producer:
                await producer.interactions(events)
            await asyncio.sleep(2.0)  # the scorer's state task reads them (popularity, seen)
            raw = AIOKafkaProducer(**client_kwargs(settings))
            await raw.start()
            try:
                for body in MALFORMED:  # between valid requests: the worker must go on
                    await raw.send_and_wait(topic_name(settings, "rec-requests"), body, key=b"u0")
            finally:
                await raw.stop()
            sent = []
            async with LetheProducer(settings, for_requests=True) as producer:
                for k in range(20):
                    sent.append(await producer.request_recommendations(f"u{k % 7}", k=3))
            return sent

        sent = asyncio.run(send())
        answers = [
            decode(Recommendation, r.value)
            for r in wait_for(settings, "recommendations", 20, scorer)
        ]
        letters = [
            decode(DeadLetter, r.value) for r in wait_for(settings, "dead-letters", 2, scorer)
        ]
        assert sorted(a.request_id for a in answers) == sorted(r.request_id for r in sent)
        seen = {
            u: {e.item_id for e in events if e.user_id == u} for u in {e.user_id for e in events}
        }
        for answer in answers:
            assert answer.strategy == "popularity" and len(answer.items) <= 3
            assert not {i.item_id for i in answer.items} & seen.get(answer.user_id, set())
            if answer.user_id in ("u5", "u6"):  # nothing seen: the three most popular items
                assert len(answer.items) == 3
        assert sorted(letter.source_offset for letter in letters) == [0, 1]
        assert {letter.source_topic for letter in letters} == {topic_name(settings, "rec-requests")}
        assert all(letter.error for letter in letters)
        assert scorer.stop() == 0, scorer.log_tail()
    finally:
        scorer.kill()


def test_a_starting_scorer_reads_requests_from_the_end(settings, tmp_path):
    """Requests are ephemeral: a scorer that starts later does not answer old ones."""
    asyncio.run(create_topics(settings))

    async def request(user: str) -> RecRequest:
        async with LetheProducer(settings, for_requests=True) as producer:
            req = RecRequest(request_id=new_id(), user_id=user, k=2, ts=now_ms())
            await producer.send("rec-requests", user, req)
            return req

    old = asyncio.run(request("early"))
    scorer = WorkerProcess(settings, tmp_path / "scorer.log", "scorer").start()
    try:
        scorer.wait_ready(120)
        new = asyncio.run(request("late"))
        wait_for(settings, "recommendations", 1, scorer)
        time.sleep(1.0)  # room for a wrong second answer to show up
        answers = [
            decode(Recommendation, r.value)
            for r in asyncio.run(read_all(settings, "recommendations"))
        ]
        assert [a.request_id for a in answers] == [new.request_id] != [old.request_id]
    finally:
        scorer.stop()
