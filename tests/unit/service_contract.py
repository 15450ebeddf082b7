"""The contract every streaming service honours, run by the real runtime on an in-memory log.

A subclass says how to build its runtime on a :class:`MemoryIO` and how to read its state
back; every test here then runs for it, with no broker. The runtime is crashed at random
moments (an exception out of a produce or a poll, so nothing after it runs, as with SIGKILL)
and restarted on the same state folder and log.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, DeletionRequest, InteractionEvent, ItemMetadata
from streams.runtime.memory import MemoryConsumer, MemoryIO, MemoryLog, MemoryProducer


def user_deletion(user_id: str, request_id: str, ts: int) -> DeletionRequest:
    """A user deletion as the contract streams publish it."""
    return DeletionRequest(
        request_id=request_id, scope="user", user_id=user_id, reason="privacy", ts=ts
    )


class Crash(Exception):
    """Stands for SIGKILL: raised out of the runtime's Kafka calls."""


class _Consumer(MemoryConsumer):
    def __init__(self, io: ScriptedIO) -> None:
        super().__init__(io.log)
        self.io = io

    def poll(self, timeout: float = 0):
        self.io.tick()
        got = super().poll(timeout)
        if got is None:
            self.io.idle()
        return got

    def consume(self, n: int, timeout: float = 0):
        self.io.tick()
        return super().consume(min(n, self.io.chunk), timeout)


class _Producer(MemoryProducer):
    def __init__(self, io: ScriptedIO) -> None:
        super().__init__(io.log)
        self.io = io

    def produce(self, topic: str, value=None, key=None, on_delivery=None) -> None:
        self.io.tick()
        super().produce(topic, value, key, on_delivery)


class ScriptedIO(MemoryIO):
    """A :class:`MemoryIO` that crashes after ``crash_after`` calls and stops the runtime
    once it has nothing left to read."""

    def __init__(self, log: MemoryLog, crash_after: int | None, chunk: int) -> None:
        super().__init__(log)
        self.crash_after, self.calls, self.chunk = crash_after, 0, chunk
        self.runtime: Any = None

    def tick(self) -> None:
        self.calls += 1
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise Crash

    def idle(self) -> None:
        if self.runtime is not None and not len(self.runtime.barrier):
            self.runtime.stop()

    def consumer(self) -> _Consumer:
        return _Consumer(self)

    def producer(self) -> _Producer:
        return _Producer(self)


