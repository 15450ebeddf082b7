"""The trainer service: the shared service contract on the in-memory log, and its own rules
(validation gate, forgetting from the right checkpoint, crash recovery) without a broker."""

from __future__ import annotations

import json
import random
import time
import zlib
from itertools import islice, zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.onnx_export import export_sasrec
from models.datasets import load
from models.sasrec import SASRec, SASRecConfig
from streams.config import LetheSettings
from streams.contracts import DeletionRequest, InteractionEvent, ItemMetadata
from streams.replay import to_event
from streams.runtime.loop import Runtime
from streams.runtime.memory import MemoryLog
from streams.services.base import Effects, Inputs, Outbox
from streams.services.batch import InteractionColumns
from streams.services.trainer import TrainerService
from streams.services.trainer_export import EXPORTED_BY, export_version, exported_models
from streams.services.trainer_state import CheckpointRecord, TrainerFiles
from tests.unit.service_contract import ScriptedIO, ServiceContract, user_deletion

#: a model small enough that a round, a checkpoint and an export take well under a second
TINY = {
    "model": {
        "llm": "tiny",
        "max_items": 48,
        "max_len": 8,
        "hidden": 8,
        "replay_users": 16,
        "steps_per_round": 1,
        "pretrain_steps": 2,
        "valid_users": 20,
    },
    "batch_wait_s": 3600.0,  # rounds close by count only: where they fall is in the log
    "min_users": 5,
    "retrain_rounds": 1,
    "regression_tolerance": 1.0,  # NDCG ≤ 1: every round is exported
    "threads": 1,
    "batch_max_wait_ms": 0.0,
    "snapshot_interval_s": 0.001,
}

# distinctive ids, so that a byte search of the state files means something; every 40th
# event, so that there are a few hundred users
_EVENTS = [
    e.model_copy(update={"user_id": f"subject-{e.user_id}-x", "item_id": f"item-{e.item_id}-y"})
    for e in map(to_event, islice(load("ml-100k").replay(), 0, 24_000, 40))
]


def _read_last(event: InteractionEvent) -> bool:
    """In the partition the in-memory consumer reads last (MemoryLog's partitioner)."""
    partitions = MemoryLog().partitions
    return zlib.crc32(event.user_id.encode()) % partitions == partitions - 1


# what is forgotten first appears late in the order the log is read, so the first rounds
# predate it and a forget restores a checkpoint instead of starting over
_LATE = [e for e in _EVENTS if _read_last(e)]
_EARLY = {e.user_id for e in _LATE[:100]} | {e.item_id for e in _LATE[:100]}
_FORGOTTEN_USERS = [u for u in dict.fromkeys(e.user_id for e in _LATE[100:]) if u not in _EARLY][:4]
_FORGOTTEN_ITEM = next(
    e.item_id
    for e in _LATE[100:]
    if e.item_id not in _EARLY and all(_read_last(o) for o in _EVENTS if o.item_id == e.item_id)
)


class KilledAnywhere(TrainerService):
    """The trainer with two more places a kill can hit: right after a checkpoint is written
    (an orphan), and after a step changed files but before the snapshot that records it."""

    def __init__(self, settings: LetheSettings, io: ScriptedIO) -> None:
        super().__init__(settings)
        self.io = io

    def checkpoint(self, *args: Any, **kwargs: Any) -> CheckpointRecord:
        record = super().checkpoint(*args, **kwargs)
        self.io.tick()
        return record

    def save(self, *, for_receipt: bool = False) -> None:
        self.io.tick()
        super().save(for_receipt=for_receipt)


