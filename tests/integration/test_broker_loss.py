"""A three-broker cluster: a broker is SIGKILLed while events and deletions flow, then
restarted; nothing is lost, nothing applied twice, the worker never exits."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from models.datasets import load
from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, DeletionRequest, decode
from streams.erasure import verify_erasure
from streams.kafka_config import librdkafka_config
from streams.keys import keyring_for
from streams.localkafka import kafka_cluster
from streams.reader import end_offsets
from streams.replay import to_event
from streams.runtime.admin import create_topics
from streams.topics import topic_name
from tests.integration.replica_harness import Replica, caught_up, wait_for
from tests.integration.worker_harness import (
    WorkerProcess,
    assert_equals_batch_fit,
    load_state,
    read_all,
    wait_caught_up,
)

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def cluster():
    if "KAFKA_BOOTSTRAP" in __import__("os").environ:
        print("\n[lethe tests] broker-loss test starts its own 3-broker cluster beside it")
    with kafka_cluster(3) as running:
        yield running


def test_topics_are_replicated_three_times_with_two_in_sync(cluster, tmp_path):
    settings = LetheSettings(
        bootstrap_servers=cluster.bootstrap,
        topic_prefix=f"r{uuid.uuid4().hex[:8]}.",
        state_dir=tmp_path,
    )
    asyncio.run(create_topics(settings))
    admin = AdminClient(librdkafka_config(settings))
    topic = topic_name(settings, "interactions")
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    assert {len(p.replicas) for p in meta.partitions.values()} == {3}
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["min.insync.replicas"].value == "2"


def _cluster_settings(cluster, tmp_path) -> LetheSettings:
    return LetheSettings(
        bootstrap_servers=cluster.bootstrap,
        topic_prefix=f"k{uuid.uuid4().hex[:8]}.",
        state_dir=tmp_path / "state",
        metrics_port=-1,
        imcorrect={"snapshot_interval_s": 1.0},
    )


def _stream(settings: LetheSettings, events: list, forgotten: list[str]):
    """A thread that sends ``events`` over ~2 s with 10 deletions after each of the first
    three 2,000-event blocks; the list it returns collects delivery failures."""
    producer = Producer(
        {
            **librdkafka_config(settings),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    failures: list[str] = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failures.append(str(err))

    def publish() -> None:
        interactions = topic_name(settings, "interactions")
        deletions = topic_name(settings, "deletions")
        for k, e in enumerate(events):
            producer.produce(interactions, e.to_bytes(), e.user_id.encode(), on_delivery=delivered)
            if k % 2000 == 1999 and k // 2000 < 3:
                # a deletion follows the events *published* (acknowledged) before it: wait for
                # the acks, which a lost broker's partitions give only after their leaders move
                assert producer.flush(120) == 0
                for user in forgotten[(k // 2000) * 10 : (k // 2000) * 10 + 10]:
                    request = DeletionRequest(
                        request_id=f"r-{user}-{k}",
                        scope="user",
                        user_id=user,
                        reason="privacy",
                        ts=int(time.time() * 1000),
                    )
                    producer.produce(
                        deletions, request.to_bytes(), user.encode(), on_delivery=delivered
                    )
            if k % 500 == 0:
                producer.poll(0)
                time.sleep(0.05)  # a stream over ~2 s, not one burst
        assert producer.flush(120) == 0

    return threading.Thread(target=publish), failures


def _subjects_with_earlier_events(events: list, forgotten: list[str]) -> dict[str, int]:
    """Forgotten users with an event published before their deletion, and the index of the
    event their deletion follows (as :func:`_stream` sends them)."""
    out = {}
    for block in range(3):
        k = 2000 * block + 1999
        seen = {e.user_id for e in events[: k + 1]}
        out.update({u: k for u in forgotten[block * 10 : block * 10 + 10] if u in seen})
    return out


def _events_and_forgotten() -> tuple[list, list[str]]:
    events = [to_event(r) for r in load("ml-100k").replay()][:20_000]
    users = sorted({e.user_id for e in events[:5000]})
    return events, random.Random(3).sample(users, 30)


def test_a_lost_broker_loses_nothing_and_stops_no_worker(cluster, tmp_path):
    settings = _cluster_settings(cluster, tmp_path)
    asyncio.run(create_topics(settings))
    events, forgotten = _events_and_forgotten()
    sender, failures = _stream(settings, events, forgotten)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        sender.start()
        time.sleep(0.8)
        cluster.kill(2)  # mid-stream
        time.sleep(3.0)
        assert worker.alive(), worker.log_tail()
        cluster.restart(2)
        sender.join()
        assert not failures, failures[:3]
        wait_caught_up(settings, worker, n_receipts=30, timeout_s=240)
        assert worker.alive()
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.kill()
    state = load_state(settings.state_dir)
    assert state.counters["events_accepted"] == len(events), "an event was lost or doubled"
    assert state.counters.get("duplicates", 0) == 0
    receipts = [
        decode(DeletionReceipt, r.value)
        for r in asyncio.run(read_all(settings, "deletion-receipts"))
    ]
    assert len(receipts) == 30 and len({r.request_id for r in receipts}) == 30
    # 8 of the 30 subjects have no event published before their deletion (they first appear
    # in a later block): "unknown user" is then the right answer, unless the worker happened
    # to read their later events before it released the deletion. Such later events carry
    # an older ts than the deletion and are dropped either way. Open question
    # (docs/scale-out.md): whether a subject *with* earlier events was ever answered so
    # during a leader change; the test reports it, and the state is exact (checked below).
    unknown = [r for r in receipts if r.status != "applied"]
    assert all(r.status == "rejected" and r.detail.startswith("unknown user") for r in unknown)
    earlier = _subjects_with_earlier_events(events, forgotten)
    ids = {f"r-{user}-{k}": user for user, k in earlier.items()}
    early = [r for r in unknown if r.request_id in ids]
    print(
        f"\n[lethe tests] 'unknown user' receipts: {len(unknown)}, of which for a subject "
        f"with events published before its deletion: {len(early)}"
    )
    keys = keyring_for(settings, create=False)
    for receipt in receipts:
        if receipt.status == "applied":
            verdict = verify_erasure(settings.state_dir, receipt, keys)
            assert verdict.passed, verdict.render()
    gone = set(forgotten)
    assert not gone & {u for u in state.users.by_index if u is not None}
    # a forgotten user's later events carry an older ts than the deletion: dropped
    retained = [(e.user_id, e.item_id) for e in events if e.user_id not in gone]
    assert_equals_batch_fit(state, retained, settings.imcorrect.ease.l2)


def test_hot_replicas_lose_nothing_when_the_change_logs_leader_broker_dies(cluster, tmp_path):
    """Two hot IMCorrect replicas; the broker leading ``imcorrect-log`` is SIGKILLed while
    events and deletions flow (the writer's transactions move to a new leader), then
    restarted: neither replica exits, both end identical and exact, one receipt each."""
    settings = _cluster_settings(cluster, tmp_path)
    asyncio.run(create_topics(settings))
    events, forgotten = _events_and_forgotten()
    sender, failures = _stream(settings, events, forgotten)
    log_topic = topic_name(settings, "imcorrect-log")
    admin = AdminClient(librdkafka_config(settings))
    leader = admin.list_topics(log_topic, timeout=10).topics[log_topic].partitions[0].leader
    replicas = (Replica(settings, "a", tmp_path).start(), Replica(settings, "b", tmp_path).start())
    try:
        wait_for(lambda: any(r.is_writer() for r in replicas), 60, "a writer", replicas)
        sender.start()
        time.sleep(0.8)
        cluster.kill(leader)  # mid-stream, under the writer's transactions
        time.sleep(3.0)
        assert all(r.proc.alive() for r in replicas)
        cluster.restart(leader)
        sender.join()
        assert not failures, failures[:3]
        wait_for(
            lambda: len(asyncio.run(read_all(settings, "deletion-receipts"))) >= 30,
            240,
            "every receipt",
            replicas,
        )
        (end,) = asyncio.run(end_offsets(settings, ["imcorrect-log"])).values()
        wait_for(lambda: all(caught_up(settings, r, end) for r in replicas), 120, "caught up")
        assert all(r.proc.stop() == 0 for r in replicas)
    finally:
        for r in replicas:
            r.proc.kill()
    receipts = [
        decode(DeletionReceipt, r.value)
        for r in asyncio.run(read_all(settings, "deletion-receipts"))
    ]
    assert len(receipts) == 30 and len({r.request_id for r in receipts}) == 30
    gone = set(forgotten)
    retained = [(e.user_id, e.item_id) for e in events if e.user_id not in gone]
    states = [load_state(settings.state_dir, f"imcorrect-{r.id}") for r in replicas]
    for state in states:
        assert state.counters["events_accepted"] == len(events), "an event was lost or doubled"
        assert_equals_batch_fit(state, retained, settings.imcorrect.ease.l2)
    assert states[0].items.by_index == states[1].items.by_index
