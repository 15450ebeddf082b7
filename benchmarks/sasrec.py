"""SASRec alone, the baseline the distillation gains are measured against.

    python -m benchmarks.sasrec --dataset ml-1m --epochs 200 --time-budget 5400 --seed 0

Trains SASRec with full-softmax CE, evaluates on the validation item every ``--eval-every``
epochs (full ranking, history masked) and keeps the best-validation weights (early stopping
with ``--patience`` checks); the test metrics of those weights are the result. Prints one JSON
line per validation check and one final line. The anchor in DESIGN.md (ML-1M, SASRec with CE,
leave-one-out, full ranking) is HR@10 0.315, NDCG@10 0.182.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.common import emit, log
from models.datasets import leave_one_out, load
from models.sasrec import SASRec, SASRecConfig
from models.seqtrain import evaluate, pick_device, set_seed, train_sasrec
from models.sequences import eval_set, training_sequences

MAX_LEN = {"ml-100k": 50, "ml-1m": 200}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(MAX_LEN), default="ml-1m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=4, help="checks without improvement")
    parser.add_argument("--time-budget", type=float, default=5400.0, help="training seconds")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--device")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    split = leave_one_out(load(args.dataset))
    L = MAX_LEN[args.dataset]
    train = training_sequences(split, L)
    valid, test = eval_set(split, L, "valid"), eval_set(split, L, "test")
    set_seed(args.seed)
    cfg = SASRecConfig(n_items=split.n_items, max_len=L, hidden=args.hidden, dropout=args.dropout)
    model = SASRec(cfg).to(device)
    common = {"bench": "sasrec", "dataset": args.dataset, "seed": args.seed, "device": str(device)}
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    best, best_state, best_epoch, stale, trained_s, epoch = -1.0, None, 0, 0, 0.0, 0
    start = time.perf_counter()
    while epoch < args.epochs and trained_s < args.time_budget and stale < args.patience:
        report = train_sasrec(
            model,
            train,
            epochs=args.eval_every,
            batch_size=args.batch_size,
            device=device,
            optimizer=optimizer,
        )
        epoch += args.eval_every
        trained_s += report.seconds
        metrics = evaluate(model, valid, device)
        emit(
            {
                **common,
                "stage": "valid",
                "epoch": epoch,
                "train_s": round(trained_s, 1),
                "loss": round(report.last_loss, 4),
                **{k: round(v, 5) for k, v in metrics.items()},
            }
        )
        if metrics["ndcg@10"] > best:
            best, best_epoch, stale = metrics["ndcg@10"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
    model.load_state_dict(best_state)
    metrics = evaluate(model, test, device)
    log(f"best epoch {best_epoch}, wall {time.perf_counter() - start:.0f} s")
    emit(
        {
            **common,
            "stage": "test",
            "best_epoch": best_epoch,
            "epochs_run": epoch,
            "train_s": round(trained_s, 1),
            "config": cfg.to_dict(),
            "lr": args.lr,
            "batch_size": args.batch_size,
            **{k: round(v, 5) for k, v in metrics.items()},
        }
    )


if __name__ == "__main__":
    main()
