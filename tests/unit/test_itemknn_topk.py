"""The sparse top-k mapping: shared contract, equality with a fresh fit, dense equivalence."""

from __future__ import annotations

import contextlib
import json
from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.imcorrect import IMCorrect, itemknn_topk, topk_kernel, topk_rows
from models.imcorrect.topk import PAD, select
from tests.unit.imcorrect_contract import MappingContract


class TestItemKNNTopK(MappingContract):
    mapping = "itemknn-topk"
    params = {"k": 3, "shrink": 1.0}


class TestItemKNNTopKNoShrink(MappingContract):
    """Binary data without shrinkage: many exactly tied scores, so the tie rule is exercised."""

    mapping = "itemknn-topk"
    params = {"k": 2}


def _lists(model: IMCorrect) -> tuple[np.ndarray, np.ndarray]:
    return model._mapping.neighbours()


def assert_same_as_fresh_fit(model: IMCorrect, k: int, shrink: float, reserve: int = 4) -> None:
    fresh = IMCorrect("itemknn-topk", k=k, shrink=shrink, reserve=reserve)
    fresh.fit(model.interactions)
    idx, val = _lists(model)
    fidx, fval = _lists(fresh)
    np.testing.assert_array_equal(idx, fidx)
    np.testing.assert_allclose(val, fval, atol=1e-12, rtol=0)
    mine, theirs = model._mapping, fresh._mapping
    np.testing.assert_array_equal(mine.nbr_idx, theirs.nbr_idx)  # slots in item order
    np.testing.assert_array_equal(mine.fill, theirs.fill)
    full = mine.fill > 0
    np.testing.assert_array_equal(mine.worst_idx[full], theirs.worst_idx[full])
    np.testing.assert_array_equal(mine.worst_val[full], theirs.worst_val[full])
    # every bound is a true upper bound on the candidates left out of the list
    g = fresh.gram.toarray().astype(np.float64)
    d = np.sqrt(np.diag(g))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(g != 0, g / (np.outer(d, d) + shrink), -np.inf)
    np.fill_diagonal(s, -np.inf)
    for i in range(s.shape[0]):
        s[i, idx[i][idx[i] >= 0]] = -np.inf
        # the stored slots hold exactly the ranked list, as a set
        stored = model._mapping.nbr_idx[i]
        assert sorted(stored[stored >= 0]) == sorted(idx[i][idx[i] >= 0])
    assert np.all(s.max(axis=1, initial=-np.inf) <= model._mapping.bound + 1e-12)
    assert_reserves_rank_next(model._mapping, s)


def assert_reserves_rank_next(mapping, outsiders: np.ndarray) -> None:
    """Each held reserve is the outsiders ranked first (tie rule: higher score, then lower
    index), with their scores, and every other outsider ranks at or after ``beyond``."""
    for i in range(outsiders.shape[0]):
        m = int(mapping.res_fill[i])
        assert m == int((mapping.res_idx[i] >= 0).sum())
        if m == 0:
            continue
        cand = np.flatnonzero(outsiders[i] > -np.inf)
        order = cand[np.lexsort((cand, -outsiders[i, cand]))]
        np.testing.assert_array_equal(mapping.res_idx[i, :m], order[:m])
        np.testing.assert_allclose(mapping.res_val[i, :m], outsiders[i, order[:m]], atol=1e-12)
        for j in order[m:]:
            # the same expression gives the same bits: a tie is an exact equality (a score
            # one rounding step below beyond ranks after it, whatever its index)
            beyond, at = mapping.beyond[i], mapping.beyond_idx[i]
            assert outsiders[i, j] <= beyond
            assert not (outsiders[i, j] == beyond and j < at)


step = st.one_of(
    st.tuples(
        st.just("learn"),
        st.lists(st.tuples(st.integers(0, 39), st.integers(0, 24)), min_size=1, max_size=30),
    ),
    st.tuples(st.just("users"), st.lists(st.integers(0, 39), min_size=1, max_size=4)),
    st.tuples(st.just("items"), st.lists(st.integers(0, 24), min_size=1, max_size=2)),
    st.tuples(
        st.just("pairs"),
        st.lists(st.tuples(st.integers(0, 39), st.integers(0, 24)), min_size=1, max_size=10),
    ),
)


