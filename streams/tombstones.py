"""The tombstone rule every service applies to interactions (docs/privacy.md, "Tombstones").

A forgotten user, item or (user, item) pair leaves a tombstone: its keyed hash → the
deletion's ``ts``. An interaction is admitted only while its ``ts`` is newer than every
tombstone of its user, its item and its pair. An event stamped before a deletion (a late
sync, a replay, a retry under a new event id) so cannot bring forgotten data back into any
service's state, whichever service reads it and whenever.

Tombstones are plain ``dict[int, int]`` so each service persists them with its own state.
"""

from __future__ import annotations

from streams.contracts import DeletionRequest
from streams.services.batch import InteractionColumns
from streams.state import Hasher

Tombstones = dict[int, int]

_SEP = "\x1f"


def bury(stones: Tombstones, h: Hasher, request: DeletionRequest) -> None:
    """Record ``request``'s tombstones (never moved back by an older deletion)."""
    if request.scope == "user":
        keys = [h("user", request.user_id)]
    elif request.scope == "item":
        keys = [h("item", request.item_id)]
    else:
        keys = [h("pair", request.user_id, item) for item in dict.fromkeys(request.item_ids or [])]
    for key in keys:
        stones[key] = max(request.ts, stones.get(key, request.ts))


def is_buried(stones: Tombstones, h: Hasher, user: str, item: str, ts: int) -> bool:
    """Is an interaction (user, item, ts) at or before a tombstone of its user, item or
    pair (under the current or a retired hash key)?"""
    if not stones:
        return False
    for parts in (("user", user), ("item", item), ("pair", user, item)):
        for key in h.candidates(*parts):  # a tombstone may predate a key rotation
            stone = stones.get(key)
            if stone is not None and ts <= stone:
                return True
    return False


def admitted(stones: Tombstones, h: Hasher, cols: InteractionColumns, keep: list[int]) -> list[int]:
    """``keep`` (positions into ``cols``) without the events at or before a tombstone.

    Column-wise: each distinct user, item and pair is hashed once per key in one pass.
    """
    if not stones or not keep:
        return keep
    newest: dict[str, int] = {}

    def collect(kind: str, ids: list[str]) -> None:
        for key in h.keys.all:  # a tombstone may predate a key rotation
            for value, hashed in zip(ids, h.many(kind, ids, key), strict=True):
                ts = stones.get(hashed)
                if ts is not None:
                    name = f"{kind}{_SEP}{value}"
                    newest[name] = max(ts, newest.get(name, ts))

    users, items = cols.user_ids, cols.item_ids
    collect("user", sorted({users[k] for k in keep}))
    collect("item", sorted({items[k] for k in keep}))
    collect("pair", sorted({f"{users[k]}{_SEP}{items[k]}" for k in keep}))
    if not newest:
        return keep
    out = []
    for k in keep:
        stone = max(
            newest.get(f"user{_SEP}{users[k]}", -1),
            newest.get(f"item{_SEP}{items[k]}", -1),
            newest.get(f"pair{_SEP}{users[k]}{_SEP}{items[k]}", -1),
        )
        if cols.ts[k] > stone:
            out.append(k)
    return out


def to_json(stones: Tombstones) -> list[list]:
    """``[[hash as str, ts], ...]``, sorted (JSON has no 64-bit integers)."""
    return [[str(key), ts] for key, ts in sorted(stones.items())]


def from_json(rows: list[list]) -> Tombstones:
    return {int(key): int(ts) for key, ts in rows}
