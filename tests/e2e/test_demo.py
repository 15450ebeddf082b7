"""`make demo`'s program end to end: real broker, worker, replay, forgetting, clean exit."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka


def test_demo_shows_forgetting_and_leaves_nothing_running(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}  # its own broker
    done = subprocess.run(
        [sys.executable, "-m", "streams.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    before, after = out.split("== Recommendations after forgetting")
    receipts = re.findall(r"^\s+\w{8}… applied", out, flags=re.M)
    assert len(receipts) == 4, "one receipt per deletion (3 users + 1 movie)"
    assert "all 100,000 events applied" in out
    forgotten_movie = re.search(r"and the movie '(.+)'", out).group(1)
    assert forgotten_movie in before.split("== Forgetting")[0]
    assert forgotten_movie not in after
    assert "[popularity fallback]" in after and "[popularity fallback]" not in before
    assert "worker exited with 0" in out

    port = int(re.search(r"== Kafka: .* at 127\.0\.0\.1:(\d+)", out).group(1))
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the demo's broker is still listening"
    leftovers = subprocess.run(
        ["pgrep", "-af", f"run-{port}/server.properties"], capture_output=True, text=True
    ).stdout
    assert leftovers.strip() == "", leftovers
