"""SASRec (Kang & McAuley, 2018) trained with full-softmax cross-entropy.

The forward pass is export-friendly: a batch of left-padded item-id sequences in, scores over
all items (column 0 is padding) for the last position out. ``hidden_states`` exposes every
position for training.

Padding is invisible to real positions (their attention never reaches a padded key) and
positions are counted back from the newest item, so a batch with its all-padding leading
columns cut off gives the same scores as the full-width batch: training trims batches of
short sequences to their real width (docs/models.md, "SASRec").

The encoder layers are ``nn.TransformerEncoderLayer`` modules for their parameters (their names
are what checkpoints store and what ``export/scoring_graph.py`` reads), but SASRec runs the
same pre-norm block itself: in training, torch's attention with a boolean mask and dropout
(``scaled_dot_product_attention``'s math path) made a CPU step about a third slower
(``python -m benchmarks.sasrec_step``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from models.item_softmax import item_softmax_ce


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
        x, pad = self.embed(seq)
        length = seq.shape[1]
        mask = torch.zeros(pad.shape[0], 1, length, length, dtype=x.dtype, device=x.device)
        mask.masked_fill_(self.attention_blocked(pad)[:, None], float("-inf"))
        for layer in self.encoder.layers:
            x = self._block(layer, x, mask)
        return self.final_norm(x)

    def embed(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's input (item and position embeddings, dropout, zeros at padding) and
        the B × L padding mask."""
        length, max_len = seq.shape[1], self.config.max_len
        positions = torch.arange(max_len - length, max_len, device=seq.device)
        x = self.item_emb(seq) * self.config.hidden**0.5 + self.pos_emb(positions)[None]
        x = self._dropout(x)
        pad = seq == 0
        return x.masked_fill(pad[..., None], 0.0), pad

    def attention_blocked(self, pad: torch.Tensor) -> torch.Tensor:
        """B × L × L, True where attention is blocked: later positions and padded keys.

        A padded position still sees itself, so its (unused) row of attention is never empty
        and cannot turn into NaN that would reach real positions through the values."""
        length = pad.shape[1]
        return self.causal_mask[:length, :length] | (
            pad[:, None, :] & ~self.diagonal[:length, :length]
        )

    def _block(self, layer: nn.TransformerEncoderLayer, x: torch.Tensor, mask: torch.Tensor):
        """``layer``'s pre-norm forward (norm_first, GELU) with this model's dropout."""
        batch, length, hidden = x.shape
        heads = self.config.heads
        attn = layer.self_attn
        qkv = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(batch, length, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) * (hidden // heads) ** -0.5 + mask, -1)
        mixed = (self._dropout(weights) @ v).transpose(1, 2).reshape(batch, length, hidden)
        x = x + self._dropout(attn.out_proj(mixed))
        inner = self._dropout(F.gelu(layer.linear1(layer.norm2(x))))
        return x + self._dropout(layer.linear2(inner))

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.config.dropout, self.training)

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
    200) about half the positions are padding, and the item scores dominate the cost. They are
    made a chunk of rows at a time (``models/item_softmax.py``); padding is never a class."""
    hidden = model.hidden_states(inputs)
    keep = targets != 0
    return item_softmax_ce(hidden[keep], model.item_emb.weight, targets[keep])
