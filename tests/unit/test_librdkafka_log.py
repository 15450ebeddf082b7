"""librdkafka's log goes through a filter that holds back repeats (a broker outage logged
every failed connection attempt, about ten a second per client)."""

from __future__ import annotations

import logging
import time

from streams.config import LetheSettings
from streams.kafka_config import RepeatFilter
from streams.runtime import kafka


def _record(msg: str, created: float) -> logging.LogRecord:
    record = logging.LogRecord("lethe.librdkafka", logging.ERROR, __file__, 1, msg, (), None)
    record.created = created
    return record


def test_alike_messages_pass_once_a_window_with_the_count_held_back():
    keep = RepeatFilter(every_s=60)
    fail = "FAIL [thrd:127.0.0.1:9/bootstrap]: Connect failed (after {}ms in state CONNECT)"
    passed = [keep.filter(_record(fail.format(n % 3), 1000.0 + n / 10)) for n in range(100)]
    assert passed == [True] + [False] * 99  # ten seconds of failures: one line
    other = _record("another message", 1005.0)
    assert keep.filter(other)  # other kinds are not held back by it
    later = _record(fail.format(7), 1061.0)
    assert keep.filter(later) and "99 alike in the last 60 s not shown" in later.getMessage()


def test_a_runtime_consumer_without_a_broker_logs_a_line_not_a_flood(caplog):
    settings = LetheSettings(bootstrap_servers="127.0.0.1:9")  # nothing listens there
    consumer = kafka.consumer(settings)
    producer = kafka.producer(settings)
    try:
        with caplog.at_level(logging.DEBUG, logger="lethe.librdkafka"):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                consumer.poll(0.1)
                producer.poll(0.1)
    finally:
        consumer.close()
    lines = [r for r in caplog.records if r.name == "lethe.librdkafka"]
    # without the filter: about 30 lines in 3 s from these two clients
    assert 1 <= len(lines) <= 6, [r.getMessage() for r in lines]
