"""IMCorrect: a mapping-based recommender that learns and forgets without retraining.

Two corrections keep the model equal to one fitted from scratch on the retained data:

* the *interaction-matrix correction* edits X (immediately removes forgotten data from the
  user's own scores), and
* the *mapping-matrix correction* folds the same change into the item×item mapping M (removes
  its influence on everybody else's scores) — see the mapping classes for the algebra.

Numerical drift of repeated low-rank updates is watched: every ``check_every`` updates a
residual check on random columns runs, and when it exceeds ``drift_tolerance`` the state is
refactorised from X. Indices are dense ints; mapping external ids is the caller's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from models.imcorrect.base import Mapping
from models.imcorrect.budget import dense_bytes
from models.imcorrect.ease import EASE, EASEConfig
from models.imcorrect.gfcf import GFCF, GFCFConfig
from models.imcorrect.itemknn import ItemKNN, ItemKNNConfig
from models.imcorrect.itemknn_topk import ItemKNNTopK, ItemKNNTopKConfig
from models.imcorrect.lowrank import RowChange
from models.imcorrect.persist import Persistence
from models.imcorrect.serving import FrozenScores
from models.imcorrect.sparse_rows import (
    as_csr,
    drop_entries,
    drop_entries_in_place,
    rows_without,
    shrink_rows_in_place,
    splice_rows,
    valid_indices,
)

MappingName = Literal["ease", "itemknn", "gfcf", "itemknn-topk"]

#: Documented drift tolerance: the largest absolute error allowed on the residual check
#: (‖(G+λI)P − I‖ on sampled columns for EASE, |G − XᵀWX| and |M − f(G)| otherwise).
DEFAULT_DRIFT_TOLERANCE = 1e-9


#: every mapping's config class, embedded by type in the worker's settings
MappingConfig = EASEConfig | ItemKNNConfig | GFCFConfig | ItemKNNTopKConfig

#: name → (config class, mapping class): the one table of supported mappings
_MAPPINGS: dict[str, tuple[type, type[Mapping]]] = {
    "ease": (EASEConfig, EASE),
    "itemknn": (ItemKNNConfig, ItemKNN),
    "gfcf": (GFCFConfig, GFCF),
    "itemknn-topk": (ItemKNNTopKConfig, ItemKNNTopK),
}


def mapping_config(name: MappingName, **params: float) -> MappingConfig:
    """The config of mapping ``name`` with ``params`` set (a TypeError names any parameter
    that mapping does not have)."""
    if name not in _MAPPINGS:
        raise ValueError(f"unknown mapping {name!r}: choose ease, itemknn, gfcf or itemknn-topk")
    return _MAPPINGS[name][0](**params)


def mapping_name(config: MappingConfig) -> MappingName:
    """The name of the mapping ``config`` configures."""
    for name, (config_class, _) in _MAPPINGS.items():
        if type(config) is config_class:
            return name  # type: ignore[return-value]
    raise TypeError(f"not a mapping config: {config!r}")


def make_mapping(config: MappingConfig, memory_budget_gb: float | None = None) -> Mapping:
    """The mapping ``config`` configures.

    ``memory_budget_gb`` (dense mappings only) caps their n×n float64 arrays; a larger
    catalogue raises :class:`~models.imcorrect.budget.DenseBudgetError` before allocating.
    The default is half the machine's physical memory.
    """
    mapping = _MAPPINGS[mapping_name(config)][1](config)
    if memory_budget_gb is not None:
        mapping.memory_budget_bytes = float(memory_budget_gb) * 1e9
    return mapping


@dataclass
class ChangeReport:
    """What one learn/forget call did."""

    version: int
    users_changed: int = 0
    interactions_added: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    refactorised: bool = False


class IMCorrect(Persistence):
    """Incremental learning and exact unlearning on top of an item×item mapping.

    Parameters
    ----------
    mapping:
        A mapping's config (:data:`MappingConfig`), or its name with its fields in
        ``params``: ``"ease"``, ``"itemknn"``, ``"gfcf"`` (linear filter) or
        ``"itemknn-topk"`` (sparse top-k cosine neighbours, for catalogues too large for
        n×n arrays).
    correct_mapping:
        When False only X is corrected (the fast, incomplete "interaction-only" peer).
    drift_tolerance, check_every:
        Residual check policy; see module docstring.
    refit_rank_ratio:
        A row change whose rank bound (2 × changed users) reaches this share of the item
        count is applied by refitting from X instead of a low-rank correction.
    memory_budget_gb:
        Caps the dense mappings' n×n arrays (see :func:`make_mapping`).
    **params:
        Fields of the named mapping's config (``l2`` for EASE, ``shrink`` for ItemKNN,
        ``k``, ``shrink`` and ``reserve`` for itemknn-topk).
    """

    def __init__(
        self,
        mapping: MappingName | MappingConfig = "ease",
        *,
        correct_mapping: bool = True,
        drift_tolerance: float = DEFAULT_DRIFT_TOLERANCE,
        check_every: int = 64,
        refit_rank_ratio: float = 0.5,
        seed: int = 0,
        memory_budget_gb: float | None = None,
        **params: float,
    ) -> None:
        if isinstance(mapping, str):
            config = mapping_config(mapping, **params)
        elif params:
            raise TypeError("give a mapping config or a mapping name with parameters, not both")
        else:
            config = mapping
        self.mapping_name: MappingName = mapping_name(config)
        self._mapping = make_mapping(config, memory_budget_gb)
        self.correct_mapping = correct_mapping
        self.drift_tolerance = drift_tolerance
        self.check_every = check_every
        self.refit_rank_ratio = refit_rank_ratio
        self._rng = np.random.default_rng(seed)
        self._x = sp.csr_matrix((0, 0), dtype=np.float64)
        #: X's arrays are the model's alone (not shared with a caller's matrix): rows may
        #: then be shrunk in place
        self._owns_x = True
        self.forgotten_items = np.zeros(0, dtype=bool)
        self.version = 0
        self.updates_since_check = 0
        self.refactorisations = 0
        self.last_drift = 0.0

    # -- read-only views --------------------------------------------------------------------
    @property
    def config(self) -> MappingConfig:
        """The mapping's hyper-parameters."""
        return self._mapping.config

    @property
    def n_users(self) -> int:
        return self._x.shape[0]

    @property
    def n_items(self) -> int:
        return self._x.shape[1]

    def _admit_saved_catalogue(self, n_items: int) -> None:
        """A saved model keeps its catalogue even past a budget set (or lowered) since: the
        budget then caps it at that size, so only new items are refused (a load that
        refused would stop the worker at every start)."""
        cap = self._mapping.max_items()
        if cap is not None and n_items > cap:
            self._mapping.memory_budget_bytes = float(
                dense_bytes(n_items, self._mapping.dense_arrays)
            )

    @property
    def max_items(self) -> int | None:
        """The largest catalogue the mapping's memory budget allows (None: no cap); learning
        an item index at or past it raises :class:`~models.imcorrect.budget.DenseBudgetError`."""
        return self._mapping.max_items()

    @property
    def n_interactions(self) -> int:
        return int(self._x.nnz)

    def history(self, user: int) -> np.ndarray:
        """Item indices of ``user``'s stored interactions (empty for an unknown index)."""
        if not 0 <= user < self.n_users:
            return np.zeros(0, dtype=np.int64)
        x = self._x
        return x.indices[x.indptr[user] : x.indptr[user + 1]].astype(np.int64)

    def history_size(self, user: int) -> int:
        """Number of stored interactions of ``user`` (0 for an unknown index)."""
        if not 0 <= user < self.n_users:
            return 0
        return int(self._x.indptr[user + 1] - self._x.indptr[user])

    @property
    def interactions(self) -> sp.csr_matrix:
        """Current interaction matrix X (a copy; edit through learn/forget)."""
        return self._x.copy()

    @property
    def mapping(self) -> np.ndarray | sp.csr_matrix:
        """Item×item mapping M, read-only (sparse CSR for itemknn-topk)."""
        return self._mapping.mapping

    @property
    def gram(self) -> np.ndarray | sp.csr_matrix:
        return self._mapping.gram

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, x: sp.spmatrix | np.ndarray) -> IMCorrect:
        """Fit from scratch on X (users × items, implicit weights)."""
        self._x = as_csr(x)
        self._owns_x = False  # csr_matrix(x) of a CSR float64 matrix shares its arrays
        self._mapping.fit(self._x)
        self.forgotten_items = np.zeros(self.n_items, dtype=bool)
        self.version += 1
        self.updates_since_check = 0
        return self

    # -- learning ---------------------------------------------------------------------------
    def learn(
        self,
        users: Sequence[int] | np.ndarray,
        items: Sequence[int] | np.ndarray,
        values: Sequence[float] | np.ndarray | None = None,
    ) -> ChangeReport:
        """Add interactions (last value wins for a repeated pair; default value 1).

        Users and items beyond the current shape grow the matrices. Learning an item that was
        forgotten brings it back into the catalogue.
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        vals = np.ones(len(users)) if values is None else np.asarray(values, dtype=np.float64)
        if not (len(users) == len(items) == len(vals)):
            raise ValueError("users, items and values must have the same length")
        if len(users) == 0:
            return ChangeReport(self.version)
        if users.min() < 0 or items.min() < 0:
            raise ValueError("indices must be non-negative")
        if not np.all(np.isfinite(vals)):
            # a NaN drift never exceeds the tolerance, so nothing would ever repair it
            raise ValueError("values must be finite")
        if self.mapping_name == "gfcf" and np.any(vals < 0):
            # GF-CF weights users by their row sums' inverse square roots
            raise ValueError("gfcf needs non-negative values")
        self._grow(int(users.max()) + 1, int(items.max()) + 1)
        self.forgotten_items[items] = False
        changed = np.unique(users)
        # deduplicate (user, item): the last occurrence wins
        pair = users * self.n_items + items
        _, first_from_end = np.unique(pair[::-1], return_index=True)
        last = len(pair) - 1 - first_from_end
        rows = np.searchsorted(changed, users[last])
        upd = sp.csr_matrix((vals[last], (rows, items[last])), shape=(len(changed), self.n_items))
        old = self._rows(changed).copy()
        pattern = upd.copy()
        pattern.data[:] = 1.0
        new = (old - old.multiply(pattern) + upd).tocsr()
        new.eliminate_zeros()
        self._replace_rows(changed, old, new)
        report = ChangeReport(
            self.version, users_changed=len(changed), interactions_added=len(last)
        )
        report.refactorised = self._after_update()
        report.version = self.version
        return report

    # -- forgetting -------------------------------------------------------------------------
    def forget(
        self,
        users: Iterable[int] | None = None,
        items: Iterable[int] | None = None,
        interactions: Iterable[tuple[int, int]] | None = None,
    ) -> ChangeReport:
        """Forget whole users, whole items and/or single (user, item) interactions.

        All scopes of one call become one correction per kind. Unknown indices are ignored.
        Returns counts of what was actually removed.
        """
        removed = {"users": 0, "items": 0, "interactions": 0}
        item_arr = valid_indices(items, self.n_items)
        if len(item_arr):
            removed["interactions"] += self._forget_items(item_arr)
            removed["items"] = int((~self.forgotten_items[item_arr]).sum())
            self.forgotten_items[item_arr] = True
        drop: dict[int, set[int] | None] = {}
        for u in valid_indices(users, self.n_users).tolist():
            drop[u] = None  # whole row
        for u, i in interactions or ():
            if 0 <= u < self.n_users and 0 <= i < self.n_items and drop.get(u, set()) is not None:
                drop.setdefault(u, set()).add(int(i))
        if drop:
            changed = np.array(sorted(drop), dtype=np.int64)
            old = self._rows(changed).copy()
            whole = np.array([drop[u] is None for u in changed.tolist()], dtype=bool)
            removed["users"] += int((whole & (np.diff(old.indptr) > 0)).sum())
            new = rows_without(old, whole, [drop[u] or () for u in changed.tolist()])
            removed["interactions"] += int(old.nnz - new.nnz)
            self._replace_rows(changed, old, new)
        report = ChangeReport(self.version, removed=removed)
        report.refactorised = self._after_update()
        report.version = self.version
        return report

    def _forget_items(self, items: np.ndarray) -> int:
        x = self._x
        # entries of the forgotten columns, found in one pass over X (no CSC copy) through a
        # table of the items (a gather: np.isin sorts or hashes X's 20M indices)
        forgotten = np.zeros(self.n_items, dtype=bool)
        forgotten[items] = True
        hit = np.flatnonzero(forgotten[x.indices])
        if len(hit) == 0:
            return 0
        change = None
        if self.correct_mapping and self._mapping.item_removal_reads_rows:
            owners = np.searchsorted(x.indptr, hit, side="right") - 1  # sorted, as hit is
            users = owners[np.concatenate([[True], owners[1:] != owners[:-1]])]
            old = self._rows(users)  # a new matrix: sliced from X's arrays
            new = old.copy()
            new.data[forgotten[new.indices]] = 0.0
            new.eliminate_zeros()
            change = RowChange(old, new, np.ones(0), np.ones(0))
        if self._owns_x:
            drop_entries_in_place(x, hit)
        else:
            self._x = drop_entries(x, hit)  # a new X: the caller's arrays stay untouched
            self._owns_x = True
        if self.correct_mapping:
            self._mapping.remove_items(items, change)
        self.version += 1
        return len(hit)

    # -- scoring ----------------------------------------------------------------------------
    def score(
        self,
        users: Sequence[int] | np.ndarray,
        *,
        mask_seen: bool = True,
        mask_forgotten: bool = True,
    ) -> np.ndarray:
        """Scores S = X[users]·M (users × items); masked entries are −inf."""
        users = np.asarray(users, dtype=np.int64)
        rows = self._rows(users)
        scores = self._mapping.scores(rows)
        if mask_seen:
            r, c = rows.nonzero()
            scores[r, c] = -np.inf
        if mask_forgotten and self.forgotten_items.any():
            scores[:, self.forgotten_items] = -np.inf
        return scores

    def freeze(self, dtype: np.dtype | type = np.float32) -> FrozenScores:
        """Scores of this model as it is now, at serving speed (``score(mask_seen=False)`` in
        ``dtype``); later learn/forget calls do not reach it."""
        return FrozenScores(self._x, self._mapping.frozen(dtype), self.forgotten_items, dtype)

    def _rows(self, users: np.ndarray) -> sp.csr_matrix:
        """X[users], sliced straight from the CSR arrays: scipy's fancy row indexing costs
        more than the product itself for the handful of users a serving batch holds."""
        x = self._x
        if len(users) and (users.min() < 0 or users.max() >= x.shape[0]):
            raise IndexError(f"user index out of range 0..{x.shape[0] - 1}")
        starts = x.indptr[users]
        lengths = x.indptr[users + 1] - starts
        indptr = np.zeros(len(users) + 1, dtype=x.indptr.dtype)
        np.cumsum(lengths, out=indptr[1:])
        # position k of output row r reads x's entry starts[r] + k
        take = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return sp.csr_matrix(
            (x.data[take], x.indices[take], indptr), shape=(len(users), x.shape[1]), copy=False
        )

    def recommend(
        self, users: Sequence[int] | np.ndarray, k: int, **mask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per user, best first (masked items never appear;
        a row is padded with -1 / -inf when fewer than k items are eligible)."""
        scores = self.score(users, **mask)
        k_eff = min(k, scores.shape[1])
        part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
        val = np.take_along_axis(top, order, axis=1)
        idx = np.where(np.isfinite(val), idx, -1)
        return idx, val

    def popular(self, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by number of interactions (the fallback for unknown users)."""
        counts = np.asarray((self._x != 0).sum(axis=0)).ravel().astype(np.float64)
        counts[self.forgotten_items] = -np.inf
        if exclude is not None and len(exclude):
            counts[exclude] = -np.inf
        k_eff = min(k, len(counts))
        if k_eff == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        top = np.argsort(-counts, kind="stable")[:k_eff]
        keep = np.isfinite(counts[top]) & (counts[top] > 0)
        return top[keep], counts[top][keep]

    # -- internals --------------------------------------------------------------------------
    def _grow(self, n_users: int, n_items: int) -> None:
        nu, ni = max(n_users, self.n_users), max(n_items, self.n_items)
        if (nu, ni) == self._x.shape:
            return
        self._mapping.check_budget(ni)  # refuse before X or anything else has grown
        self._x.resize((nu, ni))
        if ni > len(self.forgotten_items):
            self.forgotten_items = np.concatenate(
                [self.forgotten_items, np.zeros(ni - len(self.forgotten_items), dtype=bool)]
            )
        self._mapping.grow(ni)

    def _splice(self, users: np.ndarray, new: sp.csr_matrix) -> None:
        """Replace the rows ``users`` of X by those of ``new``: in place when X is the model's
        own and no row grows (every forget), by a copy otherwise."""
        if self._owns_x and shrink_rows_in_place(self._x, users, new):
            return
        self._x = splice_rows(self._x, users, new)
        self._owns_x = True

    def _replace_rows(self, users: np.ndarray, old: sp.csr_matrix, new: sp.csr_matrix) -> None:
        new = sp.csr_matrix(new)
        new.eliminate_zeros()
        new.sort_indices()
        self._splice(users, new)
        if self.correct_mapping:
            if 2 * len(users) >= self.refit_rank_ratio * self.n_items:
                # a correction of rank ≥ a sizeable share of n costs more than refitting
                # (which is exact too): large early micro-batches take this path
                self._mapping.fit(self._x)
            else:
                self._mapping.apply(RowChange(old, new, np.ones(0), np.ones(0)))
        self.version += 1

    def _after_update(self) -> bool:
        self.updates_since_check += 1
        if not self.correct_mapping or self.updates_since_check < self.check_every:
            return False
        return self.check_drift()

    def check_drift(self) -> bool:
        """Run the residual check now; refactorise when it fails. Returns True if refactorised."""
        self.updates_since_check = 0
        self.last_drift = self._mapping.drift(self._x, self._rng)
        if self.last_drift > self.drift_tolerance:
            self._mapping.refactorise(self._x)
            self.refactorisations += 1
            return True
        return False
