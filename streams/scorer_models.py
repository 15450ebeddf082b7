"""The models the scoring agent serves: the ONNX SASRec it swapped in last, the newest
IMCorrect snapshot, and the candidate catalogue that lines the two up.

Everything here is immutable once built; the agent swaps whole objects, so a batch in flight
keeps scoring with the references it started with while a new model loads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.session import ScoringSession, open_session
from models.fusion import fuse_batch, top_k
from models.imcorrect import FrozenScores
from streams.contracts import ModelUpdate
from streams.state import SnapshotStore, WorkerState


class ModelRejected(RuntimeError):
    """A model update that must not be served (missing file, wrong sha256, bad metadata)."""


@dataclass(frozen=True)
class ServedModel:
    version: str
    sha256: str
    session: ScoringSession
    items: list[str | None]  # dense index → external id; ONNX column = index + 1
    max_len: int

    @property
    def provider(self) -> str:
        return self.session.provider


def load_served_model(
    update: ModelUpdate, prefer_gpu: bool = True, threads: int | None = None
) -> ServedModel:
    """Read the file once, check those bytes' sha256 against the announcement, and open a
    session from the same bytes (a file swapped after the check is never what is served).
    Any failure to open it is a :class:`ModelRejected`: the served model stays."""
    path = Path(update.path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelRejected(f"model file {path} is missing") from exc
    except OSError as exc:
        raise ModelRejected(f"model file {path} cannot be read: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != update.sha256:
        raise ModelRejected(f"sha256 of {path} is {digest[:12]}…, announced {update.sha256[:12]}…")
    try:
        session = open_session(
            path, prefer_gpu=prefer_gpu, threads=threads or None, spin=False, model_bytes=data
        )
    except Exception as exc:  # onnxruntime's own errors: bad protobuf, opset, device memory
        raise ModelRejected(f"model {path} cannot be opened: {exc}"[:500]) from exc
    meta = session.metadata
    try:
        items = json.loads(meta["lethe.items"])
        max_len = int(meta["lethe.max_len"])
    except (KeyError, ValueError) as exc:
        raise ModelRejected(f"model {path} lacks Lethe metadata: {exc}") from exc
    return ServedModel(update.version, update.sha256, session, items, max_len)


@dataclass(frozen=True)
class IMCorrectView:
    """One loaded IMCorrect snapshot, and its scores frozen for serving (built from ``state``
    when not given; a newer snapshot of the same data passes the old ones on)."""

    path: Path | None
    state: WorkerState
    scores: FrozenScores | None = None

    def __post_init__(self) -> None:
        if self.scores is None:
            object.__setattr__(self, "scores", self.state.model.freeze())

    @property
    def version(self) -> str:
        return str(self.state.model.version)


def load_imcorrect(
    state_dir: Path, current: IMCorrectView | None, folder: str = "imcorrect"
) -> IMCorrectView | None:
    """The newest IMCorrect snapshot when it is newer than ``current`` (else ``current``);
    ``folder`` names a hot replica's state folder."""
    store = SnapshotStore(Path(state_dir) / folder)
    latest = store.latest()
    if latest is None or (current is not None and latest == current.path):
        return current
    try:
        if current is not None:
            # periodic snapshots of an idle worker change nothing: skip the load
            meta = json.loads((latest / "worker.json").read_text())
            if meta["offsets"] == current.state.offsets:
                return IMCorrectView(latest, current.state, current.scores)
        state = store.load(latest)
    except (FileNotFoundError, OSError, ValueError):
        return current  # pruned while reading: next time
    return IMCorrectView(latest, state) if state is not None else current


