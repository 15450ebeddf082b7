"""Low-rank changes of a Gram matrix and in-place dense updates.

A micro-batch that rewrites ``k`` user rows of X changes the Gram matrix G = XᵀX by

    ΔG = Σ_u w_u' r_u'ᵀ r_u' − w_u r_uᵀ r_u  =  Aᵀ S A,

with A stacking the new and old rows (scaled by √w) and S = diag(+1…, −1…). Its rank is at
most 2k and it only touches the items in the union of those rows. Everything is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import blas


@dataclass(frozen=True)
class RowChange:
    """Old and new versions of the changed rows, with per-row weights (1 for a plain Gram)."""

    old: sp.csr_matrix  # k × n
    new: sp.csr_matrix  # k × n
    old_weight: np.ndarray  # k
    new_weight: np.ndarray  # k

    def factor(self) -> tuple[sp.csr_matrix, np.ndarray]:
        """``(A, signs)`` with ΔG = Aᵀ diag(signs) A; all-zero rows are dropped."""
        new = sp.diags(np.sqrt(self.new_weight)) @ self.new
        old = sp.diags(np.sqrt(self.old_weight)) @ self.old
        a = sp.vstack([new, old], format="csr")
        signs = np.concatenate([np.ones(new.shape[0]), -np.ones(old.shape[0])])
        keep = np.diff(a.indptr) > 0
        return a[keep], signs[keep]

    def touched_items(self) -> np.ndarray:
        return np.union1d(self.old.indices, self.new.indices).astype(np.int64)


def add_gram_change(gram: np.ndarray, a: sp.csr_matrix, signs: np.ndarray) -> np.ndarray:
    """Add Aᵀ diag(signs) A to the dense ``gram`` in place; returns the touched items."""
    cols = np.unique(a.indices)
    if len(cols) == 0:
        return cols
    block = a[:, cols].toarray()
    gram[np.ix_(cols, cols)] += block.T @ (signs[:, None] * block)
    return cols


def symmetric_rank_update(p: np.ndarray, v: np.ndarray, c: np.ndarray) -> None:
    """In place ``P ← P − Vᵀ C V`` for symmetric P (n×n, C-order), V (r×n), C (r×r).

    Uses one BLAS dgemm on the Fortran view of P (P is symmetric, so Pᵀ = P) to avoid an n×n
    temporary: the update of a 3,706² matrix then costs one pass over memory.
    """
    w = np.ascontiguousarray(c @ v)  # r × n
    pt = p.T  # Fortran-ordered view of the same buffer
    if not pt.flags.f_contiguous:
        p -= v.T @ w
        return
    out = blas.dgemm(alpha=-1.0, a=v, b=w, beta=1.0, c=pt, trans_a=1, overwrite_c=1)
    if out is not pt and not np.shares_memory(out, p):
        p[...] = out.T
