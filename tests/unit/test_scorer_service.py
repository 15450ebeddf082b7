"""The scoring service under the shared service contract, on the in-memory log, plus the
rules that used to be testable only through a broker (model announcements, forgetting)."""

from __future__ import annotations

import json
import random
import threading
import time
from itertools import islice

import pytest

from models.datasets import load
from streams.config import LetheSettings
from streams.contracts import DeletionRequest, ModelUpdate, RecRequest
from streams.keys import keyring_for
from streams.model_auth import sign, update_key
from streams.replay import to_event
from streams.runtime.loop import Runtime
from streams.sequence_store import SequenceStore
from streams.services import scorer as scorer_module
from streams.services.base import Inputs
from streams.services.batch import InteractionColumns
from streams.services.scorer import ScorerService
from streams.services.scorer_state import ScorerState
from tests.unit.service_contract import ServiceContract, user_deletion

_EVENTS = [
    e.model_copy(update={"user_id": f"subject-{e.user_id}-x"})
    for e in map(to_event, islice(load("ml-100k").replay(), 1200))
]
_USERS = sorted({e.user_id for e in _EVENTS})
_FORGOTTEN = random.Random(11).sample(_USERS, 6)


def _stream() -> list:
    """Events with deletions of users seen so far; a forgotten user sends nothing after."""
    out, gone = [], set()
    for k, event in enumerate(_EVENTS):
        if event.user_id in gone:
            continue
        out.append(event)
        if k % 200 == 199:
            seen = {e.user_id for e in out if not isinstance(e, DeletionRequest)}
            for user in [u for u in _FORGOTTEN if u in seen and u not in gone][:2]:
                out.append(user_deletion(user, f"req-{len(out)}", event.ts + 1))
                gone.add(user)
    return out


class TestScorerService(ServiceContract):
    overrides = {"scorer": {"snapshot_interval_s": 0.001, "imcorrect_reload_s": 3600}}
    receipt_status = None  # the IMCorrect worker and the trainer write the receipts

    def make_runtime(self, settings, io):
        return Runtime(settings, ScorerService, io, name="scorer")

    def stream(self):
        return _stream()

    def forgotten_ids(self):
        ids = sorted({e.user_id for e in _stream() if isinstance(e, DeletionRequest)})
        assert ids, "the stream forgets no one"
        return ids

    def _state(self, settings) -> ScorerState:
        path = settings.state_dir / "scorer" / "state.json"
        return ScorerState.from_dict(json.loads(path.read_text()), keyring_for(settings))

    def holds_data_of(self, settings, user_id):
        return bool(self._state(settings).store.get(user_id))

    def fingerprint(self, settings):
        state = self._state(settings)
        # suppressed users are keyed hashes, and every state folder has its own key
        suppressed = [state.is_suppressed(u) for u in self.forgotten_ids()]
        return state.store.to_dict(), suppressed, state.offsets


def _columns(
    events: list[tuple[str, str]], topic: str = "t.interactions:0", ids: str = "e"
) -> InteractionColumns:
    cols = InteractionColumns()
    for k, (user, item) in enumerate(events):
        cols.positions.append(k)
        cols.event_ids.append(f"{ids}{k}")
        cols.user_ids.append(user)
        cols.item_ids.append(item)
        cols.ts.append(1_000 + k)
        cols.sources.append((topic, k))
    return cols


def _service(tmp_path) -> ScorerService:
    settings = LetheSettings(state_dir=tmp_path / "state", model_dir=tmp_path / "models")
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    return ScorerService(settings)


def test_a_forgotten_item_is_never_answered_until_seen_again(tmp_path):
    svc = _service(tmp_path)
    svc.apply(Inputs(interactions=_columns([("u1", "a"), ("u2", "a"), ("u2", "b")])))
    forget = DeletionRequest(request_id="r", scope="item", item_id="a", reason="privacy", ts=5)
    effects = svc.apply(Inputs(deletions=[forget], deletion_sources=[("t.deletions:0", 0)]))
    assert effects.snapshot  # the forgotten data leaves the file at once
    request = RecRequest(request_id="q", user_id="u3", k=5, ts=6)
    answer = json.loads(svc.answer([request])[0])
    assert "a" not in [i["item_id"] for i in answer["items"]]
    svc.apply(Inputs(interactions=_columns([("u4", "a")], ids="later")))
    answer = json.loads(svc.answer([request])[0])
    assert "a" in [i["item_id"] for i in answer["items"]]
    svc.close()


