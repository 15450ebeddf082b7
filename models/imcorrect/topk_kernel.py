"""Compiled row selection for :mod:`.itemknn_topk`: one pass over each sparse row.

Selecting a row's top-k in numpy takes a dozen passes over arrays of the row's length
(gather the entries, mask zeros and the diagonal, score, partition, compare, ...). The rows
of a forgotten user's items hold millions of entries on a 100k-item catalogue, and those
passes were most of a one-user forget. Here each entry is read once: it is scored with the
same expression as :meth:`.ItemKNNTopK._score` (the same IEEE operations in the same
order, so the same bits), pushed through a k-slot heap ordered by the tie rule of
:mod:`.topk`, and, when asked, reported as a moved score reaching a neighbour's floor.

The numpy selection (:func:`.topk.select`, used by ``drift``) stays as the independent
reference the kernel is tested against.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import literal_unroll

from models.imcorrect.cooccurrence import add_found, find, integral, lower_bound
from models.imcorrect.jit import njit
from models.imcorrect.sparse_rows import drop_entries_in_place
from models.imcorrect.topk import PAD

_PAD = PAD  # a global constant for the compiled code


@njit(inline="always")
def _before(sa: float, ia: int, sb: float, ib: int) -> bool:
    """(sa, ia) ranks strictly before (sb, ib): higher score, then lower index."""
    return sa > sb or (sa == sb and ia < ib)


@njit(inline="always")
def _score(g: float, root_row: float, root_col: float, shrink: float) -> float:
    denom = root_row * root_col + shrink
    if shrink > 0.0 or denom > 0.0:
        return g / denom
    return 0.0


#: a score g / denom is certainly below t > 0 when g < t · denom · _MARGIN, where denom and
#: t may come from :func:`toward_zero32` copies of the roots and floors: those are no larger
#: than the exact values, so they only make the test more cautious, and the margin dwarfs
#: the rounding of the products
_MARGIN = 1.0 - 1e-6


def toward_zero32(values: np.ndarray) -> np.ndarray:
    """float32 copies of ``values`` rounded toward zero: none larger in magnitude than its
    float64 value (an overflow gives the largest float32, an underflow rounds down, ±inf
    stays), for the dismissal test of :func:`_scan`. One compiled pass: the numpy version
    took several passes and milliseconds per forget on 100k items."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    out = np.empty(values.shape, dtype=np.float32)
    _toward_zero32(values.reshape(-1), out.reshape(-1))
    return out


@njit
def _toward_zero32(values: np.ndarray, out: np.ndarray) -> None:
    zero = np.float32(0.0)
    for q in range(len(values)):
        v = values[q]
        f = np.float32(v)  # round to nearest (an overflow gives ±inf)
        if abs(np.float64(f)) > abs(v):
            f = np.nextafter(f, zero)
        out[q] = f


@njit(inline="always")
def _surely_below(g: float, denom: float, t: float) -> bool:
    """g / denom (as :func:`_score` rounds it from the exact roots) ranks after t, decided by
    one multiplication where it is certain: a division costs several times more, and most
    entries of a long row are far below its list."""
    return t > 0.0 and denom > 0.0 and g < t * denom * _MARGIN


@njit
def _sift_down(hs: np.ndarray, hi: np.ndarray, size: int, at: int) -> None:
    # min-heap in rank order: the root is the entry ranked last
    while True:
        left = 2 * at + 1
        if left >= size:
            return
        low = left
        right = left + 1
        if right < size and _before(hs[low], hi[low], hs[right], hi[right]):
            low = right
        if not _before(hs[at], hi[at], hs[low], hi[low]):
            return
        hs[at], hs[low] = hs[low], hs[at]
        hi[at], hi[low] = hi[low], hi[at]
        at = low


@njit
def _sift_up(hs: np.ndarray, hi: np.ndarray, at: int) -> None:
    while at > 0:
        parent = (at - 1) // 2
        if not _before(hs[parent], hi[parent], hs[at], hi[at]):
            return
        hs[at], hs[parent] = hs[parent], hs[at]
        hi[at], hi[parent] = hi[parent], hi[at]
        at = parent


# A row's selection in progress is passed around as
#   heap = (scores, items, ints, best): a min-heap in rank order (the root ranks last), with
#          ints = [size, best left-out item, pairs reported so far], best = [its score];
#   near = (items j, items c, counts): the reported pairs;
#   ctx  = (approx, root, floor, shrink, k, fell, report, seeded): what every row shares.
_SIZE, _BEST_ITEM, _REPORTED = 0, 1, 2


