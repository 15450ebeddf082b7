"""Which hot IMCorrect replicas are alive and how far each has applied the change log, from
their heartbeats on ``imcorrect-replicas`` (docs/scale-out.md).

Every process beats with a random ``instance`` besides its replica id, so two processes
configured with the same id stay apart: a receipt waits for both (the id is live at the
slower one's position), and the roster reports the id as a conflict while both beat."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass

#: a replica id as it may appear in a receipt
_MAX_ID = 64


@dataclass(frozen=True)
class Heartbeat:
    """One replica's report: the next change-log offset it will apply, the events it has
    accepted, whether it is the writer, and whether it is leaving (a clean stop).
    ``instance`` names the process (empty in beats of older versions)."""

    replica: str
    applied: int
    events: int
    writer: bool = False
    leaving: bool = False
    ts: int = 0
    instance: str = ""

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
                instance=str(body.get("instance", "")),
            )
        except (TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"not a heartbeat: {type(exc).__name__}") from exc
        if not 0 < len(beat.replica) <= _MAX_ID or beat.applied < 0 or beat.events < 0:
            raise ValueError("not a heartbeat: out of range")
        if len(beat.instance) > _MAX_ID:
            raise ValueError("not a heartbeat: out of range")
        return beat


def new_instance() -> str:
    """A name for this process's heartbeats."""
    return secrets.token_hex(8)


@dataclass
class _Instance:
    beat: Heartbeat
    first_seen: float
    last_seen: float


class Roster:
    """The newest heartbeat of every replica process, and when it came."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._latest: dict[str, dict[str, _Instance]] = {}
        self._pruned = float("-inf")

    def __len__(self) -> int:
        """Replica ids held (live or not yet pruned)."""
        return len(self._latest)

    def note(self, beat: Heartbeat, seen: float | None = None) -> None:
        seen = time.monotonic() if seen is None else seen
        if seen - self._pruned > self.timeout_s:
            # at most once a timeout, so that beats under many ids cost no more than one
            # pass each: ids that stopped beating (scaled down, renamed) are dropped
            self._prune(seen)
        instances = self._latest.setdefault(beat.replica, {})
        for name, inst in list(instances.items()):
            if seen - inst.last_seen > self.timeout_s:
                del instances[name]  # silent: dead, or restarted under a new name
        known = instances.get(beat.instance)
        if known is None:
            instances[beat.instance] = _Instance(beat, seen, seen)
        else:
            known.beat, known.last_seen = beat, seen

    def _prune(self, now: float) -> None:
        self._pruned = now
        for replica, instances in list(self._latest.items()):
            for name, inst in list(instances.items()):
                if now - inst.last_seen > self.timeout_s:
                    del instances[name]
            if not instances:
                del self._latest[replica]

    def _live_instances(self, now: float) -> dict[str, list[_Instance]]:
        out: dict[str, list[_Instance]] = {}
        for replica, instances in self._latest.items():
            for inst in instances.values():
                if now - inst.last_seen <= self.timeout_s and not inst.beat.leaving:
                    out.setdefault(replica, []).append(inst)
        return out

    def live(self, now: float | None = None) -> dict[str, int]:
        """Replica → applied offset, for replicas heard from within the timeout that have
        not said they are leaving. An id beaten by several processes counts at the slowest."""
        now = time.monotonic() if now is None else now
        return {
            r: min(inst.beat.applied for inst in insts)
            for r, insts in self._live_instances(now).items()
        }

    def all_past(self, offset: int, now: float | None = None) -> list[str] | None:
        """The live replicas, sorted, when every one has applied the record at ``offset``;
        None while one has not."""
        live = self.live(now)
        if all(applied > offset for applied in live.values()):
            return sorted(live)
        return None

    def conflicts(self, now: float | None = None) -> list[str]:
        """Replica ids that two live processes beat under: one was heard again after the
        other's first beat (a restarted process's predecessor falls silent instead)."""
        now = time.monotonic() if now is None else now
        out = []
        for replica, insts in self._live_instances(now).items():
            newest_start = max(inst.first_seen for inst in insts)
            older = [inst for inst in insts if inst.first_seen < newest_start]
            if any(inst.last_seen > newest_start for inst in older):
                out.append(replica)
        return sorted(out)
