"""Make the trainer's state and its files agree after a crash.

The runtime may be killed between any two calls. A step writes checkpoints and ONNX files,
and a forget deletes the ones that saw the data, *before* the snapshot that records it; the
snapshot on disk may then name checkpoints that are gone, and folders and files may exist
that no state names. On load:

* the version counter moves past every version found on disk, so a number that may have
  been exported (or announced) is never given to another model;
* a checkpoint the state names but whose folder is gone stays in the list as *lost*: it was
  deleted by a forget that will be read and applied again (the snapshot's offsets predate
  it), which must then retrain as if it were there (:func:`is_lost`); the live models fall
  back to the newest checkpoint still there, or fresh ones;
* the published model goes when its checkpoint or its file is gone;
* every checkpoint folder and trainer ONNX file no state names is deleted: an orphan of a
  crashed step may hold data that is forgotten later, and nothing would delete it then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from streams.services.trainer_export import exported_models, unfinished_exports
from streams.services.trainer_state import TrainerFiles, TrainerState

log = logging.getLogger("lethe.trainer")


@dataclass
class Recovered:
    """What :func:`recover` changed (empty after a clean stop)."""

    lost: list[str] = field(default_factory=list)
    removed_folders: list[str] = field(default_factory=list)
    removed_models: list[str] = field(default_factory=list)
    unpublished: bool = False
    current_from: str | None = None

    def __bool__(self) -> bool:
        return bool(self.lost or self.removed_folders or self.removed_models or self.unpublished)


def is_lost(files: TrainerFiles, name: str) -> bool:
    return not files.has_checkpoint(name)


def recover(state: TrainerState, files: TrainerFiles, model_dir: Path) -> Recovered:
    out = Recovered()
    folders = files.folders()
    models = exported_models(model_dir, files.trainer_id)
    found = [v for v in folders.values() if v is not None] + list(models.values())
    state.version = max([state.version, *found])

    there = {c.name for c in state.checkpoints if not is_lost(files, c.name)}
    out.lost = [c.name for c in state.checkpoints if c.name not in there]
    if state.current is not None and state.current not in there:
        out.current_from = state.current
        state.current = next((c.name for c in reversed(state.checkpoints) if c.name in there), None)
    published = state.published
    if published is not None and (
        published["checkpoint"] not in there or not Path(published["path"]).exists()
    ):
        state.published, out.unpublished = None, True
    if state.reference is not None and state.reference not in there:
        state.reference = None

    keep = {c.onnx_path for c in state.checkpoints if c.name in there and c.onnx_path}
    if state.published is not None:
        keep.add(state.published["path"])
    # by file name (a content hash): a path spelled another way is still the same model
    kept_names = {Path(p).name for p in keep}
    # an announcement staged before the crash is published again only if its file is kept
    box = state.outbox
    box.announcements = [u for u in box.announcements if Path(u.path).name in kept_names]

    for name in folders:
        if name not in there:
            files.remove_folder(name)
            out.removed_folders.append(name)
    for path in [*map(Path, models), *unfinished_exports(model_dir)]:
        if path.name not in kept_names:
            path.unlink(missing_ok=True)
            out.removed_models.append(path.name)
    if out:
        log.warning(
            "recovered from a crash: %d lost checkpoint(s) (%s), %d orphan folder(s) and "
            "%d model file(s) removed%s; live models from %s; next version %d",
            len(out.lost),
            ", ".join(out.lost) or "-",
            len(out.removed_folders),
            len(out.removed_models),
            ", published model withdrawn" if out.unpublished else "",
            state.current or "scratch",
            state.version + 1,
        )
    return out
