"""ItemKNN with cosine similarity: M = D^-½ G D^-½, D = diag(G), zero diagonal, shrinkage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.config_checks import real
from models.imcorrect.lowrank import RowChange
from models.imcorrect.normalized import NormalizedGram


@dataclass(frozen=True)
class ItemKNNConfig:
    """Dense cosine ItemKNN's hyper-parameters; the worker's settings embed this class."""

    #: added to the cosine denominator; damps similarities built on few co-occurrences
    shrink: float = 0.0

    def __post_init__(self) -> None:
        real(self, "shrink", positive=False)


class ItemKNN(NormalizedGram):
    name = "itemknn"
    zero_diagonal = True
    item_removal_reads_rows = False  # zeroes G's rows and columns

    def __init__(self, config: ItemKNNConfig = ItemKNNConfig()) -> None:
        super().__init__()
        self.config = config
        self.shrink = float(config.shrink)

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
