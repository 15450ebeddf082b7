"""`lethe topics create` against the broker, checked by describing the topics."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from streams.runtime.admin import describe_topic_configs
from streams.topics import topic_specs

pytestmark = pytest.mark.kafka


def _lethe(settings, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "LETHE_TOPIC_PREFIX": settings.topic_prefix,
        "LETHE_TOPICS__INTERACTIONS_RETENTION_MS": "3600000",
        **env_extra,
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
    names = [s.name for s in topic_specs(settings)]
    first = _lethe(settings, "topics", "create")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": created") == len(names) >= 8
    again = _lethe(settings, "topics", "create")  # idempotent
    assert again.returncode == 0 and again.stdout.count(": exists") == len(names)

    described = asyncio.run(describe_topic_configs(settings, names))
    p = settings.topic_prefix
    assert described[f"{p}interactions"]["configs"]["retention.ms"] == "3600000"
    assert described[f"{p}interactions"]["partitions"] == settings.topics.partitions
    assert described[f"{p}deletion-receipts"]["configs"]["retention.ms"] == "-1"
    assert described[f"{p}model-updates"]["configs"]["cleanup.policy"] == "compact"
    assert described[f"{p}items"]["configs"]["cleanup.policy"] == "compact"
    deadline = settings.topics.erasure_deadline_ms
    for logical in ("interactions", "deletions", "rec-requests", "recommendations"):
        assert int(described[f"{p}{logical}"]["configs"]["retention.ms"]) <= deadline
    assert int(described[f"{p}dead-letters"]["configs"]["retention.ms"]) == deadline
    for logical in ("interactions", "deletions", "items"):
        stamp = described[f"{p}{logical}"]["configs"]["message.timestamp.type"]
        assert stamp == "LogAppendTime", logical
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


@pytest.mark.parametrize("prefix", ["bad prefix.", "a/b.", "x" * 240 + "."])
def test_topics_create_refuses_an_illegal_prefix(settings, prefix):
    done = _lethe(settings, "topics", "create", LETHE_TOPIC_PREFIX=prefix)
    assert done.returncode == 2, done.stdout
    assert "created" not in done.stdout
    assert "topic name" in done.stderr


def test_topics_create_reports_the_brokers_per_topic_error(settings):
    # one broker cannot hold three replicas: the broker refuses every topic
    done = _lethe(settings, "topics", "create", LETHE_TOPICS__REPLICATION_FACTOR="3")
    assert done.returncode == 2, done.stdout
    assert "created" not in done.stdout
    assert "InvalidReplicationFactor" in done.stderr


def test_topics_check_warns_about_retention_past_the_erasure_deadline(settings):
    assert _lethe(settings, "topics", "create").returncode == 0
    ok = _lethe(settings, "topics", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the same topics judged against a deadline shorter than their retention
    over = _lethe(settings, "topics", "check", LETHE_TOPICS__ERASURE_DEADLINE_MS="600000")
    assert over.returncode == 1
    assert f"{settings.topic_prefix}interactions: keeps user data past" in over.stdout
    assert "longer than the erasure deadline" in over.stderr
