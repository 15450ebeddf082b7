"""SASRec's padding contract: the leading all-padding columns of a batch change nothing, which
is what lets training cut each batch to its longest row."""

from __future__ import annotations

import torch

from models.sasrec import SASRec, SASRecConfig, sequence_ce_loss
from models.sequences import TrainingSequences

L, N_ITEMS = 12, 25


def _model() -> SASRec:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=L, hidden=16, layers=2, heads=2))
    with torch.no_grad():
        # non-zero norm biases give padded positions non-zero keys and values, so any
        # attention that reached them would show in the scores
        for layer in model.encoder.layers:
            layer.norm1.bias.normal_()
            layer.norm2.bias.normal_()
    return model.eval()


def _batch() -> torch.Tensor:
    seq = torch.randint(1, N_ITEMS + 1, (4, L), generator=torch.Generator().manual_seed(1))
    seq[0, :7] = 0
    seq[1, :9] = 0
    seq[2, :8] = 0
    seq[3, :6] = 0
    return seq


def test_cutting_the_all_padding_columns_changes_no_real_position():
    model, seq = _model(), _batch()
    width = int((seq != 0).sum(1).max())
    with torch.no_grad():
        full, cut = model.hidden_states(seq), model.hidden_states(seq[:, -width:])
        real = seq[:, -width:] != 0
        torch.testing.assert_close(cut[real], full[:, -width:][real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(seq[:, -width:]), model(seq), atol=1e-5, rtol=1e-5)


def test_more_padding_in_front_changes_no_score():
    model, seq = _model(), _batch()[:, -5:]
    wide = torch.cat([torch.zeros(4, L - 5, dtype=seq.dtype), seq], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(seq), model(wide), atol=1e-5, rtol=1e-5)


def test_an_empty_history_scores_finite():
    with torch.no_grad():
        assert torch.isfinite(_model()(torch.zeros(2, L, dtype=torch.long))).all()


def test_the_training_loss_is_the_same_on_a_cut_batch():
    model, seq = _model(), _batch()
    targets = torch.roll(seq, -1, dims=1)
    targets[:, -1] = 3
    targets[seq == 0] = 0
    data = TrainingSequences(seq, targets, torch.arange(4))
    inputs, cut_targets = data.batch(torch.arange(4))
    assert inputs.shape[1] == int((seq != 0).sum(1).max()) < L
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_ce_loss(model, inputs, cut_targets), sequence_ce_loss(model, seq, targets)
        )


def _through_torchs_layers(model: SASRec, seq: torch.Tensor) -> torch.Tensor:
    """Hidden states from the encoder modules' own forward (what SASRec ran before)."""
    x, pad = model.embed(seq)
    blocked = model.attention_blocked(pad).repeat_interleave(model.config.heads, dim=0)
    return model.final_norm(model.encoder(x, mask=blocked))


def test_the_encoder_is_torchs_own_pre_norm_layer():
    """SASRec runs its layers' block itself (for the cheaper dropout); in eval mode it must be
    the function ``nn.TransformerEncoderLayer`` computes with the same weights and mask, so
    checkpoints and the export (which read those modules' parameters) mean the same model."""
    model, seq = _model(), _batch()
    pad = seq == 0
    with torch.no_grad():
        expected = _through_torchs_layers(model, seq)
        got = model.hidden_states(seq)
    torch.testing.assert_close(got[~pad], expected[~pad], atol=1e-5, rtol=1e-5)


def test_the_loss_and_its_gradients_are_torchs_cross_entropy_over_torchs_layers():
    """The training loss (SASRec's block, the chunked item softmax) against the modules'
    own forward and ``cross_entropy`` over every logit, in float64 with dropout off."""
    model, seq = _model(), _batch()
    model.double()
    targets = torch.roll(seq, -1, dims=1)
    targets[:, -1] = 3
    targets[seq == 0] = 0

    def reference() -> torch.Tensor:
        hidden = _through_torchs_layers(model, seq)
        logits = model.logits(hidden[targets != 0])
        logits[:, 0] = float("-inf")
        return torch.nn.functional.cross_entropy(logits, targets[targets != 0])

    params = list(model.parameters())
    want = reference()
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    got = sequence_ce_loss(model, seq, targets)
    got_grads = torch.autograd.grad(got, params, allow_unused=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        if w is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_training_mode_differs_from_eval_only_by_dropout():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=L, hidden=16, heads=2, dropout=0.0))
    seq = _batch()
    with torch.no_grad():
        trained = model.train().hidden_states(seq)
        evaluated = model.eval().hidden_states(seq)
        assert torch.equal(trained, evaluated)
        dropping = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=L, hidden=16, dropout=0.5))
        dropping.load_state_dict(model.state_dict())
        assert not torch.allclose(dropping.train().hidden_states(seq), evaluated)
