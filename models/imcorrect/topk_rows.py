"""The rows of the items whose degree changed, for :mod:`.itemknn_topk`.

When d_c changes, every score in row c moves: that row is selected again from all its
candidates, and the same scores, read as column c (G is symmetric and the product of the
two square roots is commutative, so s_cj and s_jc are the same bits), are the moved s_jc of
c's neighbours j. Each row is read once for both.

Few rows (one user's items) are taken one at a time, straight from the CSR slices: each
row's work stays in cache and no array of the rows' total length is built. Many rows are
taken in chunks of about ``_CHUNK_ENTRIES`` entries with vectorised selection.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from models.imcorrect.topk import PAD, select

#: at most this many degree-changed rows are read one at a time
_ROW_BY_ROW = 1024
#: rows with at least this many candidates (and 8·k) are selected from a shortlist
_SHORTLIST_MIN = 2048
#: the shortlist's threshold is the k-th best of every this-many-th candidate
_SAMPLE_STEP = 8
#: rows selected one at a time are stored in groups of this many
_STORE_ROWS = 4096

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


class DegreeRows:
    """Mixed into :class:`.ItemKNNTopK`; uses its counts, lists and score expression."""

    k: int
    bound: np.ndarray
    bound_idx: np.ndarray
    # and from the class: ``counts``, ``_score_roots``, ``_chunk_rows`` and the stores of
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
        whose moved score s_jc reaches ``floor[j]`` (j's bound, or −inf while j's list holds
        every candidate; +inf for the rows of ``changed``).

        Below the floor, c was no member of j's list (its old score was no higher: degrees
        only fell and counts are ≥ 0, or the higher of the two scores is compared), does
        not enter it and leaves j's bound as it is.
        """
        if len(changed) <= _ROW_BY_ROW:
            yield from self._rows_one_by_one(changed, root, root_old, fell, floor)
            return
        for group, owner, js, vals in self._chunk_rows(changed):
            cs = group[owner]
            s_new = self._score_roots(vals, root[cs], root[js])
            self._store_chunk(group, owner, js, s_new)
            high = s_new
            if not (fell and vals.min(initial=0.0) >= 0):
                high = np.maximum(s_new, self._score_roots(vals, root_old[cs], root[js]))
            near = np.flatnonzero(high >= floor[js])
            yield js[near], cs[near], vals[near]

    def _rows_one_by_one(
        self,
        changed: np.ndarray,
        root: np.ndarray,
        root_old: np.ndarray,
        fell: bool,
        floor: np.ndarray,
    ) -> Iterator[Pairs]:
        lists = _Lists(len(changed), self.k)
        near_j, near_c, near_v = [], [], []
        for r, c in enumerate(changed.tolist()):
            cols, vals = self._row_entries(c)
            s_new = self._score_roots(vals, root[c], root[cols])
            lists.put(r, *select(*self._shortlist(cols, s_new), self.k))
            high = s_new
            if not (fell and vals.min(initial=0.0) >= 0):
                high = np.maximum(s_new, self._score_roots(vals, root_old[c], root[cols]))
            near = np.flatnonzero(high >= floor[cols])
            near_j.append(cols[near].astype(np.int64))
            near_c.append(np.full(len(near), c, dtype=np.int64))
            near_v.append(vals[near])
        lists.store(self, changed)
        if near_j:
            yield np.concatenate(near_j), np.concatenate(near_c), np.concatenate(near_v)

    def _shortlist(self, cols: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidates of a long row that can reach its list, and their scores.

        The k-th best of every ``_SAMPLE_STEP``-th candidate is no higher than the row's k-th
        best (the k-th best of a subset never is), so every entry of the list scores at least
        that; selecting from the more than k entries above it gives the same list and the
        same bound (the best left out beats every entry below it). About ``_SAMPLE_STEP`` · k
        entries are ranked instead of the whole row.
        """
        k = self.k
        if len(cols) < max(_SHORTLIST_MIN, _SAMPLE_STEP * k):
            return cols, scores
        sample = scores[::_SAMPLE_STEP]
        top = np.flatnonzero(scores >= np.partition(sample, len(sample) - k)[len(sample) - k])
        return (cols[top], scores[top]) if len(top) > k else (cols, scores)

    def _reselect_one_by_one(self, rows: np.ndarray, root: np.ndarray) -> None:
        """Select ``rows`` from all their candidates, one row at a time: for long rows, whose
        work then stays in cache (chunks of many rows pass over arrays of their total size
        several times)."""
        for start in range(0, len(rows), _STORE_ROWS):  # bounds the buffers (rows × k)
            group = rows[start : start + _STORE_ROWS]
            lists = _Lists(len(group), self.k)
            for r, c in enumerate(group.tolist()):
                cols, vals = self._row_entries(c)
                scores = self._score_roots(vals, root[c], root[cols])
                lists.put(r, *select(*self._shortlist(cols, scores), self.k))
            lists.store(self, group)

    def _row_entries(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of one row: ``(cols, G)`` off the diagonal, zero counts left out."""
        counts = self.counts
        a, b = counts.base.indptr[item], counts.base.indptr[item + 1]
        cols, vals = counts.base.indices[a:b], counts.base.data[a:b]
        if counts.extra.nnz:
            a, b = counts.extra.indptr[item], counts.extra.indptr[item + 1]
            cols = np.concatenate([cols, counts.extra.indices[a:b]])
            vals = np.concatenate([vals, counts.extra.data[a:b]])
        keep = (vals != 0) & (cols != item)
        return cols[keep], vals[keep]  # the index type (int32) indexes as well as int64


class _Lists:
    """Lists selected row by row, stored together (ranked, ``PAD`` padding)."""

    def __init__(self, n_rows: int, k: int) -> None:
        self.idx = np.full((n_rows, k), PAD, dtype=np.int64)
        self.val = np.full((n_rows, k), -np.inf)
        self.bound = np.full(n_rows, -np.inf)
        self.bound_idx = np.full(n_rows, PAD, dtype=np.int64)

    def put(self, r: int, idx: np.ndarray, val: np.ndarray, bound: float, bound_idx: int) -> None:
        self.idx[r, : len(idx)] = idx
        self.val[r, : len(idx)] = val
        self.bound[r], self.bound_idx[r] = bound, bound_idx

    def store(self, model: DegreeRows, rows: np.ndarray) -> None:
        model._store_ranked(rows, self.idx, self.val)
        model.bound[rows], model.bound_idx[rows] = self.bound, self.bound_idx
