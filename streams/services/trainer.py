"""The trainer service: sequences in; checkpoints, ONNX models and ``neural-retrained``
receipts out. Kafka-free: the runtime (:mod:`streams.runtime.loop`) reads ``interactions``,
``deletions`` and ``items`` from the offsets the state reflects and publishes what comes back.

Micro-batches: a round runs once ``batch_events`` new interactions arrived, or
``batch_wait_s`` after the first new one (:meth:`TrainerService.tick`). The count closes a
batch at the event that completes it, inside :meth:`~TrainerService.apply`, so rounds fall
at the same places in the log however the runtime cut it into steps (and after a restart).
Each round is one LLMD4Rec round (:class:`models.online.OnlineLLMD4Rec`), then a checkpoint
that records the offsets it was trained through, then the rolling validation of the new
SASRec *and of the published one on the same users*; the new one is exported and announced
unless it is worse by more than ``regression_tolerance`` NDCG@10.

Item text (``items`` and ``catalogue_file``, :mod:`streams.services.trainer_items`) reaches
the LLM side before every round, and every export gives the items with fewer than
``cold.min_count`` training events that have a text a SASRec row mapped from it
(:func:`models.coldinit.init_cold_embeddings`, on a copy: the live SASRec keeps its rows).

Forgetting is :mod:`streams.services.trainer_forget`; what a crash can leave on disk and how
a start puts it right is :mod:`streams.services.trainer_recovery`.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from export.onnx_export import ParityError
from models.distill import TrainingInterrupted, load_checkpoint
from models.durable import remove_temp_files
from models.online import OnlineLLMD4Rec, training_counts
from models.sasrec import SASRec
from streams import metrics as m
from streams.config import LetheSettings
from streams.contracts import ModelUpdate, RecRequest
from streams.keys import keyring_for
from streams.model_auth import update_key
from streams.retention import TopicRetention, retention_from_settings
from streams.sequence_store import SequenceStore
from streams.services.base import Effects, Inputs, Outbox, StepAbandoned
from streams.services.batch import InteractionColumns
from streams.services.trainer_export import export_version
from streams.services.trainer_forget import forget
from streams.services.trainer_items import ItemCatalogue, TextEncoder, read_catalogue
from streams.services.trainer_recovery import recover
from streams.services.trainer_state import CheckpointRecord, TrainerFiles, TrainerState
from streams.state import DedupWindow, new_event_positions
from streams.tombstones import admitted
from streams.topics import topic_name

log = logging.getLogger("lethe.trainer")


@contextlib.contextmanager
def _abandoned_on_stop() -> Iterator[None]:
    """Training cut short by a stop request is the runtime's :class:`StepAbandoned`."""
    try:
        yield
    except TrainingInterrupted as exc:
        raise StepAbandoned("a stop request cut the step's training short") from exc


