"""The IMCorrect change log's records: slicing, decoding, and merging back into steps."""

from __future__ import annotations

import msgspec
import pytest

from streams.config import LimitSettings
from streams.contracts import DeletionRequest
from streams.runtime.changelog import (
    Entry,
    LogDecodeError,
    LoggedStep,
    PublishedRecord,
    StepRecord,
    decode,
    encode,
    merge_steps,
    step_records,
)
from streams.services.base import Inputs
from streams.services.batch import InteractionColumns

LIMITS = LimitSettings()
LOG = "p.imcorrect-log:0"


def _inputs(n: int, deletions: int = 0, tag: str = "") -> Inputs:
    cols = InteractionColumns(
        positions=list(range(n)),
        event_ids=[f"e{tag}{i}" for i in range(n)],
        user_ids=[f"u{i % 7}" for i in range(n)],
        item_ids=[f"i{i % 11}" for i in range(n)],
        ts=[1_000 + i for i in range(n)],
    )
    dels = [
        DeletionRequest(request_id=f"r{tag}{k}", scope="user", reason="privacy", ts=5, user_id="u1")
        for k in range(deletions)
    ]
    return Inputs(
        interactions=cols,
        deletions=dels,
        deletion_sources=[("p.deletions:0", k) for k in range(deletions)],
        offsets={"p.interactions:0": n, "p.deletions:0": deletions},
    )


def _entries(values: list[bytes], first_offset: int = 0):
    return [decode(first_offset + k, v, LIMITS) for k, v in enumerate(values)]


def test_a_large_step_is_sliced_and_merged_back_whole():
    inputs = _inputs(5_000, deletions=2)
    values = step_records(inputs, dead=3, max_bytes=64_000)
    assert len(values) > 2 and all(len(v) <= 64_000 for v in values)
    records = [msgspec.msgpack.decode(v, type=StepRecord) for v in values]
    # offsets, dead letters and the end of the step travel with the last record only
    assert all(not r.offsets and r.dead == 0 and not r.last for r in records[:-1])
    assert records[-1].last and records[-1].deletions
    (step,), partial = merge_steps(_entries(values, first_offset=40), LOG)
    assert isinstance(step, LoggedStep) and partial == []
    got = step.inputs
    assert got.interactions.event_ids == inputs.interactions.event_ids
    assert got.interactions.user_ids == inputs.interactions.user_ids
    assert got.interactions.item_ids == inputs.interactions.item_ids
    assert got.interactions.ts == inputs.interactions.ts
    assert got.deletions == inputs.deletions
    assert got.deletion_sources == inputs.deletion_sources
    assert got.offsets == {**inputs.offsets, LOG: 40 + len(values)}
    assert step.dead == 3 and step.last_offset == 40 + len(values) - 1


def test_each_writer_step_is_applied_as_one_step():
    values = step_records(_inputs(10, deletions=1, tag="a"), 0, 1 << 20)
    values += step_records(_inputs(10, tag="b"), 0, 1 << 20)
    steps, partial = merge_steps(_entries(values), LOG)
    assert partial == []
    assert [len(s.inputs.interactions) for s in steps] == [10, 10]
    assert [len(s.inputs.deletions) for s in steps] == [1, 0]
    assert steps[0].inputs.offsets[LOG] == 1 and steps[1].inputs.offsets[LOG] == 2


def test_a_step_whose_last_slice_is_not_read_yet_waits():
    values = step_records(_inputs(3_000, deletions=1), 0, 40_000)
    assert len(values) > 2
    entries = _entries(values)
    steps, partial = merge_steps(entries[:-1], LOG)
    assert steps == [] and partial == entries[:-1]
    (step,), partial = merge_steps(partial + entries[-1:], LOG)
    assert len(step.inputs.interactions) == 3_000 and partial == []


def test_records_stay_under_the_limit_with_long_non_ascii_ids_and_many_deletions():
    n = 2_000
    cols = InteractionColumns(
        positions=list(range(n)),
        event_ids=["é" * 128 + str(i) for i in range(n)],
        user_ids=["ü" * 128] * n,
        item_ids=["漢" * 128] * n,
        ts=[1] * n,
    )
    dels = [
        DeletionRequest(
            request_id=f"r{k}",
            scope="interactions",
            reason="privacy",
            ts=5,
            user_id="u" * 128,
            item_ids=["i" * 128] * 200,
        )
        for k in range(20)
    ]
    inputs = Inputs(
        interactions=cols,
        deletions=dels,
        deletion_sources=[("p.deletions:0", k) for k in range(20)],
        offsets={"p.interactions:0": n},
    )
    limit = 64 * 1024
    values = step_records(inputs, dead=0, max_bytes=limit)
    assert max(len(v) for v in values) <= limit
    (step,), _ = merge_steps(_entries(values), LOG)
    assert step.inputs.interactions.item_ids == cols.item_ids
    assert step.inputs.deletions == dels


def test_a_foreign_record_only_moves_the_offset():
    values = step_records(_inputs(3, tag="a"), 0, 1 << 20)
    entries = _entries(values) + [Entry(1, None)]
    steps, _ = merge_steps(entries, LOG)
    assert [s.inputs.offsets[LOG] for s in steps] == [1, 2]
    assert len(steps[1].inputs.interactions) == 0 and not steps[1].inputs


def test_a_marker_stays_between_the_steps_around_it():
    values = step_records(_inputs(3, tag="a"), 0, 1 << 20)
    values.append(encode(PublishedRecord(receipts=[("r1", "applied")])))
    values += step_records(_inputs(3, tag="b"), 0, 1 << 20)
    units, _ = merge_steps(_entries(values), LOG)
    assert [type(u).__name__ for u in units] == ["LoggedStep", "Entry", "LoggedStep"]
    assert units[1].offset == 1 and units[1].record.receipts == [("r1", "applied")]


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"\xff\x00garbage",
        b'{"json": "is not msgpack"}',
        encode(StepRecord(event_ids=["e"], user_ids=[], item_ids=["i"], ts=[1])),
        encode(StepRecord(event_ids=[], user_ids=[], item_ids=[], ts=[], deletions=[b"{}"])),
    ],
)
def test_bytes_no_writer_wrote_are_refused(value):
    with pytest.raises(LogDecodeError):
        decode(0, value, LIMITS)


def test_a_refused_deletion_in_the_log_names_no_raw_id():
    # the message reaches the writer's log and the dead letter's reason
    bad = b'{"request_id": "r", "scope": "user", "user_id": " alice@example.com",'
    bad += b' "reason": "privacy", "ts": 1}'
    record = StepRecord(event_ids=[], user_ids=[], item_ids=[], ts=[], deletions=[bad])
    with pytest.raises(LogDecodeError) as err:
        decode(0, encode(record), LIMITS)
    assert "alice" not in str(err.value) and "user_id" in str(err.value)
