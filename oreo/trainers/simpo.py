"""SimPO (Meng, Xia and Chen 2024, arXiv 2405.14734) on the offline buffer: DPO's pairs, no reference model.

The implicit reward is the policy's average log-probability of a response's action tokens, times β; the loss
asks the chosen response's reward to beat the rejected one's by the margin γ (``losses.simpo_loss``). The pairs
are DPO's (``dpo.preference_pairs``: correct × incorrect per problem, at most ``max_pairs_per_prompt``, seeded).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from oreo import losses
from oreo.batch import Batch
from oreo.config import above, at_least, validate
from oreo.encode import Encoder
from oreo.trainers.common import TrainConfig
from oreo.trainers.dpo import PairedObjective
from oreo.trainers.objective import PolicyObjective


@dataclass
class SimPOConfig:
    beta: float = above(0, 2.0)                   # scale of the length-normalised reward (the paper: 2 to 2.5)
    gamma: float = at_least(0, 1.0)               # target reward margin (the paper's γ/β: about 0.5)
    max_pairs_per_prompt: int = at_least(1, 6)    # as DPO's
    max_len: int = at_least(2, 128)               # tokens; longer trajectories are dropped and counted
    chunk_size: int = at_least(1, 256)            # rows of logits at a time
    # batch: pairs; DPO's settings, not tuned for SimPO
    train: TrainConfig = field(default_factory=lambda: TrainConfig(micro_batch_size=16, lr=3e-5))

    def __post_init__(self):
        validate(self)


class SimPOObjective(PairedObjective, PolicyObjective):
    """DPO's pairs (``PairedObjective``) scored by the policy alone: no frozen reference, nothing cached."""

    name = "simpo"

    def __init__(self, policy: nn.Module, tokenizer, cfg: SimPOConfig, train: TrainConfig | None = None):
        encoder = Encoder(tokenizer, granularity="token", max_len=cfg.max_len)
        super().__init__(policy, tokenizer, train or cfg.train, encoder)
        self.cfg, self.chunk_size = cfg, cfg.chunk_size

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        logp = losses.sequence_logprob(self.action_logprobs(batch), batch.action_mask)
        length = batch.action_mask.sum(-1)
        n = logp.shape[0] // 2
        loss, stats = losses.simpo_loss(logp[:n], logp[n:], length[:n], length[n:], beta=self.cfg.beta,
                                        gamma=self.cfg.gamma)
        return {"loss": loss, **stats}
