"""Privacy defects of issue #17, each pinned by a test (no broker): orphaned ids, the hash key
kept apart from the snapshot, receipts without raw ids, future timestamps, log lines."""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import numpy as np
import pytest
from pydantic import SecretStr

from models.imcorrect import IMCorrect
from streams.applier import Applier
from streams.config import LetheSettings, LimitSettings
from streams.contracts import ContractError, DeletionRequest, InteractionEvent, decode
from streams.keys import KeyRing, keyring, keyring_for, rotate_key_file
from streams.state import DedupWindow, Hasher, SnapshotStore, WorkerState

SECRET_USER = "alice-7f3a"
SECRET_ITEM = "only-alice-item-91"


def ev(n: int, user: str, item: str, ts: int = 1) -> InteractionEvent:
    return InteractionEvent(event_id=f"e{n}", user_id=user, item_id=item, ts=ts)


def forget(user: str, rid: str = "r1", ts: int = 100) -> DeletionRequest:
    return DeletionRequest(request_id=rid, scope="user", user_id=user, reason="privacy", ts=ts)


def trained(keys: KeyRing | None = None) -> tuple[WorkerState, Applier]:
    state = WorkerState(
        model=IMCorrect("ease", l2=1.0), dedup=DedupWindow(1000), keys=keys or KeyRing.generate()
    )
    applier = Applier(state)
    applier.apply(
        [
            ev(1, SECRET_USER, "shared"),
            ev(2, SECRET_USER, SECRET_ITEM),
            ev(3, "bob", "shared"),
            ev(4, "bob", "other"),
            ev(5, "carol", "other"),
        ]
    )
    return state, applier


def all_bytes(root) -> list[tuple[str, bytes]]:
    return [(str(f), f.read_bytes()) for f in root.rglob("*") if f.is_file()]


# -- 1. ids only the forgotten user touched ----------------------------------------------
def test_an_item_only_the_forgotten_user_touched_leaves_the_id_map_and_catalogue(tmp_path):
    state, applier = trained()
    i = state.items.get(SECRET_ITEM)
    applier.apply([forget(SECRET_USER)])
    assert state.items.get(SECRET_ITEM) is None
    assert state.model.forgotten_items[i]  # masked, and its index is never handed out again
    assert state.items.get("shared") is not None and state.items.get("other") is not None
    # the live mapping equals a refit on the retained interactions
    refit = IMCorrect("ease", l2=1.0).fit(state.model.interactions)
    np.testing.assert_allclose(state.model.mapping, refit.mapping, atol=1e-10)
    path = SnapshotStore(tmp_path, keys=state.keys).save(state)
    for name, data in all_bytes(path):
        assert SECRET_ITEM.encode() not in data, name
    # the item coming back through someone else gets a fresh index
    applier.apply([ev(9, "bob", SECRET_ITEM, ts=200)])
    assert state.items.get(SECRET_ITEM) not in (None, i)


def test_a_user_left_without_interactions_leaves_the_user_map():
    state, applier = trained()
    applier.apply(
        [DeletionRequest(request_id="r", scope="item", item_id="other", reason="utility", ts=9)]
    )
    assert state.users.get("carol") is None  # carol's only item was "other"
    assert state.users.get("bob") is not None


