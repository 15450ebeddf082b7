"""Rows selected from scratch for :mod:`.itemknn_topk`, and the moved scores they reveal.

When d_c changes, every score in row c moves: that row is selected again from all its
candidates, and the same scores, read as column c (G is symmetric and the product of the
two square roots is commutative, so s_cj and s_jc are the same bits), are the moved s_jc of
c's neighbours j. Each row is read once for both, by the compiled pass of
:mod:`.topk_kernel`. Rows are taken in groups, which bounds the buffers: the lists of a
group (rows × k) and the moved pairs it reports (at most its entries). A group with many
entries is cut into parts of about equal entries that run on threads (the kernel releases
the GIL): rows are independent, and each part reports into its own range of the buffers,
so the result is that of one pass, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np

from models.imcorrect.threads import kernel_threads, pool
from models.imcorrect.topk import PAD
from models.imcorrect.topk_kernel import select_rows, toward_zero32

#: a group of rows holds about this many stored entries (one row may hold more) ...
_GROUP_ENTRIES = 4_000_000
#: ... and at most this many rows
_GROUP_ROWS = 4096
#: a group with fewer entries runs on one thread
_PARALLEL_ENTRIES = 200_000

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


class DegreeRows:
    """Mixed into :class:`.ItemKNNTopK`; uses its counts, lists and shrinkage."""

    k: int
    reserve: int
    shrink: float
    nbr_idx: np.ndarray
    res_idx: np.ndarray
    bound_idx: np.ndarray
    # and from the class: ``counts``, and ``_store_ranked`` and ``_store_reserve`` of
    # :class:`.ListMerge`

    def _degree_rows(
        self,
        changed: np.ndarray,
        root: np.ndarray,
        root_old: np.ndarray,
        fell: bool,
        floor: np.ndarray,
    ) -> Iterator[Pairs]:
        """Reselect the rows ``changed`` and yield the pairs ``(j, c, G_jc)``, c ∈ changed,
        whose moved score s_jc reaches ``floor[j]`` (what j's outsiders beyond its reserve
        rank after, or −inf while j's list holds every candidate; +inf for the rows of
        ``changed``).

        Below the floor, c was no member of j's list (its old score was no higher: degrees
        only fell and counts are ≥ 0, or the higher of the two scores is compared), does
        not enter it and leaves j's bound as it is.
        """
        yield from self._select(changed, root, root_old, fell, floor)

    def _reselect(self, rows: np.ndarray, root: np.ndarray) -> None:
        """Select ``rows`` (their lists and reserves) from all their candidates."""
        for _ in self._select(rows, root, root, True, None):
            pass

    def _select(
        self,
        rows: np.ndarray,
        root: np.ndarray,
        root_old: np.ndarray,
        fell: bool,
        floor: np.ndarray | None,
    ) -> Iterator[Pairs]:
        report = floor is not None
        counts = self.counts
        base = (counts.base.indptr, counts.base.indices, counts.base.data)
        extra = (counts.extra.indptr, counts.extra.indices, counts.extra.data)
        rows = np.asarray(rows, dtype=np.int64)
        lengths = counts.row_lengths(rows)
        approx = toward_zero32(
            np.column_stack([root, floor if report else np.full_like(root, np.inf)])
        )
        for lo, hi in _groups(lengths):
            group = rows[lo:hi]
            lists = _Lists(len(group), self.k + self.reserve)
            room = int(lengths[lo:hi].sum()) if report else 0
            near = (np.empty(room, dtype=np.int64), np.empty(room, dtype=np.int64), np.empty(room))
            rows_in = (group, self._seeds(group))
            scoring = (approx, root, root_old, float(self.shrink), self.k + self.reserve)
            scoring += (floor if report else root, fell, report)
            parts = _parts(lengths[lo:hi], report)
            run_part = partial(_select_part, base, extra, rows_in, scoring, lists, near)
            # the other parts go to the pool, the first runs on this thread meanwhile
            rest = pool().map(run_part, parts[1:]) if len(parts) > 1 else iter(())
            found = [run_part(parts[0]), *rest]
            lists.store(self, group)
            if report:
                # each part reported into its own range, in row order: joined, they are
                # what one pass over the group reports
                cuts = [(at, at + n) for (_, _, at), n in zip(parts, found, strict=True)]
                ends = [at for _, _, at in parts[1:]] + [room]
                if any(b > end for (_, b), end in zip(cuts, ends, strict=True)):
                    # a row reports at most one pair per stored entry; more would have
                    # written over the next part's range
                    raise RuntimeError("a part reported past its range of the buffers")
                yield tuple(np.concatenate([arr[a:b] for a, b in cuts]) for arr in near)

    def _seeds(self, rows: np.ndarray) -> np.ndarray:
        """What the kernel offers first for ``rows`` (−1 padding): each row's previous list,
        reserve and bound, most often most of its new list and the candidates ranked next.
        With them the threshold a candidate must pass is near its final value from the
        start, so fewer of a row's entries reach the heap (a forget of 1 % of the users
        selects every row again, each with its previous top k + reserve + 1 on hand)."""
        bound = self.bound_idx[rows]
        bound = np.where(bound == PAD, -1, bound).astype(np.int32)[:, None]
        # int32 like the lists: the kernel compiled (and warmed) for that type
        return np.hstack([self.nbr_idx[rows], self.res_idx[rows], bound])


def _select_part(base, extra, rows_in, scoring, lists, near, part: tuple[int, int, int]) -> int:
    """The kernel on rows ``a:b`` of a group, reporting into the near arrays from ``at``."""
    a, b, at = part
    group, seeds = rows_in
    return select_rows(
        base,
        extra,
        group[a:b],
        seeds[a:b],
        *scoring,
        lists.idx[a:b],
        lists.val[a:b],
        lists.bound[a:b],
        lists.bound_idx[a:b],
        *(arr[at:] for arr in near),
    )


def _parts(lengths: np.ndarray, report: bool) -> list[tuple[int, int, int]]:
    """``(start, stop, at)``: the group's rows cut into about equal numbers of entries, one
    part per kernel thread, each reporting into the near arrays from ``at`` (the entries of
    the rows before it: a row reports at most one pair per entry). One part below
    ``_PARALLEL_ENTRIES``, where a thread's start costs more than it saves."""
    total = int(lengths.sum())
    threads = min(kernel_threads(), len(lengths))
    if threads < 2 or total < _PARALLEL_ENTRIES:
        return [(0, len(lengths), 0)]
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, total * np.arange(1, threads) / threads, side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(lengths)]]))
    starts = np.concatenate([[0], ends])[bounds[:-1]] if report else np.zeros(len(bounds) - 1)
    cuts = zip(bounds[:-1], bounds[1:], starts, strict=True)
    return [(int(a), int(b), int(at)) for a, b, at in cuts]


def _groups(lengths: np.ndarray) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive rows holding about ``_GROUP_ENTRIES`` entries and at
    most ``_GROUP_ROWS`` rows each."""
    ends = np.cumsum(lengths)
    start = 0
    while start < len(lengths):
        before = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, before + _GROUP_ENTRIES, side="right"))
        stop = min(max(stop, start + 1), start + _GROUP_ROWS, len(lengths))
        yield start, stop
        start = stop


class _Lists:
    """The top k + reserve of a group of rows, filled by the kernel (ranked, ``PAD``
    padding, the best left out as the bound), stored together as lists and reserves."""

    def __init__(self, n_rows: int, width: int) -> None:
        self.idx = np.full((n_rows, width), PAD, dtype=np.int64)
        self.val = np.full((n_rows, width), -np.inf)
        self.bound = np.full(n_rows, -np.inf)
        self.bound_idx = np.full(n_rows, PAD, dtype=np.int64)

    def store(self, model: DegreeRows, rows: np.ndarray) -> None:
        k = model.k
        model._store_ranked(rows, self.idx[:, :k], self.val[:, :k])
        model._store_reserve(rows, self.idx[:, k:], self.val[:, k:], self.bound, self.bound_idx)
