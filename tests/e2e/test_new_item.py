"""A new item announced on ``items`` is rankable, by what it is, after the next export.

The trainer runs as a real worker on the real broker. Forty-eight items of six "genres" are
described on ``items`` and watched (each user within one genre) until the trainer exports a
first SASRec, which cannot know the new item. A Horror/Thriller film is then announced and
taken by three Horror users (each user's newest event, so no round trains on it: its
training count is 0). The next exported ONNX model must hold it in its catalogue and rank it
with its genre: among the top 3 unseen items of a Horror user's history (whose two unseen
Horror siblings are the only items that should come first), and not for everyone: far down
for users of some genres its text does not name (the tiny LM's text tells only some genres
apart; tests/unit/test_trainer_items.py has the seeds). A malformed metadata record is
dead-lettered by the trainer on the way.

The first round closes on the count at the last warm event and the second on the wait
after the new item's events, so both rounds hold the same events in every run, and a round
trains the same way whichever partition the trainer reads first (docs/distillation.md,
"Order"): the ranks below are the same in every run.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from export.session import open_session
from streams.client import LetheProducer
from streams.config import LetheSettings
from streams.contracts import DeadLetter, InteractionEvent, ItemMetadata, decode
from streams.procs import WorkerProcess
from streams.reader import read_all
from streams.runtime.admin import create_topics
from tests.e2e.test_serving import model_updates, wait_for
from tests.unit.test_trainer_items import (
    NEW,
    NEW_META,
    TEXT_MODEL,
    genre_stream,
    new_item_events,
    rank_among_unseen,
    warm_items,
)

pytestmark = pytest.mark.kafka


def _events(pairs: list[tuple[str, str]], start_ms: int) -> list[InteractionEvent]:
    return [
        InteractionEvent(event_id=uuid.uuid4().hex, user_id=u, item_id=i, ts=start_ms + k)
        for k, (u, i) in enumerate(pairs)
    ]


def test_a_new_item_announced_on_the_stream_is_ranked_after_the_next_export(
    kafka_bootstrap: str, tmp_path: Path
):
    warm = genre_stream()
    settings = LetheSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path / "state",
        model_dir=tmp_path / "models",
        metrics_port=-1,
        trainer={
            "model": TEXT_MODEL,
            "batch_events": len(warm),  # the first round closes at the last warm event
            # the next one five seconds after the new item's events (the first closes on
            # the count as long as the warm events take under five seconds to read)
            "batch_wait_s": 5.0,
            "min_users": 5,
            "regression_tolerance": 1.0,  # every round is exported
            "threads": 1,
        },
    )
    asyncio.run(create_topics(settings))
    trainer = WorkerProcess(settings, tmp_path / "trainer.log", "trainer")

    async def publish(items, pairs, bad: bytes | None = None) -> None:
        async with LetheProducer(settings) as producer:
            if items:
                await producer.items(items)
            if bad is not None:
                await producer._producer.send(f"{settings.topic_prefix}items", bad, key=b"bad")
                # a valid record under another item's key (compaction would let it replace
                # that item's record): a dead letter too
                misfiled = ItemMetadata(item_id="misfiled", title="Misfiled", ts=1).to_bytes()
                topic = f"{settings.topic_prefix}items"
                await producer._producer.send(topic, misfiled, key=b"another-item")
            await producer.interactions(_events(pairs, 1_700_000_000_000 + len(warm)))

    try:
        trainer.start().wait_ready(timeout_s=120)
        asyncio.run(publish(warm_items(), warm, bad=b'{"item_id": "bad", "ts": 1}'))
        first = wait_for(lambda: model_updates(settings), 300, "a first version", [trainer])
        (before,) = first
        session = open_session(Path(before.path), prefer_gpu=False, threads=1)
        assert NEW not in json.loads(session.metadata["lethe.items"])  # not rankable yet

        asyncio.run(publish([NEW_META], new_item_events()))
        updates = wait_for(
            lambda: (u := model_updates(settings)) and len(u) >= 2 and u,
            300,
            "the next version",
            [trainer],
        )
        after = max(updates, key=lambda u: int(u.version))
        assert int(after.version) > int(before.version)
        session = open_session(Path(after.path), prefer_gpu=False, threads=1)
        catalogue = json.loads(session.metadata["lethe.items"])
        assert NEW in catalogue
        ranks = [rank_among_unseen(session, catalogue, NEW, g) for g in range(6)]
        assert ranks[0] <= 2, ranks  # with its genre: only its two unseen siblings may lead
        # by what it is, not for everyone: at least two other genres' users rank it far down
        assert sorted(ranks[1:])[-2] > 10, ranks

        letters = [
            decode(DeadLetter, r.value) for r in asyncio.run(read_all(settings, "dead-letters"))
        ]
        assert [d.source_topic for d in letters] == [f"{settings.topic_prefix}items"] * 2
        assert sorted(d.error.split(":")[0] for d in letters) == ["key", "title"]
    finally:
        trainer.stop()
    assert "Traceback" not in (tmp_path / "trainer.log").read_text()
