"""``lethe verify-erasure``: prove a deletion from the files on disk (docs/privacy.md).

Given a receipt, the verifier reads the IMCorrect snapshot and the scorer's and trainer's
state files under ``state_dir`` and checks that

* the subject (named in the receipt by its keyed hash, never a raw id) is in no id map and
  no sequence store, under the current or any retired hash key;
* no interaction sits on a row or column whose id was dropped (data nobody could ask for
  any more is data of a forgotten subject);
* the live mapping equals one refitted from scratch on the retained interactions (the
  exactness claim of IMCorrect), within ``tolerance`` in max absolute difference;
* the snapshot is the state the receipt refers to (its ``state_digest``); when the model's
  version has moved on since, that is reported and the other checks run on the current
  state; the same version with another digest means the state was altered: a failure.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.durable import temp_files
from models.imcorrect import IMCorrect
from streams.contracts import DeletionReceipt
from streams.keys import KeyRing
from streams.state import Hasher, SnapshotStore, WorkerState, model_digest
from streams.tombstones import from_json

DEFAULT_TOLERANCE = 1e-8
#: a worker's snapshot write takes well under a second: look this many times, this far apart
_LEFTOVER_LOOKS, _LEFTOVER_WAIT_S = 10, 0.3
#: a temporary folder younger than this is taken for a write in progress (noted, not failed)
_WRITING_S = 600


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Verdict:
    """The outcome: ``passed`` when every check passed; ``figures`` for machines."""

    request_id: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))

    def render(self) -> str:
        """The human-readable report ``lethe verify-erasure`` prints."""
        head = f"verify-erasure {self.request_id}: {'PASS' if self.passed else 'FAIL'}"
        lines = [head]
        lines += [f"  [{'pass' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "passed": self.passed,
            "checks": [c.__dict__ for c in self.checks],
            "notes": self.notes,
            "figures": self.figures,
        }


def _matches(subject_hex: str, kind: str, keys: KeyRing):
    """A predicate: does a raw id hash to ``subject_hex`` under any key of the ring?"""
    hashers = [Hasher(KeyRing(k)) for k in keys.all]
    return lambda raw: any(h.subject(kind, raw) == subject_hex for h in hashers)


def verify_erasure(
    state_dir: Path,
    receipt: DeletionReceipt,
    keys: KeyRing,
    tolerance: float = DEFAULT_TOLERANCE,
    folder: str = "imcorrect",
) -> Verdict:
    """Check ``receipt`` against the files under ``state_dir``.

    Parameters
    ----------
    state_dir:
        The Lethe state folder (``imcorrect/``, ``scorer/``, ``trainer/`` below it).
    receipt:
        The deletion receipt to verify.
    keys:
        The hash key ring the workers use (``LETHE_HASH_KEY`` or the key file).
    tolerance:
        Largest max-abs difference allowed between the live and the refitted mapping.
    folder:
        The IMCorrect state folder under ``state_dir`` (``imcorrect-<id>`` for a hot replica).
    """
    verdict = Verdict(receipt.request_id)
    verdict.figures["scope"], verdict.figures["status"] = receipt.scope, receipt.status
    if receipt.status == "rejected":
        # nothing was forgotten (an unknown subject, say): the checks below can only show
        # that the state holds none of it
        verdict.notes.append(f"the receipt is a rejection ({receipt.detail or 'no detail'})")
    if receipt.subject is None:
        verdict.add("subject", False, "the receipt names no subject hash (an older receipt?)")
        return verdict
    kind, subject_hex = receipt.subject.split(":", 1)
    is_subject = _matches(subject_hex, kind, keys)
    root = Path(state_dir)
    # opened only where it exists: the verifier creates nothing
    store = SnapshotStore(root / folder, keys) if (root / folder / "snapshots").is_dir() else None
    latest = store.latest() if store is not None else None
    _check_keys(verdict, root, latest, keys)
    _check_leftovers(verdict, root, folder)
    state = store.load(latest) if latest is not None else None
    if state is None:
        if receipt.state_digest is not None:  # IMCorrect wrote it: its state must be here
            verdict.add("IMCorrect snapshot", False, f"none under {root / folder}")
        else:
            verdict.notes.append("no IMCorrect snapshot under this state folder")
    else:
        with np.load(latest / "model.npz", allow_pickle=False) as arrays:
            stored_mapping = any(name.startswith("map_") for name in arrays.files)
            counts = [arrays[name] for name in _COUNT_ARRAYS if name in arrays.files]
        _check_imcorrect(verdict, state, receipt, kind, is_subject, tolerance, counts)
        if receipt.state_digest is not None and receipt.scope != "interactions":
            # IMCorrect's own receipt (applied): hashed with the key its snapshot uses (a
            # trainer's receipt may come from a worker that rotated its key first)
            # the tombstone's key is the subject's hash: key-independent proof that this
            # state applied the deletion
            buried = int(subject_hex, 16) in state.tombstones
            verdict.add(
                "IMCorrect tombstone",
                buried,
                "the snapshot holds the subject's tombstone"
                if buried
                else "no tombstone for the subject: this state has not applied the deletion",
            )
        if not stored_mapping:
            # snapshots taken for receipts leave the dense mapping out (docs/privacy.md)
            verdict.notes.append(
                "this snapshot stores no mapping (it is refitted from X on load), so the "
                "mapping check confirms the refit only; the id and interaction checks carry "
                "the proof"
            )
    for name in _sequence_folders(root):
        path = root / name / "state.json"
        if path.exists() and receipt.scope != "interactions":  # the user stays there
            data = json.loads(path.read_bytes())
            _check_sequences(verdict, name, data, kind, is_subject, subject_hex)
    if not verdict.checks:
        verdict.add("state", False, f"nothing to verify under {state_dir}")
    return verdict


def _sequence_folders(root: Path) -> list[str]:
    """The state folders that keep sequences: the scorer's (``scorer-<id>`` per replica
    when scaled out) and the trainer's."""
    replicas = sorted(p.name for p in root.glob("scorer-*") if p.is_dir())
    return ["scorer", *replicas, "trainer"]


