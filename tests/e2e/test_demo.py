"""`make demo`'s program end to end: real broker, three workers, Prometheus, forgetting, clean
exit with nothing left running."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _answers(section: str) -> list[tuple[str, str, str, list[str]]]:
    """``(user, versions, tag, titles)`` for each answer printed in ``section``."""
    blocks = re.findall(
        r"^  user (\S+)(?: \(forgotten\))?  \((crm v\S+, imcorrect v\S+)\)(.*)\n((?:    .*\n)+)",
        section,
        flags=re.M,
    )
    return [
        (user, versions, tag.strip(), re.findall(r"^\s+\d+\. (.+)$", titles, flags=re.M))
        for user, versions, tag, titles in blocks
    ]


def _promql(out: str, title: str) -> list[str]:
    """The answer lines printed under a PromQL question."""
    block = re.search(rf"^   {re.escape(title)}:  .*\n((?:      .*\n)+)", out, flags=re.M)
    assert block, f"no PromQL answer for {title!r}"
    return [line.strip() for line in block.group(1).splitlines()]


def test_demo_serves_forgets_is_scraped_and_leaves_nothing_running():
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}  # its own broker
    done = subprocess.run(
        [sys.executable, "-m", "streams.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "all 100,000 events applied" in out
    assert re.search(r"model-updates: crm-onnx v\d+ sasrec-\S+\.onnx", out), out

    head, rest = out.split("== Recommendations from the scorer")
    before_text, after_text = rest.split("== Recommendations after forgetting")
    before_text = before_text.split("== Forgetting")[0]
    after_text = after_text.split("== Prometheus")[0]
    before, after = _answers(before_text), _answers(after_text)
    assert len(before) == 3 and len(after) == 3, out
    # answers come from the scorer: fused, with both model versions, as titles
    for _, versions, tag, titles in before:
        assert re.fullmatch(r"crm v\d+, imcorrect v\d+", versions), versions
        assert tag == "" and len(titles) == 5
        assert all(not t.isdigit() for t in titles), "titles, not raw item ids"

    forgotten_user, forgotten_movie = re.search(
        r"== Forgetting user\(s\) (\S+) and the movie '(.+)'", out
    ).groups()
    assert forgotten_movie in before_text
    assert forgotten_movie not in after_text
    by_user = {u: (v, tag, titles) for u, v, tag, titles in after}
    assert by_user[forgotten_user][1] == "[popularity fallback]"
    assert all(tag == "" for u, (_, tag, _) in by_user.items() if u != forgotten_user)
    # after the retrain the scorer serves a newer SASRec than before the deletions
    crm_before = max(int(re.search(r"crm v(\d+)", v).group(1)) for _, v, _, _ in before)
    crm_after = {int(re.search(r"crm v(\d+)", v).group(1)) for v, _, _ in by_user.values()}
    assert min(crm_after) > crm_before, (crm_before, crm_after)

    # both kinds of receipts, one per request each (a user and a movie), no raw ids
    receipts = re.findall(r"^   \S{8}… (\S+)\s+scope=(\w+)\s+subject=(\S+)", out, flags=re.M)
    assert sorted((s, scope) for s, scope, _ in receipts) == [
        ("applied", "item"),
        ("applied", "user"),
        ("neural-retrained", "item"),
        ("neural-retrained", "user"),
    ], receipts
    assert all(re.fullmatch(r"(user|item):[0-9a-f]{16}", subject) for *_, subject in receipts)
    retrained = re.findall(r"neural-retrained .* crm v(\d+)", out)
    assert len(retrained) == 2 and max(int(v) for v in retrained) <= min(crm_after), retrained

    # Prometheus scraped all three workers and answered the PromQL questions
    assert _promql(out, "targets up") == ["value = 3"]
    applied = _promql(out, "events applied by IMCorrect")
    assert any(line.endswith("= 100,000") for line in applied), applied
    statuses = _promql(out, "receipts by worker and status")
    assert "job=lethe-imcorrect, status=applied = 2" in statuses, statuses
    assert "job=lethe-trainer, status=neural-retrained = 2" in statuses, statuses
    p99 = _promql(out, "scorer end-to-end p99 (s)")
    assert len(p99) == 1 and 0 < float(p99[0].split("= ")[1]) < 60, p99
    versions = _promql(out, "model versions by worker")
    assert any("job=lethe-scorer, model=crm" in line for line in versions), versions
    assert any("job=lethe-imcorrect, model=imcorrect" in line for line in versions), versions

    # clean exit: every worker and Prometheus stopped with 0, and nothing listens any more
    for kind in ("scorer", "trainer", "imcorrect"):
        assert f"{kind} worker exited with 0" in out, out[-2000:]
    assert "prometheus exited with 0" in out
    ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)/metrics", head)]
    prometheus = int(re.search(r"== Prometheus at http://127\.0\.0\.1:(\d+)", out).group(1))
    broker = int(re.search(r"== Kafka: .* at 127\.0\.0\.1:(\d+)", out).group(1))
    assert len(ports) == 3
    for port in [*ports, prometheus, broker]:
        assert not _listening(port), f"port {port} is still open after the demo"
    leftovers = subprocess.run(
        ["pgrep", "-af", f"run-{broker}/server.properties"], capture_output=True, text=True
    ).stdout
    assert leftovers.strip() == "", leftovers
    assert not (ROOT / "var" / "demo").exists(), "the demo's files were not removed"


def test_ctrl_c_stops_everything():
    """Ctrl-C while the replay runs: the terminal signals the whole process group (demo,
    workers, broker), and the demo still stops everything and exits 130."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    demo = subprocess.Popen(
        [sys.executable, "-u", "-m", "streams.demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    lines = []
    deadline = time.monotonic() + 300
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("== Replaying") or time.monotonic() > deadline:
                break
        assert lines and lines[-1].startswith("== Replaying"), "".join(lines)
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=180)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    out = "".join(lines) + rest
    assert demo.returncode == 130, out
    ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)/metrics", out)]
    ports.append(int(re.search(r"== Prometheus at http://127\.0\.0\.1:(\d+)", out).group(1)))
    ports.append(int(re.search(r"== Kafka: .* at 127\.0\.0\.1:(\d+)", out).group(1)))
    assert len(ports) == 5
    for port in ports:
        assert not _listening(port), f"port {port} is still open after Ctrl-C"
    for kind in ("prometheus", "scorer worker", "trainer worker", "imcorrect worker"):
        assert f"{kind} exited with 0" in out, out
    assert not (ROOT / "var" / "demo").exists()
