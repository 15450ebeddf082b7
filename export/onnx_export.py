"""SASRec → ONNX with a dynamic batch axis, optional in-graph top-k, and a parity check.

Files are named by content hash (``sasrec-<sha256[:16]>.onnx``) so a scorer can verify what it
loads; :func:`export_sasrec` refuses to return a file whose outputs differ from torch by more
than the tolerance (1e-4 in fp32).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.scoring_graph import SASRecScorer
from models.sasrec import SASRec

PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The exported graph does not reproduce the torch model."""


class _TopK(nn.Module):
    """Scores with the padding column masked, then the k best items inside the graph."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.model(seq)
        scores = torch.cat([torch.full_like(scores[:, :1], -1e9), scores[:, 1:]], dim=1)
        values, indices = torch.topk(scores, self.k, dim=1)
        return values, indices


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    sha256: str
    max_abs_diff: float
    top_k: int | None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_sasrec(
    model: SASRec,
    out_dir: Path,
    *,
    top_k: int | None = None,
    tolerance: float = PARITY_TOLERANCE,
    check_batches: tuple[int, ...] = (1, 7),
    seed: int = 0,
    metadata: dict[str, str] | None = None,
) -> ExportedModel:
    """Export, check parity on random histories at several batch sizes, name by hash.

    ``metadata`` is stored in the graph's metadata properties (the item vocabulary and version
    travel inside the file, so one sha256 covers them all)."""
    model = model.eval()
    # the graph is traced from the serving form and checked against the trained module;
    # eval() on the wrappers too: export restores their mode recursively afterwards
    scorer: nn.Module = SASRecScorer(model)
    module = (scorer if top_k is None else _TopK(scorer, top_k)).eval()
    reference = (model if top_k is None else _TopK(model, top_k)).eval()
    length = model.config.max_len
    example = torch.randint(1, model.config.n_items + 1, (2, length))
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, suffix=".onnx.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    outputs = ["scores"] if top_k is None else ["top_scores", "top_items"]
    try:
        with warnings.catch_warnings():
            # the parity check below is what guards the exported graph
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                input_names=["item_seq"],
                output_names=outputs,
                dynamic_axes={"item_seq": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                opset_version=18,
                dynamo=False,
            )
        diff = check_parity(reference, tmp, length, model.config.n_items, check_batches, seed)
        if diff > tolerance:
            raise ParityError(f"ONNX differs from torch by {diff:.3g} > {tolerance:g}")
        if metadata:
            _add_metadata(tmp, metadata)
        sha = sha256_of(tmp)
        final = out_dir / f"sasrec-{sha[:16]}.onnx"
        os.replace(tmp, final)
        return ExportedModel(final, sha, diff, top_k)
    finally:
        tmp.unlink(missing_ok=True)


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    graph = onnx.load(str(path))
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def check_parity(
    module: nn.Module, path: Path, length: int, n_items: int, batches, seed: int
) -> float:
    """Largest |onnx − torch| over random left-padded histories (top-k: on the scores)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in batches:
        seq = torch.randint(1, n_items + 1, (batch, length), generator=g)
        seq[0, : length // 2] = 0  # a short history
        if batch > 2:
            seq[1, :-1] = 0  # one item
            seq[2, :] = 0  # none at all (only padding)
        with torch.no_grad():
            expected = module(seq)
        got = session.run(None, {"item_seq": seq.numpy()})
        expected = expected if isinstance(expected, tuple) else (expected,)
        want = expected[0].numpy()
        if not (np.isfinite(got[0]).all() and np.isfinite(want).all()):
            return float("inf")  # a NaN would otherwise compare as no difference at all
        worst = max(worst, float(np.max(np.abs(got[0] - want))))
    return worst
