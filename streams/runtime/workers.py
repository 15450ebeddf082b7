"""The runtimes of the workers that run a service beside the IMCorrect one."""

from __future__ import annotations

from streams.config import LetheSettings
from streams.runtime.kafka import KafkaIO
from streams.runtime.loop import Runtime, run_until_signalled
from streams.runtime.memory import MemoryIO


def trainer_runtime(settings: LetheSettings, io: KafkaIO | MemoryIO | None = None) -> Runtime:
    """The trainer (:class:`streams.services.trainer.TrainerService`) on ``io``."""
    from streams.services.trainer import TrainerService  # torch loads with the service only

    return Runtime(settings, TrainerService, io, name="trainer")


def run_trainer(settings: LetheSettings) -> None:
    """The trainer worker (``lethe worker trainer``) until SIGINT/SIGTERM."""
    run_until_signalled(trainer_runtime(settings))
