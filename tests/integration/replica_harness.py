"""Run hot IMCorrect replicas (``imcorrect.replicated``) as subprocesses and observe them
(shared by the replica tests and the broker-loss test)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from streams.config import LetheSettings
from streams.reader import end_offsets
from streams.runtime import kafka
from streams.topics import topic_name
from tests.integration.worker_harness import WorkerProcess, snapshot_meta


def replica_settings(settings: LetheSettings, replica: str, answer: bool = False) -> LetheSettings:
    imcorrect = settings.imcorrect.model_copy(
        update={
            "replicated": True,
            "replica_id": replica,
            "memory_budget_gb": 4.0,  # the same on every replica (a setting they must share)
            "answer_requests": answer,
            "replica_timeout_s": 6.0,
        }
    )
    return settings.model_copy(update={"imcorrect": imcorrect})


class Replica:
    """One replica id, restarted as new processes (each with a log file of its own)."""

    def __init__(
        self, settings: LetheSettings, replica: str, logs: Path, answer: bool = False
    ) -> None:
        self.settings = replica_settings(settings, replica, answer)
        self.id = replica
        self.logs = logs
        self.runs = 0
        self.proc: WorkerProcess | None = None

    def start(self) -> Replica:
        self.runs += 1
        self.proc = WorkerProcess(self.settings, self.logs / f"{self.id}-{self.runs}.log")
        self.proc.start()
        self.proc.wait_ready(90)
        return self

    def is_writer(self) -> bool:
        text = self.proc.log_path.read_text(errors="replace") if self.proc else ""
        return text.rfind("is the writer") > text.rfind("stopped writing")

    def kill(self) -> None:
        self.proc.kill()


def wait_for(predicate, timeout_s: float, what: str, replicas=()) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for r in replicas:
            assert r.proc.alive(), f"replica {r.id} died:\n{r.proc.log_tail()}"
        assert time.monotonic() < deadline, f"timed out: {what}\n" + "\n".join(
            r.proc.log_tail(30) for r in replicas
        )
        time.sleep(0.2)


def read_committed(settings: LetheSettings, topic: str) -> list:
    """Every committed record of a one-partition transactional topic (its end is a commit
    marker, which no record carries: the end is reached when the position is)."""
    consumer = kafka.consumer(settings, **{"isolation.level": "read_committed"})
    try:
        tp = kafka.TopicPartition(topic, 0, 0)
        end = consumer.get_watermark_offsets(tp, timeout=10)[1]
        consumer.assign([tp])
        out, deadline = [], time.monotonic() + 60
        while consumer.position([tp])[0].offset < end:
            assert time.monotonic() < deadline, f"{topic} not read to its end"
            out += [msg for msg in consumer.consume(1000, 0.5) if msg.error() is None]
        return out
    finally:
        consumer.close()


def caught_up(settings: LetheSettings, replica: Replica, log_end: int) -> bool:
    ends = asyncio.run(end_offsets(settings, ["interactions", "deletions"]))
    meta = snapshot_meta(settings.state_dir, f"imcorrect-{replica.id}")
    if meta is None:
        return False
    offsets = meta["offsets"]
    log_key = f"{topic_name(settings, 'imcorrect-log')}:0"
    inputs_done = all(offsets.get(k, 0) >= v for k, v in ends.items())
    return inputs_done and offsets.get(log_key, 0) >= log_end


def publish_and_apply(settings: LetheSettings, events: list, replicas) -> None:
    """Send ``events`` and wait until every replica has applied the change log to its end."""
    from streams.client import LetheProducer

    async def publish() -> None:
        async with LetheProducer(settings) as p:
            for e in events:
                await p.send("interactions", e.user_id, e)

    asyncio.run(publish())
    (end,) = asyncio.run(end_offsets(settings, ["imcorrect-log"])).values()
    wait_for(lambda: all(caught_up(settings, r, end) for r in replicas), 60, "applied", replicas)