def _user_deletion(user: str, ts: int) -> Inputs:
    forget = DeletionRequest(
        request_id=f"r-{user}", scope="user", user_id=user, reason="privacy", ts=ts
    )
    return Inputs(deletions=[forget], deletion_sources=[("t.deletions:0", 0)])


def test_a_redelivered_event_is_stored_once(tmp_path):
    svc = _service(tmp_path)
    cols = _columns([("u1", "a"), ("u1", "b")])
    svc.apply(Inputs(interactions=cols))
    svc.apply(Inputs(interactions=cols))  # the same event ids again (a producer's retry)
    assert svc.state.store.get("u1") == ["a", "b"]
    svc.close()


def test_events_stamped_before_a_deletion_never_come_back(tmp_path):
    svc = _service(tmp_path)
    svc.apply(Inputs(interactions=_columns([("u1", "a"), ("u2", "b")])))
    svc.apply(_user_deletion("u1", ts=5_000))
    forget_item = DeletionRequest(
        request_id="ri", scope="item", item_id="b", reason="privacy", ts=5_000
    )
    svc.apply(Inputs(deletions=[forget_item], deletion_sources=[("t.deletions:0", 1)]))
    # ts 1,000 and 1,001: before both deletions
    late = _columns([("u1", "c"), ("u3", "b")], ids="late")
    svc.apply(Inputs(interactions=late))
    assert svc.state.store.get("u1") == [] and svc.state.store.get("u3") == []
    assert svc.state.is_forbidden("b")  # an old event does not make the item live again
    newer = _columns([("u1", "c"), ("u3", "b")], ids="new")
    newer.ts = [6_000, 6_001]
    svc.apply(Inputs(interactions=newer))
    assert svc.state.store.get("u1") == ["c"] and not svc.state.is_forbidden("b")
    svc.close()


def test_the_state_file_keeps_the_dedup_window_and_tombstones(tmp_path):
    svc = _service(tmp_path)
    svc.apply(Inputs(interactions=_columns([("u1", "a")])))
    svc.apply(_user_deletion("u1", ts=5_000))
    svc.save()
    svc.close()
    again = _service(tmp_path)
    again.apply(Inputs(interactions=_columns([("u1", "a")])))  # a duplicate, and stale
    late = _columns([("u1", "z")], ids="late")
    again.apply(Inputs(interactions=late))
    assert again.state.store.get("u1") == []
    again.save()
    again.finish_writing()
    text = again.state_file.read_text()
    assert "u1" not in text  # tombstones and event ids are keyed hashes
    again.close()


def test_a_format_2_state_file_loads_with_an_empty_window(tmp_path):
    state = ScorerState()
    data = state.to_dict()
    data["format"] = 2
    del data["dedup"], data["tombstones"]
    loaded = ScorerState.from_dict(data, state.keys)
    assert len(loaded.dedup) == 0 and loaded.tombstones == {}


def test_only_a_verified_newer_announcement_is_opened(tmp_path):
    svc = _service(tmp_path)
    key = update_key(svc.settings)
    (svc.settings.model_dir / "m.onnx").write_bytes(b"not a model")

    def update(version: str) -> ModelUpdate:
        return ModelUpdate(kind="crm-onnx", version=version, path="m.onnx", sha256="0" * 64, ts=1)

    svc.apply(Inputs(updates=[update("3")]))  # unsigned: refused
    assert svc._wanted is None
    svc.apply(Inputs(updates=[sign(update("3"), key), sign(update("2"), key)]))
    assert svc._wanted is not None and svc._wanted.version == "3"
    svc.tick()  # opened on the loader thread; a bad file is rejected, not served
    svc._swap[1].exception(timeout=30)
    svc.tick()
    assert svc.model is None
    svc.close()


def test_an_announcement_older_than_the_served_one_is_never_served_again(tmp_path):
    # an attacker re-publishes an old signed announcement: compaction may keep it alone,
    # and a restarted scorer replays model-updates from the start
    svc = _service(tmp_path)
    svc.state.served_version = 7  # as after serving version 7
    svc.save()
    svc.close()
    again = _service(tmp_path)
    key = update_key(again.settings)
    (again.settings.model_dir / "m.onnx").write_bytes(b"x")

    def update(version: str) -> ModelUpdate:
        return ModelUpdate(kind="crm-onnx", version=version, path="m.onnx", sha256="0" * 64, ts=1)

    again.apply(Inputs(updates=[sign(update("5"), key)]))
    assert again._wanted is None
    # the served one itself is taken again at a restart, and newer ones after it
    again.apply(Inputs(updates=[sign(update("7"), key)]))
    assert again._wanted is not None and again._wanted.version == "7"
    again.apply(Inputs(updates=[sign(update("8"), key)]))
    assert again._wanted.version == "8"
    again.close()


