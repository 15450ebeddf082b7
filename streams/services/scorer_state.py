"""What the scorer keeps across restarts: recent sequences, forgotten ids, input offsets.

Forgotten users and items are kept as keyed hashes only; the key is never written to the
state file (docs/privacy.md).
"""

from __future__ import annotations

from streams.keys import KeyRing
from streams.sequence_store import SequenceStore
from streams.state import Hasher

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
