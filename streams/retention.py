"""Where a subject's data still lives after a deletion, and until when (docs/privacy.md,
"Retention"). Kafka-free: the retention figures come from the broker at start (see
:func:`streams.runtime.admin.topic_retention`) or from settings.

Kafka removes a log segment only once its newest record is older than ``retention.ms``, and
the active segment is closed after ``segment.ms``; so a record appended now is gone at the
latest ``retention.ms + segment.ms`` from now (plus the broker's retention check interval,
five minutes by default, which :data:`CHECK_INTERVAL_MS` adds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streams.config import LetheSettings
from streams.contracts import MAX_EPOCH_MS, RetainedCopy

log = logging.getLogger("lethe.retention")

#: Kafka's default ``log.retention.check.interval.ms``
CHECK_INTERVAL_MS = 5 * 60 * 1000

#: topics that carry user ids or user data, and what of it they hold
USER_DATA_TOPICS: dict[str, str] = {
    "interactions": "the subject's interaction events as published",
    "deletions": "this deletion request (it names the subject)",
    "rec-requests": "recommendation requests naming the user",
    "recommendations": "recommendations sent to the user",
    "dead-letters": "malformed events that may name the subject (raw bytes)",
    "imcorrect-log": "the subject's events and deletions as the IMCorrect writer ordered them",
}


@dataclass(frozen=True)
class TopicRetention:
    """One topic's full name and how long it keeps a record (ms; -1: forever)."""

    name: str
    retention_ms: int
    segment_ms: int = 0
    #: read from the broker (False: the settings' plan, when the broker would not say)
    from_broker: bool = False

    def until(self, now_ms: int) -> int | None:
        """The latest time a record appended at ``now_ms`` can still be read (None: never
        removed)."""
        if self.retention_ms < 0:
            return None
        until = now_ms + self.retention_ms + self.segment_ms + CHECK_INTERVAL_MS
        # a retention set to "forever" as a huge number (Long.MAX_VALUE) is no bound either,
        # and past the receipts' timestamp range it would make every receipt invalid
        return until if until <= MAX_EPOCH_MS else None


def segment_ms(retention_ms: int) -> int:
    """The ``segment.ms`` Lethe sets on a user-data topic: a tenth of its retention, at most
    Kafka's default of a week, so a closed segment is not held back by a long-open one."""
    return max(60_000, min(7 * 24 * 3600 * 1000, retention_ms // 10))


def capped_retention(configured: int, deadline_ms: int) -> int:
    """A user-data topic's retention: the configured one, never past the erasure deadline."""
    return deadline_ms if configured < 0 else min(configured, deadline_ms)


def retention_plan(settings: LetheSettings) -> dict[str, int]:
    """``retention.ms`` of every Lethe topic (logical name → ms, -1: forever) as
    ``lethe topics create`` sets it: user-data topics capped at the erasure deadline."""
    t = settings.topics
    plan = {
        "interactions": t.interactions_retention_ms,
        "deletions": t.deletions_retention_ms,
        "rec-requests": t.requests_retention_ms,
        "recommendations": t.recommendations_retention_ms,
        "model-updates": -1,
        "deletion-receipts": t.receipts_retention_ms,
        "dead-letters": t.dead_letters_retention_ms,
        "imcorrect-log": t.interactions_retention_ms,
        "imcorrect-replicas": t.heartbeats_retention_ms,
        "items": -1,  # compacted item metadata, no user data (docs/privacy.md)
    }
    return {
        logical: capped_retention(ms, t.erasure_deadline_ms) if logical in USER_DATA_TOPICS else ms
        for logical, ms in plan.items()
    }


def retention_from_settings(settings: LetheSettings) -> dict[str, TopicRetention]:
    """The retention each user-data topic is created with (when the broker cannot be asked)."""
    return {
        logical: TopicRetention(f"{settings.topic_prefix}{logical}", ms, segment_ms(ms))
        for logical, ms in retention_plan(settings).items()
        if logical in USER_DATA_TOPICS
    }


def retained_elsewhere(
    retention: dict[str, TopicRetention], now_ms: int, scope: str
) -> list[RetainedCopy]:
    """The receipt's list of logs that may still hold the subject's data after ``now_ms``.

    Parameters
    ----------
    retention:
        Logical topic → its retention (from the broker or settings).
    now_ms:
        When the receipt is decided.
    scope:
        The deletion's scope; an item is never named by requests for recommendations.
    """
    out = []
    for logical, what in USER_DATA_TOPICS.items():
        if scope == "item" and logical == "rec-requests":
            continue
        r = retention.get(logical)
        if r is None:
            continue
        out.append(RetainedCopy(location=r.name, until=r.until(now_ms), what=what))
    return out


def over_deadline(
    retention: dict[str, TopicRetention], deadline_ms: int, warn: bool = True
) -> list[str]:
    """Names of user-data topics that keep a record longer than ``deadline_ms`` (each logged as
    a warning unless ``warn`` is False): the start-up check of docs/privacy.md."""
    bad = []
    for logical, r in retention.items():
        if logical in USER_DATA_TOPICS and (r.retention_ms < 0 or r.retention_ms > deadline_ms):
            bad.append(r.name)
            if not warn:
                continue
            log.warning(
                "topic %s keeps data for %s ms, longer than the erasure deadline of %d ms",
                r.name,
                "unbounded" if r.retention_ms < 0 else r.retention_ms,
                deadline_ms,
            )
    return bad
