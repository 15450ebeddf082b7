"""Sparse-row helpers of IMCorrect: input conversion, index validation, row splicing
(by a copy, or in place when rows only shrink)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from models.imcorrect.jit import njit


def as_csr(x: sp.spmatrix | np.ndarray) -> sp.csr_matrix:
    m = sp.csr_matrix(x, dtype=np.float64)
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def valid_indices(values: Iterable[int] | None, bound: int) -> np.ndarray:
    if values is None:
        return np.zeros(0, dtype=np.int64)
    arr = np.unique(np.asarray(list(values), dtype=np.int64))
    return arr[(arr >= 0) & (arr < bound)]


def splice_rows(x: sp.csr_matrix, rows: np.ndarray, new: sp.csr_matrix) -> sp.csr_matrix:
    """X with ``rows`` (sorted, unique) replaced by the rows of ``new``.

    Runs of unchanged rows are copied wholesale, so the cost is one memory copy of X
    rather than a sparse addition plus a pass to drop zeros (which is what dominated a
    one-user forget on a 20M-interaction X).
    """
    indptr = x.indptr.astype(np.int64)
    lengths = np.diff(indptr)
    lengths[rows] = np.diff(new.indptr)
    out_indptr = np.zeros(len(indptr), dtype=np.int64)
    np.cumsum(lengths, out=out_indptr[1:])
    data, indices = [], []
    done = 0  # first row of x not copied yet
    for k, r in enumerate(rows.tolist()):
        a, b = indptr[done], indptr[r]
        data += [x.data[a:b], new.data[new.indptr[k] : new.indptr[k + 1]]]
        indices += [x.indices[a:b], new.indices[new.indptr[k] : new.indptr[k + 1]]]
        done = r + 1
    data.append(x.data[indptr[done] :])
    indices.append(x.indices[indptr[done] :])
    index_type = np.int32 if max(out_indptr[-1], x.shape[1]) < 2**31 else np.int64
    if index_type == np.int32:
        out_indptr = out_indptr.astype(np.int32)
    out = sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices).astype(index_type), out_indptr),
        shape=x.shape,
    )
    out.has_sorted_indices = True
    return out


def shrink_rows_in_place(x: sp.csr_matrix, rows: np.ndarray, new: sp.csr_matrix) -> bool:
    """Replace ``rows`` (sorted, unique) of ``x`` by the rows of ``new`` inside x's own arrays;
    False (and nothing done) if a row would grow.

    Each run of unchanged rows moves left once by what the rows before it lost, so the cost
    is a move of X's tail, with no new array of X's size (on a 20M-interaction X, allocating
    and faulting in that copy took ~40 ms of a ~75 ms one-user forget). Only the row
    pointers from the first changed row on are rewritten: recomputing all of them (1M
    users) was a third of the time left.
    """
    indptr = x.indptr
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return False
    starts = indptr[rows].astype(np.int64)
    ends = indptr[rows + 1].astype(np.int64)
    new_lengths = np.diff(new.indptr).astype(np.int64)
    if np.any(new_lengths > ends - starts):
        return False
    data, indices = x.data, x.indices
    bounds = new.indptr.tolist()
    # where each run of unchanged rows ends: the next changed row's start, or X's end
    run_ends = indptr[rows[1:]].astype(np.int64).tolist() + [int(indptr[-1])]
    stops = (rows[1:] + 1).tolist() + [len(indptr)]
    write, lost = int(starts[0]), 0
    for q, r in enumerate(rows.tolist()):
        size = bounds[q + 1] - bounds[q]
        data[write : write + size] = new.data[bounds[q] : bounds[q + 1]]
        indices[write : write + size] = new.indices[bounds[q] : bounds[q + 1]]
        write += size
        start, end = int(ends[q]), run_ends[q]
        if write != start:  # an overlapping move left: numpy copies it as memmove does
            data[write : write + end - start] = data[start:end]
            indices[write : write + end - start] = indices[start:end]
        write += end - start
        lost += int(ends[q] - starts[q]) - size
        if lost:  # row r's end, and the starts of the run after it
            indptr[r + 1 : stops[q]] -= lost
    x.data, x.indices = data[:write], indices[:write]
    return True


def drop_entries(x: sp.csr_matrix, positions: np.ndarray) -> sp.csr_matrix:
    """A new X without the entries at ``positions`` (sorted, unique, into ``x.data``).

    One vectorised pass over X's arrays: forgetting a popular item touches the rows of all
    its users, which a row-by-row splice visits in a Python loop (~0.5 s for 40k users).
    """
    keep = np.ones(x.nnz, dtype=bool)
    keep[positions] = False
    # each row start moves left by the entries dropped before it
    indptr = x.indptr - np.searchsorted(positions, x.indptr).astype(x.indptr.dtype)
    out = sp.csr_matrix((x.data[keep], x.indices[keep], indptr), shape=x.shape, copy=False)
    out.has_sorted_indices = x.has_sorted_indices
    return out


def rows_without(
    rows: sp.csr_matrix, whole: np.ndarray, columns: Sequence[Iterable[int]]
) -> sp.csr_matrix:
    """``rows`` without every entry of the rows where ``whole`` is set, nor the entries in
    ``columns[k]`` of row k: the rows a forget leaves (one pass, no Python loop over
    entries; a forget of 1 % of a million users sliced 10,000 rows one by one)."""
    lengths = np.diff(rows.indptr)
    owner = np.repeat(np.arange(rows.shape[0], dtype=np.int64), lengths)
    gone = np.asarray(whole, dtype=bool)[owner]
    named = [(k, c) for k, cols in enumerate(columns) if not whole[k] for c in cols]
    if named:
        keys = owner * rows.shape[1] + rows.indices
        wanted = np.array([k * rows.shape[1] + c for k, c in named], dtype=np.int64)
        gone |= np.isin(keys, wanted)
    return drop_entries(rows, np.flatnonzero(gone))


@njit
def _close_gaps(data: np.ndarray, indices: np.ndarray, positions: np.ndarray) -> int:
    """Move every entry left over the ``positions`` (sorted, unique) before it; returns the
    new number of entries."""
    write = positions[0]
    for q in range(len(positions)):
        stop = positions[q + 1] if q + 1 < len(positions) else len(data)
        for p in range(positions[q] + 1, stop):
            data[write] = data[p]
            indices[write] = indices[p]
            write += 1
    return write


def drop_entries_in_place(x: sp.csr_matrix, positions: np.ndarray) -> None:
    """:func:`drop_entries` inside x's own arrays: one move of the entries after the first
    position, with no new array of X's size (a popular item's users are spread over all
    of X, so the copy :func:`drop_entries` makes was most of forgetting the item)."""
    if len(positions) == 0:
        return
    positions = np.asarray(positions, dtype=np.int64)
    end = _close_gaps(x.data, x.indices, positions)
    x.indptr[:] = x.indptr - np.searchsorted(positions, x.indptr).astype(x.indptr.dtype)
    x.data, x.indices = x.data[:end], x.indices[:end]
