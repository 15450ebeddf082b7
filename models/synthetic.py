"""Synthetic interaction data for scale tests and benchmarks (seeded, fully vectorised).

Shape of the data:

* item popularity follows a Zipf law (weight ∝ 1/rank^``item_exponent``);
* user activity follows a power law (Pareto, tail index ``user_exponent``), clipped to
  ``[min_per_user, max_per_user]``; the clip bounds the co-occurring pairs a single user adds
  (len² of them) the way real catalogues cap bots and shared accounts;
* every user's history is a run of sessions (geometric lengths, mean ``session_mean``). A
  session starts at an item drawn by popularity; each later item comes, with probability
  ``affinity``, from the starting item's cluster (items are grouped into ``n_clusters``
  topics, drawn by popularity inside the cluster), otherwise from the whole catalogue.

Repeated (user, item) draws collapse, so the result holds slightly fewer interactions than
asked for; :attr:`Synthetic.n_interactions` says how many. :func:`write` stores it in the
dataset loader's format (``<name>.inter`` / ``<name>.item``, tab-separated, ``field:type``
headers) and :func:`read` loads such a folder into a :class:`models.datasets.Dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.datasets import Dataset


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and shape parameters of a generated data set."""

    n_items: int
    n_users: int
    n_interactions: int
    seed: int = 0
    item_exponent: float = 1.0
    user_exponent: float = 1.3
    min_per_user: int = 3
    max_per_user: int = 300
    session_mean: float = 6.0
    affinity: float = 0.8
    n_clusters: int = 0  # 0: one cluster per ~100 items

    def __post_init__(self) -> None:
        if min(self.n_items, self.n_users, self.n_interactions) < 1:
            raise ValueError("sizes must be positive")
        if not 0 <= self.affinity <= 1:
            raise ValueError("affinity is a probability")
        if not 1 <= self.min_per_user <= self.max_per_user:
            raise ValueError("need 1 ≤ min_per_user ≤ max_per_user")


@dataclass(frozen=True)
class Synthetic:
    """Generated interactions (one row each, users sorted, time-ordered per user)."""

    config: SyntheticConfig
    users: np.ndarray  # int32
    items: np.ndarray  # int32
    ts: np.ndarray  # int64 epoch seconds
    cluster: np.ndarray  # int32 cluster of every item

    @property
    def n_interactions(self) -> int:
        return len(self.users)

    def matrix(self) -> sp.csr_matrix:
        """Binary users × items CSR matrix."""
        shape = (self.config.n_users, self.config.n_items)
        data = np.ones(len(self.users))
        x = sp.csr_matrix((data, (self.users, self.items)), shape=shape)
        x.data[:] = 1.0
        return x


