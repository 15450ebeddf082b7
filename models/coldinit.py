"""Usable SASRec embeddings for items it has (almost) never trained on, from their text.

SASRec scores an item by ``h · e_i``; an item without training interactions keeps a row that
the full-softmax CE has only ever pushed down as a negative, so it is never recommended. The
LLM side knows such an item by what it is: its text-derived scoring vector ``v_i`` (see
:meth:`models.llmrec.LLMRecommender.text_item_vectors`, learned while distilling from SASRec).
A ridge-regularised linear map ``v ↦ e`` is fitted on the items SASRec knows well and applied
to the others, overwriting their rows of SASRec's own embedding table. The served SASRec keeps
exactly its parameters (names and shapes): the map is used once, then dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from models.llmd4rec_config import ColdInitConfig
from models.sasrec import SASRec


def fit_linear_map(
    source: torch.Tensor, target: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares ``target ≈ source @ W + b`` with penalty ``λ · ‖W‖²``, in float64.

    ``λ = ridge · tr(XᵀX) / d`` for the centred source ``X`` (d columns): the penalty is
    relative to the mean eigenvalue, so one ``ridge`` suits sources of any scale.

    Returns
    -------
    W, b
        ``d_source × d_target`` and ``d_target``.
    """
    x = source.double()
    y = target.double()
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    gram = xc.T @ xc
    penalty = ridge * torch.trace(gram) / x.shape[1]
    gram = gram + penalty * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, xc.T @ yc)
    b = mean_y - mean_x @ w
    return w.float(), b.float()


@torch.no_grad()
def init_cold_embeddings(
    crm: SASRec,
    item_vectors: torch.Tensor,
    counts: np.ndarray,
    cfg: ColdInitConfig | None = None,
    has_text: np.ndarray | None = None,
) -> np.ndarray:
    """Overwrite SASRec's rows of rarely trained items with mapped text-derived vectors.

    Parameters
    ----------
    crm
        The SASRec to change in place (no parameter is added or reshaped).
    item_vectors
        ``(n_items + 1) × d`` text-derived item vectors (row 0 = padding, unused).
    counts
        Training occurrences per dense item (``n_items``), e.g.
        :func:`models.coldsplit.training_counts`.
    cfg
        Threshold, ridge penalty, scale and blending.
    has_text
        Which items (``n_items`` booleans) have a text; the others neither enter the fit
        nor get a mapped row (their vectors say nothing). None: every item.

    Returns
    -------
    numpy.ndarray
        Dense indices of the items whose rows were replaced.
    """
    cfg = cfg or ColdInitConfig()
    table = crm.item_emb.weight
    if item_vectors.shape[0] != table.shape[0] or len(counts) != table.shape[0] - 1:
        raise ValueError("item_vectors and counts must cover every item of the SASRec")
    usable = np.ones(len(counts), dtype=bool) if has_text is None else np.asarray(has_text, bool)
    if usable.shape != counts.shape:
        raise ValueError("has_text must have one entry per item")
    known = np.flatnonzero((counts >= cfg.min_count) & usable)
    rare = np.flatnonzero((counts < cfg.min_count) & usable)
    if len(rare) == 0:
        return rare
    if len(known) < 2:
        raise ValueError("too few known items to fit the map")
    vectors = item_vectors.to(table.device).float()
    w, b = fit_linear_map(vectors[known + 1], table[known + 1], cfg.ridge)
    mapped = cfg.scale * (vectors[rare + 1] @ w + b)
    if cfg.blend:
        share = torch.as_tensor(counts[rare] / cfg.min_count, dtype=mapped.dtype)[:, None]
        mapped = share.to(mapped.device) * table[rare + 1] + (1 - share.to(mapped.device)) * mapped
    table[rare + 1] = mapped
    return rare
