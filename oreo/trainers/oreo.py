"""OREO: joint policy and value training by soft Bellman consistency on offline trajectories.

One micro-batch costs one policy forward/backward and one value forward/backward (spec §9.1 without
its redundant passes): the reference's per-token log-probs are computed once per buffer and cached,
and the critic's target uses this step's policy log-probs, detached (identical to a separate no-grad
pass because the policy has not been updated yet). The exact reverse KL over the vocabulary needs the
reference *distribution* at every action position, so with ``kl.type=exact`` the frozen reference
also runs one no-grad forward per micro-batch (``k3`` on data tokens, or ``none``, avoid it); the policy
logits of a chunk then serve both the token log-probs and the KL. Everything is computed at action
positions only.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from oreo import losses
from oreo.batch import Batch
from oreo.config import EngineConfig, above, at_least, one_of, validate
from oreo.encode import GRANULARITIES
from oreo.logprobs import gather_rows, scatter_rows, token_logprobs, token_logprobs_and_reverse_kl
from oreo.lora import save_model
from oreo.models import VALUE_HEAD_FILE, ValueHead, ValueModel, hidden_states, save_head
from oreo.trainers.common import TrainConfig, unwrap
from oreo.trainers.objective import ReferenceObjective

POLICY_LOSSES = {
    "oreo": losses.oreo_policy_loss,
    "response": losses.response_policy_loss,
    "single_step": losses.single_step_policy_loss,
}


@dataclass
class OREOConfig:
    beta: float = above(0, 0.1)   # KL strength of the soft Bellman equation (paper: 0.03; README, results)
    granularity: str = one_of(GRANULARITIES, "token")   # token | step | turn: which prefixes are MDP states
    policy_loss: str = one_of(POLICY_LOSSES, "oreo")     # oreo (Eq. 9, next-state) | response (Eq. 10) | single_step
    # exact (reverse KL over the vocabulary) | k3 (data tokens) | none
    kl_type: str = one_of(("exact", "k3", "none"), "exact")
    kl_coef: float = at_least(0, 0.01)
    reward_mul: float = 1.0           # R = reward·mul + add (reward is 1 for a correct answer, else 0)
    reward_add: float = 0.0
    clip_logratio: float | None = above(0, None)  # clamp of the cumulative log-ratio in the value target
    importance_sampling: bool = False
    importance_log_clip: float = 1.0
    shared_backbone: bool = False     # true: the value head reads the policy's hidden states (one model)
    max_len: int = at_least(2, 128)   # tokens; longer trajectories are dropped and counted
    chunk_size: int = at_least(1, 1024)  # rows of [tokens, vocab] logits computed at a time
    train: TrainConfig = field(default_factory=TrainConfig)   # lr: the policy's; value_lr: the value model's

    def __post_init__(self):
        validate(self)


class OREOObjective(ReferenceObjective):
    """The policy, the value model (or head) and the frozen reference; two engines, policy and value."""

    name = "oreo"

    def __init__(self, policy, tokenizer, cfg: OREOConfig, train: TrainConfig | None = None, *, reference=None,
                 value=None, cache_dir: str | Path | None = None, ref_name: str = ""):
        """``reference`` defaults to a frozen copy of ``policy``; ``value`` (a ``ValueModel`` or
        ``ValueHead`` to warm-start from) defaults to a fresh one initialised from ``policy``. The
        reference's log-probs are cached in ``cache_dir`` under ``ref_name`` (``oreo.trainers.reference``)."""
        super().__init__(policy, tokenizer, cfg, train,
                         reference=reference if reference is not None else copy.deepcopy(policy),
                         cache_dir=cache_dir, ref_name=ref_name, granularity=cfg.granularity)
        if value is not None:
            self.value = value
        elif cfg.shared_backbone:
            self.value = ValueHead.for_policy(policy)
        else:
            self.value = ValueModel.from_policy(policy)

    def fit(self, records: list, *, engine: EngineConfig | None = None, **kwargs) -> dict:
        if self.cfg.shared_backbone and engine is not None and engine.backend == "deepspeed":
            raise ValueError("oreo.shared_backbone=true is supported with the torch engine only: two DeepSpeed "
                             "engines cannot share one backbone's gradients; use shared_backbone=false")
        return super().fit(records, engine=engine, **kwargs)

    def models(self):
        return {"policy": (self.policy, self.train_cfg.lr), "value": (self.value, self.train_cfg.value_lr)}

    def _forward(self, batch: Batch):
        """Log-ratios, values and the KL term of one micro-batch.

        Policy log-probs are computed at action positions only (nothing else is used), and with the
        exact KL they come out of the same chunked pass over the vocabulary as the KL itself."""
        ids, mask, am = batch.input_ids, batch.attention_mask, batch.action_mask
        hidden = hidden_states(self.policy, ids, mask)[:, :-1]
        head = unwrap(self.policy).get_output_embeddings()
        rows, targets = gather_rows(hidden, am), gather_rows(ids[:, 1:], am)
        kl = None
        if self.cfg.kl_type == "exact":
            with torch.no_grad():
                ref_rows = gather_rows(hidden_states(self.reference, ids, mask)[:, :-1], am)
            logp_rows, kl_rows = token_logprobs_and_reverse_kl(
                rows, head, targets, ref_rows, self.reference.get_output_embeddings(), chunk_size=self.cfg.chunk_size)
            kl = losses.masked_kl_mean(scatter_rows(kl_rows, am), am)
        else:
            logp_rows = token_logprobs(rows, head, targets, chunk_size=self.cfg.chunk_size)
        logratio = (scatter_rows(logp_rows, am) - batch.ref_logprobs) * am
        if self.cfg.kl_type == "k3":
            kl = losses.k3_kl(logratio, am)
        elif kl is None:
            kl = logratio.new_zeros(())
        if self.cfg.shared_backbone:
            values = self.value.values_from_hidden(hidden)
        else:
            values = self.value(ids, mask)[:, :-1]
        return logratio, values, kl

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Value loss, policy loss, KL and logging statistics for one micro-batch."""
        cfg = self.cfg
        logratio, values, kl = self._forward(batch)
        am, sm = batch.action_mask, batch.state_mask
        rewards = losses.scale_reward(batch.rewards, mul=cfg.reward_mul, add=cfg.reward_add)
        weights = (losses.importance_weights(logratio.detach(), am, log_clip=cfg.importance_log_clip)
                   if cfg.importance_sampling else None)
        value_loss = losses.value_loss(values, logratio.detach(), am, sm, rewards, beta=cfg.beta,
                                       clip_logratio=cfg.clip_logratio, weights=weights)
        kwargs = {"weights": weights} if cfg.policy_loss == "oreo" else {}
        policy_loss = POLICY_LOSSES[cfg.policy_loss](logratio, values.detach(), am, sm, rewards, beta=cfg.beta,
                                                     **kwargs)
        state_values, _ = losses.sequence_mean(values.detach(), sm)
        first = sm.float().argmax(-1)
        return {
            "value_loss": value_loss, "policy_loss": policy_loss, "kl": kl,
            "k3_kl": losses.k3_kl(logratio.detach(), am),
            "value_mean": state_values.mean(),
            "value_first_state": values.detach().gather(1, first[:, None]).mean(),
            "reward_mean": rewards.mean(),
        }

    def backward(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        # Values are detached in the policy loss and log-ratios in the value loss, so with separate
        # models each loss reaches only its own model; a shared backbone takes both in one backward.
        if self.cfg.shared_backbone:
            return {"policy": out["policy_loss"] + self.cfg.kl_coef * out["kl"] + out["value_loss"]}
        return {"value": out["value_loss"], "policy": out["policy_loss"] + self.cfg.kl_coef * out["kl"]}

    def save(self, folder: Path) -> None:
        """``policy/`` and ``value/`` in Hugging Face format (a shared-backbone head: ``value_head.safetensors``)."""
        save_model(unwrap(self.policy), folder / "policy")
        self.tokenizer.save_pretrained(folder / "policy")
        value = unwrap(self.value)
        if isinstance(value, ValueModel):
            value.save_pretrained(folder / "value")
            self.tokenizer.save_pretrained(folder / "value")
        else:
            (folder / "value").mkdir()
            save_head(value.head, value.output, folder / "value" / VALUE_HEAD_FILE)
