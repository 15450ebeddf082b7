"""The scoring service: answers from the ONNX SASRec the trainer announced last, fused with
the newest IMCorrect snapshot; Kafka-free.

Its state is fed by the runtime: ``interactions`` (recent sequences, seen items) and
``deletions`` (ordered by the runtime's barrier), and ``model-updates`` (replayed from the
topic's start at every start). An announced model is used only when its tag verifies and
its file's sha256 matches; it is opened on a background thread and replaces the old one
between batches, so no request in flight is dropped or fails. IMCorrect snapshots are
reloaded the same way every ``imcorrect_reload_s``.

Forgetting before the models catch up: a forgotten user's sequence is dropped at once and
IMCorrect scores of that user are not used until an IMCorrect snapshot past the deletion is
loaded; a forgotten item is never returned (until it is seen again in an interaction newer
than its deletion). Interactions pass the same dedup window and tombstones as IMCorrect's
(:mod:`streams.tombstones`), so a late event of a forgotten user is not stored again. A
step with deletions asks for a snapshot at once, so the forgotten data leaves the scorer's
file too.

Snapshots: the state is encoded on the serving thread (a consistent view), and a periodic
snapshot's disk write then runs on a thread of its own, so requests wait for the encoding
only; a snapshot for a receipt is on disk before :meth:`ScorerService.save` returns. Writes
happen one at a time, in order.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import msgspec
import numpy as np

from models.durable import remove_temp_files, write_bytes_atomically
from streams import metrics as m
from streams.config import LetheSettings
from streams.contracts import ModelUpdate, ModelVersions, RecRequest, recommendation_bytes
from streams.keys import keyring_for
from streams.model_auth import UpdateRefused, authenticate, update_key
from streams.scorer_models import (
    Catalogue,
    IMCorrectView,
    ScoringJob,
    ServedModel,
    load_imcorrect,
    load_served_model,
    score_batch,
)
from streams.services.base import Effects, Inputs, NoOutbox
from streams.services.imcorrect import imcorrect_folder
from streams.services.scorer_state import ScorerState
from streams.state import new_event_positions
from streams.tombstones import admitted, bury

log = logging.getLogger("lethe.scorer")


class ScorerService(NoOutbox):
    """Score requests; keep sequences and forgotten ids; swap models. No Kafka here."""

    name: ClassVar[str] = "scorer"
    reads: ClassVar[tuple[str, ...]] = ("interactions", "deletions")
    replays: ClassVar[tuple[str, ...]] = ("model-updates",)
    dead_letters_for: ClassVar[tuple[str, ...]] = ("rec-requests",)
    wants_sources: ClassVar[bool] = True

    def __init__(self, settings: LetheSettings) -> None:
        self.settings = settings
        self.cfg = settings.scorer
        self.state_file = Path(settings.state_dir) / scorer_folder(settings) / "state.json"
        # a write killed halfway may hold data forgotten since (this process holds the lock)
        if stale := remove_temp_files(self.state_file):
            log.info("removed %d half-written state file(s) of an earlier run", stale)
        saved = json.loads(self.state_file.read_bytes()) if self.state_file.exists() else None
        keys = keyring_for(settings, saved_fingerprint=(saved or {}).get("key_fingerprint"))
        window, history = self.cfg.dedup_window, self.cfg.max_history
        self.state = ScorerState(keys, window, history)
        if saved is not None:
            self.state = ScorerState.from_dict(saved, keys, window, history)
        self._update_key = update_key(settings)
        self._banned_cache: tuple[Catalogue, frozenset[str], frozenset[int]] | None = None
        self.model: ServedModel | None = None
        self.imcorrect: IMCorrectView | None = None
        self.catalogue = Catalogue(None, None)
        self._popularity: np.ndarray | None = None
        # model files are opened off the serving thread
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="lethe-scorer-load")
        # periodic snapshots are written off the serving thread, one at a time
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="lethe-scorer-save")
        self._writing: Future | None = None
        self._swap: tuple[ModelUpdate, Future] | None = None  # the model being opened
        self._wanted: ModelUpdate | None = None
        self._reload: Future | None = None
        self._install_imcorrect(
            load_imcorrect(settings.state_dir, None, imcorrect_folder(settings))
        )
        self._imc_checked = time.monotonic()

    # -- the runtime's protocol -----------------------------------------------------------
    @property
    def offsets(self) -> dict[str, int]:
        return self.state.offsets

    @property
    def snapshot_interval_s(self) -> float:
        return self.cfg.snapshot_interval_s

    @property
    def batch_max_events(self) -> int:
        return self.cfg.state_batch_max_events

    @property
    def batch_max_wait_ms(self) -> float:
        return self.cfg.idle_wait_ms

    def note_dead_letters(self, n: int, offsets: dict[str, int]) -> None:
        self.state.offsets.update(offsets)

    def save(self, *, for_receipt: bool = False) -> None:
        # the write of the one before ends first (files in order, one encoded copy of the
        # state in memory at a time; its error is raised here: the worker stops as after a
        # write that failed on this thread, one snapshot later); then the state is encoded
        # here, where nothing changes it meanwhile (the compact encoder: ids and ints only)
        self.finish_writing()
        body = msgspec.json.encode(self.state.to_dict())
        if for_receipt:  # the forgotten data must be off the disk before the receipt
            write_bytes_atomically(self.state_file, body)
        else:
            self._writing = self._writer.submit(write_bytes_atomically, self.state_file, body)

    def finish_writing(self) -> None:
        """Wait for the snapshot being written, if any; raise its error."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def gauges(self) -> None:
        if self.imcorrect is not None:
            m.MODEL_VERSION.labels("imcorrect").set(self.imcorrect.state.model.version)

    def close(self) -> None:
        try:
            # a clean stop's snapshot is still being written: a failure is the stop's (the
            # file on disk stays the one before, and the next start reads from its offsets)
            self.finish_writing()
        finally:
            self._writer.shutdown(wait=True)
            self._loader.shutdown(wait=True, cancel_futures=True)

    # -- input ----------------------------------------------------------------------------
    def apply(self, inputs: Inputs) -> Effects:
        start = time.perf_counter()
        cols, st = inputs.interactions, self.state
        # the rules IMCorrect applies: a redelivered event once, an event at or before its
        # subject's deletion never (it would bring a forgotten user or item back)
        keep = new_event_positions(st.dedup, st.hasher, cols.event_ids)
        keep = admitted(st.tombstones, st.hasher, cols, keep)
        for k in keep:
            user, item, (tp, offset) = cols.user_ids[k], cols.item_ids[k], cols.sources[k]
            st.store.add(user, item, tp, offset)
            if st.forbidden_items:  # seen again: a live item
                st.unforbid(item)
        for request, position in zip(inputs.deletions, inputs.deletion_sources, strict=True):
            bury(st.tombstones, st.hasher, request)
            st.store.forget(request)
            if request.scope == "item":
                st.forbidden_items[st.item_hash(request.item_id)] = list(position)
            else:
                st.suppressed_users[st.user_hash(request.user_id)] = list(position)
            m.SCORER_DELETIONS.inc()
        if len(cols) or inputs.deletions:
            self._popularity = None
        st.offsets.update(inputs.offsets)
        for update in inputs.updates:
            self._consider(update)
        return Effects(
            snapshot=bool(inputs.deletions),
            learned=len(keep),
            apply_seconds=time.perf_counter() - start,
        )

    def tick(self) -> Effects:
        """Install what the loader finished; start the next model or snapshot load."""
        if self._swap is not None and self._swap[1].done():
            self._install_model(*self._swap)
            self._swap = None
        if self._swap is None and self._wanted is not None:
            update, self._wanted = self._wanted, None
            load = self._loader.submit(
                load_served_model, update, self.cfg.prefer_gpu, self.cfg.threads
            )
            self._swap = (update, load)
        if self._reload is not None and self._reload.done():
            try:
                self._install_imcorrect(self._reload.result())
            except Exception as exc:  # noqa: BLE001 - a bad snapshot: keep the view served
                log.warning("IMCorrect snapshot not loaded (the served one stays): %s", exc)
            self._reload = None
        now = time.monotonic()
        if self._reload is None and now - self._imc_checked >= self.cfg.imcorrect_reload_s:
            self._imc_checked = now
            self._reload = self._loader.submit(
                load_imcorrect,
                self.settings.state_dir,
                self.imcorrect,
                imcorrect_folder(self.settings),
            )
        return Effects()

    def _consider(self, update: ModelUpdate) -> None:
        """Queue a verified SASRec announcement newer than anything served or queued."""
        if update.kind != "crm-onnx":
            return
        verified = self._authentic(update)
        if verified is None:
            return
        known = [self.model, self._wanted, self._swap[0] if self._swap else None]
        newest = max((int(u.version) for u in known if u is not None), default=-1)
        # the trainer's versions only grow; the one served last (a restart replays the
        # topic) is taken again, anything older never is
        version = int(verified.version)
        if version < self.state.served_version:
            # superseded history replayed at a start, a re-published old announcement, or a
            # trainer numbering again from a restored backup (docs/privacy.md)
            log.info(
                "model update version %d skipped: older than version %d, served before",
                version,
                self.state.served_version,
            )
            return
        if version > newest:
            self._wanted = verified

    def _authentic(self, update: ModelUpdate) -> ModelUpdate | None:
        """``update`` with its path resolved inside the model folder when its tag verifies;
        None (counted, logged) for an unsigned or forged one or a path outside the folder."""
        try:
            path = authenticate(update, self._update_key, Path(self.settings.model_dir))
        except UpdateRefused as exc:
            m.MODEL_UPDATES_REFUSED.labels(exc.reason).inc()
            log.warning("model update refused (%s): %s", exc.reason, exc)
            return None
        return update.model_copy(update={"path": str(path)})

    def _install_model(self, update: ModelUpdate, done: Future) -> None:
        try:
            model = done.result()
        except Exception as exc:  # noqa: BLE001 - whatever fails, the served model stays
            m.SCORER_SWAPS.labels("rejected").inc()
            log.warning("model version %s rejected: %s", update.version, exc)
            return
        if self.model is not None and int(model.version) <= int(self.model.version):
            return
        old, self.model = self.model, model
        self.state.served_version = max(self.state.served_version, int(model.version))
        store = self.state.store
        if store.max_per_user is not None and model.max_len > store.max_per_user:
            # the model reads longer histories than are kept: keep that many from now on
            log.warning(
                "SASRec version %s reads %d items per user, more than scorer.max_history "
                "(%d): keeping %d from now on",
                model.version,
                model.max_len,
                store.max_per_user,
                model.max_len,
            )
            store.bound(model.max_len)
        self.catalogue = Catalogue(model, self.imcorrect)
        _settle_heap()
        self._popularity = None
        m.SCORER_SWAPS.labels("swapped").inc()
        m.MODEL_VERSION.labels("crm").set(int(model.version))
        if old is not None:
            m.SCORER_PROVIDER.labels(old.provider).set(0)
        m.SCORER_PROVIDER.labels(model.provider).set(1)
        log.info("serving SASRec version %s on %s", model.version, model.provider)

    def _install_imcorrect(self, view: IMCorrectView | None) -> None:
        if view is self.imcorrect or view is None:
            return
        unchanged = self.imcorrect is not None and view.state is self.imcorrect.state
        self.imcorrect = view
        if unchanged:  # a newer snapshot of the same data: nothing to rebuild or collect
            return
        self.catalogue = Catalogue(self.model, view)
        _settle_heap()
        self._popularity = None
        offsets = view.state.offsets
        for user, (tp, offset) in list(self.state.suppressed_users.items()):
            if offsets.get(tp, 0) > offset:  # the snapshot has applied that deletion
                del self.state.suppressed_users[user]
        m.MODEL_VERSION.labels("imcorrect").set(view.state.model.version)

    # -- requests -------------------------------------------------------------------------
    def answer(self, requests: list[RecRequest]) -> list[bytes]:
        catalogue = self.catalogue  # the references this batch keeps
        if catalogue.model is None and catalogue.imcorrect is None:
            catalogue = Catalogue(None, None, fallback_ids=list(self.state.store.item_counts))
        jobs = [self._job(catalogue, r) for r in requests]
        popularity = self._popularity_for(catalogue)
        t0 = time.perf_counter()
        results = score_batch(catalogue, jobs, self.cfg.fusion_weight, popularity)
        m.SCORER_LATENCY.labels("model").observe(time.perf_counter() - t0)
        m.SCORER_BATCH.observe(len(requests))
        versions = ModelVersions.model_construct(
            crm=catalogue.model.version if catalogue.model else None,
            imcorrect=catalogue.imcorrect.version if catalogue.imcorrect else None,
        )
        now_ms = int(time.time() * 1000)
        out = []
        for request, (positions, scores, strategy) in zip(requests, results, strict=True):
            # built without re-validation: ids come from the catalogue (validated on the way
            # in) and fused scores are finite by construction; this is the per-request hot path
            pairs = [
                (catalogue.ids[p], s)
                for p, s in zip(positions.tolist(), scores.tolist(), strict=True)
            ]
            out.append(
                recommendation_bytes(
                    request.request_id, request.user_id, pairs, versions, now_ms, strategy
                )
            )
            m.RECOMMENDATIONS.labels(strategy).inc()
        return out

    def _job(self, catalogue: Catalogue, request: RecRequest) -> ScoringJob:
        items = self.state.store.get(request.user_id)  # read only, and within this call
        banned = set(self._forbidden_positions(catalogue))
        if request.exclude_seen:
            banned |= {catalogue.position[i] for i in items if i in catalogue.position}
        history = None
        if catalogue.model is not None and items:
            row = catalogue.history_row(items)
            history = row if row[-1] != 0 else None
        imc_user = None
        suppressed = bool(self.state.suppressed_users) and self.state.is_suppressed(request.user_id)
        if catalogue.imcorrect is not None and not suppressed:
            u = catalogue.imcorrect.state.users.get(request.user_id)
            if u is not None and catalogue.imcorrect.state.model.history_size(u) > 0:
                imc_user = u
                if request.exclude_seen:
                    # what IMCorrect holds of the user too: this scorer's own store may not
                    # have read it all (a new replica catching up, a lost state folder)
                    held = catalogue.imcorrect.state.model.history(u)
                    banned |= set(catalogue.imcorrect_positions(held).tolist())
        return ScoringJob(request.k, history, imc_user, np.fromiter(banned, dtype=np.int64))

    def _forbidden_positions(self, catalogue: Catalogue) -> frozenset[int]:
        """Catalogue positions of forgotten items (kept by hash, so the catalogue is hashed
        once per catalogue and change of the forgotten set, not per request)."""
        forbidden = self.state.forbidden_items
        if not forbidden:
            return frozenset()
        keys = frozenset(forbidden)
        cached = self._banned_cache
        # the catalogue itself is held (not its id): a freed one's address could be reused
        if cached is None or cached[0] is not catalogue or cached[1] != keys:
            is_forbidden = self.state.is_forbidden
            banned = frozenset(k for k, i in enumerate(catalogue.ids) if is_forbidden(i))
            self._banned_cache = cached = (catalogue, keys, banned)
        return cached[2]

    def _popularity_for(self, catalogue: Catalogue) -> np.ndarray:
        """Interaction counts per catalogue item (the fallback for users nobody knows)."""
        if self._popularity is None or len(self._popularity) != len(catalogue):
            counts = self.state.store.item_counts
            self._popularity = np.array([counts.get(i, 0) for i in catalogue.ids], dtype=np.float64)
        return self._popularity


def scorer_folder(settings: LetheSettings) -> str:
    """The replica's state folder (and lock) name under ``state_dir``."""
    replica = settings.scorer.replica_id
    return "scorer" if replica is None else f"scorer-{replica}"


def _settle_heap() -> None:
    """Move the long-lived objects just loaded (snapshot, catalogue) out of the collector's
    way: a full collection over them stalls serving for tens of milliseconds, which lands
    on whichever requests are waiting."""
    gc.collect()
    gc.freeze()
