"""The contract every IMCorrect mapping must honour, shared by one test class per mapping.

A subclass sets ``mapping`` and ``params``; every test here then runs for it. The central
property: any sequence of fit / learn / forget ends with a model equal to a fresh fit on the
retained data, where "retained" is tracked independently as a plain dict of interactions.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.imcorrect import IMCorrect

TOL = 1e-8


def _matrix(log: dict[tuple[int, int], float], shape: tuple[int, int]) -> sp.csr_matrix:
    if not log:
        return sp.csr_matrix(shape)
    (rows, cols), vals = zip(*log.keys(), strict=True), list(log.values())
    return sp.csr_matrix((vals, (rows, cols)), shape=shape)


def dense(m) -> np.ndarray:
    """M as a dense array whether the mapping keeps it dense or sparse."""
    return m.toarray() if sp.issparse(m) else np.asarray(m)


pairs = st.tuples(st.integers(0, 11), st.integers(0, 8))
operation = st.one_of(
    st.tuples(
        st.just("learn"), st.lists(pairs, min_size=1, max_size=8), st.sampled_from([None, 0.5, 2.0])
    ),
    st.tuples(st.just("forget_users"), st.lists(st.integers(0, 11), min_size=1, max_size=3)),
    st.tuples(st.just("forget_items"), st.lists(st.integers(0, 8), min_size=1, max_size=2)),
    st.tuples(st.just("forget_interactions"), st.lists(pairs, min_size=1, max_size=5)),
)


class MappingContract:
    mapping: ClassVar[str]
    params: ClassVar[dict[str, float]] = {}

    def make(self, **kw) -> IMCorrect:
        # never take the refit shortcut, so the low-rank corrections themselves are tested
        kw.setdefault("refit_rank_ratio", float("inf"))
        return IMCorrect(self.mapping, **self.params, **kw)

    def refit(self, x: sp.csr_matrix) -> IMCorrect:
        return self.make().fit(x)

    def assert_equal_to_refit(self, model: IMCorrect, retained: sp.csr_matrix) -> None:
        assert model.interactions.shape == retained.shape
        assert abs(model.interactions - retained).max() <= TOL if retained.nnz else True
        fresh = self.refit(retained)
        np.testing.assert_allclose(dense(model.mapping), dense(fresh.mapping), atol=TOL, rtol=0)

    # -- the property -----------------------------------------------------------------------
    # One subclass per mapping runs this method: differing executors are intended here, and
    # each subclass's examples are independent.
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
    )
    @given(
        initial=st.lists(pairs, min_size=0, max_size=25),
        ops=st.lists(operation, min_size=1, max_size=8),
    )
    def test_any_sequence_equals_a_fresh_fit_on_retained_data(self, initial, ops):
        log: dict[tuple[int, int], float] = {p: 1.0 for p in initial}
        shape = (6, 5)
        log = {p: v for p, v in log.items() if p[0] < shape[0] and p[1] < shape[1]}
        model = self.make(check_every=3).fit(_matrix(log, shape))
        forgotten_items: set[int] = set()
        for op in ops:
            kind = op[0]
            if kind == "learn":
                value = 1.0 if op[2] is None else op[2]
                users, items = zip(*op[1], strict=True)
                model.learn(users, items, None if op[2] is None else [value] * len(users))
                for p in op[1]:
                    log[p] = value
                    forgotten_items.discard(p[1])
                shape = (max(shape[0], max(users) + 1), max(shape[1], max(items) + 1))
            elif kind == "forget_users":
                model.forget(users=op[1])
                log = {p: v for p, v in log.items() if p[0] not in op[1]}
            elif kind == "forget_items":
                model.forget(items=op[1])
                log = {p: v for p, v in log.items() if p[1] not in op[1]}
                forgotten_items |= {i for i in op[1] if i < shape[1]}
            else:
                model.forget(interactions=op[1])
                log = {p: v for p, v in log.items() if p not in set(op[1])}
            self.assert_equal_to_refit(model, _matrix(log, shape))
        assert set(np.flatnonzero(model.forgotten_items)) == forgotten_items

    # -- scopes, one by one, on a realistic random matrix -----------------------------------
    @pytest.fixture
    def x(self) -> sp.csr_matrix:
        rng = np.random.default_rng(3)
        x = sp.random(120, 40, density=0.15, random_state=rng, format="csr")
        x.data[:] = 1.0
        return x

    def test_forget_users_matches_retrain(self, x):
        model = self.make().fit(x)
        report = model.forget(users=[0, 5, 17])
        retained = x.tolil()
        for u in (0, 5, 17):
            retained.rows[u], retained.data[u] = [], []
        self.assert_equal_to_refit(model, retained.tocsr())
        assert report.removed["users"] == sum(x[u].nnz > 0 for u in (0, 5, 17))
        assert model.score([0]).max() in (-np.inf, 0.0) or np.all(model.interactions[0].nnz == 0)

    def test_forget_item_never_recommends_it(self, x):
        model = self.make().fit(x)
        popular = int(np.argmax(np.asarray(x.sum(axis=0)).ravel()))
        model.forget(items=[popular])
        idx, _ = model.recommend(np.arange(x.shape[0]), k=10)
        assert popular not in idx
        retained = x.tolil()
        retained[:, popular] = 0
        self.assert_equal_to_refit(model, sp.csr_matrix(retained))

    def test_forget_interactions_matches_retrain(self, x):
        model = self.make().fit(x)
        u = int(np.argmax(np.diff(x.indptr)))
        items = x[u].indices[:2].tolist()
        report = model.forget(interactions=[(u, i) for i in items])
        retained = x.tolil()
        for i in items:
            retained[u, i] = 0
        self.assert_equal_to_refit(model, sp.csr_matrix(retained))
        assert report.removed["interactions"] == 2

    def test_one_call_forgets_users_and_interactions_of_several_users(self, x):
        model = self.make().fit(x)
        busy = np.argsort(-np.diff(x.indptr))[:3].tolist()
        whole, partial = busy[0], busy[1:]
        pairs = [(u, int(i)) for u in partial for i in x[u].indices[:2]]
        pairs += [(whole, int(x[whole].indices[0])), (partial[0], x.shape[1] + 5)]
        report = model.forget(users=[whole], interactions=pairs)
        retained = x.tolil()
        retained[whole, :] = 0
        for u, i in pairs[:-2]:
            retained[u, i] = 0
        self.assert_equal_to_refit(model, sp.csr_matrix(retained))
        assert report.removed["users"] == 1
        assert report.removed["interactions"] == x[whole].nnz + 2 * len(partial)

    def test_forgetting_learned_data_restores_the_original(self, x):
        model = self.make().fit(x)
        model.learn([200, 200, 201], [3, 45, 3])  # new users and a new item
        model.forget(users=[200, 201])
        padded = x.copy()
        padded.resize((202, 46))
        self.assert_equal_to_refit(model, padded)

    def test_learning_after_forgetting(self, x):
        model = self.make().fit(x)
        model.forget(users=[1, 2])
        model.learn([1, 1, 2], [0, 1, 2])
        retained = x.tolil()
        for u in (1, 2):
            retained.rows[u], retained.data[u] = [], []
        retained[1, 0] = retained[1, 1] = retained[2, 2] = 1
        self.assert_equal_to_refit(model, sp.csr_matrix(retained))

    def test_recommend_masks_seen_items(self, x):
        model = self.make().fit(x)
        idx, scores = model.recommend([4, 9], k=5)
        for row, u in zip(idx, (4, 9), strict=True):
            assert not set(row.tolist()) & set(x[u].indices.tolist())
        assert np.all(np.diff(scores, axis=1) <= 0)

    def test_interaction_only_peer_leaves_the_mapping_stale(self, x):
        model = self.make(correct_mapping=False).fit(x)
        before = dense(model.mapping).copy()
        model.forget(users=list(range(30)))
        np.testing.assert_array_equal(dense(model.mapping), before)
        assert model.interactions[:30].nnz == 0

    def test_save_load_round_trip_without_pickle(self, x, tmp_path):
        model = self.make().fit(x)
        model.forget(users=[3])
        model.learn([3], [7])
        model.save(tmp_path / "snap")
        loaded = IMCorrect.load(tmp_path / "snap")
        np.testing.assert_array_equal(dense(loaded.mapping), dense(model.mapping))
        assert (loaded.interactions != model.interactions).nnz == 0
        assert loaded.version == model.version
        with np.load(tmp_path / "snap.npz", allow_pickle=False) as arrays:
            assert all(arrays[k].dtype != object for k in arrays.files)

    def test_drift_check_refactorises_when_over_tolerance(self, x):
        model = self.make(check_every=1, drift_tolerance=1e-9).fit(x)
        model._mapping.gram[0, 0] += 1e-6  # simulate accumulated rounding error
        report = model.learn([0], [1])
        assert report.refactorised and model.refactorisations == 1
        self.assert_equal_to_refit(model, model.interactions)

    def test_many_small_updates_stay_within_tolerance(self, x):
        model = self.make(check_every=10**9).fit(x[:60])
        rows, cols = x[60:].nonzero()
        for start in range(0, len(rows), 7):
            model.learn(rows[start : start + 7], cols[start : start + 7])
        model.forget(users=range(60, 90))
        assert not model.check_drift()
        assert model.last_drift <= model.drift_tolerance

    def test_scores_are_x_times_the_mapping(self, x):
        model = self.make().fit(x)
        model.learn([2, 3], [5, 6])
        users = np.array([50, 0, 2, 3, 2])  # any order, repeats allowed
        expected = model.interactions[users].toarray() @ dense(model.mapping)
        got = model.score(users, mask_seen=False)
        np.testing.assert_allclose(got, expected, atol=1e-10)

    def test_frozen_scores_equal_score_and_stay_frozen(self, x):
        model = self.make().fit(x)
        model.learn([2, 3, 7], [5, 6, 9], [1.0, 2.0, 0.5])  # weighted, and some rows grow
        everything = np.arange(x.shape[1])  # a user who has seen it all: the dense path
        model.learn([119] * len(everything), everything, np.linspace(0.5, 2.0, len(everything)))
        model.forget(items=[11])
        users = np.array([50, 0, 2, 119, 3, 2, 8])
        expected = model.score(users, mask_seen=False)
        frozen = model.freeze()
        got = frozen.score(users)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.isinf(expected[:, 11]).all()
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5, atol=1e-5)
        never_seen = np.flatnonzero(np.diff(model.interactions.indptr) == 0)
        if len(never_seen):
            assert np.all(frozen.score(never_seen[:1])[:, np.isfinite(expected[0])] == 0)
        model.learn([50], [1])  # the frozen view does not follow
        np.testing.assert_array_equal(frozen.score(users), got)
        with pytest.raises(IndexError):
            frozen.score([model.n_users])

    def test_large_changes_take_the_exact_refit_path(self, x):
        model = self.make(refit_rank_ratio=0.5).fit(x[:10])
        rows, cols = x[10:].nonzero()
        model.learn(rows + 10, cols)  # 110 users changed, 40 items: refit is cheaper
        self.assert_equal_to_refit(model, x)
