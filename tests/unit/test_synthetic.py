"""The synthetic data generator: seeded, power laws, session affinity, loader format."""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import leave_one_out
from models.synthetic import SyntheticConfig, generate, read, write

SMALL = SyntheticConfig(n_items=2_000, n_users=3_000, n_interactions=60_000, seed=1)


@pytest.fixture(scope="module")
def data():
    return generate(SMALL)


def test_same_seed_same_data_other_seed_other_data(data):
    again = generate(SMALL)
    np.testing.assert_array_equal(again.users, data.users)
    np.testing.assert_array_equal(again.items, data.items)
    other = generate(SyntheticConfig(2_000, 3_000, 60_000, seed=2))
    assert not np.array_equal(other.items[:1000], data.items[:1000])


def test_sizes_and_no_repeated_pairs(data):
    assert abs(data.n_interactions - SMALL.n_interactions) <= 0.05 * SMALL.n_interactions
    assert data.users.max() < SMALL.n_users and data.items.max() < SMALL.n_items
    x = data.matrix()
    assert x.nnz == data.n_interactions  # every (user, item) once
    assert np.diff(x.indptr).max() <= SMALL.max_per_user


def test_popularity_and_activity_are_heavy_tailed(data):
    x = data.matrix()
    popularity = np.sort(np.asarray(x.sum(axis=0)).ravel())[::-1]
    top = popularity[: SMALL.n_items // 100].sum() / popularity.sum()
    assert top > 0.15  # the top 1% of items hold far more than 1% of interactions
    activity = np.diff(x.indptr)
    assert activity.max() >= 8 * np.median(activity)


def test_sessions_stay_inside_an_item_cluster(data):
    order = np.lexsort((data.ts, data.users))
    users, items = data.users[order], data.items[order]
    same_user = users[1:] == users[:-1]
    same_cluster = data.cluster[items[1:]] == data.cluster[items[:-1]]
    # a next item drawn independently would share the cluster with probability Σ_c q_c²
    q = np.bincount(data.cluster[items]) / len(items)
    assert same_cluster[same_user].mean() > 4 * float(q @ q)


def test_written_folder_loads_like_a_packaged_dataset(data, tmp_path):
    write(data, tmp_path, "synth")
    ds = read(tmp_path, "synth")
    assert len(ds.interactions) == data.n_interactions
    assert ds.n_users == len(np.unique(data.users))
    assert np.all(np.diff(ds.interactions["ts"].to_numpy()) >= 0)
    assert ds.title("i0").startswith("Item 0")
    split = leave_one_out(ds)
    assert split.n_items == len(np.unique(data.items))
    assert (split.test_target >= 0).sum() > 0.5 * split.n_users


def test_rejects_impossible_configs():
    with pytest.raises(ValueError):
        SyntheticConfig(0, 10, 10)
    with pytest.raises(ValueError):
        SyntheticConfig(10, 10, 10, affinity=1.5)