def _run(model: IMCorrect, kind: str, arg) -> None:
    if kind == "learn":
        users, items = zip(*arg, strict=True)
        model.learn(users, items)
    elif kind == "users":
        model.forget(users=arg)
    elif kind == "items":
        model.forget(items=arg)
    else:
        model.forget(interactions=arg)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 6),
    shrink=st.sampled_from([0.0, 0.5, 3.0]),
    reserve=st.sampled_from([0, 1, 2, 8]),
    ops=st.lists(step, min_size=1, max_size=10),
)
def test_random_learn_forget_sequences_keep_the_lists_of_a_fresh_fit(seed, k, shrink, reserve, ops):
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix((rng.random((30, 20)) < 0.25).astype(float))
    model = IMCorrect(
        "itemknn-topk", k=k, shrink=shrink, reserve=reserve, refit_rank_ratio=float("inf")
    ).fit(x)
    for kind, arg in ops:
        _run(model, kind, arg)
        assert_same_as_fresh_fit(model, k, shrink, reserve)
        assert model._mapping.drift(model.interactions, rng, n_columns=20) < 1e-12


#: the same random learn/forget sequences, selected under different group and thread settings
same_ops_under_settings = given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 6),
    shrink=st.sampled_from([0.0, 3.0]),
    ops=st.lists(step, min_size=1, max_size=8),
)


def _mapping_after(ops, seed: int, k: int, shrink: float, **patched):
    """The mapping after ``ops`` with ``topk_rows`` attributes patched, checked against a
    fresh fit."""
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix((rng.random((30, 20)) < 0.25).astype(float))
    with contextlib.ExitStack() as stack:
        for name, value in patched.items():
            stack.enter_context(mock.patch.object(topk_rows, name, value))
        model = IMCorrect("itemknn-topk", k=k, shrink=shrink, refit_rank_ratio=np.inf)
        model.fit(x)
        for kind, arg in ops:
            _run(model, kind, arg)
        assert_same_as_fresh_fit(model, k, shrink)
    return model._mapping


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@same_ops_under_settings
def test_rows_selected_in_groups_of_any_size_give_the_same_lists(seed, k, shrink, ops):
    # rows are selected in groups bounded by entries and by rows: one row per group, a few
    # rows and entries per group, and everything in one group agree bit for bit
    models = [
        _mapping_after(ops, seed, k, shrink, _GROUP_ENTRIES=entries, _GROUP_ROWS=rows)
        for entries, rows in ((1, 1), (7, 3), (10**9, 10**9))
    ]
    # the lists agree bit for bit; bounds and reserves are only checked to be valid (by
    # assert_same_as_fresh_fit): group sizes decide how many passes a change's merge takes,
    # and a bound or reserve may end at another valid value
    for other in models[1:]:
        for name in ("nbr_idx", "nbr_val", "worst_val", "worst_idx"):
            np.testing.assert_array_equal(getattr(models[0], name), getattr(other, name))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@same_ops_under_settings
def test_a_group_cut_into_parts_on_threads_gives_what_one_thread_gives(seed, k, shrink, ops):
    # every group, however small, is cut into three parts run on threads: the lists, bounds
    # and reserves (and so every later merge) are those of the one-thread pass, bit for bit
    one, parts = (
        _mapping_after(
            ops,
            seed,
            k,
            shrink,
            _PARALLEL_ENTRIES=parallel_from,
            kernel_threads=lambda threads=threads: threads,
            _GROUP_ROWS=9,  # several groups as well
        ).state()
        for parallel_from, threads in ((10**18, 1), (0, 3))
    )
    assert one.keys() == parts.keys()
    for name in one:
        np.testing.assert_array_equal(one[name], parts[name], err_msg=name)


def test_parts_cover_the_group_in_order_with_room_for_every_entry():
    lengths = np.array([5, 0, 90, 3, 3, 400, 1, 1], dtype=np.int64)
    with (
        mock.patch.object(topk_rows, "_PARALLEL_ENTRIES", 0),
        mock.patch.object(topk_rows, "kernel_threads", lambda: 3),
    ):
        parts = topk_rows._parts(lengths, report=True)
        assert topk_rows._parts(lengths[:1], report=True) == [(0, 1, 0)]
    assert parts[0][0] == 0 and parts[-1][1] == len(lengths) and len(parts) >= 2
    for (a, b, at), (a2, _, at2) in zip(parts, parts[1:], strict=False):
        assert b == a2 and a < b and at2 - at == lengths[a:b].sum()  # disjoint report ranges
    assert all(at == lengths[:a].sum() for a, _, at in parts)


