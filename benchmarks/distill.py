"""LLMD4Rec benchmark: SASRec alone, the LLM side alone, both after mutual distillation, the
one-way peer (LLM → SASRec only) and SASRec with text-initialised cold rows, on the standard
and the cold-item protocol.

    python -m benchmarks.distill --dataset ml-100k --seeds 3 --budget 40 [--llm smollm2:4]
        [--text repr|tokens|both|none] [--protocol both|standard|cold]

Protocols (``protocol`` in every line):

- ``standard``: leave-one-out by time, full ranking over all items, the user's history masked;
- ``cold``: the last ``--cold-fraction`` of items by first appearance are removed from every
  training part (``models/coldsplit.py``), models are trained on the rest, and only the cases
  whose target is such an item are evaluated (full ranking as usual).

HR@{5,10,20} and NDCG@{5,10,20} on the test item and ``valid_*`` on the validation item, for
choosing settings without looking at test. One JSON line per model, round, seed, protocol
and cold-init setting.

``--llm`` picks the LLM side: ``smollm2`` (all 30 layers; wants a GPU), ``smollm2:N`` (the
first N pretrained layers of SmolLM2-135M, for CPU budgets) or ``tiny`` (random tiny Llama).
``--text`` says how it reads item text (title, year, genres; ``models/itemtext.py``): ``repr``
(cached LM encodings in the input and scoring head), ``tokens`` (``--text-tokens`` hybrid
tokens per history item), ``both`` or ``none`` (the no-text ablation).
``--budget`` bounds the optimisation steps of every LLM stage (pretraining and each down step)
so a run fits a CPU; SASRec stages run whole epochs. SASRec alone trains for as many epochs as
the distilled SASRec sees in total (pretraining + rounds), so the comparison is fair.

Items with no training interaction (all cold items under ``cold``; a few valid/test-only
items under ``standard``) can get SASRec rows from text (``models/coldinit.py``): for
``llmd4rec_c`` and ``one_way`` from the LLM side's learned text vectors, for the peer
``sasrec_textinit`` from the frozen LM encodings (no distillation). Each such model is reported
without (``cold_init: none``) and with every ``--cold-ridges`` × ``--cold-scales`` setting.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from benchmarks.common import emit, log
from models.coldinit import ColdInitConfig, init_cold_embeddings
from models.coldsplit import cold_items, cold_split, item_first_seen, training_counts
from models.datasets import leave_one_out, load
from models.distill import DistillConfig, Distiller
from models.itemtext import item_texts
from models.llmrec import build_llm_recommender
from models.metrics import hit_and_ndcg
from models.sasrec import SASRec, SASRecConfig
from models.seqtrain import pick_device, ranks, set_seed, train_sasrec
from models.sequences import EvalSet, eval_set, training_sequences

SETTINGS = {
    "ml-100k": {"max_len": 50, "pretrain_epochs": 30},
    "ml-1m": {"max_len": 200, "pretrain_epochs": 20},
}
TEXT_MODES = {"none": (False, False), "repr": (True, False), "tokens": (False, True)}
TEXT_MODES["both"] = (True, True)


def _subsample(data: EvalSet, users: int) -> EvalSet:
    """The same fixed random subset of users for every model (0 = all)."""
    if not users or users >= len(data.users):
        return data
    g = torch.Generator().manual_seed(1234)
    keep = torch.randperm(len(data.users), generator=g)[:users].numpy()
    return EvalSet(
        data.histories[keep], data.targets[keep], [data.seen[k] for k in keep], data.users[keep]
    )


def _rank_metrics(zero_based: np.ndarray) -> dict[str, float]:
    """HR/NDCG@K and the median 1-based rank of the targets (``rank_p50``), which moves where
    HR@20 of a few cases stays 0."""
    median = float(np.median(zero_based)) + 1.0 if len(zero_based) else float("nan")
    return {**hit_and_ndcg(zero_based), "rank_p50": median}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def run_protocol(args, seed: int, protocol: str, dataset, texts: list[str]) -> None:
    cfg_data = SETTINGS[args.dataset]
    device = pick_device(args.device)
    split = leave_one_out(dataset)
    L = cfg_data["max_len"]
    if protocol == "cold":
        cs = cold_split(split, cold_items(item_first_seen(dataset), args.cold_fraction))
        split = cs.split
        test = _subsample(cs.eval_set(L, "test"), args.eval_users)
        valid = _subsample(cs.eval_set(L, "valid"), args.eval_users)
    else:
        test = _subsample(eval_set(split, L, "test"), args.eval_users)
        valid = _subsample(eval_set(split, L, "valid"), args.eval_users)
    train = training_sequences(split, L)
    counts = training_counts(split)
    text_repr, text_tok = TEXT_MODES[args.text]
    dcfg = DistillConfig(
        rounds=args.rounds,
        max_steps_per_stage=args.budget,
        t1=args.t1,
        t2=args.t2,
        w1=args.w1,
        w2=args.w2,
        sample_weights=not args.no_weights,
        inject=not args.no_inject,
    )
    pre = args.pretrain_epochs or cfg_data["pretrain_epochs"]
    sas_cfg = SASRecConfig(n_items=split.n_items, max_len=L)
    common = {
        "dataset": args.dataset,
        "protocol": protocol,
        "seed": seed,
        "device": str(device),
        "llm": args.llm,
        "text": args.text,
        "text_tokens": args.text_tokens if text_tok else 0,
        "text_format": args.text_format,
        "id_for_unknown": args.id_for_unknown if text_repr else None,
        "id_dropout": args.id_dropout,
        "budget": args.budget,
        "t1": dcfg.t1,
        "t2": dcfg.t2,
        "w1": dcfg.w1,
        "w2": dcfg.w2,
        "rounds": dcfg.rounds,
        "eval_users": len(test.users),
        "valid_users": len(valid.users),
        "sample_weights": dcfg.sample_weights,
        "inject": dcfg.inject,
    }
    log(f"{protocol}: {len(train)} rows, {len(test.users)} test, {len(valid.users)} valid cases")

    def report(model_name: str, model, seconds: float, round_: int, **extra) -> None:
        model.eval()
        metrics = _rank_metrics(ranks(model, test, device))
        # validation metrics ride along so settings can be chosen without looking at test
        valid_metrics = _rank_metrics(ranks(model, valid, device))
        emit(
            {
                "model": model_name,
                **common,
                "round": round_,
                **{k: round(v, 5) for k, v in metrics.items()},
                **{f"valid_{k}": round(v, 5) for k, v in valid_metrics.items()},
                "train_s": round(seconds, 1),
                **extra,
            }
        )

    def report_with_cold_init(model_name: str, crm: SASRec, vectors, seconds, round_) -> None:
        """The SASRec as trained, then with text-derived rows for its untrained items."""
        report(model_name, crm, seconds, round_, cold_init="none")
        if vectors is None:
            return
        for ridge in _floats(args.cold_ridges):
            for scale in _floats(args.cold_scales):
                served = copy.deepcopy(crm)
                cfg = ColdInitConfig(ridge=ridge, scale=scale)
                replaced = init_cold_embeddings(served, vectors, counts, cfg)
                report(
                    model_name,
                    served,
                    seconds,
                    round_,
                    cold_init="text",
                    cold_ridge=ridge,
                    cold_scale=scale,
                    cold_items=len(replaced),
                )

    alone = None
    if not args.ablation:
        # SASRec alone, same number of epochs as the distilled SASRec in total
        set_seed(seed)
        alone = SASRec(sas_cfg).to(device)
        epochs = pre + dcfg.rounds * dcfg.up_epochs
        r = train_sasrec(alone, train, epochs=epochs, device=device)
        report("sasrec", alone, r.seconds, 0, epochs=epochs)

    # pretrain SASRec, then the LLM side on its embeddings
    set_seed(seed)
    crm = SASRec(sas_cfg).to(device)
    start = time.perf_counter()
    train_sasrec(crm, train, epochs=pre, device=device)
    crm_pre_s = time.perf_counter() - start
    llm = build_llm_recommender(
        args.llm,
        split.n_items,
        crm.item_embeddings().cpu(),
        seed,
        texts=texts,
        text_tokens=args.text_tokens if text_tok else 0,
        text_repr=text_repr,
        id_dropout=args.id_dropout,
    ).to(device)
    if text_repr and not args.id_for_unknown:
        # items without training data are scored by their text alone on the LLM side
        llm.set_known_items(counts > 0)
    distiller = Distiller(crm, llm, dcfg, device)
    info = distiller.pretrain_llm(train, epochs=args.llm_epochs)
    report("llm", llm, info["seconds"], 0, steps=info["steps"])
    if alone is not None and text_repr:
        # peer: SASRec alone with cold rows mapped from the frozen LM encodings
        report_with_cold_init("sasrec_textinit", alone, llm.text_table, 0.0, 0)
    crm_pretrained = copy.deepcopy(crm.state_dict())
    llm_pretrained = copy.deepcopy(llm.state_dict())

    start = time.perf_counter()

    def on_round(r: int) -> dict:
        seconds = crm_pre_s + time.perf_counter() - start
        vectors = llm.text_item_vectors() if text_repr else None
        report_with_cold_init("llmd4rec_c", crm, vectors, seconds, r)
        report("llmd4rec_l", llm, seconds, r)
        return {}

    distiller.run_rounds(train, on_round)
    if args.ablation:
        return

    # one-way peer: the pretrained LLM teaches SASRec, never learns back
    set_seed(seed)
    crm.load_state_dict(crm_pretrained)
    llm.load_state_dict(llm_pretrained)
    peer_cfg = DistillConfig(**{**dcfg.to_dict(), "one_way": True})
    peer = Distiller(crm, llm, peer_cfg, device)
    start = time.perf_counter()
    peer.run_rounds(train)
    vectors = llm.text_item_vectors() if text_repr else None
    report_with_cold_init(
        "one_way", crm, vectors, crm_pre_s + time.perf_counter() - start, dcfg.rounds
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SETTINGS), default="ml-100k")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=40, help="max steps per LLM stage")
    parser.add_argument("--llm", default="smollm2:4")
    parser.add_argument("--llm-epochs", type=int, default=1)
    parser.add_argument(
        "--pretrain-epochs", type=int, default=0, help="SASRec pretraining (0 = dataset default)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--t1", type=float, default=4.0)
    parser.add_argument("--t2", type=float, default=4.0)
    parser.add_argument("--w1", type=float, default=0.5)
    parser.add_argument("--w2", type=float, default=0.5)
    parser.add_argument("--text", choices=sorted(TEXT_MODES), default="repr")
    parser.add_argument("--text-tokens", type=int, default=8, help="hybrid tokens per item")
    parser.add_argument(
        "--text-format",
        default="title_year_genres",
        choices=("title_year_genres", "title_year", "title"),
    )
    parser.add_argument(
        "--id-for-unknown",
        action="store_true",
        help="ablation: the LLM side's ID head also scores items without training data",
    )
    parser.add_argument(
        "--id-dropout",
        type=float,
        default=0.0,
        help="share of known items the LLM side trains without their ID part (needs text)",
    )
    parser.add_argument("--protocol", choices=("both", "standard", "cold"), default="both")
    parser.add_argument("--cold-fraction", type=float, default=0.1)
    parser.add_argument("--cold-ridges", default="0.1,1,10", help="comma-separated ridge penalties")
    parser.add_argument("--cold-scales", default="1,2", help="comma-separated row scales")
    parser.add_argument("--eval-users", type=int, default=0, help="0 = all test users")
    parser.add_argument("--no-weights", action="store_true", help="ablation: all weights 1")
    parser.add_argument("--no-inject", action="store_true", help="ablation: no injection")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="only the distilled models (skip SASRec alone and the one-way peer)",
    )
    parser.add_argument("--device")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dataset = load(args.dataset)
    texts = item_texts(dataset, dataset.index.item_ids, args.text_format)
    protocols = ("standard", "cold") if args.protocol == "both" else (args.protocol,)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for protocol in protocols:
            log(f"seed {seed}, protocol {protocol}")
            run_protocol(args, seed, protocol, dataset, texts)


if __name__ == "__main__":
    main()
