"""The runtime's Kafka-free parts: the batch decoder against the contract, dead letters that
always fit, the ordered barrier, the state-folder lock, snapshots without the mapping."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.imcorrect import IMCorrect
from streams.config import LimitSettings
from streams.contracts import (
    ContractError,
    DeadLetter,
    DeletionRequest,
    InteractionEvent,
    decode,
)
from streams.runtime.barrier import Held, OrderedBarrier
from streams.runtime.deadletter import MAX_KEY_BYTES, bounded_key, dead_letter_bytes
from streams.runtime.decode import decode_interactions, decode_one, reference_ms
from streams.runtime.lock import StateLock

LIMITS = LimitSettings(max_id_length=16)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.text(st.characters(categories=["Cs", "Ll"]), max_size=4),  # lone surrogates, escaped
)
field_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=2))
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.text(min_size=0, max_size=20), field_values),
        "user_id": st.one_of(st.text(min_size=0, max_size=20), field_values),
        "item_id": st.one_of(st.text(min_size=0, max_size=20), field_values),
        "ts": st.one_of(st.integers(min_value=-5, max_value=10**15), field_values),
        "kind": st.one_of(st.sampled_from(["view", "rating", "teleport"]), field_values),
        "value": field_values,
        "extra": field_values,
    },
)


ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=18)
nearly_valid = st.builds(
    lambda base, name, value, drop: ({k: v for k, v in {**base, name: value}.items() if k != drop}),
    st.fixed_dictionaries(
        {"event_id": ids, "user_id": ids, "item_id": ids, "ts": st.integers(0, 10**12)},
        optional={"kind": st.sampled_from(["view", "rating"]), "value": st.floats(-5, 5)},
    ),
    st.sampled_from(["event_id", "user_id", "item_id", "ts", "kind", "value", "extra"]),
    st.one_of(field_values, ids),
    st.sampled_from([None, None, None, "user_id", "ts"]),
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(event_like, nearly_valid))
def test_the_fast_decoder_accepts_exactly_what_the_contract_accepts(obj):
    raw = json.dumps(obj).encode()
    cols, rejected = decode_interactions([raw], LIMITS)
    try:
        event = decode(InteractionEvent, raw, LIMITS)
    except ContractError as exc:
        assert len(cols) == 0 and len(rejected) == 1
        assert rejected[0].error.field == exc.field or rejected[0].error.field in str(exc)
        return
    assert len(cols) == 1, f"contract accepts, fast path refused: {rejected[0].error}"
    assert (cols.event_ids[0], cols.user_ids[0], cols.item_ids[0], cols.ts[0]) == (
        event.event_id,
        event.user_id,
        event.item_id,
        event.ts,
    )


_BASE = b'{"event_id":"a","user_id":"b","item_id":"c","ts":1,"extra":'


@pytest.mark.parametrize(
    "raw",
    [
        _BASE + b'"\xff\xfe"}',  # invalid UTF-8 where msgspec only skips
        _BASE + b"9" * 5_000 + b"}",  # past Python's 4,300-digit int limit
        _BASE + b'"\\ud800"}',  # an escaped lone surrogate msgspec refuses
        _BASE + b'"caf\xc3\xa9"}',  # valid UTF-8, not ASCII
        _BASE + b'"' + b"x" * 6_000 + b'"}',  # long, through the contract
    ],
)
def test_unknown_fields_get_the_contracts_verdict(raw):
    cols, rejected = decode_interactions([raw], LIMITS)
    try:
        decode(InteractionEvent, raw, LIMITS)
    except ContractError as exc:
        assert len(cols) == 0 and rejected[0].error.field == exc.field
        return
    assert len(cols) == 1 and cols.event_ids == ["a"], rejected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_no_bytes_make_the_decoder_raise(raw):
    cols, rejected = decode_interactions([raw, None], LIMITS)
    assert len(cols) + len(rejected) == 2


def test_hostile_values_are_rejected_with_a_reason_not_an_exception():
    hostile = [
        b"[" * 200_000,
        b'{"event_id":"a","user_id":"b","item_id":"c","ts":' + b"9" * 10_000 + b"}",
        b'{"event_id":"a","user_id":"\\udfff","item_id":"c","ts":1}',
        b"\x00" * 100,
        json.dumps({"event_id": "a", "user_id": "b", "item_id": "c", "ts": 1}).encode("utf-32"),
    ]
    cols, rejected = decode_interactions(hostile, LIMITS)
    assert len(cols) == 0 and [r.position for r in rejected] == list(range(len(hostile)))
    assert all(isinstance(r.error, ContractError) for r in rejected)


def test_timestamps_beyond_the_allowed_skew_are_refused_by_both_paths():
    now = int(time.time() * 1000)
    ok = {"event_id": "a", "user_id": "b", "item_id": "c", "ts": now + 1000}
    late = {**ok, "ts": now + LIMITS.max_future_skew_ms + 60_000}
    cols, rejected = decode_interactions(
        [json.dumps(ok).encode(), json.dumps(late).encode()], LIMITS
    )
    assert cols.positions == [0] and rejected[0].error.field == "ts"
    with pytest.raises(ContractError, match="^ts"):
        decode(InteractionEvent, json.dumps(late).encode(), LIMITS)


class _Stamped:
    def __init__(self, kind: int, ms: int) -> None:
        self.stamp = (kind, ms)

    def timestamp(self) -> tuple[int, int]:
        return self.stamp


def test_a_records_ts_bound_comes_from_its_append_time_not_the_reading_clock():
    appended = 1_800_000_000_000
    skew = LIMITS.max_future_skew_ms
    body = {"event_id": "a", "user_id": "b", "item_id": "c"}
    inside = json.dumps({**body, "ts": appended + skew}).encode()
    past = json.dumps({**body, "ts": appended + skew + 1}).encode()
    ref = reference_ms(_Stamped(2, appended), now_ms=appended + 10**9)
    assert ref == appended
    # live, hours later while catching up, or after a restart: the same verdicts
    for now in (appended, appended + 3_600_000, appended + 10**9):
        cols, rejected = decode_interactions([inside, past], LIMITS, now, [ref, ref])
        assert cols.positions == [0] and [r.position for r in rejected] == [1]
        assert rejected[0].error.field == "ts"
    # a producer's own stamp counts only up to the reader's clock; none: the clock
    assert reference_ms(_Stamped(1, appended + 60_000), now_ms=appended) == appended
    assert reference_ms(_Stamped(1, appended - 5), now_ms=appended) == appended - 5
    assert reference_ms(_Stamped(0, -1), now_ms=appended) == appended
    deletion = {"request_id": "r", "scope": "user", "user_id": "b", "reason": "privacy"}
    raw = json.dumps({**deletion, "ts": skew + 1}).encode()
    assert decode_one(DeletionRequest, raw, LIMITS).ts == skew + 1  # by the wall clock
    with pytest.raises(ContractError, match="^ts"):
        decode_one(DeletionRequest, raw, LIMITS, 0)  # appended at time 0


@pytest.mark.parametrize("size", [0, 10, 700_000, 1_048_576, 3_000_000])
def test_a_dead_letter_always_fits_and_identifies_its_value(size):
    raw = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    value = dead_letter_bytes(
        topic="t",
        partition=1,
        offset=7,
        key=b"k" * (MAX_KEY_BYTES + 1),
        value=raw,
        error="message: " + "x" * 50_000,
        max_message_bytes=1_048_576,
    )
    assert len(value) <= 1_048_576
    letter = DeadLetter.model_validate_json(value)
    kept = base64.b64decode(letter.raw_value_b64)
    assert letter.raw_length == size and raw.startswith(kept)
    if letter.truncated:
        assert letter.raw_sha256 == hashlib.sha256(raw).hexdigest()
    else:
        assert kept == raw
    assert letter.key.startswith("sha256:") and len(letter.error) <= 1000
    assert bounded_key(b"short") == b"short"


@pytest.mark.parametrize("size", [1_040_000, 1_048_576])
def test_a_dead_letter_with_an_escaped_key_and_reason_still_fits_with_its_key(size):
    # a key of control bytes just under the digest threshold is kept as is, and JSON writes
    # each byte as six (\u0001); the record's own key counts against the limit too
    key = b"\x01" * MAX_KEY_BYTES
    value = dead_letter_bytes(
        topic="t",
        partition=0,
        offset=1,
        key=key,
        value=b"\x02" * size,
        error="\x03" * 5_000,
        max_message_bytes=1_048_576,
    )
    assert len(value) + len(bounded_key(key)) <= 1_048_576 - 512
    letter = DeadLetter.model_validate_json(value)
    assert letter.truncated and letter.key == key.decode()


def test_the_barrier_releases_in_read_order_once_each_one_is_reached():
    barrier = OrderedBarrier()
    barrier.hold(Held("d:0", 5, "first", {"i:0": 10, "i:1": 3}))
    barrier.hold(Held("d:0", 6, None, {"i:0": 12}))
    barrier.hold(Held("d:0", 7, "third", {"i:0": 11}))
    assert barrier.release({"i:0": 10, "i:1": 2}) == []
    assert [h.offset for h in barrier.release({"i:0": 11, "i:1": 3})] == [5]
    # the third's offsets are reached, but the second (a malformed one) comes first
    assert barrier.release({"i:0": 11, "i:1": 3}) == []
    assert [h.offset for h in barrier.release({"i:0": 12, "i:1": 3})] == [6, 7]
    assert len(barrier) == 0


def test_a_state_folder_is_owned_by_one_process(tmp_path):
    lock = StateLock(tmp_path, "imcorrect", exit_on_conflict=False)
    code = (
        "import sys; from streams.runtime.lock import StateLock;"
        f"StateLock({str(tmp_path)!r}, 'imcorrect')"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode == 3 and "in use by pid" in other.stderr
    with pytest.raises(RuntimeError, match="one process per folder"):
        StateLock(tmp_path, "imcorrect", exit_on_conflict=False)
    lock.release()
    StateLock(tmp_path, "imcorrect", exit_on_conflict=False).release()


def test_a_standby_waits_for_the_folder_and_takes_it_over_when_the_holder_dies(tmp_path):
    code = (
        "import sys, time; from streams.runtime.lock import StateLock;"
        f"StateLock({str(tmp_path)!r}, 'trainer'); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        asked = []

        def stop_after_three() -> bool:  # the standby checks while it waits
            asked.append(1)
            return len(asked) >= 3

        gave_up = StateLock(tmp_path, "trainer", wait=True, stopped=stop_after_three)
        assert not gave_up.held and len(asked) == 3
        holder.kill()  # SIGKILL: the OS frees the lock
        holder.wait()
        took = StateLock(tmp_path, "trainer", wait=True)
        assert took.held
        assert (tmp_path / "trainer" / ".lock").read_text() == str(os.getpid())
        took.release()
    finally:
        holder.kill()


@pytest.mark.parametrize("mapping", ["ease", "itemknn", "gfcf"])
def test_a_snapshot_without_the_mapping_reloads_to_the_same_model(tmp_path, mapping):
    rng = np.random.default_rng(3)
    x = sp.random(60, 25, density=0.2, random_state=4, format="csr")
    x.data[:] = 1.0
    model = IMCorrect(mapping).fit(x)
    model.learn(rng.integers(0, 70, 30), rng.integers(0, 25, 30))
    model.forget(users=[1, 2])
    model.save(tmp_path / "m", with_mapping=False)
    with np.load(tmp_path / "m.npz") as arrays:
        assert not [k for k in arrays.files if k.startswith("map_")]
    loaded = IMCorrect.load(tmp_path / "m")
    assert loaded.version == model.version
    np.testing.assert_allclose(loaded.mapping, model.mapping, atol=1e-10)


def test_the_dedup_window_forgets_the_oldest_first_and_round_trips():
    from streams.state import DedupWindow

    window = DedupWindow(3)
    assert [window.seen(h) for h in [1, 2, 1, 3, 4, 1, 2]] == [F, F, True, F, F, F, F]
    assert window.array().tolist() == [4, 1, 2] and len(window) == 3
    again = DedupWindow(3, window.array())
    assert 4 in again and 1 in again and 2 in again and 3 not in again
    assert again.seen(2) and not again.seen(3) and again.array().tolist() == [1, 2, 3]
    assert DedupWindow(5, np.array([7, 2**64 - 1], dtype=np.uint64)).array().tolist() == [
        7,
        2**64 - 1,
    ]


F = False


@pytest.mark.parametrize("kind", ["imcorrect", "trainer", "scorer"])
def test_a_second_worker_on_the_same_state_folder_exits_at_once(tmp_path, kind):
    held = StateLock(tmp_path, kind, exit_on_conflict=False)
    env = {**os.environ, "LETHE_STATE_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": "127.0.0.1:9"}
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker", kind],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    held.release()
    assert second.returncode == 3, second.stderr[-2000:]
    assert "in use by pid" in second.stderr and time.monotonic() - started < 30


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 6),
    st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=7), min_size=1, max_size=8),
)
def test_the_dedup_window_answers_like_one_evicting_one_by_one(capacity, chunks):
    from collections import OrderedDict

    from streams.state import DedupWindow

    reference: OrderedDict[int, None] = OrderedDict()
    window = DedupWindow(capacity)
    for chunk in chunks:
        expected = []
        for k, h in enumerate(chunk):
            if h not in reference:
                expected.append(k)
                reference[h] = None
                if len(reference) > capacity:
                    reference.popitem(last=False)
        assert window.filter_new(chunk) == expected
        assert window.array().tolist() == list(reference)
        window = DedupWindow(capacity, window.array())  # a restart from the snapshot
