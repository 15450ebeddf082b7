"""Order deletions after the interactions published before them, across two topics.

``interactions`` and ``deletions`` are read in parallel, so a deletion can be read before
interactions of its subject that were published earlier. Each deletion read is held with the
log-end offsets of ``interactions`` asked of the broker after it was read; it is released, in
read order, once ``interactions`` has been read up to those offsets. Held deletions are not
in the offsets a snapshot records, so after a crash they are read and held again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Held:
    """One held deletion record: where it was read, what it asks (None when malformed,
    which only has to move the offset in order) and the interactions offsets to reach."""

    key: str  # "topic:partition" of the deletion record
    offset: int
    request: Any
    ends: dict[str, int]


@dataclass
class OrderedBarrier:
    held: deque[Held] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, item: Held) -> None:
        self.held.append(item)

    def release(self, positions: dict[str, int]) -> list[Held]:
        """The held deletions, oldest first, whose interactions offsets have been reached."""
        out = []
        while self.held and all(positions.get(k, 0) >= e for k, e in self.held[0].ends.items()):
            out.append(self.held.popleft())
        return out

    def oldest_ts(self) -> int | None:
        ts = [h.request.ts for h in self.held if h.request is not None]
        return min(ts) if ts else None
