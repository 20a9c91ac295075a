"""Step-APO (CPL, spec §2.4) on the plan-search trees of the buffer: step-level DPO with the MCTS
advantage gap as a margin; ``alpha`` = 0 is Step-DPO on the same pairs.

The pairs are read off every tree among the records (``oreo.search.plan_data.step_apo_pairs``): sibling
plan steps with Q > 0 against Q < 0, and one pair of solutions per node with their Q scaled by
``solution_weight`` (``baseline`` and ``kinds`` widen that: the node's own Q as the line to straddle, and a
plan step against a solution). A pair's two sequences are the prompt, the shared prefix and the step; only the
step's tokens are actions, so log-probs are summed over them alone. The frozen reference is the policy
the stage starts from (the round's SFT model), its log-probs cached as for DPO.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import Tensor

from oreo import losses
from oreo.batch import Batch
from oreo.config import above, at_least, between, one_of, validate
from oreo.search.plan_data import BASELINES, KINDS, pair_records, tree_pairs
from oreo.trainers.common import TrainConfig
from oreo.trainers.dpo import DPOObjective, Pair


@dataclass
class StepAPOConfig:
    beta: float = above(0, 0.3)                     # the reference's β
    alpha: float = at_least(0.0, 1.0)               # weight of the Q gap (0: Step-DPO)
    solution_weight: float = between(0.0, 1.0, 0.3)  # scales the Q of solution pairs (the task-specific part)
    root_children: int = at_least(2, 5)            # children of the root read for pairs (the reference's n)
    children: int = at_least(2, 3)                 # ... and of every other node
    # which siblings pair (oreo.search.plan_data): Q straddling zero (the reference) or the node's own Q; plan
    # steps with plan steps and solutions with solutions (the reference), or also a plan step with a solution
    baseline: str = one_of(BASELINES, "zero")
    kinds: str = one_of(KINDS, "same")
    solution_pairs: bool = True                     # one pair of solutions per node (false: plan-step pairs only)
    max_len: int = at_least(2, 256)
    chunk_size: int = at_least(1, 256)
    # the reference: lr 1e-6 for 3 epochs on a 7B model; the tiny model needs more
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, micro_batch_size=16, lr=3e-5))

    def __post_init__(self):
        validate(self)

    def pair_rule(self) -> dict:
        """The keyword arguments of ``plan_data.tree_pairs`` that say which siblings pair."""
        return {"solution_weight": self.solution_weight, "root_children": self.root_children,
                "children": self.children, "baseline": self.baseline, "kinds": self.kinds,
                "solution_pairs": self.solution_pairs}


class StepAPOObjective(DPOObjective):
    name = "step_apo"

    def encode(self, records: list) -> list[Pair]:
        pairs = tree_pairs(records, **self.cfg.pair_rule())
        rows = pair_records(pairs, getattr(records[0], "task", "") if records else "")
        data = self.encode_trajectories(rows, self.name)
        for e in data:   # only the step's tokens are actions: the prompt and the prefix are context
            r = self.records[e.index]
            k = r.meta["context_steps"]   # agents: the observations after those steps are context too
            context = len(self.encoder.context_ids(r.prompt, r.steps[:k], r.observations[:k])) - 1
            e.action_mask[:context] = [0] * context
            e.state_mask[:context] = [0] * context
        by_pair: dict[str, dict] = {}
        for e in data:
            r = self.records[e.index]
            by_pair.setdefault(r.meta["pair"], {})[r.meta["role"]] = e
        out = [Pair(p["chosen"], p["rejected"]) for p in by_pair.values() if len(p) == 2]
        kinds = Counter(self.records[p.chosen.index].meta["kind"] for p in out)
        print(f"{self.name}: {len(out)} step pairs ({', '.join(f'{n} of {k}' for k, n in sorted(kinds.items()))}) "
              f"from the trees of {len(records)} records", flush=True)
        return out

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Rows [0, B): chosen steps, [B, 2B): rejected ones; ``batch.rewards`` holds their Q."""
        policy = losses.sequence_logprob(self.action_logprobs(batch), batch.action_mask)
        ref = losses.sequence_logprob(batch.ref_logprobs, batch.action_mask)
        n = policy.shape[0] // 2
        loss, stats = losses.step_apo_loss(policy[:n], policy[n:], ref[:n], ref[n:], batch.rewards[:n],
                                           batch.rewards[n:], beta=self.cfg.beta, alpha=self.cfg.alpha)
        return {"loss": loss, **stats}
