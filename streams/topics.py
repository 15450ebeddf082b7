"""Topic names (with the configured prefix) and their creation policies."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.config import LetheSettings
from streams.kafka_config import client_kwargs

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
    replication_factor: int
    configs: dict[str, str]


def topic_name(settings: LetheSettings, logical: str) -> str:
    if logical not in LOGICAL_TOPICS:
        raise KeyError(f"unknown topic {logical!r}; known: {', '.join(LOGICAL_TOPICS)}")
    return f"{settings.topic_prefix}{logical}"


def topic_specs(settings: LetheSettings) -> list[TopicSpec]:
    """The full topic plan derived from settings.

    Deletions, receipts and dead letters are evidence and are kept long; model updates are
    compacted per model name so a restarted scorer finds the newest version of each model.
    """
    t = settings.topics
    retention = {
        "interactions": t.interactions_retention_ms,
        "deletions": t.deletions_retention_ms,
        "rec-requests": t.requests_retention_ms,
        "recommendations": t.recommendations_retention_ms,
        "model-updates": -1,
        "deletion-receipts": t.receipts_retention_ms,
        "dead-letters": t.dead_letters_retention_ms,
    }
    specs = []
    for logical in LOGICAL_TOPICS:
        configs = {
            "retention.ms": str(retention[logical]),
            "cleanup.policy": "compact" if logical == "model-updates" else "delete",
            "max.message.bytes": str(settings.limits.max_message_bytes + 1024),
        }
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


async def create_topics(settings: LetheSettings) -> dict[str, str]:
    """Create every topic that does not exist yet; returns ``{name: "created" | "exists"}``."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        result: dict[str, str] = {}
        missing = []
        for spec in topic_specs(settings):
            if spec.name in existing:
                result[spec.name] = "exists"
            else:
                missing.append(
                    NewTopic(
                        name=spec.name,
                        num_partitions=spec.partitions,
                        replication_factor=spec.replication_factor,
                        topic_configs=spec.configs,
                    )
                )
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # raced with another creator; describe_topics below is the truth
            for topic in missing:
                result[topic.name] = "created"
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
