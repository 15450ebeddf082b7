"""Storing and repairing the top-k lists of :mod:`.itemknn_topk` in place.

A list selected from scratch is stored by :meth:`ListMerge._store_ranked` (slots by item
index, its worst entry) with its bound.

Row j (an item whose degree did not change) holds a set of neighbours with exact scores,
its worst entry and a bound: a (score, index) ranking at or before every candidate left out.
A change moves some scores s_jc; :meth:`ListMerge._merge_pairs` folds them in:

* non-members that do not beat j's worst entry only raise j's bound;
* if nothing enters or leaves, members take their new score in place: a member whose score
  rose stays in, one whose score fell stays in while it still ranks before the bound (the
  common case of a forget, where degrees fall and scores rise, costs no sorting at all);
* rows where an entry enters or leaves are merged by sorting list ∪ changed candidates; the
  result is exact when its k-th entry ranks before the better of j's bound and the best
  entry left out; a row left one entry short takes the bound's own candidate when its
  current score is the bound (:meth:`ListMerge._promote_bound`);
* otherwise (a member fell behind an outsider) the row is returned to be reselected.

A row's reserve (the candidates ranked next, exact, and ``beyond``, at or before every
other outsider) joins the sorted merge as further candidates, so a list that loses members
refills from it, and what the merge leaves out ahead of ``beyond`` becomes the new reserve.
A moved score that reaches the reserve (or moves an entry of it) empties the reserve
instead; a vanished candidate simply leaves it.

Membership of c in j's list is decided by comparing c's *old* score with j's worst entry:
the stored list is the exact top-k, and the old score is recomputed bit for bit from the old
count and degrees with the same expression that produced the list.
"""

from __future__ import annotations

import numpy as np

from models.imcorrect.topk import PAD, padded, ranks_before, slots, sort_rows
from models.imcorrect.topk_kernel import find_slots


