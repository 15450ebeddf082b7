"""The change-log writer's transactions against a scripted producer: a failure short of fencing
is aborted and tried again, fencing stops the writer, and a writer that can neither commit nor
abort gives up its role instead of taking the replica down (the replication integration tests
do it against real brokers)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.config import LetheSettings
from streams.runtime.log_writer import Fenced, TransactionalLog, TransactionsFailing, WriterLost

RECORDS = [("log", b"a", None), ("log", b"b", None)]


def _error(code: int, **flags: bool) -> KafkaException:
    return KafkaException(KafkaError(code, "scripted", **flags))


class ScriptedProducer:
    """Raises the scripted exception at the n-th call of a method, in the order given."""

    def __init__(self, **script: list[KafkaException | None]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.produced: list[bytes] = []
        self.committed: list[list[bytes]] = []
        self._open: list[bytes] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        planned = self.script.get(name, [])
        outcome = planned.pop(0) if planned else None
        if outcome is not None:
            raise outcome

    def begin_transaction(self) -> None:
        self._call("begin")
        self._open = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._call("produce")
        self._open.append(value)

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")
        self.committed.append(self._open)

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")
        self._open = []

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self._call("flush")
        return 0


def _log(producer: ScriptedProducer) -> TransactionalLog:
    return TransactionalLog(LetheSettings(), producer=producer)  # type: ignore[arg-type]


def test_a_clean_transaction_commits_every_record_once():
    producer = ScriptedProducer()
    _log(producer).commit(RECORDS)
    assert producer.committed == [[b"a", b"b"]]
    assert "abort" not in producer.calls


@pytest.mark.parametrize(
    "failure",
    [
        # what produce() raises once a lost broker has made the transaction abortable
        {"produce": [None, _error(KafkaError._STATE)]},
        {"commit": [_error(KafkaError._TIMED_OUT, txn_requires_abort=True)]},
        {"commit": [_error(KafkaError.NOT_ENOUGH_REPLICAS, txn_requires_abort=True)]},
        {"begin": [_error(KafkaError._STATE)]},
    ],
)
def test_a_failed_transaction_is_aborted_and_written_whole_on_the_next_attempt(failure):
    producer = ScriptedProducer(**failure)
    _log(producer).commit(RECORDS)
    assert producer.committed == [[b"a", b"b"]]
    assert producer.calls.count("abort") == 1


def test_an_abort_that_times_out_is_asked_again():
    producer = ScriptedProducer(
        produce=[_error(KafkaError._STATE)],
        abort=[_error(KafkaError._TIMED_OUT, retriable=True)],
    )
    _log(producer).commit(RECORDS)
    assert producer.committed == [[b"a", b"b"]]
    assert producer.calls.count("abort") == 2


def test_a_fenced_writer_stops_at_once():
    producer = ScriptedProducer(commit=[_error(KafkaError._FENCED, fatal=True)])
    with pytest.raises(Fenced):
        _log(producer).commit(RECORDS)
    assert producer.committed == [] and "abort" not in producer.calls


def test_a_writer_whose_abort_fails_gives_up_its_role():
    producer = ScriptedProducer(
        produce=[_error(KafkaError._STATE)],
        abort=[_error(KafkaError.INVALID_TXN_STATE)],
    )
    with pytest.raises(TransactionsFailing) as raised:
        _log(producer).commit(RECORDS)
    assert isinstance(raised.value, WriterLost)  # what the replica catches: it keeps following
    assert producer.committed == []


def test_a_writer_that_never_commits_gives_up_after_its_attempts():
    producer = ScriptedProducer(produce=[_error(KafkaError._STATE)] * 100)
    with pytest.raises(TransactionsFailing):
        _log(producer).commit(RECORDS)
    assert producer.committed == []


def test_closing_a_fenced_writer_raises_nothing():
    # librdkafka's flush raises the fatal error of a fenced producer (it killed a replica
    # that had just given up the role, in the broker-loss test)
    producer = ScriptedProducer(flush=[_error(KafkaError._FENCED, fatal=True)])
    _log(producer).close()
    assert producer.calls == ["flush"]


def test_a_commit_whose_outcome_is_unknown_is_never_written_again(monkeypatch):
    # a timed-out commit stays in progress in librdkafka; an abort then answers _CONFLICT.
    # Writing the step again could append it twice: the writer gives up its role instead.
    monkeypatch.setattr("streams.runtime.log_writer._COMMIT_WAIT_S", 0.0)
    producer = ScriptedProducer(
        commit=[_error(KafkaError._TIMED_OUT, retriable=True)],
        abort=[_error(KafkaError._CONFLICT)],
    )
    with pytest.raises(TransactionsFailing, match="outcome unknown"):
        _log(producer).commit(RECORDS)
    assert producer.calls.count("begin") == 1 and producer.committed == []


def test_a_timed_out_commit_is_called_again_within_the_transaction_timeout():
    producer = ScriptedProducer(commit=[_error(KafkaError._TIMED_OUT, retriable=True)])
    _log(producer).commit(RECORDS)
    assert producer.calls == ["begin", "produce", "produce", "commit", "commit"]
    assert producer.committed == [[b"a", b"b"]]


def test_a_permanent_error_is_raised_as_it_is():
    # not a lost broker (here: no right to write the topic): no quiet cycling of the role
    producer = ScriptedProducer(produce=[_error(KafkaError.TOPIC_AUTHORIZATION_FAILED)])
    with pytest.raises(KafkaException) as raised:
        _log(producer).commit(RECORDS)
    assert not isinstance(raised.value, WriterLost)
    assert "abort" not in producer.calls
