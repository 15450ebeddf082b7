"""What the trainer service keeps across restarts, and where it keeps it.

``<state_dir>/trainer/state.json`` (written atomically) holds the sequence store, the item
vocabulary, the dedup window (keyed hashes), the input offsets, the events not yet trained on,
the checkpoint list, the published model and the outbox (receipts and announcements decided
but perhaps not yet published). Checkpoints live in
``<state_dir>/trainer/checkpoints/ckpt-<version>`` and record the offsets they were trained
through, their parent and the deletion requests whose data they exclude (the lineage a
privacy audit reads).

A checkpoint folder is complete or absent: it is written under a temporary name and renamed,
and deleted by renaming it away first (:meth:`TrainerFiles.delete_checkpoint`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from models.durable import write_json_atomically
from streams.contracts import DeletionReceipt, ModelUpdate
from streams.keys import KeyRing, key_fingerprint, require_key
from streams.sequence_store import SequenceStore
from streams.services.base import Outbox
from streams.state import DedupWindow, Hasher, IdMap
from streams.tombstones import Tombstones, from_json, to_json

#: 2: the hash key is no longer in state.json (docs/privacy.md); 3: the outbox (receipts,
#: announcements, receipts_end_offsets) and the events not yet trained on; 4: item texts
#: read from ``items`` and the tombstones of forgotten items (keyed hashes); 5: the
#: tombstones of forgotten users, items and pairs that interactions are checked against;
#: 6: the validation gate's reference checkpoint
STATE_FORMAT = 6
_CHECKPOINT = re.compile(r"^ckpt-(\d+)$")


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
    #: the newest version number given out (a checkpoint's, and its model's)
    version: int = 0
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    #: the checkpoint the live models continue from (None: fresh models)
    current: str | None = None
    #: the announced model: version, path, sha256, checkpoint, metrics
    published: dict | None = None
    #: the checkpoint of the best model published since the last forget: the validation
    #: gate compares every round with it as well, so exports within the tolerance cannot
    #: step down one tolerance at a time
    reference: str | None = None
    #: interactions in the store that no round has trained on yet, and their users (a
    #: restart must close the same micro-batch as a run that never stopped)
    new_events: int = 0
    fresh_users: set[str] = field(default_factory=set)
    outbox: Outbox = field(default_factory=Outbox)
    counters: dict[str, int] = field(default_factory=dict)
    #: item id → (text, ts) of the newest metadata read from ``items``
    item_texts: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: keyed hash of a forgotten item → the deletion's ts (older metadata is ignored)
    item_tombstones: dict[int, int] = field(default_factory=dict)
    #: forgotten users, items and pairs → deletion ts: older interactions are not learned
    tombstones: Tombstones = field(default_factory=dict)

    @property
    def hasher(self) -> Hasher:
        return Hasher(self.keys)

    def bump(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def checkpoint(self, name: str | None) -> CheckpointRecord | None:
        return next((c for c in self.checkpoints if c.name == name), None)


class TrainerFiles:
    """Paths of the trainer's state and checkpoints and the JSON round trip of the state
    (``keys``: the hash keys the loaded state uses; kept out of the file)."""

    def __init__(self, state_dir: Path, keys: KeyRing | None = None) -> None:
        #: a reader given no keys (an inspection) is not held to the file's key
        self._check_key = keys is not None
        self.keys = keys or KeyRing.generate()
        self.root = Path(state_dir) / "trainer"
        self.checkpoints = self.root / "checkpoints"
        self.state_file = self.state_path(state_dir)
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def trainer_id(self) -> str:
        """This state folder's trainer, named in every model it exports: recovery removes
        only its own orphan files from a model folder that another trainer (another state
        folder) may share. Made at the first start, before any export."""
        path = self.root / "trainer-id"
        if not path.exists():
            partial = path.with_name("trainer-id.partial")
            partial.write_text(secrets.token_hex(8))
            partial.replace(path)
        return path.read_text().strip()

    @staticmethod
    def state_path(state_dir: Path) -> Path:
        return Path(state_dir) / "trainer" / "state.json"

    @staticmethod
    def read(state_dir: Path) -> dict | None:
        """The state file under ``state_dir`` as saved (None: none), read once at start: its
        key fingerprint picks the key ring before :meth:`load` turns it into a state."""
        path = TrainerFiles.state_path(state_dir)
        return json.loads(path.read_bytes()) if path.exists() else None

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_dir(self, name: str) -> Path:
        return self.checkpoints / name

    def has_checkpoint(self, name: str) -> bool:
        return (self.checkpoint_dir(name) / "meta.json").is_file()

    def checkpoint_meta(self, name: str) -> dict:
        return json.loads((self.checkpoint_dir(name) / "meta.json").read_text())

    def staging_dir(self, name: str) -> Path:
        """Where a checkpoint is written before :meth:`commit_checkpoint` names it."""
        return self.checkpoints / f"{name}.tmp"

    def commit_checkpoint(self, name: str) -> None:
        os.replace(self.staging_dir(name), self.checkpoint_dir(name))

    def delete_checkpoint(self, name: str) -> None:
        """Rename away, then remove: a crash halfway leaves no half checkpoint under its name
        (what is left over is an orphan, removed at the next start)."""
        path = self.checkpoint_dir(name)
        if not path.exists():
            return
        doomed = self.checkpoints / f"{name}.deleting"
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def folders(self) -> dict[str, int | None]:
        """Every folder under ``checkpoints/``: name → version (None: not a complete name)."""
        out: dict[str, int | None] = {}
        for path in self.checkpoints.iterdir():
            match = _CHECKPOINT.match(path.name)
            out[path.name] = int(match.group(1)) if match else None
        return out

    def remove_folder(self, name: str) -> None:
        shutil.rmtree(self.checkpoints / name, ignore_errors=True)

    # -- state.json ---------------------------------------------------------------------------
    def save(self, state: TrainerState) -> None:
        box = state.outbox
        write_json_atomically(
            self.state_file,
            {
                "format": STATE_FORMAT,
                "store": state.store.to_dict(),
                "items": state.items.by_index,
                "offsets": state.offsets,
                "dedup": state.dedup.to_json(),
                "dedup_capacity": state.dedup.capacity,
                "version": state.version,
                "checkpoints": [c.to_dict() for c in state.checkpoints],
                "current": state.current,
                "published": state.published,
                "reference": state.reference,
                "new_events": state.new_events,
                "fresh_users": sorted(state.fresh_users),
                "outbox": {
                    "receipts": [r.model_dump(mode="json") for r in box.receipts],
                    "announcements": [u.model_dump(mode="json") for u in box.announcements],
                    "receipts_end_offsets": box.receipts_end_offsets,
                },
                "counters": state.counters,
                "item_texts": {item: [text, ts] for item, (text, ts) in state.item_texts.items()},
                "item_tombstones": to_json(state.item_tombstones),
                "tombstones": to_json(state.tombstones),
                "key_fingerprint": key_fingerprint(state.keys.current),
            },
        )

    def load(self, data: dict | None = None) -> TrainerState | None:
        """The saved state: ``data`` as :meth:`read` returned it, else read from disk."""
        if data is None:
            data = self.read(self.root.parent)
        if data is None:
            return None
        if data.get("format") not in (2, 3, 4, 5, STATE_FORMAT):
            raise ValueError(f"unsupported trainer state format in {self.state_file}")
        if self._check_key:
            require_key(data.get("key_fingerprint"), self.keys, f"{self.state_file}")
        return TrainerState(
            store=SequenceStore.from_dict(data["store"]),
            items=IdMap(data["items"]),
            offsets=data["offsets"],
            dedup=DedupWindow.from_json(data["dedup_capacity"], data["dedup"]),
            keys=self.keys,
            version=data["version"],
            checkpoints=[CheckpointRecord(**c) for c in data["checkpoints"]],
            current=data["current"],
            published=data["published"],
            reference=data.get("reference"),
            new_events=data.get("new_events", 0),
            fresh_users=set(data.get("fresh_users", [])),
            outbox=_outbox(data),
            counters=data["counters"],
            item_texts={i: (str(t), int(ts)) for i, (t, ts) in data.get("item_texts", {}).items()},
            item_tombstones=from_json(data.get("item_tombstones", [])),
            tombstones=from_json(data.get("tombstones", [])),
        )


def _outbox(data: dict) -> Outbox:
    if "outbox" not in data:
        # format 2 kept receipts alone, without the receipts topic's end: a restart then
        # looks for them from the topic's start
        return Outbox(
            receipts=[DeletionReceipt.model_validate_json(r) for r in data["pending_receipts"]]
        )
    box = data["outbox"]
    return Outbox(
        receipts=[DeletionReceipt.model_validate(r) for r in box["receipts"]],
        announcements=[ModelUpdate.model_validate(u) for u in box["announcements"]],
        receipts_end_offsets=dict(box["receipts_end_offsets"]),
    )
