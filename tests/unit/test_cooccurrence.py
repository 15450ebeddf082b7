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


def test_row_by_row_and_vectorised_lookups_agree(monkeypatch):
    rng = np.random.default_rng(0)
    m = _random_csr(rng, 300, 0.05)
    dense = m.toarray()
    rows = rng.integers(0, 300, size=5_000)
    cols = rng.integers(0, 300, size=5_000)
    rows[:2000] = np.sort(rows[:2000])  # a grouped part and an unordered one
    for per_row in (10**9, 1):  # every query vectorised, then every query row by row
        monkeypatch.setattr(cooccurrence, "_ROW_QUERIES", per_row)
        pos = find(m, rows, cols)
        hit = pos >= 0
        assert np.array_equal(hit, dense[rows, cols] != 0)
        assert np.array_equal(m.data[pos[hit]], dense[rows[hit], cols[hit]])
        assert np.array_equal(m.indices[pos[hit]], cols[hit])
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
