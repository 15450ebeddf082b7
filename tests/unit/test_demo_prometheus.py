"""The demo's generated Prometheus config is one promtool accepts, with a job per worker."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from streams.demo_prometheus import prometheus_config
from streams.tools import find_tool

PROMTOOL = find_tool("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (make setup installs it)")
def test_generated_config_passes_promtool(tmp_path):
    targets = {"imcorrect": 9464, "trainer": 9465, "scorer": 9466}
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(targets))
    checked = subprocess.run(
        [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    jobs = yaml.safe_load(config.read_text())["scrape_configs"]
    assert {j["job_name"]: j["static_configs"][0]["targets"] for j in jobs} == {
        f"lethe-{kind}": [f"127.0.0.1:{port}"] for kind, port in targets.items()
    }
