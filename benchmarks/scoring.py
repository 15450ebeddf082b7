"""Scoring latency: the exported ONNX SASRec vs torch eager, same process, same inputs.

    python -m benchmarks.scoring [--items 1682] [--max-len 50] [--runs 300]

Prints one JSON line per batch size (1 and 32) with p50/p99 latency of both and their ratio,
and the onnxruntime provider actually in use. (The Kafka request → recommendation latency
part needs the scoring agent, which is not built yet.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import emit
from export.onnx_export import export_sasrec
from export.session import open_session
from models.sasrec import SASRec, SASRecConfig


def _latencies(fn, runs: int) -> np.ndarray:
    for _ in range(10):
        fn()  # warm up
    out = np.empty(runs)
    for k in range(runs):
        start = time.perf_counter()
        fn()
        out[k] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = SASRec(SASRecConfig(n_items=args.items, max_len=args.max_len)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_sasrec(model, Path(tmp))
        session = open_session(exported.path)
        for batch in (1, 32):
            seq = torch.randint(1, args.items + 1, (batch, args.max_len))
            arr = seq.numpy()
            with torch.inference_mode():
                eager = _latencies(lambda seq=seq: model(seq), args.runs)
            onnx = _latencies(lambda arr=arr: session.run(arr), args.runs)
            p = {
                name: (np.percentile(v, 50) * 1e3, np.percentile(v, 99) * 1e3)
                for name, v in (("eager", eager), ("onnx", onnx))
            }
            emit(
                {
                    "bench": "scoring-model",
                    "batch": batch,
                    "items": args.items,
                    "max_len": args.max_len,
                    "provider": session.provider,
                    "eager_p50_ms": round(p["eager"][0], 3),
                    "eager_p99_ms": round(p["eager"][1], 3),
                    "onnx_p50_ms": round(p["onnx"][0], 3),
                    "onnx_p99_ms": round(p["onnx"][1], 3),
                    "speedup_p50": round(p["eager"][0] / p["onnx"][0], 2),
                    "speedup_p99": round(p["eager"][1] / p["onnx"][1], 2),
                    "torch_threads": torch.get_num_threads(),
                    "seed": args.seed,
                    "parity_max_abs_diff": exported.max_abs_diff,
                }
            )


if __name__ == "__main__":
    main()