def test_k_at_least_n_is_the_dense_cosine_itemknn():
    rng = np.random.default_rng(5)
    x = sp.csr_matrix((rng.random((80, 30)) < 0.2).astype(float))
    sparse = IMCorrect("itemknn-topk", k=30, shrink=2.0).fit(x)
    dense = IMCorrect("itemknn", shrink=2.0).fit(x)
    np.testing.assert_allclose(sparse.mapping.toarray(), dense.mapping, atol=1e-12, rtol=0)
    sparse.forget(users=[1, 2, 3])
    dense.forget(users=[1, 2, 3])
    np.testing.assert_allclose(sparse.mapping.toarray(), dense.mapping, atol=1e-12, rtol=0)


def test_tie_rule_prefers_the_lower_item_index():
    cols = np.array([9, 4, 7, 2, 5])
    scores = np.array([0.5, 0.5, 0.9, 0.5, 0.1])
    idx, val, bound, bound_idx = select(cols, scores, 3)
    np.testing.assert_array_equal(idx, [7, 2, 4])  # 0.9 first, then the tied 0.5s by index
    assert (bound, bound_idx) == (0.5, 9)  # item 9 ties with the k-th and is left out
    idx, _, bound, _ = select(cols, scores, 5)
    np.testing.assert_array_equal(idx, [7, 2, 4, 9, 5])
    assert bound == -np.inf
    _, _, bound, bound_idx = select(cols, scores, 4)
    assert (bound, bound_idx) == (0.1, 5)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.integers(-1, 4)), max_size=15),
        min_size=1,
        max_size=8,
    ),
    k=st.integers(1, 6),
    split=st.integers(0, 2**16),
    floor_level=st.integers(-1, 5),
    degrees=st.sampled_from(["unit", "fell", "moved"]),
    shrink=st.sampled_from([0.0, 2.0]),
)
def test_the_compiled_selection_matches_the_numpy_one_row_by_row(
    rows, k, split, floor_level, degrees, shrink
):
    # counts from a few levels (0 is a stored zero, not a candidate; -1 a weighted change's
    # negative count); unit degrees make many exact ties, settled by the lower index;
    # entries are spread over both CSR parts of G
    n = 41
    rng = np.random.default_rng(split)
    rows = [dict(r) for r in rows]  # one count per (row, column)
    owner = np.repeat(np.arange(len(rows)), [len(r) for r in rows]).astype(np.int64)
    cols = np.array([c for r in rows for c in r], dtype=np.int64)
    counts = np.array([v for r in rows for v in r.values()], dtype=np.float32)
    in_extra = rng.random(len(cols)) < 0.3
    parts = [
        sp.csr_matrix((counts[m], (owner[m], cols[m])), shape=(n, n)) for m in (~in_extra, in_extra)
    ]
    for part in parts:
        part.sort_indices()
    # degrees ≥ 1: a count is never above its items' degrees, so a zero degree has no
    # candidates (and a zero denominator, scored 0, never meets a stored count)
    root = np.ones(n) if degrees == "unit" else np.sqrt(rng.integers(1, 6, n).astype(float))
    # before the change: the same, or higher (every degree fell), or anything
    root_old = {
        "unit": root,
        "fell": root + rng.integers(0, 2, n),
        "moved": np.sqrt(rng.integers(1, 6, n).astype(float)),
    }[degrees]
    fell = degrees != "moved"
    floor = np.full(n, floor_level / 2)
    floor[rng.random(n) < 0.1] = -np.inf  # lists holding every candidate
    group = np.arange(len(rows), dtype=np.int64)
    idx = np.empty((len(rows), k), dtype=np.int64)
    val, bound, bound_idx = (
        np.empty((len(rows), k)),
        np.empty(len(rows)),
        np.empty(len(rows), np.int64),
    )
    near = [np.empty(len(cols), dtype=t) for t in (np.int64, np.int64, np.float64)]
    # candidates offered first (any items: stored or not, the row's own, repeated, padding)
    seeds = rng.integers(-1, n, size=(len(rows), 4)).astype(np.int32)
    found = topk_kernel.select_rows(
        *[(p.indptr, p.indices, p.data) for p in parts],
        group,
        seeds,
        topk_kernel.toward_zero32(np.column_stack([root, floor])),
        root,
        root_old,
        shrink,
        k,
        floor,
        fell,
        True,
        idx,
        val,
        bound,
        bound_idx,
        *near,
    )

    def score(g: np.ndarray, r_row: np.ndarray, r_col: np.ndarray) -> np.ndarray:
        denom = r_row * r_col + shrink
        return np.divide(g, denom, out=np.zeros(len(g)), where=denom > 0)

    g = counts.astype(float)
    s_new = score(g, root[owner], root[cols])
    s_old = score(g, root_old[owner], root[cols])
    candidate = (counts != 0) & (cols != owner)
    for q in range(len(rows)):
        mine = (owner == q) & candidate
        want_idx, want_val, b, b_idx = select(cols[mine], s_new[mine], k)
        np.testing.assert_array_equal(idx[q, : len(want_idx)], want_idx)
        np.testing.assert_array_equal(val[q, : len(want_idx)], want_val)
        assert np.all(idx[q, len(want_idx) :] == PAD)
        assert (bound[q], bound_idx[q]) == (b, b_idx)
    reached = candidate & (np.maximum(s_new, s_old) >= floor[cols])
    want = {(int(j), int(c)) for c, j, ok in zip(owner, cols, reached, strict=True) if ok}
    got = set(zip(near[0][:found].tolist(), near[1][:found].tolist(), strict=True))
    assert got == want
    assert len(got) == found  # each pair once


