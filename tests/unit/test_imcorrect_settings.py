"""The streaming worker builds the mapping its settings name, the sparse one included."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.imcorrect.budget import DenseBudgetError
from streams.config import load_settings
from streams.services import imcorrect as worker


def test_environment_selects_the_sparse_mapping_and_its_k(monkeypatch, tmp_path):
    monkeypatch.setenv("LETHE_IMCORRECT__MAPPING", "itemknn-topk")
    monkeypatch.setenv("LETHE_IMCORRECT__K", "7")
    monkeypatch.setenv("LETHE_IMCORRECT__SHRINK", "2.5")
    monkeypatch.setenv("LETHE_IMCORRECT__RESERVE", "3")
    state = worker.new_state(load_settings())
    model = state.model
    assert model.mapping_name == "itemknn-topk"
    assert model._mapping.config() == {"k": 7, "shrink": 2.5, "reserve": 3}
    model.learn([0, 0, 1], [0, 200_000, 0])  # a catalogue no dense mapping would take
    assert sp.issparse(model.freeze()._mapping)
    model.save(tmp_path / "snap")
    loaded = type(model).load(tmp_path / "snap")
    assert loaded._mapping.config() == {"k": 7, "shrink": 2.5, "reserve": 3}
    np.testing.assert_array_equal(loaded.score([0]), model.score([0]))


def test_dense_mapping_budget_comes_from_the_settings(monkeypatch):
    monkeypatch.setenv("LETHE_IMCORRECT__MAPPING", "ease")
    monkeypatch.setenv("LETHE_IMCORRECT__MEMORY_BUDGET_GB", "0.001")
    model = worker.new_state(load_settings()).model
    with pytest.raises(DenseBudgetError, match="itemknn-topk"):
        model.learn([0], [5_000])