def _check_keys(verdict: Verdict, root: Path, snapshot: Path | None, keys: KeyRing) -> None:
    """The ring must hold the key each state file says it hashed with: under another key
    the subject's hash matches nothing, and every 'absent' below would prove nothing.
    ``snapshot``: the newest IMCorrect snapshot (None: there is none)."""
    found: dict[str, str] = {}
    if snapshot is not None:
        meta = json.loads((snapshot / "worker.json").read_text())
        found["IMCorrect"] = meta.get("key_fingerprint")
    for name in _sequence_folders(root):
        path = root / name / "state.json"
        if path.is_file():
            found[name] = json.loads(path.read_bytes()).get("key_fingerprint")
    known = set(keys.fingerprints)
    wrong = sorted(name for name, fp in found.items() if fp is not None and fp not in known)
    unmarked = sorted(name for name, fp in found.items() if fp is None)
    if unmarked:
        verdict.notes.append(
            f"{', '.join(unmarked)}: written before key fingerprints; the key is not checked"
        )
    verdict.add(
        "hash key",
        not wrong,
        f"the key ring does not hold the key {', '.join(wrong)} hashed with: wrong key?"
        if wrong
        else "the key ring holds the key every state file hashed with",
    )


def _check_leftovers(verdict: Verdict, root: Path, folder: str) -> None:
    """Older snapshots, half-written ones (or half-written state files of the scorer and
    the trainer) and checkpoints being deleted may hold the data:
    only the newest complete snapshot may be there. A live worker has such folders for a
    moment while it writes: they are looked for again a few times before it counts."""
    for _ in range(_LEFTOVER_LOOKS - 1):
        if not _leftovers(root, folder)[0]:
            break
        time.sleep(_LEFTOVER_WAIT_S)
    stray, writing = _leftovers(root, folder)
    if writing:
        verdict.notes.append(
            f"being written now (younger than {_WRITING_S // 60} min; a leftover if no worker "
            f"runs): {', '.join(writing)}"
        )
    verdict.add(
        "stale copies",
        not stray,
        f"files or folders that may hold older data: {', '.join(stray)}"
        if stray
        else "no older snapshot, half-written snapshot or state file, or half-deleted checkpoint",
    )