def test_each_item_keeps_at_most_k_neighbours_of_its_best_cosines():
    # item 0 co-occurs with 1 (3 users), 2 (2 users) and 3 (1 user); k = 2 keeps 1 and 2
    x = sp.csr_matrix(
        np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    )
    model = IMCorrect("itemknn-topk", k=2).fit(x)
    row = model.mapping.getrow(0)
    assert set(row.indices) == {1, 2}
    assert row[0, 1] == pytest.approx(3 / np.sqrt(3 * 3))
    assert row[0, 2] == pytest.approx(2 / np.sqrt(3 * 2))
    assert model.mapping.nnz <= 2 * 4


def test_memory_and_snapshot_grow_with_pairs_not_n_squared(tmp_path):
    n_items, n_users = 20_000, 3_000
    rng = np.random.default_rng(7)
    users = np.repeat(np.arange(n_users), 5)
    items = rng.integers(0, n_items, len(users))
    x = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
    x.data[:] = 1.0
    model = IMCorrect("itemknn-topk", k=10).fit(x)
    pairs = model.gram.nnz
    assert pairs < 30 * n_users  # ≤ 25 pairs per user plus diagonal
    mapping = model._mapping
    # per item: k neighbours and a reserve (index and score each) and a few scalars
    per_item = 8 * (6 + 2 * (10 + mapping.reserve))
    assert mapping.memory_bytes() < 12 * pairs + per_item * n_items + 8 * (n_items + 1)
    model.save(tmp_path / "snap")
    size = (tmp_path / "snap.npz").stat().st_size
    assert size < 2 * (mapping.memory_bytes() + 12 * x.nnz) < 8 * n_items**2 / 50
    loaded = IMCorrect.load(tmp_path / "snap")
    assert (loaded.mapping != model.mapping).nnz == 0
    model.forget(users=[0, 1])
    loaded.forget(users=[0, 1])
    assert (loaded.mapping != model.mapping).nnz == 0


