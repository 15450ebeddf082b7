"""onnxruntime sessions that prefer CUDA and fall back to CPU, reporting what really runs.

``get_available_providers()`` lists CUDA whenever onnxruntime-gpu is installed, even on a
machine without a GPU (the session then logs an error and runs on CPU), so the provider in
use is read from ``session.get_providers()`` after creation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ScoringSession:
    session: object
    provider: str  # the provider actually in use
    path: Path

    @property
    def metadata(self) -> dict[str, str]:
        """The custom metadata properties stored in the model file."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, item_seq: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {"item_seq": item_seq.astype(np.int64, copy=False)})


def open_session(
    path: Path,
    prefer_gpu: bool = True,
    threads: int | None = None,
    spin: bool = True,
    model_bytes: bytes | None = None,
) -> ScoringSession:
    """``spin=False`` stops idle intra-op threads from busy-waiting (they otherwise burn the
    CPU that a small machine's broker and event loop need between batches). With
    ``model_bytes`` the session is built from them (``path`` only names it): a caller that
    checked those bytes serves exactly them, whatever happens to the file since."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    wanted = ["CPUExecutionProvider"]
    if prefer_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        wanted.insert(0, "CUDAExecutionProvider")
    source = model_bytes if model_bytes is not None else str(path)
    session = ort.InferenceSession(source, sess_options=options, providers=wanted)
    return ScoringSession(session, session.get_providers()[0], Path(path))
