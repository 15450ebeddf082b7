"""The runtime's end-offsets question, retried through a moving leadership and refused at once
for anything else (fake admin clients; the broker-loss integration test does it for real)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.config import LetheSettings
from streams.runtime import kafka as runtime_kafka


class _Answers:
    """An admin client that answers ``list_offsets`` with one prepared outcome."""

    def __init__(self, outcome: int | KafkaError) -> None:
        self.outcome = outcome
        self.asked = 0

    def list_offsets(self, ask, isolation_level, request_timeout):
        self.asked += 1
        futures = {}
        for tp in ask:
            future: Future = Future()
            if isinstance(self.outcome, KafkaError):
                future.set_exception(KafkaException(self.outcome))
            else:
                future.set_result(type("Listed", (), {"offset": self.outcome})())
            futures[tp] = future
        return futures


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError._TRANSPORT,
    ],
)
def test_an_answer_of_a_moving_leadership_is_asked_again_of_a_fresh_client(monkeypatch, code):
    failing, answering = _Answers(KafkaError(code)), _Answers(42)
    monkeypatch.setattr(runtime_kafka, "admin", lambda settings: answering)
    monkeypatch.setattr(runtime_kafka.time, "sleep", lambda s: None)
    ends, client = runtime_kafka.end_offsets_retrying(LetheSettings(), "t", [0, 1], failing)
    assert ends == {"t:0": 42, "t:1": 42}
    assert client is answering and failing.asked == 1 and answering.asked == 1


def test_any_other_answer_is_raised_at_once(monkeypatch):
    refused = _Answers(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    monkeypatch.setattr(runtime_kafka, "admin", lambda settings: pytest.fail("asked again"))
    with pytest.raises(KafkaException):
        runtime_kafka.end_offsets_retrying(LetheSettings(), "t", [0], refused)
    assert refused.asked == 1
