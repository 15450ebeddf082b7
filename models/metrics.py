"""Full-ranking top-K metrics for leave-one-out evaluation (one held-out item per user).

With a single relevant item, Recall@K equals HR@K and NDCG@K is 1/log2(rank+2) when the item
ranks within the top K (rank counted from 0). Items the user has already seen must be masked
with −inf by the caller before ranking.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target among all items. Ties count against the target
    (every other item scored alike ranks before it), so a model that scores many items the
    same (a constant row, a zero score) cannot win HR by the tie; a NaN target ranks last."""
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    ahead = (scores >= target_scores).sum(axis=1) - 1  # the target ties with itself
    return np.where(np.isnan(target_scores[:, 0]), scores.shape[1] - 1, ahead)


def hit_and_ndcg(ranks: np.ndarray, ks: Iterable[int] = (5, 10, 20)) -> dict[str, float]:
    """HR@K and NDCG@K averaged over users, from 0-based target ranks."""
    out: dict[str, float] = {}
    ranks = np.asarray(ranks)
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        gains = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
        out[f"ndcg@{k}"] = float(gains.mean()) if len(ranks) else 0.0
    return out


def evaluate_scores(
    scores: np.ndarray, targets: np.ndarray, ks: Iterable[int] = (5, 10, 20)
) -> dict[str, float]:
    """HR/NDCG@K for rows of ``scores`` whose ``targets`` are ≥ 0 (others are skipped)."""
    valid = targets >= 0
    return hit_and_ndcg(target_ranks(scores[valid], targets[valid]), ks)
