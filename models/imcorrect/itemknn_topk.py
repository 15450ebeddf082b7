"""Sparse item-kNN (cosine, top-k neighbours) with exact learning and forgetting.

The dense mappings keep n×n arrays; this one keeps only

* the co-occurrence counts G = XᵀX of pairs some user shares (:mod:`.cooccurrence`),
* the item degrees d_i = G_ii = Σ_u x_ui²,
* for every item i its k best neighbours ``nbr_idx[i]``, ``nbr_val[i]`` (a set: slots in
  no particular order; :meth:`ItemKNNTopK.neighbours` gives them ranked) by
  s_ij = G_ij / (√d_i √d_j + shrink), j ≠ i, G_ij ≠ 0, ranked by the rule of
  :mod:`.topk` (higher score first, then lower item index), and
* ``bound[i]``, ``bound_idx[i]``: a (score, index) that ranks at or before every candidate
  of i outside its list (an upper bound in the tie order), and
* a *reserve* of up to ``reserve`` candidates that rank next, in order, with exact scores
  (``res_idx[i]``, ``res_val[i]``; ``res_fill[i]`` of them), and ``beyond[i]``,
  ``beyond_idx[i]``, which ranks at or before every other candidate left out. A row whose
  members vanish (a forgotten popular item) refills from its reserve instead of being
  selected again; a change that moves a reserve entry, or lifts an outsider to the reserve,
  empties it (``res_fill[i] = 0``: then the bound alone stands for the outsiders).

M is the sparse matrix whose row i holds i's neighbours, and S = X·M. With k ≥ n it is the
dense cosine ItemKNN. Memory: O(stored pairs + n·k).

Exactness under a change (learn or forget of users, items or interactions). Let ΔG be the
change of G (it touches only pairs inside the changed users' rows) and D the items whose
degree changed. Then:

* i ∈ D: every score in row i moved, so its list is recomputed from its sparse row;
* j ∉ D: only scores s_jc with ΔG_jc ≠ 0 or c ∈ D moved. Those pairs are listed (ΔG, plus
  the rows of D, since G is symmetric) and folded into j's list in place
  (:mod:`.topk_merge`); a row whose list cannot be proven exact that way is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.config_checks import real, whole
from models.imcorrect import topk_kernel
from models.imcorrect.base import Mapping
from models.imcorrect.cooccurrence import Cooccurrence
from models.imcorrect.lowrank import RowChange
from models.imcorrect.topk import PAD, padded, ranks_before, select, sort_rows
from models.imcorrect.topk_merge import ListMerge
from models.imcorrect.topk_rows import DegreeRows

#: entries gathered at once when recomputing or merging many rows (bounds temporary memory)
_CHUNK_ENTRIES = 4_000_000
#: a change whose degree-changed rows reach this share of all pairs reselects every row
_RECOMPUTE_ALL_SHARE = 0.5


@dataclass(frozen=True)
class ItemKNNTopKConfig:
    """Sparse top-k ItemKNN's hyper-parameters; the worker's settings embed this class."""

    #: neighbours kept per item (``k ≥ n_items`` keeps every co-occurring item)
    k: int = 100
    #: added to the cosine denominator; damps similarities built on few co-occurrences
    shrink: float = 0.0
    #: candidates kept in order after the ``k`` neighbours of each item (not part of M):
    #: that many members can vanish from a list before it must be selected again
    reserve: int = 4

    def __post_init__(self) -> None:
        whole(self, "k", minimum=1)
        real(self, "shrink", positive=False)
        whole(self, "reserve", minimum=0)


class ItemKNNTopK(DegreeRows, ListMerge, Mapping):
    """Cosine item-kNN over sparse co-occurrences, each item's ``k`` best neighbours kept
    (:class:`ItemKNNTopKConfig`)."""

    name = "itemknn-topk"
    item_removal_reads_rows = False  # ΔG is read off G

    def __init__(self, config: ItemKNNTopKConfig = ItemKNNTopKConfig()) -> None:
        # Mapping.__init__ would allocate a dense Gram matrix: this class keeps none
        self.config = config
        self.k, self.shrink, self.reserve = int(config.k), float(config.shrink), int(config.reserve)
        self.counts = Cooccurrence(0)
        self.degree = np.zeros(0)
        self._empty_lists(0)
        #: rows selected from scratch by the last change (the rest were merged in place)
        self.last_recomputed = 0
        self._mapping: sp.csr_matrix | None = None
        topk_kernel.warm()  # compiled here, not inside the first forget

    def _empty_lists(self, n: int) -> None:
        # slots of a row: its entries by ascending item index, then -1 padding
        self.nbr_idx = np.full((n, self.k), -1, dtype=np.int32)
        self.nbr_val = np.full((n, self.k), -np.inf)
        self.fill = np.zeros(n, dtype=np.int64)
        # the row's last entry in the tie order (what a newcomer must beat once it is full)
        self.worst_val = np.full(n, np.inf)
        self.worst_idx = np.full(n, -1, dtype=np.int64)
        self.bound = np.full(n, -np.inf)
        self.bound_idx = np.full(n, PAD, dtype=np.int64)
        self._empty_reserve(n)

    def _empty_reserve(self, n: int) -> None:
        # ranked (PAD / −inf padding); int32 items: the reserve is compared against every
        # moved pair of a row that holds one
        self.res_idx = np.full((n, self.reserve), -1, dtype=np.int32)
        self.res_val = np.full((n, self.reserve), -np.inf)
        self.res_fill = np.zeros(n, dtype=np.int64)
        self.beyond = np.full(n, -np.inf)
        self.beyond_idx = np.full(n, PAD, dtype=np.int64)

    def check_budget(self, n_items: int) -> None:
        """Nothing to refuse: no array here grows with n² (the budget is for dense mappings)."""

    def max_items(self) -> int | None:
        return None

    @property
    def n_items(self) -> int:
        return len(self.degree)

    @property
    def gram(self) -> sp.csr_matrix:
        """G = XᵀX as sparse CSR (the live matrix: edits reach the model)."""
        return self.counts.matrix()

    def memory_bytes(self) -> int:
        """Bytes held by the counts and the neighbour lists."""
        parts = [self.counts.base, self.counts.extra]
        sparse = sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in parts)
        lists = self.nbr_idx.nbytes + self.nbr_val.nbytes + self.fill.nbytes
        lists += self.bound.nbytes + self.bound_idx.nbytes
        lists += self.worst_val.nbytes + self.worst_idx.nbytes
        lists += self.res_idx.nbytes + self.res_val.nbytes + self.res_fill.nbytes
        lists += self.beyond.nbytes + self.beyond_idx.nbytes
        return int(sparse + lists + self.degree.nbytes)

    # -- scores -----------------------------------------------------------------------------
    def _score(self, g: np.ndarray, d_row: np.ndarray, d_col: np.ndarray) -> np.ndarray:
        # the one expression every score comes from (the compiled selection of
        # :mod:`.topk_kernel` performs the same operations), so that a score recomputed later
        # from the same inputs is bit-identical to the stored one (membership tests rely on it)
        denom = np.sqrt(np.maximum(d_row, 0.0)) * np.sqrt(np.maximum(d_col, 0.0)) + self.shrink
        return np.divide(g, denom, out=np.zeros(len(g)), where=denom > 0)

    # -- lifecycle --------------------------------------------------------------------------
    def fit(self, x: sp.csr_matrix) -> None:
        """Count all pairs and select every item's neighbours from scratch."""
        self.counts = Cooccurrence.from_x(x)
        self._fit_derived(x)

    def _fit_derived(self, x: sp.csr_matrix) -> None:
        n = x.shape[1]
        everything = np.arange(n, dtype=np.int64)
        # degrees are read off G's diagonal so that they equal G_ii bit for bit
        self.degree = self.counts.get(everything, everything)
        self._empty_lists(n)
        self._recompute(everything)
        self._mapping = None

    def apply(self, change: RowChange) -> None:
        """Fold a change of some user rows (weight 1 each) into G and the lists."""
        ones_old, ones_new = np.ones(change.old.shape[0]), np.ones(change.new.shape[0])
        a, signs = RowChange(change.old, change.new, ones_old, ones_new).factor()
        if a.shape[0] == 0:
            return
        self._correct(a, signs, np.unique(a.indices).astype(np.int64), change)

    def _correct(
        self, a: sp.csr_matrix, signs: np.ndarray, touched: np.ndarray, change: RowChange
    ) -> None:
        old = sp.csr_matrix(change.old[:, touched])
        diff = (sp.csr_matrix(change.new[:, touched]) - old).tocsr()
        diff.eliminate_zeros()
        if 2 * diff.nnz < old.nnz:
            # a few entries of long rows changed (learning): ΔG = DᵀR + RᵀD + DᵀD with
            # D = new − old, R = old has |D|·|R| terms instead of the |R|² of Aᵀ S A
            cross = diff.T @ old
            delta = (cross + cross.T + diff.T @ diff).tocsr()
        else:
            # whole rows appear or vanish: ΔG = Aᵀ S A on the touched columns
            sub = a[:, touched]
            delta = (sub.T @ sp.diags(signs) @ sub).tocsr()
        # sorted within each row, the pairs are found in G by galloping along its rows
        delta.sort_indices()
        delta = delta.tocoo()
        nz = delta.data != 0
        self._apply_delta(touched[delta.row[nz]], touched[delta.col[nz]], delta.data[nz])

    def remove_items(self, items: np.ndarray, change: RowChange | None) -> None:
        """Zero the items' rows and columns of G: ΔG is minus those entries."""
        items = np.unique(np.asarray(items, dtype=np.int64))
        items = items[items < self.n_items]
        if len(items) == 0:
            return
        owner, cols, vals = self.counts.rows(items)
        rows = np.concatenate([items[owner], cols])
        cols_all = np.concatenate([cols, items[owner]])
        vals_all = -np.concatenate([vals, vals])
        _, first = np.unique(rows * self.n_items + cols_all, return_index=True)
        self._apply_delta(rows[first], cols_all[first], vals_all[first])

    def grow(self, n_items: int) -> None:
        old_n = self.n_items
        if n_items <= old_n:
            return
        self.counts.grow(n_items)
        self._grow_derived(old_n, n_items)

    def _grow_derived(self, old_n: int, new_n: int) -> None:
        self.degree = np.concatenate([self.degree, np.zeros(new_n - old_n)])
        names = ("nbr_idx", "nbr_val", "fill", "worst_val", "worst_idx", "bound", "bound_idx")
        names += ("res_idx", "res_val", "res_fill", "beyond", "beyond_idx")
        kept = {name: getattr(self, name) for name in names}
        self._empty_lists(new_n)
        for name, old in kept.items():
            getattr(self, name)[:old_n] = old
        self._mapping = None

    # -- the incremental step ---------------------------------------------------------------
    def _apply_delta(self, rows: np.ndarray, cols: np.ndarray, deltas: np.ndarray) -> None:
        """G[rows, cols] += deltas (unique, symmetric entries), then repair the lists."""
        if len(rows) == 0:
            return
        n = self.n_items
        # int64 before any j·n + c key: CSR indices are int32, and n² passes 2³¹ at 46,341
        # items (colliding keys silently dropped pairs from the merge)
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        g_old = self.counts.add(rows, cols, deltas)
        g_new = g_old + deltas  # the same addition the store performed
        on_diag = rows == cols
        diag_items = rows[on_diag]
        degree_old = self.degree.copy()
        self.degree[diag_items] = g_new[on_diag]
        changed_degree = np.unique(diag_items[g_new[on_diag] != degree_old[diag_items]])
        in_d = np.zeros(n, dtype=bool)
        in_d[changed_degree] = True

        # pairs (j, c), j ∉ D, whose score moved: ΔG entries ...
        off = ~on_diag & ~in_d[rows]
        pj, pc, go, gn = rows[off], cols[off], g_old[off], g_new[off]
        reach = self.counts.row_lengths(changed_degree)
        if reach.sum() > _RECOMPUTE_ALL_SHARE * self.counts.nnz:
            # D's rows reach most pairs: selecting every row again is cheaper than merging
            # (and needs no pair arrays of that size)
            self._recompute(np.arange(n))
            self.last_recomputed = n
            self._mapping = None
            return
        dirty = [self._merge_pairs(pj, pc, go, gn, degree_old)]
        # ... and every stored neighbour j of an item c ∈ D, read off the rows of D
        # (:mod:`.topk_rows`). A row's pairs may be merged over several passes, since each
        # pass leaves the list exact for the scores moved so far; the floor is taken once
        # (bounds only rise while merging, so it stays a floor).
        known = np.sort(pj * n + pc)
        root = np.sqrt(np.maximum(self.degree, 0.0))
        root_old = np.sqrt(np.maximum(degree_old, 0.0))
        fell = bool(np.all(self.degree[changed_degree] <= degree_old[changed_degree]))
        # below the floor a moved score neither enters j's list nor touches its reserve
        floor = np.where(self.fill == self.k, self._outsiders_floor()[0], -np.inf)
        floor[changed_degree] = np.inf  # rows of D are selected from scratch
        for js, cs, vals in self._degree_rows(changed_degree, root, root_old, fell, floor):
            if len(known):
                keys = js * n + cs
                at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
                fresh = known[at] != keys
                js, cs, vals = js[fresh], cs[fresh], vals[fresh]
            dirty.append(self._merge_pairs(js, cs, vals, vals, degree_old))
        dirty = np.setdiff1d(np.concatenate(dirty), changed_degree)
        self.last_recomputed = len(changed_degree) + len(dirty)
        self._recompute(dirty)
        self._mapping = None

    # -- the numpy reference selection (``drift`` checks the lists against it) ---------------
    def _chunk_rows(self, items: np.ndarray):
        """Yield ``(chunk, owner, cols, vals)``: the off-diagonal entries of ``items``' rows in
        chunks of about ``_CHUNK_ENTRIES``, grouped by owner (an index into ``chunk``)."""
        lengths = self.counts.row_lengths(items)
        chunk_of = np.cumsum(lengths) // _CHUNK_ENTRIES
        for chunk in np.split(items, np.flatnonzero(np.diff(chunk_of)) + 1):
            if len(chunk) == 0:
                continue
            owner, cols, vals = self.counts.rows(chunk, skip_diagonal=chunk)
            if self.counts.extra.nnz:
                order = np.argsort(owner, kind="stable")
                owner, cols, vals = owner[order], cols[order], vals[order]
            yield chunk, owner, cols, vals

    def _select_chunk(
        self,
        chunk: np.ndarray,
        owner: np.ndarray,
        cols: np.ndarray,
        scores: np.ndarray,
        width: int,
    ):
        """Yield ``(item, indices, scores, bound, bound_idx)`` for each row of a chunk."""
        bounds = np.searchsorted(owner, np.arange(len(chunk) + 1))
        for r, item in enumerate(chunk.tolist()):
            lo, hi = bounds[r], bounds[r + 1]
            yield (item, *select(cols[lo:hi], scores[lo:hi], width))

    def _select_rows(self, items: np.ndarray, width: int):
        """Yield ``(item, indices, scores, bound, bound_idx)``: each sparse row's top
        ``width``."""
        for chunk, owner, cols, vals in self._chunk_rows(items):
            scores = self._score(vals, self.degree[chunk[owner]], self.degree[cols])
            yield from self._select_chunk(chunk, owner, cols, scores, width)

    def _recompute(self, items: np.ndarray) -> None:
        items = np.unique(np.asarray(items, dtype=np.int64))
        self._reselect(items, np.sqrt(np.maximum(self.degree, 0.0)))

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """Every item's list in the tie order (stored lists are kept as unordered sets)."""
        idx, val = sort_rows(padded(self.nbr_idx), self.nbr_val)
        return np.where(idx == PAD, -1, idx), val

    # -- the mapping M ----------------------------------------------------------------------
    @property
    def mapping(self) -> sp.csr_matrix:
        """M as sparse CSR: row i holds i's neighbours and their cosine (cached)."""
        if self._mapping is None:
            self._mapping = self._materialise()
        return self._mapping

    def _materialise(self) -> sp.csr_matrix:
        n = self.n_items
        present = self.nbr_idx >= 0
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(present.sum(axis=1), out=indptr[1:])
        m = sp.csr_matrix(
            (self.nbr_val[present], self.nbr_idx[present], indptr), shape=(n, n), copy=False
        )
        m.sort_indices()
        return m

    def scores(self, rows: sp.csr_matrix) -> np.ndarray:
        return (rows @ self.mapping).toarray()

    def frozen(self, dtype: np.dtype | type = np.float32) -> sp.csr_matrix:
        """A new sparse copy of M in ``dtype`` for serving."""
        return self._materialise().astype(dtype)

    # -- numerical health -------------------------------------------------------------------
    def drift(self, x: sp.csr_matrix, rng: np.random.Generator, n_columns: int = 8) -> float:
        """Largest error of degrees, of G on a few random columns and of their lists.

        Degrees are checked against X and against G's diagonal everywhere (O(nnz X));
        a list whose neighbour set differs from a fresh selection, or a reserve that is not
        the candidates ranked next, counts as an infinite error.
        """
        n = self.n_items
        if n == 0:
            return 0.0
        everything = np.arange(n, dtype=np.int64)
        fresh_degree = np.asarray(x.multiply(x).sum(axis=0)).ravel()
        err = float(np.max(np.abs(self.degree - fresh_degree)))
        err = max(err, float(np.max(np.abs(self.counts.get(everything, everything) - self.degree))))
        cols = np.sort(rng.choice(n, size=min(n_columns, n), replace=False))
        owner, cc, vv = self.counts.rows(cols)
        stored = sp.csr_matrix((vv, (owner, cc)), shape=(len(cols), n))
        fresh = (x[:, cols].T @ x).tocsr()
        diff = abs(stored - fresh)
        err = max(err, float(diff.max()) if diff.nnz else 0.0)
        k = self.k
        for item, idx, val, b, b_idx in self._select_rows(cols, k + self.reserve):
            real = self.nbr_idx[item] >= 0
            have, have_val = self.nbr_idx[item][real], self.nbr_val[item][real]
            mine, theirs = np.argsort(have), np.argsort(idx[:k])
            if not np.array_equal(have[mine], idx[:k][theirs]):
                return float("inf")
            gap = np.abs(have_val[mine] - val[:k][theirs])
            err = max(err, float(np.max(gap, initial=0.0)))
            err = max(err, self._reserve_error(item, idx[k:], val[k:], b, b_idx))
        return err

    def _reserve_error(
        self, item: int, idx: np.ndarray, val: np.ndarray, b: float, b_idx: int
    ) -> float:
        """Error of ``item``'s reserve against the candidates ranked after its list in a fresh
        selection (``idx``, ``val``, then ``(b, b_idx)``); inf where it is not those."""
        m = int(self.res_fill[item])
        if m == 0:
            return 0.0
        held = self.res_idx[item, :m].astype(np.int64)
        if len(idx) < m or not np.array_equal(held, idx[:m]):
            return float("inf")
        # the candidate ranked next must not rank before ``beyond``
        nxt, nxt_idx = (val[m], idx[m]) if len(idx) > m else (b, b_idx)
        if ranks_before(nxt, nxt_idx, self.beyond[item], self.beyond_idx[item]):
            return float("inf")
        return float(np.max(np.abs(self.res_val[item, :m] - val[:m])))

    # -- persistence ------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays in proportion to the stored pairs and n·k."""
        return {
            **self.counts.state(),
            "degree": self.degree,
            "nbr_idx": self.nbr_idx,
            "nbr_val": self.nbr_val,
            "bound": self.bound,
            "bound_idx": self.bound_idx,
            "res_idx": self.res_idx,
            "res_val": self.res_val,
            "beyond": self.beyond,
            "beyond_idx": self.beyond_idx,
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.degree = np.array(arrays["degree"], dtype=np.float64)
        self.counts = Cooccurrence.from_state(arrays, len(self.degree))
        self.nbr_idx = np.array(arrays["nbr_idx"], dtype=np.int32)
        self.nbr_val = np.array(arrays["nbr_val"], dtype=np.float64)
        self.bound = np.array(arrays["bound"], dtype=np.float64)
        self.bound_idx = np.array(arrays["bound_idx"], dtype=np.int64)
        n = len(self.degree)
        if self.nbr_idx.shape[1] != self.k:
            kept = self.nbr_idx.shape[1]
            raise ValueError(f"snapshot keeps {kept} neighbours per item, config says k={self.k}")
        if self.nbr_idx.shape[0] != n or int(self.nbr_idx.max(initial=-1)) >= n:
            # the compiled kernels index by these without bounds checks
            raise ValueError(f"snapshot's neighbour lists do not fit its {n} items")
        self.fill = np.zeros(n, dtype=np.int64)
        self.worst_val = np.full(n, np.inf)
        self.worst_idx = np.full(n, -1, dtype=np.int64)
        self._rescan_worst(np.arange(n))
        self._empty_reserve(n)  # a snapshot without one (or of another size) keeps none
        res = arrays.get("res_idx")
        if res is not None and res.shape == self.res_idx.shape:
            if int(np.max(res, initial=-1)) >= n:
                raise ValueError(f"snapshot's reserves do not fit its {n} items")
            self.res_idx = np.array(res, dtype=np.int32)
            self.res_val = np.array(arrays["res_val"], dtype=np.float64)
            self.res_fill = (self.res_idx >= 0).sum(axis=1).astype(np.int64)
            self.beyond = np.array(arrays["beyond"], dtype=np.float64)
            self.beyond_idx = np.array(arrays["beyond_idx"], dtype=np.int64)
        self._mapping = None