def lineage(settings: LetheSettings) -> dict:
    """The state and the checkpoints' lineage as read from disk, by offsets, not names
    (version numbers may differ after a crash: a crashed step's are never given again)."""
    files = TrainerFiles(settings.state_dir)
    state = files.load()
    metas = {c.name: files.checkpoint_meta(c.name) for c in state.checkpoints}

    def through(name: str | None) -> dict | None:
        return metas[name]["trained_through"] if name in metas else None

    chain = [
        {
            "trained_through": meta["trained_through"],
            "excludes": sorted(meta["excludes_requests"]),
            "parent": through(meta["parent"]),
            "restored": meta.get("restored_trained_through"),
            "forgotten_from": meta.get("forgotten_data_from"),
            "retrained_for": sorted(meta.get("retrained_for", [])),
            "kind": "round" if "round" in meta else "retrain",
            "exported": c.onnx_path is not None and Path(c.onnx_path).exists(),
        }
        for c, meta in ((c, metas[c.name]) for c in state.checkpoints)
    ]
    published = state.published
    return {
        "store": state.store.to_dict(),
        "items": state.items.by_index,
        "offsets": state.offsets,
        "dedup": len(state.dedup),  # the hashes are keyed: each state folder has its key
        "pending": (state.new_events, sorted(state.fresh_users)),
        "chain": chain,
        "current": through(state.current),
        "published": published and (through(published["checkpoint"]), Path(published["path"])),
        # no folder but the checkpoints' (names differ after a crash: compared by count)
        "folders": sorted(p.name for p in files.checkpoints.iterdir())
        == sorted(c.name for c in state.checkpoints),
        "models": len(exported_models(settings.model_dir)),
        "outbox": bool(state.outbox),
        "item_texts": state.item_texts,
    }


class TestTrainerService(ServiceContract):
    overrides = {
        "trainer": {**TINY, "batch_events": 150, "keep_checkpoints": 3, "batch_max_events": 50}
    }
    receipt_status = "neural-retrained"

    def make_runtime(self, settings, io):
        return Runtime(settings, lambda s: KilledAnywhere(s, io), io, name="trainer")

    def stream(self):
        out, pending = [], list(_FORGOTTEN_USERS)
        # item metadata: the forgotten item's before its deletion, others before or after
        # their first interaction (and one bad record, which the trainer dead-letters)
        described = list(dict.fromkeys([_FORGOTTEN_ITEM, *(e.item_id for e in _EVENTS[::37])]))
        announce = {25 * n: item for n, item in enumerate(described)}
        for k, event in enumerate(_EVENTS):
            out.append(event)
            if k in announce:
                item = announce[k]
                out.append(ItemMetadata(item_id=item, title=f"Title {item}", ts=event.ts))
            if k == 420:
                out.append(
                    DeletionRequest(
                        request_id="req-item",
                        scope="item",
                        item_id=_FORGOTTEN_ITEM,
                        reason="privacy",
                        ts=event.ts + 1,
                    )
                )
            if k % 150 == 149:  # users already seen, two at a time
                seen = {e.user_id for e in out if isinstance(e, InteractionEvent)}
                for user in [u for u in pending if u in seen][:2]:
                    pending.remove(user)
                    out.append(user_deletion(user, f"req-{len(out)}", event.ts + 1))
        return out

    def publish(self, log, settings, events):
        super().publish(log, settings, events)
        log.append(f"{settings.topic_prefix}items", b'{"item_id": "x", "ts": 1}', b"x")

    def forgotten_ids(self):
        ids = {e.user_id for e in self.stream() if isinstance(e, DeletionRequest) and e.user_id}
        assert len(ids) >= 2, "the stream forgets too few"
        return sorted(ids) + [_FORGOTTEN_ITEM]

    def holds_data_of(self, settings, user_id):
        return bool(TrainerFiles(settings.state_dir).load().store.get(user_id))

    def fingerprint(self, settings):
        out = lineage(settings)
        # the published model's path is a content hash: the weights after a restart differ
        # (the replay sample restarts from the seed), so only its presence is compared
        published = out["published"]
        out["published"] = published and (published[0], published[1].exists())
        return out

    def test_the_forgotten_item_leaves_the_exported_models_too(self, tmp_path):
        settings = self.settings(tmp_path)
        log = MemoryLog()
        self.publish(log, settings, self.stream())
        self.run_with_crashes(settings, log, random.Random(11))
        models = list(Path(settings.model_dir).glob("*.onnx"))
        assert models
        for path in models:
            assert _FORGOTTEN_ITEM.encode() not in path.read_bytes(), path.name
        state = lineage(settings)
        described = {e.item_id for e in self.stream() if isinstance(e, ItemMetadata)}
        assert set(state["item_texts"]) == described - {_FORGOTTEN_ITEM}
        letters = log.records(f"{settings.topic_prefix}dead-letters")
        assert letters and all(b'"source_topic":"c.items"' in r.value() for r in letters)
        assert state["chain"][-1]["kind"] == "retrain" and not state["outbox"]
        assert state["folders"], "a folder that is no checkpoint's"
        assert state["models"] == sum(c["exported"] for c in state["chain"])


