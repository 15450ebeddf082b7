"""The three workers: ``lethe worker <kind>`` = the runtime + a service + settings."""

from __future__ import annotations

import os

from streams.config import LetheSettings
from streams.runtime.kafka import KafkaIO
from streams.runtime.loop import Runtime, run_until_signalled
from streams.runtime.memory import MemoryIO
from streams.runtime.replica import ReplicaRuntime

IO = KafkaIO | MemoryIO | None


def imcorrect_runtime(settings: LetheSettings, io: IO = None) -> Runtime | ReplicaRuntime:
    """The IMCorrect worker (:class:`streams.services.imcorrect.IMCorrectService`) on ``io``;
    a hot replica of the change log with ``imcorrect.replicated`` (Kafka only)."""
    from streams.services.imcorrect import IMCorrectService

    if settings.imcorrect.replicated:
        if isinstance(io, MemoryIO):
            raise ValueError("hot IMCorrect replicas need Kafka transactions: no MemoryIO")
        return ReplicaRuntime(settings, io)

    return Runtime(
        settings,
        IMCorrectService,
        io,
        name="imcorrect",
        answer_requests=settings.imcorrect.answer_requests,
    )


def trainer_runtime(settings: LetheSettings, io: IO = None) -> Runtime:
    """The trainer (:class:`streams.services.trainer.TrainerService`) on ``io``."""
    from streams.services.trainer import TrainerService  # torch loads with the service only

    return Runtime(settings, TrainerService, io, name="trainer")


def scorer_runtime(settings: LetheSettings, io: IO = None) -> Runtime:
    """A scorer replica (:class:`streams.services.scorer.ScorerService`): it answers through
    a request channel shared by the replicas' consumer group."""
    from streams.runtime.requests import scorer_group
    from streams.services.scorer import ScorerService, scorer_folder

    name = scorer_folder(settings)
    return Runtime(settings, ScorerService, io, name=name, serve_group=scorer_group(settings))


WORKERS = {"imcorrect": imcorrect_runtime, "trainer": trainer_runtime, "scorer": scorer_runtime}


def run_worker(kind: str, settings: LetheSettings) -> None:
    """``lethe worker <kind>`` until SIGINT/SIGTERM (then a snapshot and a clean exit).

    Everything it writes (state, snapshots, checkpoints, models, keys) is for its own user
    only: the workers of one deployment share a user (the image's ``lethe``), and raw ids
    in snapshots must not be readable by anyone else on the host (docs/privacy.md)."""
    os.umask(0o077)
    run_until_signalled(WORKERS[kind](settings))
