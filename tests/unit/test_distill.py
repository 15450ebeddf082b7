"""LLMD4Rec mechanics on a tiny random Llama: weights, KL, parameters, a round that learns."""

from __future__ import annotations

import pytest
import torch

from models.distill import (
    DistillConfig,
    Distiller,
    crm_up_loss,
    kl_teacher_student,
    llm_down_loss,
    sample_weight,
    save_checkpoint,
    target_ranks,
)
from models.llmrec import LLMRecConfig, LLMRecommender, instruction_ids, tiny_llama
from models.sasrec import SASRec, SASRecConfig

N_ITEMS, L = 30, 8


@pytest.mark.parametrize(
    "r_student,r_teacher,expected",
    [
        (3, 3, 1.0),  # tie
        (0, 0, 1.0),  # tie at the top
        (2, 1, 2.0),  # teacher better: 1 + 1/1
        (3, 2, 1.5),  # 1 + 1/2
        (1, 0, 2.0),  # teacher ranks it first: 1 + 1/max(0,1)
        (9, 1, 2.0),  # 1 + 8/1, capped at 2
        (2, 3, 0.5),  # student better: 1 - 1/2
        (1, 3, 0.0),  # 1 - 2/1, clipped at 0
        (0, 1, 0.0),  # student ranks it first: 1 - 1/max(0,1)
        (4, 5, 0.75),  # 1 - 1/4
    ],
)
def test_sample_weight_hand_computed(r_student, r_teacher, expected):
    w = sample_weight(torch.tensor([r_student]), torch.tensor([r_teacher]))
    assert w.item() == pytest.approx(expected)


def test_up_and_down_weights_swap_roles():
    r_c, r_l = torch.tensor([5, 1, 2]), torch.tensor([1, 5, 2])
    w_up, w_down = sample_weight(r_c, r_l), sample_weight(r_l, r_c)
    assert w_up.tolist() == [2.0, 0.0, 1.0]
    assert w_down.tolist() == [0.0, 2.0, 1.0]


def test_target_ranks_ignore_padding():
    logits = torch.tensor([[99.0, 0.1, 0.5, 0.3], [99.0, 0.9, 0.1, 0.2]])
    assert target_ranks(logits, torch.tensor([3, 1])).tolist() == [1, 0]


def test_kl_direction_and_temperature():
    torch.manual_seed(0)
    teacher, student = torch.randn(4, 11), torch.randn(4, 11, requires_grad=True)
    for temp in (1.0, 3.0):
        got = kl_teacher_student(teacher, student, temp)
        pt = torch.softmax(teacher[:, 1:] / temp, -1)
        ps = torch.softmax(student[:, 1:] / temp, -1)
        manual = (pt * (pt.log() - ps.log())).sum(-1) * temp**2
        torch.testing.assert_close(got, manual)
    forward = kl_teacher_student(teacher, student, 2.0)
    backward = kl_teacher_student(student.detach(), teacher, 2.0)
    assert not torch.allclose(forward, backward), "KL must not be symmetric here"
    forward.sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    same = kl_teacher_student(teacher, teacher.clone(), 2.0)
    assert torch.allclose(same, torch.zeros(4), atol=1e-6)


def _models(seed: int = 0):
    torch.manual_seed(seed)
    crm = SASRec(
        SASRecConfig(n_items=N_ITEMS, max_len=L, hidden=16, layers=1, heads=2, dropout=0.0)
    )
    llm = LLMRecommender(
        tiny_llama(hidden=32, layers=2, heads=4, vocab=64, seed=seed),
        LLMRecConfig(n_items=N_ITEMS, item_dim=16, lora_r=4, lora_dropout=0.0),
        crm.item_embeddings(),
        instruction_ids(vocab=64, length=4),
    )
    return crm, llm


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (12, L + 1), generator=g)
    seq[:3, :4] = 0  # some left padding
    return seq[:, :-1], seq[:, 1:]


def test_llm_side_trains_only_lora_projection_and_head():
    _, llm = _models()
    trainable = [n for n, p in llm.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n) or n.startswith(("project", "head")) for n in trainable)
    assert not llm.item_table.requires_grad


def test_injection_changes_the_llm_side_inputs():
    crm, llm = _models()
    inputs, _ = _batch()
    llm.eval()
    before = llm(inputs)
    with torch.no_grad():
        crm.item_emb.weight.mul_(3.0)
    llm.inject_item_embeddings(crm.item_embeddings())
    assert not torch.allclose(before, llm(inputs))
    with pytest.raises(ValueError):
        llm.inject_item_embeddings(torch.zeros(3, 3))


def test_distillation_adds_no_trainable_parameter_to_sasrec():
    crm, llm = _models()
    before = {n: p.shape for n, p in crm.named_parameters()}
    distiller = Distiller(crm, llm, DistillConfig())
    inputs, targets = _batch()
    distiller.distill_round(inputs, targets)
    assert {n: p.shape for n, p in crm.named_parameters()} == before
    assert sum(p.numel() for p in distiller.crm_opt.param_groups[0]["params"]) == sum(
        p.numel() for p in crm.parameters()
    )


def test_repeated_rounds_lower_both_losses():
    crm, llm = _models()
    cfg = DistillConfig(crm_lr=5e-3, llm_lr=5e-3)
    distiller = Distiller(crm, llm, cfg)
    inputs, targets = _batch()

    def losses():
        crm.eval()
        llm.eval()
        with torch.no_grad():
            up, _ = crm_up_loss(crm, llm, inputs, targets, cfg)
            down, _ = llm_down_loss(crm, llm, inputs, targets, cfg)
        return up.item(), down.item()

    up0, down0 = losses()
    for _ in range(30):
        distiller.distill_round(inputs, targets)
    up1, down1 = losses()
    assert up1 < up0 and down1 < down0, (up0, up1, down0, down1)


def test_ablations_switch_weights_and_injection_off():
    crm, llm = _models()
    inputs, targets = _batch()
    cfg = DistillConfig(sample_weights=False, inject=False, one_way=True)
    distiller = Distiller(crm, llm, cfg)
    table = llm.item_table.clone()
    out = distiller.distill_round(inputs, targets)
    assert out["up"]["w"] == 1.0 and out["down"] == {}
    torch.testing.assert_close(llm.item_table, table)  # no injection


def test_checkpoint_has_weights_and_metadata(tmp_path):
    import json

    from safetensors.torch import load_file

    crm, llm = _models()
    path = save_checkpoint(
        tmp_path / "ckpt",
        crm,
        llm,
        {"trained_through": {"interactions:0": 42}, "metrics": {"ndcg@10": 0.1}},
    )
    meta = json.loads((path / "meta.json").read_text())
    assert meta["trained_through"] == {"interactions:0": 42}
    assert meta["sasrec_config"]["n_items"] == N_ITEMS
    restored = SASRec(SASRecConfig(**meta["sasrec_config"]))
    restored.load_state_dict(load_file(str(path / "sasrec.safetensors")))
    inputs, _ = _batch()
    crm.eval()
    restored.eval()
    torch.testing.assert_close(restored(inputs), crm(inputs))
    assert set(load_file(str(path / "llm_trainable.safetensors"))) == set(llm.trainable_state())


def test_llm_forward_is_the_last_position_of_forward_all():
    _, llm = _models()
    llm.eval()
    inputs, _ = _batch()
    torch.testing.assert_close(llm(inputs), llm.forward_all(inputs)[:, -1, :])
