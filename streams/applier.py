"""Turn one micro-batch of validated events into IMCorrect corrections (no Kafka here).

Ordering rule (documented in the README):

* Events are taken in the order they were read. A deletion applies after every interaction
  of its subject read before it: interactions of a user still waiting in the batch when the
  user's deletion arrives are dropped with the user (as if learned, then forgotten).
* A forgotten user, item or (user, item) pair leaves a tombstone with the deletion's ``ts``.
  A later interaction is learned only if its ``ts`` is newer than the tombstone; a user or
  item that comes back gets a fresh index, so nothing of its past is revived.
* All interactions of a batch become one ``IMCorrect.learn`` call (one low-rank correction),
  followed by one ``IMCorrect.forget`` call for all deletions of the batch.
* Interactions are implicit feedback: a seen pair has weight 1 whatever its kind or value.
* After a batch's deletions, a user or item touched by them that has no retained interaction
  left is dropped from its id map (and an item from the model's catalogue), as it would be
  absent from a model fitted on the retained data (docs/privacy.md, "Id maps").

Receipts never carry raw ids (they are kept forever): the subject is named by its keyed hash,
the model state by its sha256, and ``retained_elsewhere`` lists the logs that still hold data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from streams import metrics as m
from streams.config import LetheSettings
from streams.contracts import DeletionReceipt, DeletionRequest, InteractionEvent
from streams.retention import TopicRetention, retained_elsewhere, retention_from_settings
from streams.services.batch import InteractionColumns
from streams.state import WorkerState, model_digest, new_event_positions
from streams.tombstones import admitted, bury, is_buried

log = logging.getLogger("lethe.imcorrect")


@dataclass
class _Pending:
    user: int
    item: int


@dataclass
class BatchOutcome:
    learned: int = 0
    receipts: list[DeletionReceipt] = field(default_factory=list)
    forget_requested_ts: list[int] = field(default_factory=list)
    apply_seconds: float = 0.0


class Applier:
    """Applies batches of events to a :class:`WorkerState`.

    Parameters
    ----------
    state:
        The worker state to change.
    retention:
        Logical topic → retention of the user-data topics, for the receipts'
        ``retained_elsewhere`` (read from the broker at start; default: the settings' plan).
    """

    def __init__(
        self, state: WorkerState, retention: dict[str, TopicRetention] | None = None
    ) -> None:
        self.state = state
        self.retention = (
            retention if retention is not None else retention_from_settings(LetheSettings())
        )

    def apply(self, events: list[InteractionEvent | DeletionRequest]) -> BatchOutcome:
        start = time.perf_counter()
        st = self.state
        h = st.hasher
        pending: list[_Pending | None] = []
        forget_users: list[int] = []
        forget_items: list[int] = []
        forget_pairs: set[tuple[int, int]] = set()
        #: users and items a deletion touched: dropped below if nothing of theirs is retained
        touched_users: set[int] = set()
        touched_items: set[int] = set()
        receipts: list[tuple[DeletionRequest, dict[str, int], str | None]] = []
        x = st.model.interactions if any(isinstance(e, DeletionRequest) for e in events) else None

        for event in events:
            if isinstance(event, InteractionEvent):
                if st.dedup.seen_any(h.candidates("event", event.event_id)):
                    st.bump("duplicates")
                    continue
                st.bump("events_accepted")
                if is_buried(st.tombstones, h, event.user_id, event.item_id, event.ts):
                    st.bump("dropped_forgotten")
                    continue
                if not self._within_catalogue([event.item_id], [0]):
                    continue
                u, i = st.users.index(event.user_id), st.items.index(event.item_id)
                forget_pairs.discard((u, i))  # re-learned after its deletion in this batch
                pending.append(_Pending(u, i))
                continue
            if st.dedup.seen_any(h.candidates("request", event.request_id)):
                st.bump("duplicate_deletions")
                continue
            removed, reason = self._plan_deletion(
                event,
                pending,
                forget_users,
                forget_items,
                forget_pairs,
                x,
                touched_users,
                touched_items,
            )
            receipts.append((event, removed, reason))

        learn = [p for p in pending if p is not None]
        outcome = BatchOutcome(learned=len(learn))
        if learn:
            users = np.fromiter((p.user for p in learn), dtype=np.int64, count=len(learn))
            items = np.fromiter((p.item for p in learn), dtype=np.int64, count=len(learn))
            st.model.learn(users, items)
            st.bump("learned", len(learn))
        if forget_users or forget_items or forget_pairs:
            st.model.forget(users=forget_users, items=forget_items, interactions=forget_pairs)
        if touched_users or touched_items:
            self._drop_orphans(touched_users, touched_items)
        now = int(time.time() * 1000)
        digest = model_digest(st.model) if receipts else None
        for request, removed, reason in receipts:
            status = "rejected" if reason else "applied"
            st.bump(f"deletions_{status}")
            outcome.receipts.append(
                DeletionReceipt(
                    request_id=request.request_id,
                    status=status,
                    scope=request.scope,
                    removed=removed,
                    requested_at=request.ts,
                    applied_at=now,
                    versions={"imcorrect": str(st.model.version)},
                    detail=reason
                    or "removed from interaction matrix, mapping, id maps and snapshots",
                    subject=subject_of(h, request),
                    state_digest=digest,
                    retained_elsewhere=retained_elsewhere(self.retention, now, request.scope),
                )
            )
            outcome.forget_requested_ts.append(request.ts)
        outcome.apply_seconds = time.perf_counter() - start
        return outcome

    def learn_columns(self, cols: InteractionColumns) -> int:
        """Learn a batch of decoded interactions in one correction; returns how many.

        The same rules as :meth:`apply` (dedup, tombstones, implicit weight 1), worked on
        columns: hashing and id mapping are single passes, the model sees one ``learn``.
        """
        st = self.state
        keep = new_event_positions(st.dedup, st.hasher, cols.event_ids)
        n_dup = len(cols) - len(keep)
        if n_dup:
            st.bump("duplicates", n_dup)
        st.bump("events_accepted", len(keep))
        kept = admitted(st.tombstones, st.hasher, cols, keep)
        if len(kept) < len(keep):
            st.bump("dropped_forgotten", len(keep) - len(kept))
        keep = self._within_catalogue(cols.item_ids, kept)
        if not keep:
            return 0
        if len(keep) == len(cols):
            user_ids, item_ids = cols.user_ids, cols.item_ids
        else:
            user_ids = [cols.user_ids[k] for k in keep]
            item_ids = [cols.item_ids[k] for k in keep]
        users = np.array(st.users.indices(user_ids), dtype=np.int64)
        items = np.array(st.items.indices(item_ids), dtype=np.int64)
        st.model.learn(users, items)
        st.bump("learned", len(keep))
        return len(keep)

    # -- helpers ----------------------------------------------------------------------------
    def _within_catalogue(self, item_ids: list[str], keep: list[int]) -> list[int]:
        """``keep`` without events whose new item would grow a dense mapping past its memory
        budget: new items take the free room in order of first appearance, events of the
        rest are refused (counted and logged), and the worker keeps going."""
        st = self.state
        cap = st.model.max_items
        if cap is None:
            return keep
        room = cap - len(st.items.by_index)  # freed indices are never reused
        known, admitted_new = st.items.by_id, set()
        out = []
        for k in keep:
            item = item_ids[k]
            if item in known or item in admitted_new:
                out.append(k)
            elif room > 0:
                admitted_new.add(item)
                room -= 1
                out.append(k)
        self._refuse_for_catalogue(len(keep) - len(out), cap)
        return out

    def _refuse_for_catalogue(self, n: int, cap: int) -> None:
        if not n:
            return
        self.state.bump("refused_catalogue_full", n)
        m.EVENTS.labels("interactions", "catalogue_full").inc(n)
        log.warning(
            "%d interaction(s) refused: their new items would take the %s mapping past the "
            "%d items its memory budget allows (use mapping itemknn-topk or raise "
            "memory_budget_gb)",
            n,
            self.state.model.mapping_name,
            cap,
        )

    def _drop_orphans(self, users: set[int], items: set[int]) -> None:
        """Forget id-map entries left without any retained interaction by this batch's
        deletions; orphaned items also leave the model's catalogue (masked, never reused)."""
        st = self.state
        x = st.model.interactions
        nnz_rows = np.diff(x.indptr)
        nnz_cols = np.bincount(x.indices, minlength=x.shape[1])
        for u in users:
            external = st.users.external(u)
            if external is not None and (u >= x.shape[0] or nnz_rows[u] == 0):
                st.users.drop(external)
        orphans = []
        for i in items:
            external = st.items.external(i)
            if external is not None and (i >= x.shape[1] or nnz_cols[i] == 0):
                st.items.drop(external)
                orphans.append(i)
        if orphans:
            st.model.forget(items=orphans)
            st.bump("orphans_dropped", len(orphans))

    def _plan_deletion(
        self, req, pending, forget_users, forget_items, forget_pairs, x, touched_u, touched_i
    ):
        st, h = self.state, self.state.hasher
        removed = {"interactions": 0}
        bury(st.tombstones, h, req)

        def drop_pending(match) -> int:
            dropped = set()
            for k, p in enumerate(pending):
                if p is not None and match(p):
                    dropped.add((p.user, p.item))
                    touched_u.add(p.user)
                    touched_i.add(p.item)
                    pending[k] = None
            return len(dropped)

        def stored_items(u: int) -> None:
            if x is not None and u < x.shape[0]:
                touched_i.update(x.indices[x.indptr[u] : x.indptr[u + 1]].tolist())

        if req.scope == "user":
            u = st.users.get(req.user_id)
            if u is None:
                return removed, "unknown user: nothing stored for this user"
            in_batch = drop_pending(lambda p: p.user == u)
            stored_items(u)
            stored = int(x[u].nnz) if x is not None and u < x.shape[0] else 0
            forget_users.append(u)
            st.users.drop(req.user_id)
            removed.update(interactions=stored + in_batch, users=1)
            return removed, None
        if req.scope == "item":
            i = st.items.get(req.item_id)
            if i is None:
                return removed, "unknown item: nothing stored for this item"
            in_batch = drop_pending(lambda p: p.item == i)
            if x is not None and i < x.shape[1]:
                touched_u.update(x[:, i].nonzero()[0].tolist())
            stored = int(x[:, i].nnz) if x is not None and i < x.shape[1] else 0
            forget_items.append(i)
            st.items.drop(req.item_id)
            removed.update(interactions=stored + in_batch, items=1)
            return removed, None
        # scope == "interactions"
        u = st.users.get(req.user_id)
        if u is None:
            return removed, "unknown user: nothing stored for this user"
        count = 0
        for item_id in dict.fromkeys(req.item_ids or []):  # a repeated item counts once
            i = st.items.get(item_id)
            if i is None:
                continue
            count += drop_pending(lambda p, i=i: p.user == u and p.item == i)
            if x is not None and u < x.shape[0] and i < x.shape[1] and x[u, i] != 0:
                count += 1
                forget_pairs.add((u, i))
                touched_u.add(u)
                touched_i.add(i)
        if count == 0:
            return removed, "unknown interactions: none of item_ids is stored for this user"
        removed["interactions"] = count
        return removed, None


def subject_of(h, request: DeletionRequest) -> str:  # noqa: ANN001 - streams.state.Hasher
    """The receipt's ``subject``: the keyed hash of the user (scopes user and interactions)
    or of the item, never the raw id."""
    if request.scope == "item":
        return f"item:{h.subject('item', request.item_id)}"
    return f"user:{h.subject('user', request.user_id)}"
