"""The trainer consumer: ``interactions`` + ``deletions`` in; checkpoints, ONNX models on
``model-updates`` and ``neural-retrained`` receipts on ``deletion-receipts`` out.

Micro-batches: a round runs once ``batch_events`` new interactions arrived, or
``batch_wait_s`` after the first new one. Each round is one LLMD4Rec round
(:class:`models.online.OnlineLLMD4Rec`), then a checkpoint that records the offsets it was
trained through, then the rolling validation of the new SASRec *and of the published one on
the same users*; the new one is exported and announced unless it is worse by more than
``regression_tolerance`` NDCG@10.

Forgetting: a deletion (ordered after earlier interactions by :class:`DeletionBarrier`)
removes the data from the sequence store, then the models are restored from the newest
checkpoint that predates the data (or rebuilt from scratch) and retrained on what is retained.
Checkpoints and ONNX files that saw the data are deleted, the retrained SASRec is exported and
announced whatever its validation says, the state file is rewritten without the data, and only
then does a receipt with status ``neural-retrained`` and ``versions.crm`` go out for each
request. Receipts decided but perhaps not sent before a crash sit in the state file and go out
on restart (at least once: a crash between sending and rewriting the state can repeat one).

aiokafka with manual assignment, not a faust agent, for the same reason as the runtime
(:mod:`streams.runtime.loop`): the state file and the input offsets must move together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from export.onnx_export import export_sasrec
from models.distill import DistillConfig, load_checkpoint
from models.online import OnlineConfig, OnlineLLMD4Rec
from models.sasrec import SASRec
from streams import metrics as m
from streams.applier import subject_of
from streams.barrier import DeletionBarrier
from streams.config import LetheSettings
from streams.contracts import (
    ContractError,
    DeletionReceipt,
    DeletionRequest,
    InteractionEvent,
    ModelUpdate,
    decode,
)
from streams.kafka_config import client_kwargs, producer_kwargs
from streams.kafka_io import topic_partitions, tp_key
from streams.keys import keyring_for
from streams.model_auth import sign, update_key
from streams.retention import retained_elsewhere, retention_from_settings
from streams.runner import run_until_signalled
from streams.runtime.lock import StateLock
from streams.sequence_store import SequenceStore, predates
from streams.state import DedupWindow
from streams.topics import create_topics, topic_name
from streams.trainer_state import CheckpointRecord, TrainerFiles, TrainerState

log = logging.getLogger("lethe.trainer")


def online_config(settings: LetheSettings) -> OnlineConfig:
    t = settings.trainer
    return OnlineConfig(
        max_items=t.max_items,
        max_len=t.max_len,
        hidden=t.hidden,
        llm=t.llm,
        replay_users=t.replay_users,
        steps_per_round=t.steps_per_round,
        pretrain_steps=t.pretrain_steps,
        valid_users=t.valid_users,
        seed=t.seed,
        distill=DistillConfig(t1=t.t1, t2=t.t2, w1=t.w1, w2=t.w2),
    )


class TrainerWorker:
    def __init__(self, settings: LetheSettings) -> None:
        self.settings = settings
        self.cfg = settings.trainer
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.files = TrainerFiles(settings.state_dir, keyring_for(settings))
        self.state = self.files.load() or TrainerState(
            store=SequenceStore(max_per_user=self.cfg.max_len + 2),
            dedup=DedupWindow(self.cfg.dedup_window),
            keys=self.files.keys,
        )
        self._update_key = update_key(settings)  # signs model-updates (docs/privacy.md)
        self.retention = retention_from_settings(settings)  # for the receipts
        self.model = OnlineLLMD4Rec(online_config(settings))
        if self.state.current is not None:
            self.model.load(self.files.checkpoint_dir(self.state.current))
        self.published_crm: dict | None = None
        if self.state.published is not None:
            self._load_published_weights()
        self.topics = {
            name: topic_name(settings, name)
            for name in ("interactions", "deletions", "model-updates", "deletion-receipts")
        }
        self._logical = {v: k for k, v in self.topics.items()}
        self.barrier = DeletionBarrier()
        self.fresh_users: set[str] = set()
        self.new_events = 0
        self.first_new_at: float | None = None
        self._stop = asyncio.Event()
        self.metrics_port = -1

    def stop(self) -> None:
        self._stop.set()

    def _load_published_weights(self) -> None:
        """The published SASRec, to compare new rounds against on the same validation users."""
        name = self.state.published["checkpoint"]
        path = self.files.checkpoint_dir(name)
        if path.exists():
            crm = SASRec(self.model.crm.config)
            load_checkpoint(path, crm, None)
            self.published_crm = crm.state_dict()

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        self.metrics_port = m.serve(self.settings.metrics_host, self.settings.metrics_port)
        await create_topics(self.settings)
        self.consumer = AIOKafkaConsumer(
            **client_kwargs(self.settings), enable_auto_commit=False, group_id=None
        )
        self.offsets = AIOKafkaConsumer(**client_kwargs(self.settings), group_id=None)
        self.producer = AIOKafkaProducer(**producer_kwargs(self.settings))
        await self.consumer.start()
        await self.offsets.start()
        await self.producer.start()
        try:
            await self._assign()
            await self._send_pending_receipts()
            log.info("trainer worker ready (metrics on :%s)", self.metrics_port)
            while not self._stop.is_set():
                await self._step()
        finally:
            await self.producer.stop()
            await self.offsets.stop()
            await self.consumer.stop()

    async def _assign(self) -> None:
        self.interaction_tps = await topic_partitions(self.consumer, self.topics["interactions"])
        self.deletion_tps = await topic_partitions(self.consumer, self.topics["deletions"])
        self.consumer.assign(self.interaction_tps + self.deletion_tps)
        for tp in self.interaction_tps + self.deletion_tps:
            offset = self.state.offsets.get(tp_key(tp))
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)

    # -- one step -------------------------------------------------------------------------
    async def _step(self) -> None:
        got = await self.consumer.getmany(timeout_ms=500, max_records=5000)
        limits = self.settings.limits
        for records in got.values():
            for record in records:
                logical = self._logical[record.topic]
                contract = InteractionEvent if logical == "interactions" else DeletionRequest
                try:
                    event = decode(contract, record.value or b"", limits)
                except ContractError:
                    # the IMCorrect worker dead-letters malformed input; count and move on
                    m.EVENTS.labels(logical, "invalid").inc()
                    if logical == "deletions" and self.barrier.active:
                        self.barrier.hold(record, None)
                    else:
                        self._advance(record)
                    continue
                if logical == "interactions":
                    self._learn(event, record)
                    self._advance(record)
                else:
                    await self._hold(record, event)
        released = self.barrier.release(self.state.offsets)
        if released:
            for record, _ in released:
                self._advance(record)
            self.consumer.resume(*self.deletion_tps)
            requests = [r for _, r in released if r is not None]
            if requests:
                await self._forget(requests)
        if self._round_due():
            await self._round()

    def _advance(self, record) -> None:
        self.state.offsets[f"{record.topic}:{record.partition}"] = record.offset + 1

    def _learn(self, event: InteractionEvent, record) -> None:
        if self.state.dedup.seen_any(self.state.hasher.candidates("event", event.event_id)):
            m.EVENTS.labels("interactions", "duplicate").inc()
            return
        m.EVENTS.labels("interactions", "valid").inc()
        self.state.store.add(
            event.user_id, event.item_id, f"{record.topic}:{record.partition}", record.offset
        )
        self.fresh_users.add(event.user_id)
        self.new_events += 1
        m.TRAINER_PENDING.set(self.new_events)
        if self.first_new_at is None:
            self.first_new_at = time.monotonic()

    async def _hold(self, record, request: DeletionRequest) -> None:
        m.EVENTS.labels("deletions", "valid").inc()
        await self.barrier.hold_while_reading(
            record, request, self.consumer, self.offsets, self.interaction_tps, self.deletion_tps
        )

    def _round_due(self) -> bool:
        if self.new_events == 0 or len(self.state.store) < self.cfg.min_users:
            return False
        if self.new_events >= self.cfg.batch_events:
            return True
        return time.monotonic() - (self.first_new_at or 0.0) >= self.cfg.batch_wait_s

    # -- data for the models --------------------------------------------------------------
    def dense_sequences(self) -> dict[str, np.ndarray]:
        """Sequences as dense item indices; items past the vocabulary capacity are left out."""
        items, capacity = self.state.items, self.cfg.max_items
        out = {}
        for user, seq in self.state.store.sequences.items():
            dense = []
            for item in seq:
                idx = items.get(item)
                if idx is None and len(items.by_index) < capacity:
                    idx = items.index(item)
                if idx is not None:
                    dense.append(idx)
            if dense:
                out[user] = np.asarray(dense, dtype=np.int64)
        return out

    # -- rounds ---------------------------------------------------------------------------
    async def _round(self) -> None:
        sequences = self.dense_sequences()
        fresh = sorted(self.fresh_users)
        info = await asyncio.to_thread(self.model.train_round, sequences, fresh)
        self.fresh_users.clear()
        self.new_events, self.first_new_at = 0, None
        m.TRAINER_ROUND_SECONDS.labels(info["kind"]).observe(info["seconds"])
        m.TRAINER_LAST_ROUND.set_to_current_time()
        m.TRAINER_PENDING.set(0)
        for part in ("crm", "llm"):
            if info.get(f"{part}_loss") is not None:
                m.TRAINER_LOSS.labels(part, "total").set(info[f"{part}_loss"])
        m.TRAINER_SEQUENCES.set(len(sequences))
        record = await self._checkpoint({"round": info}, parent=self.state.current)
        metrics, baseline = await asyncio.to_thread(self._validate, sequences)
        new, old = metrics.get("ndcg@10", 0.0), (baseline or {}).get("ndcg@10", 0.0)
        if baseline is None:
            reason = "first"
        elif new >= old:
            reason = "improved"
        else:
            reason = "within-tolerance"
        if baseline is not None and new < old - self.cfg.regression_tolerance:
            m.EXPORTS_SKIPPED.labels("regressed").inc()
            log.info(
                "version %d not exported: NDCG@10 %.4f < published %.4f on the same users",
                record.version,
                new,
                old,
            )
            self.files.save(self.state)
            return
        await self._export_and_announce(record, metrics, reason)
        self._prune_checkpoints()
        self.files.save(self.state)

    def _validate(self, sequences) -> tuple[dict, dict | None]:
        metrics = self.model.validate(sequences)
        baseline = None
        if self.published_crm is not None:
            baseline = self.model.validate(sequences, self.published_crm)
        for name, value in metrics.items():
            m.TRAINER_VALIDATION.labels(name).set(value)
        return metrics, baseline

    async def _checkpoint(
        self, extra: dict, parent: str | None, lineage: dict | None = None
    ) -> CheckpointRecord:
        """Save the live models with their lineage: the parent checkpoint, the offsets trained
        through and every deletion request whose data the line of checkpoints excludes."""
        lineage = dict(lineage or {})
        self.state.version += 1
        version = self.state.version
        name = f"ckpt-{version:06d}"
        parent_meta = self.files.checkpoint_meta(parent) if parent else {}
        excludes = list(parent_meta.get("excludes_requests", [])) + lineage.pop("excludes", [])
        meta = {
            "version": version,
            "parent": parent,
            "trained_through": dict(self.state.offsets),
            "excludes_requests": excludes,
            "users": len(self.state.store),
            **lineage,
            **extra,
        }
        await asyncio.to_thread(self.model.save, self.files.checkpoint_dir(name), meta)
        record = CheckpointRecord(name, version, dict(self.state.offsets))
        self.state.checkpoints.append(record)
        self.state.current = name
        return record

    async def _export_and_announce(
        self, record: CheckpointRecord, metrics: dict, reason: str
    ) -> ModelUpdate:
        metadata = {
            "lethe.items": json.dumps(self.state.items.by_index),
            "lethe.version": str(record.version),
            "lethe.max_len": str(self.cfg.max_len),
        }
        exported = await asyncio.to_thread(
            export_sasrec, self.model.crm, Path(self.settings.model_dir), metadata=metadata
        )
        record.onnx_path = str(exported.path.resolve())
        update = sign(
            ModelUpdate(
                kind="crm-onnx",
                version=str(record.version),
                path=record.onnx_path,
                sha256=exported.sha256,
                metrics={k: float(v) for k, v in metrics.items()},
                trained_through=record.trained_through,
                ts=int(time.time() * 1000),
            ),
            self._update_key,
        )
        await self.producer.send_and_wait(
            self.topics["model-updates"], value=update.to_bytes(), key=b"crm"
        )
        self.state.published = {
            "version": record.version,
            "path": record.onnx_path,
            "sha256": exported.sha256,
            "checkpoint": record.name,
            "metrics": metrics,
        }
        self.published_crm = self.model.crm_state()
        m.MODELS_EXPORTED.labels(reason).inc()
        m.MODEL_VERSION.labels("crm").set(record.version)
        log.info(
            "published SASRec version %d (%s): validation NDCG@10 %.4f, parity %.2g",
            record.version,
            reason,
            metrics.get("ndcg@10", float("nan")),
            exported.max_abs_diff,
        )
        return update

    def _prune_checkpoints(self) -> None:
        """Keep the newest ``keep_checkpoints`` and the published one."""
        keep = {c.name for c in self.state.checkpoints[-self.cfg.keep_checkpoints :]}
        if self.state.published:
            keep.add(self.state.published["checkpoint"])
        published_path = (self.state.published or {}).get("path")
        for c in [c for c in self.state.checkpoints if c.name not in keep]:
            self.files.delete_checkpoint(c.name)
            # an old model file would keep data that may be forgotten later: it goes too
            if c.onnx_path and c.onnx_path != published_path:
                Path(c.onnx_path).unlink(missing_ok=True)
        self.state.checkpoints = [c for c in self.state.checkpoints if c.name in keep]

    # -- forgetting -----------------------------------------------------------------------
    async def _forget(self, requests: list[DeletionRequest]) -> None:
        start = time.perf_counter()
        earliest: dict[str, int] = {}
        removed: dict[str, dict[str, int]] = {}
        for request in requests:
            held = set(self.state.store.get(request.user_id)) if request.user_id else set()
            counts, first = self.state.store.forget(request)
            if request.scope == "item":
                self.state.items.drop(request.item_id)
            for item in held - set(self.state.store.item_counts):
                # no retained sequence holds it: a model retrained without the data would
                # not know it, so it leaves the vocabulary (and the exported item list)
                self.state.items.drop(item)
            removed[request.request_id] = counts
            for tp, offset in first.items():
                earliest[tp] = min(offset, earliest.get(tp, offset))
            self.fresh_users.discard(request.user_id or "")
        stale = [c for c in self.state.checkpoints if not predates(c.trained_through, earliest)]
        if not earliest or not stale:
            # no checkpoint (and so neither the live models, which are the newest checkpoint)
            # was trained on it: nothing to retrain, but the receipt still says so
            await self._receipts(requests, removed, self.state.published)
            return
        base = next(
            (c for c in reversed(self.state.checkpoints) if predates(c.trained_through, earliest)),
            None,
        )
        if base is None:
            self.model.reset()
        else:
            self.model.load(self.files.checkpoint_dir(base.name))
        sequences = self.dense_sequences()
        info = await asyncio.to_thread(self.model.retrain, sequences, self.cfg.retrain_rounds)
        m.TRAINER_ROUND_SECONDS.labels("retrain").observe(info["seconds"])
        m.TRAINER_LAST_ROUND.set_to_current_time()
        m.TRAINER_PENDING.set(0)
        # the retrain saw every retained event: nothing is waiting for a round any more
        self.fresh_users.clear()
        self.new_events, self.first_new_at = 0, None
        record = await self._checkpoint(
            {"retrain": info},
            parent=base.name if base else None,
            lineage={
                "restored_from": base.name if base else None,
                "restored_trained_through": base.trained_through if base else None,
                "forgotten_data_from": earliest,
                "retrained_for": [r.request_id for r in requests],
                "excludes": [r.request_id for r in requests],
            },
        )
        metrics, _ = await asyncio.to_thread(self._validate, sequences)
        origin = f"checkpoint {base.name}" if base else "scratch"
        detail = (
            f"SASRec and LLM side retrained from {origin} without the data; "
            "checkpoints and ONNX files that held it deleted"
        )
        version = str(record.version)
        decided = [self._receipt(r, removed[r.request_id], version, detail) for r in requests]
        self.state.pending_receipts = [r.model_dump_json() for r in decided]
        self.files.save(self.state)  # the sequences without the data are on disk first
        await self._export_and_announce(record, metrics, "forget")
        for c in stale:  # every file that saw the data goes
            self.files.delete_checkpoint(c.name)
            if c.onnx_path and c.onnx_path != record.onnx_path:
                Path(c.onnx_path).unlink(missing_ok=True)
        self.state.checkpoints = [c for c in self.state.checkpoints if c not in stale]
        self.files.save(self.state)
        await self._send_pending_receipts()
        log.info(
            "forgot %d request(s): retrained from %s in %.1f s, version %d, %d checkpoint(s) "
            "deleted",
            len(requests),
            base.name if base else "scratch",
            time.perf_counter() - start,
            record.version,
            len(stale),
        )

    def _receipt(
        self, request: DeletionRequest, removed: dict[str, int], version: str | None, detail: str
    ) -> DeletionReceipt:
        # the subject by keyed hash only: receipts are kept forever (docs/privacy.md)
        now = int(time.time() * 1000)
        return DeletionReceipt(
            subject=subject_of(self.state.hasher, request),
            retained_elsewhere=retained_elsewhere(self.retention, now, request.scope),
            request_id=request.request_id,
            status="neural-retrained",
            scope=request.scope,
            removed=removed,
            requested_at=request.ts,
            applied_at=now,
            versions={"crm": version} if version else {},
            detail=detail,
        )

    async def _receipts(self, requests, removed, published) -> None:
        """Receipts for data no checkpoint or model has been trained on."""
        version = str(published["version"]) if published else None
        detail = "the trainer dropped the data before any model was trained on it"
        self.state.pending_receipts = [
            self._receipt(r, removed[r.request_id], version, detail).model_dump_json()
            for r in requests
        ]
        self.files.save(self.state)
        await self._send_pending_receipts()

    async def _send_pending_receipts(self) -> None:
        if not self.state.pending_receipts:
            return
        for raw in self.state.pending_receipts:
            receipt = DeletionReceipt.model_validate_json(raw)
            await self.producer.send(
                self.topics["deletion-receipts"],
                value=receipt.to_bytes(),
                key=receipt.request_id.encode(),
            )
            m.RECEIPTS.labels(receipt.status).inc()
        await self.producer.flush()
        self.state.pending_receipts = []
        self.files.save(self.state)


def run_worker(settings: LetheSettings) -> None:
    """Run until SIGINT/SIGTERM."""
    lock = StateLock(settings.state_dir, "trainer")  # one process per state folder
    try:
        run_until_signalled(TrainerWorker, settings)
    finally:
        lock.release()
