"""Item text reaches the LLM side: strings, token tables, hybrid tokens, cached encodings."""

from __future__ import annotations

import pytest
import torch

import models.llmrec as llmrec
from models.datasets import load
from models.distill import DistillConfig, Distiller
from models.itemtext import (
    TextEncodingCache,
    byte_tokenize,
    item_text,
    item_texts,
    token_table,
)
from models.llmrec import LLMRecConfig, LLMRecommender, instruction_ids, tiny_llama
from models.sasrec import SASRec, SASRecConfig

N_ITEMS, L, VOCAB = 30, 8, 64
TEXTS = [f"Movie number {i} ({1990 + i % 10}); Comedy, Drama" for i in range(N_ITEMS)]


def _llm(
    text_tokens: int = 0, text_repr: bool = False, seed: int = 0, id_dropout: float = 0.0
) -> LLMRecommender:
    torch.manual_seed(seed)
    rec = LLMRecommender(
        tiny_llama(hidden=32, layers=2, heads=4, vocab=VOCAB, seed=seed),
        LLMRecConfig(
            n_items=N_ITEMS,
            item_dim=16,
            lora_r=4,
            lora_dropout=0.0,
            text_tokens=text_tokens,
            text_repr=text_repr,
            text_encode_tokens=16,
            id_dropout=id_dropout,
        ),
        torch.randn(N_ITEMS + 1, 16),
        instruction_ids(vocab=VOCAB, length=4),
    )
    return rec.eval()


def _seq() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(1, N_ITEMS + 1, (6, L), generator=g)
    seq[:2, :3] = 0
    return seq


def _retitled(item: int, title: str = "Zzyzx Road") -> list[str]:
    """TEXTS with one item's (dense index ``item``) text replaced."""
    texts = list(TEXTS)
    texts[item] = f"{title} (2006); Thriller"
    return texts


def test_item_text_formats():
    genres = ["Animation", "Children's", "Comedy"]
    assert (
        item_text("Toy Story", "1995", genres) == "Toy Story (1995); Animation, Children's, Comedy"
    )
    assert item_text("Toy Story", "1995.0", genres, "title_year") == "Toy Story (1995)"
    assert item_text("Toy Story", "1995", genres, "title") == "Toy Story"
    assert item_text("X", "", ["unknown"]) == "X"
    with pytest.raises(ValueError):
        item_text("X", "1", [], "nope")


def test_bundled_items_all_have_text_in_dense_order():
    data = load("ml-100k")
    ids = data.index.item_ids
    texts = item_texts(data, ids)
    assert len(texts) == data.n_items
    toy = list(ids).index("1")
    assert texts[toy] == "Toy Story (1995); Animation, Children's, Comedy"
    assert all(texts)


def test_token_table_pads_row_zero_and_truncates():
    ids, mask = token_table(["ab", "abcdef"], max_tokens=4, vocab=VOCAB)
    assert ids.shape == mask.shape == (3, 4)
    assert mask[0].sum() == 0 and mask[1].tolist() == [1, 1, 0, 0] and mask[2].sum() == 4
    assert ids[2].tolist() == byte_tokenize("abcd", VOCAB)
    assert all(0 < t < VOCAB for t in byte_tokenize("Ünïcode", VOCAB))


@pytest.mark.parametrize("text_tokens,text_repr", [(4, False), (0, True), (4, True)])
def test_a_history_items_title_reaches_the_lm(text_tokens, text_repr):
    rec = _llm(text_tokens, text_repr)
    seq = _seq()
    rec.set_item_texts(TEXTS)
    with torch.no_grad():
        states, scores = rec.item_states(seq), rec(seq)
        rec.set_item_texts(_retitled(int(seq[0, -1]) - 1))
        states_after, scores_after = rec.item_states(seq), rec(seq)
    # the retitled item is the newest one in user 0's history: the LM's hidden state there
    # (not only the retitled candidate's score) must move
    assert not torch.allclose(states[0, -1], states_after[0, -1])
    assert not torch.allclose(scores[0], scores_after[0])


