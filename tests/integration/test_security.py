"""Lethe on a secured cluster: SASL_SSL with SCRAM-SHA-512, TLS and ACLs on a real broker.

One secure broker for the module (tests/integration/secure_broker.py). The producer SDK, the
IMCorrect worker (a real ``lethe worker imcorrect`` process) and the scorer's librdkafka
request channel each connect as their own principal with least-privilege ACLs; a principal
without ACLs and a wrong password are refused quickly with a message that says why; and no
password appears in any log, metrics page or receipt of the run.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.errors import ClusterAuthorizationFailedError, TopicAuthorizationFailedError
from prometheus_client import REGISTRY, generate_latest

from streams.client import DeliveryError, LetheProducer
from streams.contracts import DeletionReceipt, InteractionEvent, Recommendation, decode
from streams.kafka_config import KafkaAccessError, access_needs, check_access
from streams.procs import WorkerProcess, free_port, scrape
from streams.reader import read_all, request_and_wait
from streams.runtime.admin import create_topics
from streams.runtime.requests import RequestChannel, scorer_group
from streams.topics import topic_name
from tests.integration.secure_broker import SecureCluster, secure_broker

pytestmark = pytest.mark.kafka

#: the longest any refusal may take: well inside the clients' own (minutes-long) retries
REFUSAL_S = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> SecureCluster:
    with secure_broker(tmp_path_factory.mktemp("secure-kafka")) as c:
        print(f"\n[lethe tests] secure Kafka broker at {c.bootstrap} (SASL_SSL, ACLs)")
        asyncio.run(create_topics(c.settings("admin")))  # as an operator would, once
        yield c


class _Capture(logging.Handler):
    """Every log record of this process during the run, formatted as a handler would."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class SaslRun:
    receipts: list[DeletionReceipt]
    receipts_raw: list[bytes]
    recommendation: Recommendation
    worker_log: str
    worker_metrics: str
    test_logs: list[str]
    state_dir: Path


def _events(n_users: int = 30, per_user: int = 8) -> list[InteractionEvent]:
    return [
        InteractionEvent(
            event_id=f"e{u}-{k}",
            user_id=f"user-{u}",
            item_id=f"item-{(u * 7 + k * 3) % 40}",
            ts=1_700_000_000_000 + u * 100 + k,
        )
        for u in range(n_users)
        for k in range(per_user)
    ]


@pytest.fixture(scope="module")
def sasl_run(cluster: SecureCluster, tmp_path_factory) -> SaslRun:
    """The SDK (as ``sdk``) feeds a real IMCorrect worker (as ``imcorrect``) over SASL_SSL:
    events, one forget, one recommendation request; everything the run left behind."""
    tmp = tmp_path_factory.mktemp("sasl-run")
    sdk = cluster.settings("sdk")
    worker_settings = cluster.settings(
        "imcorrect",
        state_dir=tmp / "state",
        metrics_port=free_port(),
        imcorrect={"snapshot_interval_s": 1.0},
    )
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    old_level = root.level
    root.setLevel(logging.DEBUG)  # the clients' debug lines too: a secret must not hide there
    worker = WorkerProcess(worker_settings, tmp / "worker.log").start()
    try:
        worker.wait_ready(timeout_s=90)
        events = _events()

        async def publish() -> None:
            async with LetheProducer(sdk) as producer:
                for event in events:
                    await producer.send("interactions", event.user_id, event)
                await producer.flush()
                await producer.forget_user("user-3")

        asyncio.run(publish())
        receipts_raw: list[bytes] = []
        deadline = time.monotonic() + 60
        while not receipts_raw and time.monotonic() < deadline:
            receipts_raw = [r.value for r in asyncio.run(read_all(sdk, "deletion-receipts"))]
            time.sleep(0.5)
        assert receipts_raw, f"no receipt over SASL_SSL:\n{worker.log_tail()}"
        recommendation = asyncio.run(request_and_wait(sdk, "user-5", k=5, timeout_s=30))
        metrics = "\n".join(f"{k} {v}" for k, v in scrape(worker_settings.metrics_port).items())
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.kill()
        root.removeHandler(capture)
        root.setLevel(old_level)
    return SaslRun(
        receipts=[decode(DeletionReceipt, raw) for raw in receipts_raw],
        receipts_raw=receipts_raw,
        recommendation=recommendation,
        worker_log=(tmp / "worker.log").read_text(errors="replace"),
        worker_metrics=metrics,
        test_logs=capture.lines,
        state_dir=worker_settings.state_dir,
    )