def _leftovers(root: Path, folder: str) -> tuple[list[str], list[str]]:
    """(older copies, folders being written): a complete snapshot older than the newest
    is a leftover at once; a temporary or half-deleted folder only once it is older than
    a write can take (a large dense mapping or checkpoint takes longer than the retries)."""
    now = time.time()
    stray, writing = [], []

    def sort(label: str, path: Path) -> None:
        try:
            young = now - path.stat().st_mtime < _WRITING_S
        except FileNotFoundError:  # finished or removed meanwhile
            return
        (writing if young else stray).append(label)

    snaps = root / folder / "snapshots"
    paths = sorted(snaps.glob("snap-*")) if snaps.is_dir() else []
    complete = [p for p in paths if p.suffix != ".tmp"]
    for p in paths:
        if p.suffix == ".tmp":
            sort(p.name, p)
        elif p != complete[-1]:
            stray.append(p.name)
    for name in _sequence_folders(root):
        # a state.json write killed halfway (its worker removes it at its next start)
        for p in temp_files(root / name / "state.json"):
            sort(f"{name}/{p.name}", p)
    checkpoints = root / "trainer" / "checkpoints"
    if checkpoints.is_dir():
        for p in sorted(checkpoints.iterdir()):
            if p.suffix in (".tmp", ".deleting"):
                sort(f"trainer/{p.name}", p)
    return stray, writing


#: the sparse mapping's stored co-occurrence counts (both parts) in a snapshot's model file
_COUNT_ARRAYS = ("map_g_data", "map_g_extra_data")


def _check_imcorrect(
    verdict: Verdict,
    state: WorkerState,
    receipt: DeletionReceipt,
    kind: str,
    is_subject,  # noqa: ANN001 - Callable[[str], bool]
    tolerance: float,
    stored_counts: list[np.ndarray],
) -> None:
    idmap = state.users if kind == "user" else state.items
    present = [raw for raw in idmap.by_index if raw is not None and is_subject(raw)]
    verdict.figures["imcorrect_ids_checked"] = len(idmap)
    if receipt.scope == "interactions":
        verdict.notes.append(
            "scope 'interactions': the user may stay; the receipt names no items, so only the "
            "orphan and mapping checks below speak for the pairs"
        )
    else:
        verdict.add(
            f"IMCorrect {kind} map",
            not present,
            f"subject {'PRESENT' if present else 'absent'} among {len(idmap)} {kind}s",
        )
    model = state.model
    x = model.interactions
    rows = np.diff(x.indptr)
    cols = np.bincount(x.indices, minlength=x.shape[1])
    unmapped_rows = [u for u in range(x.shape[0]) if state.users.external(u) is None and rows[u]]
    unmapped_cols = [i for i in range(x.shape[1]) if state.items.external(i) is None and cols[i]]
    verdict.figures["interactions"] = int(x.nnz)
    verdict.figures["orphan_interactions"] = int(
        sum(rows[u] for u in unmapped_rows) + sum(cols[i] for i in unmapped_cols)
    )
    verdict.add(
        "IMCorrect interactions",
        not unmapped_rows and not unmapped_cols,
        f"{len(unmapped_rows)} row(s) and {len(unmapped_cols)} column(s) with data but no id "
        f"({verdict.figures['orphan_interactions']} interaction(s)); {x.nnz} retained",
    )
    refit = IMCorrect(model.config).fit(x)
    diff = float(np.max(np.abs(model.mapping - refit.mapping))) if model.n_items else 0.0
    verdict.figures["mapping_max_abs_diff"] = diff
    verdict.figures["tolerance"] = tolerance
    verdict.add(
        "IMCorrect mapping",
        diff <= tolerance,
        f"max |M_live - M_refit| = {diff:.3g} over {model.n_items} items (tolerance {tolerance:g})",
    )
    if stored_counts:
        _check_counts(verdict, model, refit, stored_counts)
    _check_digest(verdict, state, receipt)


