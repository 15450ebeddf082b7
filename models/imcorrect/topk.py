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


def select_segments(
    owner: np.ndarray, cols: np.ndarray, scores: np.ndarray, n_rows: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`select` for many rows at once, without a Python loop over them.

    ``owner`` (sorted) says which row each candidate belongs to. Returns ``(chosen, bound,
    bound_idx)``: a mask of the top-k candidates of every row and each row's best candidate
    left out ((−inf, PAD) when none is). The choice and bound are those of :func:`select`.
    """
    lengths = np.bincount(owner, minlength=n_rows)
    starts = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    chosen = np.ones(len(owner), dtype=bool)
    long_rows = np.flatnonzero(lengths > k)
    if len(long_rows):
        kth = np.full(n_rows, -np.inf)
        kth[long_rows] = _kth_largest(scores, starts, lengths, long_rows, k)
        at_kth = kth[owner]
        above = scores > at_kth
        tied = np.flatnonzero(scores == at_kth)
        # ties at the k-th score are settled by the lower index: rank them inside each row
        tied = tied[np.lexsort((cols[tied], owner[tied]))]
        t_owner = owner[tied]
        rank = np.arange(len(tied)) - np.searchsorted(t_owner, t_owner)
        need = k - np.bincount(owner[above], minlength=n_rows)
        chosen = above
        chosen[tied[rank < need[t_owner]]] = True  # short rows: every score is above −inf
    bound = np.full(n_rows, -np.inf)
    bound_idx = np.full(n_rows, PAD, dtype=np.int64)
    if len(long_rows):
        left = ~chosen
        nonempty = lengths > 0
        heads = starts[:-1][nonempty]
        bound[nonempty] = np.maximum.reduceat(np.where(left, scores, -np.inf), heads)
        is_best = left & (scores == bound[owner])
        bound_idx[nonempty] = np.minimum.reduceat(np.where(is_best, cols, PAD), heads)
    return chosen, bound, bound_idx


def _kth_largest(
    scores: np.ndarray, starts: np.ndarray, lengths: np.ndarray, rows: np.ndarray, k: int
) -> np.ndarray:
    """k-th largest score of each of ``rows`` (all longer than k).

    One partition per row on a slice: padding rows into blocks for a row-wise partition
    cost more in scattering than the loop costs in calls.
    """
    out = np.empty(len(rows))
    heads, sizes = starts[rows].tolist(), lengths[rows].tolist()
    for q, (lo, length) in enumerate(zip(heads, sizes, strict=True)):
        out[q] = np.partition(scores[lo : lo + length], length - k)[length - k]
    return out
