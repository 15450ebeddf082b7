"""Everything the IMCorrect worker must keep across crashes, and its atomic snapshots.

A snapshot is one folder ``snap-<seq>`` holding plain arrays (npz, no pickle) and JSON: the
IMCorrect model, the id maps, the dedup window, the tombstones of forgotten ids and the input
offsets the state reflects. It is written to ``snap-<seq>.tmp``, fsynced, renamed, and only
then are older snapshots deleted, so a crash leaves either the old or the new one complete.

Privacy: forgotten ids must not survive in any file. Id maps drop them (and items no retained
user touched); the dedup window and tombstones store keyed 64-bit hashes (BLAKE2b), never raw
ids, and the key is never written into a snapshot: it comes from :mod:`streams.keys` (a secret
setting or a 0600 key file kept apart), see docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.durable import fsync_path
from models.imcorrect import IMCorrect
from streams.keys import KeyRing, key_fingerprint
from streams.keys import require_key as check_key

#: 2: the hash key is no longer in worker.json
SNAPSHOT_FORMAT = 2


class IdMap:
    """External id ↔ dense index. Freed indices are never reused (their rows stay empty)."""

    def __init__(self, ids: list[str | None] | None = None) -> None:
        self.by_index: list[str | None] = list(ids or [])
        self.by_id: dict[str, int] = {i: k for k, i in enumerate(self.by_index) if i is not None}

    def get(self, external: str) -> int | None:
        return self.by_id.get(external)

    def index(self, external: str) -> int:
        """Index of ``external``, assigning the next free one if new."""
        idx = self.by_id.get(external)
        if idx is None:
            idx = len(self.by_index)
            self.by_index.append(external)
            self.by_id[external] = idx
        return idx

    def indices(self, externals: list[str]) -> list[int]:
        """``[self.index(e) for e in externals]``: new ids get indices in order of first
        appearance, then one dict lookup per element (no method call per element)."""
        by_id = self.by_id
        for external in dict.fromkeys(externals):
            if external not in by_id:
                by_id[external] = len(self.by_index)
                self.by_index.append(external)
        return [by_id[e] for e in externals]

    def drop(self, external: str) -> int | None:
        idx = self.by_id.pop(external, None)
        if idx is not None:
            self.by_index[idx] = None
        return idx

    def external(self, idx: int) -> str | None:
        return self.by_index[idx] if 0 <= idx < len(self.by_index) else None

    def __len__(self) -> int:
        return len(self.by_id)


def _keyed(key: bytes, parts: tuple[str, ...]) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8, key=key)
    return int.from_bytes(digest.digest(), "little", signed=False)


class Hasher:
    """Keyed 64-bit hashes of ids (for dedup, tombstones and receipts).

    New hashes use the ring's current key; :meth:`candidates` gives the hash under every key
    so that entries written before a key rotation are still found.
    """

    def __init__(self, keys: KeyRing | bytes) -> None:
        self.keys = keys if isinstance(keys, KeyRing) else KeyRing(keys)

    def __call__(self, *parts: str) -> int:
        return _keyed(self.keys.current, parts)

    def candidates(self, *parts: str) -> list[int]:
        """The hash of ``parts`` under the current key, then under each retired key."""
        return [_keyed(k, parts) for k in self.keys.all]

    def subject(self, *parts: str) -> str:
        """A receipt's stand-in for a raw id: hex of the keyed hash (see docs/privacy.md)."""
        return f"{self(*parts):016x}"

    def many(self, kind: str, values: list[str], key: bytes | None = None) -> list[int]:
        """``[self(kind, v) for v in values]``, continuing one keyed prefix state per value
        (a third cheaper than keying a new hash each time); ``key`` defaults to the current."""
        key = self.keys.current if key is None else key
        prefix = hashlib.blake2b(f"{kind}\x1f".encode(), digest_size=8, key=key)
        copy = prefix.copy
        digests = []
        for v in values:
            d = copy()
            d.update(v.encode())
            digests.append(d.digest())
        # the 8-byte digests read as little-endian unsigned ints, all at once
        return np.frombuffer(b"".join(digests), dtype="<u8").tolist()


