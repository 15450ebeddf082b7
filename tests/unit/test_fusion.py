"""Score fusion and top-k with banned items."""

from __future__ import annotations

import numpy as np
import pytest

from models.fusion import fuse, fuse_batch, standardise, top_k


def test_standardise_ignores_non_finite_entries():
    z = standardise(np.array([[1.0, 3.0, np.nan, -np.inf]]))
    np.testing.assert_allclose(z, [[-1.0, 1.0, 0.0, 0.0]], atol=1e-6)


def test_fuse_is_scale_free_and_weighted():
    crm = np.array([[0.0, 10.0, 20.0]])
    imc = np.array([[3.0, 2.0, 1.0]])
    np.testing.assert_allclose(fuse(crm * 100, imc, 1.0), fuse(crm, imc / 7, 1.0), atol=1e-6)
    assert np.argmax(fuse(crm, imc, 0.5)[0]) == 2
    assert np.argmax(fuse(crm, imc, 5.0)[0]) == 0
    np.testing.assert_allclose(fuse(crm, None, 3.0), standardise(crm))
    with pytest.raises(ValueError):
        fuse(None, None, 1.0)


def test_top_k_orders_and_never_returns_banned():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    idx, vals = top_k(scores, 3, banned=np.array([1]))
    assert idx.tolist() == [3, 2, 4]
    np.testing.assert_allclose(vals, [0.7, 0.5, 0.3])
    idx, _ = top_k(scores, 10, banned=np.array([0, 1, 2]))
    assert idx.tolist() == [3, 4], "fewer than k when too few are allowed"
    assert top_k(scores, 0)[0].size == 0


def test_fuse_batch_ranks_rows_lacking_a_model_by_the_other():
    crm = np.array([[0.0, 1.0, 2.0], [np.nan, np.nan, np.nan]])
    imc = np.array([[2.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    fused = fuse_batch(crm, imc, 0.0)
    np.testing.assert_allclose(fused[0], standardise(crm[:1])[0])  # weight 0: SASRec only
    assert np.argmax(fused[1]) == 1  # no SASRec row: IMCorrect alone, whatever the weight
    np.testing.assert_allclose(fuse_batch(crm[:1], imc[:1], 0.5), fuse(crm[:1], imc[:1], 0.5))
