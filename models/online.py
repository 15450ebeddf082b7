"""LLMD4Rec on a stream: bounded warm-up, then one distillation round per micro-batch.

The trainer consumer owns the data (per-user sequences of dense item indices, 0-based) and
calls this module; nothing here knows about Kafka. Each user's newest item is held out for the
rolling validation (leave-one-out), everything before it is training data. A round runs
``steps_per_round`` calls of :meth:`Distiller.distill_round` on minibatches drawn from a replay
buffer that mixes the users touched by the micro-batch with a sample of older users, so new
behaviour is learned without forgetting the rest.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from models.coldinit import ColdInitConfig, init_cold_embeddings
from models.distill import DistillConfig, Distiller, load_checkpoint, save_checkpoint
from models.llmd4rec_config import OnlineConfig
from models.llmrec import build_llm_recommender
from models.sasrec import SASRec, SASRecConfig
from models.seqtrain import evaluate, set_seed
from models.sequences import EvalSet, TrainingSequences, left_pad


def split_for_training(
    sequences: Mapping[str, np.ndarray], max_len: int
) -> tuple[list[str], TrainingSequences | None, list[str], EvalSet | None]:
    """Training rows (all but the newest item) and the validation set (newest item)."""
    train_users, rows_in, rows_tgt = [], [], []
    valid_users, hist, targets = [], [], []
    for user, seq in sequences.items():
        if len(seq) >= 3:
            train = seq[:-1]
            train_users.append(user)
            rows_in.append(left_pad(train[:-1], max_len))
            rows_tgt.append(left_pad(train[1:], max_len))
            valid_users.append(user)
            hist.append(train)
            targets.append(int(seq[-1]))
        elif len(seq) == 2:
            train_users.append(user)
            rows_in.append(left_pad(seq[:-1], max_len))
            rows_tgt.append(left_pad(seq[1:], max_len))
    train = None
    if rows_in:
        train = TrainingSequences(
            torch.from_numpy(np.stack(rows_in)),
            torch.from_numpy(np.stack(rows_tgt)),
            torch.arange(len(rows_in)),
        )
    valid = None
    if hist:
        valid = EvalSet(
            torch.from_numpy(np.stack([left_pad(h, max_len) for h in hist])),
            np.asarray(targets, dtype=np.int64),
            [np.unique(h) for h in hist],
            np.arange(len(hist)),
        )
    return train_users, train, valid_users, valid


class OnlineLLMD4Rec:
    """SASRec and the LLM side, trained round by round on whatever data the caller holds."""

    def __init__(self, cfg: OnlineConfig, device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = device or torch.device("cpu")
        #: asked before every optimiser step; True raises
        #: :class:`~models.distill.TrainingInterrupted` (the owner's shutdown)
        self.should_stop: Callable[[], bool] = lambda: False
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------
    def reset(self) -> None:
        """Fresh random models (the state before any data)."""
        set_seed(self.cfg.seed)
        self.crm = SASRec(
            SASRecConfig(
                n_items=self.cfg.max_items, max_len=self.cfg.max_len, hidden=self.cfg.hidden
            )
        ).to(self.device)
        self.llm = build_llm_recommender(
            self.cfg.llm,
            self.cfg.max_items,
            self.crm.item_embeddings().cpu(),
            self.cfg.seed,
            text_repr=self.cfg.text_repr,
        ).to(self.device)
        dcfg = DistillConfig(
            **{**self.cfg.distill.to_dict(), "max_steps_per_stage": self.cfg.pretrain_steps}
        )
        self.distiller = Distiller(
            self.crm, self.llm, dcfg, self.device, should_stop=lambda: self.should_stop()
        )
        self.warm = False
        self.rounds = 0
        self._rng = np.random.default_rng(self.cfg.seed)

    def save(self, path: Path, meta: dict) -> Path:
        meta = {**meta, "warm": self.warm, "rounds": self.rounds, "online": self.cfg.to_dict()}
        return save_checkpoint(path, self.crm, self.llm, meta)

    def load(self, path: Path) -> dict:
        """Load a checkpoint written by :meth:`save` (fresh optimiser state)."""
        self.reset()
        meta = load_checkpoint(path, self.crm, self.llm)
        self.warm, self.rounds = bool(meta.get("warm")), int(meta.get("rounds", 0))
        return meta

    # -- item text ------------------------------------------------------------------------
    def set_item_texts(self, encodings: torch.Tensor, counts: np.ndarray) -> None:
        """Give the LLM side the items' raw text encodings (``(max_items + 1) × hidden``,
        zero rows for items without text; :meth:`LLMRecommender.encode_texts`) and which
        items have training data (``counts > 0``; the others are scored by text alone)."""
        self.llm.set_text_encodings(encodings)
        self.llm.set_known_items(np.asarray(counts) > 0)

    def crm_for_export(
        self, counts: np.ndarray, has_text: np.ndarray, cold: ColdInitConfig
    ) -> tuple[SASRec, np.ndarray]:
        """A copy of SASRec whose rows of rarely trained items that have a text are mapped
        from the LLM side's text vectors (:func:`models.coldinit.init_cold_embeddings`); the
        live SASRec is unchanged. Returns the copy and the dense indices it changed (none
        when fewer than two items with text have ``cold.min_count`` training events)."""
        crm = copy.deepcopy(self.crm).eval()
        if not self.cfg.text_repr:
            return crm, np.zeros(0, dtype=np.int64)
        has_text = np.asarray(has_text, dtype=bool)
        if int(((counts >= cold.min_count) & has_text).sum()) < 2:
            return crm, np.zeros(0, dtype=np.int64)
        changed = init_cold_embeddings(crm, self.llm.text_item_vectors(), counts, cold, has_text)
        return crm, changed

    # -- training -------------------------------------------------------------------------
    def train_round(
        self, sequences: Mapping[str, np.ndarray], fresh_users: Sequence[str] = ()
    ) -> dict:
        """Warm up on everything the first time, then one distillation round on a replay
        buffer of ``fresh_users`` plus a sample of the others."""
        start = time.perf_counter()
        users, train, _, _ = split_for_training(sequences, self.cfg.max_len)
        if train is None:
            return {"kind": "skipped", "seconds": 0.0}
        if not self.warm:
            info = self.warm_up(train)
        else:
            info = self._distill(users, train, fresh_users)
        self.rounds += 1
        return {**info, "seconds": time.perf_counter() - start}

    def warm_up(self, train: TrainingSequences) -> dict:
        """Bounded CE pretraining of SASRec, then of the LLM side on its embeddings."""
        crm = self.distiller.pretrain_crm(train, epochs=10_000)
        llm = self.distiller.pretrain_llm(train, epochs=10_000)
        self.warm = True
        return {"kind": "warm-up", "crm_loss": crm.get("loss"), "llm_loss": llm.get("loss")}

    def _distill(
        self, users: list[str], train: TrainingSequences, fresh_users: Sequence[str]
    ) -> dict:
        position = {u: k for k, u in enumerate(users)}
        fresh = np.asarray([position[u] for u in fresh_users if u in position], dtype=np.int64)
        cap = max(self.cfg.replay_users, 1)
        if len(fresh) > cap:
            # more fresh users than the buffer holds: a random share of them, not the same
            # tail of the id order left out round after round
            fresh = np.sort(self._rng.choice(fresh, size=cap, replace=False))
        others = np.setdiff1d(np.arange(len(users)), fresh)
        room = max(0, cap - len(fresh))
        older = self._rng.choice(others, size=min(room, len(others)), replace=False)
        replay = np.concatenate([fresh, older.astype(np.int64)])
        # the steps walk one shuffled pass over the buffer (then wrap), so the round's
        # batches cover min(steps × batch, buffer) distinct users instead of redrawing some
        order = self._rng.permutation(replay)
        size = min(self.cfg.batch_size, len(order))
        last: dict = {}
        for step in range(self.cfg.steps_per_round):
            first = (step * size) % len(order)
            pick = np.take(order, np.arange(first, first + size), mode="wrap")
            idx = torch.from_numpy(pick)
            last = self.distiller.distill_round(train.inputs[idx], train.targets[idx])
        return {
            "kind": "round",
            "replay": int(len(replay)),
            "fresh": len(fresh),
            "crm_loss": last["up"].get("loss"),
            "llm_loss": last["down"].get("loss"),
        }

    def retrain(self, sequences: Mapping[str, np.ndarray], rounds: int) -> dict:
        """From the current weights (a restored checkpoint or fresh ones): warm-up if needed,
        then ``rounds`` rounds over all retained users."""
        start = time.perf_counter()
        users, train, _, _ = split_for_training(sequences, self.cfg.max_len)
        if train is None:
            return {"kind": "retrain", "seconds": 0.0}
        if not self.warm:
            self.warm_up(train)
        for _ in range(rounds):
            order = self._rng.permutation(len(users))
            for b in range(0, len(order), self.cfg.batch_size):
                idx = torch.from_numpy(order[b : b + self.cfg.batch_size])
                self.distiller.distill_round(train.inputs[idx], train.targets[idx])
            self.rounds += 1
        return {"kind": "retrain", "seconds": time.perf_counter() - start}

    # -- validation -----------------------------------------------------------------------
    def validation_users(self, sequences: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A stable sample: the users whose seeded hash rank is lowest (same users round to
        round, newcomers join as the data grows)."""
        eligible = [u for u, s in sequences.items() if len(s) >= 3]
        if len(eligible) <= self.cfg.valid_users:
            return {u: sequences[u] for u in eligible}
        # a keyed hash, not hash(): Python's string hashes change from process to process
        order = np.argsort([_stable_hash(self.cfg.seed, u) for u in eligible])
        return {eligible[k]: sequences[eligible[k]] for k in order[: self.cfg.valid_users]}

    def validate(
        self, sequences: Mapping[str, np.ndarray], crm_state: dict | None = None
    ) -> dict[str, float]:
        """HR/NDCG@{5,10,20} on the newest item of a stable user sample (full ranking)."""
        _, _, _, valid = split_for_training(self.validation_users(sequences), self.cfg.max_len)
        if valid is None:
            return {}
        model = self.crm
        if crm_state is not None:
            model = copy.deepcopy(self.crm)
            model.load_state_dict(crm_state)
        model.eval()
        return evaluate(model, valid, self.device)

    def crm_state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.crm.state_dict().items()}


def training_counts(sequences: Mapping[str, np.ndarray], n_items: int) -> np.ndarray:
    """How often each dense item occurs in the training part of the sequences (what
    :func:`split_for_training` trains on: all but the newest item of a user with three or
    more, both items of a user with two)."""
    parts = [seq[:-1] if len(seq) >= 3 else seq for seq in sequences.values() if len(seq) >= 2]
    if not parts:
        return np.zeros(n_items, dtype=np.int64)
    return np.bincount(np.concatenate(parts), minlength=n_items)[:n_items]


def _stable_hash(seed: int, user: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x1f{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
