"""The streaming IMCorrect worker: ``interactions`` + ``deletions`` in, receipts and
recommendations out, state snapshotted with the offsets it reflects.

Why aiokafka and not a faust agent here: the worker's guarantee is that model state and input
offsets move together (a snapshot holds both, a restart seeks to the snapshot's offsets). A
faust agent commits its consumer group's offsets on its own schedule, independent of our
snapshots, so after a crash the group offsets may be ahead of the state (events lost) or
behind it. Assigning partitions manually and seeking to the snapshot's offsets gives
exactly-once *state* updates; the dedup window additionally absorbs duplicate deliveries.

Deletions wait for a barrier: when one is read, the log-end offsets of ``interactions`` are
noted, the ``deletions`` partitions are paused, and the held deletions apply in the first
batch that has read ``interactions`` up to those offsets. So a deletion applies after every
interaction that was published before it, even though the two topics are read in parallel.
Held deletions are not in the snapshot's offsets, so a crash re-reads and re-holds them.

Receipts are published only after a snapshot that no longer holds the forgotten data is on
disk. A receipt decided but perhaps not published before a crash is kept in the snapshot and,
on restart, published unless the receipts topic already has it: exactly one receipt each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.imcorrect import IMCorrect
from streams import metrics as m
from streams.applier import Applier
from streams.config import LetheSettings
from streams.contracts import (
    ContractError,
    DeletionReceipt,
    DeletionRequest,
    InteractionEvent,
    Recommendation,
    RecRequest,
    ScoredItem,
    decode,
)
from streams.kafka_config import client_kwargs, producer_kwargs
from streams.kafka_io import send_dead_letter, topic_partitions, tp_key
from streams.runner import run_until_signalled
from streams.state import DedupWindow, SnapshotStore, WorkerState
from streams.topics import create_topics, topic_name

log = logging.getLogger("lethe.imcorrect")


def new_state(settings: LetheSettings) -> WorkerState:
    cfg = settings.imcorrect
    params: dict[str, float] = {
        "ease": {"l2": cfg.l2},
        "itemknn": {"shrink": cfg.shrink},
        "itemknn-topk": {"k": cfg.k, "shrink": cfg.shrink},
    }.get(cfg.mapping, {})
    if cfg.memory_budget_gb is not None and cfg.mapping != "itemknn-topk":
        params["memory_budget_gb"] = cfg.memory_budget_gb
    return WorkerState(model=IMCorrect(cfg.mapping, **params), dedup=DedupWindow(cfg.dedup_window))


class IMCorrectWorker:
    """One worker owns every partition of ``interactions`` and ``deletions``."""

    def __init__(self, settings: LetheSettings) -> None:
        self.settings = settings
        self.store = SnapshotStore(Path(settings.state_dir) / "imcorrect")
        self.state = self.store.load() or new_state(settings)
        self.applier = Applier(self.state)
        self.topics = {
            name: topic_name(settings, name)
            for name in (
                "interactions",
                "deletions",
                "rec-requests",
                "recommendations",
                "deletion-receipts",
                "dead-letters",
            )
        }
        self._logical = {v: k for k, v in self.topics.items()}
        self._stop = asyncio.Event()
        self._last_snapshot = time.monotonic()
        self._snapshot_offsets: dict[str, int] | None = None  # offsets of the last snapshot
        self.metrics_port = -1
        self.ready = asyncio.Event()
        self._held: list[tuple[object, DeletionRequest]] = []  # (record, request)
        self._barrier: dict[str, int] | None = None
        self.receipt_tps: list[TopicPartition] | None = None

    def stop(self) -> None:
        self._stop.set()

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        self.metrics_port = m.serve(self.settings.metrics_host, self.settings.metrics_port)
        await create_topics(self.settings)
        self.consumer = AIOKafkaConsumer(
            **client_kwargs(self.settings),
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        # End-offset queries go through their own idle client: on the reading consumer they
        # would queue behind its long-polling fetch and take ~fetch_max_wait_ms each.
        self.offsets = AIOKafkaConsumer(**client_kwargs(self.settings), group_id=None)
        self.producer = AIOKafkaProducer(**producer_kwargs(self.settings))
        await self.consumer.start()
        await self.offsets.start()
        await self.producer.start()
        try:
            await self._assign()
            await self._resolve_pending_receipts()
            self.ready.set()
            log.info("imcorrect worker ready (metrics on :%s)", self.metrics_port)
            while not self._stop.is_set():
                await self._step()
            await self._snapshot()  # clean shutdown
        finally:
            await self.producer.stop()
            await self.offsets.stop()
            await self.consumer.stop()

    async def _assign(self) -> None:
        tps = []
        inputs = ["interactions", "deletions"]
        if self.settings.imcorrect.answer_requests:
            inputs.append("rec-requests")  # otherwise the scoring agent answers them
        for name in inputs:
            tps += await topic_partitions(self.consumer, self.topics[name])
        self.consumer.assign(tps)
        self.input_tps = [tp for tp in tps if tp.topic != self.topics["rec-requests"]]
        self.interaction_tps = [tp for tp in tps if tp.topic == self.topics["interactions"]]
        self.deletion_tps = [tp for tp in tps if tp.topic == self.topics["deletions"]]
        for tp in self.input_tps:
            offset = self.state.offsets.get(tp_key(tp))
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        # recommendation requests are ephemeral: answer what arrives from now on
        request_tps = [tp for tp in tps if tp not in self.input_tps]
        if request_tps:
            await self.consumer.seek_to_end(*request_tps)

    async def _resolve_pending_receipts(self) -> None:
        """Publish receipts decided before a crash, unless they already went out."""
        if not self.state.pending_receipts:
            return
        topic = self.topics["deletion-receipts"]
        reader = AIOKafkaConsumer(
            **client_kwargs(self.settings), enable_auto_commit=False, group_id=None
        )
        await reader.start()
        published: set[str] = set()
        try:
            tps = await topic_partitions(reader, topic)
            reader.assign(tps)
            ends = await reader.end_offsets(tps)
            for tp in tps:
                reader.seek(tp, self.state.receipts_end_offsets.get(tp_key(tp), 0))
            while any([await reader.position(tp) < ends[tp] for tp in tps]):
                for records in (await reader.getmany(timeout_ms=500)).values():
                    for r in records:
                        try:
                            published.add(json.loads(r.value)["request_id"])
                        except (ValueError, KeyError, TypeError):
                            continue  # not a receipt of ours; it cannot match a pending one
        finally:
            await reader.stop()
        for raw in self.state.pending_receipts:
            receipt = DeletionReceipt.model_validate_json(raw)
            if receipt.request_id not in published:
                await self._publish_receipt(receipt)
        await self.producer.flush()
        self.state.pending_receipts = []
        await self._snapshot()

    # -- one micro-batch ------------------------------------------------------------------
    async def _collect(self) -> list:
        cfg = self.settings.imcorrect
        batch: list = []
        deadline = time.monotonic() + cfg.batch_max_wait_ms / 1000
        while len(batch) < cfg.batch_max_events and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got = await self.consumer.getmany(
                timeout_ms=int(left * 1000) + 1, max_records=cfg.batch_max_events - len(batch)
            )
            for records in got.values():
                batch.extend(records)
            if not got and batch:
                break
        return batch

    async def _step(self) -> None:
        records = await self._collect()
        events: list[InteractionEvent | DeletionRequest] = []
        requests: list[RecRequest] = []
        limits = self.settings.limits
        for record in records:
            logical = self._logical[record.topic]
            contract = {
                "interactions": InteractionEvent,
                "deletions": DeletionRequest,
                "rec-requests": RecRequest,
            }[logical]
            try:
                event = decode(contract, record.value or b"", limits)
            except ContractError as exc:
                await send_dead_letter(
                    self.producer, self.topics["dead-letters"], record, exc, logical
                )
                self.state.bump("dead_letters")
                if logical == "deletions" and self._barrier is not None:
                    self._held.append((record, None))  # deletion offsets move in order
                elif logical != "rec-requests":
                    self._advance(record)
                continue
            m.EVENTS.labels(logical, "valid").inc()
            if logical == "rec-requests":
                requests.append(event)
            elif logical == "deletions":
                await self._hold(record, event)
            else:
                events.append(event)
                self._advance(record)
        events += self._release_if_barrier_passed()
        if events:
            outcome = await asyncio.to_thread(self.applier.apply, events)
            if outcome.receipts:
                log.info(
                    "applied %d events with %d deletion(s) in %.3f s",
                    len(events),
                    len(outcome.receipts),
                    outcome.apply_seconds,
                )
            m.BATCH_SIZE.observe(len(events))
            m.APPLIED.inc(outcome.learned)
            m.APPLY_SECONDS.observe(outcome.apply_seconds)
            self._update_gauges()
            if outcome.receipts:
                await self._deliver_receipts(outcome.receipts)
        for request in requests:
            await self._answer(request)
        due = time.monotonic() - self._last_snapshot >= self.settings.imcorrect.snapshot_interval_s
        if due and self.state.offsets != self._snapshot_offsets:
            await self._snapshot()  # an idle worker rewrites nothing
        elif due:
            self._last_snapshot = time.monotonic()
        m.SNAPSHOT_AGE.set(time.monotonic() - self._last_snapshot)
        held = [req.ts for _, req in self._held if req is not None]
        m.DELETION_PENDING_AGE.set(max(0.0, time.time() - min(held) / 1000) if held else 0.0)
        await self._record_lag()

    def _advance(self, record) -> None:
        self.state.offsets[f"{record.topic}:{record.partition}"] = record.offset + 1

    async def _hold(self, record, request: DeletionRequest) -> None:
        """Hold a deletion until ``interactions`` has been read up to its current end."""
        if self._barrier is None:
            ends = await self.offsets.end_offsets(self.interaction_tps)
            self._barrier = {tp_key(tp): off for tp, off in ends.items()}
            self.consumer.pause(*self.deletion_tps)
        self._held.append((record, request))

    def _release_if_barrier_passed(self) -> list[DeletionRequest]:
        if self._barrier is None:
            return []
        if any(self.state.offsets.get(k, 0) < end for k, end in self._barrier.items()):
            return []
        released = []
        for record, request in self._held:
            self._advance(record)
            if request is not None:
                released.append(request)
        self._held, self._barrier = [], None
        self.consumer.resume(*self.deletion_tps)
        return released

    async def _deliver_receipts(self, receipts: list[DeletionReceipt]) -> None:
        t0 = time.perf_counter()
        if self.receipt_tps is None:
            self.receipt_tps = await topic_partitions(
                self.consumer, self.topics["deletion-receipts"]
            )
        ends = await self.offsets.end_offsets(self.receipt_tps)
        self.state.receipts_end_offsets = {tp_key(tp): off for tp, off in ends.items()}
        # applied_at is when the data is gone from memory *and* disk, i.e. after the snapshot
        now = int(time.time() * 1000)
        receipts = [r.model_copy(update={"applied_at": now}) for r in receipts]
        self.state.pending_receipts = [r.model_dump_json() for r in receipts]
        t1 = time.perf_counter()
        await self._snapshot()  # the forgotten data is gone from disk before any receipt
        t2 = time.perf_counter()
        for receipt in receipts:
            await self._publish_receipt(receipt)
        await self.producer.flush()
        self.state.pending_receipts = []
        log.info(
            "published %d receipt(s): offsets %.3f s, snapshot %.3f s, publish %.3f s",
            len(receipts),
            t1 - t0,
            t2 - t1,
            time.perf_counter() - t2,
        )

    async def _publish_receipt(self, receipt: DeletionReceipt) -> None:
        await self.producer.send(
            self.topics["deletion-receipts"],
            value=receipt.to_bytes(),
            key=receipt.request_id.encode(),
        )
        m.RECEIPTS.labels(receipt.status).inc()
        log.info(
            "receipt %s for %s request: %s",
            receipt.status,
            receipt.scope,
            receipt.removed,
            extra={
                "request_id": receipt.request_id,
                "status": receipt.status,
                "version": receipt.versions.get("imcorrect"),
            },
        )
        if receipt.requested_at is not None:
            m.FORGET_LATENCY.observe(max(0.0, time.time() - receipt.requested_at / 1000))

    async def _snapshot(self) -> None:
        await self.producer.flush()  # dead letters of events covered by the snapshot are out
        start = time.perf_counter()
        await asyncio.to_thread(self.store.save, self.state)
        m.SNAPSHOT_SECONDS.observe(time.perf_counter() - start)
        self._last_snapshot = time.monotonic()
        self._snapshot_offsets = dict(self.state.offsets)

    # -- recommendations ------------------------------------------------------------------
    async def _answer(self, request: RecRequest) -> None:
        rec = await asyncio.to_thread(recommend_from_state, self.state, request)
        await self.producer.send(
            self.topics["recommendations"], value=rec.to_bytes(), key=request.user_id.encode()
        )
        m.RECOMMENDATIONS.labels(rec.strategy).inc()
        log.info(
            "recommended %d items (%s)",
            len(rec.items),
            rec.strategy,
            extra={
                "request_id": request.request_id,
                "user_id": request.user_id,
                "version": rec.model.imcorrect,
            },
        )

    # -- gauges ---------------------------------------------------------------------------
    def _update_gauges(self) -> None:
        model = self.state.model
        m.STATE_SIZE.labels("users").set(len(self.state.users))
        m.STATE_SIZE.labels("items").set(len(self.state.items))
        m.STATE_SIZE.labels("interactions").set(model.n_interactions)
        m.MODEL_VERSION.labels("imcorrect").set(model.version)
        m.REFACTORISATIONS.set(model.refactorisations)

    async def _record_lag(self) -> None:
        now = time.monotonic()
        if now - getattr(self, "_lag_at", 0.0) < 2.0:
            return
        self._lag_at = now
        ends = await self.offsets.end_offsets(self.input_tps)
        for tp in self.input_tps:
            lag = ends[tp] - await self.consumer.position(tp)
            m.CONSUMER_LAG.labels(self._logical[tp.topic], str(tp.partition)).set(max(lag, 0))


def recommend_from_state(state: WorkerState, request: RecRequest) -> Recommendation:
    """Top-k for a known user from IMCorrect; popularity (marked so) for an unknown one."""
    model = state.model
    u = state.users.get(request.user_id)
    strategy = "personal"
    if u is not None and model.history_size(u) > 0:
        idx, scores = model.recommend([u], request.k, mask_seen=request.exclude_seen)
        idx, scores = idx[0], scores[0]
    else:
        strategy = "popularity"
        idx, scores = model.popular(request.k)
    items = []
    for i, s in zip(idx.tolist(), scores.tolist(), strict=True):
        item_id = state.items.external(i) if i >= 0 else None
        if item_id is not None:
            items.append(ScoredItem(item_id=item_id, score=float(s)))
    return Recommendation(
        request_id=request.request_id,
        user_id=request.user_id,
        items=items,
        model={"imcorrect": str(model.version)},
        ts=int(time.time() * 1000),
        strategy=strategy,
    )


def run_worker(settings: LetheSettings) -> None:
    """Run until SIGINT/SIGTERM, then snapshot and exit cleanly."""
    run_until_signalled(IMCorrectWorker, settings)
