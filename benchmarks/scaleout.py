"""Scorer replicas: request throughput and latency with one and with two ``lethe worker
scorer`` processes on the same machine, and through a replica's SIGKILL.

    python -m benchmarks.scaleout [--rates 200,1000] [--seconds 20] [--warmup 10]
                                  [--kill-rate 100] [--kill-total 2000] [--epochs 3]
                                  [--lag-rate 5000] [--lag-events 100000] [--no-scorers]
                                  [--backlog ml-1m|ml-100k|none]

A broker (``KAFKA_BOOTSTRAP`` or the local one), the IMCorrect worker and the scorers run as
subprocesses; ML-100K is replayed and a SASRec trained for ``--epochs`` is announced, so the
replicas answer with the fused model as in production. Requests are sent open-loop
(``benchmarks.load_client``); every answer is timed on the client's clock, the first answer
per ``request_id`` counts and later ones are counted as duplicates.

One JSON line per (replicas, rate): ``bench: "scaleout"``, ``replicas``, ``rate_per_s``,
``sent``, ``answered``, ``answered_per_s``, ``duplicates``, ``p50_ms``, ``p99_ms``. Then one
line for the SIGKILL run (``scenario: "sigkill"``): two replicas, ``--kill-total`` requests at
``--kill-rate``, one replica killed after 30 % of them; p99 before, during (the session
timeout plus the rebalance) and after, and the duplicates. Last, one line for two hot
IMCorrect replicas under a live stream (``scenario: "imcorrect-follower"``): how far the
follower trails the writer, in events and in ms (:mod:`benchmarks.replica_lag`).

On 2 cores the replicas share the same CPU as the broker and the load generator, so these
figures show that work is shared and nothing is lost, not that capacity grows.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks import replica_lag
from benchmarks.common import emit, log
from benchmarks.load_client import Scripted, _Schedule, open_loop
from benchmarks.scoring import announce, train_and_export
from models.datasets import load
from streams.config import LetheSettings
from streams.localkafka import kafka_broker
from streams.procs import WorkerProcess, free_port, scrape
from streams.replay import replay_dataset
from streams.runtime.admin import create_topics

#: a SIGKILLed member is noticed after its session timeout (6 s), then its partitions move
REBALANCE_S = 8.0


def _scorer(settings: LetheSettings, tmp: Path, k: int) -> tuple[WorkerProcess, int]:
    port = free_port()
    own = settings.model_copy(update={"state_dir": tmp / f"scorer{k}"})
    proc = WorkerProcess(own, tmp / f"scorer{k}.log", "scorer", LETHE_METRICS_PORT=str(port))
    return proc, port


def _wait_swapped(scorers: list[tuple[WorkerProcess, int]]) -> None:
    swapped = 'lethe_scorer_model_swaps_total{outcome="swapped"}'
    deadline = time.monotonic() + 120
    for proc, port in scorers:
        while scrape(port).get(swapped, 0) < 1:
            assert time.monotonic() < deadline, proc.log_tail()
            time.sleep(0.5)


def _percentile(ms: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(ms, q)), 2) if len(ms) else None


def _measure(settings, users, replicas: int, args) -> None:
    for rate in args.rates:
        schedule = _Schedule(users, rate, args.warmup + args.seconds)
        lat, sends, all_sends = open_loop(
            settings, users, rate, args.warmup + args.seconds, 100, schedule=schedule
        )
        keep = sends >= args.warmup
        ms = lat[keep] * 1e3
        sent = int((all_sends >= args.warmup).sum())
        emit(
            {
                "bench": "scaleout",
                "replicas": replicas,
                "rate_per_s": rate,
                "seconds": args.seconds,
                "warmup_s": args.warmup,
                "sent": sent,
                "answered": int(keep.sum()),
                "answered_per_s": round(float(keep.sum()) / args.seconds, 1),
                "duplicates": schedule.duplicates,
                "p50_ms": _percentile(ms, 50),
                "p99_ms": _percentile(ms, 99),
            }
        )


def _sigkill_run(settings, users, scorers, args) -> None:
    victim = scorers[1][0]
    kill_after = int(0.3 * args.kill_total)
    seconds = args.kill_total / args.kill_rate
    schedule = Scripted(users, args.kill_rate, seconds, {kill_after: victim.kill})
    lat, sends, _ = open_loop(settings, users, args.kill_rate, seconds, 100, schedule=schedule)
    kill_s = schedule.action_at[kill_after]
    ms = lat * 1e3
    during = (sends >= kill_s) & (sends < kill_s + REBALANCE_S)
    emit(
        {
            "bench": "scaleout",
            "scenario": "sigkill",
            "replicas": 2,
            "rate_per_s": args.kill_rate,
            "sent": args.kill_total,
            "answered": int(len(lat)),
            "duplicates": schedule.duplicates,
            "kill_at_s": round(kill_s, 2),
            "p99_before_ms": _percentile(ms[sends < kill_s], 99),
            "p99_during_ms": _percentile(ms[during], 99),
            "p99_after_ms": _percentile(ms[sends >= kill_s + REBALANCE_S], 99),
            "max_ms": _percentile(ms, 100),
        }
    )


def run(args) -> None:
    users = sorted({str(u) for u in load("ml-100k").interactions.user_id.unique()})
    with kafka_broker() as (bootstrap, how), tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.scorers:
            _scorers(bootstrap, how, tmp, users, args)
        log("two hot IMCorrect replicas under a live stream")
        emit(replica_lag.measure(bootstrap, tmp, args.lag_rate, args.lag_events))
        if args.backlog != "none":
            emit(replica_lag.measure_backlog(bootstrap, tmp, args.backlog))


def _scorers(bootstrap: str, how: str, tmp: Path, users: list[str], args) -> None:
    settings = LetheSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"scale{uuid.uuid4().hex[:6]}.",
        state_dir=tmp / "state",
        model_dir=tmp / "models",
        metrics_port=-1,
        imcorrect={"answer_requests": False, "snapshot_interval_s": 5.0},
        # replicas have state folders of their own but verify the same trainer's
        # announcements: the signing key is shared, as it would be across machines
        model_update_key=uuid.uuid4().hex,
    )
    asyncio.run(create_topics(settings))
    imc_port = free_port()
    imcorrect = WorkerProcess(
        settings, tmp / "imc.log", "imcorrect", LETHE_METRICS_PORT=str(imc_port)
    )
    scorers = [_scorer(settings, tmp, k) for k in range(2)]
    try:
        imcorrect.start().wait_ready(120)
        log(f"replaying ML-100K ({how})")
        asyncio.run(replay_dataset(settings, "ml-100k", progress=False))
        while scrape(imc_port).get("lethe_interactions_applied_total", 0) < 100_000:
            time.sleep(0.5)
        path, sha, _ = train_and_export(Path(settings.model_dir), args.epochs, args.seed)
        asyncio.run(announce(settings, path, sha))
        scorers[0][0].start().wait_ready(120)
        _wait_swapped(scorers[:1])
        time.sleep(args.imcorrect_settle_s)  # an IMCorrect snapshot is loaded too
        log("one replica")
        _measure(settings, users, 1, args)
        scorers[1][0].start().wait_ready(120)
        _wait_swapped(scorers)
        log("two replicas")
        _measure(settings, users, 2, args)
        log("two replicas, one SIGKILLed")
        _sigkill_run(settings, users, scorers, args)
    finally:
        for proc, _ in scorers:
            proc.stop()
        imcorrect.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    floats = lambda s: [float(r) for r in s.split(",")]  # noqa: E731
    parser.add_argument("--rates", type=floats, default=[200.0, 1000.0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per rate")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds sent, not measured")
    parser.add_argument("--kill-rate", type=float, default=100.0)
    parser.add_argument("--kill-total", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3, help="SASRec training before serving")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--imcorrect-settle-s", type=float, default=6.0)
    parser.add_argument("--lag-rate", type=float, default=5000.0, help="events/s, replicas")
    parser.add_argument("--lag-events", type=int, default=100_000)
    parser.add_argument("--no-scorers", dest="scorers", action="store_false")
    parser.add_argument("--backlog", default="ml-1m", choices=["ml-100k", "ml-1m", "none"])
    run(parser.parse_args())


if __name__ == "__main__":
    main()
