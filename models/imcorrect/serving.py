"""Serving-speed scores from an IMCorrect model that will not change any more.

:meth:`IMCorrect.score` is written for a model that keeps learning: every call slices a CSR
matrix, multiplies it into a float64 M (EASE re-derives M from P on the way) and masks. A
scorer serving a snapshot calls it for one or two users at a time, where that overhead is most
of the cost. :class:`FrozenScores` does the fixed work once — M in float32 (half the memory
traffic: a user's score row sums the M rows of their items), forgotten columns listed.

float32 is enough to rank with: scores are standardised and fused downstream, and the
relative error (~1e-7) is far below the gaps between ranked items that matter.

A sparse M (the itemknn-topk mapping) stays sparse: a user's score row is the weighted sum
of the sparse M rows of their items, accumulated into one dense output row, so nothing of
size n×n is ever allocated.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class FrozenScores:
    """S = X[users]·M for fixed X and M, with forgotten items at −inf (as ``IMCorrect.score``
    with ``mask_seen=False``)."""

    def __init__(
        self,
        x: sp.csr_matrix,
        mapping: np.ndarray | sp.spmatrix,
        forgotten_items: np.ndarray,
        dtype: np.dtype | type = np.float32,
    ) -> None:
        if mapping.shape != (x.shape[1], x.shape[1]):
            raise ValueError(f"mapping {mapping.shape} does not fit X {x.shape}")
        x = x.tocsr()
        self.dtype = np.dtype(dtype)
        self._indptr = x.indptr.astype(np.int64)
        self._indices = x.indices.astype(np.int64)
        self._values = x.data.astype(self.dtype)
        self._sparse = sp.issparse(mapping)
        if self._sparse:
            self._mapping = sp.csr_matrix(mapping, dtype=self.dtype)
        else:
            self._mapping = np.ascontiguousarray(mapping, dtype=self.dtype)
            self._mapping.setflags(write=False)
        self._forgotten = np.flatnonzero(forgotten_items)

    @property
    def n_users(self) -> int:
        return len(self._indptr) - 1

    @property
    def n_items(self) -> int:
        return self._mapping.shape[0]

    def score(self, users: np.ndarray | list[int]) -> np.ndarray:
        """A ``len(users) × n_items`` array in :attr:`dtype`."""
        users = np.asarray(users, dtype=np.int64)
        if len(users) and (users.min() < 0 or users.max() >= self.n_users):
            raise IndexError(f"user index out of range 0..{self.n_users - 1}")
        out = np.zeros((len(users), self.n_items), dtype=self.dtype)
        for r, u in enumerate(users.tolist()):
            start, end = self._indptr[u], self._indptr[u + 1]
            if end > start and self._sparse:
                out[r] = self._sparse_row(self._indices[start:end], self._values[start:end])
            elif end > start:
                # the user's rows of M, weighted and summed. einsum's own loop, not BLAS:
                # OpenBLAS threads this product and its idle workers spin, which took a
                # third of a core from the scorer; building a scipy row per call cost more
                # than the sum itself
                np.einsum(
                    "i,ij->j",
                    self._values[start:end],
                    self._mapping[self._indices[start:end]],
                    out=out[r],
                )
        if len(self._forgotten):
            out[:, self._forgotten] = -np.inf
        return out

    def _sparse_row(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Σ_i w_i · M[i, :] for a sparse M, gathered straight from its CSR arrays."""
        m = self._mapping
        starts = m.indptr[items].astype(np.int64)
        lengths = m.indptr[items + 1].astype(np.int64) - starts
        offsets = np.cumsum(lengths) - lengths
        take = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))
        contrib = np.repeat(weights, lengths) * m.data[take]
        return np.bincount(m.indices[take], weights=contrib, minlength=self.n_items)