def test_worker_applies_forgets_and_answers_over_sasl_ssl(sasl_run: SaslRun):
    assert "imcorrect worker ready" in sasl_run.worker_log
    (receipt,) = sasl_run.receipts
    assert receipt.status == "applied" and receipt.removed["users"] == 1
    assert receipt.removed["interactions"] == 8
    rec = sasl_run.recommendation
    assert rec.user_id == "user-5" and rec.strategy == "personal" and len(rec.items) == 5
    assert "lethe_" in sasl_run.worker_metrics  # the metrics page was read mid-run


def test_no_secret_in_logs_metrics_or_receipts(cluster: SecureCluster, sasl_run: SaslRun):
    # the test process's own registry too: the SDK and request helpers ran here
    haystacks = {
        "worker log": sasl_run.worker_log,
        "worker /metrics": sasl_run.worker_metrics,
        "test-process /metrics": generate_latest(REGISTRY).decode(),
        "test-process logs": "\n".join(sasl_run.test_logs),
        "receipts": b"\n".join(sasl_run.receipts_raw).decode(errors="replace"),
        "broker log": (cluster.run_dir / "server.log").read_text(errors="replace"),
    }
    assert sasl_run.test_logs, "nothing was logged: the capture did not work"
    for where, text in haystacks.items():
        assert text, f"{where} is empty: nothing was checked"
        for secret in cluster.secrets:
            assert secret not in text, f"a password appears in the {where}"
    # nor in what the worker keeps on disk (snapshots)
    files = [p for p in sasl_run.state_dir.rglob("*") if p.is_file()]
    assert files, "the worker wrote no state"
    for path in files:
        blob = path.read_bytes()
        assert not any(secret.encode() in blob for secret in cluster.secrets), path


def test_scorer_request_channel_over_sasl_ssl(cluster: SecureCluster):
    scorer, sdk = cluster.settings("scorer"), cluster.settings("sdk")

    async def scenario() -> tuple[list[bytes], list, list[str]]:
        channel = RequestChannel(
            scorer,
            topic_name(scorer, "rec-requests"),
            topic_name(scorer, "recommendations"),
            group_id=scorer_group(scorer),
            fetch_max_wait_ms=100,
            poll_batch=8,
        )
        await asyncio.to_thread(channel.open)
        errors: list = []
        delivered = threading.Semaphore(0)

        def on_delivery(error) -> None:
            errors.append(error)
            delivered.release()

        try:
            async with LetheProducer(sdk, for_requests=True) as producer:
                sent = [await producer.request_recommendations(f"u{k}", 3) for k in range(5)]
            got: list = []
            deadline = time.monotonic() + 30
            while len(got) < len(sent) and time.monotonic() < deadline:
                got += await asyncio.to_thread(channel.next_batch, 8, 0.5)
            channel.publish_batch(got, [(r.value, r.key, on_delivery) for r in got])
            for _ in got:
                assert await asyncio.to_thread(delivered.acquire, True, 30)
        finally:
            await asyncio.to_thread(channel.close)
        return [r.value for r in got], errors, [s.request_id for s in sent]

    values, errors, request_ids = asyncio.run(scenario())
    assert errors == [None] * len(values)
    assert all(any(rid.encode() in v for v in values) for rid in request_ids)
    replies = {r.value for r in asyncio.run(read_all(sdk, "recommendations"))}
    assert set(values) <= replies  # the replies reached the topic, readable by the SDK