# -- 2. the hash key is kept apart --------------------------------------------------------
def test_snapshot_files_hold_no_key_and_cannot_confirm_a_guessed_id(tmp_path):
    keys = keyring(tmp_path / "keys" / "hash.key")
    state, applier = trained(keys)
    applier.apply([forget(SECRET_USER)])
    store = SnapshotStore(tmp_path / "imcorrect", keys=keys)
    path = store.save(state)
    files = all_bytes(path)
    for name, data in files:
        assert keys.current not in data and keys.current.hex().encode() not in data, name
    assert "key" not in json.loads((path / "worker.json").read_text())
    # an attacker with the snapshot alone guesses the id and hashes it with any key they
    # can find in the files: no tombstone matches
    tomb = set(np.load(path / "worker.npz")["tomb_keys"].tolist())
    assert Hasher(keys)("user", SECRET_USER) in tomb  # the operator can
    for _, data in files:
        for start in range(0, max(0, len(data) - 16), 8):
            guess = Hasher(data[start : start + 16])("user", SECRET_USER)
            assert guess not in tomb
    assert Hasher(KeyRing.generate())("user", SECRET_USER) not in tomb
    # the key file is private
    mode = stat.S_IMODE(os.stat(tmp_path / "keys" / "hash.key").st_mode)
    assert mode == 0o600
    # so is the snapshot, which holds raw ids, whatever the process's umask
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    # and a restart with the same key still honours the tombstone
    out = Applier(store.load()).apply([ev(10, SECRET_USER, "shared", ts=50)])
    assert out.learned == 0


def test_key_from_settings_secret_and_rotation_keeps_tombstones(tmp_path):
    s = LetheSettings(state_dir=tmp_path, hash_key="correct horse battery staple")
    assert keyring_for(s) == keyring_for(s)
    assert not (tmp_path / "keys").exists()  # a secret setting needs no file
    key_file = tmp_path / "k" / "hash.key"
    old = keyring(key_file)
    state, applier = trained(old)
    applier.apply([forget(SECRET_USER)])
    rotated = rotate_key_file(key_file)
    assert rotated.retired == (old.current,) and keyring(key_file) == rotated
    state.keys = rotated
    out = applier.apply([ev(11, SECRET_USER, "shared", ts=50), ev(1, "bob", "x")])
    assert out.learned == 0  # old-key tombstone and old-key dedup entry both still hold


# -- 3. receipts carry no raw id ----------------------------------------------------------
def test_receipts_never_carry_a_raw_id():
    state, applier = trained()
    out = applier.apply(
        [
            forget(SECRET_USER, "r1"),
            forget("ghost-user-55", "r2"),
            DeletionRequest(
                request_id="r3", scope="item", item_id="nope-88", reason="utility", ts=9
            ),
            DeletionRequest(
                request_id="r4",
                scope="interactions",
                user_id="bob",
                item_ids=["zz-missing-3"],
                reason="privacy",
                ts=9,
            ),
        ]
    )
    assert [r.status for r in out.receipts] == ["applied", "rejected", "rejected", "rejected"]
    for receipt in out.receipts:
        raw = receipt.to_bytes()
        for secret in (SECRET_USER, "ghost-user-55", "nope-88", "zz-missing-3", '"bob"'):
            assert secret.encode() not in raw, (secret, raw)
    h = state.hasher
    assert out.receipts[0].subject == f"user:{h.subject('user', SECRET_USER)}"
    assert out.receipts[2].subject == f"item:{h.subject('item', 'nope-88')}"


def test_receipts_say_where_data_still_lives_and_until_when():
    state, applier = trained()
    before = int(time.time() * 1000)
    (receipt,) = applier.apply([forget(SECRET_USER)]).receipts
    where = {r.location: r.until for r in receipt.retained_elsewhere}
    assert set(where) >= {"lethe.interactions", "lethe.deletions", "lethe.dead-letters"}
    deadline = LetheSettings().topics.erasure_deadline_ms
    for until in where.values():
        assert until is not None and before < until <= before + 2 * deadline
    assert receipt.state_digest is not None and len(receipt.state_digest) == 64


# -- 5. timestamps from the future --------------------------------------------------------
def test_a_timestamp_past_the_allowed_skew_is_a_contract_error():
    limits = LimitSettings(max_future_skew_ms=300_000)
    now = int(time.time() * 1000)
    body = {"event_id": "e", "user_id": SECRET_USER, "item_id": "shared"}
    ok = decode(InteractionEvent, json.dumps({**body, "ts": now + 60_000}), limits)
    assert ok.ts == now + 60_000
    with pytest.raises(ContractError) as err:
        decode(InteractionEvent, json.dumps({**body, "ts": now + 10**10}), limits)
    assert "skew" in str(err.value) and err.value.field == "ts"
    assert SECRET_USER not in str(err.value)


