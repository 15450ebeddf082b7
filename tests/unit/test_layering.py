"""Who may talk to Kafka: the runtime, the SDK (producing and reading) and the settings
translation; nothing else in ``streams/``, and never ``models/``, ``export/`` or a service."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KAFKA_CLIENTS = ("aiokafka", "confluent_kafka", "kafka")
#: the SDK (producer, reader) and the one module that translates settings for both clients
ALLOWED = {"streams/client.py", "streams/reader.py", "streams/kafka_config.py"}


def _kafka_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {n for n in names if n.split(".")[0] in KAFKA_CLIENTS}
    return found


def _modules(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((REPO / f).rglob("*.py"))]


def test_models_export_and_services_never_import_a_kafka_client():
    offenders = {
        str(p.relative_to(REPO)): _kafka_imports(p)
        for p in _modules("models", "export", "streams/services")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_runtime_and_the_sdk_import_a_kafka_client():
    importing = {
        str(p.relative_to(REPO))
        for p in _modules("streams")
        if _kafka_imports(p) and "streams/runtime/" not in str(p.relative_to(REPO))
    }
    assert importing <= ALLOWED, importing - ALLOWED
