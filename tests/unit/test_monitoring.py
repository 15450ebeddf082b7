"""Monitoring assets: promtool checks, dashboards in step with their table, compose structure."""

from __future__ import annotations

import json
import os
import re
import subprocess
import typing
from pathlib import Path

import pytest
import yaml

from monitoring.dashboards import OUT, readme_table, rendered
from streams.tools import find_tool

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
PROMTOOL = find_tool("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; .ci/run does)"
)


def _promtool(*args: str, cwd: Path = MON) -> str:
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_prometheus_config_is_valid(tmp_path):
    # the compose file mounts the rules at /etc/prometheus/rules; point at the repo copy
    text = (MON / "prometheus.yml").read_text().replace("/etc/prometheus/rules", str(MON / "rules"))
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(text)
    assert "SUCCESS" in _promtool("check", "config", str(cfg))


@needs_promtool
def test_alert_rules_are_valid():
    out = _promtool("check", "rules", "rules/lethe.rules.yml")
    assert "SUCCESS: 12 rules found" in out


@needs_promtool
def test_alert_rule_unit_tests_pass():
    out = _promtool("test", "rules", "lethe.rules.test.yml", cwd=MON / "tests")
    assert "SUCCESS" in out


def test_required_alerts_exist():
    rules = yaml.safe_load((MON / "rules" / "lethe.rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "LetheConsumerLagGrowing",
        "LetheDeletionWithoutReceipt",
        "LetheScorerP99OverTarget",
        "LetheDeadLetterRate",
        "LetheTrainerStalled",
        "LetheValidationRegression",
        "LetheIMCorrectNoWriter",
        "LetheIMCorrectReplicaBehind",
        "LetheIMCorrectReplicaIdConflict",
        "LetheExportsRefused",
    } <= names


def test_dashboards_are_generated_from_the_table_and_documented():
    for name, text in rendered().items():
        assert (OUT / name).read_text() == text, f"{name} stale: python monitoring/dashboards.py"
        dash = json.loads(text)
        assert dash["panels"] and all(p["targets"][0]["expr"] for p in dash["panels"])
    assert readme_table() in (ROOT / "README.md").read_text(), "README panel table is stale"


def test_metrics_used_by_dashboards_exist():
    from streams import metrics

    source = Path(metrics.__file__).read_text()
    defined = set(re.findall(r'"(lethe_[a-z_]+)"', source))
    used = set()
    for text in rendered().values():
        used |= set(re.findall(r"lethe_[a-z_]+", text))
    names = {u.removesuffix("_bucket").removesuffix("_total") for u in used}
    missing = {u for u in names if u not in defined and f"{u}_total" not in defined}
    assert not missing, missing


def test_compose_structure():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "topics", "imcorrect", "trainer", "scorer", "prometheus", "grafana"} <= set(
        services
    )
    version = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    kafka_version = re.search(r"<kafka.version>(.*)</kafka.version>", version).group(1)
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version}"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["topics"]["build"] == "."
    for name in ("kafka", "imcorrect", "trainer", "scorer", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in (
        "./monitoring/prometheus.yml",
        "./monitoring/rules",
        "./monitoring/grafana/provisioning",
        "./monitoring/grafana/dashboards",
    ):
        assert path in mounts
        assert (ROOT / path).exists(), path
    for worker in ("imcorrect", "trainer", "scorer"):
        for volume in services[worker]["volumes"]:
            assert volume.split(":")[0] in compose["volumes"]
        assert services[worker]["command"] == ["worker", worker]
    shared = {tuple(services[w]["volumes"]) for w in ("imcorrect", "trainer", "scorer")}
    assert len(shared) == 1, "the scorer reads the others' files: one shared state volume"
    # the hash key is kept apart from the snapshots it protects (docs/privacy.md)
    key_file = compose["x-lethe-env"]["LETHE_HASH_KEY_FILE"]
    key_mount = next(
        v for v in services["imcorrect"]["volumes"] if key_file.startswith(v.split(":")[1] + "/")
    )
    state_dir = compose["x-lethe-env"]["LETHE_STATE_DIR"]
    assert not key_file.startswith(state_dir + "/") and key_mount.split(":")[0] != "lethe-state"
    assert services["imcorrect"]["environment"]["LETHE_IMCORRECT__ANSWER_REQUESTS"] == "false"
    prom = yaml.safe_load((MON / "prometheus.yml").read_text())
    for job in prom["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            if host == "localhost":
                continue
            assert host in services, f"Prometheus target {target} is not a compose service"
            env = services[host].get("environment", {})
            assert str(env.get("LETHE_METRICS_PORT")) == port
    assert (ROOT / "Dockerfile").exists()


def test_compose_scorer_replicas_keep_apart_state_and_share_the_group():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    scorers = [s for s in services.values() if s.get("command") == ["worker", "scorer"]]
    assert len(scorers) >= 2, "a second scorer replica"
    ids = [s["environment"].get("LETHE_SCORER__REPLICA_ID") for s in scorers]
    assert len(set(ids)) == len(ids), f"each replica needs its own state folder: {ids}"
    assert len({s["environment"].get("LETHE_SCORER__GROUP_ID") for s in scorers}) == 1
    prom = yaml.safe_load((MON / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for t in job["static_configs"][0]["targets"]}
    names = [n for n, s in services.items() if s.get("command") == ["worker", "scorer"]]
    assert {f"{n}:9464" for n in names} <= targets, "every replica is scraped"


def test_compose_imcorrect_replicas_follow_one_log_and_each_scorer_fuses_one():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    replicas = {
        n: s["environment"]
        for n, s in services.items()
        if s.get("command") == ["worker", "imcorrect"]
    }
    assert len(replicas) >= 2, "an IMCorrect follower"
    assert all(env["LETHE_IMCORRECT__REPLICATED"] == "true" for env in replicas.values())
    ids = [env["LETHE_IMCORRECT__REPLICA_ID"] for env in replicas.values()]
    assert len(set(ids)) == len(ids), f"each replica needs its own state folder: {ids}"
    for name, service in services.items():
        if service.get("command") == ["worker", "scorer"]:
            assert service["environment"]["LETHE_IMCORRECT__REPLICA_ID"] in ids, name
    prom = yaml.safe_load((MON / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for t in job["static_configs"][0]["targets"]}
    assert {f"{n}:9464" for n in replicas} <= targets, "every replica is scraped"


def test_compose_cluster_override_has_three_voters_and_every_worker_knows_them():
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    over = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())["services"]
    brokers = [n for n in over if n.startswith("kafka")]
    assert sorted(brokers) == ["kafka", "kafka-2", "kafka-3"]
    voters = {over[b]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for b in brokers}
    assert voters == {"1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert len({over[b]["environment"]["CLUSTER_ID"] for b in brokers}) == 1
    assert sorted(over[b]["environment"]["KAFKA_NODE_ID"] for b in brokers) == ["1", "2", "3"]
    workers = [n for n, s in base.items() if s.get("command", [""])[0] in ("worker", "topics")]
    for name in workers:
        bootstrap = over[name]["environment"]["KAFKA_BOOTSTRAP"]
        assert bootstrap.split(",") == [f"{b}:9092" for b in ("kafka", "kafka-2", "kafka-3")]


def _settings_path_exists(model: type, parts: list[str]) -> bool:
    """Whether ``A__B__C`` (lower-cased) names a field of the settings, nested included."""
    import dataclasses

    name, rest = parts[0], parts[1:]
    if dataclasses.is_dataclass(model):
        fields = {f.name: f.type for f in dataclasses.fields(model)}
        annotation = typing.get_type_hints(model).get(name) if name in fields else None
    else:
        info = model.model_fields.get(name)
        annotation = info.annotation if info is not None else None
        if info is None:  # an alias (KAFKA_BOOTSTRAP) is a whole name
            return False
    if annotation is None:
        return False
    if not rest:
        return True
    return isinstance(annotation, type) and _settings_path_exists(annotation, rest)


def test_every_lethe_variable_in_compose_names_a_setting():
    from streams.config import LetheSettings

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    names = {
        key
        for service in compose["services"].values()
        for key in (service.get("environment") or {})
        if key.startswith("LETHE_")
    }
    assert names, "no LETHE_ variables found"
    unknown = {
        key
        for key in names
        if not _settings_path_exists(LetheSettings, key.removeprefix("LETHE_").lower().split("__"))
    }
    assert not unknown, f"ignored by the settings (extra fields are ignored): {sorted(unknown)}"


def test_every_worker_in_compose_starts_with_valid_settings(monkeypatch):
    # each variable names a setting (above) is not enough: combinations are checked too
    from streams.config import LetheSettings

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        if service.get("command", [""])[0] not in ("worker", "topics"):
            continue
        for var in [v for v in os.environ if v.startswith("LETHE_") or v == "KAFKA_BOOTSTRAP"]:
            monkeypatch.delenv(var)
        for var, value in service["environment"].items():
            monkeypatch.setenv(var, str(value))
        try:
            LetheSettings()  # raises on a combination the workers refuse at start
        except ValueError as exc:
            pytest.fail(f"compose service {name} would not start: {exc}")
