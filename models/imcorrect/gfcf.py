"""GF-CF linear filter: M = R̃ᵀR̃ with R̃ = D_u^-½ X D_i^-½ (Shen et al., 2021).

R̃ᵀR̃ = D_i^-½ (Xᵀ D_u⁻¹ X) D_i^-½: a Gram matrix whose users are weighted by 1/degree, and
item degrees D_i = column sums of X. Corrections are exact for this linear part.

Where exactness stops: GF-CF's ideal low-pass term (top singular vectors of R̃) is *not*
maintained here; it needs an SVD and would have to be refreshed lazily, so Lethe serves only
the linear filter, for which forgetting is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.imcorrect.base import Mapping
from models.imcorrect.lowrank import RowChange
from models.imcorrect.normalized import NormalizedGram, row_sums


@dataclass(frozen=True)
class GFCFConfig:
    """The linear GF-CF filter has no hyper-parameters; the class keeps the settings uniform."""


class GFCF(NormalizedGram):
    name = "gfcf"
    zero_diagonal = False

    def __init__(self, config: GFCFConfig = GFCFConfig()) -> None:
        super().__init__()
        self.config = config
        self.item_degree = np.zeros(0)

    def row_weights(self, rows: sp.csr_matrix) -> np.ndarray:
        d = row_sums(rows)
        return np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)

    def degrees(self) -> np.ndarray:
        return self.item_degree

    def fit(self, x: sp.csr_matrix) -> None:
        self.item_degree = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
        super().fit(x)

    def apply(self, change: RowChange) -> None:
        delta = np.asarray(change.new.sum(axis=0) - change.old.sum(axis=0)).ravel()
        self.item_degree += delta
        Mapping.apply(self, change)

    def _grow_derived(self, old_n: int, new_n: int) -> None:
        self.item_degree = np.concatenate([self.item_degree, np.zeros(new_n - old_n)])
        super()._grow_derived(old_n, new_n)

    def drift(self, x: sp.csr_matrix, rng: np.random.Generator, n_columns: int = 8) -> float:
        fresh = np.asarray(x.sum(axis=0)).ravel()
        degree_err = float(np.max(np.abs(self.item_degree - fresh))) if len(fresh) else 0.0
        return max(degree_err, super().drift(x, rng, n_columns))

    def _derived_state(self) -> dict[str, np.ndarray]:
        return {**super()._derived_state(), "item_degree": self.item_degree}

    def _load_derived(self, arrays: dict[str, np.ndarray]) -> None:
        super()._load_derived(arrays)
        self.item_degree = np.array(arrays["item_degree"], dtype=np.float64)