def test_a_snapshot_keeps_the_counts_in_their_two_parts(tmp_path):
    # learning after the fit puts new pairs in the counts' second part; a snapshot writes
    # both parts as they are (merging them would copy every pair on the worker's loop) and
    # the model loaded from it goes on exactly like the saved one
    rng = np.random.default_rng(9)
    x = sp.csr_matrix((rng.random((300, 200)) < 0.02).astype(float))
    model = IMCorrect("itemknn-topk", k=5).fit(x)
    model.learn(rng.integers(0, 300, 40), rng.integers(0, 200, 40))
    counts = model._mapping.counts
    base_nnz, extra_nnz = counts.base.nnz, counts.extra.nnz
    assert extra_nnz > 0 and not counts.zeros
    arrays = {name: np.array(a) for name, a in model._mapping.state().items()}
    model.save(tmp_path / "snap")
    assert (counts.base.nnz, counts.extra.nnz) == (base_nnz, extra_nnz)  # not merged
    # code that reads only format 1 would drop the second part: it is told to refuse
    assert json.loads((tmp_path / "snap.json").read_text())["format"] == 2
    loaded = IMCorrect.load(tmp_path / "snap")
    mine, theirs = loaded._mapping.counts, counts
    assert (mine.base.nnz, mine.extra.nnz) == (base_nnz, extra_nnz)
    assert ((mine.base + mine.extra) != (theirs.base + theirs.extra)).nnz == 0
    assert (loaded.mapping != model.mapping).nnz == 0
    for m in (model, loaded):
        m.forget(users=[0, 1, 2])
        m.learn([5, 6], [7, 8])
    assert (loaded.mapping != model.mapping).nnz == 0
    fresh = IMCorrect("itemknn-topk", k=5).fit(model.interactions)
    assert np.array_equal(loaded._mapping.neighbours()[0], fresh._mapping.neighbours()[0])
    # a second part naming an item past the catalogue, or a pair the first part holds, is
    # refused (lookups read one part, selections both)
    assert "g_extra_indices" in arrays
    fresh_mapping = itemknn_topk.ItemKNNTopK(itemknn_topk.ItemKNNTopKConfig(k=5))
    fresh_mapping.load_state({name: a.copy() for name, a in arrays.items()})  # the real one
    past = {name: a.copy() for name, a in arrays.items()}
    past["g_extra_indices"][0] = 999
    with pytest.raises(ValueError):
        itemknn_topk.ItemKNNTopK(itemknn_topk.ItemKNNTopKConfig(k=5)).load_state(past)
    twice = {name: a.copy() for name, a in arrays.items()}
    row = int(np.searchsorted(twice["g_extra_indptr"], 0, side="right")) - 1
    base_row = twice["g_indices"][twice["g_indptr"][row] : twice["g_indptr"][row + 1]]
    twice["g_extra_indices"][0] = base_row[0]
    with pytest.raises(ValueError, match="both parts"):
        itemknn_topk.ItemKNNTopK(itemknn_topk.ItemKNNTopKConfig(k=5)).load_state(twice)


def test_a_snapshot_after_a_forget_carries_no_count_that_fell_to_zero(tmp_path):
    # users 0 and 1 alone took items 3 and 4 together; once both are forgotten the count of
    # (3, 4) is 0, and an entry for it in a file would say the pair once occurred
    x = sp.csr_matrix(
        np.array(
            [[1, 0, 0, 1, 1], [0, 1, 0, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 1, 1, 0, 1]],
            dtype=float,
        )
    )
    # no refit from scratch however large the change (a fit counts without zeros)
    model = IMCorrect("itemknn-topk", k=2, refit_rank_ratio=np.inf).fit(x)
    model.forget(users=[0, 1])
    counts = model._mapping.counts
    assert counts.zeros  # the entry is still stored in memory, at 0
    model.save(tmp_path / "snap")
    with np.load(tmp_path / "snap.npz") as arrays:
        for name in ("map_g_data", "map_g_extra_data"):
            if name in arrays:
                assert np.all(arrays[name] != 0)
        g = sp.csr_matrix(
            (arrays["map_g_data"], arrays["map_g_indices"], arrays["map_g_indptr"]), shape=(5, 5)
        )
    assert 4 not in g.indices[g.indptr[3] : g.indptr[4]]  # not even as a stored 0
    loaded = IMCorrect.load(tmp_path / "snap")
    assert not loaded._mapping.counts.zeros
    assert (loaded.mapping != model.mapping).nnz == 0


def test_a_pair_learned_then_forgotten_leaves_no_zero_in_the_second_part(tmp_path):
    # a pair first seen after the fit lives in the counts' second part; forgetting its only
    # user leaves a 0 there, which the snapshot must not carry either
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]], dtype=float))
    model = IMCorrect("itemknn-topk", k=2, refit_rank_ratio=np.inf).fit(x)
    model.learn([3, 3], [2, 3])  # a new user takes items 2 and 3: pair (2, 3) is new
    counts = model._mapping.counts
    assert counts.extra.nnz > 0 and not counts.zeros
    model.forget(users=[3])
    assert counts.zeros or counts.extra.nnz == 0
    model.save(tmp_path / "snap")
    with np.load(tmp_path / "snap.npz") as arrays:
        for name in ("map_g_data", "map_g_extra_data"):
            if name in arrays:
                assert np.all(arrays[name] != 0)
    fresh = IMCorrect("itemknn-topk", k=2).fit(model.interactions)
    assert (IMCorrect.load(tmp_path / "snap").mapping != fresh.mapping).nnz == 0


