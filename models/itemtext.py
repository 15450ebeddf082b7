"""What items are, as text for the LLM side: strings, token tables and cached LM encodings.

Each item of a bundled dataset becomes one short string (``"Toy Story (1995); Animation,
Children's, Comedy"``) in dense-index order. The LLM side uses it two ways
(docs/distillation.md §1):

- *hybrid tokens*: the first ``T`` tokens of an item's text, embedded by the LM's own input
  table, are placed before that item's projected ID soft token (:func:`token_table`);
- a *text representation*: the LM's last hidden states over the item's text, mean-pooled,
  computed once with the adapters off and cached (:func:`encode_item_texts`,
  :class:`TextEncodingCache`), which the scoring head also uses so that an item can be
  scored by what it is even when its ID has never been trained.

Models without a tokenizer (the tiny random Llama of the tests) tokenise with
:func:`byte_tokenize`, so a changed title still changes the ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.datasets import Dataset

TEXT_FORMATS = ("title_year_genres", "title_year", "title")


def item_text(title: str, year: str, genres: Sequence[str], fmt: str = "title_year_genres") -> str:
    """One item's text in one of :data:`TEXT_FORMATS` (empty parts are left out)."""
    if fmt not in TEXT_FORMATS:
        raise ValueError(f"unknown text format {fmt!r}; choose one of {TEXT_FORMATS}")
    year = str(year).removesuffix(".0").strip()
    text = title.strip()
    if fmt != "title" and year:
        text = f"{text} ({year})"
    if fmt == "title_year_genres":
        kept = [g for g in genres if g and g != "unknown"]
        if kept:
            text = f"{text}; {', '.join(kept)}"
    return text


def item_texts(
    dataset: Dataset, item_ids: Sequence[str], fmt: str = "title_year_genres"
) -> list[str]:
    """Text of every item in ``item_ids`` order (dense index order: ``dataset.index.item_ids``).

    An item missing from the metadata file gets its external id as its text, so no item is
    left without a string."""
    meta = dataset.items.set_index("item_id")
    out = []
    for item in item_ids:
        if item in meta.index:
            row = meta.loc[item]
            genres = row["genres"] if isinstance(row["genres"], list) else []
            out.append(item_text(str(row["title"]), str(row["year"]), genres, fmt))
        else:
            out.append(str(item))
    return out


def byte_tokenize(text: str, vocab: int) -> list[int]:
    """Deterministic ids for tokenizer-less models: UTF-8 bytes folded into ``1..vocab-1``."""
    return [1 + b % (vocab - 1) for b in text.encode("utf-8")]


def token_table(
    texts: Sequence[str], max_tokens: int, tokenizer=None, vocab: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of every item's text, with a padding row 0 in front.

    Parameters
    ----------
    texts
        One string per item, dense-index order.
    max_tokens
        Tokens kept per item (the first ones: the title comes first).
    tokenizer
        A Hugging Face tokenizer, or ``None`` for :func:`byte_tokenize`.
    vocab
        Vocabulary size for :func:`byte_tokenize`.

    Returns
    -------
    ids, mask
        ``(n_items + 1) × max_tokens`` long tensors; row ``i + 1`` is item ``i`` (the
        sequences' shifted ids), row 0 and padding positions are masked out.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    ids = torch.zeros(len(texts) + 1, max_tokens, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, text in enumerate(texts, start=1):
        if tokenizer is None:
            toks = byte_tokenize(text, vocab)
        else:
            toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        toks = toks[:max_tokens]
        ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        mask[row, : len(toks)] = 1
    return ids, mask


@torch.no_grad()
def encode_item_texts(
    backbone: nn.Module,
    embed: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    batch: int = 64,
) -> torch.Tensor:
    """Mean-pooled last hidden states of the LM over each item's text tokens.

    Row 0 (padding) and any item without tokens get a zero vector. The caller switches
    adapters off so the encodings are the pretrained model's and can be cached."""
    device = ids.device
    out = torch.zeros(ids.shape[0], embed.embedding_dim, device=device)
    rows = torch.nonzero(mask.sum(1) > 0).flatten()
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        # right padding: real tokens first, so they never attend to padding
        hidden = backbone(
            inputs_embeds=embed(ids[chunk]), attention_mask=mask[chunk]
        ).last_hidden_state
        m = mask[chunk].unsqueeze(-1).to(hidden.dtype)
        out[chunk] = (hidden * m).sum(1) / m.sum(1)
    return out


def encoding_key(
    texts: Sequence[str], max_tokens: int, lm_config: dict, weights: torch.Tensor
) -> str:
    """Hash of the texts, the token budget, the LM's config and a fingerprint of its weights
    (the input table), so a cached encoding is reused only for the model that made it."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(texts), ensure_ascii=False).encode())
    digest.update(str(max_tokens).encode())
    digest.update(json.dumps(lm_config, sort_keys=True, default=str).encode())
    digest.update(weights.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TextEncodingCache:
    """Per-item text encodings on disk (``<folder>/<key>.safetensors``), keyed by
    :func:`encoding_key`; writes go through a temporary file and a rename."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        return load_file(str(path))["encodings"] if path.exists() else None

    def put(self, key: str, encodings: torch.Tensor) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp")
        save_file({"encodings": encodings.detach().cpu().contiguous()}, str(tmp))
        tmp.replace(path)
        return path
