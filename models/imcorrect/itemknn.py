"""ItemKNN with cosine similarity: M = D^-½ G D^-½, D = diag(G), zero diagonal, shrinkage."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.imcorrect.lowrank import RowChange
from models.imcorrect.normalized import NormalizedGram


class ItemKNN(NormalizedGram):
    name = "itemknn"
    zero_diagonal = True
    item_removal_reads_rows = False  # zeroes G's rows and columns

    def __init__(self, shrink: float = 0.0) -> None:
        super().__init__()
        if shrink < 0:
            raise ValueError("shrink must be non-negative")
        self.shrink = float(shrink)

    def config(self) -> dict[str, Any]:
        return {"shrink": self.shrink}

    def remove_items(self, items: np.ndarray, change: RowChange | None) -> None:
        """Removing column j of X only zeroes row/column j of G, and no other item's norm
        (diag G) changes, so only the removed items' rows/columns of M are recomputed."""
        items = np.unique(np.asarray(items, dtype=np.int64))
        self.gram[items, :] = 0.0
        self.gram[:, items] = 0.0
        self._refresh(items)

    def degrees(self) -> np.ndarray:
        # cosine norms are the diagonal of the Gram matrix (Σ_u x_ui²)
        return np.diag(self.gram)
