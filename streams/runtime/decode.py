"""Batch decoding of input records: the fast path for interactions, the one door for the rest.

``interactions`` is the hot topic: its values are decoded and validated by msgspec (C code,
no intermediate Python dicts) into columns, then the id rules of the contract are checked.
A value the fast path refuses is decoded once more by :func:`streams.contracts.decode` so
that its dead letter carries the contract's own error message; the fast path never accepts
a value the contract refuses (a property test holds the two together). Other topics are
rare and go through :func:`streams.contracts.decode` directly.

Nothing here raises on input bytes: every defect becomes a :class:`Rejected` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from streams.config import LimitSettings
from streams.contracts import (
    ContractError,
    decode,
    future_ts_problem,
    id_problem,
    newest_accepted_ts,
)
from streams.services.batch import InteractionColumns

#: longer values go through the contract: a number msgspec skips in an unknown field may have
#: more digits than Python's int conversion allows (4,300), which only a long value can hold
_FAST_MAX_BYTES = 4096


class _Interaction(msgspec.Struct, frozen=True, gc=False):
    # gc=False: strings and numbers only, no cycles; tracking 10⁵ of them per batch made
    # the collector run again and again
    # the contract's bounds that need no settings; id length and timestamps are checked after
    event_id: Annotated[str, msgspec.Meta(min_length=1)]
    user_id: Annotated[str, msgspec.Meta(min_length=1)]
    item_id: Annotated[str, msgspec.Meta(min_length=1)]
    ts: Annotated[int, msgspec.Meta(ge=0, le=10**14)]
    kind: Literal["view", "click", "cart", "purchase", "rating"] = "view"
    value: float | None = None


_DECODER = msgspec.json.Decoder(_Interaction)


@dataclass
class Rejected:
    """An input record that failed decoding or validation, and why."""

    position: int  # index of the record in the batch handed to the decoder
    error: ContractError


#: librdkafka's timestamp types (``Message.timestamp()[0]``)
_CREATE_TIME, _LOG_APPEND_TIME = 1, 2


def reference_ms(msg: Any, now_ms: int) -> int:
    """The time a record's ``ts`` may lead by the allowed skew: its append time where the
    broker stamped it (the topics Lethe creates), so the verdict is the same at every read
    (live, catching up, after a restart); a producer's own stamp only when it is not later
    than ``now_ms``; else ``now_ms``."""
    kind, stamp = msg.timestamp()
    if kind == _LOG_APPEND_TIME and stamp >= 0:
        return stamp
    if kind == _CREATE_TIME and stamp >= 0:
        return min(stamp, now_ms)
    return now_ms


def decode_interactions(
    values: list[bytes | None],
    limits: LimitSettings,
    now_ms: int | None = None,
    references: list[int] | None = None,
) -> tuple[InteractionColumns, list[Rejected]]:
    """Decode a batch of ``interactions`` values.

    ``references``, when given, holds each value's :func:`reference_ms`; otherwise every ts
    is bounded by ``now_ms`` (default: the wall clock). Returns the valid events as columns
    and the rejected ones with the contract's error.
    """
    rejected: list[Rejected] = []
    positions: list[int] = []
    decoded: list[_Interaction] = []
    max_bytes = limits.max_message_bytes
    escaped = False
    for pos, raw in enumerate(values):
        try:
            if raw is None or len(raw) > max_bytes:
                raise ValueError
            if len(raw) > _FAST_MAX_BYTES or not (raw.isascii() or _is_utf8(raw)):
                # msgspec skips unknown fields without reading them as the contract does
                # (invalid UTF-8, integers past Python's 4,300-digit limit): the contract
                # decides for these rare values
                raise ValueError
            decoded.append(_DECODER.decode(raw))
            positions.append(pos)
            # JSON strings hold control characters and surrogates only as escapes
            escaped = escaped or b"\\" in raw
        except (msgspec.DecodeError, ValueError, RecursionError):
            ref = references[pos] if references is not None else now_ms
            verdict = _by_contract(raw or b"", limits, ref)
            if isinstance(verdict, ContractError):
                rejected.append(Rejected(pos, verdict))
            else:  # the contract accepts what msgspec refused (an escaped lone surrogate)
                decoded.append(verdict)
                positions.append(pos)
                escaped = True
    skew = limits.max_future_skew_ms
    if references is None:
        newest = [newest_accepted_ts(limits, now_ms)] * len(values)
    else:
        newest = [ref + skew for ref in references]
    cols = _columns(positions, decoded)
    lowest = min(newest, default=0)  # one bound for the whole batch: the strictest
    if escaped or not _columns_valid(cols, limits.max_id_length, lowest):
        cols = InteractionColumns()
        for pos, ev in zip(positions, decoded, strict=True):  # find which, one by one
            problem = _event_problem(ev, limits.max_id_length, newest[pos])
            if problem is None:
                cols.extend(_columns([pos], [ev]))
            else:
                rejected.append(Rejected(pos, ContractError(problem, problem.split(":", 1)[0])))
        rejected.sort(key=lambda r: r.position)
    return cols, rejected


def _columns(positions: list[int], decoded: list[_Interaction]) -> InteractionColumns:
    return InteractionColumns(
        positions=positions,
        event_ids=[ev.event_id for ev in decoded],
        user_ids=[ev.user_id for ev in decoded],
        item_ids=[ev.item_id for ev in decoded],
        ts=[ev.ts for ev in decoded],
    )


def _columns_valid(cols: InteractionColumns, max_id: int, newest: int) -> bool:
    """The id and timestamp rules a column at a time, for values without escapes (so
    without control characters or surrogates): lengths, whitespace at the edges, ts."""
    if not len(cols):
        return True
    if max(cols.ts) > newest:
        return False
    for col in (cols.event_ids, cols.user_ids, cols.item_ids):
        if max(map(len, col)) > max_id or any(v != v.strip() for v in col):
            return False
    return True


def _event_problem(ev: _Interaction, max_id: int, newest: int) -> str | None:
    for name in ("event_id", "user_id", "item_id"):
        problem = id_problem(getattr(ev, name), max_id)
        if problem:
            return f"{name}: {problem}"
    if ev.ts > newest:
        return future_ts_problem(ev.ts)
    return None


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _by_contract(
    raw: bytes, limits: LimitSettings, now_ms: int | None
) -> _Interaction | ContractError:
    """The contract's verdict on a value the fast path did not take: the event, or the
    contract's own error (so the dead letter carries its message)."""
    from streams.contracts import InteractionEvent

    try:
        event = decode(InteractionEvent, raw, limits, now_ms)
    except ContractError as exc:
        return exc
    return _Interaction(**event.model_dump())  # the same fields


def decode_one(
    contract: type, raw: bytes | None, limits: LimitSettings, now_ms: int | None = None
) -> Any:
    """Decode one value of a non-hot topic (``now_ms``: its :func:`reference_ms`); raises
    :class:`ContractError` only."""
    return decode(contract, raw or b"", limits, now_ms)
