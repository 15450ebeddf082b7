"""Run Lethe workers as child processes (demo, benchmarks, tests) and stop them cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import SecretStr

from streams.config import LetheSettings

REPO = Path(__file__).resolve().parents[1]


def settings_env(settings: LetheSettings) -> dict[str, str]:
    """Environment that makes a child process see the same settings."""
    env = {
        "KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "LETHE_TOPIC_PREFIX": settings.topic_prefix,
        "LETHE_STATE_DIR": str(settings.state_dir),
        "LETHE_MODEL_DIR": str(settings.model_dir),
        "LETHE_METRICS_PORT": str(settings.metrics_port),
        "LETHE_METRICS_HOST": settings.metrics_host,
        "LETHE_LOG_JSON": "true" if settings.log_json else "false",
    }
    # the child must reach a secured cluster as the parent does (its own principal included)
    for key, value in settings.security.model_dump().items():
        if value is not None:
            secret = value.get_secret_value() if isinstance(value, SecretStr) else value
            env[f"LETHE_SECURITY__{key.upper()}"] = str(secret)
    env["LETHE_CLIENT_ID"] = settings.client_id
    env["LETHE_STANDBY"] = "true" if settings.standby else "false"
    # keys the child must share with its parent's other children (replicas with state
    # folders of their own verify the same signatures and hash ids alike)
    for name in ("model_update_key", "hash_key"):
        secret = getattr(settings, name)
        if secret is not None:
            env[f"LETHE_{name.upper()}"] = secret.get_secret_value()
    if settings.hash_key_file is not None:
        env["LETHE_HASH_KEY_FILE"] = str(settings.hash_key_file)
    for section in ("imcorrect", "trainer", "scorer"):
        env.update(
            _section_env(f"LETHE_{section.upper()}", getattr(settings, section).model_dump())
        )
    return env


def _section_env(prefix: str, fields: dict) -> dict[str, str]:
    """``PREFIX__KEY`` variables for ``fields``; nested configs (a mapping's own) recurse."""
    env: dict[str, str] = {}
    for key, value in fields.items():
        name = f"{prefix}__{key.upper()}"
        if isinstance(value, dict):
            env.update(_section_env(name, value))
        elif value is not None:  # unset stays unset (the child's default), never "None"
            env[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


class WorkerProcess:
    """``lethe worker KIND`` as a subprocess, its output appended to ``log_path``."""

    def __init__(
        self, settings: LetheSettings, log_path: Path, kind: str = "imcorrect", **env: str
    ) -> None:
        self.settings = settings
        self.kind = kind
        self.log_path = Path(log_path)
        self.env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1", **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", self.kind],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (the worker snapshots and exits); SIGKILL if it does not in time."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "worker ready" in self.log_tail(200):
                return
            if not self.alive():
                raise RuntimeError(f"{self.kind} worker exited:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.kind} worker not ready:\n{self.log_tail()}")


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free on loopback, else any free port."""
    for port in dict.fromkeys((preferred, 0)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free loopback port")


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """Read a /metrics endpoint into ``{"name{labels}": value}``."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out
