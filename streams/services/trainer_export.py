"""The trainer's models on disk: ONNX export with a signed announcement, and finding them.

Every file the trainer exports carries ``lethe.exported_by = trainer`` and its version in the
graph's metadata, so that after a crash the trainer can find the files it wrote and no state
refers to (they may hold data forgotten since) without touching other files in the folder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from export.onnx_export import export_sasrec
from models.sasrec import SASRec
from streams.contracts import ModelUpdate
from streams.model_auth import sign

log = logging.getLogger("lethe.trainer")

EXPORTED_BY = "lethe.exported_by"
_ME = "trainer"
#: which trainer (state folder) exported the file (absent in files of older versions)
TRAINER_ID = "lethe.trainer_id"


@dataclass(frozen=True)
class Exported:
    """A version on disk and the announcement that names it."""

    update: ModelUpdate
    path: str
    sha256: str
    max_abs_diff: float


def export_version(
    crm: SASRec,
    *,
    version: int,
    items: list[str | None],
    max_len: int,
    trained_through: dict[str, int],
    metrics: dict[str, float],
    model_dir: Path,
    key: bytes,
    trainer_id: str | None = None,
) -> Exported:
    """SASRec → ONNX (the vocabulary and version inside the file), and its signed
    ``model-updates`` announcement."""
    metadata = {
        "lethe.items": json.dumps(items),
        "lethe.version": str(version),
        "lethe.max_len": str(max_len),
        EXPORTED_BY: _ME,
    }
    if trainer_id is not None:
        metadata[TRAINER_ID] = trainer_id
    exported = export_sasrec(crm, Path(model_dir), metadata=metadata)
    path = str(exported.path.resolve())
    update = ModelUpdate(
        kind="crm-onnx",
        version=str(version),
        path=path,
        sha256=exported.sha256,
        metrics={k: float(v) for k, v in metrics.items()},
        trained_through=dict(trained_through),
        ts=int(time.time() * 1000),
    )
    return Exported(sign(update, key), path, exported.sha256, exported.max_abs_diff)


def exported_models(model_dir: Path, trainer_id: str | None = None) -> dict[str, int]:
    """The trainer's ONNX files in ``model_dir``: resolved path → version; with
    ``trainer_id``, only that trainer's (and those of versions that named none)."""
    import onnx

    out: dict[str, int] = {}
    for path in sorted(Path(model_dir).glob("sasrec-*.onnx")):
        try:
            graph = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # not a model we can read: not ours to delete
            log.warning("cannot read %s: %s", path.name, exc)
            continue
        meta = {p.key: p.value for p in graph.metadata_props}
        if meta.get(EXPORTED_BY) != _ME:
            continue
        if trainer_id is not None and meta.get(TRAINER_ID, trainer_id) != trainer_id:
            continue  # another trainer's, sharing this folder: not ours to delete
        out[str(path.resolve())] = int(meta.get("lethe.version", "0"))
    return out


def unfinished_exports(model_dir: Path) -> list[Path]:
    """Temporary files an export killed halfway left behind (export_sasrec's ``*.onnx.tmp``)."""
    return sorted(Path(model_dir).glob("*.onnx.tmp"))
