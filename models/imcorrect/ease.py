"""EASE: M = I − P·diag(1/diag P) with P = (G + λI)⁻¹ (Steck, 2019).

P is kept current in float64: a change of user rows is a rank-≤2k change of G, folded in with
the Woodbury identity (one correction per micro-batch); removing items is a block Schur
complement; catalogue growth appends a λ⁻¹I block (new items have no interactions yet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from models.config_checks import real
from models.imcorrect.base import Mapping
from models.imcorrect.lowrank import RowChange, symmetric_rank_update


@dataclass(frozen=True)
class EASEConfig:
    """EASE's hyper-parameters; the worker's settings embed this class."""

    #: λ, the ridge added to the Gram matrix's diagonal
    l2: float = 200.0

    def __post_init__(self) -> None:
        real(self, "l2", positive=True)


class EASE(Mapping):
    name = "ease"
    dense_arrays = 4  # G, G + λI being factorised, the identity solved into P, P's symmetrisation
    item_removal_reads_rows = False  # a Schur complement of P

    def __init__(self, config: EASEConfig = EASEConfig()) -> None:
        super().__init__()
        self.config = config
        self.inverse = np.zeros((0, 0))

    @property
    def l2(self) -> float:
        return float(self.config.l2)

    def _fit_derived(self, x: sp.csr_matrix) -> None:
        self.inverse = _spd_inverse(self.gram, self.l2)
        self._mapping = None

    def _correct(self, a, signs, touched, change) -> None:
        # (G + λI + AᵀSA)⁻¹ = P − P Aᵀ (S + A P Aᵀ)⁻¹ A P      (S = S⁻¹ for ±1 entries)
        ap = np.asarray(a @ self.inverse)  # r × n
        inner = np.diag(signs) + np.asarray(a @ ap.T)
        inner = (inner + inner.T) / 2
        symmetric_rank_update(self.inverse, ap, np.linalg.inv(inner))
        self._mapping = None

    def remove_items(self, items: np.ndarray, change: RowChange | None) -> None:
        """Zero the items' rows/columns of G; P follows by a block Schur complement.

        Removing column j of X changes G only in row/column j, so the retained block of P is
        P₋ⱼ₋ⱼ − P₋ⱼⱼ Pⱼⱼ⁻¹ Pⱼ₋ⱼ, and the removed items get the λ⁻¹ of an empty column.
        """
        items = np.unique(np.asarray(items, dtype=np.int64))
        if len(items) == 0:
            return
        block = self.inverse[np.ix_(items, items)]
        rows = np.ascontiguousarray(self.inverse[items, :])
        symmetric_rank_update(self.inverse, rows, np.linalg.inv(block))
        self.inverse[items, :] = 0.0
        self.inverse[:, items] = 0.0
        self.inverse[items, items] = 1.0 / self.l2
        self.gram[items, :] = 0.0
        self.gram[:, items] = 0.0
        self._mapping = None

    def _grow_derived(self, old_n: int, new_n: int) -> None:
        inverse = np.zeros((new_n, new_n))
        inverse[:old_n, :old_n] = self.inverse
        idx = np.arange(old_n, new_n)
        inverse[idx, idx] = 1.0 / self.l2
        self.inverse = inverse
        self._mapping = None

    def _materialise(self) -> np.ndarray:
        m = np.multiply(self.inverse, -1.0 / np.diag(self.inverse)[None, :])
        np.fill_diagonal(m, 0.0)
        return m

    def scores(self, rows: sp.csr_matrix) -> np.ndarray:
        """S = X·M = X − (X·P)·diag(1/diag P), straight from P: M is never materialised."""
        scores = np.asarray(rows @ self.inverse)
        scores *= -1.0 / np.diag(self.inverse)[None, :]
        scores += rows.toarray()  # the I term; (I − P D⁻¹) has a zero diagonal by construction
        return scores

    def _derived_drift(self, cols: np.ndarray) -> float:
        # residual of (G + λI) P = I on the sampled columns
        lhs = self.gram @ self.inverse[:, cols] + self.l2 * self.inverse[:, cols]
        lhs[cols, np.arange(len(cols))] -= 1.0
        return float(np.max(np.abs(lhs)))

    def _derived_state(self) -> dict[str, np.ndarray]:
        return {"inverse": self.inverse}

    def _load_derived(self, arrays: dict[str, np.ndarray]) -> None:
        self.inverse = np.array(arrays["inverse"], dtype=np.float64)


def _spd_inverse(gram: np.ndarray, l2: float) -> np.ndarray:
    """(G + λI)⁻¹ through a Cholesky factorisation (G + λI is symmetric positive definite):
    LAPACK's potrf then potri, n³ flops in all (a solve against I would cost 2n³ more)."""
    n = gram.shape[0]
    if n == 0:
        return np.zeros((0, 0))
    a = np.array(gram, dtype=np.float64, order="F")
    a.flat[:: n + 1] += l2
    factor, info = sla.lapack.dpotrf(a, lower=False, clean=False, overwrite_a=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"G + λI is not positive definite (potrf info {info})")
    inverse, info = sla.lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse of G + λI failed (potri info {info})")
    # potri fills the upper triangle only: mirror it
    lower = np.tril_indices(n, -1)
    inverse[lower] = inverse.T[lower]
    return np.ascontiguousarray(inverse)
