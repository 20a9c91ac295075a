"""KTO on the offline buffer: correct trajectories are desirable, incorrect ones undesirable, unpaired.

The reference point z_0 (an estimate of KL(π‖π_ref)) is taken per micro-batch, as the KTO paper and
its implementations do, from mismatched pairs: each prompt with the next example's response (rolled
by one within the micro-batch), scored by the policy and the reference without gradients, averaged
over ranks. A micro-batch of one example pairs it with itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from oreo import losses
from oreo.batch import Batch, collate
from oreo.config import above, at_least, validate
from oreo.distributed import all_reduce_scalars
from oreo.encode import Encoded
from oreo.logprobs import token_logprobs
from oreo.models import hidden_states
from oreo.trainers.common import TrainConfig
from oreo.trainers.objective import ReferenceObjective


@dataclass
class KTOConfig:
    beta: float = above(0, 1.0)   # 0.1 and 0.3 fall below SFT here (experiments/results/dpo_kto.md)
    # λ_D; null: balanced, λ_D·n_D = λ_U·n_U on the training data (the KTO paper asks for a ratio in [1, 4/3];
    # at 1 with a buffer 21% correct, KTO collapses: experiments/results/dpo_kto.md)
    desirable_weight: float | None = above(0, None)
    undesirable_weight: float = above(0, 1.0)  # λ_U
    max_len: int = at_least(2, 128)            # tokens; longer trajectories are dropped and counted
    chunk_size: int = at_least(1, 1024)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-5))

    def __post_init__(self):
        validate(self)


@dataclass
class KTOBatch:
    batch: Batch            # the examples, with their cached reference log-probs
    desirable: Tensor       # [B] bool
    mismatched: Batch       # [B] rows: prompt of example b, response of example b+1 (mod B)

    def to(self, device) -> KTOBatch:
        return KTOBatch(self.batch.to(device), self.desirable.to(device), self.mismatched.to(device))

    @property
    def n_tokens(self) -> int:
        return self.batch.n_tokens


def response_start(e: Encoded) -> int:
    """Index of the first action token of ``e``."""
    return e.action_mask.index(1) + 1


def mismatch(prompt_of: Encoded, response_of: Encoded) -> Encoded:
    """The prompt of one trajectory followed by the response (actions and observations) of another."""
    p, r = response_start(prompt_of), response_start(response_of)
    mask = prompt_of.action_mask[:p - 1] + response_of.action_mask[r - 1:]
    return Encoded(prompt_of.input_ids[:p] + response_of.input_ids[r:], mask, list(mask), 0.0, -1)


class KTOObjective(ReferenceObjective):
    name = "kto"

    def encode(self, records: list) -> list[Encoded]:
        data = self.encode_trajectories(records, self.name)
        self.desirable = {e.index: self.records[e.index].correct for e in data}  # Encoded.index → bool
        n_good = sum(self.desirable.values())
        n_bad = len(data) - n_good
        self.desirable_weight = self.cfg.desirable_weight
        if self.desirable_weight is None:
            self.desirable_weight = self.cfg.undesirable_weight * n_bad / max(n_good, 1)
            print(f"kto: desirable_weight {self.desirable_weight:.3f} balances {n_good} desirable and {n_bad} "
                  f"undesirable examples", flush=True)
        return data

    def collate(self, examples: list[Encoded]) -> KTOBatch:
        rolled = examples[1:] + examples[:1]
        return KTOBatch(super().collate(examples), torch.tensor([self.desirable[e.index] for e in examples]),
                        collate([mismatch(a, b) for a, b in zip(examples, rolled)], self.tokenizer.pad_token_id,
                                self.train_cfg.padding_side))

    @torch.no_grad()
    def _reference_point(self, mismatched: Batch) -> Tensor:
        am = mismatched.action_mask
        policy = losses.sequence_logprob(self.action_logprobs(mismatched), am)
        hidden = hidden_states(self.reference, mismatched.input_ids, mismatched.attention_mask)[:, :-1]
        ref = token_logprobs(hidden, self.reference.get_output_embeddings(), mismatched.input_ids[:, 1:],
                             chunk_size=self.chunk_size)
        logratios = policy - losses.sequence_logprob(ref, am)
        # the same z_0 on every rank: the ranks' mean log-ratios (equal micro-batch sizes) averaged, then clamped
        mean = all_reduce_scalars({"kl": float(logratios.mean())})["kl"]
        return losses.kto_reference_point(logratios.new_tensor([mean]))

    def losses(self, kb: KTOBatch) -> dict[str, Tensor]:
        batch = kb.batch
        policy = losses.sequence_logprob(self.action_logprobs(batch), batch.action_mask)
        ref = losses.sequence_logprob(batch.ref_logprobs, batch.action_mask)
        loss, stats = losses.kto_loss(policy, ref, kb.desirable, self._reference_point(kb.mismatched),
                                      beta=self.cfg.beta, desirable_weight=self.desirable_weight,
                                      undesirable_weight=self.cfg.undesirable_weight)
        return {"loss": loss, **stats}