class TrainerService:
    """Learn sequences, train in rounds, export, forget; snapshot and restore. No Kafka."""

    name: ClassVar[str] = "trainer"
    #: ``items`` from the state's offsets too (its texts are in the state file), so a
    #: restart reads each record once and a forgotten item's text does not come back
    reads: ClassVar[tuple[str, ...]] = ("interactions", "deletions", "items")
    replays: ClassVar[tuple[str, ...]] = ()
    #: the IMCorrect worker dead-letters the shared input; the trainer alone reads ``items``
    dead_letters_for: ClassVar[tuple[str, ...]] = ("items",)
    #: the sequence store records where each event is in the log (for the lineage)
    wants_sources: ClassVar[bool] = True

    def __init__(self, settings: LetheSettings) -> None:
        self.settings = settings
        self.cfg = settings.trainer
        # until a round finishes, the stall alert measures from the start, not from 1970
        m.TRAINER_LAST_ROUND.set_to_current_time()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.model_dir = Path(settings.model_dir)
        # a write killed halfway may hold data forgotten since (this process holds the lock)
        remove_temp_files(TrainerFiles.state_path(settings.state_dir))
        saved = TrainerFiles.read(settings.state_dir)
        keys = keyring_for(settings, saved_fingerprint=(saved or {}).get("key_fingerprint"))
        self.files = TrainerFiles(settings.state_dir, keys)
        self.state = self.files.load(saved) or TrainerState(
            store=SequenceStore(max_per_user=self.cfg.model.max_len + 2),
            dedup=DedupWindow(self.cfg.dedup_window),
            keys=self.files.keys,
        )
        self.recovered = recover(self.state, self.files, self.model_dir)
        file_texts = {}
        if self.cfg.catalogue_file is not None:
            file_texts = read_catalogue(self.cfg.catalogue_file, settings.limits)
            log.info("catalogue %s: %d item texts", self.cfg.catalogue_file, len(file_texts))
        self.catalogue = ItemCatalogue(self.state, file_texts, self.cfg.max_item_texts)
        self.encoder = TextEncoder()
        #: items the full vocabulary left out at the last count (a restart counts again)
        self._left_out = self._count_left_out()
        self.cold = self.cfg.cold
        # item metadata is not training data: its offsets stay out of trained_through
        self._items_topic = topic_name(settings, "items") + ":"
        self.update_key = update_key(settings)  # signs model-updates (docs/privacy.md)
        self.retention = retention_from_settings(settings)  # for the receipts
        self.model = OnlineLLMD4Rec(self.cfg.model)
        if self.state.current is not None:
            self.model.load(self.files.checkpoint_dir(self.state.current))
        published = self.state.published
        self.published_crm: dict | None = self._weights(published and published["checkpoint"])
        if self.state.reference is None and published is not None:
            # a state file from before the reference, or one whose reference was lost: the
            # published model is the best known
            self.state.reference = published["checkpoint"]
        self.reference_crm: dict | None = self._weights(self.state.reference)
        # a restart waits batch_wait_s again for the events it found pending
        self.first_new_at: float | None = time.monotonic() if self.state.new_events else None

    def _weights(self, checkpoint: str | None) -> dict | None:
        """A checkpoint's SASRec (the published one, the gate's reference), to compare new
        rounds against on the same validation users."""
        if checkpoint is None:
            return None
        crm = SASRec(self.model.crm.config)
        load_checkpoint(self.files.checkpoint_dir(checkpoint), crm, None)
        return crm.state_dict()

    # -- the runtime's surface ----------------------------------------------------------------
    @property
    def offsets(self) -> dict[str, int]:
        return self.state.offsets

    @property
    def snapshot_interval_s(self) -> float:
        return self.cfg.snapshot_interval_s

    @property
    def batch_max_events(self) -> int:
        return self.cfg.batch_max_events

    @property
    def batch_max_wait_ms(self) -> float:
        return self.cfg.batch_max_wait_ms

    def use_retention(self, retention: dict[str, TopicRetention]) -> None:
        self.retention = retention

    def interrupt_when(self, stop: Callable[[], bool]) -> None:
        """Training asks ``stop`` before every optimiser step: a shutdown during a retrain
        of minutes abandons the step (:class:`StepAbandoned`) instead of waiting for it."""
        self.model.should_stop = stop

    def apply(self, inputs: Inputs) -> Effects:
        with _abandoned_on_stop():
            return self._apply(inputs)

    def _apply(self, inputs: Inputs) -> Effects:
        """Learn the step's interactions (closing micro-batches as they fill), then forget
        what its deletions name (the runtime released them after every interaction
        published before them)."""
        start = time.perf_counter()
        effects = Effects()
        if inputs.items:  # before the interactions: a round they close uses the texts
            kept = self.catalogue.announce(inputs.items)
            m.EVENTS.labels("items", "learned").inc(kept)
        if len(inputs.interactions):
            effects.merge(self._learn(inputs.interactions))
        self.state.offsets.update(inputs.offsets)
        if inputs.deletions:
            effects.merge(forget(self, list(inputs.deletions)))
        # the scorer serves the newest version: one announcement per step is enough (the
        # files of the others stay with their checkpoints until pruned)
        effects.announcements = effects.announcements[-1:]
        effects.apply_seconds = time.perf_counter() - start
        return effects

    def tick(self) -> Effects:
        """A round ``batch_wait_s`` after the first event not trained on yet."""
        st = self.state
        if not st.new_events or len(st.store) < self.cfg.min_users:
            return Effects()
        if time.monotonic() - (self.first_new_at or 0.0) < self.cfg.batch_wait_s:
            return Effects()
        with _abandoned_on_stop():
            return self._round()

    def note_dead_letters(self, n: int, offsets: dict[str, int]) -> None:
        """Malformed records (dead-lettered by the IMCorrect worker) still move the offsets."""
        self.state.bump("invalid", n)
        self.state.offsets.update(offsets)

    def answer(self, requests: list[RecRequest]) -> list[bytes]:
        return []  # the trainer answers no requests

    @property
    def outbox(self) -> Outbox:
        return self.state.outbox

    def stage(self, effects: Effects, receipts_end_offsets: dict[str, int]) -> None:
        self.state.outbox = Outbox(
            receipts=list(effects.receipts),
            announcements=list(effects.announcements),
            receipts_end_offsets=dict(receipts_end_offsets),
        )

    def clear_outbox(self) -> None:
        self.state.outbox = Outbox()

    def save(self, *, for_receipt: bool = False) -> None:
        """state.json, atomically; the files a forget made stale are already deleted."""
        self.files.save(self.state)

    def gauges(self) -> None:
        m.TRAINER_SEQUENCES.set(len(self.state.store))
        m.TRAINER_MIN_USERS.set(self.cfg.min_users)  # no round below it (the stall alert)
        m.TRAINER_PENDING.set(self.state.new_events)
        m.TRAINER_ITEMS_WITHOUT_ROW.set(self._left_out)
        if self.state.published is not None:
            m.MODEL_VERSION.labels("crm").set(self.state.published["version"])

    def close(self) -> None:
        return None

    # -- learning -----------------------------------------------------------------------------
    def _learn(self, cols: InteractionColumns) -> Effects:
        st, cfg = self.state, self.cfg
        if len(cols.sources) != len(cols):
            raise ValueError("the trainer needs each event's log position (wants_sources)")
        fresh_events = new_event_positions(st.dedup, st.hasher, cols.event_ids)
        if len(fresh_events) < len(cols):
            st.bump("duplicates", len(cols) - len(fresh_events))
            m.EVENTS.labels("interactions", "duplicate").inc(len(cols) - len(fresh_events))
        # an event at or before its subject's deletion would bring forgotten data back
        keep = set(admitted(st.tombstones, st.hasher, cols, fresh_events))
        if len(keep) < len(fresh_events):
            st.bump("dropped_forgotten", len(fresh_events) - len(keep))
        effects = Effects(learned=len(keep))
        offsets, store, fresh = st.offsets, st.store, st.fresh_users
        for k, (tp, offset) in enumerate(cols.sources):
            offsets[tp] = offset + 1
            if k not in keep:
                continue
            user = cols.user_ids[k]
            store.add(user, cols.item_ids[k], tp, offset)
            fresh.add(user)
            st.new_events += 1
            if self.first_new_at is None:
                self.first_new_at = time.monotonic()
            if st.new_events >= cfg.batch_events and len(store) >= cfg.min_users:
                effects.merge(self._round())  # trained through this very event
        m.TRAINER_PENDING.set(st.new_events)
        return effects

    def dense_sequences(self) -> dict[str, np.ndarray]:
        """Sequences as dense item indices, users in id order.

        Nothing here depends on how the partitions interleaved on arrival (the store keeps
        users in the order they were first seen): a round trains on the same rows in the same
        order, and new items take the same vocabulary rows, whichever partition was fetched
        first. Items past the vocabulary capacity are left out."""
        sequences = self.state.store.sequences
        users = sorted(sequences)
        self._index_new_items()
        by_id = self.state.items.by_id
        out = {}
        for user in users:
            dense = [idx for item in sequences[user] if (idx := by_id.get(item)) is not None]
            if dense:
                out[user] = np.asarray(dense, dtype=np.int64)
        return out

    def _count_left_out(self) -> int:
        """Items with held interactions that get no row at the next round: those the room
        left in the vocabulary cannot take."""
        items = self.state.items
        room = max(self.cfg.model.max_items - len(items.by_index), 0)
        new = sum(1 for item in self.state.store.item_counts if item not in items.by_id)
        return max(0, new - room)

    def _index_new_items(self) -> None:
        """Give items not in the vocabulary the free rows: the most interacted-with first
        (the ones left out when it is full are the rarest), ties by id."""
        items = self.state.items
        room = self.cfg.model.max_items - len(items.by_index)  # freed rows are not reused
        by_id, counts = items.by_id, self.state.store.item_counts
        new = ((-n, item) for item, n in counts.items() if item not in by_id)
        for _, item in heapq.nsmallest(max(room, 0), new):
            items.index(item)
        left_out = self._count_left_out()  # the new items that found no free row
        if left_out > self._left_out:
            log.warning(
                "%d item(s) with interactions have no row: the vocabulary is full"
                " (trainer.model.max_items = %d; rows of forgotten items are not reused)",
                left_out,
                self.cfg.model.max_items,
            )
        self._left_out = left_out

    def trained_on_everything(self) -> None:
        """Nothing is waiting for a round any more."""
        self.state.fresh_users.clear()
        self.state.new_events, self.first_new_at = 0, None
        m.TRAINER_PENDING.set(0)
        m.TRAINER_LAST_ROUND.set_to_current_time()

    def trained_through(self) -> dict[str, int]:
        """The input offsets a model made now was trained through (without ``items``)."""
        return {k: v for k, v in self.state.offsets.items() if not k.startswith(self._items_topic)}

    # -- item text ----------------------------------------------------------------------------
    def prepare_texts(self, sequences: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Give the LLM side the current item texts and training counts before it trains
        (a restored checkpoint's tables may be older). Returns (training counts, has text)
        per dense index, for the export."""
        counts = training_counts(sequences, self.cfg.model.max_items)
        has_text = np.zeros(self.cfg.model.max_items, dtype=bool)
        if self.cfg.model.text_repr:
            texts = self.catalogue.by_index(self.state.items.by_index)
            table, has_text = self.encoder.table(
                self.model.llm, texts, self.cfg.model.max_items + 1
            )
            self.model.set_item_texts(table, counts)
        return counts, has_text

    # -- rounds -------------------------------------------------------------------------------
    def _round(self) -> Effects:
        sequences = self.dense_sequences()
        view = self.prepare_texts(sequences)
        # a warm-up or round takes from seconds to minutes: say so before it starts
        log.info(
            "%s on %d users (%d new events)",
            "round" if self.model.warm else "warm-up",
            len(sequences),
            self.state.new_events,
        )
        info = self.model.train_round(sequences, sorted(self.state.fresh_users))
        self.trained_on_everything()
        if info["kind"] == "skipped":
            # no user has two events yet: nothing was trained, so no model to publish (the
            # events stay in the store for the next round)
            return Effects()
        m.TRAINER_ROUND_SECONDS.labels(info["kind"]).observe(info["seconds"])
        for part in ("crm", "llm"):
            if info.get(f"{part}_loss") is not None:
                m.TRAINER_LOSS.labels(part, "total").set(info[f"{part}_loss"])
        m.TRAINER_SEQUENCES.set(len(sequences))
        record = self.checkpoint({"round": info}, parent=self.state.current)
        metrics, baseline = self.validate(sequences)
        new, old = metrics.get("ndcg@10", 0.0), (baseline or {}).get("ndcg@10", 0.0)
        # no user has a validation item yet: nothing to compare, and no new reference
        validated = bool(metrics)
        reference = self.reference_score(sequences) if validated else None
        tolerance = self.cfg.regression_tolerance
        gates = [("published", old if baseline else None), ("reference", reference)]
        for name, score in gates if validated else []:
            if score is not None and new < score - tolerance:
                m.EXPORTS_SKIPPED.labels("regressed").inc()
                log.info(
                    "version %d not exported: NDCG@10 %.4f < %s %.4f on the same users",
                    record.version,
                    new,
                    name,
                    score,
                )
                self.prune_checkpoints()  # refused rounds must not pile up on disk either
                return Effects()
        reason = "first" if baseline is None else "improved" if new >= old else "within-tolerance"
        replaced = None if baseline is None else old
        try:
            update = self.export(record, metrics, reason, view, replaced)
        except ParityError as exc:
            # a diverged model (NaN scores): nothing to serve; raising would stop the worker
            # at this round after every restart
            m.EXPORTS_SKIPPED.labels("parity").inc()
            log.error("version %d not exported: %s", record.version, exc)
            self.prune_checkpoints()
            return Effects()
        if validated and (reference is None or new >= reference):
            self.set_reference(record.name)
        self.prune_checkpoints()
        return Effects(announcements=[update])

    def reference_score(self, sequences: dict[str, np.ndarray]) -> float | None:
        """The gate's reference model's NDCG@10 on this round's validation users (None
        without a reference)."""
        if self.reference_crm is None:
            return None
        return self.model.validate(sequences, self.reference_crm).get("ndcg@10", 0.0)

    def set_reference(self, name: str) -> None:
        """Make the live SASRec (checkpointed as ``name``) the gate's reference."""
        self.state.reference = name
        published = self.state.published
        same = published is not None and published["checkpoint"] == name
        self.reference_crm = self.published_crm if same else self.model.crm_state()

    def validate(self, sequences: dict[str, np.ndarray]) -> tuple[dict, dict | None]:
        """The live SASRec's validation metrics, and the published one's on the same users."""
        metrics = self.model.validate(sequences)
        baseline = None
        if self.published_crm is not None:
            baseline = self.model.validate(sequences, self.published_crm)
        for name, value in metrics.items():
            m.TRAINER_VALIDATION.labels(name).set(value)
        return metrics, baseline

    def checkpoint(
        self, extra: dict, parent: str | None, lineage: dict | None = None
    ) -> CheckpointRecord:
        """Save the live models with their lineage: the parent checkpoint, the offsets trained
        through and every deletion request whose data the line of checkpoints excludes."""
        st, files = self.state, self.files
        lineage = dict(lineage or {})
        st.version += 1
        name = f"ckpt-{st.version:06d}"
        parent_meta = (
            files.checkpoint_meta(parent) if parent and files.has_checkpoint(parent) else {}
        )
        excludes = list(parent_meta.get("excludes_requests", [])) + lineage.pop("excludes", [])
        meta = {
            "version": st.version,
            "parent": parent,
            "trained_through": self.trained_through(),
            "excludes_requests": excludes,
            "users": len(st.store),
            **lineage,
            **extra,
        }
        staging = files.staging_dir(name)
        shutil.rmtree(staging, ignore_errors=True)
        self.model.save(staging, meta)
        files.commit_checkpoint(name)  # complete under its name, or not there at all
        record = CheckpointRecord(name, st.version, self.trained_through())
        st.checkpoints.append(record)
        st.current = name
        return record

    def export(
        self,
        record: CheckpointRecord,
        metrics: dict,
        reason: str,
        view: tuple[np.ndarray, np.ndarray],
        replaced_ndcg: float | None = None,
    ) -> ModelUpdate:
        """Export ``record``'s SASRec, with text-mapped rows for rarely trained items that
        have a text (``view``: training counts and has-text per dense index, from
        :meth:`prepare_texts`), and make it the published model; its announcement.
        ``replaced_ndcg``: the published model's validation NDCG@10 on the same users."""
        crm, mapped = self.model.crm_for_export(*view, self.cold)
        if len(mapped):
            log.info(
                "version %d: %d rarely trained item(s) ranked by text", record.version, len(mapped)
            )
        exported = export_version(
            crm,
            version=record.version,
            items=self.state.items.by_index,
            max_len=self.cfg.model.max_len,
            trained_through=record.trained_through,
            metrics=metrics,
            model_dir=self.model_dir,
            key=self.update_key,
            trainer_id=self.files.trainer_id,
        )
        record.onnx_path = exported.path
        self.state.published = {
            "version": record.version,
            "path": exported.path,
            "sha256": exported.sha256,
            "checkpoint": record.name,
            "metrics": metrics,
        }
        self.published_crm = self.model.crm_state()
        m.MODELS_EXPORTED.labels(reason).inc()
        m.MODEL_VERSION.labels("crm").set(record.version)
        # the validation users are a rolling sample: only a score on the same users compares
        against = (
            ""
            if replaced_ndcg is None
            else f" against {replaced_ndcg:.4f} for the version it replaces on the same users"
        )
        log.info(
            "published SASRec version %d (%s): validation NDCG@10 %.4f%s, parity %.2g",
            record.version,
            reason,
            metrics.get("ndcg@10", float("nan")),
            against,
            exported.max_abs_diff,
        )
        return exported.update

    def delete_checkpoints(self, doomed: list[CheckpointRecord], spare: str | None) -> None:
        """Delete checkpoints and their model files (but ``spare``) and drop their records."""
        for c in doomed:
            self.files.delete_checkpoint(c.name)
            if c.onnx_path and c.onnx_path != spare:
                Path(c.onnx_path).unlink(missing_ok=True)
        names = {c.name for c in doomed}
        self.state.checkpoints = [c for c in self.state.checkpoints if c.name not in names]

    def prune_checkpoints(self) -> None:
        """Keep the newest ``keep_checkpoints`` and the published one."""
        st = self.state
        keep = {c.name for c in st.checkpoints[-self.cfg.keep_checkpoints :]}
        if st.published:
            keep.add(st.published["checkpoint"])
        if st.reference:
            keep.add(st.reference)
        # an old model file would keep data that may be forgotten later: it goes too
        spare = (st.published or {}).get("path")
        self.delete_checkpoints([c for c in st.checkpoints if c.name not in keep], spare)
