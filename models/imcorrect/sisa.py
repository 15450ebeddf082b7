"""A SISA / RecEraser-style peer: EASE on disjoint user shards, averaged.

Forgetting retrains only the shards that held the forgotten data, which is fast, but every
shard sees only 1/n of the users, so the ensemble loses utility. Used as a peer in the
unlearning benchmark, never served.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.imcorrect.ease import EASE, EASEConfig


class ShardedEASE:
    """``n_shards`` EASE models on a random partition of users; scores are their mean."""

    def __init__(self, n_shards: int = 8, l2: float = EASEConfig.l2, seed: int = 0) -> None:
        self.n_shards = n_shards
        self.l2 = l2
        self.seed = seed
        self.shard_mappings: list[np.ndarray] = []
        self.x = sp.csr_matrix((0, 0))
        self.shard_of_user = np.zeros(0, dtype=np.int64)

    def fit(self, x: sp.csr_matrix) -> ShardedEASE:
        self.x = sp.csr_matrix(x, dtype=np.float64)
        rng = np.random.default_rng(self.seed)
        self.shard_of_user = rng.integers(0, self.n_shards, size=x.shape[0])
        self.shard_mappings = [self._fit_shard(s) for s in range(self.n_shards)]
        return self

    def _fit_shard(self, shard: int) -> np.ndarray:
        rows = np.flatnonzero(self.shard_of_user == shard)
        model = EASE(EASEConfig(l2=self.l2))
        model.fit(self.x[rows])
        return np.array(model.mapping)

    def forget(
        self,
        users: list[int] | np.ndarray = (),
        items: list[int] | np.ndarray = (),
        interactions: list[tuple[int, int]] = (),
    ) -> list[int]:
        """Remove the data, retrain the shards that held it; returns the retrained shards."""
        x = self.x.tolil()
        touched: set[int] = set()
        for u in users:
            if x.rows[u]:
                touched.add(int(self.shard_of_user[u]))
            x.rows[u], x.data[u] = [], []
        for u, i in interactions:
            if x[u, i] != 0:
                x[u, i] = 0
                touched.add(int(self.shard_of_user[u]))
        items = np.asarray(items, dtype=np.int64)
        if len(items):
            xc = self.x.tocsc()
            for u in np.unique(xc[:, items].indices):
                touched.add(int(self.shard_of_user[u]))
            x[:, items] = 0
        self.x = sp.csr_matrix(x)
        self.x.eliminate_zeros()
        for s in sorted(touched):
            self.shard_mappings[s] = self._fit_shard(s)
        return sorted(touched)

    @property
    def mapping(self) -> np.ndarray:
        return np.mean(self.shard_mappings, axis=0)

    def score(self, users: np.ndarray, mapping: np.ndarray | None = None) -> np.ndarray:
        rows = self.x[users]
        scores = np.asarray(rows @ (self.mapping if mapping is None else mapping))
        r, c = rows.nonzero()
        scores[r, c] = -np.inf
        return scores
