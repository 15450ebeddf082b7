"""What the trainer consumer keeps across restarts, and where it keeps it.

``<state_dir>/trainer/state.json`` (written atomically) holds the sequence store, the item
vocabulary, the dedup window (keyed hashes), the input offsets, the checkpoint list and the
published model. Checkpoints live in ``<state_dir>/trainer/checkpoints/ckpt-<version>`` and
record the offsets they were trained through, their parent and the deletion requests whose
data they exclude (the lineage a privacy audit reads).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streams.keys import KeyRing
from streams.sequence_store import SequenceStore, write_json_atomically
from streams.state import DedupWindow, Hasher, IdMap

#: 2: the hash key is no longer in state.json (docs/privacy.md)
STATE_FORMAT = 2


@dataclass
class CheckpointRecord:
    name: str
    version: int
    trained_through: dict[str, int]
    onnx_path: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "trained_through": self.trained_through,
            "onnx_path": self.onnx_path,
        }


@dataclass
class TrainerState:
    store: SequenceStore
    items: IdMap = field(default_factory=IdMap)
    offsets: dict[str, int] = field(default_factory=dict)
    dedup: DedupWindow = field(default_factory=lambda: DedupWindow(200_000))
    #: never written to state.json; TrainerFiles is given them
    keys: KeyRing = field(default_factory=KeyRing.generate)
    version: int = 0
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    #: the checkpoint the live models continue from (None: fresh models)
    current: str | None = None
    #: the announced model: version, path, sha256, checkpoint, metrics
    published: dict | None = None
    pending_receipts: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def hasher(self) -> Hasher:
        return Hasher(self.keys)

    def bump(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def checkpoint(self, name: str | None) -> CheckpointRecord | None:
        return next((c for c in self.checkpoints if c.name == name), None)


class TrainerFiles:
    """Paths of the trainer's state, checkpoints and the JSON round trip of the state
    (``keys``: the hash keys the loaded state uses; kept out of the file)."""

    def __init__(self, state_dir: Path, keys: KeyRing | None = None) -> None:
        self.keys = keys or KeyRing.generate()
        self.root = Path(state_dir) / "trainer"
        self.checkpoints = self.root / "checkpoints"
        self.state_file = self.root / "state.json"
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def checkpoint_dir(self, name: str) -> Path:
        return self.checkpoints / name

    def checkpoint_meta(self, name: str) -> dict:
        return json.loads((self.checkpoint_dir(name) / "meta.json").read_text())

    def delete_checkpoint(self, name: str) -> None:
        shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)

    def save(self, state: TrainerState) -> None:
        write_json_atomically(
            self.state_file,
            {
                "format": STATE_FORMAT,
                "store": state.store.to_dict(),
                "items": state.items.by_index,
                "offsets": state.offsets,
                "dedup": [str(h) for h in state.dedup.array().tolist()],
                "dedup_capacity": state.dedup.capacity,
                "version": state.version,
                "checkpoints": [c.to_dict() for c in state.checkpoints],
                "current": state.current,
                "published": state.published,
                "pending_receipts": state.pending_receipts,
                "counters": state.counters,
            },
        )

    def load(self) -> TrainerState | None:
        if not self.state_file.exists():
            return None
        data = json.loads(self.state_file.read_text())
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported trainer state format in {self.state_file}")
        hashes = np.array([int(h) for h in data["dedup"]], dtype=np.uint64)
        return TrainerState(
            store=SequenceStore.from_dict(data["store"]),
            items=IdMap(data["items"]),
            offsets=data["offsets"],
            dedup=DedupWindow(data["dedup_capacity"], hashes),
            keys=self.keys,
            version=data["version"],
            checkpoints=[CheckpointRecord(**c) for c in data["checkpoints"]],
            current=data["current"],
            published=data["published"],
            pending_receipts=data["pending_receipts"],
            counters=data["counters"],
        )
