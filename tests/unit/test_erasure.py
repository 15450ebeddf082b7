"""``lethe verify-erasure`` at unit level: Applier + SnapshotStore on disk, no broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp

from models.imcorrect import IMCorrect
from streams.applier import Applier
from streams.cli import main
from streams.contracts import DeletionReceipt, DeletionRequest, InteractionEvent
from streams.erasure import verify_erasure
from streams.keys import KeyRing, keyring
from streams.state import DedupWindow, SnapshotStore, WorkerState

USER = "erase-me-314"


def _state_with_subject(
    tmp_path, model: IMCorrect, seed: int, shape: list[int], n_events: int, items
) -> tuple[WorkerState, Applier, KeyRing]:
    """A state (its applier and key ring) after ``n_events`` random interactions of
    ``shape`` users × items and ``USER`` taking ``items``."""
    keys = keyring(tmp_path / "keys" / "hash.key")
    state = WorkerState(model=model, dedup=DedupWindow(10_000), keys=keys)
    applier = Applier(state)
    rng = np.random.default_rng(seed)
    events = [
        InteractionEvent(event_id=f"e{n}", user_id=f"u{u}", item_id=f"i{i}", ts=1)
        for n, (u, i) in enumerate(rng.integers(0, shape, size=(n_events, 2)).tolist())
    ]
    events += [
        InteractionEvent(event_id=f"s{k}", user_id=USER, item_id=f"i{k}", ts=1) for k in items
    ]
    applier.apply(events)
    return state, applier, keys


def _forget_subject(applier: Applier) -> DeletionReceipt:
    (receipt,) = applier.apply(
        [DeletionRequest(request_id="r1", scope="user", user_id=USER, reason="privacy", ts=9)]
    ).receipts
    return receipt


@pytest.fixture
def erased(tmp_path):
    """A state folder after ``USER`` was forgotten, with the receipt."""
    state, applier, keys = _state_with_subject(
        tmp_path, IMCorrect("ease", l2=5.0), 3, [30, 25], 400, range(8)
    )
    store = SnapshotStore(tmp_path / "imcorrect", keys)
    store.save(state)
    user_row = state.model.interactions[state.users.get(USER)]
    user_index = state.users.get(USER)
    receipt = _forget_subject(applier)
    store.save(state)
    return tmp_path, keys, receipt, user_index, user_row


def test_passes_after_a_deletion(erased):
    state_dir, keys, receipt, *_ = erased
    verdict = verify_erasure(state_dir, receipt, keys)
    assert verdict.passed, verdict.render()
    names = {c.name for c in verdict.checks}
    assert {"IMCorrect user map", "IMCorrect interactions", "IMCorrect mapping"} <= names
    assert "state digest" in names  # the snapshot is the receipt's state
    assert verdict.figures["mapping_max_abs_diff"] <= 1e-8
    assert USER not in verdict.render()


def _edit_snapshot(state_dir, edit) -> None:
    snap = SnapshotStore(state_dir / "imcorrect").latest()
    npz = snap / "model.npz"
    with np.load(npz, allow_pickle=False) as f:
        arrays = dict(f)
    edit(arrays, snap)
    np.savez(npz, **arrays)


def test_fails_when_a_forgotten_users_row_is_put_back_by_hand(erased):
    state_dir, keys, receipt, user_index, user_row = erased

    def put_back(arrays, _snap):
        shape = tuple(arrays["x_shape"])
        x = sp.csr_matrix((arrays["x_data"], arrays["x_indices"], arrays["x_indptr"]), shape)
        x = x.tolil()
        x[user_index, :] = user_row.toarray()
        x = x.tocsr()
        arrays.update(x_data=x.data, x_indices=x.indices, x_indptr=x.indptr)

    _edit_snapshot(state_dir, put_back)
    verdict = verify_erasure(state_dir, receipt, keys)
    assert not verdict.passed
    failed = {c.name for c in verdict.checks if not c.passed}
    assert {"IMCorrect interactions", "IMCorrect mapping", "state digest"} <= failed


def test_fails_when_the_id_is_put_back_or_kept_in_a_sequence_store(erased):
    state_dir, keys, receipt, user_index, _ = erased
    snap = SnapshotStore(state_dir / "imcorrect").latest()
    meta = json.loads((snap / "worker.json").read_text())
    meta["users"][user_index] = USER
    (snap / "worker.json").write_text(json.dumps(meta))
    (state_dir / "scorer").mkdir()
    (state_dir / "scorer" / "state.json").write_text(
        json.dumps({"store": {"sequences": {USER: ["i1"]}, "user_first": {}}})
    )
    verdict = verify_erasure(state_dir, receipt, keys)
    failed = {c.name for c in verdict.checks if not c.passed}
    assert failed == {"IMCorrect user map", "scorer sequences"}
    # with any other key the planted id is not recognised: confirming needs the operator's key
    from streams.keys import KeyRing

    # ... so a verifier with another key fails on the key instead of passing blind
    blind = verify_erasure(state_dir, receipt, KeyRing.generate())
    assert {c.name for c in blind.checks if not c.passed} == {"hash key"}


def test_another_key_never_passes(erased):
    state_dir, keys, receipt, *_ = erased
    from streams.keys import KeyRing

    assert verify_erasure(state_dir, receipt, keys).passed
    blind = verify_erasure(state_dir, receipt, KeyRing.generate())
    assert not blind.passed and "wrong key" in blind.render()
    # a retired key still counts: the ring holds the key the snapshot hashed with
    rotated = KeyRing(KeyRing.generate().current, (keys.current,))
    assert verify_erasure(state_dir, receipt, rotated).passed


def test_a_missing_snapshot_fails_and_the_verifier_creates_nothing(erased):
    state_dir, keys, receipt, *_ = erased
    verdict = verify_erasure(state_dir, receipt, keys, folder="imcorrect-typo")
    assert not verdict.passed
    assert "IMCorrect snapshot" in {c.name for c in verdict.checks if not c.passed}
    assert not (state_dir / "imcorrect-typo").exists()


def test_an_older_snapshot_or_half_deleted_checkpoint_fails(erased):
    state_dir, keys, receipt, *_ = erased
    older = state_dir / "imcorrect" / "snapshots" / "snap-000000000"
    older.mkdir()
    verdict = verify_erasure(state_dir, receipt, keys)
    assert {c.name for c in verdict.checks if not c.passed} == {"stale copies"}
    older.rmdir()
    deleting = state_dir / "trainer" / "checkpoints" / "ckpt-3.deleting"
    deleting.mkdir(parents=True)  # just now: a worker deleting it at this moment
    verdict = verify_erasure(state_dir, receipt, keys)
    assert verdict.passed and any("being written" in n for n in verdict.notes)
    hour_ago = time.time() - 3600
    os.utime(deleting, (hour_ago, hour_ago))  # left behind by a crash
    verdict = verify_erasure(state_dir, receipt, keys)
    assert {c.name for c in verdict.checks if not c.passed} == {"stale copies"}


def test_a_half_written_state_file_of_the_scorer_or_trainer_fails_once_old(erased):
    state_dir, keys, receipt, *_ = erased
    for name in ("scorer", "scorer-1", "trainer"):  # scorer-1: a scaled-out replica's
        (state_dir / name).mkdir(parents=True, exist_ok=True)
        half = state_dir / name / ".state.json.w8x2.tmp"  # atomic_write's temp file
        half.write_text("{")
        verdict = verify_erasure(state_dir, receipt, keys)
        assert verdict.passed and any(f"{name}/{half.name}" in n for n in verdict.notes)
        hour_ago = time.time() - 3600
        os.utime(half, (hour_ago, hour_ago))  # left behind by a killed worker
        verdict = verify_erasure(state_dir, receipt, keys)
        failed = [c for c in verdict.checks if not c.passed]
        assert [c.name for c in failed] == ["stale copies"] and half.name in failed[0].detail
        half.unlink()


def test_a_state_without_the_subjects_tombstone_fails(erased):
    state_dir, keys, receipt, *_ = erased

    def unbury(_arrays, snap):
        with np.load(snap / "worker.npz", allow_pickle=False) as f:
            worker = dict(f)
        worker["tomb_keys"], worker["tomb_ts"] = worker["tomb_keys"][:0], worker["tomb_ts"][:0]
        np.savez(snap / "worker.npz", **worker)

    _edit_snapshot(state_dir, unbury)
    verdict = verify_erasure(state_dir, receipt, keys)
    assert {c.name for c in verdict.checks if not c.passed} == {"IMCorrect tombstone"}


def test_a_restarted_worker_prunes_what_a_crash_left_before_any_receipt(erased):
    state_dir, keys, *_ = erased
    store = SnapshotStore(state_dir / "imcorrect", keys)
    newest = store.latest()
    older = store.root / "snap-000000000"
    older.mkdir()
    (store.root / "snap-999999999.tmp").mkdir()
    store.prune_stale()
    assert sorted(store.root.iterdir()) == [newest]


def test_later_changes_are_noted_not_failed(erased):
    state_dir, keys, receipt, *_ = erased
    store = SnapshotStore(state_dir / "imcorrect", keys)
    state = store.load()
    Applier(state).apply(
        [InteractionEvent(event_id="late", user_id="u1", item_id="brand-new", ts=20)]
    )
    store.save(state)
    verdict = verify_erasure(state_dir, receipt, keys)
    assert verdict.passed, verdict.render()
    assert any("moved on" in n for n in verdict.notes)


def test_cli_exit_codes(erased, capsys):
    state_dir, _, receipt, user_index, user_row = erased
    path = state_dir / "receipt.json"
    path.write_text(receipt.model_dump_json())
    assert main(["verify-erasure", str(path), "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "max |M_live - M_refit|" in out
    assert main(["verify-erasure", "{not json", "--state-dir", str(state_dir)]) == 2
    # no key file: refuse instead of making a new key that would prove nothing
    other = state_dir / "elsewhere"
    other.mkdir()
    assert main(["verify-erasure", str(path), "--state-dir", str(other)]) == 2
    assert not (other / "keys").exists()
    inline = receipt.model_dump_json()  # the receipt as JSON text works too
    assert main(["verify-erasure", inline, "--state-dir", str(state_dir)]) == 0
    latin = state_dir / "latin1.json"
    latin.write_bytes(b'{"request_id": "\xe9"}')  # not UTF-8: no verdict, not a FAIL
    assert main(["verify-erasure", str(latin), "--state-dir", str(state_dir)]) == 2


def test_forget_refuses_an_item_together_with_a_user(capsys):
    # a deletion cannot be taken back: "--user U --item I" must not forget all of U
    assert main(["forget", "--user", "u1", "--item", "i1"]) == 2
    assert "--item" in capsys.readouterr().err


def test_a_snapshot_without_the_mapping_still_verifies_and_says_so(erased):
    state_dir, keys, receipt, user_index, user_row = erased
    store = SnapshotStore(state_dir / "imcorrect", keys)
    store.save(store.load(), with_mapping=False)  # as the worker writes one for a receipt
    verdict = verify_erasure(state_dir, receipt, keys)
    assert verdict.passed, verdict.render()
    assert any("stores no mapping" in n for n in verdict.notes)
    assert any(c.name == "state digest" and c.passed for c in verdict.checks)


class _Producer:
    """Stands in for LetheProducer: the broker acknowledges the request; closing may fail."""

    close_fails = False

    def __init__(self, settings):
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        if self.close_fails:  # after the broker acknowledged the request
            from aiokafka.errors import KafkaConnectionError

            raise KafkaConnectionError("broker gone while closing")
        return False

    async def flush(self):
        pass

    async def forget_user(self, user, reason):
        return DeletionRequest(request_id="sent-1", scope="user", user_id=user, reason=reason, ts=1)


@pytest.mark.parametrize("close_fails", [False, True])
def test_forget_wait_says_sent_when_the_receipts_cannot_be_read(monkeypatch, capsys, close_fails):
    # the request went out; losing the broker while waiting is exit 3 ("sent, no receipt"),
    # never exit 4 ("nothing was sent"), which would invite a second deletion
    from aiokafka.errors import KafkaConnectionError

    from streams import client, reader

    class Consumer:
        async def start(self):
            pass

        async def stop(self):
            pass

    async def nothing(*args, **kwargs):
        return None

    async def broker_gone(*args, **kwargs):
        raise KafkaConnectionError("broker gone")

    monkeypatch.setattr(_Producer, "close_fails", close_fails)
    monkeypatch.setattr(reader, "_committed_reader", lambda settings: Consumer())
    monkeypatch.setattr(reader, "read_from_end", nothing)
    monkeypatch.setattr(client, "LetheProducer", _Producer)
    monkeypatch.setattr(reader, "_first", broker_gone)
    assert main(["forget", "--user", "u1", "--wait", "--timeout", "1"]) == 3
    err = capsys.readouterr().err
    assert "sent-1" in err and "was sent" in err


def test_an_unreachable_broker_is_one_line_on_stderr():
    # in a process of its own: pytest's log capture would hide what logging prints there
    for argv in (["topics", "describe"], ["recommend", "--user", "u1", "--timeout", "5"]):
        code = f"import sys; from streams.cli import main; sys.exit(main({argv!r}))"
        env = {**os.environ, "LETHE_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 3
        # no aiokafka log line before it, no "Unclosed AIOKafkaConsumer" after it
        assert done.stderr.count("\n") == 1, done.stderr
        assert "cannot reach Kafka at 127.0.0.1:9" in done.stderr


def test_forget_without_wait_reports_a_request_the_broker_took_as_sent(monkeypatch, capsys):
    # closing the producer fails after the broker acknowledged the request: exit 0 with the
    # request id, never exit 4 ("not sent"), which would invite a second deletion
    from streams import client

    monkeypatch.setattr(_Producer, "close_fails", True)
    monkeypatch.setattr(client, "LetheProducer", _Producer)
    assert main(["forget", "--user", "u1"]) == 0
    assert json.loads(capsys.readouterr().out)["request_id"] == "sent-1"


def test_a_scaled_out_scorer_replicas_state_is_checked_too(erased):
    state_dir, keys, receipt, *_ = erased
    replica = state_dir / "scorer-2"  # scorer.replica_id = 2
    replica.mkdir()
    held = {"store": {"sequences": {USER: ["i1"]}}, "tombstones": []}
    (replica / "state.json").write_text(json.dumps(held))
    (check,) = [c for c in verify_erasure(state_dir, receipt, keys).checks if not c.passed]
    assert check.name == "scorer-2 sequences" and "PRESENT (1)" in check.detail


def test_a_worker_that_has_not_read_the_deletion_yet_is_named(erased):
    from streams.state import Hasher
    from streams.tombstones import to_json

    state_dir, keys, receipt, *_ = erased
    trainer = state_dir / "trainer"
    trainer.mkdir()
    held = {"store": {"sequences": {USER: ["i1"]}, "user_first": {}}, "tombstones": []}
    (trainer / "state.json").write_text(json.dumps(held))
    (check,) = [c for c in verify_erasure(state_dir, receipt, keys).checks if not c.passed]
    assert check.name == "trainer sequences"
    assert "has not applied the deletion yet" in check.detail and "neural-retrained" in check.detail
    # with the subject's tombstone it did apply it: the id is there by fault, said plainly
    held["tombstones"] = to_json({Hasher(keys)("user", USER): 9})
    (trainer / "state.json").write_text(json.dumps(held))
    (check,) = [c for c in verify_erasure(state_dir, receipt, keys).checks if not c.passed]
    assert "PRESENT (1)" in check.detail and "not applied" not in check.detail


def test_a_rejected_receipt_is_noted(erased):
    state_dir, keys, receipt, *_ = erased
    rejected = receipt.model_copy(update={"status": "rejected", "detail": "unknown user"})
    verdict = verify_erasure(state_dir, rejected, keys)
    assert "the receipt is a rejection (unknown user)" in verdict.notes


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LETHE_IMCORRECT__MAPPING", "no-such-mapping")
    assert main(["topics", "describe"]) == 2
    assert "invalid settings" in capsys.readouterr().err
    monkeypatch.delenv("LETHE_IMCORRECT__MAPPING")
    assert main(["publish", "interactions", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    # nothing listens on port 9: each command says so and exits 3 (no traceback)
    for argv in (["topics", "describe"], ["recommend", "--user", "u1", "--timeout", "5"]):
        assert main(["--bootstrap", "127.0.0.1:9", *argv]) == 3
        assert "cannot reach Kafka at 127.0.0.1:9" in capsys.readouterr().err
    assert main(["recommend", "--user", "u1", "-k", "0"]) == 2
    assert "not a valid request" in capsys.readouterr().err


def test_the_sparse_mappings_counts_are_checked_for_traces_of_the_forgotten(tmp_path):
    # with itemknn-topk a snapshot stores co-occurrence counts: after the deletion none may
    # be 0 (it would say two items were once taken together) and all must be what the
    # retained interactions count
    # the subject alone takes items 98 and 99 together
    model = IMCorrect("itemknn-topk", k=5, refit_rank_ratio=np.inf)
    state, applier, keys = _state_with_subject(tmp_path, model, 4, [30, 40], 200, (98, 99))
    receipt = _forget_subject(applier)
    store = SnapshotStore(tmp_path / "imcorrect", keys)
    store.save(state)  # a periodic snapshot: the mapping with its counts
    verdict = verify_erasure(tmp_path, receipt, keys)
    assert verdict.passed, verdict.render()
    assert "IMCorrect counts" in {c.name for c in verdict.checks}
    assert verdict.figures["stored_zero_counts"] == 0

    def zero_one_count(arrays, _snap):
        arrays["map_g_data"][0] = 0

    _edit_snapshot(tmp_path, zero_one_count)
    verdict = verify_erasure(tmp_path, receipt, keys)
    assert "IMCorrect counts" in {c.name for c in verdict.checks if not c.passed}
    assert verdict.figures["stored_zero_counts"] == 1
