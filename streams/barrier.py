"""Order deletions after the interactions published before them, across two topics.

``interactions`` and ``deletions`` are separate topics read in parallel, so a deletion can be
read before interactions of the same user that were published earlier. When a deletion is
read, the log-end offsets of ``interactions`` are noted and the ``deletions`` partitions are
paused; held deletions are released once ``interactions`` has been read up to those offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DeletionBarrier:
    ends: dict[str, int] | None = None  # "topic:partition" → offset to reach
    held: list[tuple[Any, Any]] = field(default_factory=list)  # (record, request or None)

    @property
    def active(self) -> bool:
        return self.ends is not None

    def hold(self, record: Any, request: Any, ends: dict[str, int] | None = None) -> None:
        """Hold a deletion (``request`` None for a malformed one, which only moves offsets).
        ``ends`` is required for the first one held."""
        if self.ends is None:
            if ends is None:
                raise ValueError("the first held deletion needs the interactions end offsets")
            self.ends = dict(ends)
        self.held.append((record, request))

    async def hold_while_reading(
        self, record: Any, request: Any, consumer: Any, offsets: Any, interaction_tps, deletion_tps
    ) -> None:
        """Hold a deletion read by ``consumer``; the first one held notes where
        ``interactions`` ends (asked of the idle ``offsets`` client) and pauses ``deletions``."""
        ends = None
        if not self.active:
            raw = await offsets.end_offsets(interaction_tps)
            ends = {f"{tp.topic}:{tp.partition}": off for tp, off in raw.items()}
            consumer.pause(*deletion_tps)
        self.hold(record, request, ends)

    def release(self, positions: dict[str, int]) -> list[tuple[Any, Any]]:
        """The held deletions once every ``interactions`` partition reached its end offset."""
        if self.ends is None or any(positions.get(k, 0) < end for k, end in self.ends.items()):
            return []
        released, self.held, self.ends = self.held, [], None
        return released