# -- the trainer's own rules, on the service directly --------------------------------------
TOPIC = "u.interactions"


def settings_for(tmp: Path, **trainer) -> LetheSettings:
    return LetheSettings(
        topic_prefix="u.",
        state_dir=tmp / "state",
        model_dir=tmp / "models",
        metrics_port=-1,
        trainer={**TINY, "batch_events": 60, "keep_checkpoints": 10, **trainer},
    )


class Feed:
    """Interactions with log positions (partition 0), as the runtime hands them in."""

    def __init__(self) -> None:
        self.offset = 0

    def inputs(self, pairs: list[tuple[str, str]]) -> Inputs:
        cols = InteractionColumns()
        for k, (user, item) in enumerate(pairs):
            cols.positions.append(k)
            cols.event_ids.append(f"e{self.offset}")
            cols.user_ids.append(user)
            cols.item_ids.append(item)
            cols.ts.append(1_700_000_000_000 + self.offset)
            cols.sources.append((f"{TOPIC}:0", self.offset))
            self.offset += 1
        return Inputs(interactions=cols, offsets={f"{TOPIC}:0": self.offset})


def batch(users: range, rng: np.random.Generator, n: int = 60) -> list[tuple[str, str]]:
    return [(f"user{rng.choice(users)}", f"i{rng.integers(0, 30)}") for _ in range(n)]


def forget_user(user: str, request_id: str) -> Inputs:
    request = user_deletion(user, request_id, 1_700_000_000_000)
    return Inputs(deletions=[request], offsets={"u.deletions:0": 1})


def on_disk(svc: TrainerService) -> tuple[set[str], set[str]]:
    """Checkpoint folders and trainer model files (names) on disk."""
    folders = {p.name for p in svc.files.checkpoints.iterdir()}
    return folders, {Path(p).name for p in exported_models(svc.model_dir)}


def model_of(svc: TrainerService, name: str) -> str:
    return Path(svc.state.checkpoint(name).onnx_path).name


def test_a_full_batch_closes_a_round_at_the_event_that_completes_it(tmp_path):
    svc = TrainerService(settings_for(tmp_path, batch_events=50))
    rng = np.random.default_rng(0)
    effects = svc.apply(Feed().inputs(batch(range(10), rng, 120)))
    # two rounds (at events 50 and 100), one announcement: the newest version
    assert [c.trained_through for c in svc.state.checkpoints] == [
        {f"{TOPIC}:0": 50},
        {f"{TOPIC}:0": 100},
    ]
    assert [u.version for u in effects.announcements] == ["2"]
    assert svc.state.new_events == 20 and svc.state.offsets == {f"{TOPIC}:0": 120}
    assert not svc.tick().announcements  # the rest waits for batch_wait_s


def _arrived(events: list[tuple[str, str, int, int]]) -> Inputs:
    """(user, item, partition, offset) in the order the runtime read them."""
    cols = InteractionColumns()
    for k, (user, item, partition, offset) in enumerate(events):
        cols.positions.append(k)
        cols.event_ids.append(f"e{partition}-{offset}")
        cols.user_ids.append(user)
        cols.item_ids.append(item)
        cols.ts.append(1_700_000_000_000 + k)
        cols.sources.append((f"{TOPIC}:{partition}", offset))
    ends = {f"{TOPIC}:{p}": o + 1 for _, _, p, o in events}
    return Inputs(interactions=cols, offsets=ends)


