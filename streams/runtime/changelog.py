"""The IMCorrect change log: what the elected writer orders, every replica applies.

One record is either a *step* (a slice of a runtime step: valid interactions as columns, the
deletions the barrier released after them, and the input offsets the step moves) or a
*published* marker (the receipts the writer published in the same transaction). The log has
one partition, so every replica applies the same records in the same order, assigns the same
indices to new users and items and holds the same matrices (docs/scale-out.md).

Encoded with msgpack (msgspec). A step larger than the topic's message limit is cut into
slices, all in one transaction; a replica applies the writer's step whole again
(:func:`merge_steps`), so every replica makes the same calls on its model as the writer's
step boundaries dictate (a backlog stays one correction of the mapping).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from pydantic import ValidationError

from streams.config import LimitSettings
from streams.contracts import DeletionRequest, describe_error
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
    #: the writer's step ends with this record: a replica applies a writer step whole, as
    #: one service step, so every replica makes the same calls and reaches the same version
    last: bool = False


class PublishedRecord(msgspec.Struct, tag="published"):
    #: (request_id, status) of the receipts published in this record's transaction
    receipts: list[tuple[str, str]]


LogRecord = StepRecord | PublishedRecord

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(LogRecord)
#: room in a record for its fixed fields, the offsets map and msgpack's framing
_RECORD_OVERHEAD = 16_384
#: what a record on the log is checked against: the same for every replica whatever its own
#: settings (a replica stricter than the writer would otherwise drop a genuine step)
LOG_LIMITS = LimitSettings(max_id_length=4096, max_item_ids_per_deletion=10**9)


class LogDecodeError(ValueError):
    """A record on the change log that no writer of this version wrote."""


def encode(record: LogRecord) -> bytes:
    return _ENCODER.encode(record)


@dataclass(frozen=True)
class Entry:
    """One decoded log record at its offset (a step's deletions parsed by the contract)."""

    offset: int
    #: None: bytes no writer wrote (passed over alike by every replica)
    record: LogRecord | None
    deletions: list[DeletionRequest] = field(default_factory=list)


def decode(offset: int, value: bytes | None, limits: LimitSettings = LOG_LIMITS) -> Entry:
    """Decode a log record; :class:`LogDecodeError` for bytes no writer wrote."""
    if value is None:
        raise LogDecodeError("an empty record")
    try:
        record = _DECODER.decode(value)
        if isinstance(record, PublishedRecord):
            return Entry(offset, record)
        ctx = {"limits": limits}
        deletions = [DeletionRequest.model_validate_json(d, context=ctx) for d in record.deletions]
    except ValidationError as exc:  # a deletion's contract: its message names no value
        raise LogDecodeError(describe_error(exc)[0][:300]) from exc
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise LogDecodeError(str(exc)[:300]) from exc
    if not (
        len(record.event_ids) == len(record.user_ids) == len(record.item_ids) == len(record.ts)
    ):
        raise LogDecodeError("columns of unequal length")
    return Entry(offset, record, deletions)


def step_records(inputs: Inputs, dead: int, max_bytes: int) -> list[bytes]:
    """One runtime step as log records of at most ``max_bytes`` each: the interactions in
    slices, then the deletions; the step's offsets, dead letters and ``last`` flag on the
    final record. Sizes are bounded from the encoded lengths (msgpack adds at most 5 bytes
    of header per string and 9 per integer), so no record exceeds the limit."""
    cols = inputs.interactions
    budget = max(1024, max_bytes - _RECORD_OVERHEAD)
    records: list[StepRecord] = []
    start, size = 0, 0
    for k in range(len(cols)):
        event = _encoded_len(cols.event_ids[k], cols.user_ids[k], cols.item_ids[k]) + 9
        if k > start and size + event > budget:
            records.append(_slice(cols, start, k))
            start, size = k, 0
        size += event
    if len(cols) > start or not records:
        records.append(_slice(cols, start, len(cols)))
    size = 0
    for request, source in zip(inputs.deletions, inputs.deletion_sources, strict=True):
        body = request.model_dump_json().encode()
        item = len(body) + 5 + _encoded_len(source[0]) + 9
        if size + item > budget and (records[-1].deletions or records[-1].event_ids):
            records.append(_slice(cols, 0, 0))
            size = 0
        records[-1].deletions.append(body)
        records[-1].deletion_sources.append(source)
        size += item
    final = records[-1]
    final.offsets, final.dead, final.last = dict(inputs.offsets), dead, True
    return [encode(r) for r in records]


def _encoded_len(*texts: str) -> int:
    return sum(len(t.encode("utf-8", "surrogatepass")) + 5 for t in texts)


def _slice(cols: InteractionColumns, start: int, stop: int) -> StepRecord:
    return StepRecord(
        event_ids=cols.event_ids[start:stop],
        user_ids=cols.user_ids[start:stop],
        item_ids=cols.item_ids[start:stop],
        ts=cols.ts[start:stop],
        deletions=[],
        deletion_sources=[],
    )


@dataclass
class LoggedStep:
    """Consecutive step records merged into one service step."""

    inputs: Inputs = field(default_factory=Inputs)
    dead: int = 0
    #: log offset of the last record merged (a receipt is due once every replica is past it)
    last_offset: int = -1


def merge_steps(entries: list[Entry], log_key: str) -> tuple[list[LoggedStep | Entry], list[Entry]]:
    """Group entries, in order, into the writer's steps (each closed by its ``last``
    record) and markers; returns those and the entries of a step not complete yet (the rest
    of its transaction comes with the next read). A foreign record only moves the offset."""
    out: list[LoggedStep | Entry] = []
    current: LoggedStep | None = None
    opened = 0  # index in entries where the open step began
    for k, entry in enumerate(entries):
        if isinstance(entry.record, PublishedRecord):
            out.append(entry)
            continue
        if current is None:
            current, opened = LoggedStep(), k
        _fold(current, entry, log_key)
        if entry.record is None and opened == k:
            out.append(current)  # a foreign record on its own: a step that moves the offset
            current = None
        elif entry.record is not None and entry.record.last:
            out.append(current)
            current = None
    return out, ([] if current is None else entries[opened:])


def _fold(step: LoggedStep, entry: Entry, log_key: str) -> None:
    offset, record = entry.offset, entry.record
    step.last_offset = offset
    step.inputs.offsets[log_key] = offset + 1
    if record is None:
        return
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
