"""A real Prometheus scrapes the worker during a short replay; PromQL shows series moving."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from models.datasets import load
from streams.client import LetheProducer
from streams.procs import WorkerProcess, free_port
from streams.replay import to_event
from streams.runtime.admin import create_topics
from streams.tools import find_tool

pytestmark = pytest.mark.kafka
PROMETHEUS = find_tool("prometheus")


def _query(port: int, promql: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _wait(port: int, promql: str, ok, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = _query(port, promql)
        if value is not None and ok(value):
            return value
        time.sleep(1)
    raise AssertionError(f"{promql} never satisfied the check (last value {value})")


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (.ci/run installs it)")
def test_prometheus_scrapes_moving_series(settings, tmp_path):
    metrics_port, prom_port = free_port(), free_port()
    settings = settings.model_copy(update={"metrics_port": metrics_port})
    asyncio.run(create_topics(settings))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: lethe-imcorrect\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    prom = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prom.log").open("wb"),
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        events = [to_event(r) for r in load("ml-100k").replay()][:20_000]

        async def publish(chunk, forget=()):
            async with LetheProducer(settings) as p:
                for e in chunk:
                    await p.send("interactions", e.user_id, e)
                for u in forget:
                    await p.forget_user(u)
                await p.flush()

        asyncio.run(publish(events[:10_000]))
        first = _wait(prom_port, "lethe_interactions_applied_total", lambda v: v >= 10_000)
        two_users = list(dict.fromkeys(e.user_id for e in events[:100]))[:2]
        asyncio.run(publish(events[10_000:], forget=two_users))
        _wait(prom_port, "lethe_interactions_applied_total", lambda v: v > first)
        _wait(prom_port, "lethe_forget_latency_seconds_count", lambda v: v >= 2)
        _wait(prom_port, 'lethe_deletion_receipts_total{status="applied"}', lambda v: v >= 2)
        _wait(prom_port, "increase(lethe_interactions_applied_total[1m])", lambda v: v > 0)
        assert _query(prom_port, 'up{job="lethe-imcorrect"}') == 1.0
        assert _query(prom_port, "sum(lethe_consumer_lag)") is not None
    finally:
        worker.stop()
        prom.terminate()
        prom.wait(timeout=30)
