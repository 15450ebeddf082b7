"""What the runtime hands a service: decoded input, column-wise for the hot topic."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InteractionColumns:
    """Valid interactions of one batch, column-wise, in read order."""

    positions: list[int] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    #: ("topic:partition", offset) of each event, when the service asked for them
    sources: list[tuple[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)

    def extend(self, other: InteractionColumns) -> None:
        """Append ``other``'s events (its positions are relative to its own records)."""
        self.positions.extend(other.positions)
        self.event_ids.extend(other.event_ids)
        self.user_ids.extend(other.user_ids)
        self.item_ids.extend(other.item_ids)
        self.ts.extend(other.ts)
        self.sources.extend(other.sources)
