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


def test_a_lost_broker_loses_nothing_and_stops_no_worker(cluster, tmp_path):
    settings = LetheSettings(
        bootstrap_servers=cluster.bootstrap,
        topic_prefix=f"k{uuid.uuid4().hex[:8]}.",
        state_dir=tmp_path / "state",
        metrics_port=-1,
        imcorrect={"snapshot_interval_s": 1.0},
    )
    asyncio.run(create_topics(settings))
    events = [to_event(r) for r in load("ml-100k").replay()][:20_000]
    users = sorted({e.user_id for e in events[:5000]})
    forgotten = random.Random(3).sample(users, 30)
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

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        sender = threading.Thread(target=publish)
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
    assert all(r.status == "applied" for r in receipts)
    keys = keyring_for(settings, create=False)
    for receipt in receipts:
        verdict = verify_erasure(settings.state_dir, receipt, keys)
        assert verdict.passed, verdict.render()
    gone = set(forgotten)
    # a forgotten user's later events carry an older ts than the deletion: dropped
    retained = [(e.user_id, e.item_id) for e in events if e.user_id not in gone]
    assert_equals_batch_fit(state, retained, settings.imcorrect.l2)