class ServiceContract:
    """Mix into a test class that defines the hooks below."""

    #: settings section overrides for the service under test
    overrides: ClassVar[dict[str, Any]] = {}
    #: the status of the service's receipts for data it held (None: it writes none)
    receipt_status: ClassVar[str | None] = "applied"

    # -- hooks ------------------------------------------------------------------------------
    def make_runtime(self, settings: LetheSettings, io: MemoryIO) -> Any:
        raise NotImplementedError

    def fingerprint(self, settings: LetheSettings) -> Any:
        """What must be equal between two runs over the same log (read from disk)."""
        raise NotImplementedError

    def stream(self) -> list[InteractionEvent | DeletionRequest]:
        """The input, in publication order."""
        raise NotImplementedError

    def forgotten_ids(self) -> list[str]:
        raise NotImplementedError

    def holds_data_of(self, settings: LetheSettings, user_id: str) -> bool | None:
        """Does the saved state still hold ``user_id``'s data? (Every service answers: a
        forgotten user must stay out whatever arrives late.)"""
        return None

    # -- harness ----------------------------------------------------------------------------
    def settings(self, tmp: Path) -> LetheSettings:
        return LetheSettings(
            topic_prefix="c.",
            state_dir=tmp / "state",
            model_dir=tmp / "models",
            metrics_port=-1,
            **self.overrides,
        )

    def publish(self, log: MemoryLog, settings: LetheSettings, events) -> None:
        for e in events:
            if isinstance(e, InteractionEvent):
                log.append(f"{settings.topic_prefix}interactions", e.to_bytes(), e.user_id.encode())
            elif isinstance(e, ItemMetadata):  # services that do not read items never see it
                log.append(f"{settings.topic_prefix}items", e.to_bytes(), e.item_id.encode())
            else:
                log.append(
                    f"{settings.topic_prefix}deletions", e.to_bytes(), e.kafka_key().encode()
                )

    def run(self, settings, log: MemoryLog, crash_after: int | None = None, chunk=50) -> bool:
        """One life of the runtime; True when it ended by itself (caught up)."""
        io = ScriptedIO(log, crash_after, chunk)
        runtime = self.make_runtime(settings, io)
        io.runtime = runtime
        try:
            runtime.run()
        except Crash:
            return False
        return True

    def run_with_crashes(self, settings, log: MemoryLog, rng: random.Random) -> int:
        """Lives that crash at random moments (at least ``3``), then one that catches up."""
        crashes = 0
        while crashes < 3 or rng.random() < 0.5:
            chunk = rng.randint(1, 80)
            if self.run(settings, log, crash_after=rng.randint(1, 40), chunk=chunk):
                return crashes  # caught up before the crash came
            crashes += 1
        assert self.run(settings, log, chunk=rng.randint(1, 80))
        return crashes

    def receipts(self, log: MemoryLog, settings: LetheSettings) -> list[DeletionReceipt]:
        topic = f"{settings.topic_prefix}deletion-receipts"
        return [DeletionReceipt.model_validate_json(r.value()) for r in log.records(topic)]

    # -- the contract -----------------------------------------------------------------------
    def test_restart_from_any_snapshot_equals_never_stopping(self, tmp_path):
        events = self.stream()
        calm = self.settings(tmp_path / "calm")
        calm_log = MemoryLog()
        self.publish(calm_log, calm, events)
        assert self.run(calm, calm_log)
        for seed in range(3):
            stormy = self.settings(tmp_path / f"stormy{seed}")
            log = MemoryLog()
            self.publish(log, stormy, events)
            crashes = self.run_with_crashes(stormy, log, random.Random(seed))
            assert crashes > 0, "the storm never hit"
            assert self.fingerprint(stormy) == self.fingerprint(calm), f"seed {seed}"

    def test_exactly_one_receipt_per_request_across_crashes(self, tmp_path):
        events = self.stream()
        requests = {e.request_id for e in events if isinstance(e, DeletionRequest)}
        for seed in range(3):
            settings = self.settings(tmp_path / f"s{seed}")
            log = MemoryLog()
            self.publish(log, settings, events)
            self.run_with_crashes(settings, log, random.Random(100 + seed))
            ids = [r.request_id for r in self.receipts(log, settings)]
            expected = sorted(requests) if self.receipt_status is not None else []
            assert sorted(ids) == expected, f"seed {seed}"

    def test_no_forgotten_id_in_any_file_after_the_receipts(self, tmp_path):
        settings = self.settings(tmp_path)
        log = MemoryLog()
        self.publish(log, settings, self.stream())
        self.run_with_crashes(settings, log, random.Random(7))
        blobs = [p.read_bytes() for p in Path(settings.state_dir).rglob("*") if p.is_file()]
        for raw_id in self.forgotten_ids():
            needle = raw_id.encode()
            assert not any(needle in blob for blob in blobs), raw_id
            assert not any(needle in r.to_bytes() for r in self.receipts(log, settings))

    def test_an_event_stamped_before_its_users_deletion_stays_out(self, tmp_path):
        # a late sync, a replay or a retry under a new event id, published after everything:
        # it must not bring the forgotten user back (its ts is not newer than the deletion)
        events = self.stream()
        late = []
        for request in events:
            if isinstance(request, DeletionRequest) and request.scope == "user":
                theirs = [
                    e
                    for e in events
                    if isinstance(e, InteractionEvent) and e.user_id == request.user_id
                ]
                stale = {"event_id": f"late-{request.request_id}", "ts": request.ts - 1}
                late.append(theirs[-1].model_copy(update=stale))
        assert late, "the stream forgets no user"
        settings = self.settings(tmp_path)
        log = MemoryLog()
        self.publish(log, settings, events)
        assert self.run(settings, log)  # the deletions are applied ...
        self.publish(log, settings, late)
        assert self.run(settings, log)  # ... before the late events arrive
        users = sorted({e.user_id for e in late})
        held = [u for u in users if self.holds_data_of(settings, u) is not False]
        assert not held, (
            f"forgotten users learned again from events older than their deletion: {held}"
        )

    def test_a_deletion_applies_after_its_subjects_earlier_events(self, tmp_path):
        # the in-memory consumer reads "deletions" before "interactions" within a chunk, the
        # order the barrier exists for
        settings = self.settings(tmp_path)
        log = MemoryLog()
        self.publish(log, settings, self.stream())
        assert self.run(settings, log, chunk=1000)
        if self.receipt_status is not None:
            receipts = self.receipts(log, settings)
            assert receipts and all(r.status == self.receipt_status for r in receipts), receipts
        held = [u for u in self.forgotten_ids() if self.holds_data_of(settings, u)]
        assert not held, f"deletions applied before their subjects' earlier events: {held}"
