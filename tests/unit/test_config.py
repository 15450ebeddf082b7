"""Settings come from defaults, a TOML file (LETHE_CONFIG) and the environment, in that order."""

from __future__ import annotations

from streams.config import load_settings
from streams.kafka_config import client_kwargs, producer_kwargs


def test_toml_file_then_environment_override(tmp_path, monkeypatch):
    cfg = tmp_path / "lethe.toml"
    cfg.write_text(
        'topic_prefix = "prod."\n'
        'state_dir = "/srv/lethe"\n'
        "[imcorrect]\n"
        'mapping = "gfcf"\n'
        "batch_max_events = 500\n"
        "[topics]\n"
        "partitions = 12\n"
    )
    monkeypatch.setenv("LETHE_CONFIG", str(cfg))
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("LETHE_IMCORRECT__BATCH_MAX_EVENTS", "50")
    s = load_settings()
    assert s.bootstrap_servers == "k1:9092,k2:9092"
    assert s.topic_prefix == "prod." and str(s.state_dir) == "/srv/lethe"
    assert s.imcorrect.mapping == "gfcf" and s.topics.partitions == 12
    assert s.imcorrect.batch_max_events == 50  # the environment wins over the file


def test_sasl_settings_pass_through_without_leaking(monkeypatch):
    monkeypatch.setenv("LETHE_SECURITY__PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LETHE_SECURITY__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("LETHE_SECURITY__SASL_USERNAME", "lethe")
    monkeypatch.setenv("LETHE_SECURITY__SASL_PASSWORD", "s3cret")
    s = load_settings()
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SASL_PLAINTEXT"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512" and kw["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in s.model_dump_json()
    p = producer_kwargs(s)
    assert p["enable_idempotence"] is True and p["acks"] == "all"