# -- 4. log lines -------------------------------------------------------------------------
def test_json_log_lines_carry_no_raw_user_or_item_id(capsys):
    from streams.logs import configure_logging

    configure_logging(as_json=True)
    try:
        logging.getLogger("lethe.test").info(
            "recommended %d items",
            3,
            extra={"request_id": "q1", "user_id": SECRET_USER, "item_id": SECRET_ITEM},
        )
    finally:
        configure_logging(as_json=False)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["request_id"] == "q1" and record["msg"] == "recommended 3 items"
    assert SECRET_USER not in line and SECRET_ITEM not in line


# -- the same defects in the scorer's and trainer's stores ---------------------------------
def test_sequence_store_forgets_positions_of_items_only_the_user_had():
    from streams.sequence_store import SequenceStore

    store = SequenceStore()
    store.add(SECRET_USER, SECRET_ITEM, "t:0", 1)
    store.add(SECRET_USER, "shared", "t:0", 2)
    store.add("bob", "shared", "t:1", 3)
    store.forget(forget(SECRET_USER))
    text = json.dumps(store.to_dict())
    assert SECRET_ITEM not in text and SECRET_USER not in text
    assert "shared" in store.item_first


def test_scorer_and_trainer_state_files_hold_no_key_and_no_forgotten_item(tmp_path):
    from streams.sequence_store import SequenceStore
    from streams.services.scorer_state import ScorerState
    from streams.services.trainer_state import TrainerFiles, TrainerState

    keys = keyring(tmp_path / "hash.key")
    scorer = ScorerState(keys)
    scorer.forbidden_items[scorer.item_hash(SECRET_ITEM)] = ["t:0", 4]
    text = json.dumps(scorer.to_dict())
    assert SECRET_ITEM not in text and keys.current.hex() not in text
    assert ScorerState.from_dict(json.loads(text), keys).forbidden_items == scorer.forbidden_items

    files = TrainerFiles(tmp_path, keys)
    state = TrainerState(store=SequenceStore(), keys=keys)
    state.dedup.seen(state.hasher("event", "e1"))
    files.save(state)
    raw = files.state_file.read_text()
    assert keys.current.hex() not in raw and '"key"' not in raw
    assert files.load().dedup.seen(Hasher(keys)("event", "e1"))


def test_rotate_hash_key_command_keeps_the_old_key(tmp_path, capsys):
    from streams.cli import main

    before = keyring(tmp_path / "keys" / "hash.key")
    assert main(["rotate-hash-key", "--state-dir", str(tmp_path)]) == 0
    after = keyring(tmp_path / "keys" / "hash.key", create=False)
    assert after.retired == (before.current,) and after.current != before.current
    assert before.current.hex() not in capsys.readouterr().out


# -- 6. retention ---------------------------------------------------------------------------
def test_user_data_topics_are_created_within_the_erasure_deadline(caplog):
    from streams.retention import TopicRetention, over_deadline, retention_from_settings
    from streams.topics import topic_specs

    day = 24 * 3600 * 1000
    s = LetheSettings(
        topic_prefix="p.",
        topics={"erasure_deadline_ms": 7 * day, "interactions_retention_ms": -1},
    )
    specs = {spec.logical: spec for spec in topic_specs(s)}
    for logical in ("interactions", "deletions", "rec-requests", "recommendations", "dead-letters"):
        assert 0 < int(specs[logical].configs["retention.ms"]) <= 7 * day, logical
        assert int(specs[logical].configs["segment.ms"]) <= 7 * day
        # retention by the broker's clock: a producer's future timestamp cannot stretch it
        assert specs[logical].configs["message.timestamp.type"] == "LogAppendTime"
    assert specs["deletion-receipts"].configs["retention.ms"] == "-1"  # no raw ids: kept
    planned = retention_from_settings(s)
    assert planned["interactions"].name == "p.interactions"
    assert over_deadline(planned, 7 * day) == []
    too_long = {**planned, "deletions": TopicRetention("p.deletions", 365 * day)}
    with caplog.at_level(logging.WARNING, logger="lethe.retention"):
        assert over_deadline(too_long, 7 * day) == ["p.deletions"]
    assert "p.deletions" in caplog.text and "erasure deadline" in caplog.text


