"""Supervised fine-tuning: next-token loss on action tokens only (prompt and observation tokens never
get loss, whatever the padding side).

The SFT stage (teacher data) and RFT, the paper's rejection-sampling baseline (SFT on the correct
samples of the offline buffer), are this objective on different records.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from oreo.batch import Batch
from oreo.config import at_least, validate
from oreo.encode import Encoder
from oreo.logprobs import token_logprobs
from oreo.losses import sft_loss
from oreo.models import hidden_states
from oreo.trainers.common import TrainConfig, unwrap
from oreo.trainers.objective import PolicyObjective


@dataclass
class SFTConfig:
    """The ``sft`` section (teacher data) and the ``rft`` one (the buffer's correct samples)."""
    n_per_problem: int = at_least(1, 2)      # sft: teacher solutions per training problem
    max_len: int = at_least(2, 128)          # tokens; longer trajectories are dropped and counted
    chunk_size: int = at_least(1, 1024)      # rows of [tokens, vocab] logits computed at a time
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=3e-3))

    def __post_init__(self):
        validate(self)


class SFTObjective(PolicyObjective):
    name = "sft"

    def __init__(self, policy: nn.Module, tokenizer, cfg: SFTConfig, train: TrainConfig | None = None):
        super().__init__(policy, tokenizer, train or cfg.train,
                         Encoder(tokenizer, granularity="token", max_len=cfg.max_len))
        self.chunk_size = cfg.chunk_size

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        hidden = hidden_states(self.policy, batch.input_ids, batch.attention_mask)
        logp = token_logprobs(hidden[:, :-1], unwrap(self.policy).get_output_embeddings(), batch.input_ids[:, 1:],
                              chunk_size=self.chunk_size)
        return {"loss": sft_loss(logp, batch.action_mask)}
