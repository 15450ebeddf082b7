"""IMCorrect contract tests, once per mapping (see imcorrect_contract.MappingContract)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.imcorrect import IMCorrect
from tests.unit.imcorrect_contract import MappingContract


class TestEASE(MappingContract):
    mapping = "ease"
    params = {"l2": 3.0}


class TestItemKNN(MappingContract):
    mapping = "itemknn"
    params = {"shrink": 2.0}


class TestGFCF(MappingContract):
    mapping = "gfcf"


def test_ease_matches_the_closed_form():
    rng = np.random.default_rng(0)
    x = (rng.random((30, 12)) < 0.3).astype(float)
    model = IMCorrect("ease", l2=5.0).fit(sp.csr_matrix(x))
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(12))
    expected = np.eye(12) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(model.mapping, expected, atol=1e-12)
    assert np.allclose(np.diag(model.mapping), 0)


def test_itemknn_is_cosine_similarity():
    rng = np.random.default_rng(1)
    x = (rng.random((30, 10)) < 0.4).astype(float)
    model = IMCorrect("itemknn").fit(sp.csr_matrix(x))
    norms = np.linalg.norm(x, axis=0)
    cos = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(cos, 0)
    np.testing.assert_allclose(model.mapping, cos, atol=1e-12)


def test_gfcf_is_the_normalised_item_filter():
    rng = np.random.default_rng(2)
    x = (rng.random((25, 9)) < 0.4).astype(float)
    x[:, 0] = 1  # no empty rows
    du, di = x.sum(axis=1), x.sum(axis=0)
    rt = x / np.sqrt(du)[:, None] / np.sqrt(di)[None, :]
    model = IMCorrect("gfcf").fit(sp.csr_matrix(x))
    np.testing.assert_allclose(model.mapping, rt.T @ rt, atol=1e-12)


def test_poisoning_is_undone_by_forgetting_the_fake_users():
    rng = np.random.default_rng(4)
    x = sp.csr_matrix((rng.random((200, 30)) < 0.1).astype(float))
    target = 29
    clean = IMCorrect("ease", l2=10.0).fit(x)
    exposure = lambda m: np.mean([target in r for r in m.recommend(np.arange(200), 5)[0]])  # noqa: E731
    before = exposure(clean)
    fakes = np.arange(200, 240)
    popular = np.argsort(-np.asarray(x.sum(axis=0)).ravel())[:5]
    users = np.repeat(fakes, 6)
    items = np.tile(np.append(popular, target), len(fakes))
    clean.learn(users, items)
    attacked = exposure(clean)
    clean.forget(users=fakes)
    assert attacked > before
    assert exposure(clean) == pytest.approx(before)


def test_unknown_mapping_is_rejected():
    with pytest.raises(ValueError, match="unknown mapping"):
        IMCorrect("svd")


def test_learn_refuses_values_no_correction_could_keep_exact():
    model = IMCorrect("gfcf").fit(sp.csr_matrix(np.eye(3)))
    with pytest.raises(ValueError, match="finite"):
        model.learn([0], [1], [float("nan")])
    with pytest.raises(ValueError, match="non-negative"):
        model.learn([0], [2], [-3.0])
    model.learn([0], [2], [2.0])  # a positive weight is fine
