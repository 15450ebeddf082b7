"""The runtime's end-offsets question, retried through a moving leadership and refused at once
for anything else (fake admin clients; the broker-loss integration test does it for real)."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

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


# -- the publisher waits for every delivery report before callers count messages out ----------
class _SlowProducer:
    """``flush`` reports messages still queued a few times, as during a broker outage."""

    def __init__(self, left: list[int]) -> None:
        self.left = left
        self.flushes = 0

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        return self.left.pop(0) if self.left else 0


def test_the_publisher_settles_only_once_nothing_awaits_delivery():
    from streams.runtime.publish import Publisher

    producer = _SlowProducer([3, 1, 0])
    io = type("IO", (), {"producer": lambda self: producer})()
    publisher = Publisher(LetheSettings(), io, {})
    publisher.settle()
    assert producer.flushes == 3
    producer.left = [2]
    assert publisher.flush(0.1) == 2  # the bounded wait of a shutdown says what is left


# -- the scorer's request channel: where a newly assigned partition starts --------------------
def _channel():
    from streams.runtime.requests import RequestChannel

    return RequestChannel(
        LetheSettings(), "req", "rec", group_id="g", fetch_max_wait_ms=10, poll_batch=8
    )


class _Positions:
    """A consumer whose ``committed`` answers with prepared partitions or raises."""

    def __init__(self, answers: list) -> None:
        self.answers = answers

    def committed(self, parts, timeout):
        answer = self.answers.pop(0) if self.answers else self.answers_last
        if isinstance(answer, KafkaException):
            raise answer
        return answer

    def get_watermark_offsets(self, tp, timeout):
        return 0, 500


def test_a_partition_whose_position_was_not_read_is_asked_again(monkeypatch):
    from confluent_kafka import TopicPartition

    monkeypatch.setattr(runtime_kafka.time, "sleep", lambda s: None)
    # a partition answered with an error of its own (TopicPartition's error is read-only)
    failed = SimpleNamespace(
        topic="req", partition=0, offset=-1001, error=KafkaError(KafkaError.NOT_COORDINATOR)
    )
    consumer = _Positions([[failed, TopicPartition("req", 1, 7)]])
    consumer.answers_last = [TopicPartition("req", 0, 40), TopicPartition("req", 1, 7)]
    start = _channel()._start_positions(consumer, [TopicPartition("req", p) for p in (0, 1)])
    assert [(tp.partition, tp.offset) for tp in start] == [(0, 40), (1, 7)]


def test_unknown_start_positions_are_left_to_the_committed_offset_not_the_end(monkeypatch):
    from confluent_kafka import OFFSET_STORED, TopicPartition

    monkeypatch.setattr(runtime_kafka.time, "sleep", lambda s: None)
    consumer = _Positions([])
    consumer.answers_last = KafkaException(KafkaError(KafkaError._TIMED_OUT))
    start = _channel()._start_positions(consumer, [TopicPartition("req", 0)], timeout_s=0.0)
    assert [(tp.partition, tp.offset) for tp in start] == [(0, OFFSET_STORED)]


def test_a_failed_asynchronous_commit_is_sent_again_by_the_next_one():
    from confluent_kafka import TopicPartition

    channel = _channel()
    sent: list[list[tuple[int, int]]] = []

    class _Committer:
        def commit(self, offsets, asynchronous):
            sent.append([(tp.partition, tp.offset) for tp in offsets])

    channel._consumer = _Committer()
    channel._settled = {0: 10, 1: 20}
    channel._commit(sync=False)
    channel._on_commit(KafkaError(KafkaError.NOT_COORDINATOR), [TopicPartition("req", 0, 10)])
    channel._commit(sync=False)
    assert sent == [[(0, 10), (1, 20)], [(0, 10)]]


def test_the_log_start_is_asked_again_while_the_leadership_moves(monkeypatch):
    from confluent_kafka import TopicPartition

    monkeypatch.setattr(runtime_kafka.time, "sleep", lambda s: None)

    class _Watermarks:
        answers = [KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)), (5, 9)]

        def get_watermark_offsets(self, tp, timeout):
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    assert runtime_kafka.log_start(_Watermarks(), TopicPartition("log", 0)) == 5


def test_a_starting_position_whose_commit_failed_is_committed_later():
    from confluent_kafka import OFFSET_INVALID, TopicPartition

    channel = _channel()

    class _NewOwner(_Positions):
        fail = True
        sent: list[list[tuple[int, int]]] = []

        def incremental_assign(self, parts):
            pass

        def commit(self, offsets, asynchronous):
            if self.fail:
                raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))
            self.sent.append([(tp.partition, tp.offset) for tp in offsets])

    consumer = _NewOwner([[TopicPartition("req", 0, OFFSET_INVALID)]])
    channel._on_assign(consumer, [TopicPartition("req", 0)])
    consumer.fail = False
    channel._consumer = consumer
    channel._commit(sync=False)
    assert consumer.sent == [[(0, 500)]]  # the end when assigned: a later owner starts there


class _NewTopic:
    """A consumer whose topic has no leader yet for the first ``leaderless`` questions."""

    def __init__(self, leaderless: int, error: int = KafkaError.LEADER_NOT_AVAILABLE) -> None:
        self.leaderless, self.error = leaderless, error
        self.assigned: list | None = None

    def list_topics(self, topic, timeout):
        if self.leaderless:
            self.leaderless -= 1
            raise KafkaException(KafkaError(self.error))
        meta = SimpleNamespace(error=None, partitions={1: None, 0: None})
        return SimpleNamespace(topics={topic: meta})

    def get_watermark_offsets(self, tp, timeout):
        return 0, 10 + tp.partition

    def assign(self, partitions):
        self.assigned = [(tp.partition, tp.offset) for tp in partitions]


def test_assigning_at_the_end_waits_for_a_new_topics_leaders(monkeypatch):
    monkeypatch.setattr(runtime_kafka.time, "sleep", lambda s: None)
    consumer = _NewTopic(leaderless=3)
    runtime_kafka.assign_at_end(consumer, "answers")
    assert consumer.assigned == [(0, 10), (1, 11)]


def test_assigning_at_the_end_refuses_anything_else_at_once(monkeypatch):
    monkeypatch.setattr(runtime_kafka.time, "sleep", lambda s: pytest.fail("asked again"))
    consumer = _NewTopic(leaderless=1, error=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(RuntimeError, match="end offsets of answers"):
        runtime_kafka.assign_at_end(consumer, "answers")
    assert consumer.assigned is None