def test_frozen_scores_keep_a_sparse_mapping_sparse():
    rng = np.random.default_rng(8)
    x = sp.csr_matrix((rng.random((50, 40)) < 0.2).astype(float))
    model = IMCorrect("itemknn-topk", k=4).fit(x)
    frozen = model.freeze()
    assert sp.issparse(frozen._mapping)
    users = np.arange(50)
    np.testing.assert_allclose(
        frozen.score(users), model.score(users, mask_seen=False), rtol=1e-6, atol=1e-6
    )


def test_rejects_bad_parameters_and_a_snapshot_of_another_k(tmp_path):
    with pytest.raises(ValueError, match="k must"):
        IMCorrect("itemknn-topk", k=0)
    model = IMCorrect("itemknn-topk", k=3).fit(sp.csr_matrix(np.eye(4)))
    model.save(tmp_path / "snap")
    meta = (tmp_path / "snap.json").read_text().replace('"k": 3', '"k": 5')
    (tmp_path / "snap.json").write_text(meta)
    with pytest.raises(ValueError, match="neighbours"):
        IMCorrect.load(tmp_path / "snap")


def test_a_snapshot_naming_items_beyond_its_catalogue_is_refused():
    # the compiled kernels index by the lists and the counts without bounds checks
    model = IMCorrect("itemknn-topk", k=2).fit(sp.csr_matrix(np.ones((3, 4))))
    arrays = {name: np.array(a) for name, a in model._mapping.state().items()}
    bad_list = {**arrays, "nbr_idx": np.where(arrays["nbr_idx"] == 1, 7, arrays["nbr_idx"])}
    with pytest.raises(ValueError, match="do not fit"):
        itemknn_topk.ItemKNNTopK(itemknn_topk.ItemKNNTopKConfig(k=2)).load_state(bad_list)
    bad_counts = {**arrays, "g_indices": np.where(arrays["g_indices"] == 1, 9, arrays["g_indices"])}
    with pytest.raises(ValueError):
        itemknn_topk.ItemKNNTopK(itemknn_topk.ItemKNNTopKConfig(k=2)).load_state(bad_counts)
    itemknn_topk.ItemKNNTopK(itemknn_topk.ItemKNNTopKConfig(k=2)).load_state(
        arrays
    )  # the real one loads


def test_forgetting_one_user_recomputes_only_a_few_rows():
    rng = np.random.default_rng(9)
    n_users, n_items = 2_000, 600
    users = np.repeat(np.arange(n_users), 8)
    pop = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(n_items, size=len(users), p=pop / pop.sum())
    x = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
    x.data[:] = 1.0
    model = IMCorrect("itemknn-topk", k=10, shrink=1.0).fit(x)
    victim = 17
    n_own = x[victim].nnz
    model.forget(users=[victim])
    # the user's items are re-selected; every other list is merged in place
    assert n_own <= model._mapping.last_recomputed <= n_own + 20
    assert_same_as_fresh_fit(model, 10, 1.0)
    model.learn([victim] * 3, [1, 2, 3])
    assert model._mapping.last_recomputed <= 3 + 20
    assert_same_as_fresh_fit(model, 10, 1.0)


@pytest.mark.slow
def test_on_ml1m_k_equal_n_is_the_dense_itemknn():
    datasets = pytest.importorskip("models.datasets")
    try:
        x = datasets.leave_one_out(datasets.load("ml-1m")).train_matrix()
    except datasets.DatasetUnavailable as exc:
        pytest.skip(str(exc))
    n = x.shape[1]
    sparse = IMCorrect("itemknn-topk", k=n, shrink=10.0).fit(x)
    dense = IMCorrect("itemknn", shrink=10.0).fit(x)
    assert np.abs(sparse.mapping.toarray() - dense.mapping).max() <= 1e-9
    for model in (sparse, dense):
        model.forget(users=[0, 1, 2])
        model.forget(interactions=[(10, int(x[10].indices[0]))])
    assert np.abs(sparse.mapping.toarray() - dense.mapping).max() <= 1e-9


