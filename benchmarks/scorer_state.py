"""How long the scorer's state snapshot holds up its serving thread.

    python -m benchmarks.scorer_state [--users 100000] [--items-per-user 20] [--repeat 3]

Fills a :class:`~streams.services.scorer.ScorerService`'s state with ``--users`` users of
``--items-per-user`` interactions each (items drawn from 20,000, seeded), then times, in one
process (best of ``--repeat`` each):

* ``save_s``: a snapshot for a receipt (``save(for_receipt=True)``: the compact msgspec
  encoding, temp file, fsync, rename, all before it returns);
* ``serving_stall_s``: a periodic snapshot (``save()``), until it returns to the serving
  thread (the encoding; the file is written on the scorer's writer thread, waited for
  untimed before the next repeat); ``stall_ratio`` is ``save_s / serving_stall_s``;
* ``baseline_s``: the same write with the standard library's ``json`` (the encoder the
  scorer used before); ``speedup`` is ``baseline_s / save_s``.

Prints one JSON line with those and the file size.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import emit
from models.durable import write_json_atomically
from streams.config import LetheSettings
from streams.services.scorer import ScorerService


def _nothing() -> None:
    pass


def _best(
    repeat: int, write: Callable[[], object], after: Callable[[], object] = _nothing
) -> float:
    """Best of ``repeat`` timed calls of ``write``, each followed by an untimed ``after``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        write()
        times.append(time.perf_counter() - start)
        after()
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items-per-user", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        settings = LetheSettings(state_dir=Path(tmp) / "state", model_dir=Path(tmp) / "models")
        scorer = ScorerService(settings)
        store = scorer.state.store
        for u in range(args.users):
            for k in range(args.items_per_user):
                store.add(f"user-{u}", f"item-{rng.randrange(20_000)}", "t:0", k)
        save_s = _best(args.repeat, lambda: scorer.save(for_receipt=True))
        size = scorer.state_file.stat().st_size
        stall_s = _best(args.repeat, scorer.save, after=scorer.finish_writing)
        path = Path(tmp) / "baseline.json"
        state = scorer.state
        baseline_s = _best(args.repeat, lambda: write_json_atomically(path, state.to_dict()))
        scorer.close()
    emit(
        {
            "bench": "scorer_state",
            "users": args.users,
            "items_per_user": args.items_per_user,
            "seed": args.seed,
            "save_s": round(save_s, 4),
            "serving_stall_s": round(stall_s, 4),
            "stall_ratio": round(save_s / stall_s, 2),
            "baseline_s": round(baseline_s, 4),
            "speedup": round(baseline_s / save_s, 2),
            "file_mb": round(size / 1e6, 1),
        }
    )


if __name__ == "__main__":
    main()