@njit
def _offer(g: float, j: int, c: int, r_c: float, r_old: float, ctx, heap, near) -> None:
    """Score one candidate (c, j), report it if it reaches j's floor, push it through the
    heap."""
    _, root, floor, shrink, k, fell, report, _ = ctx
    hs, hi, ints, best = heap
    s = _score(g, r_c, root[j], shrink)
    if report:
        high = s
        if not fell or g < 0.0:
            # the old score can be the higher one (when every degree fell and the count is
            # ≥ 0, the old denominator is no smaller, so it is not)
            high = max(s, _score(g, r_old, root[j], shrink))
        if high >= floor[j]:
            n = ints[_REPORTED]
            near[0][n], near[1][n], near[2][n] = j, c, g
            ints[_REPORTED] = n + 1
    size = ints[_SIZE]
    if size < k:
        hs[size] = s
        hi[size] = j
        _sift_up(hs, hi, size)
        ints[_SIZE] = size + 1
    elif _before(s, j, hs[0], hi[0]):
        # the heap's last entry leaves the list: it may be the best left out
        if _before(hs[0], hi[0], best[0], ints[_BEST_ITEM]):
            best[0], ints[_BEST_ITEM] = hs[0], hi[0]
        hs[0] = s
        hi[0] = j
        _sift_down(hs, hi, k, 0)
    elif _before(s, j, best[0], ints[_BEST_ITEM]):
        best[0], ints[_BEST_ITEM] = s, j


@njit
def _scan(part, c: int, r_c: float, r_old: float, ctx, heap, near) -> None:
    """Offer the candidates of row ``c`` held in one CSR part ``(indptr, indices, data)``,
    except those seeded.

    Most entries of a long row score below both the row's best left-out candidate (once
    one exists, every member ranks before it) and their neighbour's floor; one
    multiplication each proves it, in a loop kept free of the heap's code.
    """
    indptr, indices, data = part
    approx, _, _, shrink, _, fell, report, seeded = ctx
    best = heap[3]
    for p in range(indptr[c], indptr[c + 1]):
        g = np.float64(data[p])
        j = np.int64(indices[p])
        r_j = np.float64(approx[j, 0])
        denom = r_c * r_j + shrink
        if not report:
            if _surely_below(g, denom, best[0]):
                continue
        elif fell:
            # the new score is the higher of new and old (its denominator is the smaller; a
            # negative count is below any positive floor either way): one test for both
            if _surely_below(g, denom, min(best[0], np.float64(approx[j, 1]))):
                continue
        elif _surely_below(g, min(denom, r_old * r_j + shrink), approx[j, 1]):
            # the higher of the two scores has the smaller denominator
            if _surely_below(g, denom, best[0]):
                continue
        if g == 0.0 or j == c or seeded[j]:
            continue
        _offer(g, j, c, r_c, r_old, ctx, heap, near)


@njit
def _count(part, c: int, j: int) -> float:
    """G_cj as stored in one CSR part (0 if absent): a binary search of row c."""
    indptr, indices, data = part
    end = np.int64(indptr[c + 1])
    at = lower_bound(indices, np.int64(indptr[c]), end, j)
    if at < end and indices[at] == j:
        return np.float64(data[at])
    return 0.0