class DedupWindow:
    """The most recent ``capacity`` event-id hashes; older ones fall out first.

    Each hash maps to its arrival number, and a hash counts as seen while that number is
    within the last ``capacity`` arrivals; a ring (a list) keeps the order for snapshots.
    Entries that fell out are dropped from the map lazily, so a batch is checked with one
    dict lookup per event (the same answers as evicting one by one).
    """

    def __init__(self, capacity: int, hashes: np.ndarray | None = None) -> None:
        self.capacity = capacity
        self._ring: list[int] = []
        self._arrival: dict[int, int] = {}
        self._count = 0  # arrivals so far
        if hashes is not None:
            self.filter_new(np.asarray(hashes, dtype=np.uint64)[-capacity:].tolist())

    def seen(self, h: int) -> bool:
        """True if ``h`` was seen before; otherwise remember it."""
        return not self.filter_new([h])

    def filter_new(self, hashes: list[int]) -> list[int]:
        """Positions of the hashes not seen before (each then remembered), in order."""
        arrival, ring, cap = self._arrival, self._ring, self.capacity
        count = self._count
        new = []
        get = arrival.get
        for k, h in enumerate(hashes):
            at = get(h)
            if at is not None and at > count - cap:
                continue
            count += 1
            arrival[h] = count
            new.append(k)
            if len(ring) < cap:
                ring.append(h)
            else:
                ring[(count - 1) % cap] = h  # arrival a lives in slot (a - 1) % capacity
        self._count = count
        if len(arrival) > 2 * cap:  # drop what fell out of the window
            self._arrival = {h: at for h, at in arrival.items() if at > count - cap}
        return new

    def __contains__(self, h: int) -> bool:
        at = self._arrival.get(h)
        return at is not None and at > self._count - self.capacity

    def __len__(self) -> int:
        return len(self._ring)

    def seen_any(self, hashes: list[int]) -> bool:
        """:meth:`seen` for the first (current-key) hash, also True if any other is known:
        an event id remembered under a retired key is still a duplicate."""
        if any(h in self for h in hashes[1:]):
            return True
        return self.seen(hashes[0])

    def array(self) -> np.ndarray:
        """The remembered hashes, oldest first."""
        ring = self._ring
        if len(ring) < self.capacity:
            ordered = ring
        else:
            start = self._count % self.capacity  # the slot of the oldest arrival kept
            ordered = ring[start:] + ring[:start]
        return np.fromiter(ordered, dtype=np.uint64, count=len(ordered))

    def to_json(self) -> list[str]:
        """The remembered hashes, oldest first, as strings (JSON has no 64-bit integers)."""
        return [str(h) for h in self.array().tolist()]

    @classmethod
    def from_json(cls, capacity: int, hashes: list[str]) -> DedupWindow:
        return cls(capacity, np.array([int(h) for h in hashes], dtype=np.uint64))


def new_event_positions(dedup: DedupWindow, hasher: Hasher, event_ids: list[str]) -> list[int]:
    """Positions of the event ids ``dedup`` has not seen (each then remembered), in order.
    An id remembered under a retired key (before a rotation) is a duplicate too."""
    current = hasher.many("event", event_ids)
    old = [hasher.many("event", event_ids, key) for key in hasher.keys.retired]
    if not old:
        return dedup.filter_new(current)
    fresh = [k for k in range(len(event_ids)) if not any(h[k] in dedup for h in old)]
    return [fresh[j] for j in dedup.filter_new([current[k] for k in fresh])]


