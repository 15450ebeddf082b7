"""Topic administration on the broker: create Lethe's topics, read their configs and
retention (aiokafka's admin client, for the CLI, the SDK and the workers' start)."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streams.config import LetheSettings
from streams.kafka_config import client_kwargs
from streams.retention import TopicRetention, over_deadline, retention_from_settings
from streams.topics import TopicError, check_topic_name, replication_for, topic_specs

log = logging.getLogger("lethe.topics")

_TOPIC_ALREADY_EXISTS = 36


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
                code, name, entries = resource[0], resource[3], resource[4]
                out[name]["configs"] = {e[0]: e[1] for e in entries}
                if code:  # e.g. no DescribeConfigs ACL: aiokafka does not raise for it
                    out[name]["error"] = for_code(code).__name__
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
        info = described.get(plan.name, {})
        cfg = info.get("configs", {})
        try:
            out[logical] = TopicRetention(
                plan.name,
                int(cfg["retention.ms"]),
                int(cfg.get("segment.ms", 0)),
                from_broker=True,
            )
        except (KeyError, ValueError):
            # receipts then state the plan, which the broker may not follow: say so
            log.warning(
                "retention of %s not read from the broker (%s); receipts and checks use "
                "the settings (%d ms). Grant DescribeConfigs on the topics (docs/security.md)",
                plan.name,
                info.get("error", "no retention.ms in its config"),
                plan.retention_ms,
            )
            out[logical] = plan
    over_deadline(out, settings.topics.erasure_deadline_ms)
    return out


async def check_topic_retention(settings: LetheSettings) -> tuple[list[str], list[str]]:
    """The start-up check: names of user-data topics that keep data past the erasure deadline
    (each one is also logged as a warning by :func:`topic_retention`), and of those whose
    retention the broker would not report (not verified)."""
    retention = await topic_retention(settings)
    over = over_deadline(retention, settings.topics.erasure_deadline_ms, warn=False)
    return over, [r.name for r in retention.values() if not r.from_broker]
