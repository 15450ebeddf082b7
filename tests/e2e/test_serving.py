"""Events → trainer → ONNX → scorer → recommendations, with forgetting, on the real broker.

ML-100K is replayed into ``interactions`` while the IMCorrect worker, the trainer and the
scoring agent run as real subprocesses. The trainer must publish at least two SASRec
versions; a user and an item are then forgotten, which makes the trainer retrain and publish
again while 1,000 requests are being answered, so the requests straddle a model swap.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from models.datasets import load
from streams.client import LetheProducer, new_id, now_ms
from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, ModelUpdate, Recommendation, RecRequest, decode
from streams.procs import WorkerProcess, free_port, scrape
from streams.reader import read_all
from streams.replay import replay_dataset, to_event
from streams.runtime.admin import create_topics
from streams.sequence_store import predates

pytestmark = pytest.mark.kafka

N_REQUESTS = 1000
SWAPS = 'lethe_scorer_model_swaps_total{outcome="swapped"}'


@pytest.fixture
def serving_settings(kafka_bootstrap: str, tmp_path: Path) -> LetheSettings:
    return LetheSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path / "state",
        model_dir=tmp_path / "models",
        metrics_port=-1,
        imcorrect={"snapshot_interval_s": 1.0, "answer_requests": False},
        trainer={
            "model": {
                "llm": "tiny",
                "max_items": 1700,  # ML-100K has 1,682
                "hidden": 32,
                "pretrain_steps": 60,
                "steps_per_round": 4,
                "valid_users": 200,
            },
            "batch_events": 40_000,
            "batch_wait_s": 4.0,
            "retrain_rounds": 1,
            "regression_tolerance": 0.05,
            "threads": 1,
        },
        scorer={"max_batch": 32, "max_wait_ms": 2.0, "threads": 1},
    )


def wait_for(predicate, timeout_s: float, what: str, workers: list[WorkerProcess]):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in workers:
            if not w.alive():
                raise AssertionError(f"{w.kind} died:\n{w.log_tail()}")
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    tails = "\n\n".join(f"--- {w.kind}\n{w.log_tail(40)}" for w in workers)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def model_updates(settings: LetheSettings) -> list[ModelUpdate]:
    records = asyncio.run(read_all(settings, "model-updates"))
    return [decode(ModelUpdate, r.value) for r in records]


def receipts(settings: LetheSettings) -> list[DeletionReceipt]:
    return [
        decode(DeletionReceipt, r.value)
        for r in asyncio.run(read_all(settings, "deletion-receipts"))
    ]


async def send_across_swap(
    settings: LetheSettings,
    users: list[str],
    scorer_port: int,
    swaps_before: float,
    workers: list[WorkerProcess],
    timeout_s: float = 600,
) -> list[str]:
    """300 requests at 40/s, then 4/s until the scorer swaps models (keeping 300 back), then
    the rest at 40/s: requests before, during and after the swap."""
    ids: list[str] = []
    deadline = time.monotonic() + timeout_s
    async with LetheProducer(settings) as producer:

        async def one(user: str) -> None:
            request = RecRequest(request_id=new_id(), user_id=user, k=10, ts=now_ms())
            await producer.send("rec-requests", user, request)
            ids.append(request.request_id)

        queue = list(users)
        for user in queue[:300]:
            await one(user)
            await asyncio.sleep(1 / 40)
        queue = queue[300:]
        while scrape(scorer_port).get(SWAPS, 0) <= swaps_before:
            assert time.monotonic() < deadline, "the scorer never swapped to a retrained model"
            assert all(w.alive() for w in workers), "a worker died"
            if len(queue) > 300:
                await one(queue.pop(0))
            await asyncio.sleep(1 / 4)
        for user in queue:
            await one(user)
            await asyncio.sleep(1 / 40)
        await producer.flush()
    return ids


def test_trainer_and_scorer_serve_across_a_swap_and_forget(serving_settings, tmp_path):
    settings = serving_settings
    asyncio.run(create_topics(settings))
    scorer_port = free_port()
    trainer_port = free_port()
    workers = [
        WorkerProcess(settings, tmp_path / "imcorrect.log", "imcorrect"),
        WorkerProcess(
            settings, tmp_path / "trainer.log", "trainer", LETHE_METRICS_PORT=str(trainer_port)
        ),
        WorkerProcess(
            settings, tmp_path / "scorer.log", "scorer", LETHE_METRICS_PORT=str(scorer_port)
        ),
    ]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(timeout_s=120)
        sent = asyncio.run(replay_dataset(settings, "ml-100k", progress=False))
        assert sent == 100_000

        # the trainer publishes at least two versions from the replay
        updates = wait_for(
            lambda: (u := model_updates(settings)) and len(u) >= 2 and u,
            900,
            "two model versions",
            workers,
        )
        assert all(
            u.kind == "crm-onnx" and Path(u.path).name.startswith("sasrec-") for u in updates
        )
        assert len({u.version for u in updates}) >= 2
        published_before = {u.version for u in updates}

        # forget the most active user and the most popular item
        data = load("ml-100k").interactions
        user = str(data["user_id"].value_counts().index[0])
        item = str(data["item_id"].value_counts().index[0])

        async def forget():
            async with LetheProducer(settings) as producer:
                a = await producer.forget_user(user)
                b = await producer.forget_item(item)
                await producer.flush()
                return [a.request_id, b.request_id]

        swaps_before = scrape(scorer_port).get(SWAPS, 0)
        request_ids = asyncio.run(forget())
        wait_for(
            lambda: scrape(scorer_port).get("lethe_scorer_deletions_applied_total", 0) >= 2,
            120,
            "the scorer to apply both deletions",
            workers,
        )

        # 1,000 requests while the trainer retrains without the forgotten data: a first
        # wave on the old model, a trickle until the scorer swaps, the rest on the new one
        rng = np.random.default_rng(0)
        known = data["user_id"].astype(str).unique()
        users = [user] + [str(u) for u in rng.choice(known, N_REQUESTS - 2)] + ["never-seen-user"]
        ids = asyncio.run(send_across_swap(settings, users, scorer_port, swaps_before, workers))

        def answers():
            recs = [
                decode(Recommendation, r.value)
                for r in asyncio.run(read_all(settings, "recommendations"))
            ]
            mine = {r.request_id: r for r in recs if r.request_id in set(ids)}
            return mine if len(mine) == N_REQUESTS else None

        recs = wait_for(answers, 120, "1,000 recommendations", workers)
        seen = data.assign(u=data.user_id.astype(str), i=data.item_id.astype(str))
        seen = seen.groupby("u")["i"].apply(set).to_dict()
        versions = set()
        for rid, rec in recs.items():
            got = [i.item_id for i in rec.items]
            assert len(got) == 10, rec
            assert item not in got, f"forgotten item returned in {rid}"
            if rec.user_id != user:  # the forgotten user has no history any more
                assert not (set(got) & seen.get(rec.user_id, set())), f"seen item in {rid}"
            scores = [i.score for i in rec.items]
            assert scores == sorted(scores, reverse=True)
            versions.add(rec.model.crm)
        assert recs[ids[-1]].strategy == "popularity"
        assert len(versions - {None}) >= 2, f"no swap while answering: {versions}"

        # the trainer's receipts name a version trained without the data
        neural = wait_for(
            lambda: (
                (r := [x for x in receipts(settings) if x.status == "neural-retrained"])
                and len(r) >= 2
                and r
            ),
            600,
            "neural-retrained receipts",
            workers,
        )
        by_request = {r.request_id: r for r in neural}
        assert set(request_ids) <= set(by_request)
        imcorrect_applied = {r.request_id for r in receipts(settings) if r.status == "applied"}
        assert set(request_ids) <= imcorrect_applied
        version = by_request[request_ids[0]].versions["crm"]
        assert version not in published_before
        # the first wave came before the swap to the retrained model, the last after it (a
        # regular round may publish between the two versions seen and the forget: the
        # versions, not the ones seen, tell old from retrained)
        assert int(recs[ids[0]].model.crm) < int(version) <= int(recs[ids[-2]].model.crm)
        assert version in {u.version for u in model_updates(settings)}
        ckpt = settings.state_dir / "trainer" / "checkpoints" / f"ckpt-{int(version):06d}"
        meta = json.loads((ckpt / "meta.json").read_text())
        assert set(request_ids) <= set(meta["excludes_requests"])
        if meta["restored_from"] is not None:
            assert predates(meta["restored_trained_through"], meta["forgotten_data_from"])
        # no file of the trainer or the scorer still holds the user's sequence
        for state_file in (
            settings.state_dir / "trainer" / "state.json",
            settings.state_dir / "scorer" / "state.json",
        ):
            state = json.loads(state_file.read_bytes())
            assert user not in state["store"]["sequences"]
            assert all(item not in seq for seq in state["store"]["sequences"].values())
            assert user not in state.get("suppressed_users", {}), "ids on disk are hashed"
    finally:
        for w in workers:
            w.stop()


def test_a_standby_trainer_takes_over_and_versions_keep_rising(serving_settings, tmp_path):
    """Two trainers on one state folder: the second (``--standby``) waits on the folder's
    lock, so only one trains and exports; when the first is SIGKILLed after announcing, the
    standby continues from its newest checkpoint and announces newer versions only."""
    settings = serving_settings
    asyncio.run(create_topics(settings))
    events = [to_event(r) for r in load("ml-100k").replay()]
    log_path = tmp_path / "trainers.log"
    active = WorkerProcess(settings, log_path, "trainer").start()
    standby = WorkerProcess(settings.model_copy(update={"standby": True}), log_path, "trainer")

    def publish(part) -> None:
        async def send() -> None:
            async with LetheProducer(settings) as producer:
                await producer.interactions(part)

        asyncio.run(send())

    try:
        active.wait_ready(180)
        standby.start()
        wait_for(lambda: "standby: waiting" in log_path.read_text(), 60, "a waiting standby", [])
        publish(events[:50_000])
        before = wait_for(lambda: model_updates(settings), 300, "a first version", [active])
        active.kill()
        wait_for(lambda: "standby: took over" in log_path.read_text(), 60, "a takeover", [])
        publish(events[50_000:])  # the stream goes on
        first = {int(u.version) for u in before}

        def newer() -> set[int]:
            return {int(u.version) for u in model_updates(settings)} - first

        fresh = wait_for(newer, 300, "a version from the standby", [standby])
        assert standby.stop() == 0, standby.log_tail()
    finally:
        active.kill()
        standby.kill()
    # the standby never reuses a number the first trainer may have announced
    assert min(fresh) > max(first), (first, fresh)
    assert log_path.read_text().count("trainer worker ready") == 2
