"""The demo's moving parts: settings sized for a laptop, the three workers, waits with progress."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from models.datasets import Dataset
from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, ModelUpdate, Recommendation, decode
from streams.procs import WorkerProcess, free_port, scrape
from streams.reader import read_all

KINDS = ("imcorrect", "trainer", "scorer")
T = TypeVar("T")


def demo_settings(bootstrap: str, prefix: str, root: Path, data: Dataset) -> LetheSettings:
    """Settings that make one training round take seconds on two cores.

    The same shape as tests/e2e/test_serving.py: the tiny random Llama as the LLM side, a
    short pretraining and few steps per round. IMCorrect does not answer requests, so every
    recommendation comes from the scorer (SASRec fused with IMCorrect).
    """
    return LetheSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        state_dir=root / "state",
        model_dir=root / "models",
        metrics_port=-1,  # each worker gets its own port below
        imcorrect={"snapshot_interval_s": 1.0, "answer_requests": False},
        trainer={
            "model": {
                "llm": "tiny",
                "max_items": data.n_items + 32,  # room for the catalogue (and a few new items)
                "hidden": 32,
                "pretrain_steps": 60,
                "steps_per_round": 4,
                "valid_users": 200,
            },
            "batch_events": 40_000,
            "batch_wait_s": 4.0,
            "retrain_rounds": 1,
            "regression_tolerance": 0.05,  # the demo's few steps move NDCG@10 a lot
            "threads": 1,
        },
        scorer={"max_batch": 32, "max_wait_ms": 2.0, "threads": 1},
    )


def start_workers(settings: LetheSettings, log_dir: Path) -> dict[str, tuple[WorkerProcess, int]]:
    """Start ``lethe worker imcorrect|trainer|scorer``, each with its own metrics port."""
    workers = {}
    for kind in KINDS:
        port = free_port()
        proc = WorkerProcess(
            settings, log_dir / f"{kind}.log", kind, LETHE_METRICS_PORT=str(port)
        ).start()
        workers[kind] = (proc, port)
    return workers


def wait_for(
    what: str,
    check: Callable[[], T | None],
    workers: list[WorkerProcess],
    *,
    timeout_s: float,
    progress: Callable[[], float] | None = None,
    total: float | None = None,
    every_s: float = 0.5,
) -> T:
    """Poll ``check`` until it returns something truthy, with a progress bar.

    ``progress`` (with ``total``) drives the bar; without it the bar shows elapsed time. A
    worker that dies or a timeout raises with the workers' log tails, so a failure says why.
    """
    deadline = time.monotonic() + timeout_s
    # a bar with a total shows how far; one without only how long it has waited
    shape = "{l_bar}{bar}| {n:,.0f}/{total:,.0f} [{elapsed}]" if total else "{desc}: {elapsed}"
    with tqdm(total=total, desc=f"   {what}", bar_format=shape, dynamic_ncols=True) as bar:
        while True:
            for w in workers:
                if not w.alive():
                    raise RuntimeError(f"the {w.kind} worker died:\n{w.log_tail(40)}")
            if progress is not None:
                bar.n = min(progress(), total or float("inf"))
                bar.refresh()
            else:
                bar.update(0)
            if value := check():
                if total is not None:
                    bar.n = total
                    bar.refresh()
                return value
            if time.monotonic() > deadline:
                tails = "\n\n".join(f"--- {w.kind}\n{w.log_tail(30)}" for w in workers)
                raise TimeoutError(f"timed out waiting for {what}\n{tails}")
            time.sleep(every_s)


def metric(port: int, key: str) -> float:
    """One value from a worker's /metrics (0 when the series does not exist yet)."""
    try:
        return scrape(port).get(key, 0.0)
    except OSError:
        return 0.0


def receipts(settings: LetheSettings, request_ids: set[str]) -> list[DeletionReceipt]:
    records = asyncio.run(read_all(settings, "deletion-receipts"))
    found = [decode(DeletionReceipt, r.value) for r in records]
    return [r for r in found if r.request_id in request_ids]


def model_updates(settings: LetheSettings) -> list[ModelUpdate]:
    records = asyncio.run(read_all(settings, "model-updates"))
    return [decode(ModelUpdate, r.value) for r in records]


def show(title: str, rec: Recommendation, data: Dataset) -> None:
    """A recommendation as titles, with the strategy and the model versions that made it."""
    tag = "" if rec.strategy == "personal" else f"  [{rec.strategy} fallback]"
    versions = f"crm v{rec.model.crm or '-'}, imcorrect v{rec.model.imcorrect or '-'}"
    print(f"  {title}  ({versions}){tag}")
    for rank, item in enumerate(rec.items, start=1):
        print(f"    {rank:2d}. {data.title(item.item_id)}")
