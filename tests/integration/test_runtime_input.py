"""The runtime against the real broker: every codec is read, no input stops the worker."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time

import pytest
from confluent_kafka import Producer

from models.datasets import load
from streams.client import LetheProducer
from streams.contracts import DeadLetter, DeletionReceipt, decode
from streams.kafka_config import librdkafka_config
from streams.replay import to_event
from streams.runtime import kafka
from streams.runtime.admin import create_topics
from streams.topics import topic_name
from tests.integration.worker_harness import (
    WorkerProcess,
    assert_equals_batch_fit,
    load_state,
    read_all,
    wait_caught_up,
)

pytestmark = pytest.mark.kafka

CODECS = ("gzip", "snappy", "lz4", "zstd")


@pytest.fixture(scope="module")
def events():
    return [to_event(r) for r in load("ml-100k").replay()][:4000]


def _producer(settings, compression: str = "none") -> Producer:
    return Producer(
        {
            **librdkafka_config(settings),
            "compression.type": compression,
            "linger.ms": 50,  # multi-record batches, compressed as a whole
            "message.max.bytes": 3_000_000,
        }
    )


def test_a_backlog_in_every_codec_is_applied(settings, events, tmp_path):
    asyncio.run(create_topics(settings))
    topic = topic_name(settings, "interactions")
    chunks = {codec: events[k :: len(CODECS)] for k, codec in enumerate(CODECS)}
    for codec, chunk in chunks.items():
        producer = _producer(settings, codec)
        for e in chunk:
            producer.produce(topic, value=e.to_bytes(), key=e.user_id.encode())
        assert producer.flush(30) == 0
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        wait_caught_up(settings, worker, n_receipts=0, timeout_s=120)
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.kill()
    state = load_state(settings.state_dir)
    assert state.counters["events_accepted"] == len(events)
    assert state.counters.get("dead_letters", 0) == 0
    assert_equals_batch_fit(
        state, [(e.user_id, e.item_id) for e in events], settings.imcorrect.ease.l2
    )


def _poison() -> list[tuple[bytes, str]]:
    """(raw value, the field its dead letter must name) for hostile and careless input."""
    good = {"event_id": "p", "user_id": "u", "item_id": "i", "ts": 1}
    deep = b'{"event_id":"a","user_id":"b","item_id":"c","ts":1,"x":' + b"[" * 100_000
    deep += b"]" * 100_000 + b"}"
    future = int(time.time() * 1000) + 10 * 24 * 3600 * 1000
    return [
        (deep, "message"),  # RecursionError in a naive decoder
        (b'{"event_id":"a","user_id":"b","item_id":"c","ts":' + b"9" * 5000 + b"}", "message"),
        # past Python's 4,300-digit limit in an unknown field: the contract refuses it, so
        # the fast path does too (it used to skip the field and accept)
        (
            b'{"event_id":"a","user_id":"b","item_id":"c","ts":1,"z":' + b"7" * 5000 + b"}",
            "message",
        ),
        (json.dumps({**good, "ts": 1e300}).encode(), "ts"),
        (json.dumps({**good, "value": 10**400}).encode(), "value"),
        (json.dumps(good).encode("utf-16"), "message"),
        (b"\xef\xbb\xbf" + json.dumps(good).encode(), "message"),  # a UTF-8 byte-order mark
        (b'{"event_id":"a","user_id":"\\ud800","item_id":"c","ts":1}', "user_id"),
        (b'{"event_id":"a","user_id":"b\\u0000","item_id":"c","ts":1}', "user_id"),
        (json.dumps({**good, "user_id": 42}).encode(), "user_id"),
        (json.dumps({**good, "item_id": ["i"]}).encode(), "item_id"),
        (json.dumps({**good, "event_id": {"$gt": ""}}).encode(), "event_id"),
        (json.dumps({**good, "ts": True}).encode(), "ts"),
        (json.dumps({**good, "ts": future}).encode(), "ts"),  # a producer clock far ahead
        (json.dumps({**good, "value": "NaN"}).encode(), "value"),
        (b"null", "message"),
        (b"", "message"),
        (b'"just a string"', "message"),
        (json.dumps({**good, "pad": "x" * 1_500_000}).encode(), "message"),  # over the limit
    ]


def test_poison_input_is_dead_lettered_and_the_worker_goes_on(settings, events, tmp_path):
    asyncio.run(create_topics(settings))
    topic = topic_name(settings, "interactions")
    poison = _poison()
    # valid events with an unknown field (tolerated): the same pair twice, event id "a"
    extra = {"event_id": "a", "user_id": "b", "item_id": "c", "ts": 1}
    tolerated = [json.dumps({**extra, "z": [1, {"y": None}]}).encode()] * 2
    producer = _producer(settings, "zstd")
    good = events[:1500]
    for k, e in enumerate(good):
        producer.produce(topic, value=e.to_bytes(), key=e.user_id.encode())
        if k % 50 == 0 and k // 50 < len(poison):
            producer.produce(topic, value=poison[k // 50][0], key=b"evil")
    for raw in tolerated:
        producer.produce(topic, value=raw, key=b"careless")
    # a deletion nested beyond any decoder's recursion limit, and one with a huge key
    deletions = topic_name(settings, "deletions")
    producer.produce(deletions, value=b'{"request_id":' + b"[" * 50_000, key=b"u")
    producer.produce(deletions, value=b"{}", key=b"k" * 500_000)
    assert producer.flush(30) == 0

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        wait_caught_up(settings, worker, n_receipts=0, timeout_s=120)
        assert worker.alive()
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.kill()

    letters = [decode(DeadLetter, r.value) for r in asyncio.run(read_all(settings, "dead-letters"))]
    assert len(letters) == len(poison) + 2
    by_digest = {}
    for letter in letters:
        assert len(letter.to_bytes()) <= settings.limits.max_message_bytes
        raw = base64.b64decode(letter.raw_value_b64)
        if letter.truncated:
            assert letter.raw_length > len(raw) and letter.raw_sha256
            by_digest[letter.raw_sha256] = letter
        else:
            by_digest[hashlib.sha256(raw).hexdigest()] = letter
    for raw, field in poison:
        letter = by_digest[hashlib.sha256(raw).hexdigest()]
        assert letter.error.startswith(field), (raw[:60], letter.error)
        assert letter.raw_length == len(raw)
    assert any(letter.key and letter.key.startswith("sha256:") for letter in letters)
    state = load_state(settings.state_dir)
    # the tolerated ones are valid events (the same pair), learned once: event id "a"
    assert state.counters["events_accepted"] == len(good) + 1
    assert state.counters["dead_letters"] == len(poison) + 2
    pairs = [(e.user_id, e.item_id) for e in good] + [("b", "c")]
    assert_equals_batch_fit(state, pairs, settings.imcorrect.ease.l2)


def test_a_deletion_after_interactions_written_in_transactions_is_applied(
    settings, events, tmp_path
):
    """A topic written in transactions ends in a commit marker and may hold aborted records;
    the consumer never delivers either, so a deletion held until ``interactions`` is read to
    its end must be released by the consumer's position, not by the last record delivered
    (which never reaches that end)."""
    asyncio.run(create_topics(settings))
    topic = topic_name(settings, "interactions")
    producer = kafka.producer(settings, **{"transactional.id": f"t-{settings.topic_prefix}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for e in events[:200]:
        producer.produce(topic, value=e.to_bytes(), key=e.user_id.encode())
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=events[200].to_bytes(), key=events[200].user_id.encode())
    producer.flush(10)
    producer.abort_transaction(30)

    async def forget() -> None:
        async with LetheProducer(settings) as p:
            await p.forget_user(events[0].user_id)
            await p.flush()

    asyncio.run(forget())
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        deadline = time.monotonic() + 90
        receipts = []
        while not receipts and time.monotonic() < deadline:
            assert worker.alive(), worker.log_tail()
            receipts = asyncio.run(read_all(settings, "deletion-receipts"))
            time.sleep(1.0)
        assert receipts, f"the deletion was held for records never delivered:\n{worker.log_tail()}"
        assert DeletionReceipt.model_validate_json(receipts[0].value).status == "applied"
        wait_caught_up(settings, worker, n_receipts=1, timeout_s=60)  # offsets reach the end
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.kill()
    state = load_state(settings.state_dir)
    assert state.users.get(events[0].user_id) is None
    assert state.counters["events_accepted"] == 200  # the aborted record was never read
