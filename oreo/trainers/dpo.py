"""DPO (and IPO) on the offline buffer: pairs of a correct and an incorrect trajectory of the same problem.

Pairs are the product correct × incorrect per problem, at most ``max_pairs_per_prompt`` of them drawn
without replacement (seeded), as the reference built its DPO baselines (spec §4.5). Log-probabilities
are summed over action tokens only, so an agent episode's observations never count (unlike the
reference's ALFWorld DPO, spec §9.2). The frozen reference's log-probs come from the shared cache.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from torch import Tensor

from oreo import losses
from oreo.batch import Batch
from oreo.config import above, at_least, between, validate
from oreo.encode import Encoded
from oreo.trainers.common import TrainConfig
from oreo.trainers.objective import ReferenceObjective
from oreo.trajectory import Trajectory


@dataclass
class DPOConfig:
    # strength of the anchor to the reference (the paper's baseline: 0.1; 0.1 and 0.3 are below 1.0 here,
    # experiments/results/dpo_kto.md)
    beta: float = above(0, 1.0)
    label_smoothing: float = between(0, 0.5, 0.0)  # ε of conservative DPO: the share of pairs assumed mislabelled
    ipo: bool = False                             # IPO's squared loss instead of DPO's logistic one
    max_pairs_per_prompt: int = at_least(1, 6)    # the reference: 6 (Qwen 1.5B), 10 (DeepSeekMath 7B), 5 (ALFWorld)
    max_len: int = at_least(2, 128)               # tokens; longer trajectories are dropped and counted
    chunk_size: int = at_least(1, 256)            # rows of logits at a time (bench_dpo: 0.67x TRL's peak memory)
    # batch: pairs; lr 1e-4 falls below SFT (experiments/results/dpo_kto.md)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(micro_batch_size=16, lr=3e-5))

    def __post_init__(self):
        validate(self)


@dataclass
class Pair:
    chosen: Encoded
    rejected: Encoded

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def preference_pairs(data: list[Encoded], records: list[Trajectory], max_per_problem: int, seed: int) -> list[Pair]:
    """Correct × incorrect pairs of each problem (``records[e.index]`` says which), at most
    ``max_per_problem`` each, drawn without replacement with ``seed``; problems in first-seen order."""
    by_problem: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for e in data:
        r = records[e.index]
        by_problem[(r.task, r.problem_id)][0 if r.correct else 1].append(e)
    rng = random.Random(seed)
    pairs = []
    for good, bad in by_problem.values():
        product = [(g, b) for g in good for b in bad]
        pairs += [Pair(g, b) for g, b in rng.sample(product, min(max_per_problem, len(product)))]
    return pairs


class PairedObjective:
    """The examples of a pairwise objective (DPO, SimPO): ``preference_pairs`` of its trajectories, with the
    chosen ones in a batch's rows [0, B) and the rejected ones in rows [B, 2B). Mixed in before the objective
    it extends, whose ``cfg`` has ``max_pairs_per_prompt``."""

    def encode(self, records: list) -> list[Pair]:
        data = self.encode_trajectories(records, self.name)
        pairs = preference_pairs(data, self.records, self.cfg.max_pairs_per_prompt, self.train_cfg.seed)
        print(f"{self.name}: {len(pairs)} preference pairs from {len(data)} trajectories", flush=True)
        return pairs

    def collate(self, pairs: list[Pair]) -> Batch:
        return super().collate([p.chosen for p in pairs] + [p.rejected for p in pairs])


class DPOObjective(PairedObjective, ReferenceObjective):
    name = "dpo"

    def prepare(self, device) -> None:
        super().prepare(device)
        self.reference = None  # the cached log-probs are all DPO reads: free the model's memory

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        policy = losses.sequence_logprob(self.action_logprobs(batch), batch.action_mask)
        ref = losses.sequence_logprob(batch.ref_logprobs, batch.action_mask)
        n = policy.shape[0] // 2
        loss, stats = losses.dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta=self.cfg.beta,
                                      label_smoothing=self.cfg.label_smoothing, ipo=self.cfg.ipo)
        return {"loss": loss, **stats}
