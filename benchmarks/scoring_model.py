"""Scoring-model latency: the exported ONNX SASRec against torch eager, same inputs, same
process, on the CPU or a GPU. Imports no Kafka, so it also runs on a bare GPU machine.

    python -m benchmarks.scoring_model [--batches 1,32] [--items 1682] [--max-len 50]
                                       [--runs 300] [--device cpu|cuda]

One JSON line per batch size with p50/p99 of eager and onnxruntime, their ratios, the provider
onnxruntime really uses and the torch device. On a GPU both sides include the host ↔ device
copies of inputs and scores (what the scorer pays per batch).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import emit
from export.onnx_export import export_sasrec
from export.session import open_session
from models.sasrec import SASRec, SASRecConfig


def latencies(fn: Callable[[], object], runs: int, warmup: int = 10) -> np.ndarray:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(runs)
    for k in range(runs):
        start = time.perf_counter()
        fn()
        out[k] = time.perf_counter() - start
    return out


def model_only(
    items: int,
    max_len: int,
    batches: list[int],
    runs: int,
    seed: int,
    device: str = "cpu",
    top_k: int | None = None,
) -> None:
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=items, max_len=max_len)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_sasrec(model, Path(tmp), top_k=top_k)
        session = open_session(exported.path, prefer_gpu=device != "cpu")
        model = model.to(device)
        for batch in batches:
            seq = torch.randint(1, items + 1, (batch, max_len))
            arr = seq.numpy()

            def eager(seq: torch.Tensor = seq) -> object:
                # input to the device, scores back to the host: what serving needs
                with torch.inference_mode():
                    scores = model(seq.to(device))
                    if top_k:
                        top = scores.topk(top_k, dim=-1)
                        return top.values.cpu().numpy(), top.indices.cpu().numpy()
                    return scores.cpu().numpy()

            eager_s = latencies(eager, runs)
            onnx_s = latencies(lambda arr=arr: session.run(arr), runs)
            p = {
                name: (np.percentile(v, 50) * 1e3, np.percentile(v, 99) * 1e3)
                for name, v in (("eager", eager_s), ("onnx", onnx_s))
            }
            emit(
                {
                    "bench": "scoring-model",
                    "batch": batch,
                    "items": items,
                    "max_len": max_len,
                    "top_k": top_k,
                    "provider": session.provider,
                    "torch_device": str(device),
                    "gpu": torch.cuda.get_device_name() if device != "cpu" else None,
                    "eager_p50_ms": round(p["eager"][0], 3),
                    "eager_p99_ms": round(p["eager"][1], 3),
                    "onnx_p50_ms": round(p["onnx"][0], 3),
                    "onnx_p99_ms": round(p["onnx"][1], 3),
                    "speedup_p50": round(p["eager"][0] / p["onnx"][0], 2),
                    "speedup_p99": round(p["eager"][1] / p["onnx"][1], 2),
                    "runs": runs,
                    "torch_threads": torch.get_num_threads(),
                    "seed": seed,
                    "parity_max_abs_diff": exported.max_abs_diff,
                }
            )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The scored model's size and the timing repeats (shared with ``benchmarks.scoring``)."""
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 32])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top-k", type=int, default=None, help="in-graph top-k (ids only)")
    args = parser.parse_args()
    model_only(
        args.items, args.max_len, args.batches, args.runs, args.seed, args.device, args.top_k
    )


if __name__ == "__main__":
    main()
