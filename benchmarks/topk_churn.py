"""How much of itemknn-topk's lists a forget of many users changes, and how much of that a
deeper reserve could settle without selecting rows again.

    python -m benchmarks.topk_churn [--size 100k] [--share 0.01] [--sample-rows 2000] [--seed 0]

Fits the mapping (k = 100) on the synthetic catalogue of ``benchmarks.catalogue``, forgets
``--share`` of the users in one call, and compares every item's list before and after
(``stage: "lists"``: rows whose set of neighbours changed, members swapped per row). Forgetting
that many users changes most items' degrees, so the mapping selects those rows again from
all their candidates; that pass is most of the forget.

A row could instead be settled from a reserve of its next ``R`` candidates if (a) its new
list lies within the old top ``k + R`` and (b) a bound proves that no candidate past the old
top ``k + R`` now outranks the new k-th score. Forgetting only lowers counts, so a candidate
j's new score is at most its old score times sqrt(d_i/d_i') sqrt(d_j/d_j'). For rows drawn
at random (``--sample-rows``), the old and new scores are read off the counts, and
``stage: "reserve"`` gives, per depth R, the share of rows meeting (a), the share provable
with each candidate's own degree ratio (a pass over the row: an upper bound on what any
scan-free rule built on degree ratios could prove), and the share provable with the
largest degree ratio of all items (a rule that needs no pass over the row).

``stage: "split"`` measures a rule between the two: items whose degree ratio exceeds ``r0``
(``--split-ratios``; mostly rare items, whose rows are short) are few, and their own rows
(G is symmetric) name every list they could enter, so they can be scored exactly; every
other candidate past the reserve is bounded by its old score times r0 and the row's own
ratio. Per (R, r0): the share of sampled rows that rule proves, how many items exceed r0,
and the share of all stored pairs their rows hold (what scoring them exactly would read).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.catalogue import SIZES, fitted_on_catalogue
from benchmarks.common import emit
from models.imcorrect.itemknn_topk import ItemKNNTopK

DEPTHS = (4, 16, 64, 256, 1024)
SPLIT_DEPTHS = (4, 16, 64)


def row_scores(mapping: ItemKNNTopK, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each item i of ``rows``: its candidates j (sharing a user, j ≠ i) and their scores
    s_ij, read off the mapping's counts by its own score expression (the catalogue's shrink
    is 0, so s_ij = G_ij / (√d_i √d_j))."""
    out = []
    for chunk, owner, cols, vals in mapping._chunk_rows(rows):
        scores = mapping._score(vals, mapping.degree[chunk[owner]], mapping.degree[cols])
        bounds = np.searchsorted(owner, np.arange(len(chunk) + 1))
        out += [
            (cols[lo:hi].astype(np.int64), scores[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    return out


def ranked(cand: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Candidates in the mapping's order: higher score first, then lower index."""
    return cand[np.lexsort((cand, -scores))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="100k", choices=sorted(SIZES))
    parser.add_argument("--share", type=float, default=0.01, help="share of users forgotten")
    parser.add_argument("--sample-rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--split-ratios", default="1.005,1.01,1.02,1.05", help="comma-separated r0 values"
    )
    args = parser.parse_args(argv)
    split_ratios = [float(v) for v in args.split_ratios.split(",") if v]

    n_items, n_users, _ = SIZES[args.size]
    model = fitted_on_catalogue(args.size, args.k)
    mapping = model._mapping
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(n_items, size=min(args.sample_rows, n_items), replace=False))
    old = row_scores(mapping, sample)
    degree_old = mapping.degree.copy()
    before = np.sort(mapping.nbr_idx, axis=1)

    active = np.flatnonzero(np.diff(model.interactions.indptr) > 0)
    picks = rng.choice(active, size=max(1, int(n_users * args.share)), replace=False)
    model.forget(users=picks)
    degree_new = mapping.degree
    after = np.sort(mapping.nbr_idx, axis=1)

    listed = (before >= 0).any(axis=1)
    changed = (before != after).any(axis=1) & listed
    swapped = np.array(
        [len(np.setdiff1d(a[a >= 0], b[b >= 0])) for a, b in zip(after, before, strict=True)]
    )[listed]
    base = {
        "bench": "topk_churn",
        "size": args.size,
        "k": args.k,
        "seed": args.seed,
        "users_forgotten": len(picks),
    }
    emit(
        {
            **base,
            "stage": "lists",
            "rows": int(listed.sum()),
            "degree_changed_share": round(float((degree_new != degree_old).mean()), 4),
            "set_changed_share": round(float(changed.sum() / listed.sum()), 4),
            "swapped_mean": round(float(swapped.mean()), 2),
            "swapped_p50": float(np.percentile(swapped, 50)),
            "swapped_p99": float(np.percentile(swapped, 99)),
        }
    )

    # the largest degree ratio of all items still in some pair: what a pass-free bound gets
    alive = degree_new > 0
    global_ratio = float(np.sqrt((degree_old[alive] / degree_new[alive]).max()))
    new = row_scores(mapping, sample)
    depth = np.zeros(len(sample), dtype=np.int64)
    provable_own = {r: 0 for r in DEPTHS}
    provable_global = {r: 0 for r in DEPTHS}
    ratio_all = np.ones(n_items)
    ratio_all[alive] = np.sqrt(degree_old[alive] / degree_new[alive])
    provable_split = {(r, r0): 0 for r in SPLIT_DEPTHS for r0 in split_ratios}
    rows_used = 0
    for i, (cand_o, score_o), (cand_n, score_n) in zip(sample.tolist(), old, new, strict=True):
        if len(cand_n) == 0 or degree_new[i] == 0:
            continue
        rows_used += 1
        order_old = ranked(cand_o, score_o)
        rank_old = np.empty(n_items, dtype=np.int64)
        rank_old[order_old] = np.arange(len(order_old))
        new_list = ranked(cand_n, score_n)[: args.k]
        kth_new = np.sort(score_n)[::-1][min(args.k, len(score_n)) - 1]
        depth[rows_used - 1] = int(rank_old[new_list].max()) + 1
        # each old candidate's score and its own degree ratio, in old rank order
        by_rank = np.empty(len(order_old))
        by_rank[rank_old[cand_o]] = score_o
        # an item left in no pair scores 0 now
        live = cand_o[degree_new[cand_o] > 0]
        ratio_j = np.zeros(len(order_old))
        ratio_j[rank_old[live]] = np.sqrt(degree_old[live] / degree_new[live])
        ratio_i = np.sqrt(degree_old[i] / degree_new[i])
        for r in DEPTHS:
            past = slice(args.k + r, None)
            if by_rank[past].size == 0:
                provable_own[r] += 1
                provable_global[r] += 1
                continue
            if (by_rank[past] * ratio_j[past]).max() * ratio_i < kth_new:
                provable_own[r] += 1
            if by_rank[past].max() * ratio_i * global_ratio < kth_new:
                provable_global[r] += 1
            if r not in SPLIT_DEPTHS:
                continue
            past_ratio = ratio_all[order_old[past]]
            for r0 in split_ratios:
                bounded = by_rank[past][past_ratio <= r0]  # the rest are scored exactly
                if bounded.size == 0 or bounded.max() * ratio_i * r0 < kth_new:
                    provable_split[r, r0] += 1
    depth = depth[:rows_used]
    for r in DEPTHS:
        emit(
            {
                **base,
                "stage": "reserve",
                "reserve": r,
                "rows_sampled": rows_used,
                "within_reserve_share": round(float((depth <= args.k + r).mean()), 4),
                "provable_own_ratio_share": round(provable_own[r] / rows_used, 4),
                "provable_global_ratio_share": round(provable_global[r] / rows_used, 4),
                "global_ratio": round(global_ratio, 3),
            }
        )
    lengths = mapping.counts.row_lengths(np.arange(n_items))
    for r0 in split_ratios:
        high = np.flatnonzero(alive & (ratio_all > r0))
        for r in SPLIT_DEPTHS:
            emit(
                {
                    **base,
                    "stage": "split",
                    "reserve": r,
                    "r0": r0,
                    "rows_sampled": rows_used,
                    "provable_split_share": round(provable_split[r, r0] / rows_used, 4),
                    "high_ratio_items": len(high),
                    "high_ratio_pair_share": round(
                        float(lengths[high].sum() / max(mapping.counts.nnz, 1)), 4
                    ),
                }
            )


if __name__ == "__main__":
    main()
