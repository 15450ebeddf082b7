"""`lethe forget` and `lethe recommend` against a running worker (and without one)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from streams.client import LetheProducer
from streams.contracts import DeletionReceipt, InteractionEvent, decode
from streams.procs import WorkerProcess
from streams.reader import read_all
from streams.runtime.admin import create_topics
from tests.integration.worker_harness import wait_caught_up

pytestmark = pytest.mark.kafka


def _lethe(settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "LETHE_TOPIC_PREFIX": settings.topic_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_recommend_times_out_cleanly_without_a_worker(settings):
    asyncio.run(create_topics(settings))
    done = _lethe(settings, "recommend", "--user", "nobody", "--timeout", "2")
    assert done.returncode == 3 and "no reply within 2.0 s" in done.stderr
    waited = _lethe(settings, "forget", "--user", "nobody", "--wait", "--timeout", "2")
    assert waited.returncode == 3 and "no receipt for deletion request" in waited.stderr


def test_recommend_and_forget_through_the_cli(settings, tmp_path):
    asyncio.run(create_topics(settings))
    events = [
        InteractionEvent(
            event_id=f"e{k}",
            user_id=f"u{k % 7}",
            item_id=f"i{(k * 3) % 53}",
            ts=1_700_000_000_000 + k,
        )
        for k in range(200)
    ]

    async def publish():
        async with LetheProducer(settings) as p:
            await p.interactions(events)

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        asyncio.run(publish())
        wait_caught_up(settings, worker, n_receipts=0)
        reply = _lethe(settings, "recommend", "--user", "u1", "-k", "3", "--timeout", "30")
        assert reply.returncode == 0, reply.stderr
        rec = json.loads(reply.stdout)
        assert rec["user_id"] == "u1" and rec["strategy"] == "personal"
        seen = {e.item_id for e in events if e.user_id == "u1"}
        assert rec["items"] and not {i["item_id"] for i in rec["items"]} & seen

        forgot = _lethe(settings, "forget", "--user", "u1")
        assert forgot.returncode == 0, forgot.stderr
        request_id = json.loads(forgot.stdout)["request_id"]
        wait_caught_up(settings, worker, n_receipts=1)
        receipts = [
            decode(DeletionReceipt, r.value)
            for r in asyncio.run(read_all(settings, "deletion-receipts"))
        ]
        assert [(r.request_id, r.status) for r in receipts] == [(request_id, "applied")]
        after = json.loads(_lethe(settings, "recommend", "--user", "u1", "--timeout", "30").stdout)
        assert after["strategy"] == "popularity"
        bad = _lethe(settings, "forget", "--interaction", "i1")
        assert bad.returncode == 2 and "--interaction needs --user" in bad.stderr

        # the receipt straight from `forget`, then the proof from the files on disk
        path = tmp_path / "receipt.json"
        waited = _lethe(settings, "forget", "--user", "u2", "--receipt-out", str(path))
        assert waited.returncode == 0, waited.stderr
        receipt = DeletionReceipt.model_validate_json(path.read_text())
        assert receipt.status == "applied" and receipt.scope == "user"
        assert json.loads(waited.stdout)["request_id"] == receipt.request_id
        assert "u2" not in path.read_text()  # a keyed hash names the subject
        state = str(settings.state_dir)
        proof = _lethe(settings, "verify-erasure", str(path), "--state-dir", state)
        assert proof.returncode == 0, proof.stdout + proof.stderr
        assert "PASS" in proof.stdout
    finally:
        worker.stop()