@contextmanager
def _bounded(seconds: float = REFUSAL_S) -> Iterator[None]:
    """Assert that the ``with`` body (a refusal, raised inside it) took at most ``seconds``."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - t0
        assert elapsed < seconds, f"took {elapsed:.1f} s: that is a hang, not a refusal"


def _exits_with(worker: WorkerProcess, message: str, within_s: float = 60) -> None:
    """The worker process ends (not a retry loop) with ``message`` in its log."""
    worker.start()
    try:
        with _bounded(within_s):
            while worker.alive():
                time.sleep(0.2)
        assert worker.proc.returncode != 0
        assert message in worker.log_tail(), worker.log_tail()
    finally:
        worker.kill()


def test_principal_without_acls_is_refused_with_a_clear_error(cluster: SecureCluster, tmp_path):
    nobody, sdk = cluster.settings("nobody"), cluster.settings("sdk")
    requests_topic = topic_name(nobody, "rec-requests")

    # librdkafka, the scorer's request channel: names the topic and the missing ACL
    with _bounded(), pytest.raises(KafkaAccessError, match="TOPIC_AUTHORIZATION_FAILED"):
        check_access(nobody, [requests_topic])
    channel = RequestChannel(
        nobody,
        requests_topic,
        topic_name(nobody, "recommendations"),
        group_id=scorer_group(nobody),
        fetch_max_wait_ms=100,
        poll_batch=8,
    )
    with (
        _bounded(),
        pytest.raises(KafkaAccessError, match=f"not authorised for topic {requests_topic}"),
    ):
        channel.open()

    # aiokafka, the SDK: an idempotent producer may not even start without a WRITE ACL …
    async def start_producer() -> None:
        async with LetheProducer(nobody):
            pass

    with _bounded(), pytest.raises(ClusterAuthorizationFailedError):
        asyncio.run(start_producer())

    # … and a principal with ACLs is still refused a topic outside them
    async def write_elsewhere() -> None:
        async with LetheProducer(sdk) as producer:
            event = _events(1, 1)[0]
            await producer.send("model-updates", event.user_id, event)

    with _bounded(), pytest.raises(DeliveryError) as refused:
        asyncio.run(write_elsewhere())
    ((_, error),) = refused.value.failures
    assert isinstance(error, TopicAuthorizationFailedError)
    assert "model-updates" in str(refused.value)

    # the worker process, started as a principal without ACLs: says which topic, and exits
    worker = WorkerProcess(
        nobody.model_copy(update={"state_dir": tmp_path / "s"}), tmp_path / "w.log"
    )
    _exits_with(
        worker, f"user 'nobody' (SCRAM-SHA-512) is not authorised for topic {nobody.topic_prefix}"
    )


def test_a_principal_that_may_only_describe_a_topic_is_refused(
    cluster: SecureCluster, sasl_run: SaslRun, tmp_path
):
    # the scorer's principal may DESCRIBE every topic under the prefix (the existence check
    # passes) but not write receipts: as the IMCorrect worker it would run and never prove
    # a deletion. The topics exist (sasl_run created them), so the broker judges each one
    scorer = cluster.settings("scorer", state_dir=tmp_path / "s")
    receipts = topic_name(scorer, "deletion-receipts")
    with _bounded(), pytest.raises(KafkaAccessError, match=f"WRITE {receipts}"):
        check_access(scorer, needs=access_needs(scorer, "imcorrect"))
    imcorrect = cluster.settings("imcorrect")
    with _bounded():
        check_access(imcorrect, needs=access_needs(imcorrect, "imcorrect"))  # it may
    _exits_with(WorkerProcess(scorer, tmp_path / "w.log"), f"may not READ {receipts}")


def test_wrong_password_fails_fast_with_a_clear_message(cluster: SecureCluster, tmp_path):
    wrong = cluster.settings("sdk", password="not-the-password")
    with _bounded(), pytest.raises(KafkaAccessError, match="SASL authentication failed"):
        check_access(wrong)

    async def start_producer() -> None:
        async with LetheProducer(wrong):
            pass

    with _bounded(), pytest.raises(KafkaAccessError, match="SASL authentication failed"):
        asyncio.run(start_producer())

    channel = RequestChannel(
        wrong,
        topic_name(wrong, "rec-requests"),
        topic_name(wrong, "recommendations"),
        group_id=scorer_group(wrong),
        fetch_max_wait_ms=100,
        poll_batch=8,
    )
    with _bounded(), pytest.raises(KafkaAccessError, match="SASL authentication failed"):
        channel.open()

    # the worker process: exits with the reason in its log rather than retrying forever
    worker_settings = cluster.settings(
        "imcorrect", password="not-the-password", state_dir=tmp_path / "s"
    )
    _exits_with(
        WorkerProcess(worker_settings, tmp_path / "worker.log"),
        "SASL authentication failed for user 'imcorrect'",
    )


def test_untrusted_broker_certificate_fails_fast_with_a_clear_message(
    cluster: SecureCluster, tmp_path
):
    """A CA that did not sign the broker's certificate: refused at the TLS handshake."""
    other_ca = tmp_path / "other-ca.pem"
    common = ["-storetype", "PKCS12", "-storepass", "other-ca", "-keystore", str(tmp_path / "o")]
    for args in (
        ["-genkeypair", "-alias", "ca", "-keyalg", "EC", "-ext", "bc:c", "-dname", "CN=other"],
        ["-exportcert", "-rfc", "-alias", "ca", "-file", str(other_ca)],
    ):
        subprocess.run(["keytool", *args, *common], check=True, capture_output=True)
    untrusted = cluster.settings("sdk").model_copy(deep=True)
    untrusted.security.ssl_cafile = other_ca
    with _bounded(), pytest.raises(KafkaAccessError, match="TLS handshake .* failed"):
        check_access(untrusted)

    async def start_producer() -> None:
        async with LetheProducer(untrusted):
            pass

    with _bounded(), pytest.raises(KafkaAccessError, match="is ssl_cafile the CA"):
        asyncio.run(start_producer())
