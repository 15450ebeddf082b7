"""The IMCorrect service under the shared service contract, on the in-memory log."""

from __future__ import annotations

import random
from itertools import islice

import numpy as np
import pytest

from models.datasets import load
from streams.config import LetheSettings
from streams.contracts import DeletionRequest
from streams.replay import to_event
from streams.runtime.memory import MemoryLog, MemoryProducer
from streams.runtime.workers import imcorrect_runtime
from streams.state import SnapshotStore
from tests.unit.service_contract import ScriptedIO, ServiceContract, user_deletion

# distinctive user ids, so that a byte search of the state files means something
_EVENTS = [
    e.model_copy(update={"user_id": f"subject-{e.user_id}-x"})
    for e in map(to_event, islice(load("ml-100k").replay(), 1500))
]
_USERS = sorted({e.user_id for e in _EVENTS})
_FORGOTTEN = random.Random(5).sample(_USERS, 6)


class TestIMCorrectService(ServiceContract):
    overrides = {"imcorrect": {"snapshot_interval_s": 0.001, "batch_max_events": 400}}

    def make_runtime(self, settings, io):
        return imcorrect_runtime(settings, io)

    def stream(self):
        out, deleted = [], 0
        for k, event in enumerate(_EVENTS):
            out.append(event)
            if k % 250 == 249 and deleted < len(_FORGOTTEN):
                # only users already seen, so each receipt must say "applied"
                seen = {e.user_id for e in out if not isinstance(e, DeletionRequest)}
                for user in _FORGOTTEN[deleted : deleted + 2]:
                    if user in seen:
                        out.append(user_deletion(user, f"req-{len(out)}", event.ts + 1))
                deleted += 2
        return out

    def forgotten_ids(self):
        ids = {
            e.user_id
            for e in self.stream()
            if isinstance(e, DeletionRequest) and e.user_id is not None
        }
        assert ids, "the stream forgets no one"
        return sorted(ids)

    def holds_data_of(self, settings, user_id):
        state = SnapshotStore(settings.state_dir / "imcorrect").load()
        u = state.users.get(user_id)
        return u is not None and state.model.history_size(u) > 0

    def fingerprint(self, settings):
        state = SnapshotStore(settings.state_dir / "imcorrect").load()
        x = state.model.interactions.tocoo()
        pairs = sorted(
            (state.users.external(u), state.items.external(i))
            for u, i in zip(x.row.tolist(), x.col.tolist(), strict=True)
        )
        scores = state.model.score(np.arange(state.model.n_users), mask_seen=False)
        by_id = {
            (state.users.external(u), state.items.external(i)): round(float(scores[u, i]), 9)
            for u, i in zip(x.row.tolist(), x.col.tolist(), strict=True)
        }
        counters = {k: state.counters.get(k, 0) for k in ("events_accepted", "learned")}
        return pairs, by_id, counters, dict(state.offsets)


class _RefusingProducer(MemoryProducer):
    """Reports every dead letter undelivered (a broker that refuses them)."""

    def produce(self, topic: str, value=None, key=None, on_delivery=None) -> None:
        if topic.endswith("dead-letters") and on_delivery is not None:
            on_delivery("refused", None)
            return
        super().produce(topic, value, key, on_delivery)


class _RefusingIO(ScriptedIO):
    """Stops the runtime once it has nothing left to read (a test that cannot hang)."""

    def __init__(self, log: MemoryLog) -> None:
        super().__init__(log, crash_after=None, chunk=50)

    def producer(self) -> MemoryProducer:
        return _RefusingProducer(self.log)


def _memory_settings(tmp_path) -> LetheSettings:
    """A worker on the in-memory log that snapshots at every step."""
    return LetheSettings(
        topic_prefix="c.",
        state_dir=tmp_path / "state",
        model_dir=tmp_path / "models",
        metrics_port=-1,
        imcorrect={"snapshot_interval_s": 0.001},
    )


def test_a_snapshot_never_passes_a_dead_letter_that_did_not_get_out(tmp_path):
    settings = _memory_settings(tmp_path)
    log = MemoryLog()
    topic = f"{settings.topic_prefix}interactions"
    log.append(topic, _EVENTS[0].to_bytes(), _EVENTS[0].user_id.encode())
    log.append(topic, b"{not json", b"k")
    io = _RefusingIO(log)
    runtime = io.runtime = imcorrect_runtime(settings, io)
    with pytest.raises(RuntimeError, match="dead letter"):
        runtime.run()
    state = SnapshotStore(settings.state_dir / "imcorrect").load()
    assert state is None or sum(state.offsets.values()) < 2  # the bad record is read again


def _deletion_age() -> float:
    from streams import metrics as m

    return m.DELETION_PENDING_AGE.collect()[0].samples[0].value


def test_the_pending_deletion_age_counts_while_the_deletion_is_applied(tmp_path):
    # read at scrape time: a step that takes minutes (a retrain) must not hide it
    settings = _memory_settings(tmp_path)
    log = MemoryLog()
    events = _EVENTS[:50]
    user = events[0].user_id
    for e in events:
        log.append(f"{settings.topic_prefix}interactions", e.to_bytes(), e.user_id.encode())
    deletion = user_deletion(user, "r-age", events[-1].ts + 1)
    log.append(f"{settings.topic_prefix}deletions", deletion.to_bytes(), user.encode())
    io = ScriptedIO(log, crash_after=None, chunk=1000)
    runtime = io.runtime = imcorrect_runtime(settings, io)
    seen: list[float] = []
    build = runtime.make_service

    def recording(cfg):
        svc = build(cfg)
        apply = svc.apply

        def apply_and_look(inputs):
            if inputs.deletions:
                seen.append(_deletion_age())
            return apply(inputs)

        svc.apply = apply_and_look
        return svc

    runtime.make_service = recording
    runtime.run()
    assert seen and seen[0] > 3600  # its ts is from 1998: the age is years
    assert _deletion_age() == 0.0  # receipted