def _check_counts(
    verdict: Verdict, model: IMCorrect, refit: IMCorrect, stored: list[np.ndarray]
) -> None:
    """The sparse mapping's counts as the file stores them: none 0 (such an entry says two
    items were once taken together), and all of them what X counts now."""
    zeros = sum(int(np.count_nonzero(part == 0)) for part in stored)
    live, fresh = model.gram, refit.gram  # merged, as counted from X
    same = live.shape == fresh.shape and (live != fresh).nnz == 0
    verdict.figures["stored_zero_counts"] = zeros
    verdict.add(
        "IMCorrect counts",
        zeros == 0 and same,
        f"{zeros} stored co-occurrence count(s) of 0; the counts "
        f"{'equal' if same else 'DIFFER from'} those of the retained interactions",
    )


def _check_digest(verdict: Verdict, state: WorkerState, receipt: DeletionReceipt) -> None:
    digest = model_digest(state.model)
    version = state.model.version
    claimed = receipt.versions.get("imcorrect")
    verdict.figures.update(state_digest=digest, imcorrect_version=version)
    if receipt.state_digest is None or claimed is None:
        verdict.notes.append("the receipt carries no state digest (not from the IMCorrect side)")
    elif digest == receipt.state_digest:
        verdict.add("state digest", True, f"the snapshot is the state of the receipt (v{version})")
    elif str(version) == claimed:
        verdict.add(
            "state digest",
            False,
            f"model version {version} is the receipt's, but its state differs from the "
            "receipt's digest: altered since",
        )
    else:
        verdict.notes.append(
            f"state moved on since the receipt (version {claimed} -> {version}); the checks "
            "above ran on the current state"
        )


def _check_sequences(
    verdict: Verdict,
    name: str,
    data: dict,
    kind: str,
    is_subject,  # noqa: ANN001 - Callable[[str], bool]
    subject_hex: str,
) -> None:
    store = data.get("store", {})
    sequences: dict[str, list[str]] = store.get("sequences", {})
    if kind == "user":
        hits = [u for u in sequences if is_subject(u)]
        hits += [u for u in store.get("user_first", {}) if is_subject(u)]
        checked = f"{len(sequences)} sequences"
    else:
        hits = [i for seq in sequences.values() for i in seq if is_subject(i)]
        hits += [i for i in store.get("item_first", {}) if is_subject(i)]
        hits += [i for i in data.get("items", []) if i is not None and is_subject(i)]
        checked = f"{sum(len(s) for s in sequences.values())} items in {len(sequences)} sequences"
    verdict.figures[f"{name}_sequences"] = len(sequences)
    detail = f"subject {f'PRESENT ({len(hits)})' if hits else 'absent'} in {checked}"
    if hits and int(subject_hex, 16) not in from_json(data.get("tombstones", [])):
        # not a failure to forget yet: this worker has not read the deletion (the trainer
        # retrains first, tens of seconds or more, and IMCorrect's receipt comes before)
        detail += (
            f"; the {name} has not applied the deletion yet (no tombstone for the subject in"
            " its state): run this again after its receipt"
            + (" (neural-retrained)" if name == "trainer" else "")
        )
    verdict.add(f"{name} sequences", not hits, detail)


def read_receipt(source: str) -> DeletionReceipt:
    """A receipt from a JSON file path, ``-`` (stdin) or inline JSON text."""
    import sys

    if source == "-":
        text = sys.stdin.read()
    elif source.lstrip().startswith("{"):
        text = source
    else:
        text = Path(source).read_text()
    return DeletionReceipt.model_validate_json(text)
