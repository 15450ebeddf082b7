"""Topic names (with the configured prefix) and their creation policies."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streams.config import LetheSettings
from streams.kafka_config import client_kwargs
from streams.retention import (
    USER_DATA_TOPICS,
    TopicRetention,
    over_deadline,
    retention_from_settings,
    retention_plan,
    segment_ms,
)

log = logging.getLogger("lethe.topics")

#: Kafka's topic-name rules (``org.apache.kafka.common.internals.Topic``)
_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]+")
MAX_TOPIC_LENGTH = 249
_TOPIC_ALREADY_EXISTS = 36


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
)


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
    name so a restarted scorer finds the newest version of each model.
    """
    t = settings.topics
    retention = retention_plan(settings)
    specs = []
    for logical in LOGICAL_TOPICS:
        keep = retention[logical]
        configs = {
            "cleanup.policy": "compact" if logical == "model-updates" else "delete",
            "max.message.bytes": str(settings.limits.max_message_bytes + 1024),
            "retention.ms": str(keep),
        }
        if logical in USER_DATA_TOPICS:
            configs["segment.ms"] = str(segment_ms(keep))
        specs.append(
            TopicSpec(
                logical=logical,
                name=topic_name(settings, logical),
                partitions=1 if logical == "model-updates" else t.partitions,
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


async def create_topics(settings: LetheSettings) -> dict[str, str]:
    """Create every topic that does not exist yet; returns ``{name: "created" | "exists"}``.

    Raises
    ------
    TopicError
        When a name is not a legal Kafka topic name (checked before asking the broker), or
        when the broker refuses a topic (its per-topic error is in the message).
    """
    specs = topic_specs(settings)
    for spec in specs:
        check_topic_name(spec.name)
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        brokers = len((await admin.describe_cluster())["brokers"])
        result: dict[str, str] = {}
        missing = []
        for spec in specs:
            if spec.name in existing:
                result[spec.name] = "exists"
            else:
                rf, configs = replication_for(spec, brokers, settings.topics.min_insync_replicas)
                missing.append(
                    NewTopic(
                        name=spec.name,
                        num_partitions=spec.partitions,
                        replication_factor=rf,
                        topic_configs=configs,
                    )
                )
        if missing:
            try:
                response = await admin.create_topics(missing)
                errors = {t[0]: (t[1], t[2] if len(t) > 2 else None) for t in response.topic_errors}
            except TopicAlreadyExistsError:
                errors = {}  # raced with another creator: they exist now
            refused = []
            for topic in missing:
                code, message = errors.get(topic.name, (0, None))
                if code == 0:
                    result[topic.name] = "created"
                elif code == _TOPIC_ALREADY_EXISTS:
                    result[topic.name] = "exists"  # raced with another creator
                else:
                    refused.append(f"{topic.name}: {for_code(code).__name__}: {message or ''}")
            if refused:
                raise TopicError("the broker refused: " + "; ".join(refused))
        return result
    finally:
        await admin.close()


async def describe_topic_configs(settings: LetheSettings, names: list[str]) -> dict[str, dict]:
    """Partitions and configs of each named topic, as the broker reports them."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        meta = await admin.describe_topics(names)
        partitions = {m["topic"]: len(m["partitions"]) for m in meta}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        )
        out: dict[str, dict] = {n: {"partitions": partitions.get(n), "configs": {}} for n in names}
        for response in responses:
            for resource in response.resources:
                # (error_code, error_message, resource_type, resource_name, config_entries)
                name, entries = resource[3], resource[4]
                out[name]["configs"] = {e[0]: e[1] for e in entries}
        return out
    finally:
        await admin.close()


async def topic_retention(settings: LetheSettings) -> dict[str, TopicRetention]:
    """Retention of the user-data topics as the broker reports it; warns about any that keeps
    data past the erasure deadline (the start-up check, docs/privacy.md "Retention").

    Falls back to the settings' plan (with a warning) when the broker cannot be asked, so a
    worker still writes receipts that say where data lives.
    """
    planned = retention_from_settings(settings)
    try:
        described = await describe_topic_configs(settings, [r.name for r in planned.values()])
    except Exception as exc:  # noqa: BLE001 - any broker failure: use the plan, say so
        log.warning("could not read topic retention from the broker (%s); using settings", exc)
        return planned
    out = {}
    for logical, plan in planned.items():
        cfg = described.get(plan.name, {}).get("configs", {})
        try:
            out[logical] = TopicRetention(
                plan.name, int(cfg["retention.ms"]), int(cfg.get("segment.ms", 0))
            )
        except (KeyError, ValueError):
            out[logical] = plan
    over_deadline(out, settings.topics.erasure_deadline_ms)
    return out


async def check_topic_retention(settings: LetheSettings) -> list[str]:
    """The start-up check: names of user-data topics that keep data past the erasure deadline
    (each one is also logged as a warning by :func:`topic_retention`)."""
    retention = await topic_retention(settings)
    return over_deadline(retention, settings.topics.erasure_deadline_ms, warn=False)
