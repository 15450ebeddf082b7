"""A real Prometheus for the demo: a subprocess on a loopback port scraping the workers."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from streams.procs import free_port
from streams.tools import find_tool

#: seconds between scrapes: the demo's steps last seconds, so the default 15 s would miss them
SCRAPE_INTERVAL_S = 1


def prometheus_config(targets: dict[str, int]) -> str:
    """One scrape job per worker (``lethe-<kind>``), as in monitoring/prometheus.yml."""
    lines = [
        f"global: {{scrape_interval: {SCRAPE_INTERVAL_S}s, evaluation_interval: "
        f"{SCRAPE_INTERVAL_S}s}}",
        "scrape_configs:",
    ]
    for kind, port in targets.items():
        lines += [
            f"  - job_name: lethe-{kind}",
            "    static_configs:",
            f"      - targets: ['127.0.0.1:{port}']",
            f"        labels: {{service: {kind}}}",
        ]
    return "\n".join(lines) + "\n"


class Prometheus:
    """``prometheus`` scraping ``targets`` (worker kind -> metrics port); files in ``work_dir``."""

    def __init__(self, targets: dict[str, int], work_dir: Path) -> None:
        binary = find_tool("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run `make setup`")
        self.binary = binary
        self.targets = targets
        self.work_dir = Path(work_dir)
        self.port = free_port(9090)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> Prometheus:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "prometheus.yml"
        config.write_text(prometheus_config(self.targets))
        with (self.work_dir / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.work_dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                # Ctrl-C reaches the demo only; the demo stops Prometheus after the workers
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited; see {self.work_dir / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.25)
        raise TimeoutError("prometheus did not become ready")

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: ``[(labels, value), ...]`` (empty when nothing matches)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{promql}: {body.get('error')}")
        return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]

    def wait(self, promql: str, minimum: float, timeout_s: float = 30) -> float:
        """Wait until the first series of ``promql`` reaches ``minimum`` (scrapes lag by ~1 s)."""
        deadline = time.monotonic() + timeout_s
        value = float("nan")
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result and (value := result[0][1]) >= minimum:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"{promql} stayed below {minimum} (last {value})")

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=timeout)


#: what the demo asks Prometheus, with how each answer is shown
DEMO_QUERIES: tuple[tuple[str, str], ...] = (
    ("targets up", 'sum(up{job=~"lethe-.*"})'),
    ("events applied by IMCorrect", 'lethe_interactions_applied_total{job="lethe-imcorrect"}'),
    ("receipts by worker and status", "sum by (job, status) (lethe_deletion_receipts_total)"),
    (
        "forget latency mean (s, request to receipt)",
        "sum by (job) (lethe_forget_latency_seconds_sum)"
        " / (sum by (job) (lethe_forget_latency_seconds_count) > 0)",
    ),
    (
        "forget latency p99 (s, bucket estimate)",
        # ">= 0" drops the NaN of a worker that never forgot anything
        "histogram_quantile(0.99, sum by (job, le) (lethe_forget_latency_seconds_bucket)) >= 0",
    ),
    (
        "scorer end-to-end p99 (s)",
        "histogram_quantile(0.99, sum by (le) "
        '(lethe_scorer_latency_seconds_bucket{stage="end_to_end"}))',
    ),
    ("recommendations by strategy", "sum by (strategy) (lethe_recommendations_total)"),
    ("model versions by worker", "lethe_model_version"),
    ("trainer rounds by kind", "sum by (kind) (lethe_trainer_round_seconds_count)"),
)


#: labels that say nothing the job label does not
HIDDEN = ("__name__", "instance", "service")


def show_answers(prom: Prometheus) -> None:
    """Print each of :data:`DEMO_QUERIES` and its answer."""
    for title, promql in DEMO_QUERIES:
        print(f"   {title}:  {promql}")
        result = prom.query(promql)
        if not result:
            print("      (no data)")
        for labels, value in result:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in HIDDEN)
            number = f"{value:,.0f}" if value.is_integer() else f"{value:.4f}"
            print(f"      {shown or 'value'} = {number}")