@dataclass
class WorkerState:
    """The IMCorrect worker's whole state."""

    model: IMCorrect
    users: IdMap = field(default_factory=IdMap)
    items: IdMap = field(default_factory=IdMap)
    dedup: DedupWindow = field(default_factory=lambda: DedupWindow(1_000_000))
    #: hash → deletion ts (ms) for forgotten users, items and (user, item) pairs
    tombstones: dict[int, int] = field(default_factory=dict)
    #: "topic:partition" → next offset to read
    offsets: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    #: receipts decided but maybe not yet published (JSON values), and where the receipts
    #: topic ended when they were decided, to check on restart what did get out
    pending_receipts: list[str] = field(default_factory=list)
    receipts_end_offsets: dict[str, int] = field(default_factory=dict)
    #: hash keys; never saved with the state (the store is given them, see SnapshotStore)
    keys: KeyRing | None = field(default_factory=KeyRing.generate)
    seq: int = 0

    @property
    def hasher(self) -> Hasher:
        if self.keys is None:
            # loaded by a reader that was not given the keys: hashing with a made-up key
            # would silently miss every tombstone, so refuse instead
            raise RuntimeError("this state was loaded without its hash keys")
        return Hasher(self.keys)

    def bump(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def _fingerprint(keys: KeyRing | None) -> str | None:
    return key_fingerprint(keys.current) if keys is not None else None


class SnapshotStore:
    """Atomic snapshots of a :class:`WorkerState` under ``<state_dir>/snapshots``.

    ``keys`` is the hash key ring the loaded state hashes with; it is kept out of every
    snapshot file. A reader that does not hash (the scorer) may leave it out and gets
    no keys (hashing with such a state raises).
    """

    def __init__(
        self, state_dir: Path, keys: KeyRing | None = None, memory_budget_gb: float | None = None
    ) -> None:
        self.root = Path(state_dir) / "snapshots"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        #: the dense mappings' budget of the process loading (IMCorrect.load)
        self.memory_budget_gb = memory_budget_gb

    def adopt(self, state: WorkerState) -> WorkerState:
        """Give a new state this store's keys (so its hashes survive a restart)."""
        if self.keys is not None:
            state.keys = self.keys
        return state

    def _complete(self) -> list[Path]:
        return sorted(p for p in self.root.glob("snap-*") if p.is_dir() and p.suffix != ".tmp")

    def latest(self) -> Path | None:
        done = self._complete()
        return done[-1] if done else None

    def saved_fingerprint(self) -> str | None:
        """The key fingerprint of the newest snapshot (None: none, or one without hashes
        a key made)."""
        latest = self.latest()
        if latest is None:
            return None
        return json.loads((latest / "worker.json").read_bytes()).get("key_fingerprint")

    def save(self, state: WorkerState, *, with_mapping: bool = True) -> Path:
        """Write ``state`` as the newest snapshot; ``with_mapping=False`` leaves the mapping's
        arrays out (it is refitted from X on load) so the write scales with X, not n²."""
        state.seq += 1
        final = self.root / f"snap-{state.seq:09d}"
        tmp = final.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)  # raw ids inside: the owner's alone, whatever the umask
        state.model.save(tmp / "model", with_mapping=with_mapping)
        np.savez(
            tmp / "worker.npz",
            dedup=state.dedup.array(),
            tomb_keys=np.fromiter(
                state.tombstones.keys(), dtype=np.uint64, count=len(state.tombstones)
            ),
            tomb_ts=np.fromiter(
                state.tombstones.values(), dtype=np.int64, count=len(state.tombstones)
            ),
        )
        meta = {
            "format": SNAPSHOT_FORMAT,
            "seq": state.seq,
            "users": state.users.by_index,
            "items": state.items.by_index,
            "offsets": state.offsets,
            "counters": state.counters,
            "pending_receipts": state.pending_receipts,
            "receipts_end_offsets": state.receipts_end_offsets,
            "dedup_capacity": state.dedup.capacity,
            # which key made the hashes above (the verifier checks it holds that key)
            "key_fingerprint": _fingerprint(state.keys),
        }
        (tmp / "worker.json").write_text(json.dumps(meta))
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(self.root)
        self._prune(keep=final)
        return final

    def prune_stale(self) -> None:
        """Delete every snapshot folder but the newest complete one: a crash between
        publishing a snapshot and pruning may have left an older one holding data a
        receipt (published at restart, before the next snapshot) says is gone."""
        latest = self.latest()
        if latest is not None:
            self._prune(keep=latest)

    def _prune(self, keep: Path) -> None:
        """Delete every other snapshot (and stray temp folders): old ones may hold data that
        has since been forgotten."""
        for p in self.root.glob("snap-*"):
            if p != keep:
                shutil.rmtree(p, ignore_errors=True)
        fsync_path(self.root)

    def load(self, path: Path | None = None, *, require_key: bool = False) -> WorkerState | None:
        """The newest snapshot (or ``path``); with ``require_key``, one whose hashes another
        key made is refused (:class:`streams.keys.UnknownKeyError`)."""
        path = path or self.latest()
        if path is None:
            return None
        meta = json.loads((path / "worker.json").read_text())
        if meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(
                f"unsupported snapshot format {meta.get('format')} in {path} (format 1 kept "
                "the hash key inside the snapshot; see docs/privacy.md for starting afresh)"
            )
        if require_key and self.keys is not None:
            check_key(meta.get("key_fingerprint"), self.keys, f"snapshot {path}")
        model = IMCorrect.load(path / "model", memory_budget_gb=self.memory_budget_gb)
        with np.load(path / "worker.npz", allow_pickle=False) as arrays:
            dedup = DedupWindow(meta["dedup_capacity"], arrays["dedup"])
            tombstones = dict(
                zip(arrays["tomb_keys"].tolist(), arrays["tomb_ts"].tolist(), strict=True)
            )
        return WorkerState(
            model=model,
            users=IdMap(meta["users"]),
            items=IdMap(meta["items"]),
            dedup=dedup,
            tombstones=tombstones,
            offsets=meta["offsets"],
            counters=meta["counters"],
            pending_receipts=meta["pending_receipts"],
            receipts_end_offsets=meta["receipts_end_offsets"],
            keys=self.keys,
            seq=meta["seq"],
        )


def model_digest(model: IMCorrect) -> str:
    """sha256 (hex) over the model's data arrays (X and the forgotten-item mask: name, dtype,
    shape, bytes, by name): what a receipt's ``state_digest`` names and ``lethe
    verify-erasure`` recomputes from disk. The mapping is left out: it is a function of X,
    and a snapshot taken for a receipt does not store it (it is refitted on load)."""
    h = hashlib.sha256()
    for name, arr in sorted(model.state_arrays(with_mapping=False).items()):
        a = np.ascontiguousarray(arr)
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()
