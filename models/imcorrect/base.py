"""The contract every IMCorrect mapping fulfils.

A mapping turns the interaction matrix X into an item×item matrix M with scores S = X·M. All
three supported mappings depend on X only through a (possibly user-weighted) Gram matrix
G = Xᵀ W X and per-item degrees, so a change of some user rows is a low-rank change of G that
each mapping folds into M without refitting (see :mod:`models.imcorrect.lowrank`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from models.imcorrect.budget import check_dense_budget, default_budget_bytes, max_dense_items
from models.imcorrect.lowrank import RowChange, add_gram_change


class Mapping(ABC):
    """Base class: keeps the weighted Gram matrix and derives the mapping from it."""

    name: ClassVar[str]
    #: n×n float64 arrays alive at the peak (G, the derived matrix, a materialised M)
    dense_arrays: ClassVar[int] = 3
    #: whether :meth:`remove_items` reads the users' rows (slicing the rows of a popular
    #: item's users costs more than some mappings' whole removal)
    item_removal_reads_rows: ClassVar[bool] = True

    #: the mapping's hyper-parameters: a frozen dataclass owned by the mapping's module
    config: Any

    def __init__(self) -> None:
        self.gram = np.zeros((0, 0))
        self._mapping: np.ndarray | None = None
        self.memory_budget_bytes: float = default_budget_bytes()

    def check_budget(self, n_items: int) -> None:
        """Refuse (before allocating) a catalogue whose dense arrays exceed the budget."""
        check_dense_budget(self.name, n_items, self.dense_arrays, self.memory_budget_bytes)

    def max_items(self) -> int | None:
        """The largest catalogue :meth:`check_budget` accepts (None: no cap)."""
        return max_dense_items(self.dense_arrays, self.memory_budget_bytes)

    # -- weighting --------------------------------------------------------------------------
    def row_weights(self, rows: sp.csr_matrix) -> np.ndarray:
        """Weight of each user's contribution to G (1 unless the mapping normalises users)."""
        return np.ones(rows.shape[0])

    def weighted_gram(self, x: sp.csr_matrix) -> np.ndarray:
        w = self.row_weights(x)
        if np.all(w == 1.0):
            return np.asarray((x.T @ x).toarray(), dtype=np.float64)
        return np.asarray((x.T @ sp.diags(w) @ x).toarray(), dtype=np.float64)

    # -- lifecycle --------------------------------------------------------------------------
    def fit(self, x: sp.csr_matrix) -> None:
        """Build every matrix from scratch (the gold standard the corrections must equal)."""
        self.check_budget(x.shape[1])
        self.gram = self.weighted_gram(x)
        self._fit_derived(x)

    def apply(self, change: RowChange) -> None:
        """Fold a change of some user rows into G and the mapping."""
        change = RowChange(
            change.old, change.new, self.row_weights(change.old), self.row_weights(change.new)
        )
        a, signs = change.factor()
        if a.shape[0] == 0:
            return
        touched = add_gram_change(self.gram, a, signs)
        self._correct(a, signs, touched, change)

    def remove_items(self, items: np.ndarray, change: RowChange | None) -> None:
        """Drop item columns from X; ``change`` holds the rows of users who had them (None
        where ``item_removal_reads_rows`` is false)."""
        assert change is not None, f"{self.name} reads the removed items' rows"
        self.apply(change)

    def grow(self, n_items: int) -> None:
        """Extend the catalogue with items that have no interactions yet."""
        n = self.gram.shape[0]
        if n_items <= n:
            return
        self.check_budget(n_items)
        gram = np.zeros((n_items, n_items))
        gram[:n, :n] = self.gram
        self.gram = gram
        self._grow_derived(n, n_items)

    @property
    def mapping(self) -> np.ndarray:
        """The item×item mapping M (read-only view; recomputed lazily after a change)."""
        if self._mapping is None:
            self._mapping = self._materialise()
            self._mapping.setflags(write=False)
        return self._mapping

    def scores(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray(rows @ self.mapping)

    def frozen(self, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """A new, writable copy of M in ``dtype`` (nothing cached: a serving copy must not
        keep a second float64 M alive beside it)."""
        source = self._mapping if self._mapping is not None else self._materialise()
        return np.array(source, dtype=dtype, order="C")

    # -- numerical health -------------------------------------------------------------------
    def drift(self, x: sp.csr_matrix, rng: np.random.Generator, n_columns: int = 8) -> float:
        """Largest absolute error of the maintained state on a few random columns."""
        n = self.gram.shape[0]
        if n == 0:
            return 0.0
        cols = rng.choice(n, size=min(n_columns, n), replace=False)
        w = self.row_weights(x)
        fresh = np.asarray((x.T @ (sp.diags(w) @ x[:, cols])).toarray())
        return max(float(np.max(np.abs(self.gram[:, cols] - fresh))), self._derived_drift(cols))

    def refactorise(self, x: sp.csr_matrix) -> None:
        """Recompute from X, discarding accumulated rounding error."""
        self.fit(x)

    # -- persistence ------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        return {"gram": self.gram, **self._derived_state()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.gram = np.array(arrays["gram"], dtype=np.float64)
        self._load_derived(arrays)
        self._mapping = None

    def params(self) -> dict[str, Any]:
        """Hyper-parameters as JSON-serialisable fields of :attr:`config`."""
        return dataclasses.asdict(self.config)

    # -- hooks for subclasses ---------------------------------------------------------------
    @abstractmethod
    def _fit_derived(self, x: sp.csr_matrix) -> None: ...

    @abstractmethod
    def _correct(
        self, a: sp.csr_matrix, signs: np.ndarray, touched: np.ndarray, change: RowChange
    ) -> None: ...

    @abstractmethod
    def _grow_derived(self, old_n: int, new_n: int) -> None: ...

    @abstractmethod
    def _materialise(self) -> np.ndarray: ...

    def _derived_drift(self, cols: np.ndarray) -> float:
        return 0.0

    def _derived_state(self) -> dict[str, np.ndarray]:
        return {}

    def _load_derived(self, arrays: dict[str, np.ndarray]) -> None:  # noqa: B027
        """Restore subclass arrays (none by default)."""
