"""Security settings without a broker: refused when unusable, translated alike for aiokafka
and librdkafka, carried to worker processes."""

from __future__ import annotations

import ssl
import subprocess

import pytest
from pydantic import ValidationError

from streams.config import LetheSettings, load_settings
from streams.kafka_config import (
    ACCESS,
    KafkaAccessError,
    access_topics,
    client_kwargs,
    librdkafka_config,
)
from streams.procs import settings_env
from streams.topics import LOGICAL_TOPICS


def _sasl_ssl(**security) -> LetheSettings:
    base = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "imcorrect",
        "sasl_password": "pw-1234",
    }
    return LetheSettings(security={**base, **security})


def test_oauthbearer_is_refused_when_the_settings_are_read(monkeypatch):
    monkeypatch.setenv("LETHE_SECURITY__PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LETHE_SECURITY__SASL_MECHANISM", "OAUTHBEARER")
    with pytest.raises(ValidationError, match="OAUTHBEARER is not supported.*SCRAM-SHA-512"):
        load_settings()


def test_sasl_without_credentials_is_refused():
    with pytest.raises(ValidationError, match="needs sasl_username and sasl_password"):
        LetheSettings(security={"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"})
    with pytest.raises(ValidationError, match="ssl_keyfile is set without ssl_certfile"):
        LetheSettings(security={"protocol": "SSL", "ssl_keyfile": "/k.pem"})


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ({"sasl_username": "u", "sasl_password": "pw-1234"}, "SASL settings are given"),
        ({"protocol": "SSL", "sasl_mechanism": "SCRAM-SHA-512"}, "SASL settings are given"),
        ({"ssl_cafile": "/ca.pem"}, "TLS files are given"),
        (
            {"protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": "pw-1234"},
            "password in clear text",
        ),
    ],
)
def test_settings_a_protocol_would_ignore_are_refused(security, message):
    # forgetting LETHE_SECURITY__PROTOCOL must not connect unauthenticated without a word
    with pytest.raises(ValidationError, match=message):
        LetheSettings(security=security)


def test_a_cleartext_password_is_allowed_only_when_asked_for():
    security = {"protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": "pw-1234"}
    LetheSettings(security={**security, "allow_cleartext_password": True})


def test_a_refused_setting_never_echoes_a_secret(monkeypatch):
    monkeypatch.setenv("LETHE_SECURITY__PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LETHE_SECURITY__SASL_PASSWORD", "hunter2-secret")  # no username
    with pytest.raises(ValidationError) as refused:
        load_settings()
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ValidationError) as short:
        LetheSettings(model_update_key="short-secret")
    assert "short-secret" not in str(short.value)


@pytest.mark.parametrize("field", ["hash_key", "model_update_key"])
def test_empty_or_short_keys_are_refused(field):
    # compose's ${VAR} of an unset variable is "": anyone could sign or reverse hashes
    for value in ("", "15-characters.."):
        with pytest.raises(ValidationError, match="at least 16 characters"):
            LetheSettings(**{field: value})
    LetheSettings(**{field: "x" * 16})
    # a short key of before can still be retired, so its tombstones stay matched
    LetheSettings(hash_key="x" * 16, hash_keys_retired=["old"])


def test_both_translations_agree_over_sasl_ssl(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(_a_ca_pem(tmp_path))
    s = _sasl_ssl(ssl_cafile=ca)
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "imcorrect" and kw["sasl_plain_password"] == "pw-1234"
    context = kw["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.get_ca_certs(), "the configured CA was not loaded"
    rd = librdkafka_config(s)
    assert rd["security.protocol"] == "SASL_SSL" and rd["sasl.mechanism"] == "SCRAM-SHA-512"
    assert rd["sasl.username"] == "imcorrect" and rd["sasl.password"] == "pw-1234"
    assert rd["ssl.ca.location"] == str(ca)


def test_a_missing_ca_file_is_named(tmp_path):
    s = _sasl_ssl(ssl_cafile=tmp_path / "nope.pem")
    for translate in (client_kwargs, librdkafka_config):
        with pytest.raises(KafkaAccessError, match="ssl_cafile .*nope.pem does not exist"):
            translate(s)


def test_worker_processes_inherit_the_security_settings(tmp_path, monkeypatch):
    ca = tmp_path / "ca.pem"  # only named here: nothing opens it
    env = settings_env(_sasl_ssl(ssl_cafile=ca))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = load_settings()
    assert child.security.protocol == "SASL_SSL"
    assert child.security.sasl_password.get_secret_value() == "pw-1234"
    assert child.security.ssl_cafile == ca
    assert "pw-1234" not in repr(child)


def test_every_principal_names_only_known_topics():
    for principal, access in ACCESS.items():
        assert set(access["read"]) | set(access["write"]) <= set(LOGICAL_TOPICS), principal
    s = LetheSettings(topic_prefix="p.")
    assert access_topics(s, "sdk") == [
        "p.recommendations",
        "p.deletion-receipts",
        "p.interactions",
        "p.deletions",
        "p.rec-requests",
        "p.items",
    ]


def _a_ca_pem(tmp_path) -> str:
    """A throwaway CA certificate, made as scripts/kafka/kafka.sh makes one (keytool)."""
    store, cert = tmp_path / "ca.p12", tmp_path / "made-ca.pem"
    common = ["-storetype", "PKCS12", "-storepass", "unit-test", "-keystore", str(store)]
    for args in (
        [
            "-genkeypair",
            "-alias",
            "ca",
            "-keyalg",
            "EC",
            "-ext",
            "bc:c",
            "-dname",
            "CN=lethe-test-ca",
        ],
        ["-exportcert", "-rfc", "-alias", "ca", "-file", str(cert)],
    ):
        subprocess.run(["keytool", *args, *common], check=True, capture_output=True)
    return cert.read_text()


def test_a_worker_process_sees_unset_settings_as_unset(monkeypatch):
    from streams.config import LetheSettings, load_settings
    from streams.procs import settings_env

    parent = LetheSettings(
        imcorrect={"memory_budget_gb": None, "mapping": "itemknn-topk", "itemknn_topk": {"k": 7}}
    )
    env = settings_env(parent)
    assert "LETHE_IMCORRECT__MEMORY_BUDGET_GB" not in env
    assert env["LETHE_IMCORRECT__ITEMKNN_TOPK__K"] == "7"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings().imcorrect == parent.imcorrect


def test_a_worker_process_shares_its_parents_keys(tmp_path, monkeypatch):
    from streams.config import LetheSettings
    from streams.model_auth import update_key
    from streams.procs import settings_env

    parent = LetheSettings(
        state_dir=tmp_path / "a",
        model_update_key="m-secret-0123456789",
        hash_key="h-secret-0123456789",
    )
    env = settings_env(parent)
    assert (
        env["LETHE_MODEL_UPDATE_KEY"] == "m-secret-0123456789"
        and env["LETHE_HASH_KEY"] == "h-secret-0123456789"
    )
    # as a replica would read it: a state folder of its own, the parent's signing key
    for name, value in {**env, "LETHE_STATE_DIR": str(tmp_path / "b")}.items():
        monkeypatch.setenv(name, value)
    assert update_key(LetheSettings()) == update_key(parent) == b"m-secret-0123456789"
