"""A secured single-node broker for the security tests: SASL_SSL (SCRAM-SHA-512), TLS
certificates made at start, ACLs enforced, one principal per Lethe worker.

Started with ``scripts/kafka/kafka.sh start-secure`` on free loopback ports, whatever
``KAFKA_BOOTSTRAP`` or Docker offer: the point is a broker whose security we control. The
ACLs are created through the admin API as the super user ``admin``; each worker may read
and write only its own topics (LITERAL names), see the names of Lethe's topics (DESCRIBE
on the PREFIXED topic prefix) and use its own consumer groups (PREFIXED). ``nobody``
authenticates but has no ACL at all.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from streams.config import LetheSettings
from streams.kafka_config import ACCESS, librdkafka_config
from streams.localkafka import KAFKA_SH, _free_port_pair

#: the worker principals given ACLs here, with what they need (streams.kafka_config.ACCESS)
WORKERS = ("imcorrect", "scorer", "sdk")
#: consumer-group prefixes: the IMCorrect worker's group id, the scorer's request channel
GROUP_PREFIX = {"imcorrect": "lethe-imcorrect", "scorer": "lethe-scorer-"}
PRINCIPALS = ("admin", *WORKERS, "nobody")


@dataclass
class SecureCluster:
    bootstrap: str
    ca_file: Path
    run_dir: Path
    topic_prefix: str
    passwords: dict[str, str] = field(repr=False)

    @property
    def secrets(self) -> list[str]:
        return list(self.passwords.values())

    def settings(self, principal: str, password: str | None = None, **extra) -> LetheSettings:
        """Settings for ``principal`` over SASL_SSL (``password`` overrides the real one)."""
        return LetheSettings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=self.topic_prefix,
            security={
                "protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": principal,
                "sasl_password": password or self.passwords[principal],
                "ssl_cafile": self.ca_file,
            },
            **{"metrics_port": -1, **extra},
        )


def acl_bindings(topic_prefix: str) -> list[AclBinding]:
    """Least privilege for each worker principal; nothing for ``nobody``."""
    allow = AclPermissionType.ALLOW
    out = []
    for principal in WORKERS:
        access, user = ACCESS[principal], f"User:{principal}"
        for op_name, operation in (("read", AclOperation.READ), ("write", AclOperation.WRITE)):
            for logical in access[op_name]:
                out.append(
                    AclBinding(
                        ResourceType.TOPIC,
                        f"{topic_prefix}{logical}",
                        ResourcePatternType.LITERAL,
                        user,
                        "*",
                        operation,
                        allow,
                    )
                )
        # names only: lets create_topics see that the topics exist (it creates none); and
        # their configs: the retention the receipts state is read from the broker
        for operation in (AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS):
            out.append(
                AclBinding(
                    ResourceType.TOPIC,
                    topic_prefix,
                    ResourcePatternType.PREFIXED,
                    user,
                    "*",
                    operation,
                    allow,
                )
            )
        if principal in GROUP_PREFIX:
            out.append(
                AclBinding(
                    ResourceType.GROUP,
                    GROUP_PREFIX[principal],
                    ResourcePatternType.PREFIXED,
                    user,
                    "*",
                    AclOperation.READ,
                    allow,
                )
            )
    return out


def create_acls(cluster: SecureCluster) -> None:
    admin = AdminClient(librdkafka_config(cluster.settings("admin")))
    for binding, future in admin.create_acls(acl_bindings(cluster.topic_prefix)).items():
        try:
            future.result(timeout=30)
        except Exception as exc:
            raise RuntimeError(f"ACL not created: {binding}") from exc


@contextmanager
def secure_broker(run_dir: Path) -> Iterator[SecureCluster]:
    """Start a secure broker, create the ACLs, yield it; stop it at the end."""
    port = _free_port_pair()
    # hex passwords: fine for the JAAS line and the format tool's syntax
    passwords = {name: secrets.token_hex(16) for name in PRINCIPALS}
    env = {
        **os.environ,
        "LETHE_KAFKA_PORT": str(port),
        "LETHE_KAFKA_RUN": str(run_dir),
        "LETHE_KAFKA_SECURE": "1",
        "LETHE_KAFKA_ADMIN_PASSWORD": passwords["admin"],
        "LETHE_KAFKA_SCRAM_USERS": " ".join(
            f"{name}={pw}" for name, pw in passwords.items() if name != "admin"
        ),
    }
    subprocess.run([str(KAFKA_SH), "start"], env=env, check=True, timeout=240)
    try:
        cluster = SecureCluster(
            bootstrap=f"127.0.0.1:{port}",
            ca_file=run_dir / "tls" / "ca.pem",
            run_dir=run_dir,
            topic_prefix=f"sec{secrets.token_hex(4)}.",
            passwords=passwords,
        )
        create_acls(cluster)
        yield cluster
    finally:
        subprocess.run([str(KAFKA_SH), "stop"], env=env, check=False, timeout=120)
