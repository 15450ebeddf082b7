"""Request recommendations and wait for the matching reply on ``recommendations``."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer

from streams.client import LetheProducer
from streams.config import LetheSettings
from streams.contracts import ContractError, Recommendation, decode
from streams.kafka_config import client_kwargs
from streams.kafka_io import read_from_end
from streams.topics import topic_name


async def request_and_wait(
    settings: LetheSettings, user_id: str, k: int = 10, *, timeout_s: float = 10.0
) -> Recommendation:
    """Send a rec-request for ``user_id`` and return the reply carrying its request_id.

    The consumer is positioned at the end of every partition *before* the request is sent, so
    the reply cannot be missed. Raises :class:`TimeoutError` when no reply comes in time.
    """
    topic = topic_name(settings, "recommendations")
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        await read_from_end(consumer, topic)
        async with LetheProducer(settings, for_requests=True) as producer:
            request = await producer.request_recommendations(user_id, k)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            batches = await consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for records in batches.values():
                for record in records:
                    try:
                        rec = decode(Recommendation, record.value, settings.limits)
                    except ContractError:
                        continue
                    if rec.request_id == request.request_id:
                        return rec
        raise TimeoutError(f"no recommendation for request {request.request_id}")
    finally:
        await consumer.stop()