def test_exclude_seen_also_bans_what_imcorrect_holds_of_the_user(tmp_path):
    # a new replica's own store has not read the user's history yet; IMCorrect's snapshot has
    from models.imcorrect import IMCorrect
    from streams.scorer_models import IMCorrectView
    from streams.state import IdMap, WorkerState

    svc = _service(tmp_path)
    model = IMCorrect("ease", l2=1.0)
    model.learn([0, 0, 1, 1, 1], [0, 1, 1, 2, 3])
    state = WorkerState(
        model=model, users=IdMap(["alice", "bob"]), items=IdMap(["a", "b", "c", "d"])
    )
    svc._install_imcorrect(IMCorrectView(path=None, state=state))
    request = RecRequest(request_id="q", user_id="alice", k=4, ts=6, exclude_seen=True)
    answer = json.loads(svc.answer([request])[0])
    assert {"a", "b"}.isdisjoint(i["item_id"] for i in answer["items"]), answer
    keep_seen = request.model_copy(update={"exclude_seen": False})
    answer = json.loads(svc.answer([keep_seen])[0])
    assert {"a", "b"} <= {i["item_id"] for i in answer["items"]}
    svc.close()


def test_the_store_keeps_the_newest_history_and_a_saved_longer_one_is_cut(tmp_path):
    settings = LetheSettings(
        state_dir=tmp_path / "state", model_dir=tmp_path / "models", scorer={"max_history": 3}
    )
    svc = ScorerService(settings)
    svc.apply(Inputs(interactions=_columns([("u1", x) for x in "abcde"])))
    assert svc.state.store.get("u1") == ["c", "d", "e"]
    assert "a" not in svc.state.store.item_counts  # popularity counts what is held
    # no first log positions: an item that rolled out cannot outlive its only user here
    assert svc.state.store.item_first == {} and svc.state.store.user_first == {}
    svc.close()
    # a file saved without a bound (before there was one) is cut to the one configured now
    old = SequenceStore()
    for k, item in enumerate("abcdef"):
        old.add("u2", item, "t.interactions:0", k)
    data = {**ScorerState(svc.state.keys).to_dict(), "store": old.to_dict()}
    loaded = ScorerState.from_dict(data, svc.state.keys, max_history=2)
    assert loaded.store.get("u2") == ["e", "f"]
    assert sorted(loaded.store.item_counts) == ["e", "f"]
    assert loaded.store.item_first == {}  # the old file's positions are not kept either


def test_a_model_reading_longer_histories_raises_the_bound(tmp_path):
    from concurrent.futures import Future
    from types import SimpleNamespace

    from streams.scorer_models import ServedModel

    settings = LetheSettings(
        state_dir=tmp_path / "state", model_dir=tmp_path / "models", scorer={"max_history": 2}
    )
    svc = ScorerService(settings)
    session = SimpleNamespace(provider="CPUExecutionProvider")
    done: Future = Future()
    done.set_result(ServedModel("1", "0" * 64, session, ["a", "b"], max_len=4))
    update = ModelUpdate(kind="crm-onnx", version="1", path="m.onnx", sha256="0" * 64, ts=1)
    svc._install_model(update, done)
    svc.apply(Inputs(interactions=_columns([("u1", x) for x in "abcde"])))
    assert svc.state.store.get("u1") == ["b", "c", "d", "e"]
    svc.save()
    svc.close()
    again = ScorerService(settings)  # the raised bound survives a restart
    assert again.state.store.get("u1") == ["b", "c", "d", "e"]
    again.close()


def test_the_compact_state_file_round_trips_any_id(tmp_path):
    svc = _service(tmp_path)
    odd = [("ユーザー", "映画-1"), ("u\u2028x", 'q"\\'), ("emoji-🙂", "tab\there")]
    svc.apply(Inputs(interactions=_columns(odd)))
    svc.save()
    before = svc.state.store.to_dict()
    svc.close()
    again = _service(tmp_path)
    assert again.state.store.to_dict() == before
    assert again.state.store.get("ユーザー") == ["映画-1"]
    again.close()


