"""LLMD4Rec mutual distillation between SASRec (CRM) and the LLM recommender (docs/models.md).

Schedule: pretrain SASRec → train the LLM side on SASRec's item embeddings → ``rounds`` ×
[(up) SASRec learns CE + w₂·KL(p_llm ∥ p_crm) at T₂; inject SASRec's embeddings into the LLM
side; (down) the LLM side learns CE + w₁·KL(p_crm ∥ p_llm) at T₁]. Distributions are over the
full item set. Sample-wise weights come from the rank of the true next item under each model;
they add no trainable parameter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from models.llmd4rec_config import DistillConfig
from models.llmrec import LLMRecommender
from models.sasrec import SASRec, sequence_ce_loss
from models.sequences import TrainingSequences


def target_ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among items 1..n (padding column ignored)."""
    scores = logits[:, 1:]
    t = scores.gather(1, (targets - 1)[:, None])
    return (scores > t).sum(dim=1)


def sample_weight(r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
    """docs/models.md: above 1 (≤ 2) when the teacher ranks the target better, toward 0 when the
    student already does; exactly 1 on ties. Ranks are 0-based, hence the max(r, 1)."""
    rs, rt = r_student.float(), r_teacher.float()
    teacher_better = 1 + (rs - rt) / rt.clamp(min=1)
    student_better = 1 - (rt - rs) / rs.clamp(min=1)
    return torch.where(rs > rt, teacher_better, student_better).clamp(0.0, 2.0)


def kl_teacher_student(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-sample KL(p_teacher ∥ p_student) at temperature T, scaled by T² (Hinton et al.).

    The teacher is detached; the padding column is excluded from both distributions."""
    t = teacher_logits[:, 1:].detach() / temperature
    s = student_logits[:, 1:] / temperature
    log_pt = F.log_softmax(t, dim=-1)
    log_ps = F.log_softmax(s, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1) * temperature**2


def crm_up_loss(crm, llm, inputs, targets, cfg: DistillConfig) -> tuple[torch.Tensor, dict]:
    """SASRec's loss in the up step: CE at every position + w₂·weighted KL at the last one."""
    hidden = crm.hidden_states(inputs)
    logits = crm.logits(hidden)
    logits_ce = logits.clone()
    logits_ce[..., 0] = float("-inf")
    ce = F.cross_entropy(
        logits_ce.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=0
    )
    last = logits[:, -1, :]
    with torch.no_grad():
        teacher = llm(inputs)
    kl = kl_teacher_student(teacher, last, cfg.t2)
    weights = torch.ones_like(kl)
    if cfg.sample_weights:
        weights = sample_weight(
            target_ranks(last.detach(), targets[:, -1]), target_ranks(teacher, targets[:, -1])
        )
    loss = ce + cfg.w2 * (weights * kl).mean()
    return loss, {"ce": ce.item(), "kl": kl.mean().item(), "w": weights.mean().item()}


def llm_down_loss(crm, llm, inputs, targets, cfg: DistillConfig) -> tuple[torch.Tensor, dict]:
    """The LLM side's loss in the down step: CE at every position + w₁·weighted
    KL(p_crm ∥ p_llm) at the last one."""
    all_logits = llm.forward_all(inputs)
    student = all_logits[:, -1, :]
    target = targets[:, -1]
    ce = _all_positions_ce(all_logits, targets)
    with torch.no_grad():
        teacher = crm(inputs)
    kl = kl_teacher_student(teacher, student, cfg.t1)
    weights = torch.ones_like(kl)
    if cfg.sample_weights:
        weights = sample_weight(
            target_ranks(student.detach(), target), target_ranks(teacher, target)
        )
    loss = ce + cfg.w1 * (weights * kl).mean()
    return loss, {"ce": ce.item(), "kl": kl.mean().item(), "w": weights.mean().item()}


def _all_positions_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-item CE at every non-padded position (padding column excluded)."""
    masked = logits.clone()
    masked[..., 0] = float("-inf")
    return F.cross_entropy(
        masked.reshape(-1, masked.shape[-1]), targets.reshape(-1), ignore_index=0
    )


def llm_ce_loss(llm: LLMRecommender, inputs, targets) -> torch.Tensor:
    """The LLM side's own loss: next-item CE after every history position."""
    return _all_positions_ce(llm.forward_all(inputs), targets)


class TrainingInterrupted(Exception):
    """Raised before an optimiser step once the owner's ``should_stop`` says so: the models
    are then mid-training and must not be used or saved (the owner starts again from its
    last saved state)."""


def _never() -> bool:
    return False


class Distiller:
    """Holds both models and their optimisers; runs stages, rounds and the whole schedule."""

    def __init__(
        self,
        crm: SASRec,
        llm: LLMRecommender,
        cfg: DistillConfig,
        device: torch.device | None = None,
        should_stop: Callable[[], bool] = _never,
    ) -> None:
        self.crm, self.llm, self.cfg = crm, llm, cfg
        self.device = device or torch.device("cpu")
        #: asked before every optimiser step (a worker's shutdown must not wait for a
        #: retrain of minutes); True raises :class:`TrainingInterrupted`
        self.should_stop = should_stop
        self.crm_opt = torch.optim.Adam(crm.parameters(), lr=cfg.crm_lr)
        self.llm_opt = torch.optim.AdamW(
            [p for p in llm.parameters() if p.requires_grad], lr=cfg.llm_lr
        )
        self.history: list[dict] = []

    # -- single steps (the trainer consumer calls distill_round per micro-batch) ----------
    def _check_stop(self) -> None:
        if self.should_stop():
            raise TrainingInterrupted("training stopped on request")

    def crm_step(self, inputs, targets, distill: bool) -> dict:
        self._check_stop()
        self.crm.train()
        self.llm.eval()
        if distill:
            loss, info = crm_up_loss(self.crm, self.llm, inputs, targets, self.cfg)
        else:
            loss = sequence_ce_loss(self.crm, inputs, targets)
            info = {"ce": loss.item()}
        self.crm_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.crm_opt.step()
        return {**info, "loss": loss.item()}

    def llm_step(self, inputs, targets, distill: bool) -> dict:
        self._check_stop()
        self.llm.train()
        self.crm.eval()
        if distill:
            loss, info = llm_down_loss(self.crm, self.llm, inputs, targets, self.cfg)
        else:
            loss = llm_ce_loss(self.llm, inputs, targets)
            info = {"ce": loss.item()}
        self.llm_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.llm_opt.step()
        return {**info, "loss": loss.item()}

    def inject(self) -> None:
        if self.cfg.inject:
            self.llm.inject_item_embeddings(self.crm.item_embeddings())

    def distill_round(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
        """One up step, injection, one down step on the given batch of sequences."""
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        up = self.crm_step(inputs, targets, distill=True)
        self.inject()
        down = {} if self.cfg.one_way else self.llm_step(inputs, targets, distill=True)
        return {"up": up, "down": down}

    # -- stages over a dataset ------------------------------------------------------------
    def _epochs(self, data: TrainingSequences, epochs: int, batch: int, step) -> dict:
        steps, last, start = 0, {}, time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(len(data))
            for b in range(0, len(data), batch):
                idx = order[b : b + batch]
                last = step(data.inputs[idx].to(self.device), data.targets[idx].to(self.device))
                steps += 1
                if self.cfg.max_steps_per_stage and steps >= self.cfg.max_steps_per_stage:
                    return {**last, "steps": steps, "seconds": time.perf_counter() - start}
        return {**last, "steps": steps, "seconds": time.perf_counter() - start}

    def pretrain_crm(self, data: TrainingSequences, epochs: int) -> dict:
        return self._epochs(
            data, epochs, self.cfg.crm_batch, lambda i, t: self.crm_step(i, t, distill=False)
        )

    def pretrain_llm(self, data: TrainingSequences, epochs: int) -> dict:
        self.llm.inject_item_embeddings(self.crm.item_embeddings())
        return self._epochs(
            data, epochs, self.cfg.llm_batch, lambda i, t: self.llm_step(i, t, distill=False)
        )

    def up(self, data: TrainingSequences) -> dict:
        return self._epochs(
            data,
            self.cfg.up_epochs,
            self.cfg.crm_batch,
            lambda i, t: self.crm_step(i, t, distill=True),
        )

    def down(self, data: TrainingSequences) -> dict:
        return self._epochs(
            data,
            self.cfg.down_epochs,
            self.cfg.llm_batch,
            lambda i, t: self.llm_step(i, t, distill=True),
        )

    def run_rounds(self, data: TrainingSequences, on_round=None) -> list[dict]:
        """The alternating schedule after pretraining; ``on_round(r)`` evaluates if given."""
        for r in range(self.cfg.rounds):
            record = {"round": r + 1, "up": self.up(data)}
            self.inject()
            if not self.cfg.one_way:
                record["down"] = self.down(data)
            if on_round is not None:
                record["eval"] = on_round(r + 1)
            self.history.append(record)
        return self.history


def save_checkpoint(path: Path, crm: SASRec, llm: LLMRecommender | None, meta: dict) -> Path:
    """safetensors weights + JSON metadata (data watermark, configs, metrics); no pickle."""
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in crm.state_dict().items()},
        str(path / "sasrec.safetensors"),
    )
    if llm is not None:
        save_file(
            {k: v.contiguous() for k, v in llm.trainable_state().items()},
            str(path / "llm_trainable.safetensors"),
        )
    meta = {**meta, "sasrec_config": crm.config.to_dict(), "saved_at": time.time()}
    (path / "meta.json").write_text(json.dumps(meta, indent=2, default=_json_default))
    return path


def load_checkpoint(path: Path, crm: SASRec, llm: LLMRecommender | None) -> dict:
    """Load weights saved by :func:`save_checkpoint` into the given models; returns the meta."""
    crm.load_state_dict(load_file(str(path / "sasrec.safetensors")))
    trainable = path / "llm_trainable.safetensors"
    if llm is not None and trainable.exists():
        missing = llm.load_state_dict(load_file(str(trainable)), strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"unexpected LLM weights in {path}: {missing.unexpected_keys[:3]}")
    return json.loads((path / "meta.json").read_text())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))
