"""Heartbeats of hot IMCorrect replicas: decoding what any producer may write, liveness, and
when a receipt may go out."""

from __future__ import annotations

import pytest

from streams.runtime.roster import Heartbeat, Roster


def test_a_heartbeat_survives_its_encoding():
    beat = Heartbeat(replica="a", applied=12, events=3400, writer=True, ts=5, instance="9f")
    assert Heartbeat.from_bytes(beat.to_bytes()) == beat


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"replica": "a"}',
        b'{"replica": "", "applied": 1, "events": 1}',
        b'{"replica": "a", "applied": -1, "events": 1}',
        b'{"replica": "a", "applied": 1e999, "events": 1}',
        b'{"replica": "a", "applied": "9' + b"9" * 5000 + b'", "events": 1}',
        b'{"replica": "' + b"x" * 65 + b'", "applied": 1, "events": 1}',
        b'{"replica": "a", "applied": 1, "events": 1, "instance": "' + b"x" * 65 + b'"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_anything_else_is_refused_with_a_value_error(value):
    with pytest.raises(ValueError):
        Heartbeat.from_bytes(value)


def test_live_replicas_are_the_recent_ones_that_are_not_leaving():
    roster = Roster(timeout_s=10)
    roster.note(Heartbeat("a", applied=5, events=0), seen=100.0)
    roster.note(Heartbeat("b", applied=3, events=0), seen=95.0)
    roster.note(Heartbeat("c", applied=9, events=0, leaving=True), seen=100.0)
    assert roster.live(now=104.0) == {"a": 5, "b": 3}
    assert roster.live(now=106.0) == {"a": 5}  # b silent for 11 s


def test_a_receipt_waits_for_every_live_replica():
    roster = Roster(timeout_s=10)
    roster.note(Heartbeat("a", applied=8, events=0), seen=100.0)
    roster.note(Heartbeat("b", applied=4, events=0), seen=100.0)
    assert roster.all_past(3, now=101.0) == ["a", "b"]
    assert roster.all_past(4, now=101.0) is None  # b has not applied offset 4 yet
    assert roster.all_past(4, now=111.0) == []  # nobody is live: nothing to wait for
    roster.note(Heartbeat("b", applied=5, events=0), seen=101.0)
    assert roster.all_past(4, now=102.0) == ["a", "b"]


def test_one_id_beaten_by_two_processes_counts_at_the_slower_and_is_a_conflict():
    roster = Roster(timeout_s=10)
    roster.note(Heartbeat("a", applied=8, events=0, instance="p1"), seen=100.0)
    roster.note(Heartbeat("a", applied=3, events=0, instance="p2"), seen=101.0)
    assert roster.conflicts(now=101.5) == []  # p1 may have died: not heard since p2 came
    assert roster.all_past(4, now=101.5) is None  # p2 has not applied offset 4 yet
    roster.note(Heartbeat("a", applied=9, events=0, instance="p1"), seen=102.0)
    assert roster.conflicts(now=102.5) == ["a"]  # both beat: a misconfiguration
    assert roster.live(now=102.5) == {"a": 3}
    roster.note(Heartbeat("a", applied=9, events=0, instance="p2"), seen=103.0)
    assert roster.all_past(4, now=103.5) == ["a"]
    # p1 stops cleanly: no conflict, and it is not waited for
    roster.note(Heartbeat("a", applied=9, events=0, instance="p1", leaving=True), seen=104.0)
    assert roster.conflicts(now=104.5) == [] and roster.live(now=104.5) == {"a": 9}


def test_a_restarted_process_replaces_its_silent_predecessor():
    roster = Roster(timeout_s=10)
    roster.note(Heartbeat("a", applied=8, events=0, instance="old"), seen=100.0)
    roster.note(Heartbeat("a", applied=2, events=0, instance="new"), seen=103.0)
    # the old one may still be alive until the timeout: receipts wait for it
    assert roster.live(now=105.0) == {"a": 2} and roster.conflicts(now=105.0) == []
    roster.note(Heartbeat("a", applied=9, events=0, instance="new"), seen=111.0)
    assert roster.live(now=111.0) == {"a": 9}  # the silent one is gone
    assert roster._latest["a"].keys() == {"new"}  # and forgotten, not kept forever


def test_ids_that_stopped_beating_are_dropped_and_many_ids_cost_no_pass_each():
    roster = Roster(timeout_s=10)
    for n in range(1000):  # e.g. replicas scaled down, or beats under minted ids
        roster.note(Heartbeat(f"gone-{n}", applied=1, events=0), seen=100.0 + n / 1000)
    assert len(roster) == 1000
    roster.note(Heartbeat("a", applied=5, events=0), seen=105.0)
    roster.note(Heartbeat("a", applied=6, events=0), seen=109.0)
    assert len(roster) == 1001  # one prune a timeout: the last was at 100
    roster.note(Heartbeat("a", applied=7, events=0), seen=115.0)
    assert len(roster) == 1 and roster.live(now=115.0) == {"a": 7}


def test_a_receipt_waiting_for_the_replicas_ages_the_deletion_gauge(tmp_path):
    import time

    from streams import metrics as m
    from streams.config import LetheSettings
    from streams.contracts import DeletionReceipt
    from streams.runtime.memory import MemoryIO, MemoryLog
    from streams.runtime.replica import ReplicaRuntime

    replica = {"replicated": True, "replica_id": "a", "memory_budget_gb": 1.0}
    settings = LetheSettings(state_dir=tmp_path, metrics_port=-1, imcorrect=replica)
    runtime = ReplicaRuntime(settings, io=MemoryIO(MemoryLog()))
    now_ms = int(time.time() * 1000)
    receipt = DeletionReceipt(
        request_id="r1",
        status="applied",
        scope="user",
        requested_at=now_ms - 120_000,
        applied_at=now_ms - 110_000,
    )
    runtime._note_pending()
    assert runtime._deletion_age() == 0.0
    # applied here, waiting for the other replicas: the gauge counts it (the critical alert
    # watched only the writer's commit before)
    runtime.pending.append((7, receipt))
    runtime._note_pending()
    age = m.DELETION_PENDING_AGE.collect()[0].samples[0].value
    assert 119 < age < 130
