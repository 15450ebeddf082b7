"""The ``lethe`` command line: topics, publishing, forgetting, recommending, workers."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from streams.config import LetheSettings, load_settings


def _cmd_topics(args: argparse.Namespace, settings: LetheSettings) -> int:
    from streams.runtime.admin import check_topic_retention, create_topics, describe_topic_configs
    from streams.topics import TopicError, topic_specs

    if args.action == "create":
        try:
            result = asyncio.run(create_topics(settings))
        except TopicError as exc:
            print(f"lethe topics create: {exc}", file=sys.stderr)
            return 2
        for name, status in result.items():
            print(f"{name}: {status}")
    elif args.action == "check":
        over, unread = asyncio.run(check_topic_retention(settings))
        deadline = settings.topics.erasure_deadline_ms
        for name in over:
            print(f"{name}: keeps user data past the erasure deadline of {deadline} ms")
        for name in unread:
            print(f"{name}: retention not read from the broker (the warning above says why)")
        if over:
            return 1
        if unread:
            return 2  # not verified: no verdict
        print(f"every user-data topic keeps data at most {deadline} ms")
        return 0
    else:
        names = [s.name for s in topic_specs(settings)]
        described = asyncio.run(describe_topic_configs(settings, names))
        for name, info in described.items():
            cfg = info["configs"]
            print(
                f"{name}: partitions={info['partitions']} "
                f"cleanup.policy={cfg.get('cleanup.policy')} retention.ms={cfg.get('retention.ms')}"
            )
    return 0


def _cmd_publish(args: argparse.Namespace, settings: LetheSettings) -> int:
    from tqdm import tqdm

    from streams.client import LetheProducer
    from streams.files import RowError, read_interactions

    async def run() -> tuple[int, int]:
        sent = bad = 0
        async with LetheProducer(settings) as producer:
            with tqdm(desc=f"publish {args.file.name}", unit="ev", disable=args.quiet) as bar:
                for row in read_interactions(args.file, settings.limits, fmt=args.format):
                    if isinstance(row, RowError):
                        bad += 1
                        print(f"{args.file}:{row.line}: rejected: {row.message}", file=sys.stderr)
                        continue
                    await producer.send("interactions", row.user_id, row)
                    sent += 1
                    bar.update()
                await producer.flush()
        return sent, bad

    if not args.file.exists() or args.file.is_dir():  # before connecting: nothing to send
        print(f"lethe publish: no such file: {args.file}", file=sys.stderr)
        return 2
    sent, bad = asyncio.run(run())
    print(f"published {sent} interaction events, rejected {bad}")
    return 2 if bad else 0


def _cmd_replay(args: argparse.Namespace, settings: LetheSettings) -> int:
    from streams.replay import replay_dataset

    n = asyncio.run(
        replay_dataset(settings, args.dataset, limit=args.limit, progress=not args.quiet)
    )
    print(f"replayed {n} events of {args.dataset}")
    return 0


def _cmd_forget(args: argparse.Namespace, settings: LetheSettings) -> int:
    from streams.client import NOT_SENT, LetheProducer, send_acknowledged
    from streams.reader import ReceiptTimeout, forget_and_wait

    async def send(p: LetheProducer):
        if args.user and args.items:
            return await p.forget_interactions(args.user, args.items, reason=args.reason)
        if args.user:
            return await p.forget_user(args.user, reason=args.reason)
        return await p.forget_item(args.item, reason=args.reason)

    async def send_only():
        return await send_acknowledged(settings, send)

    if args.items and not args.user:
        print("lethe forget: --interaction needs --user", file=sys.stderr)
        return 2
    if args.item and (args.user or args.items):
        # a deletion cannot be taken back: never guess which scope was meant
        print(
            "lethe forget: --item forgets an item; give it alone, or --user with "
            "--interaction for that user's interactions with it",
            file=sys.stderr,
        )
        return 2
    if not (args.user or args.item):
        print("lethe forget: give --user, --item, or --user with --interaction", file=sys.stderr)
        return 2
    if not (args.wait or args.receipt_out):
        try:
            req = asyncio.run(send_only())
        except NOT_SENT as exc:  # exit 4: nothing was sent
            print(f"lethe forget: the request was not sent: {exc}", file=sys.stderr)
            return 4
        print(json.dumps({"request_id": req.request_id, "scope": req.scope}))
        return 0
    if args.timeout <= 0:
        print("lethe forget: --timeout must be positive", file=sys.stderr)
        return 2
    if args.receipt_out and not args.receipt_out.resolve().parent.is_dir():
        # checked before anything is sent: the receipt could not be kept
        print(f"lethe forget: no folder for {args.receipt_out}", file=sys.stderr)
        return 2
    try:
        req, receipt = asyncio.run(forget_and_wait(settings, send, timeout_s=args.timeout))
    except ReceiptTimeout as exc:
        print(f"lethe forget: {exc} (the request was sent)", file=sys.stderr)
        return 3
    except NOT_SENT as exc:  # exit 4: nothing was sent
        print(f"lethe forget: the request was not sent: {exc}", file=sys.stderr)
        return 4
    text = receipt.model_dump_json(indent=2)
    print(text, flush=True)  # shown first: the request is done whatever happens to the file
    if args.receipt_out:
        partial = args.receipt_out.with_name(args.receipt_out.name + ".partial")
        partial.write_text(text + "\n", encoding="utf-8")
        partial.replace(args.receipt_out)
    return 0 if receipt.status == "applied" else 1


def _cmd_recommend(args: argparse.Namespace, settings: LetheSettings) -> int:
    from streams.reader import request_and_wait

    if not 1 <= args.k <= settings.limits.max_k:  # checked before connecting
        print(
            f"lethe recommend: not a valid request: -k must be 1 to {settings.limits.max_k}"
            " (limits.max_k)",
            file=sys.stderr,
        )
        return 2
    try:
        rec = asyncio.run(request_and_wait(settings, args.user, args.k, timeout_s=args.timeout))
    except TimeoutError:
        print(f"lethe recommend: no reply within {args.timeout} s", file=sys.stderr)
        return 3
    print(rec.model_dump_json(indent=2))
    return 0


def _cmd_schemas(args: argparse.Namespace, settings: LetheSettings) -> int:
    from streams.schemas import write_schemas

    for path in write_schemas(args.out):
        print(path)
    return 0


def _cmd_verify_erasure(args: argparse.Namespace, settings: LetheSettings) -> int:
    from pydantic import ValidationError

    from streams.erasure import read_receipt, verify_erasure
    from streams.keys import keyring_for
    from streams.services.imcorrect import imcorrect_folder

    try:
        receipt = read_receipt(args.receipt)
    except (OSError, ValueError, ValidationError) as exc:  # ValueError: not UTF-8 too
        print(f"lethe verify-erasure: cannot read the receipt: {exc}", file=sys.stderr)
        return 2
    try:
        keys = keyring_for(settings, create=False)  # a new key would prove nothing
    except (OSError, ValueError) as exc:
        print(
            f"lethe verify-erasure: no hash key (LETHE_HASH_KEY or key file): {exc}",
            file=sys.stderr,
        )
        return 2
    # a hot replica's folder: --replica, else the replica these settings run
    folder = f"imcorrect-{args.replica}" if args.replica else imcorrect_folder(settings)
    try:
        verdict = verify_erasure(
            Path(settings.state_dir), receipt, keys, tolerance=args.tolerance, folder=folder
        )
    except (OSError, ValueError) as exc:  # an unreadable or older-format state, or one
        # pruned while it was read: no verdict either way
        print(f"lethe verify-erasure: cannot read the state: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(verdict.to_dict(), indent=2) if args.json else verdict.render())
    return 0 if verdict.passed else 1


def _cmd_rotate_hash_key(args: argparse.Namespace, settings: LetheSettings) -> int:
    from streams.config import hash_key_path
    from streams.keys import rotate_key_file

    if settings.hash_key is not None:
        print(
            "lethe rotate-hash-key: LETHE_HASH_KEY is set; set a new value and move the old "
            "one into LETHE_HASH_KEYS_RETIRED (docs/privacy.md)",
            file=sys.stderr,
        )
        return 2
    path = hash_key_path(settings)
    ring = rotate_key_file(path)
    print(f"{path}: new current key, {len(ring.retired)} retired key(s) kept; restart workers")
    return 0


def _cmd_worker(args: argparse.Namespace, settings: LetheSettings) -> int:
    from streams.logs import configure_logging

    configure_logging(settings.log_json)
    from streams.runtime.workers import WORKERS, run_worker

    if args.kind not in WORKERS:
        print(f"lethe worker: unknown kind {args.kind!r}", file=sys.stderr)
        return 2
    if settings.security.protocol != "PLAINTEXT":
        # a wrong password or CA would otherwise show up as retries or a bare bootstrap error
        from streams.kafka_config import (
            KafkaAccessError,
            access_needs,
            access_topics,
            check_access,
        )

        try:
            needs = access_needs(settings, args.kind)
            check_access(settings, access_topics(settings, args.kind), needs=needs)
        except KafkaAccessError as exc:
            logging.getLogger("lethe.worker").error("%s worker cannot start: %s", args.kind, exc)
            return 3
    from streams.keys import UnknownKeyError
    from streams.metrics import MetricsPortTaken
    from streams.services.trainer_items import CatalogueError

    try:
        run_worker(args.kind, settings)
    except UnknownKeyError as exc:
        # stopped on purpose: without its key the worker would learn forgotten users again
        logging.getLogger("lethe.worker").critical("%s worker cannot start: %s", args.kind, exc)
        return 5
    except (CatalogueError, MetricsPortTaken) as exc:
        logging.getLogger("lethe.worker").error("%s worker cannot start: %s", args.kind, exc)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lethe",
        description="Lethe: a streaming recommender that learns from every event "
        "and forgets on request.",
    )
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP)")
    parser.add_argument("--topic-prefix", help="topic name prefix (default: lethe.)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "topics",
        help="create or describe Lethe's topics, or check their retention against the "
        "erasure deadline",
    )
    p.add_argument("action", choices=["create", "describe", "check"])
    p.set_defaults(func=_cmd_topics)

    p = sub.add_parser("publish", help="publish interaction events from a CSV or JSONL file")
    p.add_argument("kind", choices=["interactions"])
    p.add_argument("file", type=Path)
    p.add_argument("--format", choices=["csv", "jsonl"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("replay", help="replay a bundled MovieLens dataset into interactions")
    p.add_argument("--dataset", choices=["ml-100k", "ml-1m"], default="ml-100k")
    p.add_argument("--limit", type=int, help="stop after this many events")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("forget", help="ask Lethe to forget a user, an item or interactions")
    p.add_argument("--user")
    p.add_argument("--item")
    p.add_argument(
        "--interaction",
        dest="items",
        action="append",
        metavar="ITEM",
        help="forget only this item of --user (repeatable)",
    )
    p.add_argument("--reason", choices=["privacy", "security", "utility"], default="privacy")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the IMCorrect worker's receipt and print it (exit 1 if rejected, "
        "3 if it was sent but no receipt came in time or could be read)",
    )
    p.add_argument(
        "--receipt-out",
        type=Path,
        metavar="FILE",
        help="write that receipt to FILE for `lethe verify-erasure` (implies --wait)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (--wait)")
    p.set_defaults(func=_cmd_forget)

    p = sub.add_parser("recommend", help="request recommendations and wait for the reply")
    p.add_argument("--user", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    p.set_defaults(func=_cmd_recommend)

    p = sub.add_parser("worker", help="run a Lethe worker until SIGINT/SIGTERM")
    p.add_argument("kind", choices=["imcorrect", "trainer", "scorer"])
    p.add_argument("--state-dir", type=Path, help="state folder (default: LETHE_STATE_DIR)")
    p.add_argument(
        "--standby",
        action="store_true",
        help="wait while another process holds the state folder, then take over (LETHE_STANDBY)",
    )
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser(
        "verify-erasure",
        help="prove a deletion from the files on disk (exit 0 pass, 1 fail, 2 unusable input)",
    )
    p.add_argument("receipt", help="a deletion receipt: JSON file, '-' for stdin, or JSON text")
    p.add_argument("--state-dir", type=Path, help="state folder (default: LETHE_STATE_DIR)")
    p.add_argument("--replica", help="a hot IMCorrect replica's id (imcorrect.replica_id)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-8,
        help="largest max-abs difference between the live and a refitted mapping",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(func=_cmd_verify_erasure)

    p = sub.add_parser("rotate-hash-key", help="make a new hash key; the old ones stay for lookups")
    p.add_argument("--state-dir", type=Path, help="state folder (default: LETHE_STATE_DIR)")
    p.set_defaults(func=_cmd_rotate_hash_key)

    p = sub.add_parser("schemas", help="write JSON Schema files of every contract")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "schemas")
    p.set_defaults(func=_cmd_schemas)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {}
    if args.bootstrap:
        overrides["bootstrap_servers"] = args.bootstrap
    if args.topic_prefix:
        overrides["topic_prefix"] = args.topic_prefix
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    if getattr(args, "standby", False):
        overrides["standby"] = True
    from pydantic import ValidationError

    from streams.client import BROKER_UNREACHABLE

    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        # the message names each bad setting (and a moved one's new name); no traceback
        print(f"lethe: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command != "worker":
        # a one-shot command reports a broker it cannot reach in one line of its own (below);
        # aiokafka would log the same failure first (a worker keeps its warnings)
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args, settings) or 0)
    except BROKER_UNREACHABLE as exc:
        print(
            f"lethe {args.command}: cannot reach Kafka at {settings.bootstrap_servers}: {exc}",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