@njit(nogil=True)  # groups of rows run on threads (topk_rows)
def select_rows(
    base: tuple[np.ndarray, np.ndarray, np.ndarray],
    extra: tuple[np.ndarray, np.ndarray, np.ndarray],
    rows: np.ndarray,
    seeds: np.ndarray,
    approx: np.ndarray,
    root: np.ndarray,
    root_old: np.ndarray,
    shrink: float,
    k: int,
    floor: np.ndarray,
    fell: bool,
    report: bool,
    out_idx: np.ndarray,
    out_val: np.ndarray,
    out_bound: np.ndarray,
    out_bound_idx: np.ndarray,
    near_j: np.ndarray,
    near_c: np.ndarray,
    near_g: np.ndarray,
) -> int:
    """Select the top-k of every row of ``rows`` into ``out_*`` (ranked, ``PAD``/−inf
    padding, bound = best candidate left out or (−inf, PAD)).

    ``base`` and ``extra`` are the two CSR parts of G as ``(indptr, indices, data)``; a
    row's candidates are its non-zero, off-diagonal entries in both. ``seeds[q]`` (−1
    padding) are candidates offered first: the row's previous list, reserve and bound,
    which are most often most of the new list and the candidates ranked next, so that few
    later candidates reach the heap (the result does not depend on the order). ``approx``
    holds :func:`toward_zero32` copies of ``root`` and ``floor`` side by side: every
    candidate reads its neighbour's, and they take a quarter of the cache of the two
    float64 arrays. With ``report``, each entry (c, j)
    whose score reaches ``floor[j]`` is written to ``near_*`` as (j, c, G_jc): its new score
    or, unless every degree ``fell``, the higher of that and its score under
    ``root_old[c]``. Returns how many were.
    """
    seeded = np.zeros(len(root), dtype=np.bool_)
    ctx = (approx, root, floor, shrink, k, fell, report, seeded)
    hs, hi = np.empty(k), np.empty(k, dtype=np.int64)
    ints, best = np.zeros(3, dtype=np.int64), np.empty(1)
    heap = (hs, hi, ints, best)
    near = (near_j, near_c, near_g)
    for q in range(len(rows)):
        c = rows[q]
        r_c, r_old = root[c], root_old[c]
        ints[_SIZE], ints[_BEST_ITEM], best[0] = 0, _PAD, -np.inf
        for t in range(seeds.shape[1]):
            j = np.int64(seeds[q, t])
            if j < 0 or j == c or seeded[j]:
                continue
            g = _count(base, c, j) + _count(extra, c, j)  # a pair lives in one part only
            if g != 0.0:
                seeded[j] = True
                _offer(g, j, c, r_c, r_old, ctx, heap, near)
        for part in literal_unroll((base, extra)):  # their array types may differ
            _scan(part, c, r_c, r_old, ctx, heap, near)
        for t in range(seeds.shape[1]):
            if seeds[q, t] >= 0:
                seeded[seeds[q, t]] = False
        # popping the root (ranked last) fills the list from its end
        size = ints[_SIZE]
        out_idx[q, size:] = _PAD
        out_val[q, size:] = -np.inf
        while size > 0:
            size -= 1
            out_idx[q, size] = hi[0]
            out_val[q, size] = hs[0]
            hs[0] = hs[size]
            hi[0] = hi[size]
            _sift_down(hs, hi, size, 0)
        out_bound[q] = best[0]
        out_bound_idx[q] = ints[_BEST_ITEM]
    return ints[_REPORTED]


@njit
def find_slots(
    nbr_idx: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Slot of item ``cols[q]`` in list ``nbr_idx[rows[q]]`` (slots sorted by item index,
    −1 padding last), and whether it is there: one binary search per query."""
    k = nbr_idx.shape[1]
    at = np.empty(len(rows), dtype=np.int64)
    found = np.zeros(len(rows), dtype=np.bool_)
    for q in range(len(rows)):
        row, col = rows[q], cols[q]
        lo, hi = 0, k
        while lo < hi:
            mid = (lo + hi) // 2
            item = nbr_idx[row, mid]
            if item >= 0 and item < col:
                lo = mid + 1
            else:
                hi = mid
        slot = min(lo, k - 1)
        at[q] = slot
        found[q] = lo < k and nbr_idx[row, slot] == col
    return at, found


_warm = False


def warm() -> None:
    """Compile (or load from numba's cache) the kernels now, once per process, for binary
    counts (float32) and weighted ones (float64), so that no first forget pays for it."""
    global _warm
    if _warm:
        return
    rows, root = np.arange(2, dtype=np.int64), np.ones(2)
    lists = np.full((2, 1), -1, dtype=np.int32)
    near = [np.empty(4, dtype=t) for t in (np.int64, np.int64, np.float64)]
    approx = toward_zero32(np.column_stack([root, root]))
    for dtype in (np.float32, np.float64):
        g = sp.csr_matrix(np.array([[2.0, 1.0], [1.0, 1.0]], dtype=dtype))
        empty = sp.csr_matrix((2, 2), dtype=dtype)
        for part in (g, empty):
            part.indices = part.indices.astype(np.int32)
            part.indptr = part.indptr.astype(np.int32)
        for fell in (True, False):
            select_rows(
                (g.indptr, g.indices, g.data),
                (empty.indptr, empty.indices, empty.data),
                rows,
                lists,
                approx,
                root,
                root,
                1.0,
                1,
                root,
                fell,
                True,
                np.empty((2, 1), dtype=np.int64),
                np.empty((2, 1)),
                np.empty(2),
                np.empty(2, dtype=np.int64),
                *near,
            )
        find(g, rows, rows)
        add_found(g, rows, rows, np.zeros(2), np.zeros(2))  # adds nothing
        integral(g.data)
    find_slots(lists, rows, rows)
    x = sp.csr_matrix(np.eye(2))  # X: float64 values, int32 indices
    drop_entries_in_place(x, np.array([0]))
    _warm = True
