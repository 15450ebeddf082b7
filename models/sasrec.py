"""SASRec (Kang & McAuley, 2018) trained with full-softmax cross-entropy.

The forward pass is export-friendly: a batch of left-padded item-id sequences in, scores over
all items (column 0 is padding) for the last position out. ``hidden_states`` exposes every
position for training.

Padding is invisible to real positions (their attention never reaches a padded key) and
positions are counted back from the newest item, so a batch with its all-padding leading
columns cut off gives the same scores as the full-width batch: training trims batches of
short sequences to their real width (docs/models.md, "SASRec").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SASRecConfig:
    n_items: int
    max_len: int = 50
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class SASRec(nn.Module):
    """Causal self-attention over the last ``max_len`` items; scores = h · Eᵀ (tied)."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items + 1, config.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=config.hidden,
            nhead=config.heads,
            dim_feedforward=config.hidden,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(config.hidden)
        causal = torch.triu(torch.ones(config.max_len, config.max_len, dtype=torch.bool), 1)
        self.register_buffer("causal_mask", causal, persistent=False)
        eye = torch.eye(config.max_len, dtype=torch.bool)
        self.register_buffer("diagonal", eye, persistent=False)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def hidden_states(self, seq: torch.Tensor) -> torch.Tensor:
        """B × L item ids (0 = padding, L ≤ max_len) → B × L × H."""
        length, max_len = seq.shape[1], self.config.max_len
        positions = torch.arange(max_len - length, max_len, device=seq.device)
        x = self.item_emb(seq) * self.config.hidden**0.5 + self.pos_emb(positions)[None]
        x = self.dropout(x)
        pad = seq == 0
        x = x.masked_fill(pad[..., None], 0.0)
        x = self.encoder(x, mask=self._attention_mask(pad))
        return self.final_norm(x)

    def _attention_mask(self, pad: torch.Tensor) -> torch.Tensor:
        """(B·heads) × L × L, True where attention is blocked: later positions and padded keys.

        A padded position still sees itself, so its (unused) row of attention is never empty
        and cannot turn into NaN that would reach real positions through the values."""
        length = pad.shape[1]
        blocked = self.causal_mask[:length, :length] | (
            pad[:, None, :] & ~self.diagonal[:length, :length]
        )
        return blocked.repeat_interleave(self.config.heads, dim=0)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_emb.weight.T

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores of every item for the next position: B × (n_items + 1)."""
        return self.logits(self.hidden_states(seq)[:, -1, :])

    def item_embeddings(self) -> torch.Tensor:
        """Current item embedding table (row 0 = padding), detached."""
        return self.item_emb.weight.detach()


def sequence_ce_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Full-softmax CE over all items at every non-padded position.

    Scores are computed only where there is a target: on long-tailed data (ML-1M at length
    200) about half the positions are padding, and the item scores dominate the cost."""
    hidden = model.hidden_states(inputs)
    keep = targets != 0
    logits = model.logits(hidden[keep])
    logits[:, 0] = float("-inf")
    return nn.functional.cross_entropy(logits, targets[keep])
