"""Cold items get SASRec rows from text-derived vectors; the served SASRec keeps its shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.onnx_export import export_sasrec
from export.session import open_session
from models.coldinit import ColdInitConfig, fit_linear_map, init_cold_embeddings
from models.distill import DistillConfig, Distiller
from models.llmrec import LLMRecConfig, LLMRecommender, instruction_ids, tiny_llama
from models.sasrec import SASRec, SASRecConfig

N_ITEMS, L, H = 40, 8, 16


def _sasrec(seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(
        SASRecConfig(n_items=N_ITEMS, max_len=L, hidden=H, layers=1, heads=2, dropout=0.0)
    ).eval()


def test_fit_linear_map_recovers_an_affine_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    w, b = torch.randn(6, 3, generator=g), torch.randn(3, generator=g)
    got_w, got_b = fit_linear_map(x, x @ w + b, ridge=1e-9)
    torch.testing.assert_close(got_w, w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_b, b, atol=1e-4, rtol=1e-4)
    shrunk, _ = fit_linear_map(x, x @ w + b, ridge=1e4)
    assert shrunk.norm() < 0.5 * w.norm()


def test_rare_rows_are_mapped_and_known_rows_kept():
    crm = _sasrec()
    g = torch.Generator().manual_seed(1)
    truth = torch.randn(N_ITEMS + 1, H, generator=g)
    # text-derived vectors that are an exact affine function of the "true" embeddings
    a = torch.randn(H, 24, generator=g)
    vectors = truth @ a + 0.5
    with torch.no_grad():
        crm.item_emb.weight.copy_(truth)
        crm.item_emb.weight[-5:] = -3.0  # rare items' rows only ever pushed down
    counts = np.full(N_ITEMS, 10)
    counts[-5:] = 0
    before = crm.item_emb.weight.detach().clone()
    replaced = init_cold_embeddings(crm, vectors, counts, ColdInitConfig(ridge=1e-6))
    assert replaced.tolist() == list(range(N_ITEMS - 5, N_ITEMS))
    after = crm.item_emb.weight.detach()
    torch.testing.assert_close(after[:-5], before[:-5])
    torch.testing.assert_close(after[-5:], truth[-5:], atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError):
        init_cold_embeddings(crm, vectors[:-1], counts)


def test_nothing_to_do_when_every_item_is_known():
    crm = _sasrec()
    before = crm.item_emb.weight.detach().clone()
    replaced = init_cold_embeddings(crm, torch.randn(N_ITEMS + 1, 8), np.ones(N_ITEMS, int))
    assert len(replaced) == 0
    torch.testing.assert_close(crm.item_emb.weight, before)


def _distilled_with_cold_init() -> SASRec:
    """SASRec after a distillation round with a text-reading LLM side and cold init."""
    crm = _sasrec()
    llm = LLMRecommender(
        tiny_llama(hidden=32, layers=2, heads=4, vocab=64),
        LLMRecConfig(n_items=N_ITEMS, item_dim=H, lora_r=4, text_tokens=2, text_repr=True),
        crm.item_embeddings(),
        instruction_ids(vocab=64, length=4),
    )
    llm.set_item_texts([f"Film {i}; Drama" for i in range(N_ITEMS)])
    seq = torch.randint(1, N_ITEMS - 4, (8, L + 1))  # the last items never occur
    Distiller(crm, llm, DistillConfig()).distill_round(seq[:, :-1], seq[:, 1:])
    counts = np.bincount((seq - 1).ravel().numpy(), minlength=N_ITEMS)
    init_cold_embeddings(crm, llm.text_item_vectors(), counts)
    return crm.eval()


def test_served_sasrec_has_the_plain_sasrecs_parameters():
    plain = _sasrec()
    served = _distilled_with_cold_init()
    assert [(n, p.shape) for n, p in served.named_parameters()] == [
        (n, p.shape) for n, p in plain.named_parameters()
    ]
    assert {n: t.shape for n, t in served.state_dict().items()} == {
        n: t.shape for n, t in plain.state_dict().items()
    }
    # the loaded state of the served model fits a freshly built plain SASRec
    plain.load_state_dict(served.state_dict())


def test_export_parity_after_distillation_and_cold_init(tmp_path):
    served = _distilled_with_cold_init()
    exported = export_sasrec(served, tmp_path)
    assert exported.max_abs_diff <= 1e-4
    seq = torch.randint(1, N_ITEMS + 1, (5, L))
    with torch.no_grad():
        expected = served(seq).numpy()
    (got,) = open_session(exported.path).run(seq.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-4)
