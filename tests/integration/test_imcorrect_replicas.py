"""Hot IMCorrect replicas on the real broker: one change log, identical exact replicas, one
receipt per request, through SIGKILLs of the writer (docs/scale-out.md)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from models.datasets import load
from streams.client import LetheProducer
from streams.contracts import DeletionReceipt, Recommendation, decode
from streams.erasure import verify_erasure
from streams.keys import keyring_for
from streams.reader import end_offsets
from streams.replay import to_event
from streams.runtime import changelog, kafka
from streams.runtime.admin import create_topics
from streams.state import model_digest
from streams.topics import topic_name
from tests.integration.replica_harness import (
    Replica,
    caught_up,
    publish_and_apply,
    read_committed,
    wait_for,
)
from tests.integration.worker_harness import (
    WorkerProcess,
    assert_equals_batch_fit,
    load_state,
    read_all,
)

pytestmark = pytest.mark.kafka


def test_two_replicas_stay_identical_and_exact_through_two_writer_kills(settings, tmp_path):
    asyncio.run(create_topics(settings))
    events = [to_event(r) for r in load("ml-100k").replay()]
    chunks = [events[i : i + 10_000] for i in range(0, len(events), 10_000)]
    last_seen = {e.user_id: i for i, e in enumerate(events)}
    rng = random.Random(7)
    early = sorted(u for u, i in last_seen.items() if i < 40_000)
    first = rng.sample(early, 20)
    later = sorted(u for u, i in last_seen.items() if i < 80_000 and u not in set(first))
    second = rng.sample(later, 20)
    forgotten = first + second

    def publish() -> None:
        async def run() -> None:
            async with LetheProducer(settings) as p:
                for n, chunk in enumerate(chunks, start=1):
                    for e in chunk:
                        await p.send("interactions", e.user_id, e)
                    await p.flush()
                    for u in {4: first, 8: second}.get(n, []):
                        await p.forget_user(u)
                    await p.flush()
                    await asyncio.sleep(0.7)

        asyncio.run(run())

    a = Replica(settings, "a", tmp_path).start()
    b = Replica(settings, "b", tmp_path).start()
    both = (a, b)
    try:
        wait_for(lambda: a.is_writer() or b.is_writer(), 60, "a writer", both)
        producer = threading.Thread(target=publish)
        producer.start()
        for _kill in range(2):  # SIGKILL the writer at a random moment, restart it
            time.sleep(rng.uniform(1.0, 4.0))
            writer, other = (a, b) if a.is_writer() else (b, a)
            writer.kill()
            wait_for(other.is_writer, 60, f"replica {other.id} taking over", (other,))
            writer.start()
        producer.join(120)
        assert not producer.is_alive()
        wait_for(
            lambda: len(asyncio.run(read_all(settings, "deletion-receipts"))) >= len(forgotten),
            180,
            "every receipt",
            both,
        )
        log_end = asyncio.run(end_offsets(settings, ["imcorrect-log"]))
        (end,) = log_end.values()
        wait_for(lambda: all(caught_up(settings, r, end) for r in both), 120, "caught up", both)
        time.sleep(2.0)  # a receipt published twice would be out by now
        assert a.proc.stop() == 0 and b.proc.stop() == 0
    finally:
        for r in both:
            if r.proc is not None:
                r.proc.kill()

    logs = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("*.log")))
    assert logs.count("is the writer") >= 3, "the writer's role did not move twice"
    receipts = [
        decode(DeletionReceipt, r.value)
        for r in asyncio.run(read_all(settings, "deletion-receipts"))
    ]
    ids = [r.request_id for r in receipts]
    assert len(ids) == len(set(ids)) == len(forgotten), "not one receipt per request"
    assert all(r.status == "applied" and r.removed["users"] == 1 for r in receipts)
    assert all(r.replicas and set(r.replicas) <= {"a", "b"} for r in receipts)

    # the writers, between them, logged every event and deletion exactly once
    logged_events, logged_deletions = [], []
    for msg in read_committed(settings, topic_name(settings, "imcorrect-log")):
        record = changelog.decode(msg.offset(), msg.value(), settings.limits).record
        if isinstance(record, changelog.StepRecord):
            logged_events += record.event_ids
            logged_deletions += record.deletions
    assert sorted(logged_events) == sorted(e.event_id for e in events)
    assert len(logged_deletions) == len(forgotten)

    gone = set(forgotten)
    retained = [(e.user_id, e.item_id) for e in events if e.user_id not in gone]
    states = [load_state(settings.state_dir, f"imcorrect-{r.id}") for r in both]
    for state in states:
        assert_equals_batch_fit(state, retained, settings.imcorrect.ease.l2)
        assert state.counters["events_accepted"] == len(events), "an event lost or doubled"
        assert not gone & set(u for u in state.users.by_index if u is not None)
    # each replica's files prove erasures on their own (a sample: each check is a refit)
    keys = keyring_for(settings, create=False)
    for r in both:
        for receipt in random.Random(r.id).sample(receipts, 4):
            verdict = verify_erasure(settings.state_dir, receipt, keys, folder=f"imcorrect-{r.id}")
            assert verdict.passed, verdict.render()
    sa, sb = states
    assert sa.users.by_index == sb.users.by_index, "user indices differ"
    assert sa.items.by_index == sb.items.by_index, "item indices differ"
    assert (sa.model.interactions != sb.model.interactions).nnz == 0
    # the same calls in the same order: the same version, and the same state digest
    assert sa.model.version == sb.model.version
    assert model_digest(sa.model) == model_digest(sb.model)
    assert float(np.max(np.abs(sa.model.mapping - sb.model.mapping))) <= 1e-8


def test_a_receipt_waits_for_every_live_replica_and_names_them(settings, tmp_path):
    """A follower that stops answering holds a receipt back until it counts as gone; the
    receipt then names only the replicas that applied the deletion. Once it is back, it
    applies the deletion from the log and the next receipt names both."""
    asyncio.run(create_topics(settings))
    events = [to_event(r) for r in load("ml-100k").replay()][:5_000]
    users = sorted({e.user_id for e in events})
    a = Replica(settings, "a", tmp_path).start()
    b = Replica(settings, "b", tmp_path).start()
    both = (a, b)

    def forget(user: str) -> None:
        _forget(settings, user)

    def receipts() -> list[DeletionReceipt]:
        return _receipts(settings)

    try:
        wait_for(lambda: a.is_writer() or b.is_writer(), 60, "a writer", both)
        writer, follower = (a, b) if a.is_writer() else (b, a)
        publish_and_apply(settings, events, both)
        time.sleep(6.5)  # the new writer's first timeout: it has heard from everyone

        os.kill(follower.proc.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        forget(users[0])
        wait_for(lambda: len(receipts()) == 1, 60, "the first receipt", (writer,))
        waited = time.monotonic() - stopped
        os.kill(follower.proc.proc.pid, signal.SIGCONT)
        (first,) = receipts()
        # held back while the stopped follower could still be alive (replica_timeout_s = 6)
        assert waited >= 4.0, f"published {waited:.1f} s after the follower stopped"
        assert first.replicas == [writer.id]

        time.sleep(3.0)  # the follower's heartbeats resume
        forget(users[1])
        wait_for(lambda: len(receipts()) == 2, 60, "the second receipt", both)
        second = [r for r in receipts() if r.request_id != first.request_id][0]
        assert second.replicas == sorted([a.id, b.id])
        (end,) = asyncio.run(end_offsets(settings, ["imcorrect-log"])).values()
        wait_for(lambda: caught_up(settings, follower, end), 60, "follower applied", both)
        assert a.proc.stop() == 0 and b.proc.stop() == 0
    finally:
        _resume_and_kill(both)
    for r in both:
        state = load_state(settings.state_dir, f"imcorrect-{r.id}")
        assert state.users.get(users[0]) is None and state.users.get(users[1]) is None


def _resume_and_kill(replicas) -> None:  # noqa: ANN001 - Replica objects
    """Clean-up after a test that SIGSTOPs replicas: none is left stopped or running."""
    for r in replicas:
        if r.proc is not None and r.proc.alive():
            os.kill(r.proc.proc.pid, signal.SIGCONT)
            r.proc.kill()


def _forget(settings, user: str) -> None:
    async def run() -> None:
        async with LetheProducer(settings) as p:
            await p.forget_user(user)

    asyncio.run(run())


def _receipts(settings) -> list[DeletionReceipt]:
    return [
        decode(DeletionReceipt, r.value)
        for r in asyncio.run(read_all(settings, "deletion-receipts"))
    ]


def test_two_processes_with_one_replica_id_are_both_waited_for_and_reported(settings, tmp_path):
    """A misconfiguration: two processes (own state folders) share ``replica_id`` "a". The
    writer must not take the other's heartbeats for its own: a receipt waits while the
    other is stopped, and the writer says the id is used twice."""
    asyncio.run(create_topics(settings))
    events = [to_event(r) for r in load("ml-100k").replay()][:3_000]
    users = sorted({e.user_id for e in events})
    first = Replica(settings, "a", tmp_path).start()
    elsewhere = settings.model_copy(update={"state_dir": tmp_path / "other-volume"})
    second = Replica(elsewhere, "a", tmp_path / "other-logs")
    (tmp_path / "other-logs").mkdir()
    second.start()
    both = (first, second)
    try:
        wait_for(lambda: first.is_writer() or second.is_writer(), 60, "a writer", both)
        writer, other = (first, second) if first.is_writer() else (second, first)
        publish_and_apply(settings, events, both)
        conflict = "two live IMCorrect processes use replica id 'a'"
        wait_for(lambda: conflict in writer.proc.log_path.read_text(), 30, "the report", both)
        time.sleep(6.5)  # the writer's first timeout: it has heard from everyone

        os.kill(other.proc.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        _forget(settings, users[0])
        wait_for(lambda: len(_receipts(settings)) == 1, 60, "the receipt", (writer,))
        waited = time.monotonic() - stopped
        os.kill(other.proc.proc.pid, signal.SIGCONT)
        # held back while the other process could still be alive (replica_timeout_s = 6)
        assert waited >= 4.0, f"published {waited:.1f} s after the other process stopped"
        assert writer.proc.stop() == 0 and other.proc.stop() == 0
    finally:
        _resume_and_kill(both)


def test_readers_reach_the_end_of_a_topic_written_in_transactions(settings):
    """Receipts from hot replicas are written in transactions: the topic then ends in a
    commit marker (no record carries its offset) and may hold aborted records. The runtime's
    reader (outbox resolution after a crash) and the SDK's reader stop at the end at once
    and return committed records only."""
    asyncio.run(create_topics(settings))
    topic = topic_name(settings, "deletion-receipts")
    producer = kafka.producer(settings, **{"transactional.id": f"t-{settings.topic_prefix}"})
    producer.init_transactions(30)
    for k in range(3):
        producer.begin_transaction()
        producer.produce(topic, value=f"committed-{k}".encode())
        producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.flush(10)
    producer.abort_transaction(30)
    start = time.monotonic()
    runtime_view = [m.value() for m in kafka.read_range(settings, topic, {}, timeout_s=20)]
    sdk_view = [r.value for r in asyncio.run(read_all(settings, "deletion-receipts"))]
    committed = [b"committed-0", b"committed-1", b"committed-2"]
    assert sorted(runtime_view) == sorted(sdk_view) == committed
    assert time.monotonic() - start < 8, "a reader waited for a record that never comes"


def test_replicas_that_answer_requests_share_them(settings, tmp_path):
    """With ``answer_requests``, replicas share ``rec-requests`` through one group: each
    request gets one answer, from whichever replica owns its partition."""
    asyncio.run(create_topics(settings))
    events = [to_event(r) for r in load("ml-100k").replay()][:5_000]
    users = sorted({e.user_id for e in events})
    a = Replica(settings, "a", tmp_path, answer=True).start()
    b = Replica(settings, "b", tmp_path, answer=True).start()
    both = (a, b)
    try:
        wait_for(lambda: a.is_writer() or b.is_writer(), 60, "a writer", both)
        publish_and_apply(settings, events, both)
        time.sleep(2.0)  # both members hold partitions of rec-requests

        async def ask() -> list[str]:
            async with LetheProducer(settings, for_requests=True) as p:
                sent = [(await p.request_recommendations(u, k=5)).request_id for u in users]
                await p.flush()
                return sent

        sent = asyncio.run(ask())
        deadline = time.monotonic() + 60
        while True:
            answers = [
                decode(Recommendation, r.value)
                for r in asyncio.run(read_all(settings, "recommendations"))
            ]
            if len(answers) >= len(sent) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert a.proc.stop() == 0 and b.proc.stop() == 0
    finally:
        for r in both:
            r.proc.kill()
    ids = [r.request_id for r in answers]
    assert sorted(ids) == sorted(sent), "every request answered exactly once"
    assert all(r.strategy == "personal" and len(r.items) == 5 for r in answers)


def test_a_replica_the_log_has_left_behind_stops_instead_of_skipping(settings, tmp_path):
    """A replica whose next change-log record retention has removed cannot become equal to
    the others from the log: it exits with code 4 and says why, applying nothing."""
    asyncio.run(create_topics(settings))
    topic = topic_name(settings, "imcorrect-log")
    producer = kafka.producer(settings)
    for _ in range(3):
        producer.produce(topic, value=b"a record retention will remove")
    producer.flush(10)
    admin = kafka.admin(settings)
    (future,) = admin.delete_records([kafka.TopicPartition(topic, 0, 2)]).values()
    future.result(10)
    late = Replica(settings, "late", tmp_path).settings
    proc = WorkerProcess(late, tmp_path / "late.log").start()
    assert proc.proc.wait(timeout=60) == 4, proc.log_tail()
    assert "the change log begins at offset 2" in proc.log_tail()
