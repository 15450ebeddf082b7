"""The IMCorrect service: a Kafka-free state machine over :class:`WorkerState`.

The runtime hands it batches (interactions as columns, released deletions, requests) and the
offsets they came from; it returns what to publish. Its state, with the offsets it reflects
and the receipts not yet known to be out (the outbox), is saved by :meth:`save`.

Durable state scales with the change: a snapshot always holds X, the id maps, the dedup window
and the tombstones (small next to a dense mapping); the mapping's arrays are written only now
and then (``mapping_persist_interval_s``), never in a snapshot taken for a receipt, and a
snapshot without them rebuilds the mapping from X when loaded (exactly: it is a fit).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from models.imcorrect import IMCorrect
from streams import metrics as m
from streams.applier import Applier, BatchOutcome
from streams.config import LetheSettings
from streams.contracts import (
    DeletionReceipt,
    Recommendation,
    RecRequest,
    ScoredItem,
)
from streams.keys import keyring_for
from streams.retention import TopicRetention, retention_from_settings
from streams.services.base import Effects, Inputs, Outbox
from streams.state import DedupWindow, SnapshotStore, WorkerState


def imcorrect_folder(settings: LetheSettings) -> str:
    """The state folder's name under ``state_dir``: one per hot replica."""
    replica = settings.imcorrect.replica_id
    return f"imcorrect-{replica}" if replica else "imcorrect"


def new_state(settings: LetheSettings) -> WorkerState:
    cfg = settings.imcorrect
    model = IMCorrect(cfg.mapping_config(), memory_budget_gb=cfg.memory_budget_gb)
    return WorkerState(model=model, dedup=DedupWindow(cfg.dedup_window))


class IMCorrectService:
    """Learn, forget and answer; snapshot and restore. No Kafka here."""

    name: ClassVar[str] = "imcorrect"
    reads: ClassVar[tuple[str, ...]] = ("interactions", "deletions")
    replays: ClassVar[tuple[str, ...]] = ()
    #: the IMCorrect worker owns the dead letters of the shared input topics
    dead_letters_for: ClassVar[tuple[str, ...]] = ("interactions", "deletions", "rec-requests")
    wants_sources: ClassVar[bool] = False

    def __init__(self, settings: LetheSettings, state_dir: Path | None = None) -> None:
        self.settings = settings
        # the hash key is kept apart from the snapshots (docs/privacy.md, "Keys")
        folder = Path(state_dir or Path(settings.state_dir) / imcorrect_folder(settings))
        saved = SnapshotStore(folder).saved_fingerprint()
        self.store = SnapshotStore(
            folder,
            keyring_for(settings, saved_fingerprint=saved),
            settings.imcorrect.memory_budget_gb,  # a loaded model refuses what a new one would
        )
        self.state = self.store.load(require_key=True) or self.store.adopt(new_state(settings))
        self.store.prune_stale()  # before the runtime publishes receipts the outbox kept
        self.applier = Applier(self.state, retention_from_settings(settings))
        self._mapping_saved_at = time.monotonic()

    # -- input --------------------------------------------------------------------------------
    @property
    def offsets(self) -> dict[str, int]:
        """ "topic:partition" → next offset, as of the state in memory."""
        return self.state.offsets

    @property
    def snapshot_interval_s(self) -> float:
        return self.settings.imcorrect.snapshot_interval_s

    @property
    def batch_max_events(self) -> int:
        return self.settings.imcorrect.batch_max_events

    @property
    def batch_max_wait_ms(self) -> float:
        return self.settings.imcorrect.batch_max_wait_ms

    def use_retention(self, retention: dict[str, TopicRetention]) -> None:
        self.applier.retention = retention

    def apply(self, inputs: Inputs) -> Effects:
        """Apply one batch: its interactions first, then its deletions (which the runtime
        released after every interaction published before them)."""
        start = time.perf_counter()
        interactions, deletions = inputs.interactions, inputs.deletions
        learned = self.applier.learn_columns(interactions) if len(interactions) else 0
        outcome = self.applier.apply(list(deletions)) if deletions else BatchOutcome()
        self.state.offsets.update(inputs.offsets)
        m.APPLIED.inc(outcome.learned + learned)
        return Effects(
            receipts=outcome.receipts,
            learned=outcome.learned + learned,
            apply_seconds=time.perf_counter() - start,
        )

    def tick(self) -> Effects:
        return Effects()

    def note_dead_letters(self, n: int, offsets: dict[str, int]) -> None:
        """Records that only moved offsets (dead-lettered) still count as handled."""
        self.state.bump("dead_letters", n)
        self.state.offsets.update(offsets)

    def answer(self, requests: list[RecRequest]) -> list[bytes]:
        out = []
        for request in requests:
            rec = recommend_from_state(self.state, request)
            m.RECOMMENDATIONS.labels(rec.strategy).inc()
            out.append(rec.to_bytes())
        return out

    # -- outbox -------------------------------------------------------------------------------
    @property
    def outbox(self) -> Outbox:
        """Receipts decided but maybe not yet published."""
        return Outbox(
            receipts=[DeletionReceipt.model_validate_json(r) for r in self.state.pending_receipts],
            receipts_end_offsets=dict(self.state.receipts_end_offsets),
        )

    def stage(self, effects: Effects, receipts_end_offsets: dict[str, int]) -> None:
        """Put receipts in the outbox, with where the receipts topic ended before them."""
        self.state.pending_receipts = [r.model_dump_json() for r in effects.receipts]
        self.state.receipts_end_offsets = dict(receipts_end_offsets)

    def clear_outbox(self) -> None:
        self.state.pending_receipts = []

    def gauges(self) -> None:
        st = self.state
        model = st.model
        m.STATE_SIZE.labels("users").set(len(st.users))
        m.STATE_SIZE.labels("items").set(len(st.items))
        m.STATE_SIZE.labels("interactions").set(model.n_interactions)
        m.MODEL_VERSION.labels("imcorrect").set(model.version)
        m.REFACTORISATIONS.set(model.refactorisations)

    def close(self) -> None:
        return None

    # -- durability ---------------------------------------------------------------------------
    def save(self, *, for_receipt: bool = False) -> Path:
        """Snapshot the state atomically. A snapshot for a receipt never writes the mapping
        (it is rebuilt from X when loaded); otherwise it is written every
        ``mapping_persist_interval_s``. Older snapshots are deleted once this one is on disk."""
        now = time.monotonic()
        due = now - self._mapping_saved_at >= self.settings.imcorrect.mapping_persist_interval_s
        with_mapping = due and not for_receipt
        path = self.store.save(self.state, with_mapping=with_mapping)
        if with_mapping:
            self._mapping_saved_at = now
        return path


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