def test_binary_counts_are_float32_and_a_weighted_change_moves_them_to_float64():
    rng = np.random.default_rng(10)
    x = sp.csr_matrix((rng.random((40, 15)) < 0.3).astype(float))
    model = IMCorrect("itemknn-topk", k=4, shrink=1.0).fit(x)
    assert model.gram.dtype == np.float32  # integer counts < 2**24: exact in float32
    model.learn([0, 1], [2, 3])
    assert model.gram.dtype == np.float32
    assert_same_as_fresh_fit(model, 4, 1.0)
    model.learn([5], [7], [0.3])  # not an integer: the store switches before the change
    assert model.gram.dtype == np.float64
    assert_same_as_fresh_fit(model, 4, 1.0)


def test_pair_keys_do_not_overflow_on_catalogues_past_46341_items():
    # n = 70,000: keys j·n + c exceed 2³¹. With int32 arithmetic the ΔG pair (61366, 47396)
    # wraps onto the key of (10, 100), whose score must move when item 100 is learned again
    n = 70_000
    users = [0, 1, 1]
    items = [61_366, 10, 100]
    x = sp.csr_matrix((np.ones(3), (users, items)), shape=(3, n))
    model = IMCorrect("itemknn-topk", k=5, shrink=1.0, refit_rank_ratio=float("inf")).fit(x)
    before = model.mapping[10, 100]
    model.learn([0, 2], [47_396, 100])  # user 0 pairs 61366 with 47396; item 100's degree rises
    assert model.mapping[10, 100] != before
    fresh = IMCorrect("itemknn-topk", k=5, shrink=1.0).fit(model.interactions)
    assert abs(model.mapping - fresh.mapping).max() <= 1e-12


def _star(counts: list[int], n_items: int = 5) -> sp.csr_matrix:
    """Users pairing item 0 with item x, ``counts[x - 1]`` of them each: with shrink 0,
    s_0x = √G_0x / √d_0, so row 0 ranks 1, 2, 3, ... by count."""
    pairs = [(x, u) for x, c in enumerate(counts, start=1) for u in range(c)]
    rows = np.repeat(np.arange(len(pairs)), 2)
    cols = np.array([[0, x] for x, _ in pairs]).ravel()
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(pairs), n_items))


def test_a_forgotten_member_is_replaced_by_the_bound_candidate_without_a_reselect():
    # without a reserve: the bound alone stands for the outsiders
    model = IMCorrect("itemknn-topk", k=2, reserve=0, refit_rank_ratio=float("inf"))
    model.fit(_star([5, 4, 3, 2]))
    assert model._mapping.bound_idx[0] == 3  # row 0 lists 1 and 2; item 3 is the best left out
    model.forget(items=[1])
    assert model._mapping.last_recomputed == 1  # item 1's own row; row 0 took item 3 in place
    assert_same_as_fresh_fit(model, 2, 0.0)


def test_a_list_refills_from_its_reserve_until_it_runs_out():
    # row 0 ranks items 1..6 (counts 7..2): with k = 2 and a reserve of 2 it lists 1, 2 and
    # holds 3, 4 in reserve; item 5 is its beyond
    x = _star([7, 6, 5, 4, 3, 2], n_items=7)
    model = IMCorrect("itemknn-topk", k=2, reserve=2, refit_rank_ratio=float("inf")).fit(x)
    mapping = model._mapping
    assert mapping.res_idx[0].tolist() == [3, 4] and mapping.beyond_idx[0] == 5
    for item, recomputed in ((1, 1), (2, 1), (3, 1), (4, 2)):
        model.forget(items=[item])
        # item's own row, and row 0 only once its reserve and then its bound are spent
        # (after item 2, the bound is item 5 itself; after item 3 it is no longer attained)
        assert mapping.last_recomputed == recomputed, item
        assert_same_as_fresh_fit(model, 2, 0.0, reserve=2)


def test_a_moved_reserve_entry_empties_the_reserve():
    x = _star([7, 6, 5, 4, 3, 2], n_items=7)
    model = IMCorrect("itemknn-topk", k=2, reserve=2, refit_rank_ratio=float("inf")).fit(x)
    model.forget(interactions=[(18, 4)])  # user 18 holds items 0 and 4: s_04 falls
    assert model._mapping.res_fill[0] == 0
    assert_same_as_fresh_fit(model, 2, 0.0, reserve=2)
    model.forget(items=[1])  # the bound (item 3, still attained) takes the free slot
    assert model._mapping.last_recomputed == 1
    assert_same_as_fresh_fit(model, 2, 0.0, reserve=2)


