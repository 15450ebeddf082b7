"""Streaming IMCorrect against the real broker: replay, forget, crash, dead letters."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
import time

import pytest

from models.datasets import load
from streams.client import LetheProducer
from streams.contracts import DeadLetter, DeletionReceipt, decode
from streams.erasure import verify_erasure
from streams.keys import keyring_for
from streams.replay import to_event
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


@pytest.fixture(scope="module")
def ml100k():
    return load("ml-100k")


def _publish(settings, events=(), forget_users=()):
    async def run():
        async with LetheProducer(settings) as p:
            for e in events:
                await p.send("interactions", e.user_id, e)
            await p.flush()
            for u in forget_users:
                await p.forget_user(u)
            await p.flush()

    asyncio.run(run())


def test_replay_ml100k_then_forget_5pct_equals_batch_fit(settings, ml100k, tmp_path):
    asyncio.run(create_topics(settings))
    # distinctive user ids, so that a byte search of the state files means something
    events = [
        e.model_copy(update={"user_id": f"person-{e.user_id}-x"})
        for e in map(to_event, ml100k.replay())
    ]
    users = sorted({e.user_id for e in events})
    forgotten = random.Random(5).sample(users, round(0.05 * len(users)))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        _publish(settings, events)
        _publish(settings, forget_users=forgotten)
        wait_caught_up(settings, worker, n_receipts=len(forgotten))
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.kill()

    receipts = [
        decode(DeletionReceipt, r.value)
        for r in asyncio.run(read_all(settings, "deletion-receipts"))
    ]
    assert len(receipts) == len(forgotten)
    assert len({r.request_id for r in receipts}) == len(forgotten)
    assert all(r.status == "applied" and r.removed["users"] == 1 for r in receipts)

    state = load_state(settings.state_dir)
    gone = set(forgotten)
    retained = [(e.user_id, e.item_id) for e in events if e.user_id not in gone]
    assert_equals_batch_fit(state, retained, settings.imcorrect.ease.l2)
    assert state.counters["events_accepted"] == len(events)

    # after the receipts, no file under the state directory names a forgotten user
    needles = [u.encode() for u in forgotten]
    assert not set(forgotten) & set(filter(None, state.users.by_index))
    for path in settings.state_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(n in blob for n in needles), f"forgotten id found in {path}"
    # the receipts name no one, and prove themselves from the files (docs/privacy.md)
    assert not any(n in r.to_bytes() for r in receipts for n in needles)
    keys = keyring_for(settings, create=False)
    for receipt in receipts:
        verdict = verify_erasure(settings.state_dir, receipt, keys)
        assert verdict.passed, verdict.render()


def test_sigkill_three_times_loses_nothing_and_applies_nothing_twice(settings, ml100k, tmp_path):
    asyncio.run(create_topics(settings))
    events = [to_event(r) for r in ml100k.replay()][:50_000]
    users = sorted({e.user_id for e in events})
    rng = random.Random(11)
    forgotten = rng.sample(users, 200)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()

    def produce():
        chunks = [events[i : i + 5000] for i in range(0, len(events), 5000)]
        deletions = [forgotten[i : i + 20] for i in range(0, 200, 20)]
        for chunk, dels in zip(chunks, deletions, strict=True):
            _publish(settings, chunk, dels)
            time.sleep(0.3)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for started in range(1, 4):
            _wait_ready_count(tmp_path / "worker.log", started)
            time.sleep(rng.uniform(0.5, 4.0))  # a random moment of processing
            worker.kill()
            worker.start()
        _wait_ready_count(tmp_path / "worker.log", 4)
        producer.join()
        wait_caught_up(settings, worker, n_receipts=200, timeout_s=300)
        assert worker.stop() == 0
    finally:
        producer.join()
        if worker.alive():
            worker.kill()

    log = (tmp_path / "worker.log").read_text()
    assert log.count("imcorrect worker ready") == 4, "expected three restarts"
    state = load_state(settings.state_dir)
    gone = set(forgotten)
    retained = [(e.user_id, e.item_id) for e in events if e.user_id not in gone]
    assert_equals_batch_fit(state, retained, settings.imcorrect.ease.l2)
    assert state.counters["events_accepted"] == len(events), "an event was lost or applied twice"
    assert state.counters.get("duplicates", 0) == 0
    receipts = [
        decode(DeletionReceipt, r.value)
        for r in asyncio.run(read_all(settings, "deletion-receipts"))
    ]
    assert sorted(r.request_id for r in receipts) == sorted({r.request_id for r in receipts})
    assert len(receipts) == 200
    keys = keyring_for(settings, create=False)
    for receipt in receipts:  # each one proves itself from the files after the storm
        verdict = verify_erasure(settings.state_dir, receipt, keys)
        assert verdict.passed, verdict.render()


def _wait_ready_count(log_path, n: int, timeout_s: float = 60) -> None:
    """Until the worker log says "worker ready" ``n`` times (a start got through)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_path.exists() and log_path.read_text().count("imcorrect worker ready") >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"start {n} of the worker did not get ready in {timeout_s} s")


def _malformed(n: int) -> list[tuple[bytes, str]]:
    """(raw value, expected field in the reason) for many kinds of bad input."""
    good = {"event_id": "x", "user_id": "u", "item_id": "i", "ts": 1}
    kinds = [
        (b"{not json", "message"),
        (b"\xff\xfe\xfd", "message"),
        (b"[1,2,3]", "message"),
        (json.dumps({**good, "ts": "yesterday"}).encode(), "ts"),
        (json.dumps({k: v for k, v in good.items() if k != "user_id"}).encode(), "user_id"),
        (json.dumps({**good, "item_id": "i" * 500}).encode(), "item_id"),
        (json.dumps({**good, "ts": -5}).encode(), "ts"),
        (json.dumps({**good, "kind": "teleport"}).encode(), "kind"),
        (json.dumps({**good, "value": "lots"}).encode(), "value"),
        (json.dumps({**good, "user_id": ""}).encode(), "user_id"),
    ]
    return [kinds[k % len(kinds)] for k in range(n)]


