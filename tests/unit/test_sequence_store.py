"""The trainer's and scorer's sequence store: order, bounds, forgetting, first positions."""

from __future__ import annotations

import pytest

from streams.contracts import DeletionRequest
from streams.sequence_store import SequenceStore, predates

P0, P1 = "interactions:0", "interactions:1"


def deletion(scope: str, **fields) -> DeletionRequest:
    return DeletionRequest(request_id="r1", scope=scope, reason="privacy", ts=1, **fields)


@pytest.fixture
def store() -> SequenceStore:
    s = SequenceStore()
    s.add("alice", "a", P0, 5)
    s.add("bob", "a", P1, 2)
    s.add("alice", "b", P0, 9)
    s.add("bob", "c", P1, 7)
    return s


def test_keeps_order_counts_and_first_positions(store):
    assert store.get("alice") == ["a", "b"]
    assert store.item_counts == {"a": 2, "b": 1, "c": 1}
    assert store.user_first == {"alice": (P0, 5), "bob": (P1, 2)}
    assert store.item_first["a"] == {P0: 5, P1: 2}


def test_bounded_store_drops_oldest_but_keeps_first_position():
    s = SequenceStore(max_per_user=2)
    for k, item in enumerate("xyz"):
        s.add("u", item, P0, k)
    assert s.get("u") == ["y", "z"]
    assert s.item_counts == {"y": 1, "z": 1}
    assert s.user_first["u"] == (P0, 0)  # a model may have seen x


def test_forget_user(store):
    removed, earliest = store.forget(deletion("user", user_id="alice"))
    assert removed == {"users": 1, "interactions": 2}
    assert earliest == {P0: 5}
    assert "alice" not in store.sequences and "alice" not in store.user_first
    assert store.item_counts == {"a": 1, "c": 1}


def test_forget_item_spans_partitions(store):
    removed, earliest = store.forget(deletion("item", item_id="a"))
    assert removed == {"items": 1, "interactions": 2}
    assert earliest == {P0: 5, P1: 2}
    assert store.get("alice") == ["b"] and store.get("bob") == ["c"]
    assert "a" not in store.item_counts and "a" not in store.item_first


def test_forget_interactions_reports_the_users_first_position_even_if_rolled_out():
    s = SequenceStore(max_per_user=1)
    s.add("u", "x", P0, 3)
    s.add("u", "y", P0, 4)  # x rolled out of the store, but a model saw it
    removed, earliest = s.forget(deletion("interactions", user_id="u", item_ids=["x"]))
    assert removed == {"interactions": 0} and earliest == {P0: 3}


def test_a_user_emptied_by_an_item_deletion_keeps_their_first_position():
    # models may have seen the user's older events: deleting the user later must still name
    # where their data starts (else the trainer thinks no model saw it and skips the retrain)
    s = SequenceStore(max_per_user=3)
    for k, item in enumerate("acdbbb"):
        s.add("u", item, P0, k)
    assert s.get("u") == ["b", "b", "b"]
    s.forget(deletion("item", item_id="b"))
    assert s.get("u") == [] and "u" not in s.sequences
    removed, earliest = s.forget(deletion("user", user_id="u"))
    assert earliest == {P0: 0} and removed == {"users": 1, "interactions": 0}
    assert "u" not in s.user_first


def test_forget_unknown_user_holds_nothing(store):
    assert store.forget(deletion("user", user_id="carol")) == ({"users": 0, "interactions": 0}, {})


def test_round_trip(store):
    again = SequenceStore.from_dict(store.to_dict())
    assert again.sequences == store.sequences
    assert again.item_counts == store.item_counts
    assert again.user_first == store.user_first and again.item_first == store.item_first


@pytest.mark.parametrize(
    ("trained", "earliest", "expected"),
    [
        ({P0: 5}, {P0: 5}, True),  # trained through offset 5 = never read offset 5
        ({P0: 6}, {P0: 5}, False),
        ({}, {P0: 0}, True),
        ({P0: 100, P1: 2}, {P1: 2}, True),
        ({P0: 1, P1: 3}, {P0: 5, P1: 2}, False),
    ],
)
def test_predates(trained, earliest, expected):
    assert predates(trained, earliest) is expected