class Catalogue:
    """Candidate items and where each model scores them."""

    def __init__(
        self,
        model: ServedModel | None,
        imcorrect: IMCorrectView | None,
        fallback_ids: list[str] | None = None,
    ) -> None:
        """Candidates are the model's vocabulary, else IMCorrect's items, else
        ``fallback_ids`` (items seen in the stream, for popularity only)."""
        self.model, self.imcorrect = model, imcorrect
        if model is not None:
            self.ids = [i for i in model.items if i is not None]
            self.crm_cols = np.array(
                [k + 1 for k, i in enumerate(model.items) if i is not None], dtype=np.int64
            )
        elif imcorrect is not None:
            self.ids = [i for i in imcorrect.state.items.by_index if i is not None]
            self.crm_cols = None
        else:
            self.ids, self.crm_cols = list(fallback_ids or []), None
        self.position = {item: k for k, item in enumerate(self.ids)}
        self.imc_cols = None
        if imcorrect is not None:
            get = imcorrect.state.items.get
            self.imc_cols = np.array(
                [-1 if get(i) is None else get(i) for i in self.ids], dtype=np.int64
            )
        self._model_index = (
            {item: k for k, item in enumerate(model.items) if item is not None} if model else {}
        )
        self._imc_positions: np.ndarray | None = None

    def imcorrect_positions(self, items: np.ndarray) -> np.ndarray:
        """Catalogue positions of IMCorrect item indices (those in the catalogue)."""
        if self._imc_positions is None:
            assert self.imcorrect is not None and self.imc_cols is not None
            lookup = np.full(self.imcorrect.state.model.n_items, -1, dtype=np.int64)
            known = self.imc_cols >= 0
            lookup[self.imc_cols[known]] = np.flatnonzero(known)
            self._imc_positions = lookup
        lookup = self._imc_positions
        found = lookup[items[items < len(lookup)]]
        return found[found >= 0]

    def __len__(self) -> int:
        return len(self.ids)

    def history_row(self, items: list[str]) -> np.ndarray:
        """A left-padded ONNX input row from a user's items (unknown items skipped)."""
        assert self.model is not None
        index, length = self._model_index, self.model.max_len
        # newest first, stopping at the model's length: long histories cost no more
        tail: list[int] = []
        for item in reversed(items):
            col = index.get(item)
            if col is not None:
                tail.append(col + 1)
                if len(tail) == length:
                    break
        row = np.zeros(length, dtype=np.int64)
        if tail:
            row[length - len(tail) :] = tail[::-1]
        return row


@dataclass
class ScoringJob:
    """One request, prepared on the event loop (the state it needs copied out)."""

    k: int
    history: np.ndarray | None  # ONNX row, None when the user has no known history
    imcorrect_user: int | None  # IMCorrect user index when its scores may be used
    banned: np.ndarray  # catalogue positions never to return


def score_batch(
    catalogue: Catalogue, jobs: list[ScoringJob], weight: float, popularity: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(catalogue positions, scores, strategy) per job; touches no mutable worker state, so
    it may run on a thread."""
    n = len(catalogue)
    crm = None
    with_history = [j for j, job in enumerate(jobs) if job.history is not None]
    if catalogue.model is not None and with_history:
        rows = np.stack([jobs[j].history for j in with_history])
        (scores,) = catalogue.model.session.run(rows)
        crm = np.full((len(jobs), n), np.nan)
        crm[with_history] = scores[:, catalogue.crm_cols]
    imc = None
    imc_rows = [j for j, job in enumerate(jobs) if job.imcorrect_user is not None]
    if catalogue.imcorrect is not None and imc_rows:
        users = [jobs[j].imcorrect_user for j in imc_rows]
        # seen items are kept: the request decides (exclude_seen) through ``banned``
        raw = catalogue.imcorrect.scores.score(users)
        cols = catalogue.imc_cols
        picked = np.where(cols >= 0, raw[:, np.maximum(cols, 0)], np.nan)
        imc = np.full((len(jobs), n), np.nan)
        imc[imc_rows] = picked
    fused = fuse_batch(crm, imc, weight) if crm is not None or imc is not None else None
    out = []
    for j, job in enumerate(jobs):
        personal = job.history is not None and crm is not None
        personal = personal or (job.imcorrect_user is not None and imc is not None)
        if not personal:
            idx, vals = top_k(popularity, job.k, job.banned)
            out.append((idx, vals, "popularity"))
            continue
        idx, vals = top_k(fused[j], job.k, job.banned)
        out.append((idx, vals, "personal"))
    return out
