import numpy as np
import pytest

from models.metrics import evaluate_scores, hit_and_ndcg, target_ranks


def test_ranks_and_metrics_on_a_hand_computed_case():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.5, -np.inf, 0.4]])
    targets = np.array([0, 0, 2])
    ranks = target_ranks(scores, targets)
    assert ranks.tolist() == [0, 2, 1]
    m = hit_and_ndcg(ranks, ks=(1, 2))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 3)


def test_ties_count_against_the_target_and_a_nan_target_ranks_last():
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [0.0, 0.0, 0.9, 0.0], [np.nan, 1.0, 0.0, 0.0]])
    # a constant row would otherwise put every target first
    assert target_ranks(scores, np.array([1, 0, 0])).tolist() == [2, 3, 3]
    assert target_ranks(scores, np.array([3, 2, 1])).tolist() == [3, 0, 0]


def test_users_without_target_are_skipped():
    scores = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert evaluate_scores(scores, np.array([0, -1]), ks=(1,))["hr@1"] == 1.0
