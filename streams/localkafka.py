"""Where a Kafka broker comes from (tests, benchmarks, demo), in order of preference.

1. ``KAFKA_BOOTSTRAP`` names an existing cluster: use it as is.
2. A Docker engine answers: start testcontainers' Kafka module (same Apache image version).
3. Otherwise start the project's own single-node KRaft broker (scripts/kafka/kafka.sh) on a
   free loopback port, and stop it at the end of the session.

Failing all three is an error, never a skip: CI must run the Kafka tests.
The repository checkout is needed for option 3 (it holds scripts/kafka).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "scripts" / "kafka" / "kafka.sh"


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=5)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return done.returncode == 0


def _free_port_pair() -> int:
    """A port p such that p and p+1 are both free on loopback (broker and controller)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of loopback ports for the test broker")


def kafka_version() -> str:
    return subprocess.run(
        [str(KAFKA_SH), "version"], capture_output=True, text=True, check=True
    ).stdout.strip()


@contextmanager
def kafka_broker() -> Iterator[tuple[str, str]]:
    """Yield ``(bootstrap, how)`` for a reachable broker for the whole test session."""
    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        yield existing, "KAFKA_BOOTSTRAP"
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(f"apache/kafka:{kafka_version()}").with_kraft() as container:
            yield container.get_bootstrap_server(), "testcontainers"
        return
    port = _free_port_pair()
    env = {**os.environ, "LETHE_KAFKA_PORT": str(port)}
    subprocess.run([str(KAFKA_SH), "start"], env=env, check=True)
    try:
        yield f"127.0.0.1:{port}", f"local KRaft broker {kafka_version()}"
    finally:
        subprocess.run([str(KAFKA_SH), "stop"], env=env, check=False)


class LocalCluster:
    """A local cluster of ``brokers`` KRaft nodes started by ``kafka.sh start-cluster``."""

    def __init__(self, brokers: int = 3) -> None:
        self.brokers = brokers
        self.port = _free_port_run(2 * brokers)
        self.env = {
            **os.environ,
            "LETHE_KAFKA_PORT": str(self.port),
            "LETHE_KAFKA_BROKERS": str(brokers),
        }
        self.bootstrap = ",".join(f"127.0.0.1:{self.port + 2 * k}" for k in range(brokers))

    def _run(self, *args: str) -> None:
        subprocess.run([str(KAFKA_SH), *args], env=self.env, check=True)

    def start(self) -> LocalCluster:
        self._run("start-cluster")
        return self

    def kill(self, node: int) -> None:
        """SIGKILL broker ``node`` (1-based)."""
        self._run("kill-node", str(node))

    def restart(self, node: int) -> None:
        self._run("restart-node", str(node))

    def stop(self) -> None:
        subprocess.run([str(KAFKA_SH), "stop-cluster"], env=self.env, check=False)


def _free_port_run(n: int) -> int:
    """A port p such that p … p+n-1 are all free on loopback."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            for k in range(1, n):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no run of {n} free loopback ports")


@contextmanager
def kafka_cluster(brokers: int = 3) -> Iterator[LocalCluster]:
    """A local multi-broker cluster for the replication and broker-loss tests."""
    cluster = LocalCluster(brokers).start()
    try:
        yield cluster
    finally:
        cluster.stop()