def test_a_retention_of_long_max_is_forever_not_a_broken_receipt():
    from streams.retention import TopicRetention, retained_elsewhere

    forever = TopicRetention("p.interactions", 2**63 - 1, segment_ms=0)
    assert forever.until(int(time.time() * 1000)) is None
    copies = retained_elsewhere({"interactions": forever}, int(time.time() * 1000), "user")
    assert [c.until for c in copies] == [None]  # a valid RetainedCopy: no bound


def test_scorer_lookups_survive_a_key_rotation():
    from streams.services.scorer_state import ScorerState

    old = KeyRing.generate()
    scorer = ScorerState(old)
    scorer.suppressed_users[scorer.user_hash(SECRET_USER)] = ["t:0", 1]
    scorer.forbidden_items[scorer.item_hash(SECRET_ITEM)] = ["t:0", 2]
    rotated = ScorerState.from_dict(
        scorer.to_dict(), KeyRing(KeyRing.generate().current, (old.current,))
    )
    assert rotated.is_suppressed(SECRET_USER) and rotated.is_forbidden(SECRET_ITEM)
    assert not rotated.is_suppressed("bob") and not rotated.is_forbidden("shared")
    rotated.unforbid(SECRET_ITEM)
    assert not rotated.forbidden_items


def _start_all_three(settings: LetheSettings, save: bool = False) -> None:
    """Start (and with ``save``, snapshot) the IMCorrect worker, the scorer and the trainer
    on ``settings``' state folder, as their processes do."""
    from streams.services.imcorrect import IMCorrectService
    from streams.services.scorer import ScorerService
    from streams.services.trainer import TrainerService

    for service in (IMCorrectService(settings), ScorerService(settings)):
        if save:
            service.save()
        service.close()
    trainer = TrainerService(settings)
    if save:
        trainer.save()


def _each_refuses(settings: LetheSettings, match: str) -> None:
    from streams.keys import UnknownKeyError
    from streams.services.imcorrect import IMCorrectService
    from streams.services.scorer import ScorerService
    from streams.services.trainer import TrainerService

    for make in (IMCorrectService, ScorerService, TrainerService):
        with pytest.raises(UnknownKeyError, match=match):
            make(settings)


def test_every_worker_refuses_state_written_under_a_key_it_does_not_hold(tmp_path):
    # a key file lost or moved (say, a compose upgrade that mounts an empty key volume): a
    # fresh key would match no tombstone, and forgotten users' late events would come back
    first = LetheSettings(state_dir=tmp_path, hash_key="the-first-key-0123456789")
    _start_all_three(first, save=True)
    other = first.model_copy(update={"hash_key": SecretStr("another-key-0123456789")})
    _each_refuses(other, "fingerprint")
    # the old key among the retired ones (a rotation): accepted
    retired = [SecretStr("the-first-key-0123456789")]
    _start_all_three(other.model_copy(update={"hash_keys_retired": retired}))


def test_a_missing_key_file_beside_saved_state_is_refused_not_created(tmp_path):
    # creating a fresh key would match none of the tombstones, and would overwrite the key
    # the operator is about to restore
    from streams.config import hash_key_path

    settings = LetheSettings(state_dir=tmp_path)
    _start_all_three(settings, save=True)
    key_file = hash_key_path(settings)
    key = key_file.read_bytes()
    key_file.unlink()
    _each_refuses(settings, "is missing")
    assert not key_file.exists()
    key_file.write_bytes(key)  # restored: all three start again
    key_file.chmod(0o600)
    _start_all_three(settings)
