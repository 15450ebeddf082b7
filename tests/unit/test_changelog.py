"""The IMCorrect change log's records: slicing, decoding, and merging back into steps."""

from __future__ import annotations

import msgspec
import pytest

from streams.config import LimitSettings
from streams.contracts import DeletionRequest
from streams.runtime.changelog import (
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
    assert len(values) > 5 and all(len(v) <= 64_000 for v in values)
    records = [msgspec.msgpack.decode(v, type=StepRecord) for v in values]
    # deletions, offsets and dead letters travel with the last slice only
    assert all(not r.deletions and not r.offsets and r.dead == 0 for r in records[:-1])
    (step,) = merge_steps(_entries(values, first_offset=40), LOG, max_events=10**6)
    assert isinstance(step, LoggedStep)
    got = step.inputs
    assert got.interactions.event_ids == inputs.interactions.event_ids
    assert got.interactions.user_ids == inputs.interactions.user_ids
    assert got.interactions.item_ids == inputs.interactions.item_ids
    assert got.interactions.ts == inputs.interactions.ts
    assert got.deletions == inputs.deletions
    assert got.deletion_sources == inputs.deletion_sources
    assert got.offsets == {**inputs.offsets, LOG: 40 + len(values)}
    assert step.dead == 3 and step.last_offset == 40 + len(values) - 1


def test_interactions_after_a_deletion_never_merge_before_it():
    values = step_records(_inputs(10, deletions=1, tag="a"), 0, 1 << 20)
    values += step_records(_inputs(10, tag="b"), 0, 1 << 20)
    steps = merge_steps(_entries(values), LOG, max_events=10**6)
    assert [len(s.inputs.interactions) for s in steps] == [10, 10]
    assert [len(s.inputs.deletions) for s in steps] == [1, 0]
    assert steps[0].inputs.offsets[LOG] == 1 and steps[1].inputs.offsets[LOG] == 2


def test_steps_without_deletions_merge_up_to_the_batch_limit():
    values = []
    for tag in "abcd":
        values += step_records(_inputs(10, tag=tag), 0, 1 << 20)
    steps = merge_steps(_entries(values), LOG, max_events=20)
    assert [len(s.inputs.interactions) for s in steps] == [20, 20]


def test_a_marker_stays_between_the_steps_around_it():
    values = step_records(_inputs(3, tag="a"), 0, 1 << 20)
    values.append(encode(PublishedRecord(receipts=[("r1", "applied")])))
    values += step_records(_inputs(3, tag="b"), 0, 1 << 20)
    units = merge_steps(_entries(values), LOG, max_events=10**6)
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
