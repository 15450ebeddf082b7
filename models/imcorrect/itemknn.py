"""ItemKNN with cosine similarity: M = D^-½ G D^-½, D = diag(G), zero diagonal, shrinkage."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.imcorrect.normalized import NormalizedGram


class ItemKNN(NormalizedGram):
    name = "itemknn"
    zero_diagonal = True

    def __init__(self, shrink: float = 0.0) -> None:
        super().__init__()
        if shrink < 0:
            raise ValueError("shrink must be non-negative")
        self.shrink = float(shrink)

    def config(self) -> dict[str, Any]:
        return {"shrink": self.shrink}

    def degrees(self) -> np.ndarray:
        # cosine norms are the diagonal of the Gram matrix (Σ_u x_ui²)
        return np.diag(self.gram)
