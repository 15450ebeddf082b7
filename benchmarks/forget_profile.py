"""Where a one-user forget of the itemknn-topk mapping spends its time.

    python -m benchmarks.forget_profile [--size 100k] [--users 200] [--seed 1] [--top 8]

Fits the mapping on the synthetic catalogue of ``benchmarks.catalogue`` (all users). First,
``stage: "threads"`` times the compiled pass over the rows of ``--ab-rows`` items drawn by
popularity (a heavy user's) on one thread and on ``kernel_threads``, alternating,
``--ab-reps`` times each, in this process (medians). Then it forgets ``--users`` random
users one call each, with timers around the phases of a forget (splicing X, the count
updates, the merges, the row selections), and prints one JSON line per user among the
``--top`` slowest and the median one (``stage: "user"``), then a summary (``stage:
"summary"``: p50/p99/max ms). The first forget, which makes X the model's own copy, is not
timed. Phase times nest: ``apply_delta`` holds ``counts_add``, ``merge_pairs`` and
``recompute``; the rest of it is the pass over the forgotten items' rows (the compiled
kernel and the Python around it). The ``threads`` A/B times that whole pass too.

Last, ``stage: "retrain_split"`` times the two halves of a retrain on the remaining X
(counting G, then selecting every row), and ``stage: "many"`` forgets ``--many-share`` of the
users in one call with the same phase timers: what a forget of many users would still cost
if no row had to be selected again.
"""

from __future__ import annotations

import argparse
import functools
import gc
import time
from collections.abc import Callable
from unittest import mock

import numpy as np

from benchmarks.catalogue import SIZES, fitted_on_catalogue
from benchmarks.common import emit
from models.imcorrect import IMCorrect, topk_rows
from models.imcorrect.cooccurrence import Cooccurrence
from models.imcorrect.topk_rows import kernel_threads

#: (object attribute path, phase name)
PHASES = [
    ("model._splice", "splice"),
    ("mapping._correct", "correct"),
    ("mapping._apply_delta", "apply_delta"),
    ("counts.add", "counts_add"),
    ("mapping._merge_pairs", "merge_pairs"),
    ("mapping._recompute", "recompute"),
]


def timed_phases(targets: dict[str, object], phases: dict[str, float]) -> None:
    """Wrap each phase's method so that its calls add their seconds to ``phases``."""
    for path, label in PHASES:
        owner_name, method = path.split(".")
        owner = targets[owner_name]
        inner: Callable = getattr(owner, method)

        @functools.wraps(inner)
        def wrapper(*args, _inner=inner, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                phases[_label] = phases.get(_label, 0.0) + time.perf_counter() - start

        setattr(owner, method, wrapper)


def threads_ab(mapping, args: argparse.Namespace) -> dict:
    """The row pass over a heavy user's items on one thread and on the kernel threads."""
    rng = np.random.default_rng(args.seed)
    degree = mapping.degree
    root = np.sqrt(np.maximum(degree, 0.0))
    floor = np.where(mapping.fill == mapping.k, mapping._outsiders_floor()[0], -np.inf)
    # two threads at least: on a one-CPU host the A/B shows what threads would cost there
    times: dict[int, list[float]] = {1: [], max(2, kernel_threads()): []}
    entries = []
    for rep in range(args.ab_rows and args.ab_reps):
        rows = rng.choice(len(degree), size=args.ab_rows, p=degree / degree.sum(), replace=False)
        rows = np.sort(rows)
        entries.append(int(mapping.counts.row_lengths(rows).sum()))
        for threads in sorted(times, reverse=bool(rep % 2)):
            with mock.patch.object(topk_rows, "kernel_threads", lambda t=threads: t):
                start = time.perf_counter()
                for _ in mapping._select(rows, root, root, True, floor):
                    pass  # the same degrees: the lists come out as they were
                times[threads].append(time.perf_counter() - start)
    one, many = (float(np.median(times[t])) for t in sorted(times))
    return {
        "rows": args.ab_rows,
        "row_entries_median": int(np.median(entries)),
        "one_thread_ms": round(one * 1e3, 2),
        "threads_ms": round(many * 1e3, 2),
        "speedup": round(one / many, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="100k", choices=sorted(SIZES))
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--ab-rows", type=int, default=150)
    parser.add_argument("--ab-reps", type=int, default=12)
    parser.add_argument("--many-share", type=float, default=0.01)
    args = parser.parse_args(argv)

    n_users = SIZES[args.size][1]
    model = fitted_on_catalogue(args.size)
    mapping = model._mapping
    base = {"bench": "forget_profile", "size": args.size, "seed": args.seed}
    base["kernel_threads"] = kernel_threads()
    emit({**base, "stage": "threads", **threads_ab(mapping, args)})
    phases: dict[str, float] = {}
    timed_phases({"model": model, "mapping": mapping, "counts": mapping.counts}, phases)

    rng = np.random.default_rng(args.seed)
    x = model.interactions
    active = np.flatnonzero(np.diff(x.indptr) > 0)
    picks = rng.choice(active, size=args.users + 1, replace=False)
    model.forget(users=[int(picks[0])])  # X becomes the model's own copy: not timed
    rows = []
    for user in picks[1:].tolist():
        x = model.interactions
        items = x.indices[x.indptr[user] : x.indptr[user + 1]].astype(np.int64)
        row_entries = int(mapping.counts.row_lengths(items).sum())
        phases.clear()
        start = time.perf_counter()
        model.forget(users=[user])
        rows.append(
            {
                "items": len(items),
                "row_entries": row_entries,
                "ms": round((time.perf_counter() - start) * 1e3, 2),
                **{f"{k}_ms": round(v * 1e3, 2) for k, v in phases.items()},
            }
        )
    ordered = sorted(rows, key=lambda r: -r["ms"])
    for rank, row in enumerate(ordered[: args.top]):
        emit({**base, "stage": "user", "rank": rank, **row})
    emit({**base, "stage": "user", "rank": "median", **ordered[len(ordered) // 2]})
    ms = np.array([r["ms"] for r in rows])
    emit(
        {
            **base,
            "stage": "summary",
            "users": len(rows),
            "forget_p50_ms": round(float(np.percentile(ms, 50)), 2),
            "forget_p99_ms": round(float(np.percentile(ms, 99)), 2),
            "forget_max_ms": round(float(ms.max()), 2),
        }
    )
    emit({**base, "stage": "retrain_split", **retrain_split(model)})
    active = np.flatnonzero(np.diff(model.interactions.indptr) > 0)
    many = rng.choice(active, size=max(1, int(n_users * args.many_share)), replace=False)
    phases.clear()
    start = time.perf_counter()
    model.forget(users=many)
    emit(
        {
            **base,
            "stage": "many",
            "users": len(many),
            "ms": round((time.perf_counter() - start) * 1e3, 1),
            "rows_selected_again": int(mapping.last_recomputed),
            **{f"{k}_ms": round(v * 1e3, 1) for k, v in phases.items()},
        }
    )


def retrain_split(model: IMCorrect) -> dict:
    """Seconds of a retrain's two halves on the model's X: counting G, selecting all rows."""
    x = model.interactions
    start = time.perf_counter()
    counted = Cooccurrence.from_x(x)
    count_s = time.perf_counter() - start
    pairs = counted.nnz
    del counted
    gc.collect()
    mapping = model._mapping
    start = time.perf_counter()
    mapping._recompute(np.arange(mapping.n_items))
    select_s = time.perf_counter() - start
    return {"pairs": int(pairs), "count_s": round(count_s, 2), "select_s": round(select_s, 2)}


if __name__ == "__main__":
    main()
