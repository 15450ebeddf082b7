"""Which hot IMCorrect replicas are alive and how far each has applied the change log, from
their heartbeats on ``imcorrect-replicas`` (docs/scale-out.md)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

#: a replica id as it may appear in a receipt
_MAX_ID = 64


@dataclass(frozen=True)
class Heartbeat:
    """One replica's report: the next change-log offset it will apply, the events it has
    accepted, whether it is the writer, and whether it is leaving (a clean stop)."""

    replica: str
    applied: int
    events: int
    writer: bool = False
    leaving: bool = False
    ts: int = 0

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, value: bytes | None) -> Heartbeat:
        """Raises ValueError for anything that is not a heartbeat (the topic is open to
        any producer the ACLs let in: odd bytes must not stop the writer)."""
        try:
            body = json.loads(value or b"")
            beat = cls(
                replica=str(body["replica"]),
                applied=int(body["applied"]),
                events=int(body["events"]),
                writer=bool(body.get("writer", False)),
                leaving=bool(body.get("leaving", False)),
                ts=int(body.get("ts", 0)),
            )
        except (TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"not a heartbeat: {type(exc).__name__}") from exc
        if not 0 < len(beat.replica) <= _MAX_ID or beat.applied < 0 or beat.events < 0:
            raise ValueError("not a heartbeat: out of range")
        return beat


class Roster:
    """The newest heartbeat of every replica, and when it came."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._latest: dict[str, tuple[Heartbeat, float]] = {}

    def note(self, beat: Heartbeat, seen: float | None = None) -> None:
        self._latest[beat.replica] = (beat, time.monotonic() if seen is None else seen)

    def live(self, now: float | None = None) -> dict[str, int]:
        """Replica → applied offset, for replicas heard from within the timeout that have
        not said they are leaving."""
        now = time.monotonic() if now is None else now
        return {
            r: beat.applied
            for r, (beat, seen) in self._latest.items()
            if not beat.leaving and now - seen <= self.timeout_s
        }

    def all_past(self, offset: int, now: float | None = None) -> list[str] | None:
        """The live replicas, sorted, when every one has applied the record at ``offset``;
        None while one has not."""
        live = self.live(now)
        if all(applied > offset for applied in live.values()):
            return sorted(live)
        return None