class _HeldWrites:
    """Stands in for the scorer's file write: each write waits until released, and the
    file writes can be made to fail."""

    def __init__(self, monkeypatch) -> None:
        self.real = scorer_module.write_bytes_atomically
        self.release = threading.Event()
        self.started: list[str] = []
        self.fail = False
        monkeypatch.setattr(scorer_module, "write_bytes_atomically", self.write)

    def write(self, path, body: bytes) -> None:
        self.started.append(threading.current_thread().name)
        if not self.release.wait(10):
            raise TimeoutError("the test never released the write")
        if self.fail:
            raise OSError(28, "No space left on device")
        self.real(path, body)


def test_a_periodic_snapshot_is_written_off_the_serving_thread(tmp_path, monkeypatch):
    svc = _service(tmp_path)
    held = _HeldWrites(monkeypatch)
    svc.apply(Inputs(interactions=_columns([("u1", "a")])))
    svc.save()  # returns while the write waits
    assert not svc.state_file.exists()
    svc.apply(Inputs(interactions=_columns([("u2", "b")], ids="more")))  # serving goes on
    held.release.set()
    svc.finish_writing()
    saved = json.loads(svc.state_file.read_text())
    # the state as it was when save was called, not as it is now
    assert saved["store"]["sequences"] == {"u1": ["a"]}
    assert held.started and held.started[0].startswith("lethe-scorer-save")
    svc.close()


def test_a_snapshot_for_a_receipt_is_on_disk_when_save_returns(tmp_path, monkeypatch):
    svc = _service(tmp_path)
    held = _HeldWrites(monkeypatch)
    svc.apply(Inputs(interactions=_columns([("u1", "a"), ("u2", "b")])))
    svc.save()  # a periodic snapshot with u1 in it, still being written
    svc.apply(_user_deletion("u1", ts=5_000))
    done = threading.Event()
    receipt_save = threading.Thread(target=lambda: (svc.save(for_receipt=True), done.set()))
    receipt_save.start()
    time.sleep(0.3)
    assert not done.is_set()  # it waits for the write before it, then writes its own
    held.release.set()
    receipt_save.join(10)
    assert done.is_set()
    saved = json.loads(svc.state_file.read_text())
    assert "u1" not in saved["store"]["sequences"] and "u2" in saved["store"]["sequences"]
    assert not list(svc.state_file.parent.glob("*.tmp"))
    svc.close()


def test_a_failed_background_write_is_raised_at_the_next_snapshot(tmp_path, monkeypatch):
    svc = _service(tmp_path)
    held = _HeldWrites(monkeypatch)
    held.fail = True
    held.release.set()
    svc.apply(Inputs(interactions=_columns([("u1", "a")])))
    svc.save()
    with pytest.raises(OSError, match="No space left"):
        svc.save()
    held.fail = False
    svc.save(for_receipt=True)
    assert json.loads(svc.state_file.read_text())["store"]["sequences"] == {"u1": ["a"]}
    svc.close()


def test_close_waits_for_the_snapshot_being_written_and_raises_its_failure(tmp_path, monkeypatch):
    svc = _service(tmp_path)
    held = _HeldWrites(monkeypatch)
    svc.apply(Inputs(interactions=_columns([("u1", "a")])))
    svc.save()
    threading.Timer(0.2, held.release.set).start()
    svc.close()
    assert json.loads(svc.state_file.read_text())["store"]["sequences"] == {"u1": ["a"]}
    # a clean stop's snapshot that fails is the stop's failure (exit code), not a log line
    again = _service(tmp_path)
    held.fail = True
    again.apply(Inputs(interactions=_columns([("u2", "b")], ids="more")))
    again.save()
    with pytest.raises(OSError, match="No space left"):
        again.close()
    assert json.loads(again.state_file.read_text())["store"]["sequences"] == {"u1": ["a"]}


def test_a_half_written_state_file_of_a_killed_run_is_removed_at_start(tmp_path):
    folder = tmp_path / "state" / "scorer"
    folder.mkdir(parents=True)
    leftover = folder / ".state.json.k1ll3d.tmp"  # what atomic_write leaves at a SIGKILL
    leftover.write_text('{"store": {"sequences": {"forgotten-user": ["a"]}}}')
    other = folder / "notes.tmp"  # not a temp file of the state: left alone
    other.write_text("x")
    svc = _service(tmp_path)
    assert not leftover.exists() and other.exists()
    svc.close()
