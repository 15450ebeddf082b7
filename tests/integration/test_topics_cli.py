"""`lethe topics create` against the broker, checked by describing the topics."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from streams.topics import describe_topic_configs, topic_specs

pytestmark = pytest.mark.kafka


def _lethe(settings, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "LETHE_TOPIC_PREFIX": settings.topic_prefix,
        "LETHE_TOPICS__INTERACTIONS_RETENTION_MS": "3600000",
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("topics", "publish", "replay", "forget", "recommend", "schemas"):
        assert command in out


def test_topics_create_applies_policies_from_configuration(settings):
    first = _lethe(settings, "topics", "create")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": created") == 7
    again = _lethe(settings, "topics", "create")  # idempotent
    assert again.returncode == 0 and again.stdout.count(": exists") == 7

    names = [s.name for s in topic_specs(settings)]
    described = asyncio.run(describe_topic_configs(settings, names))
    p = settings.topic_prefix
    assert described[f"{p}interactions"]["configs"]["retention.ms"] == "3600000"
    assert described[f"{p}interactions"]["partitions"] == settings.topics.partitions
    assert described[f"{p}deletion-receipts"]["configs"]["retention.ms"] == "-1"
    assert described[f"{p}model-updates"]["configs"]["cleanup.policy"] == "compact"
    assert int(described[f"{p}dead-letters"]["configs"]["retention.ms"]) >= 30 * 24 * 3600 * 1000
    for name in names:
        assert name in described and described[name]["partitions"] >= 1


def test_publish_file_reports_rejected_rows(settings, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,user_id,item_id,ts\n"
        "e1,u1,i1,1700000000000\n"
        "e2,u1,i2,yesterday\n"
        "e3,,i3,1700000000001\n"
        "e4,u2,i1,1700000000002\n"
    )
    _lethe(settings, "topics", "create")
    done = _lethe(settings, "publish", "interactions", str(path), "--quiet")
    assert done.returncode == 2
    assert "published 2 interaction events, rejected 2" in done.stdout
    assert ":3: rejected: ts:" in done.stderr and ":4: rejected: user_id:" in done.stderr
