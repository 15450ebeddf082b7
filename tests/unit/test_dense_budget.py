"""Dense mappings refuse a catalogue over their memory budget, before allocating anything."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.imcorrect import IMCorrect
from models.imcorrect.budget import DenseBudgetError, check_dense_budget, dense_bytes


@pytest.mark.parametrize("mapping", ["ease", "itemknn", "gfcf"])
def test_fit_of_a_too_large_catalogue_names_the_size_and_the_alternative(mapping):
    x = sp.csr_matrix(([1.0], ([0], [99_999])), shape=(1, 100_000))
    model = IMCorrect(mapping, memory_budget_gb=16)
    # 3-4 arrays of 80 GB each: had it tried to allocate, this test would not return
    with pytest.raises(DenseBudgetError, match=r"100,000×100,000 .* GB.*itemknn-topk") as err:
        model.fit(x)
    assert isinstance(err.value, MemoryError)
    assert "16.0 GB" in str(err.value)


def test_learning_that_grows_past_the_budget_is_refused_and_leaves_the_model_usable():
    model = IMCorrect("itemknn", memory_budget_gb=0.001).fit(sp.csr_matrix(np.eye(5)))
    with pytest.raises(DenseBudgetError, match="itemknn-topk"):
        model.learn([0], [2_000])  # 3 × 8 × 2001² bytes ≈ 0.1 GB > 1 MB
    assert model._mapping.gram.shape == (5, 5)
    assert (model.n_users, model.n_items) == (5, 5)
    model.learn([0], [3])
    np.testing.assert_allclose(
        model.mapping, IMCorrect("itemknn").fit(model.interactions).mapping, atol=1e-12
    )


def test_within_budget_the_dense_mappings_still_fit():
    x = sp.csr_matrix(np.eye(50))
    for mapping in ("ease", "itemknn", "gfcf"):
        IMCorrect(mapping, memory_budget_gb=0.01).fit(x)  # 4 × 8 × 50² bytes = 80 kB


def test_the_sparse_mapping_takes_the_catalogue_the_dense_ones_refuse():
    x = sp.csr_matrix(([1.0, 1.0], ([0, 0], [3, 99_999])), shape=(1, 100_000))
    model = IMCorrect("itemknn-topk", k=10).fit(x)
    assert model.mapping.shape == (100_000, 100_000)
    assert model.mapping.nnz == 2
    assert model._mapping.memory_bytes() < 100e6


def test_budget_arithmetic():
    assert dense_bytes(100_000, 1) == 80_000_000_000
    check_dense_budget("ease", 1_000, 4, 32e6)  # exactly at the budget is allowed
    with pytest.raises(DenseBudgetError):
        check_dense_budget("ease", 1_000, 4, 32e6 - 1)
