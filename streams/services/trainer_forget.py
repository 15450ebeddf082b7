"""Forgetting in the trainer: drop the data, retrain without it, delete what saw it.

A step's deletions (ordered after earlier interactions by the runtime's barrier) remove the
data from the sequence store and the vocabulary (a forgotten item's text too, with a
tombstone: :mod:`streams.services.trainer_items`). The live models are then restored from the
newest checkpoint that predates the data's first log position (or rebuilt from scratch) and
retrained on what is retained; every checkpoint and ONNX file that saw the data is deleted,
and the retrained SASRec is exported and announced whatever its validation says. The
``neural-retrained`` receipts name that version. The runtime snapshots the state (without the
data) before it publishes the announcement and the receipts, so once a receipt is out no
file of the trainer holds the data.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from streams import metrics as m
from streams.applier import subject_of
from streams.contracts import DeletionReceipt, DeletionRequest
from streams.retention import retained_elsewhere
from streams.sequence_store import predates
from streams.services.base import Effects
from streams.services.trainer_items import forget_item_text
from streams.services.trainer_recovery import is_lost
from streams.services.trainer_state import TrainerState
from streams.tombstones import bury

if TYPE_CHECKING:
    from streams.services.trainer import TrainerService

log = logging.getLogger("lethe.trainer")

_UNTRAINED = "the trainer dropped the data before any model was trained on it"


def drop_from_store(
    state: TrainerState, requests: list[DeletionRequest]
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Remove what the requests name from the sequences and the vocabulary. Returns the
    earliest log position of the removed data ("topic:partition" → offset) and what each
    request removed."""
    earliest: dict[str, int] = {}
    removed: dict[str, dict[str, int]] = {}
    for request in requests:
        bury(state.tombstones, state.hasher, request)  # older events stay out (a late sync)
        held = set(state.store.get(request.user_id)) if request.user_id else set()
        counts, first = state.store.forget(request)
        if request.scope == "item":
            state.items.drop(request.item_id)
            if forget_item_text(state, request.item_id, request.ts):
                counts = {**counts, "item_texts": 1}  # held even without interactions
        for item in held - set(state.store.item_counts):
            # no retained sequence holds it: a model retrained without the data would not
            # know it, so it leaves the vocabulary (and the exported item list)
            state.items.drop(item)
        removed[request.request_id] = counts
        for tp, offset in first.items():
            earliest[tp] = min(offset, earliest.get(tp, offset))
        state.fresh_users.discard(request.user_id or "")
    return earliest, removed


def forget(svc: TrainerService, requests: list[DeletionRequest]) -> Effects:
    start = time.perf_counter()
    st, files = svc.state, svc.files
    earliest, removed = drop_from_store(st, requests)
    # a checkpoint whose folder a crashed step already deleted saw the data too: that step
    # was forgetting it, and this one does again (recovery keeps its record for this)
    stale = [
        c
        for c in st.checkpoints
        if not predates(c.trained_through, earliest) or is_lost(files, c.name)
    ]
    if not earliest or not stale:
        # no checkpoint (and so neither the live models, which are the newest checkpoint)
        # was trained on it: nothing to retrain, but the receipt still says so
        version = str(st.published["version"]) if st.published else None
        receipts = [_receipt(svc, r, removed[r.request_id], version, _UNTRAINED) for r in requests]
        return Effects(receipts=receipts, snapshot=True)
    base = next(
        (
            c
            for c in reversed(st.checkpoints)
            if predates(c.trained_through, earliest) and not is_lost(files, c.name)
        ),
        None,
    )
    if base is None:
        svc.model.reset()
    else:
        svc.model.load(files.checkpoint_dir(base.name))
    sequences = svc.dense_sequences()
    view = svc.prepare_texts(sequences)
    log.info(
        "forget: retraining from %s on %d users",
        "checkpoint " + base.name if base is not None else "scratch",
        len(sequences),
    )
    info = svc.model.retrain(sequences, svc.cfg.retrain_rounds)
    m.TRAINER_ROUND_SECONDS.labels("retrain").observe(info["seconds"])
    # the retrain saw every retained event: nothing is waiting for a round any more
    svc.trained_on_everything()
    record = svc.checkpoint(
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
    metrics, _ = svc.validate(sequences)
    update = svc.export(record, metrics, "forget", view)
    # the gate starts again from the model without the data (the old reference may hold it)
    svc.set_reference(record.name)
    svc.delete_checkpoints(stale, spare=record.onnx_path)  # every file that saw the data
    origin = f"checkpoint {base.name}" if base else "scratch"
    detail = (
        f"SASRec and LLM side retrained from {origin} without the data; "
        "checkpoints and ONNX files that held it deleted"
    )
    version = str(record.version)
    receipts = [_receipt(svc, r, removed[r.request_id], version, detail) for r in requests]
    log.info(
        "forgot %d request(s): retrained from %s in %.1f s, version %d, %d checkpoint(s) deleted",
        len(requests),
        base.name if base else "scratch",
        time.perf_counter() - start,
        record.version,
        len(stale),
    )
    return Effects(receipts=receipts, announcements=[update], snapshot=True)


def _receipt(
    svc: TrainerService,
    request: DeletionRequest,
    removed: dict[str, int],
    version: str | None,
    detail: str,
) -> DeletionReceipt:
    # the subject by keyed hash only: receipts are kept forever (docs/privacy.md); the
    # runtime sets applied_at once the snapshot without the data is on disk
    now = int(time.time() * 1000)
    return DeletionReceipt(
        subject=subject_of(svc.state.hasher, request),
        retained_elsewhere=retained_elsewhere(svc.retention, now, request.scope),
        request_id=request.request_id,
        status="neural-retrained",
        scope=request.scope,
        removed=removed,
        requested_at=request.ts,
        applied_at=now,
        versions={"crm": version} if version else {},
        detail=detail,
    )
