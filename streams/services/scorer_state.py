"""What the scorer keeps across restarts: recent sequences, forgotten ids, the dedup window,
tombstones, input offsets.

Forgotten users and items, event ids and tombstones are kept as keyed hashes only; the key is
never written to the state file (docs/privacy.md).
"""

from __future__ import annotations

from streams.keys import KeyRing, key_fingerprint, require_key
from streams.sequence_store import SequenceStore
from streams.state import DedupWindow, Hasher
from streams.tombstones import Tombstones, from_json, to_json

#: 2: no hash key in the file, forgotten items by keyed hash; 3: the dedup window and the
#: tombstones (a format-2 file loads with both empty)
STATE_FORMAT = 3
#: event ids remembered by default (the scorer keeps recent sequences, not all history)
DEDUP_WINDOW = 200_000


class ScorerState:
    """Sequences, forgotten ids and offsets: what the scorer keeps across restarts.

    Forgotten users and items are kept as keyed hashes only; the key (``keys``) is never
    written to the state file (docs/privacy.md).
    """

    def __init__(
        self,
        keys: KeyRing | None = None,
        dedup_window: int = DEDUP_WINDOW,
        max_history: int | None = None,
    ) -> None:
        #: the newest ``max_history`` items per user (None: all): SASRec's input and the
        #: scorer's own part of ``exclude_seen``
        self.store = SequenceStore(max_history, track_first=False)
        #: keyed hash of a forgotten item → the deletion's log position (never returned
        #: while here)
        self.forbidden_items: dict[str, list] = {}
        #: keyed hash of a forgotten user → deletion position; that user's IMCorrect scores
        #: are unused until a snapshot past it is loaded (hashes: no forgotten id on disk)
        self.suppressed_users: dict[str, list] = {}
        self.offsets: dict[str, int] = {}
        self.keys = keys or KeyRing.generate()
        #: event ids seen (a duplicate is not stored twice)
        self.dedup = DedupWindow(dedup_window)
        #: forgotten users, items and pairs → deletion ts (:mod:`streams.tombstones`)
        self.tombstones: Tombstones = {}
        #: the newest SASRec version ever served: an older announcement (superseded
        #: history, or one re-published so that compaction leaves it alone) is never served
        #: again, also after a restart
        self.served_version = -1

    @property
    def hasher(self) -> Hasher:
        return Hasher(self.keys)

    def user_hash(self, user: str) -> str:
        return str(self.hasher("user", user))

    def item_hash(self, item: str) -> str:
        return str(self.hasher("item", item))

    def is_suppressed(self, user: str) -> bool:
        """Is ``user`` suppressed (under the current or a retired hash key)?"""
        found = self.suppressed_users
        return any(str(h) in found for h in self.hasher.candidates("user", user))

    def is_forbidden(self, item: str) -> bool:
        """Is ``item`` forgotten (under the current or a retired hash key)?"""
        found = self.forbidden_items
        return any(str(h) in found for h in self.hasher.candidates("item", item))

    def unforbid(self, item: str) -> None:
        for h in self.hasher.candidates("item", item):
            self.forbidden_items.pop(str(h), None)

    def to_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "store": self.store.to_dict(),
            "forbidden_items": self.forbidden_items,
            "suppressed_users": self.suppressed_users,
            "offsets": self.offsets,
            "dedup": self.dedup.to_json(),
            "tombstones": to_json(self.tombstones),
            "served_version": self.served_version,
            "key_fingerprint": key_fingerprint(self.keys.current),
        }

    @classmethod
    def from_dict(
        cls,
        data: dict,
        keys: KeyRing | None = None,
        dedup_window: int = DEDUP_WINDOW,
        max_history: int | None = None,
    ) -> ScorerState:
        """The saved state; ``max_history`` is the bound configured now. A file saved
        without a bound is trimmed to it; one whose bound a served model raised keeps it."""
        if data.get("format") not in (2, STATE_FORMAT):
            raise ValueError("unsupported scorer state format (see docs/privacy.md)")
        state = cls(keys, dedup_window, max_history)
        if keys is not None:  # a reader given no keys (an inspection) is not held to it
            require_key(data.get("key_fingerprint"), keys, "the scorer's state file")
        state.store = SequenceStore.from_dict(data["store"], track_first=False)
        saved = state.store.max_per_user
        if max_history is not None:
            state.store.bound(max_history if saved is None else max(saved, max_history))
        state.forbidden_items = data["forbidden_items"]
        state.suppressed_users = data["suppressed_users"]
        state.offsets = data["offsets"]
        state.dedup = DedupWindow.from_json(dedup_window, data.get("dedup", []))
        state.tombstones = from_json(data.get("tombstones", []))
        state.served_version = int(data.get("served_version", -1))
        return state
