"""Scoring latency: the exported ONNX SASRec vs torch eager, and request → recommendation
through Kafka and the scoring agent.

    python -m benchmarks.scoring [--items 1682] [--max-len 50] [--runs 300]
                                 [--rates 200,1000] [--seconds 20] [--warmup 30]
                                 [--no-kafka]

1. Model only (``benchmarks.scoring_model``): one JSON line per batch size (1 and 32) with
   p50/p99 of torch eager and of onnxruntime on the same inputs in the same process, their
   ratios, and the provider in use.
2. Through Kafka: a broker (``KAFKA_BOOTSTRAP`` or the local one), the IMCorrect worker and
   ``lethe worker scorer`` as subprocesses; ML-100K replayed; a SASRec trained here for a few
   epochs, exported and announced on ``model-updates``; then requests sent open-loop at each
   rate (users drawn from ML-100K) while a consumer on ``recommendations`` times each answer
   (send → receive, client clock). The first ``--warmup`` seconds at each rate are sent but
   left out of the percentiles (their p99 is reported as ``warmup_p99_ms``): a broker that
   started a minute earlier is still JIT-compiling its request paths, and on 2 cores its
   compiler threads take CPU from the scorer (measured: p99 40 and 52 ms in the first 15 s
   after a 10 s warm-up on a fresh broker, 18–27 ms on one that had served earlier runs).
   One JSON line per rate with p50/p99/max, the answered count, and the scorer's mean batch
   size and stage means (those include the warm-up). The load generator is
   ``benchmarks.load_client`` (``--client``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.common import emit, log
from benchmarks.load_client import CLIENTS, open_loop
from benchmarks.scoring_model import add_model_arguments, model_only
from export.onnx_export import export_sasrec
from models.datasets import leave_one_out, load
from models.sasrec import SASRec, SASRecConfig
from models.seqtrain import set_seed, train_sasrec
from models.sequences import training_sequences
from streams.client import LetheProducer
from streams.config import LetheSettings
from streams.contracts import ModelUpdate
from streams.localkafka import kafka_broker
from streams.model_auth import sign, update_key
from streams.procs import WorkerProcess, free_port, scrape
from streams.replay import replay_dataset
from streams.runtime.admin import create_topics


def train_and_export(model_dir: Path, epochs: int, seed: int) -> tuple[Path, str, int]:
    """A SASRec on ML-100K (training part of leave-one-out), exported with its vocabulary."""
    dataset = load("ml-100k")
    split = leave_one_out(dataset)
    set_seed(seed)
    model = SASRec(SASRecConfig(n_items=split.n_items, max_len=50))
    train_sasrec(model, training_sequences(split, 50), epochs=epochs)
    items = [str(i) for i in dataset.index.item_ids]  # dense index → external id
    meta = {"lethe.items": json.dumps(items), "lethe.version": "1", "lethe.max_len": "50"}
    exported = export_sasrec(model, model_dir, metadata=meta)
    return exported.path, exported.sha256, split.n_items


async def announce(settings: LetheSettings, path: Path, sha: str) -> None:
    update = ModelUpdate(
        kind="crm-onnx", version="1", path=str(path), sha256=sha, ts=int(time.time() * 1000)
    )
    update = sign(update, update_key(settings))  # the scorer refuses unsigned updates
    async with LetheProducer(settings) as producer:
        await producer.send("model-updates", "crm", update)
        await producer.flush()


def through_kafka(args) -> None:
    users = sorted({str(u) for u in load("ml-100k").interactions.user_id.unique()})
    with kafka_broker() as (bootstrap, how), tempfile.TemporaryDirectory() as tmp:
        scorer_port, imc_port = free_port(), free_port()
        settings = LetheSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
            state_dir=Path(tmp) / "state",
            model_dir=Path(tmp) / "models",
            metrics_port=-1,
            imcorrect={"answer_requests": False, "snapshot_interval_s": 5.0},
            scorer={"fetch_max_wait_ms": args.fetch_wait_ms, "max_wait_ms": args.max_wait_ms},
        )
        asyncio.run(create_topics(settings))
        workers = [
            WorkerProcess(
                settings, Path(tmp) / "imc.log", "imcorrect", LETHE_METRICS_PORT=str(imc_port)
            ),
            WorkerProcess(
                settings, Path(tmp) / "scorer.log", "scorer", LETHE_METRICS_PORT=str(scorer_port)
            ),
        ]
        try:
            for w in workers:
                w.start().wait_ready(timeout_s=120)
            log(f"replaying ML-100K ({how})")
            asyncio.run(replay_dataset(settings, "ml-100k", progress=False))
            while scrape(imc_port).get("lethe_interactions_applied_total", 0) < 100_000:
                time.sleep(0.5)
            log("training and announcing a SASRec")
            path, sha, _ = train_and_export(Path(settings.model_dir), args.epochs, args.seed)
            asyncio.run(announce(settings, path, sha))
            swapped = 'lethe_scorer_model_swaps_total{outcome="swapped"}'
            deadline = time.monotonic() + 120
            while scrape(scorer_port).get(swapped, 0) < 1 or time.sleep(5.5):
                assert time.monotonic() < deadline, workers[1].log_tail()
                time.sleep(0.5)  # the sleep above lets an IMCorrect snapshot appear too
            provider = next(
                k.split('"')[1]
                for k, v in scrape(scorer_port).items()
                if k.startswith("lethe_scorer_provider_info") and v == 1
            )
            for rate in args.rates:
                before = scrape(scorer_port)
                log(f"{rate} requests/s for {args.warmup} s of warm-up + {args.seconds} s")
                seconds = args.warmup + args.seconds
                lat, sends, all_sends = open_loop(
                    settings, users, rate, seconds, args.fetch_wait_ms, args.client
                )
                if args.dump:
                    np.savetxt(f"{args.dump}-{int(rate)}.tsv", np.c_[sends, lat * 1e3], "%.4f")
                # steady state: only requests sent after the warm-up (a fresh broker's JIT
                # and the clients' first fetches inflate the first seconds; reported apart)
                warm = lat[sends < args.warmup] * 1e3
                lat, sent = lat[sends >= args.warmup], int((all_sends >= args.warmup).sum())
                after = scrape(scorer_port)
                batches = after["lethe_scorer_batch_size_count"] - before.get(
                    "lethe_scorer_batch_size_count", 0
                )
                answered = after["lethe_scorer_batch_size_sum"] - before.get(
                    "lethe_scorer_batch_size_sum", 0
                )
                ms = lat * 1e3
                if len(lat) < sent:
                    log(f"{sent - len(lat)} requests unanswered; scorer log:")
                    log(workers[1].log_tail())

                def mean_ms(stage: str, after=after, before=before) -> float:
                    key = f'lethe_scorer_latency_seconds_{{}}{{{{stage="{stage}"}}}}'
                    total = after[key.format("sum")] - before.get(key.format("sum"), 0)
                    count = after[key.format("count")] - before.get(key.format("count"), 0)
                    return round(1e3 * total / max(count, 1), 3)

                emit(
                    {
                        "bench": "scoring-kafka",
                        "rate_per_s": rate,
                        "seconds": args.seconds,
                        "warmup_s": args.warmup,
                        "warmup_p99_ms": round(float(np.percentile(warm, 99)), 2)
                        if len(warm)
                        else None,
                        "sent": sent,
                        "answered": int(len(lat)),
                        "p50_ms": round(float(np.percentile(ms, 50)), 2),
                        "p99_ms": round(float(np.percentile(ms, 99)), 2),
                        "max_ms": round(float(ms.max()), 2),
                        "mean_batch": round(answered / max(batches, 1), 2),
                        "scorer_transit_mean_ms": mean_ms("transit"),
                        "scorer_queue_mean_ms": mean_ms("queue"),
                        "scorer_model_mean_ms_per_batch": mean_ms("model"),
                        "scorer_request_ts_to_published_mean_ms": mean_ms("end_to_end"),
                        "provider": provider,
                        "fusion": "sasrec+imcorrect",
                        "max_batch": settings.scorer.max_batch,
                        "max_wait_ms": settings.scorer.max_wait_ms,
                        "fetch_max_wait_ms": args.fetch_wait_ms,
                        "client": args.client,
                        "seed": args.seed,
                    }
                )
        finally:
            for w in workers:
                w.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument(
        "--rates", type=lambda s: [float(r) for r in s.split(",")], default=[200.0, 1000.0]
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per rate")
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds at the same rate before measuring"
    )
    parser.add_argument("--epochs", type=int, default=10, help="SASRec training for part 2")
    parser.add_argument(
        "--fetch-wait-ms", type=int, default=100, help="fetch_max_wait_ms of scorer and client"
    )
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="scorer batching wait")
    parser.add_argument(
        "--client", choices=CLIENTS, default="librdkafka", help="Kafka client of the load generator"
    )
    parser.add_argument("--dump", help="write send time and latency per answer to DUMP-RATE.tsv")
    parser.add_argument("--no-kafka", action="store_true", help="model-only part")
    parser.add_argument("--no-model-only", action="store_true", help="Kafka part only")
    args = parser.parse_args()
    if not args.no_model_only:
        model_only(args.items, args.max_len, [1, 32], args.runs, args.seed)
    if not args.no_kafka:
        through_kafka(args)


if __name__ == "__main__":
    main()