def test_without_text_a_title_change_is_invisible():
    # the control for the test above: with text switched off, titles cannot matter
    rec = _llm(0, False)
    seq = _seq()
    rec.set_item_texts(TEXTS)
    with torch.no_grad():
        before, states = rec(seq), rec.item_states(seq)
        rec.set_item_texts(_retitled(int(seq[0, -1]) - 1))
        torch.testing.assert_close(before, rec(seq))
        torch.testing.assert_close(states, rec.item_states(seq))


def test_hybrid_tokens_keep_causality_per_item():
    rec = _llm(text_tokens=4)
    seq = _seq()
    newest = int(seq[0, -1]) - 1
    if newest in (seq[0, :-1] - 1).tolist():
        seq[0, :-1] = torch.where(seq[0, :-1] == newest + 1, 0, seq[0, :-1])
    rec.set_item_texts(TEXTS)
    with torch.no_grad():
        before = rec.forward_all(seq)
        rec.set_item_texts(_retitled(newest))
        after = rec.forward_all(seq)
    # earlier positions never see the newest item's title; the last one does
    torch.testing.assert_close(before[0, :-1], after[0, :-1])
    assert not torch.allclose(before[0, -1], after[0, -1])
    torch.testing.assert_close(rec(seq), after[:, -1, :])


def test_text_representation_scores_an_item_by_its_text():
    rec = _llm(text_repr=True)
    seq = torch.full((2, L), 1)
    seq[1] = 2
    rec.set_item_texts(TEXTS)
    target = N_ITEMS - 1  # never in the histories
    with torch.no_grad():
        before = rec(seq)
        texts = _retitled(target, "A completely different film about space")
        rec.set_item_texts(texts)
        after = rec(seq)
    change = (after - before).abs()
    assert change[:, target + 1].min() > 0, "the retitled candidate's score must move"
    assert rec.text_item_vectors().shape == (N_ITEMS + 1, 32)
    with pytest.raises(ValueError):
        _llm().text_item_vectors()


def test_encodings_are_cached_per_texts_and_model(tmp_path, monkeypatch):
    cache = TextEncodingCache(tmp_path)
    rec = _llm(text_repr=True)
    rec.set_item_texts(TEXTS, cache=cache)
    table = rec.text_table.clone()
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again despite a cached encoding")

    monkeypatch.setattr(llmrec, "encode_item_texts", refuse)
    again = _llm(text_repr=True)
    again.set_item_texts(TEXTS, cache=cache)
    torch.testing.assert_close(again.text_table, table)
    monkeypatch.undo()
    _llm(text_repr=True).set_item_texts(_retitled(0), cache=cache)  # other texts
    _llm(text_repr=True, seed=1).set_item_texts(TEXTS, cache=cache)  # other model
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_text_tables_travel_in_the_trainable_state():
    rec = _llm(text_tokens=4, text_repr=True)
    rec.set_item_texts(TEXTS)
    state = rec.trainable_state()
    assert {"text_ids", "text_mask", "text_table"} <= set(state)
    fresh = _llm(text_tokens=4, text_repr=True)  # same seed, no texts yet
    seq = _seq()
    with torch.no_grad():
        assert not torch.allclose(fresh(seq), rec(seq))
        fresh.load_state_dict(state, strict=False)
        torch.testing.assert_close(fresh(seq), rec(seq))


def test_distillation_trains_the_text_parts():
    torch.manual_seed(0)
    crm = SASRec(
        SASRecConfig(n_items=N_ITEMS, max_len=L, hidden=16, layers=1, heads=2, dropout=0.0)
    )
    rec = _llm(text_tokens=2, text_repr=True)
    rec.inject_item_embeddings(crm.item_embeddings())
    rec.set_item_texts(TEXTS)
    before = {n: p.clone() for n, p in rec.named_parameters() if n.startswith("text_")}
    seq = torch.randint(1, N_ITEMS + 1, (8, L + 1))
    Distiller(crm, rec, DistillConfig()).distill_round(seq[:, :-1], seq[:, 1:])
    for name, param in rec.named_parameters():
        if name in before:
            assert not torch.equal(param, before[name]), name


