"""LLMD4Rec benchmark: SASRec alone, the LLM side alone, both after mutual distillation, and
the one-way peer (LLM → SASRec only), on the paper's protocol.

    python -m benchmarks.distill --dataset ml-100k --seeds 3 --budget 40 [--llm smollm2:4]

Protocol: leave-one-out by time, full ranking over all items, the user's history masked;
HR@{5,10,20} and NDCG@{5,10,20} on the test item (and ``valid_*`` on the validation item, for
choosing settings without looking at test). One JSON line per model, round and seed.

``--llm`` picks the LLM side: ``smollm2`` (all 30 layers; wants a GPU), ``smollm2:N`` (the
first N pretrained layers of SmolLM2-135M, for CPU budgets) or ``tiny`` (random tiny Llama).
``--budget`` bounds the optimisation steps of every LLM stage (pretraining and each down step)
so a run fits a CPU; SASRec stages run whole epochs. SASRec alone trains for as many epochs as
the distilled SASRec sees in total (pretraining + rounds), so the comparison is fair.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.common import emit, log
from models.datasets import leave_one_out, load
from models.distill import DistillConfig, Distiller
from models.llmrec import build_llm_recommender
from models.sasrec import SASRec, SASRecConfig
from models.seqtrain import evaluate, pick_device, set_seed, train_sasrec
from models.sequences import EvalSet, eval_set, training_sequences

SETTINGS = {
    "ml-100k": {"max_len": 50, "pretrain_epochs": 30},
    "ml-1m": {"max_len": 200, "pretrain_epochs": 20},
}


def _subsample(data: EvalSet, users: int) -> EvalSet:
    """The same fixed random subset of users for every model (0 = all)."""
    if not users:
        return data
    g = torch.Generator().manual_seed(1234)
    keep = torch.randperm(len(data.users), generator=g)[:users].numpy()
    return EvalSet(
        data.histories[keep], data.targets[keep], [data.seen[k] for k in keep], data.users[keep]
    )


def run_seed(args, seed: int) -> None:
    cfg_data = SETTINGS[args.dataset]
    device = pick_device(args.device)
    split = leave_one_out(load(args.dataset))
    L = cfg_data["max_len"]
    train = training_sequences(split, L)
    test = _subsample(eval_set(split, L, "test"), args.eval_users)
    valid = _subsample(eval_set(split, L, "valid"), args.eval_users)
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
    pre = cfg_data["pretrain_epochs"]
    sas_cfg = SASRecConfig(n_items=split.n_items, max_len=L)
    common = {
        "dataset": args.dataset,
        "seed": seed,
        "device": str(device),
        "llm": args.llm,
        "budget": args.budget,
        "t1": dcfg.t1,
        "t2": dcfg.t2,
        "w1": dcfg.w1,
        "w2": dcfg.w2,
        "rounds": dcfg.rounds,
        "eval_users": len(test.users),
        "sample_weights": dcfg.sample_weights,
        "inject": dcfg.inject,
    }

    def report(model_name: str, model, seconds: float, **extra) -> None:
        model.eval()
        metrics = evaluate(model, test, device)
        # validation metrics ride along so settings can be chosen without looking at test
        valid_metrics = evaluate(model, valid, device)
        emit(
            {
                "model": model_name,
                **common,
                **{k: round(v, 5) for k, v in metrics.items()},
                **{f"valid_{k}": round(v, 5) for k, v in valid_metrics.items()},
                "train_s": round(seconds, 1),
                **extra,
            }
        )

    if not args.ablation:
        # SASRec alone, same number of epochs as the distilled SASRec in total
        set_seed(seed)
        alone = SASRec(sas_cfg).to(device)
        epochs = pre + dcfg.rounds * dcfg.up_epochs
        r = train_sasrec(alone, train, epochs=epochs, device=device)
        report("sasrec", alone, r.seconds, epochs=epochs)

    # pretrain SASRec, then the LLM side on its embeddings
    set_seed(seed)
    crm = SASRec(sas_cfg).to(device)
    start = time.perf_counter()
    train_sasrec(crm, train, epochs=pre, device=device)
    crm_pre_s = time.perf_counter() - start
    llm = build_llm_recommender(args.llm, split.n_items, crm.item_embeddings().cpu(), seed).to(
        device
    )
    distiller = Distiller(crm, llm, dcfg, device)
    info = distiller.pretrain_llm(train, epochs=args.llm_epochs)
    report("llm", llm, info["seconds"], round=0, steps=info["steps"])
    crm_pretrained = copy.deepcopy(crm.state_dict())
    llm_pretrained = copy.deepcopy(llm.state_dict())

    start = time.perf_counter()

    def on_round(r: int) -> dict:
        seconds = crm_pre_s + time.perf_counter() - start
        report("llmd4rec_c", crm, seconds, round=r)
        report("llmd4rec_l", llm, seconds, round=r)
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
    report("one_way", crm, crm_pre_s + time.perf_counter() - start, round=dcfg.rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SETTINGS), default="ml-100k")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=40, help="max steps per LLM stage")
    parser.add_argument("--llm", default="smollm2:4")
    parser.add_argument("--llm-epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--t1", type=float, default=4.0)
    parser.add_argument("--t2", type=float, default=4.0)
    parser.add_argument("--w1", type=float, default=0.5)
    parser.add_argument("--w2", type=float, default=0.5)
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
    for seed in range(args.seeds):
        log(f"seed {seed}")
        run_seed(args, seed)


if __name__ == "__main__":
    main()
