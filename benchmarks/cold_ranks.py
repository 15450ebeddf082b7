"""Where SASRec ranks cold items, with and without text-initialised rows (a diagnostic for
the cold-item protocol; prints one JSON line per variant and stage).

    python -m benchmarks.cold_ranks --dataset ml-100k --seed 0 [--llm smollm2:4]

SASRec is trained on the cold split (no cold item in training); the rows of the cold items are
then left as trained, set to the mean warm row, or mapped from the frozen LM text encodings
(``models/coldinit.py``). For each variant: the median full-ranking rank of the cold target
(history masked, ties counted against the target), HR/NDCG@{10,20} and the median rank of
the target among the cold items only (does the text order new items sensibly, whatever their
calibration against warm ones?).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from benchmarks.common import emit
from models.coldinit import ColdInitConfig, init_cold_embeddings
from models.coldsplit import cold_items, cold_split, item_first_seen, training_counts
from models.datasets import leave_one_out, load
from models.itemtext import item_texts
from models.llmrec import build_llm_recommender
from models.metrics import hit_and_ndcg, target_ranks
from models.sasrec import SASRec, SASRecConfig
from models.seqtrain import score_histories, set_seed, train_sasrec
from models.sequences import training_sequences


def _ranks(model: SASRec, data, cold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    scores = score_histories(model, data.histories)
    for row, seen in enumerate(data.seen):
        scores[row, seen] = -np.inf
    full = target_ranks(scores, data.targets)
    cold_items_sorted = np.flatnonzero(cold)  # every target here is one of them
    among_cold = target_ranks(scores[:, cold], np.searchsorted(cold_items_sorted, data.targets))
    return full, among_cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--llm", default="smollm2:4")
    args = parser.parse_args()
    data = load(args.dataset)
    max_len = 50 if args.dataset == "ml-100k" else 200
    cs = cold_split(leave_one_out(data), cold_items(item_first_seen(data), 0.1))
    counts = training_counts(cs.split)
    set_seed(args.seed)
    crm = SASRec(SASRecConfig(n_items=cs.split.n_items, max_len=max_len))
    train_sasrec(crm, training_sequences(cs.split, max_len), epochs=args.epochs)
    texts = item_texts(data, data.index.item_ids)
    llm = build_llm_recommender(
        args.llm, cs.split.n_items, crm.item_embeddings(), args.seed, texts=texts, text_repr=True
    )
    variants = {"trained": crm}
    mean_row = copy.deepcopy(crm)
    with torch.no_grad():
        warm = torch.from_numpy(np.flatnonzero(counts > 0) + 1)
        cold_rows = torch.from_numpy(np.flatnonzero(counts == 0) + 1)
        mean_row.item_emb.weight[cold_rows] = mean_row.item_emb.weight[warm].mean(0)
    variants["mean_warm_row"] = mean_row
    for ridge in (0.1, 1.0, 10.0):
        for scale in (1.0, 2.0, 4.0):
            mapped = copy.deepcopy(crm)
            init_cold_embeddings(
                mapped, llm.text_table, counts, ColdInitConfig(ridge=ridge, scale=scale)
            )
            variants[f"text_r{ridge}_s{scale}"] = mapped
    for stage in ("valid", "test"):
        cases = cs.eval_set(max_len, stage)
        for name, model in variants.items():
            full, among = _ranks(model, cases, cs.cold)
            emit(
                {
                    "dataset": args.dataset,
                    "protocol": "cold",
                    "seed": args.seed,
                    "stage": stage,
                    "variant": name,
                    "cases": len(full),
                    "median_rank": float(np.median(full)),
                    "median_rank_among_cold": float(np.median(among)),
                    "n_cold": int(cs.cold.sum()),
                    **{k: round(v, 5) for k, v in hit_and_ndcg(full, (10, 20)).items()},
                }
            )


if __name__ == "__main__":
    main()
