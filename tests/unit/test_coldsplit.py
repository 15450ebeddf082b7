"""The cold-item protocol: late items, never in training, evaluated on their own cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.coldsplit import cold_items, cold_split, item_first_seen, training_counts
from models.datasets import LeaveOneOut, leave_one_out, load
from models.sequences import eval_set, training_sequences


def _toy() -> LeaveOneOut:
    # items 0..4; item 4 first appears last
    seqs = [np.array([0, 1, 4, 2, 3]), np.array([1, 2, 0, 4]), np.array([4, 0])]
    valid = np.array([2, 0, -1])
    test = np.array([3, 4, -1])
    return LeaveOneOut(3, 5, seqs, valid, test)


def test_cold_items_are_the_last_by_first_appearance():
    first = np.array([5, 1, 9, 3, 9, 7])
    assert cold_items(first, 0.3).tolist() == [False, False, True, False, True, False]
    assert cold_items(first, 0.1).tolist() == [False, False, False, False, True, False]
    with pytest.raises(ValueError):
        cold_items(first, 1.0)


def test_toy_split_drops_cold_items_from_training_only():
    split = _toy()
    cold = np.array([False, False, False, False, True])
    cs = cold_split(split, cold)
    assert cs.split.train_sequence(0).tolist() == [0, 1]  # the cold item 4 removed
    assert cs.split.train_sequence(1).tolist() == [1, 2]
    assert cs.split.train_sequence(2).tolist() == [0]  # short user: everything is training
    assert cs.split.test_history(1).tolist() == [1, 2, 0]
    assert training_counts(cs.split).tolist() == [2, 2, 1, 0, 0]
    test = cs.eval_set(max_len=4, stage="test")
    assert test.users.tolist() == [1] and test.targets.tolist() == [4]
    cs2 = cold_split(split, np.array([False, False, False, True, True]))
    # user 0's test target 3 is cold, and so is item 4 they saw before it: masked, not input
    test2 = cs2.eval_set(max_len=4, stage="test")
    assert test2.users.tolist() == [0, 1] and test2.targets.tolist() == [3, 4]
    assert test2.seen[0].tolist() == [0, 1, 2, 4]
    assert test2.histories[0].tolist() == [0, 1, 2, 3]  # shifted ids 0, 1, 2: no item 4
    assert len(cs.eval_set(max_len=4, stage="valid").users) == 0
    with pytest.raises(ValueError):
        cold_split(split, cold[:3])


@pytest.fixture(scope="module")
def ml100k():
    data = load("ml-100k")
    split = leave_one_out(data)
    first = item_first_seen(data)
    return split, first, cold_split(split, cold_items(first, 0.1))


def test_ml100k_cold_items_are_late(ml100k):
    split, first, cs = ml100k
    assert cs.cold.sum() == math.ceil(0.1 * split.n_items)
    assert first[cs.cold].min() >= first[~cs.cold].max()


def test_ml100k_no_cold_item_reaches_training(ml100k):
    split, _, cs = ml100k
    seqs = training_sequences(cs.split, max_len=50)
    trained = np.unique(np.concatenate([seqs.inputs.numpy().ravel(), seqs.targets.numpy().ravel()]))
    trained = trained[trained > 0] - 1
    assert not cs.cold[trained].any()
    assert (training_counts(cs.split)[cs.cold] == 0).all()
    # and the warm part of training is untouched
    for u in range(split.n_users):
        original = split.train_sequence(u)
        np.testing.assert_array_equal(cs.split.train_sequence(u), original[~cs.cold[original]])


def test_ml100k_cold_cases_have_cold_targets_and_full_histories(ml100k):
    split, _, cs = ml100k
    for stage in ("test", "valid"):
        cases = cs.eval_set(max_len=50, stage=stage)
        assert len(cases.users) > 0
        assert cs.cold[cases.targets].all()
        every = eval_set(cs.split, 50, stage)
        expected = every.users[cs.cold[every.targets]]
        np.testing.assert_array_equal(cases.users, expected)
        for row, u in enumerate(cases.users):
            target = split.test_target[u] if stage == "test" else split.valid_target[u]
            assert cases.targets[row] == target
            # the target is never among the masked (seen) items
            assert target not in set(cases.seen[row].tolist())
            # but every item the user saw before it is, cold ones too (the input lacks them)
            full = split.test_history(u) if stage == "test" else split.valid_history(u)
            np.testing.assert_array_equal(cases.seen[row], np.unique(full))