def test_rounds_are_the_same_whatever_order_the_partitions_arrived_in(tmp_path):
    """Three partitions read one after the other, or interleaved event by event: the same
    events give the same vocabulary and the same weights, through a warm-up round and a
    distillation round (item rows and training order do not follow the fetch order)."""
    rng = np.random.default_rng(3)
    logs: dict[int, list] = {0: [], 1: [], 2: []}
    for user, item in batch(range(15), rng, 180):  # keyed by user, as producers do
        part = logs[int(user.removeprefix("user")) % 3]
        part.append((user, item, int(user.removeprefix("user")) % 3, len(part)))
    # both orders read the first two thirds of every partition before the rest, so the
    # first round (closed by count) holds the same events in both
    early = {p: log[: 2 * len(log) // 3] for p, log in logs.items()}
    late = {p: log[2 * len(log) // 3 :] for p, log in logs.items()}

    def one_by_one(parts: dict) -> list:
        return [e for p in (2, 0, 1) for e in parts[p]]

    def interleaved(parts: dict) -> list:
        return [e for row in zip_longest(*parts.values()) for e in row if e is not None]

    first = sum(map(len, early.values()))
    assert first > sum(map(len, late.values()))  # the rest closes no round by count
    runs = []
    for name, arrange in (("one", one_by_one), ("interleaved", interleaved)):
        svc = TrainerService(settings_for(tmp_path / name, batch_events=first, batch_wait_s=1e-3))
        assert len(svc.apply(_arrived(arrange(early))).announcements) == 1
        svc.apply(_arrived(arrange(late)))
        time.sleep(0.01)  # batch_wait_s after the first late event
        assert len(svc.tick().announcements) == 1
        assert [c.trained_through for c in svc.state.checkpoints][-1] == {
            f"{TOPIC}:{p}": len(log) for p, log in logs.items()
        }
        weights = {**svc.model.crm.state_dict(), **svc.model.llm.state_dict()}
        runs.append((svc.state.items.by_index, weights))
    assert one_by_one(early) != interleaved(early)
    (items_a, weights_a), (items_b, weights_b) = runs
    assert items_a == items_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_full_vocabulary_leaves_out_the_rarest_new_items(tmp_path):
    model = {**TINY["model"], "max_items": 10}
    svc = TrainerService(settings_for(tmp_path, model=model, batch_events=200))
    pairs = batch(range(15), np.random.default_rng(4), 200)
    svc.apply(Feed().inputs(pairs))
    counts = svc.state.store.item_counts  # of the events each user's window keeps
    assert len(counts) > 10
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    assert svc.state.items.by_index == ranked[:10]


def test_the_validation_gate_skips_a_regressed_model(tmp_path, monkeypatch):
    svc = TrainerService(settings_for(tmp_path, regression_tolerance=0.05))
    feed, rng = Feed(), np.random.default_rng(1)
    first = svc.apply(feed.inputs(batch(range(10), rng)))
    assert [u.version for u in first.announcements] == ["1"]

    def validate(sequences: dict, crm_state: dict | None = None) -> dict:
        # the published model (weights given) scores 0.5, the new one `live`
        return {"ndcg@10": 0.5 if crm_state is not None else live}

    monkeypatch.setattr(svc.model, "validate", validate)
    live = 0.44  # worse by more than the tolerance
    skipped = svc.apply(feed.inputs(batch(range(10), rng)))
    assert skipped.announcements == [] and svc.state.published["version"] == 1
    assert svc.state.current == "ckpt-000002"  # trained on, kept in the lineage
    assert svc.state.checkpoint("ckpt-000002").onnx_path is None
    live = 0.46  # worse, within the tolerance
    kept = svc.apply(feed.inputs(batch(range(10), rng)))
    assert [u.version for u in kept.announcements] == ["3"]
    assert svc.state.published["version"] == 3


def test_the_gate_does_not_step_down_one_tolerance_per_round(tmp_path, monkeypatch):
    svc = TrainerService(settings_for(tmp_path, regression_tolerance=0.05, keep_checkpoints=1))
    feed, rng = Feed(), np.random.default_rng(3)
    # each checkpoint's NDCG@10 on the validation users
    quality = {1: 0.50, 2: 0.46, 3: 0.42, 4: 0.52, 5: 0.48}

    def validate(sequences: dict, crm_state: dict | None = None) -> dict:
        st = svc.state
        if crm_state is None:
            version = st.version  # the round's checkpoint is written before validation
        elif crm_state is svc.published_crm:
            version = int(st.published["checkpoint"].split("-")[1])
        else:
            assert crm_state is svc.reference_crm
            version = int(st.reference.split("-")[1])
        return {"ndcg@10": quality[version]}

    monkeypatch.setattr(svc.model, "validate", validate)

    def round_() -> list[str]:
        return [u.version for u in svc.apply(feed.inputs(batch(range(10), rng))).announcements]

    assert round_() == ["1"] and svc.state.reference == "ckpt-000001"
    assert round_() == ["2"]  # within the tolerance of both
    assert svc.state.reference == "ckpt-000001"  # not better: the reference stays
    # within the tolerance of the published 0.46, but not of the reference 0.50
    assert round_() == [] and svc.state.published["version"] == 2
    assert round_() == ["4"] and svc.state.reference == "ckpt-000004"
    names = {c.name for c in svc.state.checkpoints}
    assert "ckpt-000004" in names
    # a restart keeps the reference and gates against it
    svc.save()
    again = TrainerService(svc.settings)
    assert again.state.reference == "ckpt-000004" and again.reference_crm is not None
    svc = again
    monkeypatch.setattr(svc.model, "validate", validate)
    assert round_() == ["5"]  # 0.48 is within 0.05 of 0.52


def test_a_lost_reference_checkpoint_makes_the_published_model_the_reference(tmp_path, monkeypatch):
    svc = TrainerService(settings_for(tmp_path, regression_tolerance=0.05))
    feed, rng = Feed(), np.random.default_rng(6)
    svc.apply(feed.inputs(batch(range(10), rng)))
    monkeypatch.setattr(
        svc.model, "validate", lambda seqs, crm_state=None: {"ndcg@10": 0.5 if crm_state else 0.48}
    )
    assert [u.version for u in svc.apply(feed.inputs(batch(range(10), rng))).announcements] == ["2"]
    assert svc.state.reference == "ckpt-000001"
    svc.save()
    svc.files.remove_folder("ckpt-000001")  # lost in a crash
    again = TrainerService(svc.settings)
    # the published model is the best known now (so too for a state file from before)
    assert again.state.reference == again.state.published["checkpoint"] == "ckpt-000002"
    assert again.reference_crm is not None


def test_rounds_nobody_can_validate_are_exported_and_do_not_move_the_reference(
    tmp_path, monkeypatch
):
    svc = TrainerService(settings_for(tmp_path, regression_tolerance=0.0))
    feed, rng = Feed(), np.random.default_rng(9)
    svc.apply(feed.inputs(batch(range(10), rng)))
    monkeypatch.setattr(svc.model, "validate", lambda seqs, crm_state=None: {})
    effects = svc.apply(feed.inputs(batch(range(10), rng)))  # raised TypeError before
    assert [u.version for u in effects.announcements] == ["2"]
    assert svc.state.reference == "ckpt-000001"


def test_a_round_with_nothing_to_train_on_publishes_nothing(tmp_path):
    # sixty users with one event each: no sequence to learn a next item from
    svc = TrainerService(settings_for(tmp_path))
    effects = svc.apply(Feed().inputs([(f"solo{k}", f"i{k % 30}") for k in range(60)]))
    assert effects.announcements == [] and svc.state.version == 0
    assert not list(svc.files.checkpoints.iterdir())


def test_a_model_that_fails_export_parity_is_skipped_not_raised(tmp_path, monkeypatch):
    from export.onnx_export import ParityError

    svc = TrainerService(settings_for(tmp_path))
    feed, rng = Feed(), np.random.default_rng(5)

    def diverged(*_args, **_kwargs):
        raise ParityError("ONNX differs from torch by inf > 0.0001")

    monkeypatch.setattr(svc, "export", diverged)
    effects = svc.apply(feed.inputs(batch(range(10), rng)))  # would stop the worker before
    assert effects.announcements == [] and svc.state.published is None


def test_refused_rounds_do_not_pile_up_checkpoints(tmp_path, monkeypatch):
    svc = TrainerService(settings_for(tmp_path, keep_checkpoints=2, regression_tolerance=0.0))
    feed, rng = Feed(), np.random.default_rng(4)
    svc.apply(feed.inputs(batch(range(10), rng)))  # version 1, published
    monkeypatch.setattr(
        svc.model, "validate", lambda seqs, crm_state=None: {"ndcg@10": 0.9 if crm_state else 0.1}
    )
    for _ in range(4):  # every round worse than the published model: refused
        assert svc.apply(feed.inputs(batch(range(10), rng))).announcements == []
    names = {c.name for c in svc.state.checkpoints}
    assert len(names) <= 3 and svc.state.published["checkpoint"] in names  # 2 newest + it
    assert {p.name for p in svc.files.checkpoints.iterdir()} == names


def test_a_forget_restores_the_newest_checkpoint_before_the_data_and_deletes_the_rest(tmp_path):
    svc = TrainerService(settings_for(tmp_path))
    feed, rng = Feed(), np.random.default_rng(2)
    svc.apply(feed.inputs(batch(range(10), rng)))  # ckpt 1: offsets < 60
    svc.apply(feed.inputs(batch(range(10), rng)))  # ckpt 2: < 120
    late = feed.inputs([("latecomer", f"i{k}") for k in range(5)] + batch(range(10), rng, 55))
    svc.apply(late)  # ckpt 3: the latecomer's data first at offset 120
    names = [c.name for c in svc.state.checkpoints]
    models = {n: model_of(svc, n) for n in names}
    effects = svc.apply(forget_user("latecomer", "req-late"))

    meta = svc.files.checkpoint_meta("ckpt-000004")
    assert meta["restored_from"] == "ckpt-000002" and meta["parent"] == "ckpt-000002"
    assert meta["forgotten_data_from"] == {f"{TOPIC}:0": 120}
    assert meta["excludes_requests"] == ["req-late"]
    folders, files = on_disk(svc)
    assert folders == {"ckpt-000001", "ckpt-000002", "ckpt-000004"}
    assert files == {models["ckpt-000001"], models["ckpt-000002"], model_of(svc, "ckpt-000004")}
    assert "latecomer" not in svc.state.store.sequences
    (receipt,) = effects.receipts
    assert receipt.status == "neural-retrained" and receipt.versions == {"crm": "4"}
    assert receipt.subject and "latecomer" not in receipt.to_bytes().decode()
    assert [u.version for u in effects.announcements] == ["4"]
    assert effects.announcements[0].trained_through == {f"{TOPIC}:0": 180, "u.deletions:0": 1}
    assert svc.state.reference == "ckpt-000004"  # the gate starts again without the data

    # a user there from the first event: no checkpoint predates them, so from scratch
    first_user = next(iter(svc.state.store.sequences))  # its first event is at offset 0
    effects = svc.apply(forget_user(first_user, "req-first"))
    meta = svc.files.checkpoint_meta("ckpt-000005")
    assert meta["restored_from"] is None
    assert meta["excludes_requests"] == ["req-first"]  # a fresh line: no parent to inherit from
    assert on_disk(svc) == ({"ckpt-000005"}, {model_of(svc, "ckpt-000005")})


def test_forgetting_data_no_model_saw_retrains_nothing(tmp_path):
    svc = TrainerService(settings_for(tmp_path))
    feed, rng = Feed(), np.random.default_rng(3)
    svc.apply(feed.inputs(batch(range(10), rng)))
    svc.apply(feed.inputs([("newcomer", "i1"), ("newcomer", "i2")]))
    before = on_disk(svc)
    (receipt,) = svc.apply(forget_user("newcomer", "req-new")).receipts
    assert receipt.versions == {"crm": "1"} and "before any model" in receipt.detail
    assert on_disk(svc) == before and svc.state.version == 1
    assert "newcomer" not in svc.state.fresh_users


def test_a_kill_after_a_forget_deleted_files_but_before_the_snapshot(tmp_path):
    settings = settings_for(tmp_path)
    svc = TrainerService(settings)
    feed, rng = Feed(), np.random.default_rng(4)
    svc.apply(feed.inputs(batch(range(10), rng)))
    svc.apply(feed.inputs([("latecomer", f"i{k}") for k in range(5)] + batch(range(10), rng, 55)))
    svc.apply(feed.inputs(batch(range(10), rng)))
    svc.save()  # the snapshot names ckpt 1–3
    svc.apply(forget_user("latecomer", "req-late"))  # deletes 2 and 3, writes 4; killed here

    again = TrainerService(settings)
    assert again.recovered.lost == ["ckpt-000002", "ckpt-000003"]
    assert again.state.current == "ckpt-000001" and again.state.published is None
    assert on_disk(again) == ({"ckpt-000001"}, {model_of(again, "ckpt-000001")})
    assert again.state.version == 4  # version 4 was exported: never given again
    effects = again.apply(forget_user("latecomer", "req-late"))
    meta = again.files.checkpoint_meta("ckpt-000005")
    assert meta["restored_from"] == "ckpt-000001"
    assert [c.name for c in again.state.checkpoints] == ["ckpt-000001", "ckpt-000005"]
    assert effects.receipts[0].versions == {"crm": "5"}


def test_checkpoints_a_killed_forget_deleted_are_retrained_past_whatever_forget_comes_next(
    tmp_path,
):
    # after a restart the barrier may release deletions in other groups than before the kill
    settings = settings_for(tmp_path)
    svc = TrainerService(settings)
    feed, rng = Feed(), np.random.default_rng(11)
    svc.apply(feed.inputs([("early", f"i{k}") for k in range(5)] + batch(range(10), rng, 55)))
    svc.apply(feed.inputs(batch(range(10), rng)))
    svc.apply(feed.inputs([("latecomer", f"i{k}") for k in range(5)] + batch(range(10), rng, 55)))
    svc.save()
    svc.apply(forget_user("early", "req-early"))  # deletes every checkpoint; killed here

    again = TrainerService(settings)
    assert again.recovered.lost == ["ckpt-000001", "ckpt-000002", "ckpt-000003"]
    # the latecomer's deletion comes first now: checkpoints 1 and 2 predate its data, but
    # their files are gone (they saw the early user's), so the retrain starts over
    again.apply(forget_user("latecomer", "req-late"))
    meta = again.files.checkpoint_meta("ckpt-000005")
    assert meta["restored_from"] is None
    assert [c.name for c in again.state.checkpoints] == ["ckpt-000005"]
    (receipt,) = again.apply(forget_user("early", "req-early")).receipts
    assert receipt.versions == {"crm": "6"}  # the early user's data was in ckpt 5 too


def test_orphans_are_removed_on_load_and_other_models_are_left(tmp_path):
    settings = settings_for(tmp_path)
    svc = TrainerService(settings)
    feed = Feed()
    svc.apply(feed.inputs(batch(range(10), np.random.default_rng(5))))
    svc.save()
    kept = on_disk(svc)
    ckpts = svc.files.checkpoints
    for name in ("ckpt-000007", "ckpt-000008.tmp", "ckpt-000001.deleting"):
        (ckpts / name).mkdir()
        (ckpts / name / "meta.json").write_text("{}")
    crm = svc.model.crm
    orphan = export_version(
        crm,
        version=30,
        items=["a"],
        max_len=8,
        trained_through={},
        metrics={},
        model_dir=settings.model_dir,
        key=b"k",
    )
    unfinished = settings.model_dir / "tmpabc.onnx.tmp"
    unfinished.write_bytes(b"half a model")
    half_state = svc.files.state_file.with_name(".state.json.k1ll3d.tmp")
    half_state.write_text('{"store": {"sequences": {"forgotten-user": ["a"]}}}')
    other = SASRec(SASRecConfig(n_items=5, max_len=4, hidden=8))
    foreign = export_sasrec(other, settings.model_dir, metadata={"lethe.version": "99"}).path

    again = TrainerService(settings)
    assert on_disk(again) == kept
    assert not Path(orphan.path).exists() and not unfinished.exists()
    assert not half_state.exists(), "a state write killed halfway may hold forgotten data"
    assert foreign.exists(), "a model the trainer did not export is not its to delete"
    assert again.state.version == 30  # past every version found on disk
    (update,) = again.apply(feed.inputs(batch(range(10), np.random.default_rng(6)))).announcements
    assert update.version == "31"


def test_versions_never_go_backwards_after_a_crash(tmp_path):
    settings = settings_for(tmp_path)
    feed, rng = Feed(), np.random.default_rng(7)
    first = TrainerService(settings)
    events = batch(range(10), rng)
    (announced,) = first.apply(feed.inputs(events)).announcements  # killed before a snapshot
    second = TrainerService(settings)
    assert second.state.checkpoints == [] and on_disk(second) == (set(), set())
    replay = Feed()
    (update,) = second.apply(replay.inputs(events)).announcements
    assert int(update.version) > int(announced.version)
    assert not Path(announced.path).exists()  # the crashed step's file went on load


def test_the_outbox_and_pending_events_survive_in_the_state_file(tmp_path):
    settings = settings_for(tmp_path)
    svc = TrainerService(settings)
    feed, rng = Feed(), np.random.default_rng(8)
    round_ = svc.apply(feed.inputs(batch(range(10), rng)))
    svc.apply(feed.inputs([("pending", "i1"), ("pending", "i2")]))
    forgotten = svc.apply(forget_user("user1", "req-1"))
    effects = Effects(receipts=forgotten.receipts, announcements=round_.announcements)
    svc.stage(effects, {"u.deletion-receipts:0": 3})
    svc.save()
    loaded = TrainerService(settings)
    assert loaded.outbox == Outbox(
        receipts=forgotten.receipts,
        announcements=[],  # its file went with the checkpoint the forget deleted
        receipts_end_offsets={"u.deletion-receipts:0": 3},
    )
    assert svc.state.new_events == 0  # the retrain trained on everything
    loaded.clear_outbox()
    assert not loaded.outbox
    raw = json.loads(loaded.files.state_file.read_text())
    assert raw["format"] == 6 and "pending_receipts" not in raw
    assert loaded.state.tombstones == svc.state.tombstones != {}  # late events stay out


def test_a_restart_closes_the_micro_batch_a_run_that_never_stopped_closes(tmp_path):
    settings = settings_for(tmp_path)
    feed, rng = Feed(), np.random.default_rng(9)
    svc = TrainerService(settings)
    svc.apply(feed.inputs(batch(range(10), rng, 40)))
    svc.save()
    again = TrainerService(settings)
    assert again.state.new_events == 40 and len(again.state.fresh_users) > 0
    effects = again.apply(feed.inputs(batch(range(10), rng, 30)))
    assert [c.trained_through for c in again.state.checkpoints] == [{f"{TOPIC}:0": 60}]
    assert effects.announcements and again.state.new_events == 10


def test_exported_models_carry_the_trainer_marker(tmp_path):
    svc = TrainerService(settings_for(tmp_path))
    (update,) = svc.apply(Feed().inputs(batch(range(10), np.random.default_rng(10)))).announcements
    assert exported_models(svc.model_dir) == {update.path: 1}
    assert EXPORTED_BY.encode() in Path(update.path).read_bytes()


def test_a_trainer_never_removes_another_trainers_models_from_a_shared_folder(tmp_path):
    first = TrainerService(settings_for(tmp_path))
    (update,) = first.apply(
        Feed().inputs(batch(range(10), np.random.default_rng(11)))
    ).announcements
    first.save()
    # a second trainer with its own state folder but the same model folder (model_dir is
    # not under state_dir): its recovery took the first one's published file for its own
    # orphan and deleted it
    shared = settings_for(tmp_path).model_copy(update={"state_dir": tmp_path / "other"})
    second = TrainerService(shared)
    assert Path(update.path).exists()
    assert not second.recovered.removed_models
    assert exported_models(first.model_dir, first.files.trainer_id) == {update.path: 1}
    assert exported_models(first.model_dir, second.files.trainer_id) == {}
    assert first.files.trainer_id != second.files.trainer_id
    assert TrainerService(settings_for(tmp_path)).files.trainer_id == first.files.trainer_id
