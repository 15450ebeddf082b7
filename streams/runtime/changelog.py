"""The IMCorrect change log: what the elected writer orders, every replica applies.

One record is either a *step* (a slice of a runtime step: valid interactions as columns, the
deletions the barrier released after them, and the input offsets the step moves) or a
*published* marker (the receipts the writer published in the same transaction). The log has
one partition, so every replica applies the same records in the same order, assigns the same
indices to new users and items and holds the same matrices (docs/scale-out.md).

Encoded with msgpack (msgspec): a step of 10⁴ events is a few hundred kB. Steps larger than
the topic's message limit are cut into slices; a replica merges consecutive slices again
(:func:`merge_steps`), so a backlog is still one correction of the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from streams.config import LimitSettings
from streams.contracts import DeletionRequest
from streams.services.base import Inputs
from streams.services.batch import InteractionColumns


class StepRecord(msgspec.Struct, tag="step", gc=False):
    event_ids: list[str]
    user_ids: list[str]
    item_ids: list[str]
    ts: list[int]
    #: released deletions (the contract's JSON), after every interaction above
    deletions: list[bytes] = []
    deletion_sources: list[tuple[str, int]] = []
    #: input "topic:partition" → next offset once this record is applied
    offsets: dict[str, int] = {}
    #: input records dead-lettered by the writer in this step (replicas count them too)
    dead: int = 0


class PublishedRecord(msgspec.Struct, tag="published"):
    #: (request_id, status) of the receipts published in this record's transaction
    receipts: list[tuple[str, str]]


LogRecord = StepRecord | PublishedRecord

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(LogRecord)
#: bytes per event assumed when slicing (ids are bounded; this errs on the large side)
_EVENT_BYTES_GUESS = 3 * 64 + 16


class LogDecodeError(ValueError):
    """A record on the change log that no writer of this version wrote."""


def encode(record: LogRecord) -> bytes:
    return _ENCODER.encode(record)


@dataclass(frozen=True)
class Entry:
    """One decoded log record at its offset (a step's deletions parsed by the contract)."""

    offset: int
    record: LogRecord
    deletions: list[DeletionRequest] = field(default_factory=list)


def decode(offset: int, value: bytes | None, limits: LimitSettings) -> Entry:
    """Decode a log record; :class:`LogDecodeError` for bytes no writer wrote."""
    if value is None:
        raise LogDecodeError("an empty record")
    try:
        record = _DECODER.decode(value)
        if isinstance(record, PublishedRecord):
            return Entry(offset, record)
        ctx = {"limits": limits}
        deletions = [DeletionRequest.model_validate_json(d, context=ctx) for d in record.deletions]
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise LogDecodeError(str(exc)[:300]) from exc
    if not (
        len(record.event_ids) == len(record.user_ids) == len(record.item_ids) == len(record.ts)
    ):
        raise LogDecodeError("columns of unequal length")
    return Entry(offset, record, deletions)


def step_records(inputs: Inputs, dead: int, max_bytes: int) -> list[bytes]:
    """One runtime step as log records of at most about ``max_bytes`` each: interactions in
    slices, the deletions and the offsets with the last slice."""
    cols = inputs.interactions
    n = len(cols)
    per = max(1, (max_bytes // 2) // _EVENT_BYTES_GUESS)
    cuts = list(range(0, n, per)) or [0]
    out = []
    for start in cuts:
        stop = min(n, start + per)
        last = start == cuts[-1]
        record = StepRecord(
            event_ids=cols.event_ids[start:stop],
            user_ids=cols.user_ids[start:stop],
            item_ids=cols.item_ids[start:stop],
            ts=cols.ts[start:stop],
            deletions=[d.model_dump_json().encode() for d in inputs.deletions] if last else [],
            deletion_sources=list(inputs.deletion_sources) if last else [],
            offsets=dict(inputs.offsets) if last else {},
            dead=dead if last else 0,
        )
        out.append(encode(record))
    return out


@dataclass
class LoggedStep:
    """Consecutive step records merged into one service step."""

    inputs: Inputs = field(default_factory=Inputs)
    dead: int = 0
    #: log offset of the last record merged (a receipt is due once every replica is past it)
    last_offset: int = -1


def merge_steps(entries: list[Entry], log_key: str, max_events: int) -> list[LoggedStep | Entry]:
    """Group entries, in order, into service steps: consecutive steps merge while the merged
    one has no deletion yet (a service applies a step's interactions before its deletions)
    and stays under ``max_events``; markers stay where they are."""
    out: list[LoggedStep | Entry] = []
    current: LoggedStep | None = None
    for entry in entries:
        if isinstance(entry.record, PublishedRecord):
            current = None
            out.append(entry)
            continue
        full = current is not None and len(current.inputs.interactions) >= max_events
        if current is None or current.inputs.deletions or full:
            current = LoggedStep()
            out.append(current)
        _fold(current, entry, log_key)
    return out


def _fold(step: LoggedStep, entry: Entry, log_key: str) -> None:
    offset, record = entry.offset, entry.record
    assert isinstance(record, StepRecord)
    inputs = step.inputs
    cols = inputs.interactions
    base = len(cols)
    cols.extend(
        InteractionColumns(
            positions=list(range(base, base + len(record.event_ids))),
            event_ids=record.event_ids,
            user_ids=record.user_ids,
            item_ids=record.item_ids,
            ts=record.ts,
        )
    )
    inputs.deletions.extend(entry.deletions)
    inputs.deletion_sources.extend(tuple(s) for s in record.deletion_sources)
    inputs.offsets.update(record.offsets)
    inputs.offsets[log_key] = offset + 1
    step.dead += record.dead
    step.last_offset = offset
