"""Topic names (with the configured prefix) and their creation policies (Kafka-free; the
broker is asked in :mod:`streams.runtime.admin`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from streams.config import LetheSettings
from streams.retention import (
    USER_DATA_TOPICS,
    retention_plan,
    segment_ms,
)

#: Kafka's topic-name rules (``org.apache.kafka.common.internals.Topic``)
_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]+")
MAX_TOPIC_LENGTH = 249


class TopicError(RuntimeError):
    """A topic name Kafka would refuse, or the broker's refusal of one topic."""


def check_topic_name(name: str) -> None:
    """Raise :class:`TopicError` unless ``name`` is a legal Kafka topic name."""
    if name in (".", ".."):
        raise TopicError(f"topic name {name!r} is not allowed ('.' and '..' are reserved)")
    if len(name) > MAX_TOPIC_LENGTH:
        raise TopicError(
            f"topic name {name[:40]!r}… is {len(name)} characters, over Kafka's limit of "
            f"{MAX_TOPIC_LENGTH}"
        )
    if not _LEGAL_TOPIC.fullmatch(name):
        bad = sorted({c for c in name if not _LEGAL_TOPIC.fullmatch(c)})
        raise TopicError(
            f"topic name {name!r} has characters Kafka does not allow: {bad!r} "
            "(legal: ASCII letters, digits, '.', '_', '-')"
        )


LOGICAL_TOPICS = (
    "interactions",
    "deletions",
    "rec-requests",
    "recommendations",
    "model-updates",
    "deletion-receipts",
    "dead-letters",
    "items",
    # hot IMCorrect replicas (docs/scale-out.md): the writer's ordered change log and the
    # replicas' heartbeats; one partition each, so one order
    "imcorrect-log",
    "imcorrect-replicas",
)
#: topics whose order is the point: a single partition
SINGLE_PARTITION = ("model-updates", "imcorrect-log", "imcorrect-replicas")


#: kept as the newest record per key, never deleted by age
_COMPACTED = ("model-updates", "items")
#: input topics whose records' ts is bounded by their append time (beside the user-data ones)
STAMPED_BY_BROKER = ("items",)


@dataclass(frozen=True)
class TopicSpec:
    """How one topic is created: its full name, partitions and broker-side configs."""

    logical: str
    name: str
    partitions: int
    replication_factor: int | None  # None: chosen from the cluster's size at creation
    configs: dict[str, str]


def topic_name(settings: LetheSettings, logical: str) -> str:
    if logical not in LOGICAL_TOPICS:
        raise KeyError(f"unknown topic {logical!r}; known: {', '.join(LOGICAL_TOPICS)}")
    return f"{settings.topic_prefix}{logical}"


def topic_specs(settings: LetheSettings) -> list[TopicSpec]:
    """The full topic plan derived from settings.

    Topics that carry user data keep it no longer than ``topics.erasure_deadline_ms``
    (their segments roll at :func:`streams.retention.segment_ms` so old records do go);
    receipts are evidence without raw ids and are kept; model updates are compacted per model
    name so a restarted scorer finds the newest version of each model, and item metadata per
    item id so a trainer that starts without state finds the newest record of every item.
    """
    t = settings.topics
    retention = retention_plan(settings)
    specs = []
    for logical in LOGICAL_TOPICS:
        keep = retention[logical]
        configs = {
            "cleanup.policy": "compact" if logical in _COMPACTED else "delete",
            "max.message.bytes": str(settings.limits.max_message_bytes + 1024),
            "retention.ms": str(keep),
        }
        if logical in USER_DATA_TOPICS:
            configs["segment.ms"] = str(segment_ms(keep))
        if logical in USER_DATA_TOPICS or logical in STAMPED_BY_BROKER:
            # the broker's append time, not the producer's: retention by age cannot be
            # stretched by a future timestamp, and a record's ts bound is the same at
            # every read (streams/runtime/decode.py, reference_ms)
            configs["message.timestamp.type"] = "LogAppendTime"
        specs.append(
            TopicSpec(
                logical=logical,
                name=topic_name(settings, logical),
                partitions=1 if logical in SINGLE_PARTITION else t.partitions,
                replication_factor=t.replication_factor,
                configs=configs,
            )
        )
    return specs


def replication_for(
    spec: TopicSpec, brokers: int, min_insync: int | None
) -> tuple[int, dict[str, str]]:
    """Replication factor and configs for a cluster of ``brokers``: the configured factor,
    else 3 where the cluster allows it; ``min.insync.replicas`` as configured, else one less
    than the factor (at most 2, at least 1) so that one broker may be lost."""
    rf = spec.replication_factor or max(1, min(3, brokers))
    isr = min_insync or max(1, min(2, rf - 1))
    return rf, {**spec.configs, "min.insync.replicas": str(isr)}
