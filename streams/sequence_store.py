"""Per-user item sequences kept by the trainer and the scorer, with forgetting.

Besides each user's items in arrival order, the store remembers where in the ``interactions``
log each user's and each item's data first appeared ("topic:partition" → offset). The trainer
uses that to find a checkpoint that predates forgotten data: a checkpoint trained through
offsets ``T`` never saw data first seen at offsets ``F`` when ``T[p] <= F[p]`` for every
partition ``p`` of ``F``. Users are keys of ``interactions``, so a user lives in one partition.

Persisted as JSON written atomically (temp file, fsync, rename); a forgotten user or item is
absent from the next file written.
"""

from __future__ import annotations

from collections import Counter
from itertools import chain

from models.durable import write_json_atomically  # noqa: F401  (its callers import it here)
from streams.contracts import DeletionRequest


class SequenceStore:
    """user id → item ids (oldest first), item counts, first log positions."""

    def __init__(self, max_per_user: int | None = None, track_first: bool = True) -> None:
        self.max_per_user = max_per_user  # keep the newest N per user (None: all)
        #: remember first log positions (the trainer's checkpoint search); the scorer does
        #: not, so an item only a forgotten user touched cannot outlive them in its file
        self.track_first = track_first
        self.sequences: dict[str, list[str]] = {}
        self.user_first: dict[str, tuple[str, int]] = {}
        self.item_first: dict[str, dict[str, int]] = {}
        self.item_counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.sequences)

    def add(self, user: str, item: str, tp: str, offset: int) -> None:
        seq = self.sequences.setdefault(user, [])
        seq.append(item)
        if self.max_per_user is not None and len(seq) > self.max_per_user:
            dropped = seq.pop(0)
            self._count(dropped, -1)
        self._count(item, +1)
        if self.track_first:
            self.user_first.setdefault(user, (tp, offset))
            firsts = self.item_first.setdefault(item, {})
            firsts.setdefault(tp, offset)

    def _count(self, item: str, delta: int) -> None:
        n = self.item_counts.get(item, 0) + delta
        if n > 0:
            self.item_counts[item] = n
        else:
            self.item_counts.pop(item, None)

    def bound(self, max_per_user: int | None) -> None:
        """Keep at most the newest ``max_per_user`` items of every user from now on, and
        drop older ones held now (a store saved under a larger bound, or none)."""
        self.max_per_user = max_per_user
        if max_per_user is None:
            return
        for user, seq in self.sequences.items():
            if len(seq) > max_per_user:
                cut = len(seq) - max_per_user
                for item in seq[:cut]:
                    self._count(item, -1)
                self.sequences[user] = seq[cut:]

    def get(self, user: str) -> list[str]:
        return self.sequences.get(user, [])

    def forget(self, request: DeletionRequest) -> tuple[dict[str, int], dict[str, int]]:
        """Remove what ``request`` names. Returns (removed counts, earliest log positions of
        the removed data: "topic:partition" → offset)."""
        earliest: dict[str, int] = {}

        def note(tp: str, offset: int) -> None:
            earliest[tp] = min(offset, earliest.get(tp, offset))

        if request.scope == "user":
            seq = self.sequences.pop(request.user_id, [])
            for item in seq:
                self._count(item, -1)
            self._drop_unheld(seq)
            first = self.user_first.pop(request.user_id, None)
            if first is not None:
                note(*first)
            return {
                "users": int(bool(seq) or first is not None),
                "interactions": len(seq),
            }, earliest
        if request.scope == "item":
            removed = 0
            for user, seq in list(self.sequences.items()):
                kept = [i for i in seq if i != request.item_id]
                if len(kept) != len(seq):
                    removed += len(seq) - len(kept)
                    self._set(user, kept)
            self.item_counts.pop(request.item_id, None)
            for tp, offset in self.item_first.pop(request.item_id, {}).items():
                note(tp, offset)
            return {"items": int(removed > 0), "interactions": removed}, earliest
        # scope == "interactions": (user, item) pairs; the user's first position bounds them
        names = set(request.item_ids or [])
        first = self.user_first.get(request.user_id)
        seq = self.sequences.get(request.user_id, [])
        kept = [i for i in seq if i not in names]
        removed = len(seq) - len(kept)
        if removed:
            for item in seq:
                if item in names:
                    self._count(item, -1)
            self._set(request.user_id, kept)
            self._drop_unheld(names)
        # even when nothing is held any more (older items roll out of a bounded store),
        # models may have been trained on the pairs since the user's first event
        if first is not None:
            note(*first)
        return {"interactions": removed}, earliest

    def _drop_unheld(self, items) -> None:  # noqa: ANN001 - any iterable of item ids
        """Forget the first positions of items no held sequence keeps after a deletion: they
        would otherwise leave a raw id only the forgotten user touched in the file.

        Limit (docs/privacy.md): in a bounded store an item that rolled out of another
        user's sequence is forgotten here too, though a checkpoint may have seen it."""
        for item in set(items):
            if item not in self.item_counts:
                self.item_first.pop(item, None)

    def _set(self, user: str, kept: list[str]) -> None:
        """The user's sequence after an item or pair deletion. Their first log position
        stays even when nothing is left: models may have seen older events of theirs, and a
        later deletion of the user must still find a checkpoint that predates them."""
        if kept:
            self.sequences[user] = kept
        else:
            self.sequences.pop(user, None)

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "max_per_user": self.max_per_user,
            "sequences": self.sequences,
            "user_first": {u: list(v) for u, v in self.user_first.items()},
            "item_first": self.item_first,
        }

    @classmethod
    def from_dict(cls, data: dict, track_first: bool = True) -> SequenceStore:
        store = cls(data.get("max_per_user"), track_first)
        store.sequences = {u: list(s) for u, s in data["sequences"].items()}
        if track_first:
            store.user_first = {u: (v[0], int(v[1])) for u, v in data["user_first"].items()}
            store.item_first = {i: dict(v) for i, v in data["item_first"].items()}
        # counted in C (one Python call per held item was 1.6x slower on a large store)
        store.item_counts = dict(Counter(chain.from_iterable(store.sequences.values())))
        return store


def predates(trained_through: dict[str, int], earliest: dict[str, int]) -> bool:
    """True when a model trained through ``trained_through`` cannot have seen data first
    logged at ``earliest`` (both "topic:partition" → offset)."""
    return all(trained_through.get(tp, 0) <= offset for tp, offset in earliest.items())
