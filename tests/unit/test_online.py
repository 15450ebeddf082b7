"""LLMD4Rec on a stream (models/online.py): rounds, validation, checkpoints, retraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.online import OnlineConfig, OnlineLLMD4Rec, split_for_training


def config(**overrides) -> OnlineConfig:
    base = dict(
        max_items=30,
        max_len=8,
        hidden=16,
        batch_size=8,
        replay_users=16,
        steps_per_round=3,
        pretrain_steps=5,
        valid_users=20,
        seed=3,
    )
    return OnlineConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def sequences() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"u{k}": rng.integers(0, 30, size=rng.integers(2, 14)) for k in range(40)}


def test_split_holds_out_the_newest_item(sequences):
    users, train, valid_users, valid = split_for_training({"a": np.array([4, 5, 6])}, 4)
    assert users == ["a"] and valid_users == ["a"]
    assert train.inputs.tolist() == [[0, 0, 0, 5]] and train.targets.tolist() == [[0, 0, 0, 6]]
    assert valid.targets.tolist() == [6] and valid.histories.tolist() == [[0, 0, 5, 6]]
    users, train, _, valid = split_for_training({"b": np.array([1, 2])}, 4)
    assert users == ["b"] and valid is None  # too short to validate on, still trains


def test_first_round_warms_up_then_rounds_distill(sequences):
    model = OnlineLLMD4Rec(config())
    first = model.train_round(sequences)
    assert first["kind"] == "warm-up" and model.warm
    second = model.train_round(sequences, fresh_users=["u1", "u2"])
    assert second["kind"] == "round" and second["fresh"] == 2 and second["replay"] == 16
    metrics = model.validate(sequences)
    assert set(metrics) >= {"hr@10", "ndcg@10"} and 0.0 <= metrics["ndcg@10"] <= 1.0


def test_validation_users_are_a_stable_sample(sequences):
    model = OnlineLLMD4Rec(config(valid_users=5))
    first = list(model.validation_users(sequences))
    assert len(first) == 5 and first == list(model.validation_users(dict(sequences)))


def test_checkpoint_round_trip_scores_identically(sequences, tmp_path):
    model = OnlineLLMD4Rec(config())
    model.train_round(sequences)
    model.save(tmp_path / "ckpt", {"trained_through": {"interactions:0": 7}})
    other = OnlineLLMD4Rec(config())
    meta = other.load(tmp_path / "ckpt")
    assert meta["trained_through"] == {"interactions:0": 7} and other.warm
    seq = torch.randint(1, 31, (3, 8))
    with torch.no_grad():
        model.crm.eval(), other.crm.eval(), model.llm.eval(), other.llm.eval()
        assert torch.equal(model.crm(seq), other.crm(seq))
        assert torch.equal(model.llm(seq), other.llm(seq))


def test_retrain_from_scratch_equals_never_having_seen_the_user(sequences):
    """Exact neural forgetting: reset + retrain on the retained data gives bit-identical
    weights to a model that never saw the forgotten user."""
    retained = {u: s for u, s in sequences.items() if u != "u7"}
    never = OnlineLLMD4Rec(config())
    never.retrain(retained, rounds=1)
    saw = OnlineLLMD4Rec(config())
    saw.retrain(sequences, rounds=1)
    saw.reset()
    saw.retrain(retained, rounds=1)
    saw_crm = saw.crm.state_dict()
    for name, a in never.crm.state_dict().items():
        b = saw_crm[name]
        assert torch.equal(a, b), name
    for name, t in never.llm.trainable_state().items():
        assert torch.equal(t, saw.llm.trainable_state()[name]), name


def test_distillation_adds_no_parameter_to_sasrec(sequences):
    model = OnlineLLMD4Rec(config())
    before = {n: p.shape for n, p in model.crm.named_parameters()}
    model.train_round(sequences)
    model.train_round(sequences)
    assert {n: p.shape for n, p in model.crm.named_parameters()} == before


def test_a_round_covers_its_buffer_and_samples_fresh_users_past_it(sequences, monkeypatch):
    model = OnlineLLMD4Rec(config(replay_users=16, steps_per_round=2, batch_size=8))
    model.train_round(sequences)  # warm-up
    seen: list[torch.Tensor] = []
    real = model.distiller.distill_round

    def recording(inputs, targets):
        seen.append(inputs.clone())
        return real(inputs, targets)

    monkeypatch.setattr(model.distiller.distill_round.__self__, "distill_round", recording)
    users, train, _, _ = split_for_training(sequences, model.cfg.max_len)
    fresh = sorted(sequences)  # all 40 are new: more than the buffer's 16
    info = model.train_round(sequences, fresh_users=fresh)
    assert info["replay"] == 16 and info["fresh"] == 16
    rows = {tuple(r.tolist()) for batch in seen for r in batch}
    assert len(rows) == 16, "two steps of 8 visit 16 distinct users, none twice"
    index = {tuple(train.inputs[k].tolist()): users[k] for k in range(len(users))}
    trained = sorted(index[r] for r in rows)
    assert trained != sorted(users)[:16], "not the head of the id order every round"
