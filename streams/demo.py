"""``make demo``: the whole IMCorrect loop on a real local broker with bundled MovieLens.

Starts the broker (or uses ``KAFKA_BOOTSTRAP``) and the IMCorrect worker, replays the dataset
through Kafka, asks for recommendations for a few users, forgets some users and one movie,
shows the receipts and how the recommendations changed, prints a metrics summary, and shuts
everything down (Ctrl-C too).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import time
import uuid
from pathlib import Path

from models.datasets import Dataset, load
from streams.client import LetheProducer
from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, Recommendation, decode
from streams.kafka_io import read_all
from streams.localkafka import kafka_broker
from streams.procs import WorkerProcess, free_port, scrape
from streams.replay import replay_dataset
from streams.replies import request_and_wait
from streams.topics import create_topics


def _show(title: str, rec: Recommendation, data: Dataset) -> None:
    tag = "" if rec.strategy == "personal" else f"  [{rec.strategy} fallback]"
    print(f"  {title}{tag}")
    for rank, item in enumerate(rec.items, start=1):
        print(f"    {rank:2d}. {data.title(item.item_id)}")


def _wait_applied(port: int, n: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while scrape(port).get("lethe_interactions_applied_total", 0) < n:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not apply the replay in time")
        time.sleep(0.25)


def run(dataset_name: str, n_forget: int, k: int, keep_state: bool) -> None:
    data = load(dataset_name)
    state_dir = Path("var") / "demo-state"
    shutil.rmtree(state_dir, ignore_errors=True)
    with kafka_broker() as (bootstrap, how):
        print(f"\n== Kafka: {how} at {bootstrap}")
        port = free_port(9464)
        settings = LetheSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=f"demo-{uuid.uuid4().hex[:6]}.",
            state_dir=state_dir,
            metrics_port=port,
        )
        asyncio.run(create_topics(settings))
        worker = WorkerProcess(settings, state_dir.parent / "demo-imcorrect.log").start()
        try:
            worker.wait_ready()
            print(f"== IMCorrect worker up; metrics at http://127.0.0.1:{port}/metrics")
            print(f"== Replaying {dataset_name}: {len(data.interactions):,} ratings")
            n = asyncio.run(replay_dataset(settings, dataset_name))
            _wait_applied(port, n)
            print(f"   all {n:,} events applied")

            rng = random.Random(7)
            users = sorted(set(data.interactions["user_id"]))
            sample = rng.sample(users, 3)
            forgotten_users = [
                sample[0],
                *rng.sample([u for u in users if u not in sample], n_forget - 1),
            ]
            before = {u: asyncio.run(request_and_wait(settings, u, k)) for u in sample}
            print("\n== Recommendations before forgetting")
            for u in sample:
                _show(f"user {u}", before[u], data)
            movie = before[sample[1]].items[0].item_id
            print(
                f"\n== Forgetting users {', '.join(forgotten_users)} and the movie "
                f"'{data.title(movie)}'"
            )

            async def forget():
                async with LetheProducer(settings) as p:
                    reqs = [await p.forget_user(u) for u in forgotten_users]
                    reqs.append(await p.forget_item(movie, reason="utility"))
                    return reqs

            requests = asyncio.run(forget())
            receipts = _wait_receipts(settings, {r.request_id for r in requests})
            print("== Receipts (one per request)")
            for r in receipts:
                latency = (r.applied_at - (r.requested_at or r.applied_at)) / 1000
                print(
                    f"   {r.request_id[:8]}… {r.status:8s} scope={r.scope:5s} "
                    f"removed={r.removed} imcorrect v{r.versions.get('imcorrect')} "
                    f"({latency:.2f} s)"
                )
            print("\n== Recommendations after forgetting")
            for u in sample:
                after = asyncio.run(request_and_wait(settings, u, k))
                _show(f"user {u}", after, data)
                assert movie not in {i.item_id for i in after.items}
            metrics = scrape(port)
            print("\n== Metrics summary")
            for key in (
                "lethe_interactions_applied_total",
                'lethe_deletion_receipts_total{status="applied"}',
                "lethe_forget_latency_seconds_count",
                "lethe_forget_latency_seconds_sum",
                "lethe_batch_size_count",
                "lethe_snapshot_seconds_count",
                'lethe_model_version{model="imcorrect"}',
            ):
                value = metrics.get(key, 0.0)
                shown = f"{value:,.0f}" if float(value).is_integer() else f"{value:.3f}"
                print(f"   {key} = {shown}")
            print(f"   (served at http://127.0.0.1:{port}/metrics while the demo ran)")
        finally:
            print("\n== Shutting down")
            code = worker.stop()
            print(f"   worker exited with {code}")
            if not keep_state:
                shutil.rmtree(state_dir, ignore_errors=True)


def _wait_receipts(settings, request_ids: set[str], timeout_s: float = 60) -> list[DeletionReceipt]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = asyncio.run(read_all(settings, "deletion-receipts"))
        receipts = [decode(DeletionReceipt, r.value) for r in records]
        got = [r for r in receipts if r.request_id in request_ids]
        if len(got) >= len(request_ids):
            return got
        time.sleep(0.5)
    raise TimeoutError("receipts did not arrive")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["ml-100k", "ml-1m"], default="ml-100k")
    parser.add_argument("--forget-users", type=int, default=3)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--keep-state", action="store_true")
    args = parser.parse_args(argv)
    try:
        run(args.dataset, args.forget_users, args.k, args.keep_state)
    except KeyboardInterrupt:
        print("\ninterrupted: everything was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
