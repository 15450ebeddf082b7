"""``make demo``: all of Lethe on a real local broker with bundled MovieLens.

Starts the broker (or uses ``KAFKA_BOOTSTRAP``), the three workers (IMCorrect, trainer,
scorer) and a Prometheus scraping them; replays the dataset through Kafka; waits until the
trainer has exported SASRec to ONNX and the scorer has swapped it in; asks the scorer for
recommendations; forgets a user and a movie and shows both kinds of receipts and the answers
afterwards; prints a few PromQL answers; and stops everything (Ctrl-C too). ``--keep`` keeps
it all running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import shutil
import signal
import sys
import time
import uuid
import warnings
from pathlib import Path

from models.datasets import Dataset, load
from streams.client import LetheProducer
from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, Recommendation
from streams.demo_prometheus import Prometheus, show_answers
from streams.demo_stack import (
    demo_settings,
    metric,
    model_updates,
    receipts,
    show,
    start_workers,
    wait_for,
)
from streams.localkafka import kafka_broker
from streams.procs import WorkerProcess
from streams.reader import request_and_wait
from streams.replay import replay_dataset
from streams.runtime.admin import create_topics

ROOT = Path("var") / "demo"
SWAPPED = 'lethe_scorer_model_swaps_total{outcome="swapped"}'


def _ask(settings: LetheSettings, user: str, k: int) -> Recommendation:
    # the scorer batches and may be busy with a swap on two loaded cores: be patient
    return asyncio.run(request_and_wait(settings, user, k, timeout_s=60))


def _forget(settings: LetheSettings, users: list[str], movie: str) -> list[str]:
    async def send() -> list[str]:
        async with LetheProducer(settings) as p:
            reqs = [await p.forget_user(u) for u in users]
            reqs.append(await p.forget_item(movie, reason="utility"))
            await p.flush()
            return [r.request_id for r in reqs]

    return asyncio.run(send())


def _show_receipt(r: DeletionReceipt) -> None:
    latency = (r.applied_at - (r.requested_at or r.applied_at)) / 1000
    versions = ", ".join(f"{k} v{v}" for k, v in sorted(r.versions.items()))
    print(
        f"   {r.request_id[:8]}… {r.status:16s} scope={r.scope:5s} subject={r.subject} "
        f"removed={r.removed} {versions} ({latency:.2f} s)"
    )


def _scenario(
    settings: LetheSettings,
    data: Dataset,
    workers: dict[str, tuple[WorkerProcess, int]],
    prom: Prometheus,
    n_forget: int,
    k: int,
) -> None:
    procs = [w for w, _ in workers.values()]
    port = {kind: p for kind, (_, p) in workers.items()}
    n = asyncio.run(replay_dataset(settings, data.name))
    wait_for(
        "IMCorrect learns the replay",
        lambda: metric(port["imcorrect"], "lethe_interactions_applied_total") >= n,
        procs,
        timeout_s=900,
        progress=lambda: metric(port["imcorrect"], "lethe_interactions_applied_total"),
        total=n,
    )
    print(f"   all {n:,} events applied")
    wait_for(
        "trainer distils, exports SASRec; scorer swaps it in",
        lambda: metric(port["scorer"], SWAPPED) >= 1,
        procs,
        timeout_s=900,
    )
    update = model_updates(settings)[-1]
    print(
        f"   model-updates: {update.kind} v{update.version} {Path(update.path).name} "
        + ", ".join(f"{key} {value:.4f}" for key, value in sorted(update.metrics.items()))
    )

    rng = random.Random(7)
    users = sorted(set(data.interactions["user_id"].astype(str)))
    sample = rng.sample(users, 3)
    forgotten_users = [sample[0], *rng.sample([u for u in users if u not in sample], n_forget - 1)]
    before = {u: _ask(settings, u, k) for u in sample}
    print("\n== Recommendations from the scorer (SASRec ONNX fused with IMCorrect)")
    for u in sample:
        show(f"user {u}", before[u], data)
    movie = before[sample[1]].items[0].item_id

    print(
        f"\n== Forgetting user(s) {', '.join(forgotten_users)} and the movie '{data.title(movie)}'"
    )
    swaps_before = metric(port["scorer"], SWAPPED)
    request_ids = set(_forget(settings, forgotten_users, movie))
    # one receipt per request from IMCorrect (applied) and one from the trainer (retrained)
    got = wait_for(
        "receipts from IMCorrect and the trainer",
        lambda: (r := receipts(settings, request_ids)) and len(r) >= 2 * len(request_ids) and r,
        procs,
        timeout_s=900,
        progress=lambda: len(receipts(settings, request_ids)),
        total=2 * len(request_ids),
        every_s=1.0,
    )
    print("== Receipts (ids are keyed hashes)")
    for r in sorted(got, key=lambda r: (r.status != "applied", r.request_id)):
        _show_receipt(r)
    retrained = max(int(r.versions["crm"]) for r in got if r.status == "neural-retrained")
    wait_for(
        f"scorer swaps in the retrained SASRec v{retrained}",
        lambda: (
            metric(port["scorer"], SWAPPED) > swaps_before
            and metric(port["scorer"], 'lethe_model_version{model="crm"}') >= retrained
            and metric(port["scorer"], "lethe_scorer_deletions_applied_total") >= len(request_ids)
        ),
        procs,
        timeout_s=300,
    )

    print("\n== Recommendations after forgetting")
    for u in sample:
        after = _ask(settings, u, k)
        show(f"user {u}" + (" (forgotten)" if u in forgotten_users else ""), after, data)
        if movie in {i.item_id for i in after.items}:
            raise AssertionError("the forgotten movie was recommended")
        if u in forgotten_users and after.strategy != "popularity":
            raise AssertionError("the forgotten user still has a history")

    print(f"\n== Prometheus ({prom.url}) scraping the three workers; PromQL answers")
    # Prometheus scrapes every second: wait until it has seen the last receipts and answers
    prom.wait("sum(lethe_deletion_receipts_total)", 2 * len(request_ids), timeout_s=30)
    prom.wait('sum(lethe_recommendations_total{job="lethe-scorer"})', 2 * len(sample), 30)
    show_answers(prom)


def run(dataset_name: str, n_forget: int, k: int, keep: bool, keep_state: bool) -> None:
    data = load(dataset_name)
    shutil.rmtree(ROOT, ignore_errors=True)
    with contextlib.ExitStack() as stack:
        bootstrap, how = stack.enter_context(kafka_broker())
        print(f"\n== Kafka: {how} at {bootstrap}")
        settings = demo_settings(bootstrap, f"demo-{uuid.uuid4().hex[:6]}.", ROOT, data)
        asyncio.run(create_topics(settings))
        if not keep_state:
            stack.callback(shutil.rmtree, ROOT, True)
        workers = start_workers(settings, ROOT / "logs")
        stack.callback(_stop_workers, workers)
        for kind, (w, port) in workers.items():
            w.wait_ready(timeout_s=300)
            print(f"== {kind} worker up; metrics at http://127.0.0.1:{port}/metrics")
        prom = Prometheus({kind: p for kind, (_, p) in workers.items()}, ROOT / "prometheus")
        stack.callback(_stop_prometheus, prom)
        prom.start()
        print(f"== Prometheus at {prom.url} (try {prom.url}/graph?g0.expr=lethe_model_version)")
        print(f"== Replaying {dataset_name}: {len(data.interactions):,} ratings")
        _scenario(settings, data, workers, prom, n_forget, k)
        if keep:
            print(f"\n== Everything stays up (Prometheus at {prom.url}); Ctrl-C to stop")
            # the broker's port and the topic prefix are this run's own
            print("   The CLI reaches it with these settings, for example:")
            print(
                f"   export KAFKA_BOOTSTRAP={bootstrap} LETHE_TOPIC_PREFIX={settings.topic_prefix}"
                f" LETHE_STATE_DIR={settings.state_dir.resolve()}"
            )
            print("   lethe recommend --user 1")
            print("   lethe forget --user 2 --receipt-out receipt.json")
            print("   lethe verify-erasure receipt.json  # once the trainer's receipt is out too")
            try:
                while all(w.alive() for w, _ in workers.values()):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass  # the way out of --keep: stop everything below, exit 0
        print("\n== Shutting down")


def _stop_workers(workers: dict[str, tuple[WorkerProcess, int]]) -> None:
    # the scorer first (it reads the others' output), IMCorrect last
    for kind in reversed(list(workers)):
        code = workers[kind][0].stop()
        print(f"   {kind} worker exited with {code}")


def _stop_prometheus(prom: Prometheus) -> None:
    print(f"   prometheus exited with {prom.stop()}")


#: set once Ctrl-C or SIGTERM arrived: whatever fails after that is part of stopping
_INTERRUPTED: list[int] = []


def _interrupt(signum: int, frame: object) -> None:
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt


def _quiet_teardown() -> None:
    """An interrupt inside the replay's event loop leaves the producer's tasks pending; the
    interpreter then reports each of them at exit (tracebacks after "interrupted: everything
    was stopped"). Everything is stopped by then: those reports are noise."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["ml-100k", "ml-1m"], default="ml-100k")
    parser.add_argument("--forget-users", type=int, default=1)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep everything up until Ctrl-C")
    parser.add_argument("--keep-state", action="store_true", help=f"leave {ROOT} on disk")
    args = parser.parse_args(argv)
    # a SIGTERM (a test's timeout, a service manager) stops everything like Ctrl-C does; and
    # Ctrl-C works even when a shell started the demo in the background with SIGINT ignored
    # (our own handler, not asyncio's: a Ctrl-C inside the replay's event loop is noted too)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        run(args.dataset, max(args.forget_users, 1), args.k, args.keep, args.keep_state)
    except KeyboardInterrupt:
        _quiet_teardown()
        print("\ninterrupted: everything was stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        # Ctrl-C reaches the whole process group: the broker may stop before the demo's
        # own interrupt unwinds, and the replay then fails on a closed connection instead
        if not _INTERRUPTED:
            raise
        _quiet_teardown()
        print(f"\ninterrupted: everything was stopped ({type(exc).__name__})", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
