"""When a worker snapshots its service, and the bookkeeping of one (shared by the input loop
and the IMCorrect replicas)."""

from __future__ import annotations

import time

from streams import metrics as m
from streams.services.base import Service


class SnapshotClock:
    """Periodic snapshots of one service: whether one is due, taking one, the last one's age."""

    def __init__(self) -> None:
        self.saved_at = time.monotonic()
        self.saved_offsets: dict[str, int] = {}

    def track(self, service: Service) -> None:
        """Start from the service's state as loaded (its offsets are on disk already)."""
        self.saved_offsets = dict(service.offsets)

    def due(self, service: Service) -> bool:
        """The interval has passed and the input moved since the last snapshot (an idle
        worker rewrites nothing: its clock starts again instead)."""
        if time.monotonic() - self.saved_at < service.snapshot_interval_s:
            return False
        if service.offsets == self.saved_offsets:
            self.saved_at = time.monotonic()
            return False
        return True

    def save(self, service: Service, for_receipt: bool = False) -> None:
        start = time.perf_counter()
        service.save(for_receipt=for_receipt)
        m.SNAPSHOT_SECONDS.observe(time.perf_counter() - start)
        self.saved_at = time.monotonic()
        self.saved_offsets = dict(service.offsets)

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.saved_at
