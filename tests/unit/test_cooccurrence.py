"""The sparse count store: both lookup paths and both gather paths agree with scipy."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.imcorrect import cooccurrence
from models.imcorrect.cooccurrence import Cooccurrence, find, gather


def _random_csr(rng: np.random.Generator, n: int, density: float) -> sp.csr_matrix:
    m = sp.random(n, n, density=density, random_state=rng, format="csr")
    m.sort_indices()
    return m


def test_lookups_in_any_order_agree_with_the_dense_matrix():
    rng = np.random.default_rng(0)
    m = _random_csr(rng, 300, 0.05)
    dense = m.toarray()
    rows = rng.integers(0, 300, size=5_000)
    cols = rng.integers(0, 300, size=5_000)
    # grouped by row with sorted columns (a change's pairs), grouped with unsorted ones,
    # repeated queries, and no order at all
    order = np.lexsort((cols[:2000], rows[:2000]))
    rows[:2000], cols[:2000] = rows[:2000][order], cols[:2000][order]
    rows[2000:3000] = np.sort(rows[2000:3000])
    rows[3000:3100], cols[3000:3100] = rows[2900:3000], cols[2900:3000]
    pos = find(m, rows, cols)
    hit = pos >= 0
    assert np.array_equal(hit, dense[rows, cols] != 0)
    assert np.array_equal(m.data[pos[hit]], dense[rows[hit], cols[hit]])
    assert np.array_equal(m.indices[pos[hit]], cols[hit])
    # every stored entry is found where it is
    r, c = m.nonzero()
    assert np.array_equal(find(m, r, c), np.arange(m.nnz))
    assert len(find(m, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))) == 0


def test_slice_and_index_gathers_agree(monkeypatch):
    rng = np.random.default_rng(1)
    m = _random_csr(rng, 200, 0.1)
    items = rng.choice(200, size=50, replace=False)
    outs = []
    for limit in (0, 10**9):
        monkeypatch.setattr(cooccurrence, "_SLICE_ROWS", limit)
        outs.append(gather(m, items))
    for a, b in zip(*outs, strict=True):
        assert np.array_equal(a, b)
    owner, cols, vals = outs[0]
    again = sp.csr_matrix((vals, (owner, cols)), shape=(50, 200)).toarray()
    assert np.array_equal(again, m[items].toarray())


def test_add_returns_the_values_before_it_and_rows_can_skip_the_diagonal():
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=float))
    counts = Cooccurrence.from_x(x)
    rows, cols = np.array([0, 1, 2, 0]), np.array([1, 0, 0, 2])
    before = counts.add(rows, cols, np.array([1.0, 1.0, 2.0, 2.0]))
    assert np.array_equal(before, [2.0, 2.0, 1.0, 1.0])
    assert np.array_equal(counts.get(rows, cols), [3.0, 3.0, 3.0, 3.0])
    items = np.array([0, 2])
    owner, cols_out, _ = counts.rows(items, skip_diagonal=items)
    assert not np.any(cols_out == items[owner])
    owner_all, cols_all, _ = counts.rows(items)
    assert np.sum(cols_all == items[owner_all]) == 2


def test_sorted_lookups_along_a_long_row_find_every_entry_and_nothing_else():
    # the gallop from one query to the next over gaps of every size, both ends included
    rng = np.random.default_rng(3)
    n = 20_000
    cols = np.sort(rng.choice(n, size=5_000, replace=False))
    m = sp.csr_matrix((np.ones(len(cols)), (np.zeros(len(cols), dtype=np.int64), cols)), (2, n))
    queries = np.unique(np.concatenate([rng.choice(n, 3_000), cols[::7], [0, n - 1]]))
    pos = find(m, np.zeros(len(queries), dtype=np.int64), queries)
    stored = np.isin(queries, cols)
    assert np.array_equal(pos >= 0, stored)
    assert np.array_equal(m.indices[pos[stored]], queries[stored])
    assert np.all(find(m, np.ones(3, dtype=np.int64), np.array([0, 5, n - 1])) == -1)


def test_adds_split_over_threads_equal_one_pass_in_both_parts(monkeypatch):
    rng = np.random.default_rng(3)
    x = sp.random(400, 120, density=0.05, random_state=rng, format="csr")
    x.data[:] = 1.0
    pairs_base = sp.random(120, 120, density=0.2, random_state=rng, format="coo")
    keys = np.unique(pairs_base.row.astype(np.int64) * 120 + pairs_base.col)
    rows, cols = keys // 120, keys % 120
    deltas = rng.integers(-2, 3, size=len(rows)).astype(float)
    results = []
    for threshold, threads in ((10**9, 1), (1, 3)):
        monkeypatch.setattr(cooccurrence, "_PARALLEL_PAIRS", threshold)
        monkeypatch.setattr(cooccurrence, "kernel_threads", lambda t=threads: t)
        counts = Cooccurrence.from_x(x)
        # a first change puts new pairs into ``extra``; the second then finds pairs in
        # both parts and new ones again
        counts.add(rows[::2], cols[::2], deltas[::2])
        before = counts.add(rows, cols, deltas)
        results.append((before, counts.matrix().toarray()))
    (before_one, g_one), (before_threads, g_threads) = results
    assert np.array_equal(before_one, before_threads)
    assert np.array_equal(g_one, g_threads)
    # and both equal the dense arithmetic
    dense = (x.T @ x).toarray()
    np.add.at(dense, (rows[::2], cols[::2]), deltas[::2])
    expected_before = dense[rows, cols].copy()
    np.add.at(dense, (rows, cols), deltas)
    assert np.array_equal(before_one, expected_before)
    assert np.allclose(g_one, dense)


def test_whole_numbers_are_told_from_fractions_in_one_pass():
    assert cooccurrence.integral(np.array([1.0, -3.0, 0.0], dtype=np.float32))
    assert cooccurrence.integral(np.array([2, 5]))
    assert not cooccurrence.integral(np.array([1.0, 0.5]))
    assert not cooccurrence.integral(np.array([1.0, np.inf]))
    assert not cooccurrence.integral(np.array([np.nan]))