class ListMerge:
    """Storing freshly selected lists and repairing them in place; mixed into
    :class:`.ItemKNNTopK`, whose arrays (``nbr_idx``, ``nbr_val``, ``fill``, ``worst_*``,
    ``bound*``, ``degree``) it edits."""

    k: int
    degree: np.ndarray
    nbr_idx: np.ndarray
    nbr_val: np.ndarray
    fill: np.ndarray
    worst_val: np.ndarray
    worst_idx: np.ndarray
    bound: np.ndarray
    bound_idx: np.ndarray
    reserve: int
    res_idx: np.ndarray
    res_val: np.ndarray
    res_fill: np.ndarray
    beyond: np.ndarray
    beyond_idx: np.ndarray
    # and from the class: ``n_items``, ``counts`` and ``_score`` (the one expression every
    # score uses)

    def _merge_pairs(
        self,
        pj: np.ndarray,
        pc: np.ndarray,
        g_old: np.ndarray,
        g_new: np.ndarray,
        degree_old: np.ndarray,
    ) -> np.ndarray:
        """Fold moved scores s_jc into the lists of items j ∉ D; returns rows to recompute."""
        if len(pj) == 0:
            return np.zeros(0, dtype=np.int64)
        k = self.k
        full = self.fill[pj] == k
        kth_val, kth_idx = self.worst_val[pj], self.worst_idx[pj]
        d_j = self.degree[pj]  # unchanged: j ∉ D
        s_old = self._score(g_old, d_j, degree_old[pc])
        s_new = self._score(g_new, d_j, self.degree[pc])
        # c was in j's (exact) list iff it was a candidate not ranked after j's worst entry
        member = (g_old != 0) & (~full | ~ranks_before(kth_val, kth_idx, s_old, pc))
        alive = g_new != 0
        insert = ~member & alive & (~full | ranks_before(s_new, pc, kth_val, kth_idx))
        outside = ~member & alive & ~insert
        self._raise_bounds(pj[outside], s_new[outside], pc[outside])
        self._reserve_moves(pj, pc, s_new, member, alive, outside)

        # rows that gain or lose an entry are merged by sorting (rare: a new pair, a pair
        # that vanished, an outsider that overtook); the others keep their set of entries
        grows = insert | (member & ~alive)
        general = np.zeros(self.n_items, dtype=bool)
        general[pj[grows]] = True
        dirty = [np.zeros(0, dtype=np.int64)]

        stay = member & ~general[pj]
        if stay.any():
            sj, sc, s_val, s_was = pj[stay], pc[stay], s_new[stay], s_old[stay]
            pos, found = self._slots(sj, sc)
            dirty.append(sj[~found])  # a list out of step with its counts: rebuild it
            sj, sc, s_val, s_was, pos = sj[found], sc[found], s_val[found], s_was[found], pos[found]
            self.nbr_val[sj, pos] = s_val
            # the set stays exact while every member still ranks before every outsider;
            # a member whose score rose cannot fall behind one, so only falls are checked
            fell = s_val < s_was
            behind = ~ranks_before(s_val, sc, self.bound[sj], self.bound_idx[sj])
            dirty.append(sj[fell & behind])
            # keep the worst entry current: a fallen member may become it; a row whose
            # worst entry rose is rescanned
            self._lower_worst(sj[fell], s_val[fell], sc[fell])
            self._rescan_worst(np.unique(sj[~fell & (sc == self.worst_idx[sj])]))

        if grows.any():
            sel = general[pj] & (member | insert)
            merged = self._merge_sorted(
                pj[sel], pc[sel], s_new[sel], alive[sel], member[sel], degree_old
            )
            dirty.append(merged)
        return np.unique(np.concatenate(dirty))

    def _rescan_worst(self, rows: np.ndarray) -> None:
        """Recompute fill and worst entry of ``rows`` from their slots."""
        if len(rows) == 0:
            return
        idx = self.nbr_idx[rows].astype(np.int64)
        val = self.nbr_val[rows]
        real = idx >= 0
        low = np.where(real, val, np.inf).min(axis=1)
        at_low = real & (val == low[:, None])
        self.worst_val[rows] = low
        self.worst_idx[rows] = np.where(at_low, idx, -1).max(axis=1)
        self.fill[rows] = real.sum(axis=1)

    def _lower_worst(self, rows: np.ndarray, vals: np.ndarray, cols: np.ndarray) -> None:
        """Make (vals, cols) a row's worst entry where it ranks after the current one."""
        if len(rows) == 0:
            return
        n = self.n_items
        low = np.full(n, np.inf)
        np.minimum.at(low, rows, vals)
        at_low = vals == low[rows]
        low_idx = np.full(n, -1, dtype=np.int64)
        np.maximum.at(low_idx, rows[at_low], cols[at_low])
        later = ranks_before(self.worst_val[rows], self.worst_idx[rows], low[rows], low_idx[rows])
        self.worst_val[rows[later]] = low[rows[later]]
        self.worst_idx[rows[later]] = low_idx[rows[later]]

    def _slots(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slot of item ``cols[q]`` in row ``rows[q]`` (slots are sorted by item index,
        padding last), and whether it is there."""
        rows = np.asarray(rows, dtype=np.int64)
        return find_slots(self.nbr_idx, rows, np.asarray(cols, dtype=np.int64))

    def _merge_sorted(
        self,
        pj: np.ndarray,
        pc: np.ndarray,
        s_new: np.ndarray,
        alive: np.ndarray,
        member: np.ndarray,
        degree_old: np.ndarray,
    ) -> np.ndarray:
        """General merge: list ∪ changed candidates, sorted by the tie rule, top k kept."""
        k, n = self.k, self.n_items
        affected, loc = np.unique(pj, return_inverse=True)
        held = self.res_fill[affected] > 0
        idx = padded(self.nbr_idx[affected])
        val = self.nbr_val[affected].copy()
        dirty = [np.zeros(0, dtype=np.int64)]
        m_rows, m_c = loc[member], pc[member]
        pos, found = _positions(idx, m_rows, m_c)
        dirty.append(affected[m_rows[~found]])
        m_rows, pos = m_rows[found], pos[found]
        m_new, m_alive = s_new[member][found], alive[member][found]
        val[m_rows, pos] = np.where(m_alive, m_new, -np.inf)
        idx[m_rows, pos] = np.where(m_alive, idx[m_rows, pos], PAD)

        ins = ~member
        i_rows, i_c, i_val = loc[ins], pc[ins], s_new[ins]
        order = np.argsort(i_rows, kind="stable")
        i_rows, i_c, i_val = i_rows[order], i_c[order], i_val[order]
        width = int(np.bincount(i_rows, minlength=len(affected)).max()) if len(i_rows) else 0
        if width:
            first = np.searchsorted(i_rows, i_rows, side="left")
            slot = np.arange(len(i_rows)) - first
            extra_idx = np.full((len(affected), width), PAD, dtype=np.int64)
            extra_val = np.full((len(affected), width), -np.inf)
            extra_idx[i_rows, slot] = i_c
            extra_val[i_rows, slot] = i_val
            idx = np.hstack([idx, extra_idx])
            val = np.hstack([val, extra_val])
        if held.any():
            q_idx, q_val = self._reserve_block(affected)
            if len(i_rows):
                # an inserted candidate takes part with its new score: its reserve copy is
                # stale
                ins_keys = np.sort(i_rows * n + i_c)
                q_rows = np.broadcast_to(np.arange(len(affected))[:, None], q_idx.shape)
                real = q_idx != PAD
                keys = q_rows[real] * n + q_idx[real]
                at = np.minimum(np.searchsorted(ins_keys, keys), len(ins_keys) - 1)
                stale = np.zeros_like(real)
                stale[real] = ins_keys[at] == keys
                q_idx[stale], q_val[stale] = PAD, -np.inf
            idx = np.hstack([idx, q_idx])
            val = np.hstack([val, q_val])
        idx, val = sort_rows(idx, val)
        if idx.shape[1] > k:
            self._raise_bounds(affected[~held], val[~held, k], idx[~held, k])
        # what every candidate left out of this merge ranks at or after
        thr, thr_idx = self._outsiders_floor(affected)
        exact = (thr == -np.inf) | ranks_before(val[:, k - 1], idx[:, k - 1], thr, thr_idx)
        exact |= self._promote_bound(affected, idx, val, ~exact & ~held, degree_old)
        keep = affected[exact]
        self._store_ranked(keep, idx[exact, :k], val[exact, :k])
        refill = exact & held
        self._store_reserve(
            affected[refill], idx[refill, k:], val[refill, k:], thr[refill], thr_idx[refill]
        )
        dirty.append(affected[~exact])
        return np.concatenate(dirty)

    # -- reserves ---------------------------------------------------------------------------
    def _outsiders_floor(
        self, rows: np.ndarray | slice = slice(None)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``rows`` (all by default), a (score, index) at or before which every
        outsider outside the reserve ranks: ``beyond`` where the reserve holds entries, else
        the bound."""
        held = self.res_fill[rows] > 0
        return (
            np.where(held, self.beyond[rows], self.bound[rows]),
            np.where(held, self.beyond_idx[rows], self.bound_idx[rows]),
        )

    def _reserve_block(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The reserves of ``rows`` as ranked ``(idx, val)`` blocks (``PAD`` / −inf padding)."""
        return padded(self.res_idx[rows]), self.res_val[rows].copy()

    def _store_reserve(
        self,
        rows: np.ndarray,
        idx: np.ndarray,
        val: np.ndarray,
        beyond: np.ndarray,
        beyond_idx: np.ndarray,
    ) -> None:
        """Store ranked candidates that follow the lists of ``rows`` (``PAD`` padding), every
        other outsider ranking at or after ``beyond``, as their reserves: the entries ahead
        of ``beyond``, at most ``reserve`` of them (``beyond`` moves up to the first one left
        out). The bound becomes the reserve's first entry, or ``beyond``."""
        if len(rows) == 0:
            return
        r = self.reserve
        beyond, beyond_idx = beyond.copy(), beyond_idx.copy()
        ahead = (idx != PAD) & ranks_before(val, idx, beyond[:, None], beyond_idx[:, None])
        count = ahead.sum(axis=1)  # ranked: the entries ahead of beyond come first
        over = np.flatnonzero(count > r)
        if len(over):
            beyond[over], beyond_idx[over] = val[over, r], idx[over, r]
        count = np.minimum(count, r)
        width = min(r, idx.shape[1])
        kept = np.arange(width)[None, :] < count[:, None]
        res_idx = np.full((len(rows), r), -1, dtype=np.int32)
        res_val = np.full((len(rows), r), -np.inf)
        res_idx[:, :width] = np.where(kept, idx[:, :width], -1)
        res_val[:, :width] = np.where(kept, val[:, :width], -np.inf)
        self.res_idx[rows], self.res_val[rows], self.res_fill[rows] = res_idx, res_val, count
        self.beyond[rows], self.beyond_idx[rows] = beyond, beyond_idx
        first = count > 0
        if r:
            beyond = np.where(first, res_val[:, 0], beyond)
            beyond_idx = np.where(first, res_idx[:, 0], beyond_idx)
        self.bound[rows], self.bound_idx[rows] = beyond, beyond_idx

    def _reserve_moves(
        self,
        pj: np.ndarray,
        pc: np.ndarray,
        s_new: np.ndarray,
        member: np.ndarray,
        alive: np.ndarray,
        outside: np.ndarray,
    ) -> None:
        """Keep reserves exact under moved scores s_jc of non-members c (inserted ones are
        handled by the merge): a vanished candidate leaves j's reserve; an outsider moving
        within or into it empties it (the bound, already raised, stands for all outsiders)."""
        if self.reserve == 0:
            return
        cand = np.flatnonzero(~member & (self.res_fill[pj] > 0))
        if len(cand) == 0:
            return
        j, c = pj[cand], pc[cand]
        hit = self.res_idx[j] == c[:, None]
        in_reserve = hit.any(axis=1)
        moved = outside[cand] & (
            in_reserve | ranks_before(s_new[cand], c, self.beyond[j], self.beyond_idx[j])
        )
        emptied = np.unique(j[moved])
        self.res_idx[emptied], self.res_val[emptied], self.res_fill[emptied] = -1, -np.inf, 0
        gone = in_reserve & ~alive[cand] & (self.res_fill[j] > 0)
        if not gone.any():
            return
        rows, slot = j[gone], hit[gone].argmax(axis=1)
        self.res_idx[rows, slot], self.res_val[rows, slot] = -1, -np.inf
        rows = np.unique(rows)
        idx, val = sort_rows(*self._reserve_block(rows))
        fill = (idx != PAD).sum(axis=1)
        self.res_idx[rows] = slots(idx)
        self.res_val[rows], self.res_fill[rows] = val, fill
        # a reserve left empty hands its beyond to the bound (every outsider ranks after it)
        spent = rows[fill == 0]
        self.bound[spent], self.bound_idx[spent] = self.beyond[spent], self.beyond_idx[spent]

    def _promote_bound(
        self,
        rows: np.ndarray,
        idx: np.ndarray,
        val: np.ndarray,
        todo: np.ndarray,
        degree_old: np.ndarray,
    ) -> np.ndarray:
        """Rows of ``todo`` left one entry short of k (a member's count fell to zero, as when
        a popular item is forgotten) take the bound's own candidate as their k-th entry,
        where it is a real outsider whose current score is the bound bit for bit. Every
        other outsider ranks after the bound, so the list is exact, and the bound, now that
        entry, still ranks at or before every outsider (it is no longer attained). Returns
        the rows filled; ``idx``/``val`` (ranked merges of ``rows``) are edited in place.

        Only candidates whose degree did not change qualify: their score moves only with
        ΔG pairs, all of which reach the first merge of a change.
        """
        k = self.k
        bound, bound_idx = self.bound[rows], self.bound_idx[rows]
        short = todo & (idx[:, k - 1] == PAD) & (bound_idx != PAD)
        if k > 1:  # the k − 1 entries left must all rank before the bound
            short &= ranks_before(val[:, k - 2], idx[:, k - 2], bound, bound_idx)
        cand = np.flatnonzero(short)
        filled = np.zeros(len(rows), dtype=bool)
        if len(cand) == 0:
            return filled
        r, c = rows[cand], bound_idx[cand]
        g = self.counts.get(r, c)
        real = (
            (self.degree[c] == degree_old[c])
            & (self.degree[r] == degree_old[r])
            & ~np.any(idx[cand] == c[:, None], axis=1)
            & (g != 0)
            & (self._score(g, self.degree[r], self.degree[c]) == bound[cand])
        )
        cand = cand[real]
        idx[cand, k - 1] = bound_idx[cand]
        val[cand, k - 1] = bound[cand]
        filled[cand] = True
        return filled

    def _store_ranked(self, rows: np.ndarray, idx: np.ndarray, val: np.ndarray) -> None:
        """Store rows given in the tie order (``PAD`` padding) in slot order."""
        if len(rows) == 0:
            return
        fill = (idx != PAD).sum(axis=1)
        last = np.maximum(fill - 1, 0)
        here = np.arange(len(rows))
        self.fill[rows] = fill
        self.worst_val[rows] = np.where(fill > 0, val[here, last], np.inf)
        self.worst_idx[rows] = np.where(fill > 0, idx[here, last], -1)
        order = np.argsort(idx, axis=1, kind="stable")  # PAD sorts last
        idx = np.take_along_axis(idx, order, axis=1)
        self.nbr_idx[rows] = slots(idx)
        self.nbr_val[rows] = np.take_along_axis(val, order, axis=1)

    def _raise_bounds(self, rows: np.ndarray, vals: np.ndarray, cols: np.ndarray) -> None:
        """Lift each row's bound to the best of itself and the given (score, index) pairs."""
        real = cols != PAD
        rows, vals, cols = rows[real], vals[real], cols[real]
        if len(rows) == 0:
            return
        # best per row without sorting: highest score, then the lowest index at it
        n = self.n_items
        best = np.full(n, -np.inf)
        np.maximum.at(best, rows, vals)
        at_best = vals == best[rows]
        best_idx = np.full(n, PAD, dtype=np.int64)
        np.minimum.at(best_idx, rows[at_best], cols[at_best])
        better = ranks_before(best[rows], best_idx[rows], self.bound[rows], self.bound_idx[rows])
        lift = rows[better]
        self.bound[lift] = best[lift]
        self.bound_idx[lift] = best_idx[lift]


#: above this many comparisons a member's slot is found by sorting the rows instead
_COMPARE_LIMIT = 20_000_000


def _positions(
    idx: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Slot of each ``cols[q]`` within block row ``idx[rows[q]]``, and whether it is there."""
    if len(rows) * idx.shape[1] <= _COMPARE_LIMIT:
        hits = idx[rows] == cols[:, None]
        return hits.argmax(axis=1), hits.any(axis=1)
    # long lists (k in the thousands): sort each row once and binary-search all queries in
    # one flat array, made globally sorted by offsetting each row's values by row · span
    order = np.argsort(idx, axis=1, kind="stable")
    ordered = np.take_along_axis(idx, order, axis=1)
    real = ordered[ordered != PAD]
    span = max(int(cols.max(initial=0)), int(real.max(initial=0))) + 2
    flat = np.where(ordered == PAD, span - 1, ordered)
    flat = (flat + np.arange(len(idx), dtype=np.int64)[:, None] * span).ravel()
    query = rows * span + cols
    at = np.minimum(np.searchsorted(flat, query), len(flat) - 1)
    return order.ravel()[at], flat[at] == query
