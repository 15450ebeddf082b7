"""Replay a bundled dataset into the ``interactions`` topic through the producer SDK."""

from __future__ import annotations

from itertools import islice

from tqdm import tqdm

from models.datasets import DatasetName, Interaction, load
from streams.client import LetheProducer
from streams.config import LetheSettings
from streams.contracts import InteractionEvent


def to_event(row: Interaction) -> InteractionEvent:
    return InteractionEvent(
        event_id=row.event_id,
        user_id=row.user_id,
        item_id=row.item_id,
        ts=row.ts_ms,
        kind="rating",
        value=row.value,
    )


async def replay_dataset(
    settings: LetheSettings,
    name: DatasetName,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> int:
    """Publish a dataset's interactions in time order; returns the number sent."""
    dataset = load(name)
    total = min(limit, len(dataset.interactions)) if limit else len(dataset.interactions)
    sent = 0
    async with LetheProducer(settings) as producer:
        with tqdm(total=total, desc=f"replay {name}", unit="ev", disable=not progress) as bar:
            for row in islice(dataset.replay(), total):
                await producer.send("interactions", row.user_id, to_event(row))
                sent += 1
                if sent % 1000 == 0:
                    bar.update(1000)
            await producer.flush()
            bar.update(sent - bar.n)
    return sent