def test_items_without_training_data_are_scored_by_text_alone():
    rec = _llm(text_repr=True)
    rec.set_item_texts(TEXTS)
    seq = _seq()
    known = torch.ones(N_ITEMS, dtype=torch.bool)
    known[-3:] = False
    with torch.no_grad():
        before = rec(seq)
        rec.set_known_items(known)
        masked = rec(seq)
        rec.head.weight[-3:] += 5.0  # an unknown item's ID row no longer matters
        rec.head.bias[-3:] -= 50.0
        torch.testing.assert_close(rec(seq), masked)
        torch.testing.assert_close(masked[:, :-3], before[:, :-3])
        text_only = rec.text_query(rec.item_states(seq)[:, -1]) @ rec.text_table[-3:].T
        torch.testing.assert_close(masked[:, -3:], text_only)
    assert "id_known" in rec.trainable_state()
    with pytest.raises(ValueError):
        rec.set_known_items(known[:-1])
    with pytest.raises(ValueError):
        _llm().set_known_items(known)


def _llm_with_id_dropout(share: float) -> LLMRecommender:
    rec = _llm(text_repr=True, id_dropout=share)
    rec.set_item_texts(TEXTS)
    return rec


def test_id_dropout_drops_a_fresh_share_of_known_items_while_training_only():
    rec = _llm_with_id_dropout(0.5)
    known = torch.ones(N_ITEMS, dtype=torch.bool)
    known[-3:] = False
    rec.set_known_items(known)
    assert torch.equal(rec.id_part(), rec.id_known)  # evaluation: every known item
    rec.train()
    torch.manual_seed(1)
    first, second = rec.id_part(), rec.id_part()
    assert first[0] == 1  # padding keeps its (unused) ID part
    assert torch.all(first[-3:] == 0)  # unknown items never get one
    dropped = (first[1:-3] == 0).sum().item()
    assert 0 < dropped < N_ITEMS - 3
    assert not torch.equal(first, second)  # drawn again for every forward


def test_with_id_dropout_a_dropped_item_is_text_alone_in_the_history_and_the_scores():
    rec = _llm_with_id_dropout(0.3)
    seq = _seq()
    known = torch.ones(N_ITEMS, dtype=torch.bool)
    known[-3:] = False
    rec.set_known_items(known)
    unknown_in_history = (seq > N_ITEMS - 3).any()
    assert unknown_in_history
    with torch.no_grad():
        before = rec(seq)
        rec.item_table[-3:] += 3.0  # an unknown item's ID row enters nowhere
        rec.head.weight[-3:] -= 3.0
        torch.testing.assert_close(rec(seq), before)
        # without ID dropout, the unknown items' ID rows still enter the history
        plain = _llm(text_repr=True)
        plain.set_item_texts(TEXTS)
        plain.set_known_items(known)
        first = plain(seq)
        plain.item_table[-3:] += 3.0
        assert not torch.allclose(plain(seq), first)
    # while training, a known item the draw dropped is text alone in the history too
    rec.train()
    with_id = rec.id_known.clone()
    dropped = int(seq[0, -1])  # a known item of the history
    assert with_id[dropped] == 1
    with_id[dropped] = 0.0
    with torch.no_grad():
        hidden = rec.item_states(seq, with_id)
        rec.item_table[dropped] += 3.0
        torch.testing.assert_close(rec.item_states(seq, with_id), hidden)
        assert not torch.allclose(rec.item_states(seq, rec.id_known), hidden)
        scores = rec.score(hidden[:, -1], with_id)
        gone = torch.nonzero(with_id[1:] == 0).flatten() + 1
        assert dropped in gone.tolist()
        text_only = rec.text_query(hidden[:, -1]) @ rec.text_table[gone].T
        torch.testing.assert_close(scores[:, gone], text_only)


def test_id_dropout_needs_text_and_a_share_below_one():
    with pytest.raises(ValueError, match="text_repr"):
        LLMRecConfig(n_items=3, item_dim=4, id_dropout=0.2)
    with pytest.raises(ValueError, match="id_dropout"):
        LLMRecConfig(n_items=3, item_dim=4, text_repr=True, id_dropout=1.0)
