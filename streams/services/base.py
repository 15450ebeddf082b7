"""The protocol between the runtime and a service: what one step hands in, what comes back.

A service is a Kafka-free state machine. The runtime (:mod:`streams.runtime.loop`) reads its
input topics from the offsets the service's state reflects, decodes them, orders deletions
after the interactions published before them, and calls :meth:`Service.apply` with one
:class:`Inputs`. The service returns :class:`Effects`; the runtime makes them durable and
public in this order:

1. the effects are staged in the service's outbox (:meth:`Service.stage`);
2. the state is snapshotted (:meth:`Service.save`), so no file holds forgotten data;
3. announcements are published, then receipts (receipts may name the announced version);
4. the outbox is cleared (in memory; the next snapshot drops it from disk).

After a crash the runtime publishes what the outbox still holds: announcements again (they
are idempotent: a consumer ignores a version it already has), receipts only when the receipts
topic does not have them after the offsets staged with them. So there is exactly one receipt
per request, and no receipt before the data is gone from memory and disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from streams.contracts import (
    DeletionReceipt,
    DeletionRequest,
    ItemMetadata,
    ModelUpdate,
    RecRequest,
)
from streams.retention import TopicRetention
from streams.services.batch import InteractionColumns


@dataclass
class Inputs:
    """One step's decoded input."""

    #: valid interactions in read order (with ``sources`` when the service wants them)
    interactions: InteractionColumns = field(default_factory=InteractionColumns)
    #: deletions released by the barrier: each after every interaction published before it
    deletions: list[DeletionRequest] = field(default_factory=list)
    #: ("topic:partition", offset) of each deletion's record
    deletion_sources: list[tuple[str, int]] = field(default_factory=list)
    #: model announcements read this step (``model-updates`` is replayed from its start)
    updates: list[ModelUpdate] = field(default_factory=list)
    #: valid item metadata in read order (services that read ``items``)
    items: list[ItemMetadata] = field(default_factory=list)
    #: "topic:partition" → next offset, once this step is applied
    offsets: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(len(self.interactions) or self.deletions or self.updates or self.items)


@dataclass
class Effects:
    """What a step decided to make public, and how it went."""

    receipts: list[DeletionReceipt] = field(default_factory=list)
    #: model versions to announce on ``model-updates`` (before the receipts)
    announcements: list[ModelUpdate] = field(default_factory=list)
    #: the state forgot something: snapshot now, even without a receipt
    snapshot: bool = False
    learned: int = 0
    apply_seconds: float = 0.0

    @property
    def to_publish(self) -> bool:
        return bool(self.receipts or self.announcements)

    def merge(self, other: Effects) -> Effects:
        self.receipts += other.receipts
        self.announcements += other.announcements
        self.snapshot = self.snapshot or other.snapshot
        self.learned += other.learned
        self.apply_seconds += other.apply_seconds
        return self


@dataclass
class Outbox:
    """Effects decided but perhaps not yet published, with where the receipts topic ended
    before them (a restart looks for the receipts after those offsets)."""

    receipts: list[DeletionReceipt] = field(default_factory=list)
    announcements: list[ModelUpdate] = field(default_factory=list)
    receipts_end_offsets: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.receipts or self.announcements)


class StepAbandoned(Exception):
    """Raised by ``apply`` or ``tick`` when the runtime's stop request cut long work short
    (a service with ``interrupt_when``: the trainer's retrain). Its state in memory is then
    half-applied: the runtime exits without a snapshot, as after a crash, and the next
    start reads the step again from the last snapshot's offsets."""


class Service(Protocol):
    """What the runtime drives. No method may call Kafka; all of them run on one thread."""

    #: the state folder ``<state_dir>/<name>`` (held with a lock) and the log name
    name: ClassVar[str]
    #: logical topics read from the offsets the state reflects ("deletions" gets the barrier)
    reads: ClassVar[tuple[str, ...]]
    #: logical topics read from their beginning at every start (compacted announcements)
    replays: ClassVar[tuple[str, ...]]
    #: logical input topics whose malformed records this service dead-letters (the others
    #: are counted and passed over: one dead letter per bad record, not one per worker)
    dead_letters_for: ClassVar[tuple[str, ...]]
    #: fill ``InteractionColumns.sources`` (topic:partition and offset of each event)
    wants_sources: ClassVar[bool]

    @property
    def offsets(self) -> dict[str, int]:
        """ "topic:partition" → next offset, as of the state in memory."""
        ...

    @property
    def snapshot_interval_s(self) -> float: ...

    def apply(self, inputs: Inputs) -> Effects:
        """Apply one step's input and move the offsets to ``inputs.offsets``."""
        ...

    def tick(self) -> Effects:
        """Work that is due by time rather than input (a trainer round, a reload)."""
        ...

    @property
    def batch_max_events(self) -> int: ...

    @property
    def batch_max_wait_ms(self) -> float: ...

    def use_retention(self, retention: dict[str, TopicRetention]) -> None:
        """The retention the broker reports for the user-data topics (for receipts)."""
        ...

    def note_dead_letters(self, n: int, offsets: dict[str, int]) -> None:
        """Records that only moved offsets (malformed) still count as handled."""
        ...

    def answer(self, requests: list[RecRequest]) -> list[bytes]:
        """Encoded recommendations, one per request, in order (services that answer)."""
        ...

    @property
    def outbox(self) -> Outbox: ...

    def stage(self, effects: Effects, receipts_end_offsets: dict[str, int]) -> None: ...

    def clear_outbox(self) -> None: ...

    def save(self, *, for_receipt: bool = False) -> None:
        """Snapshot atomically; older files that may hold forgotten data are gone after.
        With ``for_receipt`` the snapshot is on disk when this returns; a periodic one may
        be written after (the scorer's is, on a thread), but before the next save or
        :meth:`close` returns."""
        ...

    def gauges(self) -> None:
        """Set the service's state gauges (sizes, versions); called every few seconds."""
        ...

    def close(self) -> None:
        """Release what the service holds besides its files (threads, sessions)."""
        ...


class NoOutbox:
    """The outbox half of :class:`Service` for a service that publishes no receipts and no
    announcements of its own (mixed into it)."""

    def use_retention(self, retention: dict[str, TopicRetention]) -> None:
        return None  # no receipt to name the retention in

    @property
    def outbox(self) -> Outbox:
        return Outbox()

    def stage(self, effects: Effects, receipts_end_offsets: dict[str, int]) -> None:
        return None

    def clear_outbox(self) -> None:
        return None
