"""Row replacement in X: the in-place shrink equals the copying splice; callers' X untouched."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from models.imcorrect import IMCorrect
from models.imcorrect.sparse_rows import (
    drop_entries,
    drop_entries_in_place,
    shrink_rows_in_place,
    splice_rows,
)


def _random_x(seed: int, shape: tuple[int, int] = (30, 12)) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(rng.random(shape) * (rng.random(shape) < 0.3))
    x.sort_indices()
    return x


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.sets(st.integers(0, 29), min_size=1, max_size=6))
def test_shrinking_in_place_equals_the_copying_splice(seed, rows):
    x = _random_x(seed)
    rows = np.array(sorted(rows))
    rng = np.random.default_rng(seed + 1)
    new = x[rows].tolil()
    for q in range(len(rows)):  # drop a random part of each row
        keep = [i for i, _ in enumerate(new.rows[q]) if rng.random() < 0.5]
        new.rows[q] = [new.rows[q][i] for i in keep]
        new.data[q] = [new.data[q][i] for i in keep]
    new = new.tocsr()
    expected = splice_rows(x, rows, new)
    edited = x.copy()
    assert shrink_rows_in_place(edited, rows, new)
    assert edited.nnz == expected.nnz
    np.testing.assert_array_equal(edited.indptr, expected.indptr)
    np.testing.assert_array_equal(edited.indices, expected.indices)
    np.testing.assert_array_equal(edited.data, expected.data)


def test_a_growing_row_is_left_to_the_copy():
    x = _random_x(3)
    before = x.copy()
    grown = sp.csr_matrix(np.ones((1, 12)))
    assert not shrink_rows_in_place(x, np.array([4]), grown)
    assert (x != before).nnz == 0


def test_forgetting_never_edits_the_matrix_the_model_was_fitted_on():
    x = _random_x(5)
    before = x.copy()
    model = IMCorrect("itemknn-topk", k=3).fit(x)  # the model's X shares x's arrays
    model.forget(users=[1, 2])
    model.forget(items=[0])
    assert (x != before).nnz == 0 and np.array_equal(x.indptr, before.indptr)
    model.learn([7], [3])  # X is now the model's own copy: later forgets edit it in place
    model.forget(users=[7], interactions=[(8, int(x[8].indices[-1]))] if x[8].nnz else [])
    fresh = IMCorrect("itemknn-topk", k=3).fit(model.interactions)
    assert abs(model.mapping - fresh.mapping).max() <= 1e-12 if fresh.mapping.nnz else True
    assert (x != before).nnz == 0


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), items=st.sets(st.integers(0, 11), min_size=1, max_size=4))
def test_dropping_the_entries_of_some_items_equals_the_splice_of_their_rows(seed, items):
    x = _random_x(seed)
    hit = np.flatnonzero(np.isin(x.indices, sorted(items)))
    users = np.unique(np.searchsorted(x.indptr, hit, side="right") - 1)
    new = x[users].tocsr()
    new.data[np.isin(new.indices, sorted(items))] = 0.0
    new.eliminate_zeros()
    expected = splice_rows(x, users, new) if len(users) else x
    before = x.copy()
    out = drop_entries(x, hit)
    assert out.has_sorted_indices
    np.testing.assert_array_equal(out.indptr, expected.indptr)
    np.testing.assert_array_equal(out.indices, expected.indices)
    np.testing.assert_array_equal(out.data, expected.data)
    assert (x != before).nnz == 0  # the input is left as it was
    drop_entries_in_place(x, hit)  # and in x's own arrays, the same matrix
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(x, name), getattr(expected, name))
