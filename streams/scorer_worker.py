"""The scoring agent: ``rec-requests`` in, ``recommendations`` out, from the ONNX SASRec the
trainer announced last, fused with the newest IMCorrect snapshot.

Two tasks. The *state* task (aiokafka) reads ``interactions`` and ``deletions`` (recent
sequences, seen items, forgotten users and items; deletions ordered by
:class:`DeletionBarrier`) and ``model-updates`` (swaps: the file's sha256 must match the
announcement, the new session is opened off the event loop and replaces the old one between
batches, so no request in flight is dropped or fails). The *request* task takes requests
from a :class:`RequestChannel` (librdkafka: Kafka I/O off the interpreter), batches them
dynamically (up to ``max_batch`` or ``max_wait_ms`` after the first) and answers each.

Forgetting before the models catch up: a forgotten user's sequence is dropped at once and
IMCorrect scores of that user are not used until an IMCorrect snapshot past the deletion is
loaded; a forgotten item is never returned (until it is seen again in new interactions).

The scorer's own state (sequences, forgotten ids, offsets) is written atomically every
``snapshot_interval_s`` and on shutdown; a restart resumes from those offsets.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from functools import partial
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams import metrics as m
from streams.barrier import DeletionBarrier
from streams.config import LetheSettings
from streams.contracts import (
    ContractError,
    DeletionRequest,
    InteractionEvent,
    ModelUpdate,
    ModelVersions,
    RecRequest,
    decode,
    recommendation_bytes,
)
from streams.kafka_config import client_kwargs, reply_producer_kwargs
from streams.kafka_io import send_dead_letter, topic_partitions, tp_key
from streams.keys import KeyRing, keyring_for
from streams.model_auth import UpdateRefused, authenticate, update_key
from streams.request_channel import RequestChannel
from streams.runner import run_until_signalled
from streams.runtime.lock import StateLock
from streams.scorer_models import (
    Catalogue,
    IMCorrectView,
    ModelRejected,
    ScoringJob,
    ServedModel,
    load_imcorrect,
    load_served_model,
    score_batch,
)
from streams.sequence_store import SequenceStore, write_json_atomically
from streams.state import Hasher
from streams.topics import create_topics, topic_name

log = logging.getLogger("lethe.scorer")

#: 2: no hash key in the file, forgotten items by keyed hash
STATE_FORMAT = 2


class ScorerState:
    """Sequences, forgotten ids and offsets: what the scorer keeps across restarts.

    Forgotten users and items are kept as keyed hashes only; the key (``keys``) is never
    written to the state file (docs/privacy.md).
    """

    def __init__(self, keys: KeyRing | None = None) -> None:
        self.store = SequenceStore()
        #: keyed hash of a forgotten item → the deletion's log position (never returned
        #: while here)
        self.forbidden_items: dict[str, list] = {}
        #: keyed hash of a forgotten user → deletion position; that user's IMCorrect scores
        #: are unused until a snapshot past it is loaded (hashes: no forgotten id on disk)
        self.suppressed_users: dict[str, list] = {}
        self.offsets: dict[str, int] = {}
        self.keys = keys or KeyRing.generate()

    def user_hash(self, user: str) -> str:
        return str(Hasher(self.keys)("user", user))

    def item_hash(self, item: str) -> str:
        return str(Hasher(self.keys)("item", item))

    def is_suppressed(self, user: str) -> bool:
        """Is ``user`` suppressed (under the current or a retired hash key)?"""
        found = self.suppressed_users
        return any(str(h) in found for h in Hasher(self.keys).candidates("user", user))

    def is_forbidden(self, item: str) -> bool:
        """Is ``item`` forgotten (under the current or a retired hash key)?"""
        found = self.forbidden_items
        return any(str(h) in found for h in Hasher(self.keys).candidates("item", item))

    def unforbid(self, item: str) -> None:
        for h in Hasher(self.keys).candidates("item", item):
            self.forbidden_items.pop(str(h), None)

    def to_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "store": self.store.to_dict(),
            "forbidden_items": self.forbidden_items,
            "suppressed_users": self.suppressed_users,
            "offsets": self.offsets,
        }

    @classmethod
    def from_dict(cls, data: dict, keys: KeyRing | None = None) -> ScorerState:
        if data.get("format") != STATE_FORMAT:
            raise ValueError("unsupported scorer state format (see docs/privacy.md)")
        state = cls(keys)
        state.store = SequenceStore.from_dict(data["store"])
        state.forbidden_items = data["forbidden_items"]
        state.suppressed_users = data["suppressed_users"]
        state.offsets = data["offsets"]
        return state


class ScorerWorker:
    def __init__(self, settings: LetheSettings) -> None:
        self.settings = settings
        self.cfg = settings.scorer
        self.state_file = Path(settings.state_dir) / "scorer" / "state.json"
        keys = keyring_for(settings)
        self.state = ScorerState(keys)
        if self.state_file.exists():
            self.state = ScorerState.from_dict(json.loads(self.state_file.read_text()), keys)
        self._update_key = update_key(settings)
        self._banned_cache: tuple[Catalogue, frozenset[str], frozenset[int]] | None = None
        self.model: ServedModel | None = None
        self.imcorrect: IMCorrectView | None = None
        self.catalogue = Catalogue(None, None)
        self.topics = {
            name: topic_name(settings, name)
            for name in (
                "interactions",
                "deletions",
                "model-updates",
                "rec-requests",
                "recommendations",
                "dead-letters",
            )
        }
        self._logical = {v: k for k, v in self.topics.items()}
        self.barrier = DeletionBarrier()
        self._stop = asyncio.Event()
        self._popularity: np.ndarray | None = None
        self._dirty = False  # anything to write since the last save
        self.metrics_port = -1

    def stop(self) -> None:
        self._stop.set()

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        self.metrics_port = m.serve(self.settings.metrics_host, self.settings.metrics_port)
        await create_topics(self.settings)
        kwargs = client_kwargs(self.settings)
        self.state_consumer = AIOKafkaConsumer(**kwargs, enable_auto_commit=False, group_id=None)
        self.offsets = AIOKafkaConsumer(**kwargs, group_id=None)
        self.producer = AIOKafkaProducer(**reply_producer_kwargs(self.settings))  # dead letters
        for client in (self.state_consumer, self.offsets, self.producer):
            await client.start()
        self.requests = RequestChannel(
            self.settings,
            self.topics["rec-requests"],
            self.topics["recommendations"],
            fetch_max_wait_ms=self.cfg.fetch_max_wait_ms,
            poll_batch=self.cfg.max_batch,
            linger_ms=self.cfg.reply_linger_ms,
        )
        try:
            await self._assign()
            await self._reload_imcorrect()
            log.info("scorer worker ready (metrics on :%s)", self.metrics_port)
            tasks = [
                asyncio.create_task(self._state_loop()),
                asyncio.create_task(self._request_loop()),
            ]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._save()
        finally:
            await self.requests.close()
            for client in (self.producer, self.offsets, self.state_consumer):
                await client.stop()

    async def _assign(self) -> None:
        c = self.state_consumer
        self.interaction_tps = await topic_partitions(c, self.topics["interactions"])
        self.deletion_tps = await topic_partitions(c, self.topics["deletions"])
        update_tps = await topic_partitions(c, self.topics["model-updates"])
        c.assign(self.interaction_tps + self.deletion_tps + update_tps)
        for tp in self.interaction_tps + self.deletion_tps:
            offset = self.state.offsets.get(tp_key(tp))
            if offset is None:
                await c.seek_to_beginning(tp)
            else:
                c.seek(tp, offset)
        await c.seek_to_beginning(*update_tps)  # compacted: the newest version of each model
        await self.requests.open()  # requests are ephemeral: read from the end

    def _save(self) -> None:
        self._dirty = False
        write_json_atomically(self.state_file, self.state.to_dict())
        self._saved_at = time.monotonic()

    # -- state task -----------------------------------------------------------------------
    async def _state_loop(self) -> None:
        self._saved_at = time.monotonic()
        self._imc_checked = time.monotonic()
        while True:
            got = await self.state_consumer.getmany(timeout_ms=200, max_records=500)
            updates: list[ModelUpdate] = []
            for records in got.values():
                for record in records:
                    logical = self._logical[record.topic]
                    if logical == "model-updates":
                        update = self._decode(ModelUpdate, record, logical)
                        if update is not None and update.kind == "crm-onnx":
                            update = self._authentic(update)
                            if update is not None:
                                updates.append(update)
                    elif logical == "interactions":
                        event = self._decode(InteractionEvent, record, logical)
                        if event is not None:
                            self._learn(event, record)
                        self._advance(record)
                    else:
                        await self._on_deletion(record)
            self._release_deletions()
            if updates:
                await self._swap(max(updates, key=lambda u: int(u.version)))
            now = time.monotonic()
            if now - self._imc_checked >= self.cfg.imcorrect_reload_s:
                self._imc_checked = now
                await self._reload_imcorrect()
            if self._dirty and now - self._saved_at >= self.cfg.snapshot_interval_s:
                await asyncio.to_thread(self._save)

    def _decode(self, contract, record, logical: str):
        try:
            return decode(contract, record.value or b"", self.settings.limits)
        except ContractError:
            m.EVENTS.labels(logical, "invalid").inc()  # the IMCorrect worker dead-letters it
            return None

    def _advance(self, record) -> None:
        self._dirty = True
        self.state.offsets[f"{record.topic}:{record.partition}"] = record.offset + 1

    def _learn(self, event: InteractionEvent, record) -> None:
        m.EVENTS.labels("interactions", "valid").inc()
        tp = f"{record.topic}:{record.partition}"
        self.state.store.add(event.user_id, event.item_id, tp, record.offset)
        if self.state.forbidden_items:  # seen again: a live item
            self.state.unforbid(event.item_id)
        self._popularity = None

    async def _on_deletion(self, record) -> None:
        request = self._decode(DeletionRequest, record, "deletions")
        await self.barrier.hold_while_reading(
            record,
            request,
            self.state_consumer,
            self.offsets,
            self.interaction_tps,
            self.deletion_tps,
        )

    def _release_deletions(self) -> None:
        released = self.barrier.release(self.state.offsets)
        if not released:
            return
        for record, request in released:
            self._advance(record)
            if request is None:
                continue
            position = [f"{record.topic}:{record.partition}", record.offset]
            self.state.store.forget(request)
            if request.scope == "item":
                self.state.forbidden_items[self.state.item_hash(request.item_id)] = position
            else:
                self.state.suppressed_users[self.state.user_hash(request.user_id)] = position
            m.SCORER_DELETIONS.inc()
        self._popularity = None
        self.state_consumer.resume(*self.deletion_tps)
        self._save()  # the forgotten data leaves the scorer's file too

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

    async def _swap(self, update: ModelUpdate) -> None:
        if self.model is not None and int(update.version) <= int(self.model.version):
            return
        try:
            model = await asyncio.to_thread(
                load_served_model, update, self.cfg.prefer_gpu, self.cfg.threads
            )
        except ModelRejected as exc:
            m.SCORER_SWAPS.labels("rejected").inc()
            log.warning("model version %s rejected: %s", update.version, exc)
            return
        old = self.model
        self.model = model
        self.catalogue = Catalogue(model, self.imcorrect)
        _settle_heap()
        self._popularity = None
        m.SCORER_SWAPS.labels("swapped").inc()
        m.MODEL_VERSION.labels("crm").set(int(model.version))
        if old is not None:
            m.SCORER_PROVIDER.labels(old.provider).set(0)
        m.SCORER_PROVIDER.labels(model.provider).set(1)
        log.info("serving SASRec version %s on %s", model.version, model.provider)

    async def _reload_imcorrect(self) -> None:
        view = await asyncio.to_thread(load_imcorrect, self.settings.state_dir, self.imcorrect)
        if view is self.imcorrect:
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

    # -- request task ---------------------------------------------------------------------
    async def _request_loop(self) -> None:
        while True:
            batch = await self._collect_requests()
            if batch:
                await self._answer(batch)

    async def _collect_requests(self) -> list:
        batch = await self.requests.next_batch(self.cfg.max_batch, self.cfg.max_wait_ms / 1000)
        received = time.monotonic()
        wall = time.time()
        for record in batch:  # producer's send time (CreateTime) to here: the Kafka hop
            m.SCORER_LATENCY.labels("transit").observe(max(0.0, wall - record.timestamp / 1000))
        return [(record, received) for record in batch]

    async def _answer(self, batch: list) -> None:
        started = time.monotonic()
        requests = []
        for record, received in batch:
            try:
                request = decode(RecRequest, record.value or b"", self.settings.limits)
            except ContractError as exc:
                await send_dead_letter(
                    self.producer, self.topics["dead-letters"], record, exc, "rec-requests"
                )
                continue
            m.EVENTS.labels("rec-requests", "valid").inc()
            m.SCORER_LATENCY.labels("queue").observe(started - received)
            requests.append(request)
        if not requests:
            return
        catalogue = self.catalogue  # the references this batch keeps, whatever swaps meanwhile
        if catalogue.model is None and catalogue.imcorrect is None:
            catalogue = Catalogue(None, None, fallback_ids=list(self.state.store.item_counts))
        jobs = [self._job(catalogue, r) for r in requests]
        popularity = self._popularity_for(catalogue)
        t0 = time.perf_counter()
        if len(jobs) <= self.cfg.inline_max_batch:
            results = score_batch(catalogue, jobs, self.cfg.fusion_weight, popularity)
        else:
            results = await asyncio.to_thread(
                score_batch, catalogue, jobs, self.cfg.fusion_weight, popularity
            )
        m.SCORER_LATENCY.labels("model").observe(time.perf_counter() - t0)
        m.SCORER_BATCH.observe(len(requests))
        versions = ModelVersions.model_construct(
            crm=catalogue.model.version if catalogue.model else None,
            imcorrect=catalogue.imcorrect.version if catalogue.imcorrect else None,
        )
        replies = []
        for request, (positions, scores, strategy) in zip(requests, results, strict=True):
            # built without re-validation: ids come from the catalogue (validated on the way
            # in) and fused scores are finite by construction; this is the per-request hot path
            body = recommendation_bytes(
                request.request_id,
                request.user_id,
                [
                    (catalogue.ids[p], s)
                    for p, s in zip(positions.tolist(), scores.tolist(), strict=True)
                ],
                versions,
                int(time.time() * 1000),
                strategy,
            )
            replies.append((body, request.user_id.encode(), partial(self._delivered, request)))
            m.RECOMMENDATIONS.labels(strategy).inc()
        # not awaited: acks come back on the channel's delivery thread, so the next batch
        # does not wait a broker round trip; failures are logged there
        self.requests.publish_batch(replies)

    def _delivered(self, request: RecRequest, error: object | None) -> None:
        """Runs on the request channel's delivery thread, or in ``publish_batch`` for an
        answer refused at once (logging and metrics only)."""
        if error is not None:
            log.error("recommendation for %s not delivered: %s", request.request_id, error)
            m.EVENTS.labels("recommendations", "undelivered").inc()
            return
        now_ms = time.time() * 1000
        m.SCORER_LATENCY.labels("end_to_end").observe(max(0.0, (now_ms - request.ts) / 1000))

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


def _settle_heap() -> None:
    """Move the long-lived objects just loaded (snapshot, catalogue) out of the collector's
    way: a full collection over them stalls the event loop for tens of milliseconds, which
    lands on whichever requests are waiting."""
    gc.collect()
    gc.freeze()


def run_worker(settings: LetheSettings) -> None:
    """Run until SIGINT/SIGTERM, then save the state and exit cleanly."""
    lock = StateLock(settings.state_dir, "scorer")  # one process per state folder
    try:
        run_until_signalled(ScorerWorker, settings)
    finally:
        lock.release()
