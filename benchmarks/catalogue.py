"""Large catalogues: the sparse itemknn-topk mapping against retraining, same process.

    python -m benchmarks.catalogue [--sizes 10k,25k,50k,100k] [--k 100] [--shrink 10]
                                   [--repeats 50] [--seed 0] [--no-ml1m] [--no-snapshot]
                                   [--scenarios user,users_1pct,popular_item,interactions_100]

For every size a synthetic data set is generated (:mod:`models.synthetic`: Zipf items,
Pareto users, sessions with in-cluster affinity). Holdout: leave-one-out by time, the last
interaction of every user with ≥ 3 is the test item; the rest is X.

Per size, one JSON line for the fit (``scenario: "fit"``: fit time, stored pairs, mapping
memory, resident memory, learn throughput), one per forget scenario (``--scenarios`` picks
them), and then two for the snapshot: the model saved and loaded back both ways the
streaming worker saves it, with the mapping and with X only, whose load refits (bytes,
bytes per stored pair, seconds, and whether the loaded model equals the saved one).
``snapshot_after_forget`` is the first save after the forgets, which merges the counts'
two parts first; ``snapshot`` the next one, which does not. They come last because loading
two more models and writing gigabytes slowed the forgets timed after them (one-user p99
132 ms against 72 ms without, on 100k items). ``--no-snapshot`` skips them. The scenarios:

  user              ``--repeats`` single users forgotten one call each (p50/p99 over calls)
  users_1pct        1 % of the users in one call
  popular_item      the 3 most popular items, one call each
  interactions_100  5 calls of 100 random interactions each

After each scenario the model is compared with ``IMCorrect.fit`` on the retained data
(tracked independently of the model): ``retrain_s``, ``speedup`` = retrain_s / forget_p50,
``max_abs_diff`` = max |M_forget − M_retrain| over the sparse M, ``same_topk`` (identical
neighbour lists), and Recall@20 / NDCG@20 of both on a sample of remaining users (full
ranking, seen items masked).

Learn throughput: the events of ``--stream-users`` users held out of the fit are learned in
time order, in micro-batches of ``--batch`` events.

The periodic residual check is switched off while timing (``check_every`` huge): for binary
data the counts are integers and exact; it runs once at the end and its value is reported.

``--ml1m`` (default on) also prints Recall@20 / NDCG@20 on ML-1M for EASE, the dense
ItemKNN and itemknn-topk at several k, and the max abs diff of k = n against the dense one.
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from benchmarks.common import emit, log
from models.imcorrect import IMCorrect
from models.imcorrect.topk_rows import kernel_threads
from models.metrics import evaluate_scores
from models.synthetic import SyntheticConfig, generate

SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2_000, 20_000, 300_000),
    "10k": (10_000, 100_000, 2_000_000),
    "25k": (25_000, 250_000, 5_000_000),
    "50k": (50_000, 500_000, 10_000_000),
    "100k": (100_000, 1_000_000, 20_000_000),
}
NO_CHECK = 10**12
SCENARIOS = ("user", "users_1pct", "popular_item", "interactions_100")


def rss_gb() -> float:
    """Resident memory of this process now (GB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def holdout(
    users: np.ndarray, items: np.ndarray, ts: np.ndarray, shape: tuple[int, int]
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Leave-one-out by time: (X without each user's last item, test item or -1)."""
    order = np.lexsort((ts, users))
    users, items = users[order], items[order]
    counts = np.bincount(users, minlength=shape[0])
    last = np.cumsum(counts) - 1
    has_test = counts >= 3
    targets = np.full(shape[0], -1, dtype=np.int64)
    targets[has_test] = items[last[has_test]]
    keep = np.ones(len(users), dtype=bool)
    keep[last[has_test]] = False
    x = sp.csr_matrix((np.ones(keep.sum()), (users[keep], items[keep])), shape=shape)
    x.data[:] = 1.0
    return x, targets


def fitted_on_catalogue(size: str, k: int = 100) -> IMCorrect:
    """itemknn-topk fitted on all users of the generated catalogue ``size`` (each user's last
    item held out, as here), for the diagnostics that profile it."""
    n_items, n_users, n_inter = SIZES[size]
    data = generate(SyntheticConfig(n_items, n_users, n_inter, seed=0))
    x, _ = holdout(data.users, data.items, data.ts, (n_users, n_items))
    del data
    gc.collect()
    model = IMCorrect("itemknn-topk", check_every=NO_CHECK, refit_rank_ratio=np.inf, k=k)
    model.fit(x)
    return model


def utility(model: IMCorrect, users: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Recall@20 (= HR@20 with one test item) and NDCG@20 over ``users``."""
    out, weights = {"recall@20": [], "ndcg@20": []}, []
    for start in range(0, len(users), 256):
        chunk = users[start : start + 256]
        m = evaluate_scores(model.score(chunk), targets[chunk], ks=(20,))
        out["recall@20"].append(m["hr@20"])
        out["ndcg@20"].append(m["ndcg@20"])
        weights.append(int((targets[chunk] >= 0).sum()))
    return {k: round(float(np.average(v, weights=weights)), 6) for k, v in out.items()}


def compare(model: IMCorrect, fresh: IMCorrect) -> dict[str, object]:
    diff = abs(model.mapping - fresh.mapping).tocoo()
    mine, theirs = model._mapping, fresh._mapping
    if diff.nnz and diff.data.max() > 1e-9:  # say where, to debug from the log
        at = int(np.argmax(diff.data))
        j, c = int(diff.row[at]), int(diff.col[at])
        pair = (np.array([j]), np.array([c]))
        log(
            f"mismatch at ({j}, {c}): M {model.mapping[j, c]} vs {fresh.mapping[j, c]}, "
            f"G {mine.counts.get(*pair)} vs {theirs.counts.get(*pair)}, "
            f"d_j {mine.degree[j]} vs {theirs.degree[j]}, d_c {mine.degree[c]} vs "
            f"{theirs.degree[c]}, rows differing {len(np.unique(diff.row[diff.data > 1e-9]))}"
        )
    return {
        "max_abs_diff": float(diff.data.max()) if diff.nnz else 0.0,
        "degree_max_diff": float(np.max(np.abs(mine.degree - theirs.degree), initial=0.0)),
        "same_topk": bool(
            np.array_equal(model._mapping.neighbours()[0], fresh._mapping.neighbours()[0])
        ),
        "x_equal": bool((model.interactions != fresh.interactions).nnz == 0),
    }


def snapshot_round_trip(
    model: IMCorrect, folder: str | None, scenario: str = "snapshot"
) -> dict[str, object]:
    """Save the model and load it back, both ways the streaming worker does: with the
    mapping (its periodic snapshot) and with X only (a receipt's snapshot, whose load
    refits the mapping). Sizes, times, and whether the loaded model equals the saved one.
    ``merges``: a count fell to 0 since the counts' last merge (after a forget), so this
    save merges their two parts first."""
    counts = model._mapping.counts
    record: dict[str, object] = {"scenario": scenario, "pairs": int(counts.nnz)}
    record["merges"] = bool(counts.zeros)
    with tempfile.TemporaryDirectory(dir=folder, prefix="lethe-catalogue-") as tmp:
        for label, with_mapping in (("mapping", True), ("x_only", False)):
            path = Path(tmp) / label
            _, save_s = _timed(lambda path=path, w=with_mapping: model.save(path, with_mapping=w))
            size = sum(f.stat().st_size for f in Path(tmp).glob(f"{label}.*"))
            loaded, load_s = _timed(lambda path=path: IMCorrect.load(path))
            same = compare(model, loaded)
            record.update(
                {
                    f"{label}_save_s": round(save_s, 2),
                    f"{label}_bytes": size,
                    f"{label}_bytes_per_pair": round(size / max(record["pairs"], 1), 2),
                    f"{label}_load_s": round(load_s, 2),
                    f"{label}_max_abs_diff": same["max_abs_diff"],
                    f"{label}_same_topk": same["same_topk"],
                    f"{label}_x_equal": same["x_equal"],
                }
            )
            del loaded
            gc.collect()
            for f in Path(tmp).glob(f"{label}.*"):
                f.unlink()  # one copy on disk at a time
    record["rss_gb"] = round(rss_gb(), 3)
    record["peak_rss_gb"] = round(peak_rss_gb(), 3)
    return record


class Retained:
    """The retained interaction matrix, kept apart from the model (plain sparse algebra)."""

    def __init__(self, x: sp.csr_matrix) -> None:
        self.x = x.copy()

    def drop_users(self, users: np.ndarray) -> None:
        keep = np.ones(self.x.shape[0])
        keep[users] = 0.0
        self.x = (sp.diags(keep) @ self.x).tocsr()
        self.x.eliminate_zeros()

    def drop_items(self, items: np.ndarray) -> None:
        keep = np.ones(self.x.shape[1])
        keep[items] = 0.0
        self.x = (self.x @ sp.diags(keep)).tocsr()
        self.x.eliminate_zeros()

    def drop_pairs(self, rows: np.ndarray, cols: np.ndarray) -> None:
        values = np.asarray(self.x[rows, cols]).ravel()
        removed = sp.csr_matrix((values, (rows, cols)), shape=self.x.shape)
        self.x = (self.x - removed).tocsr()
        self.x.eliminate_zeros()


def _percentiles(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1e3
    return {
        "forget_p50_ms": round(float(np.percentile(ms, 50)), 3),
        "forget_p99_ms": round(float(np.percentile(ms, 99)), 3),
        "forget_mean_ms": round(float(ms.mean()), 3),
        "calls": len(ms),
    }


def run_size(name: str, args: argparse.Namespace) -> None:
    n_items, n_users, n_inter = SIZES[name]
    params = {"k": args.k, "shrink": args.shrink}
    rng = np.random.default_rng(args.seed)
    data, gen_s = _timed(lambda: generate(SyntheticConfig(n_items, n_users, n_inter, seed=0)))
    x_all, targets = holdout(data.users, data.items, data.ts, (n_users, n_items))
    base = {
        "bench": "catalogue",
        "size": name,
        "items": n_items,
        "users": n_users,
        "interactions": int(data.n_interactions),
        "k": args.k,
        "shrink": args.shrink,
        "seed": args.seed,  # which users, items and interactions are forgotten and evaluated
        "kernel_threads": kernel_threads(),
    }
    log(f"{name}: generated {data.n_interactions:,} interactions in {gen_s:.1f} s")

    # users whose events arrive as a stream after the fit
    stream_users = rng.choice(n_users, size=min(args.stream_users, n_users // 10), replace=False)
    mask = np.ones(n_users)
    mask[stream_users] = 0.0
    x_fit = (sp.diags(mask) @ x_all).tocsr()
    x_fit.eliminate_zeros()
    stream = x_all[stream_users].tocoo()
    del data, x_all  # only the model's X and the independently tracked one stay alive
    gc.collect()

    model = IMCorrect("itemknn-topk", check_every=NO_CHECK, refit_rank_ratio=np.inf, **params)
    _, fit_s = _timed(lambda: model.fit(x_fit))
    fit_rss = rss_gb()
    log(f"{name}: fit {fit_s:.1f} s, {model.gram.nnz:,} pairs, rss {fit_rss:.2f} GB")

    ev_users = stream_users[stream.row]
    ev_items = stream.col
    order = rng.permutation(len(ev_users))  # arrival order across the stream users
    ev_users, ev_items = ev_users[order], ev_items[order]
    n_events = min(len(ev_users), args.batch * args.batches)
    learn_times = []
    for start in range(0, n_events, args.batch):
        sl = slice(start, min(start + args.batch, n_events))
        _, s = _timed(lambda sl=sl: model.learn(ev_users[sl], ev_items[sl]))
        learn_times.append(s)
    retained = Retained(x_fit)
    if n_events:
        learned = sp.csr_matrix(
            (np.ones(n_events), (ev_users[:n_events], ev_items[:n_events])), shape=x_fit.shape
        )
        learned.data[:] = 1.0
        retained.x = (retained.x + learned).tocsr()
        retained.x.data[:] = 1.0
    mapping = model._mapping
    emit(
        {
            **base,
            "scenario": "fit",
            "generate_s": round(gen_s, 2),
            "fit_s": round(fit_s, 2),
            "pairs": int(model._mapping.counts.nnz),  # .gram would compact (a second copy)
            "mapping_gb": round(mapping.memory_bytes() / 1e9, 3),
            "dense_n2_gb": round(8 * n_items**2 / 1e9, 1),
            "rss_gb": round(fit_rss, 3),
            "learn_events": int(n_events),
            "learn_batch": args.batch,
            "learn_events_per_s": round(n_events / max(sum(learn_times), 1e-9), 1),
            "learn_batch_p50_ms": round(float(np.median(learn_times)) * 1e3, 2)
            if learn_times
            else None,
            "learn_batch_p99_ms": round(float(np.percentile(learn_times, 99)) * 1e3, 2)
            if learn_times
            else None,
        }
    )

    forgotten_users: set[int] = set()
    eval_pool = np.flatnonzero(targets >= 0)
    scenarios: list[tuple[str, Callable[[], tuple[list[float], int]]]] = []

    def one_user() -> tuple[list[float], int]:
        active = np.flatnonzero(np.diff(model.interactions.indptr) > 0)
        picks = rng.choice(active, size=args.repeats, replace=False)
        times = []
        for u in picks.tolist():
            _, s = _timed(lambda u=u: model.forget(users=[u]))
            times.append(s)
        retained.drop_users(picks)
        forgotten_users.update(picks.tolist())
        return times, len(picks)

    def users_1pct() -> tuple[list[float], int]:
        active = np.flatnonzero(np.diff(model.interactions.indptr) > 0)
        picks = rng.choice(active, size=max(1, n_users // 100), replace=False)
        _, s = _timed(lambda: model.forget(users=picks))
        retained.drop_users(picks)
        forgotten_users.update(picks.tolist())
        return [s], len(picks)

    def popular_item() -> tuple[list[float], int]:
        popularity = np.asarray(model.interactions.sum(axis=0)).ravel()
        picks = np.argsort(-popularity, kind="stable")[:3]
        times = []
        for i in picks.tolist():
            _, s = _timed(lambda i=i: model.forget(items=[i]))
            times.append(s)
        retained.drop_items(picks)
        return times, len(picks)

    def interactions_100() -> tuple[list[float], int]:
        times, total = [], 0
        for _ in range(5):
            rows, cols = model.interactions.nonzero()
            pick = rng.choice(len(rows), size=100, replace=False)
            pairs = list(zip(rows[pick].tolist(), cols[pick].tolist(), strict=True))
            _, s = _timed(lambda pairs=pairs: model.forget(interactions=pairs))
            times.append(s)
            retained.drop_pairs(rows[pick], cols[pick])
            total += len(pairs)
        return times, total

    scenarios = [
        ("user", one_user),
        ("users_1pct", users_1pct),
        ("popular_item", popular_item),
        ("interactions_100", interactions_100),
    ]
    ran = False
    for scenario in scenarios:
        label, fn = scenario
        if label not in args.scenarios:
            continue
        ran = True
        times, n_forgotten = fn()
        rss_now = rss_gb()
        fresh, retrain_s = _timed(
            lambda: IMCorrect("itemknn-topk", check_every=NO_CHECK, **params).fit(retained.x)
        )
        fresh.forgotten_items = model.forgotten_items.copy()  # same catalogue for ranking
        eval_users = np.setdiff1d(eval_pool, np.fromiter(forgotten_users, dtype=np.int64))
        eval_users = rng.choice(
            eval_users, size=min(args.eval_users, len(eval_users)), replace=False
        )
        after, again = utility(model, eval_users, targets), utility(fresh, eval_users, targets)
        stats = _percentiles(times)
        record = {
            **base,
            "scenario": label,
            "n_forgotten": n_forgotten,
            **stats,
            "retrain_s": round(retrain_s, 3),
            "speedup": round(retrain_s / (stats["forget_p50_ms"] / 1e3), 1),
            "speedup_p99": round(retrain_s / (stats["forget_p99_ms"] / 1e3), 1),
            **compare(model, fresh),
            "recall@20_after": after["recall@20"],
            "recall@20_retrain": again["recall@20"],
            "ndcg@20_after": after["ndcg@20"],
            "ndcg@20_retrain": again["ndcg@20"],
            "eval_users": len(eval_users),
            "rss_gb": round(rss_now, 3),
            "peak_rss_gb": round(peak_rss_gb(), 3),
        }
        del fresh
        gc.collect()
        if label == "interactions_100":
            _, drift_s = _timed(model.check_drift)
            record.update(drift=model.last_drift, drift_check_s=round(drift_s, 2))
        emit(record)
    if args.snapshot:
        if ran:
            # after forgets the first save merges the counts (no 0 may reach a file)
            after = snapshot_round_trip(model, args.snapshot_dir, "snapshot_after_forget")
            emit({**base, **after})
        emit({**base, **snapshot_round_trip(model, args.snapshot_dir)})


def run_ml1m(args: argparse.Namespace) -> None:
    from models.datasets import DatasetUnavailable, leave_one_out, load

    try:
        split = leave_one_out(load("ml-1m"))
    except DatasetUnavailable as exc:
        log(f"ml-1m skipped: {exc}")
        return
    x, targets = split.test_history_matrix(), split.test_target
    users = np.flatnonzero(targets >= 0)
    n = x.shape[1]
    dense_knn = None
    configs = [("ease", {"l2": 500.0}), ("itemknn", {"shrink": args.shrink})]
    configs += [("itemknn-topk", {"k": k, "shrink": args.shrink}) for k in (20, 50, 100, 200, n)]
    for mapping, params in configs:
        model, fit_s = _timed(
            lambda mapping=mapping, params=params: IMCorrect(mapping, **params).fit(x)
        )
        record = {
            "bench": "catalogue",
            "dataset": "ml-1m",
            "scenario": "accuracy",
            "mapping": mapping,
            **params,
            "fit_s": round(fit_s, 3),
            **utility(model, users, targets),
        }
        if mapping == "itemknn":
            dense_knn = model
        elif mapping == "itemknn-topk" and params["k"] == n and dense_knn is not None:
            record["max_abs_diff_vs_dense_itemknn"] = float(
                np.max(np.abs(model.mapping.toarray() - dense_knn.mapping))
            )
        emit(record)
        del model
        gc.collect()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,25k,50k,100k")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--shrink", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--stream-users", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--eval-users", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ml1m", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="forget scenarios to run, comma-separated (the users, items and interactions "
        "a scenario draws depend on those run before it)",
    )
    parser.add_argument(
        "--snapshot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="save and load the fitted model both ways the worker does (scenario snapshot)",
    )
    parser.add_argument("--snapshot-dir", default=None, help="where (default: the temp folder)")
    args = parser.parse_args(argv)
    args.scenarios = set(filter(None, args.scenarios.split(",")))
    unknown = args.scenarios - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    if args.ml1m:
        run_ml1m(args)
    for name in filter(None, args.sizes.split(",")):
        if name not in SIZES:
            raise SystemExit(f"unknown size {name!r}: choose from {', '.join(SIZES)}")
        run_size(name, args)
        gc.collect()


if __name__ == "__main__":
    main()