def test_a_bound_no_longer_attained_is_not_promoted():
    # one interaction of item 3 goes: G_03 and d_3 fall together, so s_03 falls (to item
    # 4's score; the tie goes to 3) and row 0's bound is left above every outsider. Taking
    # the bound's candidate at the bound's score would store a stale s_03 (no reserve: the
    # bound alone stands for the outsiders)
    model = IMCorrect("itemknn-topk", k=2, reserve=0, refit_rank_ratio=float("inf"))
    model.fit(_star([5, 4, 3, 2]))
    stale = model._mapping.bound[0]
    model.forget(interactions=[(9, 3)])
    assert model._mapping.bound[0] == stale
    model.forget(items=[1])
    assert model._mapping.last_recomputed == 2  # row 0 is selected again
    assert_same_as_fresh_fit(model, 2, 0.0, reserve=0)
    assert model.mapping[0, 3] < stale


def test_with_shrink_a_degree_change_alone_can_reorder_a_row():
    # s_0j = G_0j / (√d_0 √d_j + shrink): item 1 (G 2, d 2) against item 2 (G 3, d 9). With
    # d_0 = 100 the degrees dominate and item 1 leads; forgetting the 95 users who hold only
    # item 0 leaves d_0 = 5, the shrink dominates and item 2 leads. No count of row 0 moves,
    # so a list kept as the same set with rescaled scores would be wrong
    rows = [[0, 1]] * 2 + [[0, 2]] * 3 + [[2]] * 6 + [[0]] * 95
    users = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    x = sp.csr_matrix((np.ones(len(users)), (users, np.concatenate(rows))), shape=(len(rows), 3))
    model = IMCorrect("itemknn-topk", k=1, shrink=10.0, refit_rank_ratio=np.inf).fit(x)
    assert model._mapping.neighbours()[0][0, 0] == 1
    model.forget(users=range(11, 106))
    assert model._mapping.neighbours()[0][0, 0] == 2
    assert_same_as_fresh_fit(model, 1, 10.0)


@pytest.mark.parametrize("weight", [1.0, 1e40, 7.5e-46])
def test_weights_beyond_float32s_range_do_not_hide_a_neighbour(weight):
    # the compiled selection dismisses candidates against float32 copies of the roots: a
    # root of 1e40 overflows float32 and one of 7.5e-46 is subnormal there; rounded toward
    # zero the copies only make the test more cautious, so item 3 stays item 0's neighbour
    entries = [(0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 2, 1), (2, 1, 1), (3, 2, 1), (4, 2, 1)]
    entries += [(5, 0, 1), (5, 3, weight)]
    users, items, values = zip(*entries, strict=True)
    x = sp.csr_matrix((np.array(values, dtype=float), (users, items)), shape=(6, 4))
    model = IMCorrect("itemknn-topk", k=1, shrink=0.0).fit(x)
    assert model._mapping.neighbours()[0][0, 0] == 3
    assert model._mapping.drift(model.interactions, np.random.default_rng(0), 4) == 0.0
    assert_same_as_fresh_fit(model, 1, 0.0)


def test_float32_copies_round_toward_zero():
    values = np.array([1e40, -1e40, 7.5e-46, 1 / 3, -1 / 3, np.inf, -np.inf, 0.0, 2.0])
    copies = topk_kernel.toward_zero32(values)
    assert copies.dtype == np.float32
    assert np.all(np.abs(copies.astype(np.float64)) <= np.abs(values))
    assert copies[0] == np.finfo(np.float32).max and copies[5] == np.inf and copies[8] == 2.0
    assert copies[1] == -np.finfo(np.float32).max and copies[6] == -np.inf
    # each copy is the float32 nearest to its value from the zero side: the next float32
    # away from zero is too large
    rng = np.random.default_rng(3)
    many = np.column_stack([rng.random(1000) * 10.0 ** rng.integers(-50, 50, 1000)] * 2)
    many[:, 1] *= -1
    got = topk_kernel.toward_zero32(many)
    assert got.shape == many.shape
    assert np.all(np.abs(got.astype(np.float64)) <= np.abs(many))
    with np.errstate(over="ignore"):  # past the largest float32 is inf, as it should be
        away = np.nextafter(got, np.copysign(np.float32(np.inf), got))
    assert np.all((np.abs(away.astype(np.float64)) > np.abs(many)) | (got == 0) & (many == 0))
