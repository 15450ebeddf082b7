"""Everything the IMCorrect worker must keep across crashes, and its atomic snapshots.

A snapshot is one folder ``snap-<seq>`` holding plain arrays (npz, no pickle) and JSON: the
IMCorrect model, the id maps, the dedup window, the tombstones of forgotten ids and the input
offsets the state reflects. It is written to ``snap-<seq>.tmp``, fsynced, renamed, and only
then are older snapshots deleted, so a crash leaves either the old or the new one complete.

Privacy: forgotten ids must not survive in any file. Id maps drop them; the dedup window and
tombstones store keyed 64-bit hashes (BLAKE2b with a per-state random key), never raw ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.imcorrect import IMCorrect

SNAPSHOT_FORMAT = 1


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

    def drop(self, external: str) -> int | None:
        idx = self.by_id.pop(external, None)
        if idx is not None:
            self.by_index[idx] = None
        return idx

    def external(self, idx: int) -> str | None:
        return self.by_index[idx] if 0 <= idx < len(self.by_index) else None

    def __len__(self) -> int:
        return len(self.by_id)


class Hasher:
    """Keyed 64-bit hashes of ids (for dedup and tombstones)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __call__(self, *parts: str) -> int:
        digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8, key=self.key)
        return int.from_bytes(digest.digest(), "little", signed=False)

    def many(self, kind: str, values: list[str]) -> list[int]:
        """``[self(kind, v) for v in values]``, continuing one keyed prefix state per value
        (a third cheaper than keying a new hash each time)."""
        prefix = hashlib.blake2b(f"{kind}\x1f".encode(), digest_size=8, key=self.key)
        out = []
        for v in values:
            d = prefix.copy()
            d.update(v.encode())
            out.append(int.from_bytes(d.digest(), "little", signed=False))
        return out


class DedupWindow:
    """The most recent ``capacity`` event-id hashes; older ones fall out first."""

    def __init__(self, capacity: int, hashes: np.ndarray | None = None) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[int, None] = OrderedDict()
        for h in hashes if hashes is not None else []:
            self._seen[int(h)] = None

    def seen(self, h: int) -> bool:
        """True if ``h`` was seen before; otherwise remember it."""
        if h in self._seen:
            return True
        self._seen[h] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False

    def array(self) -> np.ndarray:
        return np.fromiter(self._seen.keys(), dtype=np.uint64, count=len(self._seen))


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
    key: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    seq: int = 0

    @property
    def hasher(self) -> Hasher:
        return Hasher(self.key)

    def bump(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


class SnapshotStore:
    """Atomic snapshots of a :class:`WorkerState` under ``<state_dir>/snapshots``."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "snapshots"
        self.root.mkdir(parents=True, exist_ok=True)

    def _complete(self) -> list[Path]:
        return sorted(p for p in self.root.glob("snap-*") if p.is_dir() and p.suffix != ".tmp")

    def latest(self) -> Path | None:
        done = self._complete()
        return done[-1] if done else None

    def save(self, state: WorkerState, *, with_mapping: bool = True) -> Path:
        """Write ``state`` as the newest snapshot; ``with_mapping=False`` leaves the mapping's
        arrays out (it is refitted from X on load) so the write scales with X, not n²."""
        state.seq += 1
        final = self.root / f"snap-{state.seq:09d}"
        tmp = final.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
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
            "key": state.key.hex(),
        }
        (tmp / "worker.json").write_text(json.dumps(meta))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(self.root)
        self._prune(keep=final)
        return final

    def _prune(self, keep: Path) -> None:
        """Delete every other snapshot (and stray temp folders): old ones may hold data that
        has since been forgotten."""
        for p in self.root.glob("snap-*"):
            if p != keep:
                shutil.rmtree(p, ignore_errors=True)
        _fsync(self.root)

    def load(self, path: Path | None = None) -> WorkerState | None:
        path = path or self.latest()
        if path is None:
            return None
        meta = json.loads((path / "worker.json").read_text())
        if meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format in {path}")
        model = IMCorrect.load(path / "model")
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
            key=bytes.fromhex(meta["key"]),
            seq=meta["seq"],
        )


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder's entry list must reach the disk for a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
