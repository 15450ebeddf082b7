"""Shared machinery of the normalised-Gram mappings (ItemKNN cosine, GF-CF linear filter).

Both are M = D^-½ G D^-½ for some item degree vector D. A change of user rows alters G only
on the items those rows touch, and alters D only for them too, so exactly the rows and
columns of M belonging to touched items are recomputed: cost O(|touched| · n_items).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.imcorrect.base import Mapping


class NormalizedGram(Mapping):
    """M_ij = G_ij / (√(d_i d_j) + shrink) with zero where a degree is 0."""

    zero_diagonal: bool = True
    shrink: float = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.m = np.zeros((0, 0))

    def degrees(self) -> np.ndarray:
        raise NotImplementedError

    def _block(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        d = np.sqrt(np.maximum(self.degrees(), 0.0))
        gram_rows = self.gram[rows] if cols is None else self.gram[np.ix_(rows, cols)]
        dc = d if cols is None else d[cols]
        denom = d[rows][:, None] * dc[None, :] + self.shrink
        with np.errstate(divide="ignore", invalid="ignore"):
            block = np.where(denom > 0, gram_rows / np.where(denom > 0, denom, 1.0), 0.0)
        if self.zero_diagonal:
            cols_idx = np.arange(self.gram.shape[0]) if cols is None else cols
            block[rows[:, None] == cols_idx[None, :]] = 0.0
        return block

    def _fit_derived(self, x: sp.csr_matrix) -> None:
        n = self.gram.shape[0]
        self.m = self._block(np.arange(n)) if n else np.zeros((0, 0))
        self._mapping = None

    def _correct(self, a, signs, touched, change) -> None:
        self._refresh(touched)

    def _refresh(self, items: np.ndarray) -> None:
        if len(items) == 0:
            return
        rows = self._block(items)
        self.m[items, :] = rows
        self.m[:, items] = rows.T
        self._mapping = None

    def _grow_derived(self, old_n: int, new_n: int) -> None:
        m = np.zeros((new_n, new_n))
        m[:old_n, :old_n] = self.m
        self.m = m
        self._mapping = None

    def _materialise(self) -> np.ndarray:
        return self.m.copy()

    def _derived_drift(self, cols: np.ndarray) -> float:
        fresh = self._block(np.arange(self.gram.shape[0]), cols)
        return float(np.max(np.abs(self.m[:, cols] - fresh)))

    def _derived_state(self) -> dict[str, np.ndarray]:
        return {"m": self.m}

    def _load_derived(self, arrays: dict[str, np.ndarray]) -> None:
        self.m = np.array(arrays["m"], dtype=np.float64)


def row_sums(rows: sp.csr_matrix) -> np.ndarray:
    return np.asarray(rows.sum(axis=1)).ravel().astype(np.float64)


__all__ = ["NormalizedGram", "row_sums"]
