"""Shared fixtures: one Kafka broker per session, unique topic prefixes per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from streams.config import LetheSettings
from streams.localkafka import kafka_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with kafka_broker() as (bootstrap, how):
        print(f"\n[lethe tests] Kafka broker at {bootstrap} ({how})")
        yield bootstrap


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path) -> LetheSettings:
    """Settings pointing at the test broker with a topic prefix no other test uses."""
    return LetheSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path / "state",
        metrics_port=-1,
        imcorrect={"snapshot_interval_s": 1.0},
    )
