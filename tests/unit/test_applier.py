"""The ordering rule and bookkeeping of the IMCorrect applier, without a broker."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.imcorrect import IMCorrect
from streams.applier import Applier
from streams.contracts import DeletionRequest, InteractionEvent
from streams.services.batch import InteractionColumns
from streams.state import DedupWindow, SnapshotStore, WorkerState


def ev(n: int, user: str, item: str, ts: int) -> InteractionEvent:
    return InteractionEvent(event_id=f"e{n}", user_id=user, item_id=item, ts=ts)


def forget_user(user: str, ts: int, rid: str = "r1") -> DeletionRequest:
    return DeletionRequest(request_id=rid, scope="user", user_id=user, reason="privacy", ts=ts)


def fresh() -> tuple[WorkerState, Applier]:
    state = WorkerState(model=IMCorrect("ease", l2=1.0), dedup=DedupWindow(1000))
    return state, Applier(state)


def matrix_of(state: WorkerState, pairs: list[tuple[str, str]]) -> sp.csr_matrix:
    rows = [state.users.get(u) for u, _ in pairs]
    cols = [state.items.get(i) for _, i in pairs]
    return sp.csr_matrix((np.ones(len(pairs)), (rows, cols)), shape=state.model.interactions.shape)


def test_interactions_before_a_deletion_in_the_same_batch_are_dropped():
    state, applier = fresh()
    out = applier.apply(
        [ev(1, "a", "x", 10), ev(2, "b", "x", 11), ev(3, "a", "y", 12), forget_user("a", 20)]
    )
    assert out.learned == 1
    assert [r.status for r in out.receipts] == ["applied"]
    assert out.receipts[0].removed == {"interactions": 2, "users": 1}
    assert state.users.get("a") is None
    np.testing.assert_array_equal(
        state.model.interactions.toarray(), matrix_of(state, [("b", "x")]).toarray()
    )


def test_late_old_events_of_a_forgotten_user_are_ignored_newer_ones_learned():
    state, applier = fresh()
    applier.apply([ev(1, "a", "x", 10), ev(2, "b", "y", 10)])
    applier.apply([forget_user("a", 100)])
    out = applier.apply([ev(3, "a", "z", 50), ev(4, "a", "w", 150)])
    assert out.learned == 1 and state.counters["dropped_forgotten"] == 1
    new_index = state.users.get("a")
    assert new_index is not None and new_index != 0  # fresh index, nothing revived
    expected = matrix_of(state, [("b", "y"), ("a", "w")])
    assert (state.model.interactions != expected).nnz == 0


def test_duplicate_event_ids_and_requests_apply_once():
    state, applier = fresh()
    applier.apply([ev(1, "a", "x", 1), ev(1, "a", "x", 1), ev(2, "b", "x", 2)])
    out = applier.apply([forget_user("b", 5, "r9"), forget_user("b", 5, "r9")])
    assert state.counters["duplicates"] == 1
    assert state.counters["events_accepted"] == 2
    assert len(out.receipts) == 1


def test_unknown_subjects_are_rejected_with_a_reason():
    state, applier = fresh()
    applier.apply([ev(1, "a", "x", 1)])
    out = applier.apply(
        [
            forget_user("ghost", 5, "r1"),
            DeletionRequest(request_id="r2", scope="item", item_id="nope", reason="utility", ts=5),
            DeletionRequest(
                request_id="r3",
                scope="interactions",
                user_id="a",
                item_ids=["zz"],
                reason="privacy",
                ts=5,
            ),
        ]
    )
    assert [r.status for r in out.receipts] == ["rejected"] * 3
    assert "unknown user" in out.receipts[0].detail
    assert "unknown item" in out.receipts[1].detail


def test_item_and_interaction_scopes():
    state, applier = fresh()
    applier.apply([ev(1, "a", "x", 1), ev(2, "a", "y", 1), ev(3, "b", "y", 1), ev(4, "b", "z", 1)])
    out = applier.apply(
        [
            DeletionRequest(request_id="r1", scope="item", item_id="y", reason="utility", ts=9),
            DeletionRequest(
                request_id="r2",
                scope="interactions",
                user_id="b",
                item_ids=["z"],
                reason="privacy",
                ts=9,
            ),
        ]
    )
    assert [r.removed for r in out.receipts] == [
        {"interactions": 2, "items": 1},
        {"interactions": 1},
    ]
    assert (state.model.interactions != matrix_of(state, [("a", "x")])).nnz == 0
    fresh_fit = IMCorrect("ease", l2=1.0).fit(state.model.interactions)
    np.testing.assert_allclose(state.model.mapping, fresh_fit.mapping, atol=1e-10)


def test_a_repeated_item_in_a_deletion_counts_once():
    state, applier = fresh()
    applier.apply([ev(1, "a", "x", 1), ev(2, "a", "y", 1)])
    out = applier.apply(
        [
            DeletionRequest(
                request_id="r1",
                scope="interactions",
                user_id="a",
                item_ids=["x", "x", "x"],
                reason="privacy",
                ts=9,
            )
        ]
    )
    assert out.receipts[0].removed == {"interactions": 1}


def test_an_older_deletion_never_lowers_a_tombstone():
    state, applier = fresh()
    applier.apply([ev(1, "a", "x", 10)])
    applier.apply([forget_user("a", 100, "r1"), forget_user("a", 40, "r2")])
    out = applier.apply([ev(2, "a", "y", 60)])  # before the newer deletion: stays out
    assert out.learned == 0 and state.users.get("a") is None


def test_snapshot_round_trip_keeps_no_forgotten_id(tmp_path):
    state, applier = fresh()
    applier.apply([ev(1, "secret-user-42", "x", 1), ev(2, "b", "x", 2)])
    store = SnapshotStore(tmp_path, keys=state.keys)
    store.save(state)
    applier.apply([forget_user("secret-user-42", 10)])
    state.offsets["t:0"] = 7
    path = store.save(state)
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == [path.name]
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert b"secret-user-42" not in f.read_bytes(), f
    loaded = store.load()
    assert loaded.offsets == {"t:0": 7}
    assert loaded.users.get("b") == state.users.get("b")
    np.testing.assert_array_equal(loaded.model.mapping, state.model.mapping)
    # the tombstone still works after a restart: an old late event stays forgotten
    out = Applier(loaded).apply([ev(3, "secret-user-42", "x", 5)])
    assert out.learned == 0


def test_new_items_past_a_dense_budget_are_refused_and_the_worker_goes_on():
    # EASE keeps four n×n float64 arrays: 8·4·10² bytes is room for exactly 10 items
    model = IMCorrect("ease", l2=1.0, memory_budget_gb=8 * 4 * 10**2 / 1e9)
    assert model.max_items == 10
    state = WorkerState(model=model, dedup=DedupWindow(1000))
    applier = Applier(state)
    cols = InteractionColumns()
    # items i0 … i14, then a known one again
    for k, item in enumerate([f"i{k}" for k in range(15)] + ["i3"]):
        cols.event_ids.append(f"e{k}")
        cols.user_ids.append(f"u{k % 3}")
        cols.item_ids.append(item)
        cols.ts.append(k + 1)
    assert applier.learn_columns(cols) == 11
    assert state.counters["refused_catalogue_full"] == 5
    assert state.model.n_items == 10 and state.items.get("i10") is None
    out = applier.apply([ev(99, "u1", "i11", 30), ev(100, "u1", "i2", 31)])  # the list path
    assert out.learned == 1 and state.counters["refused_catalogue_full"] == 6


def test_the_sparse_mapping_has_no_catalogue_cap():
    assert IMCorrect("itemknn-topk").max_items is None
