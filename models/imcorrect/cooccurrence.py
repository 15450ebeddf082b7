"""Sparse symmetric co-occurrence counts G = XᵀX, updated in place.

Only pairs of items that some user shares are stored, so memory grows with the co-occurring
pairs, never with n². The matrix lives in two CSR parts:

* ``base`` — the bulk, built by :meth:`Cooccurrence.from_x`; updates to pairs it already holds
  are written into its data array in place (a pair that drops to zero stays as an explicit
  zero until the next compaction, and readers skip zeros);
* ``extra`` — pairs that appeared after the last compaction. It is small, so adding to it is
  cheap; once it grows past a share of ``base`` both are merged (amortised O(pairs)).

A pair is in at most one part. Lookups are a vectorised binary search inside the CSR rows,
so a micro-batch touching m pairs costs O(m log row-length), independent of n.

Counts of integer-valued X (the implicit, binary case) are stored in float32, which holds
every integer below 2²⁴ exactly: every |G_ij| ≤ max_i G_ii (G is a Gram matrix), so while
the largest diagonal entry stays below that, float32 storage is exact and takes 8 bytes a
pair instead of 12. A non-integer change, or a degree reaching 2²⁴, switches the store to
float64 first.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.imcorrect.jit import njit
from models.imcorrect.threads import kernel_threads, pool

#: merge ``extra`` into ``base`` when it holds more than this share of ``base``'s pairs
COMPACT_SHARE = 0.05
COMPACT_MIN = 200_000
#: float32 represents every integer of magnitude below this exactly
EXACT_FLOAT32 = 2.0**24


def _empty(n: int, dtype: type = np.float64) -> sp.csr_matrix:
    return sp.csr_matrix((n, n), dtype=dtype)


def integral(values: np.ndarray) -> bool:
    """Every value finite and whole."""
    values = np.asarray(values)
    if values.dtype.kind in "biu":
        return True
    return bool(_all_whole(values.reshape(-1)))


@njit
def _all_whole(values: np.ndarray) -> bool:
    # one pass that stops at the first fraction (numpy's took two passes and a copy)
    for v in values:
        if not np.isfinite(v) or np.floor(v) != v:
            return False
    return True


#: a gather of at most this many rows copies each row's slice (see :func:`gather`)
_SLICE_ROWS = 20_000


def find(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Position of each (row, col) in ``m.data``, or -1 where ``m`` stores no such entry.

    ``m`` must have sorted indices. One compiled binary search per query; a query in the
    row of the one before it, at a higher column, gallops on from that one's position (the
    pairs of a change come grouped by row and sorted: |I|² of them in |I| rows for one
    user's items, 20M in the 100k rows of a 100k-item catalogue for 1 % of its users).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    return _find(m.indptr, m.indices, rows, cols)


@njit(inline="always")
def lower_bound(indices: np.ndarray, lo: int, hi: int, col: int) -> int:
    """The first position in ``indices[lo:hi]`` (sorted) at or past ``col``, else ``hi``."""
    while lo < hi:
        mid = (lo + hi) // 2
        if indices[mid] < col:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit
def _find(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, cols: np.ndarray):
    out = np.full(len(rows), -1, dtype=np.int64)
    prev_row, prev_col, start = -1, -1, 0
    for q in range(len(rows)):
        row, col = rows[q], cols[q]
        lo, end = np.int64(indptr[row]), np.int64(indptr[row + 1])
        hi = end
        if row == prev_row and col >= prev_col:
            # nothing before the previous query's position can match: gallop from there
            # (steps 1, 2, 4, ... stay near it, in cache) to a range holding the answer
            lo, hi, step = start, start, 1
            while hi < end and indices[hi] < col:
                lo = hi + 1
                hi = min(lo + step, end)
                step *= 2
        lo = lower_bound(indices, lo, hi, col)
        if lo < end and indices[lo] == col:
            out[q] = lo
        prev_row, prev_col, start = row, col, lo
    return out


#: a change with fewer pairs is added on one thread (a thread's start costs more)
_PARALLEL_PAIRS = 1_000_000
_ALL = np.zeros(0, dtype=np.int64)


def add_found(
    m: sp.csr_matrix,
    rows: np.ndarray,
    cols: np.ndarray,
    deltas: np.ndarray,
    before: np.ndarray,
    into: np.ndarray | None = None,
) -> np.ndarray:
    """``m[rows, cols] += deltas`` where ``m`` stores the entry, its value before written to
    ``before[into[q]]`` (``before[q]`` without ``into``); returns the queries ``m`` does not
    store. The pairs are unique, so parts of them run on the kernel threads at once."""
    into = _ALL if into is None else np.asarray(into, dtype=np.int64)
    n = len(rows)
    threads = kernel_threads() if n >= _PARALLEL_PAIRS else 1
    cuts = np.linspace(0, n, threads + 1).astype(np.int64)
    parts = list(zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True))

    def run(part: tuple[int, int]) -> np.ndarray:
        a, b = part
        args = (rows[a:b], cols[a:b], deltas[a:b], before, into[a:b] if len(into) else into)
        return a + _find_add(m.indptr, m.indices, m.data, *args, a)

    rest = pool().map(run, parts[1:]) if len(parts) > 1 else iter(())
    return np.concatenate([run(parts[0]), *rest])


@njit(nogil=True)
def _find_add(indptr, indices, data, rows, cols, deltas, before, into, offset) -> np.ndarray:
    # :func:`_find`, reading and adding as it goes (one pass instead of five masked ones)
    missing = np.empty(len(rows), dtype=np.int64)
    n_missing = 0
    pos = _find(indptr, indices, rows, cols)
    for q in range(len(rows)):
        p = pos[q]
        if p < 0:
            missing[n_missing] = q
            n_missing += 1
        else:
            at = into[q] if len(into) else offset + q
            before[at] = data[p]
            data[p] = data[p] + deltas[q]
    return missing[:n_missing]


def gather(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(owner, cols, vals)`` of every stored entry in ``rows``; ``owner`` indexes ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = m.indptr[rows].astype(np.int64)
    lengths = m.indptr[rows + 1].astype(np.int64) - starts
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    if len(rows) <= _SLICE_ROWS:
        # a copy of each row's slice: no index array of the total length to build and follow
        ends = (starts + lengths).tolist()
        cuts = list(zip(starts.tolist(), ends, strict=True))
        cols = np.concatenate([m.indices[a:b] for a, b in cuts] or [m.indices[:0]])
        vals = np.concatenate([m.data[a:b] for a, b in cuts] or [m.data[:0]])
        return owner, cols.astype(np.int64), vals
    total = int(lengths.sum())
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    take = np.repeat(starts - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return owner, m.indices[take].astype(np.int64), m.data[take]


def _part(arrays: dict[str, np.ndarray], name: str, n: int, dtype: np.dtype) -> sp.csr_matrix:
    """One saved CSR part of G, checked, from the arrays as loaded (see
    :meth:`Cooccurrence.from_state`)."""
    data, indices, indptr = (
        np.asarray(arrays[f"{name}_{field}"]) for field in ("data", "indices", "indptr")
    )
    data = data.astype(dtype, copy=not data.flags.writeable)  # the counts change in place
    part = sp.csr_matrix((data, indices, indptr), shape=(n, n), copy=False)
    # every index in range (the compiled lookups do not check bounds)
    part.check_format(full_check=True)
    part.sort_indices()
    return part


class Cooccurrence:
    """G = XᵀX for an interaction matrix X, diagonal included (G_ii = Σ_u x_ui²)."""

    def __init__(self, n_items: int = 0, dtype: type = np.float64) -> None:
        self.dtype = np.dtype(dtype)
        self.base = _empty(n_items, dtype)
        self.extra = _empty(n_items, dtype)
        self.max_diag = 0.0  # upper bound on max_i |G_ii|
        #: some stored count may be 0 (a pair whose users were all forgotten): the entry
        #: stays until the next compaction, and a snapshot must not carry it
        self.zeros = False

    @classmethod
    def from_x(cls, x: sp.csr_matrix) -> Cooccurrence:
        """Count every pair from scratch (the gold standard for the incremental path)."""
        x = sp.csr_matrix(x)
        squares = np.bincount(
            x.indices, weights=np.asarray(x.data, float) ** 2, minlength=x.shape[1]
        )
        max_diag = float(squares.max(initial=0.0))
        exact32 = integral(x.data) and max_diag < EXACT_FLOAT32
        out = cls(x.shape[1], np.float32 if exact32 else np.float64)
        xc = sp.csr_matrix(x, dtype=out.dtype)
        g = (xc.T.tocsr() @ xc).tocsr()
        g.eliminate_zeros()
        g.sort_indices()
        out.base = g
        out.max_diag = max_diag
        return out

    def _to_float64(self) -> None:
        self.dtype = np.dtype(np.float64)
        self.base = self.base.astype(np.float64)
        self.extra = self.extra.astype(np.float64)

    def _keep_exact(self, rows: np.ndarray, cols: np.ndarray, deltas: np.ndarray) -> None:
        """Switch float32 storage to float64 before a change it could not hold exactly."""
        diag = rows == cols
        peak = self.max_diag
        if diag.any():
            peak = max(peak, float(np.abs(self.get(rows[diag], cols[diag]) + deltas[diag]).max()))
        self.max_diag = peak
        if self.dtype == np.float32 and (peak >= EXACT_FLOAT32 or not integral(deltas)):
            self._to_float64()

    @property
    def n_items(self) -> int:
        return self.base.shape[0]

    @property
    def nnz(self) -> int:
        """Stored entries (explicit zeros included until the next compaction)."""
        return int(self.base.nnz + self.extra.nnz)

    def grow(self, n_items: int) -> None:
        if n_items > self.n_items:
            self.base.resize((n_items, n_items))
            self.extra.resize((n_items, n_items))

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Current values of the given entries (0 where no pair is stored)."""
        out = np.zeros(len(rows))
        pos = find(self.base, rows, cols)
        hit = pos >= 0
        out[hit] = self.base.data[pos[hit]]
        rest = np.flatnonzero(~hit)
        if len(rest) and self.extra.nnz:
            pos2 = find(self.extra, rows[rest], cols[rest])
            hit2 = pos2 >= 0
            out[rest[hit2]] = self.extra.data[pos2[hit2]]
        return out

    def add(self, rows: np.ndarray, cols: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        """G[rows, cols] += deltas for unique (row, col) entries (the caller keeps symmetry);
        returns the values before the addition (one search serves both)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        deltas = np.asarray(deltas, dtype=np.float64)
        before = self._add(rows, cols, deltas)
        if not self.zeros and bool(np.any(before + deltas == 0)):
            self.zeros = True
        return before

    def _add(self, rows: np.ndarray, cols: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        self._keep_exact(rows, cols, deltas)
        before = np.zeros(len(rows))
        rest = add_found(self.base, rows, cols, deltas, before)
        if len(rest) == 0:
            return before
        if self.extra.nnz:
            missing = add_found(self.extra, rows[rest], cols[rest], deltas[rest], before, rest)
            rest = rest[missing]
        if len(rest) == 0:
            return before
        n = self.n_items
        new = sp.csr_matrix(
            (deltas[rest].astype(self.dtype), (rows[rest], cols[rest])), shape=(n, n)
        )
        self.extra = (self.extra + new).tocsr()
        self.extra.sort_indices()
        if self.extra.nnz > max(COMPACT_MIN, COMPACT_SHARE * self.base.nnz):
            self.compact()
        return before

    def compact(self) -> None:
        """Merge ``extra`` into ``base`` and drop pairs whose count reached zero."""
        merged = (self.base + self.extra).tocsr() if self.extra.nnz else self.base
        merged.eliminate_zeros()
        merged.sort_indices()
        self.base = merged
        self.extra = _empty(self.n_items, self.dtype)
        self.zeros = False

    def row_lengths(self, items: np.ndarray) -> np.ndarray:
        """Stored entries (zeros included) in each of the given rows."""
        items = np.asarray(items, dtype=np.int64)
        lengths = np.diff(self.base.indptr)[items].astype(np.int64)
        if self.extra.nnz:
            lengths += np.diff(self.extra.indptr)[items]
        return lengths

    def rows(
        self, items: np.ndarray, skip_diagonal: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-zero entries of the given rows: ``(owner, cols, vals)``, owner indexing items;
        with ``skip_diagonal`` (= items) the diagonal entries are left out in the same pass."""
        owner, cols, vals = gather(self.base, items)
        if self.extra.nnz:
            o2, c2, v2 = gather(self.extra, items)
            owner = np.concatenate([owner, o2])
            cols = np.concatenate([cols, c2])
            vals = np.concatenate([vals, v2])
        keep = vals != 0
        if skip_diagonal is not None:
            keep &= cols != np.asarray(skip_diagonal, dtype=np.int64)[owner]
        return owner[keep], cols[keep], vals[keep]

    def matrix(self) -> sp.csr_matrix:
        """The whole of G as one canonical CSR matrix (compacts first)."""
        self.compact()
        return self.base

    def state(self) -> dict[str, np.ndarray]:
        """Both parts as they are: merging them first would build a second copy of every
        pair (seconds and gigabytes at 10⁸ pairs) inside a snapshot on the worker's loop.
        Unless a count fell to 0 since the last merge: the entry of a pair whose users were
        all forgotten says that pair once occurred, so it is dropped before it reaches a
        file (docs/privacy.md)."""
        if self.zeros:
            self.compact()
        arrays = {"g_data": self.base.data, "g_indices": self.base.indices}
        arrays["g_indptr"] = self.base.indptr
        if self.extra.nnz:
            extra = self.extra
            arrays.update(
                g_extra_data=extra.data, g_extra_indices=extra.indices, g_extra_indptr=extra.indptr
            )
        return arrays

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], n_items: int) -> Cooccurrence:
        """The counts saved by :meth:`state`. The given arrays become their live storage
        (not copied: at 10⁸ pairs a copy costs seconds and gigabytes), so they must not be
        handed to another model; read-only ones are copied."""
        data = np.asarray(arrays["g_data"])
        out = cls(n_items, np.float32 if data.dtype == np.float32 else np.float64)
        out.base = _part(arrays, "g", n_items, out.dtype)
        if "g_extra_data" in arrays:  # saved before its next compaction
            out.extra = _part(arrays, "g_extra", n_items, out.dtype)
            rows = np.repeat(np.arange(n_items), np.diff(out.extra.indptr))
            if np.any(find(out.base, rows, out.extra.indices.astype(np.int64)) >= 0):
                # a pair lives in one part only: lookups read the first, selections both
                raise ValueError("snapshot's counts hold a pair in both parts")
        out.zeros = bool(np.any(out.base.data == 0) or np.any(out.extra.data == 0))
        everything = np.arange(n_items)
        out.max_diag = float(np.abs(out.get(everything, everything)).max(initial=0.0))
        return out
