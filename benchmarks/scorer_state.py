"""How long the scorer's state snapshot holds up its serving thread.

    python -m benchmarks.scorer_state [--users 100000] [--items-per-user 20] [--repeat 3]

Fills a :class:`~streams.services.scorer_state.ScorerState` with ``--users`` users of
``--items-per-user`` interactions each (items drawn from 20,000, seeded), then times the
scorer's save (``ScorerService.save``: the compact msgspec encoder, temp file, fsync,
rename) against the same write with the standard library's ``json`` (the baseline, the
encoder the scorer used before), in one process. Prints one JSON line: ``save_s`` and
``baseline_s`` (best of ``--repeat``), ``speedup`` and the file size.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit
from models.durable import write_json_atomically
from streams.services.scorer_state import ScorerState


def _best(repeat: int, write) -> float:  # noqa: ANN001 - a zero-argument callable
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        write()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items-per-user", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    state = ScorerState(max_history=1000)
    for u in range(args.users):
        for k in range(args.items_per_user):
            state.store.add(f"user-{u}", f"item-{rng.randrange(20_000)}", "t:0", k)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        save_s = _best(
            args.repeat, lambda: write_json_atomically(path, state.to_dict(), compact=True)
        )
        size = path.stat().st_size
        baseline_s = _best(args.repeat, lambda: write_json_atomically(path, state.to_dict()))
    emit(
        {
            "bench": "scorer_state",
            "users": args.users,
            "items_per_user": args.items_per_user,
            "seed": args.seed,
            "save_s": round(save_s, 4),
            "baseline_s": round(baseline_s, 4),
            "speedup": round(baseline_s / save_s, 2),
            "file_mb": round(size / 1e6, 1),
        }
    )


if __name__ == "__main__":
    main()
