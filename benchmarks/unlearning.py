"""Unlearning benchmark: IMCorrect corrections vs retraining and two peers, same process.

    python -m benchmarks.unlearning [--dataset ml-100k|ml-1m] [--mapping ease|itemknn|gfcf]
                                    [--scenario NAME] [--seed 0]

Holdout: leave-one-out by time. For every user with ≥ 3 interactions the last interaction is
the test item; everything before it is training data (implicit: seen = 1). Utility is
Recall@20 / NDCG@20 with full ranking over all items, seen items masked, over the users that
remain after forgetting.

For each scenario one JSON line reports:
  retrain_s        IMCorrect.fit from scratch on the retained data (Gram + factorisation)
  correct_s        IMCorrect.forget: interaction- and mapping-matrix corrections
  Both leave the model ready to score (EASE scores straight from P); materialising the
  dense item×item M for inspection is an O(n²) view, timed apart as materialise_s.
  max_abs_diff     |M_corrected − M_retrain|_max
  interaction_only_*  X corrected, mapping left stale
  sisa_*           EASE on 8 user shards, only the touched shards retrained
Poisoning also reports the target item's exposure (share of real users' top-20 lists).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from benchmarks.common import emit, log
from models.datasets import leave_one_out, load
from models.imcorrect import IMCorrect
from models.imcorrect.sisa import ShardedEASE
from models.metrics import evaluate_scores

SCENARIOS = (
    "one-user",
    "users-1pct",
    "users-5pct",
    "interactions-100",
    "popular-item",
    "poisoning",
)
L2 = {"ml-100k": 200.0, "ml-1m": 500.0}


def _params(mapping: str, dataset: str) -> dict[str, float]:
    return (
        {"l2": L2[dataset]}
        if mapping == "ease"
        else ({"shrink": 10.0} if mapping == "itemknn" else {})
    )


def _utility(score: Callable[[np.ndarray], np.ndarray], users: np.ndarray, targets: np.ndarray):
    out = {"recall@20": [], "ndcg@20": []}
    weights = []
    for start in range(0, len(users), 2048):
        chunk = users[start : start + 2048]
        m = evaluate_scores(score(chunk), targets[chunk], ks=(20,))
        out["recall@20"].append(m["hr@20"])
        out["ndcg@20"].append(m["ndcg@20"])
        weights.append(int((targets[chunk] >= 0).sum()))  # the rows evaluate_scores averages
    if not sum(weights):
        return {k: 0.0 for k in out}
    return {k: float(np.average(v, weights=weights)) for k, v in out.items()}


def _exposure(score, users: np.ndarray, item: int) -> float:
    hits = 0
    for start in range(0, len(users), 2048):
        s = score(users[start : start + 2048])
        top = np.argpartition(-s, 19, axis=1)[:, :20]
        hits += int((top == item).any(axis=1).sum())
    return hits / len(users)


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _forget_set(scenario: str, x: sp.csr_matrix, rng: np.random.Generator) -> dict:
    active = np.flatnonzero(np.diff(x.indptr) > 0)
    if scenario == "one-user":
        return {"users": rng.choice(active, 1, replace=False)}
    if scenario in ("users-1pct", "users-5pct"):
        share = 0.01 if scenario == "users-1pct" else 0.05
        return {"users": rng.choice(active, max(1, round(share * x.shape[0])), replace=False)}
    if scenario == "interactions-100":
        rows, cols = x.nonzero()
        pick = rng.choice(len(rows), 100, replace=False)
        return {"interactions": list(zip(rows[pick].tolist(), cols[pick].tolist(), strict=True))}
    if scenario == "popular-item":
        return {"items": np.array([int(np.argmax(np.asarray(x.sum(axis=0)).ravel()))])}
    raise ValueError(scenario)


def _retained(x: sp.csr_matrix, forget: dict) -> sp.csr_matrix:
    keep = x.tolil()
    for u in forget.get("users", []):
        keep.rows[u], keep.data[u] = [], []
    for u, i in forget.get("interactions", []):
        keep[u, i] = 0
    items = forget.get("items", [])
    if len(items):
        keep[:, items] = 0
    out = sp.csr_matrix(keep)
    out.eliminate_zeros()
    return out


def _poison(x: sp.csr_matrix, rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray, int]:
    """Append fake users (5% of users) who all pair one unpopular item with the 5 most
    popular ones, the classic push attack on item-item models."""
    pop = np.asarray(x.sum(axis=0)).ravel()
    candidates = np.flatnonzero((pop >= 5) & (pop <= np.percentile(pop[pop > 0], 40)))
    target = int(rng.choice(candidates))
    n_fake = max(5, round(0.05 * x.shape[0]))
    popular = np.argsort(-pop)[:5]
    fake_rows = np.repeat(np.arange(n_fake), len(popular) + 1)
    fake_cols = np.tile(np.append(popular, target), n_fake)
    fakes = sp.csr_matrix(
        (np.ones(len(fake_rows)), (fake_rows, fake_cols)), shape=(n_fake, x.shape[1])
    )
    fake_ids = np.arange(x.shape[0], x.shape[0] + n_fake)
    return sp.vstack([x, fakes], format="csr"), fake_ids, target


def run(dataset: str, mapping: str, scenarios: list[str], seed: int) -> None:
    split = leave_one_out(load(dataset))
    x = split.test_history_matrix()
    targets_all = split.test_target
    params = _params(mapping, dataset)
    log(f"{dataset}: {x.shape[0]} users × {x.shape[1]} items, {x.nnz} training interactions")
    base, fit_s = _timed(lambda: IMCorrect(mapping, **params).fit(x))
    sisa_base = ShardedEASE(8, l2=L2[dataset], seed=seed).fit(x) if mapping == "ease" else None

    for scenario in scenarios:
        rng = np.random.default_rng(seed)
        record: dict = {"dataset": dataset, "mapping": mapping, "scenario": scenario, "seed": seed}
        if scenario == "poisoning":
            xp, fake_ids, target = _poison(x, rng)
            forget = {"users": fake_ids}
            start_model = IMCorrect(mapping, **params).fit(x)
            clean_exposure = _exposure(start_model.score, np.arange(x.shape[0]), target)
            start_model.learn(*_rows_of(xp, fake_ids))
            x_start = xp
            targets = np.concatenate([targets_all, -np.ones(len(fake_ids), dtype=np.int64)])
            record.update(target_item=target, n_fake_users=len(fake_ids))
        else:
            forget = _forget_set(scenario, x, rng)
            start_model = copy.deepcopy(base)
            x_start = x
            targets = targets_all
        n_users_eval = np.setdiff1d(np.arange(x.shape[0]), forget.get("users", []))
        before = _utility(start_model.score, n_users_eval, targets)
        if scenario == "poisoning":
            attacked_exposure = _exposure(start_model.score, np.arange(x.shape[0]), target)

        io_model = copy.deepcopy(start_model)
        io_model.correct_mapping = False

        _, correct_s = _timed(lambda model=start_model, forget=forget: model.forget(**forget))
        _, materialise_s = _timed(lambda model=start_model: model.mapping)
        retained = _retained(x_start, forget)
        fresh, retrain_s = _timed(lambda retained=retained: _refit(mapping, params, retained))
        after = _utility(start_model.score, n_users_eval, targets)
        retrain_u = _utility(fresh.score, n_users_eval, targets)
        _, io_s = _timed(lambda io_model=io_model, forget=forget: io_model.forget(**forget))
        io_u = _utility(io_model.score, n_users_eval, targets)
        n_forgotten = _count(forget)
        record.update(
            n_forgotten=n_forgotten,
            fit_s=round(fit_s, 4),
            retrain_s=round(retrain_s, 4),
            correct_s=round(correct_s, 4),
            materialise_s=round(materialise_s, 4),
            speedup=round(retrain_s / correct_s, 2),
            max_abs_diff=float(np.max(np.abs(start_model.mapping - fresh.mapping))),
            **{"recall@20_before": round(before["recall@20"], 6)},
            **{"recall@20_after": round(after["recall@20"], 6)},
            **{"recall@20_retrain": round(retrain_u["recall@20"], 6)},
            **{"ndcg@20_after": round(after["ndcg@20"], 6)},
            **{"ndcg@20_retrain": round(retrain_u["ndcg@20"], 6)},
            interaction_only_s=round(io_s, 4),
            **{"interaction_only_recall@20": round(io_u["recall@20"], 6)},
            **{"interaction_only_ndcg@20": round(io_u["ndcg@20"], 6)},
            interaction_only_max_abs_diff=float(np.max(np.abs(io_model.mapping - fresh.mapping))),
        )
        if mapping == "ease":
            sisa = (
                ShardedEASE(8, l2=L2[dataset], seed=seed).fit(x_start)
                if scenario == "poisoning"
                else copy.deepcopy(sisa_base)
            )
            shards, sisa_s = _timed(lambda sisa=sisa, forget=forget: sisa.forget(**forget))
            sisa_mapping = sisa.mapping
            sisa_u = _utility(
                lambda u, s=sisa, m=sisa_mapping, f=forget: _mask_items(s.score(u, m), f),
                n_users_eval,
                targets,
            )
            record.update(
                sisa_s=round(sisa_s, 4),
                sisa_shards_retrained=len(shards),
                **{"sisa_recall@20": round(sisa_u["recall@20"], 6)},
                **{"sisa_ndcg@20": round(sisa_u["ndcg@20"], 6)},
            )
        if scenario == "poisoning":
            record.update(
                exposure_clean=round(clean_exposure, 6),
                exposure_attacked=round(attacked_exposure, 6),
                exposure_after_forget=round(
                    _exposure(start_model.score, np.arange(x.shape[0]), target), 6
                ),
                exposure_interaction_only=round(
                    _exposure(io_model.score, np.arange(x.shape[0]), target), 6
                ),
            )
        emit(record)


def _rows_of(x: sp.csr_matrix, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sub = x[users].tocoo()
    return users[sub.row], sub.col


def _mask_items(scores: np.ndarray, forget: dict) -> np.ndarray:
    items = forget.get("items", [])
    if len(items):
        scores[:, items] = -np.inf
    return scores


def _refit(mapping: str, params: dict, x: sp.csr_matrix) -> IMCorrect:
    return IMCorrect(mapping, **params).fit(x)


def _count(forget: dict) -> int:
    return (
        len(forget.get("users", []))
        + len(forget.get("items", []))
        + len(forget.get("interactions", []))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["ml-100k", "ml-1m"], default="ml-100k")
    parser.add_argument("--mapping", choices=["ease", "itemknn", "gfcf", "all"], default="all")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mappings = ["ease", "itemknn", "gfcf"] if args.mapping == "all" else [args.mapping]
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for mapping in mappings:
        run(args.dataset, mapping, scenarios, args.seed)


if __name__ == "__main__":
    main()
