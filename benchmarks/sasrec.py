"""SASRec alone, the baseline the distillation gains are measured against.

    python -m benchmarks.sasrec --dataset ml-1m --epochs 200 --time-budget 5400 --seed 0

Trains SASRec with full-softmax CE, evaluates on the validation item every ``--eval-every``
epochs (full ranking, history masked) and keeps the best-validation weights (early stopping
with ``--patience`` checks); the test metrics of those weights are the result. Prints one JSON
line per validation check and one final line. The public anchor (docs/models.md: ML-1M,
SASRec with CE, leave-one-out, full ranking) is HR@10 0.315, NDCG@10 0.182.

``--checkpoint PATH`` saves the whole run after every check (weights, Adam's moments, the
best weights so far, torch's CPU and CUDA generators) and resumes from it, so a long CPU run can be
spread over several sessions; ``--time-budget`` then counts this session's training only.
A run resumed with other settings is refused.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

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
    parser.add_argument("--heads", type=int, default=SASRecConfig.heads)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--device")
    parser.add_argument("--checkpoint", type=Path, help="save after every check; resume from it")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    split = leave_one_out(load(args.dataset))
    L = MAX_LEN[args.dataset]
    train = training_sequences(split, L)
    valid, test = eval_set(split, L, "valid"), eval_set(split, L, "test")
    set_seed(args.seed)
    cfg = SASRecConfig(
        n_items=split.n_items, max_len=L, hidden=args.hidden, heads=args.heads, dropout=args.dropout
    )
    model = SASRec(cfg).to(device)
    common = {"bench": "sasrec", "dataset": args.dataset, "seed": args.seed, "device": str(device)}
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    run = {"args": _run_args(args), "epoch": 0, "trained_s": 0.0, "best": -1.0}
    run.update(best_epoch=0, stale=0, best_state=None)
    if args.checkpoint and args.checkpoint.exists():
        run = _resume(args, model, optimizer)
        log(f"resumed at epoch {run['epoch']} (best {run['best']:.5f} at {run['best_epoch']})")
    session_s, start = 0.0, time.perf_counter()
    while (
        run["epoch"] < args.epochs and session_s < args.time_budget and run["stale"] < args.patience
    ):
        report = train_sasrec(
            model,
            train,
            epochs=args.eval_every,
            batch_size=args.batch_size,
            device=device,
            optimizer=optimizer,
        )
        run["epoch"] += args.eval_every
        run["trained_s"] += report.seconds
        session_s += report.seconds
        metrics = evaluate(model, valid, device)
        emit(
            {
                **common,
                "stage": "valid",
                "epoch": run["epoch"],
                "train_s": round(run["trained_s"], 1),
                "loss": round(report.last_loss, 4),
                **{k: round(v, 5) for k, v in metrics.items()},
            }
        )
        if metrics["ndcg@10"] > run["best"]:
            run.update(best=metrics["ndcg@10"], best_epoch=run["epoch"], stale=0)
            run["best_state"] = copy.deepcopy(model.state_dict())
        else:
            run["stale"] += 1
        if args.checkpoint:
            _save(args.checkpoint, run, model, optimizer)
    best_state, best_epoch, epoch, trained_s = (
        run["best_state"],
        run["best_epoch"],
        run["epoch"],
        run["trained_s"],
    )
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


def _run_args(args: argparse.Namespace) -> dict:
    """The settings a resumed run must share (budgets and the device may change)."""
    keys = ("dataset", "seed", "eval_every", "hidden", "heads", "dropout", "lr", "batch_size")
    return {k: getattr(args, k) for k in keys}


def _save(path: Path, run: dict, model: SASRec, optimizer: torch.optim.Optimizer) -> None:
    state = {
        **run,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _resume(args: argparse.Namespace, model: SASRec, optimizer: torch.optim.Optimizer) -> dict:
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    state["args"].setdefault("heads", 2)  # checkpoints from before --heads ran with two
    if state["args"] != _run_args(args):
        raise SystemExit(f"{args.checkpoint} is a run with {state['args']}, not {_run_args(args)}")
    model.load_state_dict(state.pop("model"))
    optimizer.load_state_dict(state.pop("optimizer"))
    torch.set_rng_state(state.pop("torch_rng"))
    cuda_rng = state.pop("cuda_rng", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_rng)
    return state


if __name__ == "__main__":
    main()
