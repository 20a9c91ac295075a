"""A process value model (ReST-MCTS*'s PRM, spec §1.4): V regressed by MSE onto per-step targets.

It trains on buffer rows: search trees and the samples of each problem give ReST-MCTS*'s inferred
per-step targets (``oreo.search.process_values.target_rows``); rows that already hold a target per step
in ``step_values`` (imported process labels) are used as they are. With ``targets=q`` it learns CPL's value
instead: the MCTS Q of each step of the plan trees' root-to-solution paths (``oreo.search.plan_data``).
V of the prefix that ends with step k is read at that step's last token, where value-guided search reads
it. The model is the project's value model (a backbone and a float32 head), started from a given one (an
OREO value, an earlier round's PRM) or from the policy it is given; it may be larger than the policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from oreo import losses
from oreo.batch import Batch, collate
from oreo.config import at_least, one_of, validate
from oreo.encode import Encoded, Encoder
from oreo.models import ValueModel
from oreo.search.plan_data import q_target_rows
from oreo.search.process_values import target_rows
from oreo.trainers.common import TrainConfig, unwrap
from oreo.trainers.objective import Objective
from oreo.trajectory import Trajectory


@dataclass
class PRMConfig:
    max_len: int = at_least(2, 128)   # tokens; longer trajectories are dropped and counted
    # stages=[...,prm]: start from the policy (a copy of the SFT model, or model.value's backbone) | the run's
    # OREO value (checkpoints/oreo/value; the oreo stage must come first)
    init: str = one_of(("policy", "oreo"), "policy")
    # the per-step targets: inferred (ReST-MCTS*'s, from search trees and the samples' prefix trees) | q (CPL's:
    # the MCTS Q of every step on the plan trees' root-to-solution paths, in [-1, 1])
    targets: str = one_of(("inferred", "q"), "inferred")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=1e-3))  # lr: the value model's

    def __post_init__(self):
        validate(self)


class PRMObjective(Objective):
    name = "prm"

    def __init__(self, policy, tokenizer, cfg: PRMConfig, train: TrainConfig | None = None, *,
                 value: ValueModel | None = None):
        """``value``: the model to train (a ``ValueModel``); default: a fresh head on a copy of ``policy``."""
        super().__init__(tokenizer, train or cfg.train, Encoder(tokenizer, granularity="step", max_len=cfg.max_len))
        self.value, self.cfg = value if value is not None else ValueModel.from_policy(policy), cfg

    def encode(self, records: list) -> list[Encoded]:
        """The target rows of ``records`` (``target_rows``), encoded; rows without a target per step are
        dropped and counted."""
        rows = [Trajectory.from_dict(r, f"record {i}") for i, r in enumerate(records)]
        data = self.encode_trajectories(target_rows(rows) if self.cfg.targets == "inferred" else q_target_rows(rows),
                                        self.name)
        kept = [e for e in data if len(self.records[e.index].step_values) == len(e.step_ends) > 0]
        if len(kept) < len(data):
            print(f"{self.name}: {len(data) - len(kept)} of {len(data)} trajectories have no per-step targets",
                  flush=True)
        self.data = kept
        return kept

    def collate(self, examples: list[Encoded]) -> Batch:
        return collate(examples, self.tokenizer.pad_token_id, self.train_cfg.padding_side,
                       step_targets=[self.records[e.index].step_values for e in examples])

    def models(self):
        return {"value": (self.value, self.train_cfg.lr)}

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        values = self.value(batch.input_ids, batch.attention_mask)
        targets = batch.value_targets
        has = ~targets.isnan()
        return {"loss": losses.process_value_loss(values, targets),
                "value_mean": values.detach()[has].mean(), "target_mean": targets[has].mean()}

    def backward(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"value": out["loss"]}

    def save(self, folder: Path) -> None:
        unwrap(self.value).save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