def test_malformed_messages_go_to_dead_letters_while_good_ones_apply(settings, ml100k, tmp_path):
    asyncio.run(create_topics(settings))
    good = [to_event(r) for r in ml100k.replay()][:3000]
    bad = _malformed(1000)
    bad_deletion = json.dumps(
        {"request_id": "r", "scope": "everyone", "reason": "privacy", "ts": 1}
    )

    async def publish():
        async with LetheProducer(settings) as p:
            raw = p._producer
            topic = topic_name(settings, "interactions")
            for k, event in enumerate(good):
                await p.send("interactions", event.user_id, event)
                if k % 3 == 0 and k // 3 < len(bad):
                    await raw.send(topic, value=bad[k // 3][0], key=b"evil")
            await raw.send(topic_name(settings, "deletions"), value=bad_deletion.encode(), key=b"u")
            await p.flush()

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        asyncio.run(publish())
        wait_caught_up(settings, worker, n_receipts=0)
        assert worker.alive()
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.kill()

    letters = [decode(DeadLetter, r.value) for r in asyncio.run(read_all(settings, "dead-letters"))]
    assert len(letters) == 1001
    by_raw = {}
    for letter in letters:
        by_raw.setdefault(base64.b64decode(letter.raw_value_b64), letter)
    for raw, field in bad:
        letter = by_raw[raw]
        assert letter.error.startswith(field), (raw[:40], letter.error)
        assert letter.source_topic.endswith("interactions") and letter.source_offset >= 0
    assert any("scope" in letter.error for letter in letters)
    kinds = {letter.error.split(":")[0] for letter in letters}
    assert len(kinds) >= 7
    state = load_state(settings.state_dir)
    assert state.counters["events_accepted"] == len(good)
    assert state.counters["dead_letters"] == 1001
    assert_equals_batch_fit(
        state, [(e.user_id, e.item_id) for e in good], settings.imcorrect.ease.l2
    )


def test_receipts_pending_at_a_crash_are_published_exactly_once(settings, tmp_path):
    """A snapshot taken just before a crash holds two decided receipts; one of them had
    already reached the topic. After restart each is on the topic exactly once."""
    from models.imcorrect import IMCorrect
    from streams.keys import keyring_for
    from streams.state import SnapshotStore, WorkerState

    asyncio.run(create_topics(settings))
    sent = DeletionReceipt(
        request_id="req-sent",
        status="applied",
        scope="user",
        removed={"interactions": 3, "users": 1},
        applied_at=1,
    )
    lost = DeletionReceipt(
        request_id="req-lost",
        status="applied",
        scope="user",
        removed={"interactions": 5, "users": 1},
        applied_at=1,
    )

    async def publish_first():
        async with LetheProducer(settings) as p:
            await p.send("deletion-receipts", sent.request_id, sent)

    asyncio.run(publish_first())
    state = WorkerState(model=IMCorrect("ease", l2=settings.imcorrect.ease.l2))
    state.pending_receipts = [sent.model_dump_json(), lost.model_dump_json()]
    state.receipts_end_offsets = {}  # from the start of every partition
    # written under the worker's own key (it refuses a snapshot hashed with another)
    store = SnapshotStore(settings.state_dir / "imcorrect", keyring_for(settings))
    store.save(store.adopt(state))

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
    finally:
        assert worker.stop() == 0
    ids = sorted(
        decode(DeletionReceipt, r.value).request_id
        for r in asyncio.run(read_all(settings, "deletion-receipts"))
    )
    assert ids == ["req-lost", "req-sent"]
    assert load_state(settings.state_dir).pending_receipts == []


def test_a_standby_takes_over_when_the_worker_is_killed(settings, ml100k, tmp_path):
    """Two processes on one state folder: the second waits (``--standby``), takes the folder
    over when the first is SIGKILLed, and ends exact, with one receipt per request."""
    asyncio.run(create_topics(settings))
    events = [to_event(r) for r in ml100k.replay()][:20_000]
    forgotten = random.Random(5).sample(sorted({e.user_id for e in events}), 40)
    log_path = tmp_path / "workers.log"
    active = WorkerProcess(settings, log_path).start()
    _wait_ready_count(log_path, 1)
    standby = WorkerProcess(settings.model_copy(update={"standby": True}), log_path).start()
    try:
        deadline = time.monotonic() + 60
        while "standby: waiting" not in log_path.read_text():
            assert time.monotonic() < deadline and standby.alive(), standby.log_tail()
            time.sleep(0.2)
        _publish(settings, events[:10_000], forgotten[:20])
        time.sleep(1.0)
        active.kill()
        _publish(settings, events[10_000:], forgotten[20:])
        _wait_ready_count(log_path, 2)  # the standby is the worker now
        wait_caught_up(settings, standby, n_receipts=40, timeout_s=240)
        assert standby.stop() == 0
    finally:
        active.kill()
        standby.kill()
    assert "standby: took over" in log_path.read_text()
    state = load_state(settings.state_dir)
    gone = set(forgotten)
    retained = [(e.user_id, e.item_id) for e in events if e.user_id not in gone]
    assert_equals_batch_fit(state, retained, settings.imcorrect.ease.l2)
    assert state.counters["events_accepted"] == len(events), "an event was lost or applied twice"
    receipts = asyncio.run(read_all(settings, "deletion-receipts"))
    ids = [decode(DeletionReceipt, r.value).request_id for r in receipts]
    assert len(ids) == len(set(ids)) == 40
