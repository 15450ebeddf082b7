"""Fuse SASRec and IMCorrect scores and pick the top k, with items that must not be shown.

Both score scales are arbitrary (SASRec logits, IMCorrect's X·B), so each row is standardised
over the items that model can score before the weighted sum; an item one model cannot score
contributes that model's row mean (a standardised 0).
"""

from __future__ import annotations

import numpy as np


def standardise(scores: np.ndarray) -> np.ndarray:
    """Row-wise (s − mean) / std over finite entries; non-finite entries become 0."""
    finite = np.isfinite(scores)
    count = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    filled = np.where(finite, scores, 0.0)
    mean = filled.sum(axis=1, keepdims=True) / count
    var = (np.where(finite, scores - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count
    z = (filled - mean) / np.sqrt(var + 1e-12)
    return np.where(finite, z, 0.0)


def fuse(crm: np.ndarray | None, imcorrect: np.ndarray | None, weight: float) -> np.ndarray:
    """z(crm) + weight · z(imcorrect); either may be missing (None) for the whole batch."""
    if crm is None and imcorrect is None:
        raise ValueError("nothing to fuse")
    if imcorrect is None:
        return standardise(crm)
    if crm is None:
        return standardise(imcorrect)
    return standardise(crm) + weight * standardise(imcorrect)


def fuse_batch(crm: np.ndarray | None, imcorrect: np.ndarray | None, weight: float) -> np.ndarray:
    """:func:`fuse` row by row, where a row may lack one model (all NaN): such a row ranks by
    the other model alone."""
    if crm is None or imcorrect is None:
        return fuse(crm, imcorrect, weight)
    has_crm = np.isfinite(crm).any(axis=1)[:, None]
    w = np.where(has_crm, weight, 1.0)
    return standardise(crm) + w * standardise(imcorrect)


def top_k(
    scores: np.ndarray, k: int, banned: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best entries of a 1-D score vector, best first,
    never a banned index (fewer than ``k`` when too few are allowed)."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    if banned is not None and len(banned):
        scores[banned] = -np.inf
    allowed = int(np.isfinite(scores).sum())
    k = min(k, allowed)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    part = np.argpartition(-scores, k - 1)[:k]
    order = part[np.argsort(-scores[part], kind="stable")]
    return order, scores[order]
