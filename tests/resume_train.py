"""Train a tiny model with one objective of the training loop and in-stage checkpoints; run by
tests/test_resume.py::

    python tests/resume_train.py OUT --objective oreo|sft|dpo|kto|prm|step_apo|simpo [--pace 0.05]

Checkpoints every 2 optimizer steps (batch 4 = 2 micro-batches of 2), 12 steps in all. With ``--pace``
it prints ``micro N`` (1-based) as micro-batch N starts and then sleeps, so the test can kill it at a
known point. A rerun resumes from ``OUT/stage.progress``; the final weights go to ``OUT/params.pt``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dist_train import TINY, records, state  # noqa: E402

from oreo.models import load_policy  # noqa: E402
from oreo.trainers.common import TrainConfig  # noqa: E402
from oreo.trainers.dpo import DPOConfig, DPOObjective  # noqa: E402
from oreo.trainers.kto import KTOConfig, KTOObjective  # noqa: E402
from oreo.trainers.oreo import OREOConfig, OREOObjective  # noqa: E402
from oreo.trainers.prm import PRMConfig, PRMObjective  # noqa: E402
from oreo.trainers.sft import SFTConfig, SFTObjective  # noqa: E402
from oreo.trainers.simpo import SimPOConfig, SimPOObjective  # noqa: E402
from oreo.trainers.step_apo import StepAPOConfig, StepAPOObjective  # noqa: E402

# every objective of the loop, each on data for 3 optimizer steps per epoch (DPO: 24 records make 12 pairs)
OBJECTIVES = {
    "sft": (12, lambda policy, tok, cfg: SFTObjective(policy, tok, SFTConfig(max_len=64), cfg)),
    "oreo": (12, lambda policy, tok, cfg: OREOObjective(policy, tok, OREOConfig(kl_type="exact", beta=0.1,
                                                                                 max_len=64), cfg)),
    "dpo": (24, lambda policy, tok, cfg: DPOObjective(policy, tok, DPOConfig(beta=0.1, max_len=64), cfg,
                                                       reference=copy.deepcopy(policy))),
    "kto": (12, lambda policy, tok, cfg: KTOObjective(policy, tok, KTOConfig(beta=0.1, max_len=64), cfg,
                                                       reference=copy.deepcopy(policy))),
    "prm": (12, lambda policy, tok, cfg: PRMObjective(policy, tok, PRMConfig(max_len=64), cfg)),
    # 12 plan trees of one pair each
    "step_apo": (12, lambda policy, tok, cfg: StepAPOObjective(policy, tok, StepAPOConfig(max_len=64), cfg,
                                                                reference=copy.deepcopy(policy))),
    "simpo": (24, lambda policy, tok, cfg: SimPOObjective(policy, tok, SimPOConfig(max_len=64), cfg)),  # as DPO's
}


def plan_trees(n: int) -> list:
    """``n`` plan trees' rows, each with one Step-APO pair at its root (Q 0.5 against -0.5)."""
    from oreo.search.tree import Tree

    rows = []
    for i in range(n):
        tree = Tree(f"tree{i}", f"p{i}", f"{i % 7 + 1} +{3 * i % 11}\n", "t")
        for text, q in (("Plan +1\n", 0.5), (f"Plan -{i % 3 + 1}\n", -0.5)):
            tree.add(tree.root, text)[0].value = q
        rows += tree.to_trajectories()
    return rows


def with_step_targets(rows: list[dict]) -> list[dict]:
    """The records with a process target per step (k/K on a correct one, 0 on the others)."""
    return [{**r, "step_values": [(k + 1) / len(r["steps"]) * (r["reward"] == 1.0) for k in range(len(r["steps"]))]}
            for r in rows]


def paced(fn, pace: float):
    count = 0

    def wrapper(*args, **kwargs):
        nonlocal count
        count += 1
        print(f"micro {count}", flush=True)
        time.sleep(pace)
        return fn(*args, **kwargs)
    return wrapper


def train(out: Path, objective_name: str, pace: float = 0.0) -> None:
    """Train (or resume) ``objective_name`` into ``out`` on one thread; the final weights to ``out/params.pt``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(epochs=4.0, batch_size=4, micro_batch_size=2, lr=3e-3, value_lr=3e-3, warmup_ratio=0.1,
                          save_every=2, seed=0)
        policy, tok = load_policy("tiny", tiny=TINY, seed=0)
        n_records, build = OBJECTIVES[objective_name]
        objective = build(policy, tok, cfg)
        if pace:
            objective.losses = paced(objective.losses, pace)
        data = plan_trees(n_records) if objective_name == "step_apo" else records(n_records)
        objective.fit(with_step_targets(data) if objective_name == "prm" else data, out_dir=out / "stage")
        torch.save({name: state(module) for name, (module, _) in objective.models().items()}, out / "params.pt")
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default="oreo")
    p.add_argument("--pace", type=float, default=0.0)
    args = p.parse_args()
    train(Path(args.out), args.objective, args.pace)


if __name__ == "__main__":
    main()
