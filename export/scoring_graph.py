"""The serving form of a trained SASRec: the same function as ``SASRec.forward`` (scores of
every item after the last position), written for a small, static ONNX graph.

Traced as-is, ``nn.TransformerEncoderLayer`` exports ~400 nodes, half of them shape
arithmetic (Shape → Gather → Unsqueeze → Concat → Reshape) for the dynamic batch axis; at
batch 1 onnxruntime spends more time dispatching those than multiplying. Here every shape
but the batch is a Python constant, so reshapes carry literal shapes, and the last layer
computes only the last position (its keys and values still come from every position), which
is all the scores need. :func:`export.onnx_export.export_sasrec` checks the exported graph
against the original module, so the two cannot drift apart silently.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.sasrec import SASRec


class _Block(nn.Module):
    """One pre-norm encoder layer's weights, shared (not copied) with the trained model."""

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        attn = layer.self_attn
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None:
            raise ValueError("expected a packed q/k/v projection with a bias")
        if not layer.norm_first:
            raise ValueError("expected a pre-norm (norm_first) encoder layer")
        self.norm1, self.norm2 = layer.norm1, layer.norm2
        self.in_proj_weight, self.in_proj_bias = attn.in_proj_weight, attn.in_proj_bias
        self.out_proj = attn.out_proj
        self.linear1, self.linear2 = layer.linear1, layer.linear2
        self.activation = layer.activation
        self.heads = attn.num_heads


class SASRecScorer(nn.Module):
    """B × L item ids (0 = padding, left-padded) → B × (n_items + 1) scores, eval mode only."""

    def __init__(self, model: SASRec) -> None:
        super().__init__()
        cfg = model.config
        self.length, self.hidden, self.heads = cfg.max_len, cfg.hidden, cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.item_emb, self.pos_emb = model.item_emb, model.pos_emb
        self.final_norm = model.final_norm
        self.blocks = nn.ModuleList(_Block(layer) for layer in model.encoder.layers)
        # additive causal mask: 0 where a position may attend, -inf above the diagonal
        causal = torch.full((cfg.max_len, cfg.max_len), float("-inf")).triu(1)
        self.register_buffer("causal", causal, persistent=False)
        # -1e9 rather than -inf, applied by multiplication: exp underflows to exactly 0 all
        # the same, and the graph needs no shape-dependent Where/Expand for the batch axis
        padded_key = (1.0 - torch.eye(cfg.max_len)) * -1e9
        self.register_buffer("padded_key", padded_key, persistent=False)
        self.register_buffer("positions", torch.arange(cfg.max_len), persistent=False)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        x = self.item_emb(seq) * self.hidden**0.5 + self.pos_emb(self.positions)[None]
        pad = seq == 0
        x = x.masked_fill(pad[..., None], 0.0)
        last = len(self.blocks) - 1
        for k, block in enumerate(self.blocks):
            x = self._block(block, x, pad, only_last=k == last)
        return self.final_norm(x[:, -1, :]) @ self.item_emb.weight.T

    def _block(
        self, block: _Block, x: torch.Tensor, pad: torch.Tensor, only_last: bool
    ) -> torch.Tensor:
        h = block.norm1(x)
        q_w, kv_w = block.in_proj_weight.split([self.hidden, 2 * self.hidden])
        q_b, kv_b = block.in_proj_bias.split([self.hidden, 2 * self.hidden])
        k, v = F.linear(h, kv_w, kv_b).split(self.hidden, dim=-1)
        rows = 1 if only_last else self.length
        q = F.linear(h[:, -rows:, :], q_w, q_b)
        attn = self._attend(q, k, v, self._mask(pad, rows), rows)
        x = (x[:, -1:, :] if only_last else x) + block.out_proj(attn)
        return x + block.linear2(block.activation(block.linear1(block.norm2(x))))

    def _mask(self, pad: torch.Tensor, rows: int) -> torch.Tensor:
        """B × 1 × rows × L additive mask of ``SASRec``'s: no later positions, no padded keys
        (a padded position still sees itself)."""
        blocked = pad.to(torch.float32)[:, None, None, :] * self.padded_key[-rows:]
        return blocked + self.causal[-rows:]

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, rows: int
    ) -> torch.Tensor:
        """Multi-head attention of the last ``rows`` positions over all positions."""
        heads, d = self.heads, self.head_dim
        q = q.reshape(-1, rows, heads, d).transpose(1, 2)
        k = k.reshape(-1, self.length, heads, d).transpose(1, 2)
        v = v.reshape(-1, self.length, heads, d).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(d)) + mask
        out = torch.softmax(logits, dim=-1) @ v
        return out.transpose(1, 2).reshape(-1, rows, self.hidden)