def _activity(cfg: SyntheticConfig, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Draws per user: Pareto weights scaled to the requested total, then clipped."""
    weights = rng.pareto(cfg.user_exponent, cfg.n_users) + 1.0
    counts = np.clip(
        np.round(weights * n_draws / weights.sum()), cfg.min_per_user, cfg.max_per_user
    )
    # the clip moved the total: rescale the unclipped middle once to land near the target
    free = (counts > cfg.min_per_user) & (counts < cfg.max_per_user)
    fixed = counts[~free].sum()
    if free.any() and n_draws > fixed:
        scale = (n_draws - fixed) / counts[free].sum()
        counts[free] = np.clip(np.round(counts[free] * scale), cfg.min_per_user, cfg.max_per_user)
    return counts.astype(np.int64)


def _draw(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions drawn with probability ∝ weight inside ranges of a cumulative weight array."""
    return np.searchsorted(cum, lo + rng.random(len(lo)) * (hi - lo), side="right")


def generate(cfg: SyntheticConfig) -> Synthetic:
    """Generate the data set described by ``cfg`` (same config and seed → same data).

    Repeated draws of a (user, item) pair collapse; a second pass asks for proportionally
    more draws so that the result lands close to ``cfg.n_interactions``.
    """
    first = _generate(cfg, cfg.n_interactions)
    kept = first.n_interactions / max(1, cfg.n_interactions)
    if kept >= 0.98:
        return first
    return _generate(cfg, int(round(cfg.n_interactions / kept)))


def _generate(cfg: SyntheticConfig, n_draws: int) -> Synthetic:
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_items
    n_clusters = cfg.n_clusters or max(1, n // 100)
    # item i has popularity rank perm[i]; clusters are assigned independently of rank
    rank = rng.permutation(n)
    popularity = 1.0 / (rank + 1.0) ** cfg.item_exponent
    cluster = rng.integers(0, n_clusters, n).astype(np.int32)

    # global draws: items laid out in index order, cumulative popularity
    cum_all = np.cumsum(popularity)
    # cluster draws: items grouped by cluster, cumulative popularity in that order
    by_cluster = np.argsort(cluster, kind="stable")
    cum_cluster = np.cumsum(popularity[by_cluster])
    starts = np.searchsorted(cluster[by_cluster], np.arange(n_clusters + 1))
    edge = np.concatenate([[0.0], cum_cluster])

    counts = _activity(cfg, n_draws, rng)
    total = int(counts.sum())
    users = np.repeat(np.arange(cfg.n_users, dtype=np.int64), counts)
    pos = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    # sessions: a new one starts at each user's first item and then with prob 1/mean
    new_session = (pos == 0) | (rng.random(total) < 1.0 / cfg.session_mean)
    session = np.cumsum(new_session) - 1
    anchors = np.flatnonzero(new_session)
    anchor_item = _draw(cum_all, np.zeros(len(anchors)), np.full(len(anchors), cum_all[-1]), rng)
    items = anchor_item[session]
    follow = ~new_session & (rng.random(total) < cfg.affinity)
    c = cluster[items[follow]]
    picked = _draw(cum_cluster, edge[starts[c]], edge[starts[c + 1]], rng)
    items[follow] = by_cluster[np.minimum(picked, n - 1)]
    wander = ~new_session & ~follow
    items[wander] = _draw(cum_all, np.zeros(wander.sum()), np.full(wander.sum(), cum_all[-1]), rng)
    items = np.minimum(items, n - 1)

    # time: each user starts at a random moment in a year, sessions an hour apart, items a
    # minute apart inside one
    day = 86_400
    start = rng.integers(1_700_000_000, 1_700_000_000 + 365 * day, cfg.n_users)
    first_session = np.repeat(np.cumsum(counts) - counts, counts)
    ts = start[users] + 3600 * (session - session[first_session]) + 60 * pos

    # one interaction per (user, item): keep the first occurrence
    key = users * n + items
    _, first = np.unique(key, return_index=True)
    first.sort()
    return Synthetic(
        cfg,
        users[first].astype(np.int32),
        items[first].astype(np.int32),
        ts[first].astype(np.int64),
        cluster,
    )


def write(data: Synthetic, folder: str | Path, name: str = "synthetic") -> Path:
    """Write ``<name>.inter`` and ``<name>.item`` in the loader's format into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inter = pd.DataFrame(
        {
            "user_id:token": np.char.add("u", data.users.astype(str)),
            "item_id:token": np.char.add("i", data.items.astype(str)),
            "rating:float": np.ones(len(data.users)),
            "timestamp:float": data.ts,
        }
    )
    inter.to_csv(folder / f"{name}.inter", sep="\t", index=False)
    ids = np.arange(data.config.n_items)
    item = pd.DataFrame(
        {
            "item_id:token": np.char.add("i", ids.astype(str)),
            "movie_title:token_seq": np.char.add("Item ", ids.astype(str)),
            "release_year:token": 2000 + ids % 25,
            "class:token_seq": np.char.add("cluster", data.cluster.astype(str)),
        }
    )
    item.to_csv(folder / f"{name}.item", sep="\t", index=False)
    return folder


def read(folder: str | Path, name: str = "synthetic") -> Dataset:
    """Load a folder written by :func:`write` the way :func:`models.datasets.load` loads
    the packaged MovieLens sets (time-sorted interactions, item metadata)."""
    folder = Path(folder)

    def table(path: Path) -> pd.DataFrame:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        frame.columns = [col.split(":", 1)[0] for col in frame.columns]
        return frame

    raw = table(folder / f"{name}.inter")
    inter = pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "item_id": raw["item_id"],
            "rating": raw["rating"].astype(float),
            "ts": raw["timestamp"].astype(float).astype(np.int64),
        }
    ).sort_values("ts", kind="stable")
    raw_items = table(folder / f"{name}.item")
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"],
            "title": raw_items["movie_title"],
            "year": raw_items["release_year"],
            "genres": raw_items["class"].str.split(" "),
        }
    )
    return Dataset(name=name, interactions=inter.reset_index(drop=True), items=items)
