"""Exact top-k selection with a documented tie rule.

Order: a higher score ranks first; equal scores rank by the lower item index. Under this
order the top-k of a candidate set is unique, so an incrementally maintained list can be
compared with one selected from scratch entry by entry.

Each selection also returns the *bound*: the best (score, index) among the candidates left
out, in the same order ((−inf, PAD) when none are). It lets an update decide without the
whole candidate row whether a list is still exact (see :mod:`models.imcorrect.itemknn_topk`).
"""

from __future__ import annotations

import numpy as np

#: index used for empty slots while sorting (sorts after every real item)
PAD = np.iinfo(np.int64).max


def select(
    cols: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Top-k of one candidate set: ``(indices, scores, bound_score, bound_index)``, best
    first, ``len ≤ k``; the bound is the best candidate left out."""
    if len(cols) <= k:
        order = np.lexsort((cols, -scores))
        return cols[order], scores[order], -np.inf, PAD
    # the k-th largest score splits the candidates; ties at it are settled by index. One
    # partition also places the (k+1)-th largest, the best score left out when no tie spills
    n = len(scores)
    parted = np.partition(scores, (n - k - 1, n - k))
    kth, next_best = parted[n - k], parted[n - k - 1]
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)
    need = k - len(above)
    tied = tied[np.argsort(cols[tied], kind="stable")]
    chosen = np.concatenate([above, tied[:need]])
    order = np.lexsort((cols[chosen], -scores[chosen]))
    chosen = chosen[order]
    if len(tied) > need:
        return cols[chosen], scores[chosen], float(kth), int(cols[tied[need]])
    # exactly k candidates reach the k-th score, so the (k+1)-th largest is below it
    at_best = np.flatnonzero(scores == next_best)
    return cols[chosen], scores[chosen], float(next_best), int(cols[at_best].min())


def padded(slots: np.ndarray) -> np.ndarray:
    """Stored slots (item indices, −1 padding) as int64 with ``PAD`` padding, to sort by."""
    idx = slots.astype(np.int64)
    idx[idx < 0] = PAD
    return idx


def slots(idx: np.ndarray) -> np.ndarray:
    """The inverse of :func:`padded`: int32 item indices with −1 padding, as stored."""
    return np.where(idx == PAD, -1, idx).astype(np.int32)


def sort_rows(idx: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row of a block by the tie rule (empty slots: ``PAD`` / −inf, last)."""
    by_index = np.argsort(idx, axis=1, kind="stable")
    idx = np.take_along_axis(idx, by_index, axis=1)
    val = np.take_along_axis(val, by_index, axis=1)
    by_score = np.argsort(-val, axis=1, kind="stable")
    return np.take_along_axis(idx, by_score, axis=1), np.take_along_axis(val, by_score, axis=1)


def ranks_before(
    score_a: np.ndarray, index_a: np.ndarray, score_b: np.ndarray, index_b: np.ndarray
) -> np.ndarray:
    """True where (score_a, index_a) ranks strictly before (score_b, index_b)."""
    return (score_a > score_b) | ((score_a == score_b) & (index_a < index_b))
