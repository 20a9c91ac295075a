"""``python -m oreo.cpl +experiment=cpl``: CPL's two rounds (spec §2.6), Critical Plan Step Learning.

The task answers in a plan format (``task.format=plan``: plan steps, then one solution). The plan search is
the shared MCTS with ``mcts.style=alphazero`` (PUCT over the policy's step priors, the value model's score of
each selected leaf, terminal rewards ±1, running-mean backup), and every method is an objective of the one
training loop:

- **Round 1.** SFT on the teacher's plan-format solutions → plan search with the SFT policy and a value head
  that has not been trained (as the paper's round 1) on the first ``cpl.max_problems`` training problems →
  buffer round 1 → Step-APO from the SFT model, which is also its frozen reference (``step_apo``). With
  ``cpl.baselines`` the paper's ablation trains on the same trees from the same model: Step-DPO (``alpha`` 0)
  and instance-DPO (``dpo`` on whole solution paths, right against wrong). The value model then learns the
  trees' Q at every step end (``prm`` with ``targets=q``), from the SFT policy.
- **Round 2.** Plan search with round 1's Step-APO policy and value → buffer round 2 → SFT from the base
  model on the teacher's solutions plus at most ``cpl.max_sft_paths`` right paths per problem of the round-2
  trees (the paper's R2-SFT starts from its base model on round-2 data; here the base is untrained, so the
  teacher's data stay) → Step-APO from that model: the CPL policy.

Each policy is evaluated greedily on ``evaluate.splits``; a per-round table is printed, written to run.json
and plotted to ``plots/cpl.png``. A stage whose data give less than one batch (no pair: no node whose
children's Q straddle zero) keeps the policy it started from, and run.json says why. Every stage resumes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import hydra
from omegaconf import DictConfig

from oreo.config import ConfigError
from oreo.distributed import rank_world
from oreo.iterate import report_rounds
from oreo.run_config import CONF_DIR, RunConfig, run_config, to_yaml
from oreo.search.plan_data import sft_rows


def check_cpl(cfg: RunConfig) -> None:
    """CPL needs a plan format and the AlphaZero-style search; fail before any training otherwise."""
    if cfg.task.name != "arithmetic" or getattr(cfg.task, "format", "") != "plan":
        raise ConfigError("task.format", f"CPL searches over plan steps: give a task in a plan format "
                                         f"(task=arithmetic task.format=plan), not {cfg.task.name}")
    if cfg.mcts.style != "alphazero":
        raise ConfigError("mcts.style", "CPL's plan search is mcts.style=alphazero (+experiment=cpl sets it)")
    if cfg.prm.targets != "q":
        raise ConfigError("prm.targets", "CPL's value model learns the trees' Q: prm.targets=q")


def run_cpl(cfg: RunConfig) -> list[dict]:
    from oreo.pipeline import Run

    check_cpl(cfg)
    run = Run(cfg)
    splits = list(cfg.evaluate.splits)
    rows = []

    def evaluate(round_: int, name: str, policy_dir: Path, **extra) -> Path:
        rows.append({"round": round_, "method": name, **extra, **run.evaluate(name, policy_dir)})
        if run.main:
            print(f"{name}: " + ", ".join(f"{s} {100 * rows[-1][s]:.1f}%" for s in splits), flush=True)
        return policy_dir

    sft_dir = evaluate(0, "sft", run.sft())
    policy_dir, value_dir = sft_dir, None
    for k in range(1, cfg.cpl.rounds + 1):
        stats = run.collect_trees(policy_dir, value_dir, round=k, max_problems=cfg.cpl.max_problems)
        if k == 1:
            start = sft_dir
            if cfg.cpl.baselines:
                step_dpo = dataclasses.replace(cfg.step_apo, alpha=0.0)
                out = run.train_method("step_apo", start, rounds=[k], stage="step_dpo_round1", method_cfg=step_dpo)
                evaluate(k, "step_dpo_round1", out or start)
                out = run.train_method("dpo", start, rounds=[k], stage="instance_dpo_round1",
                                       keep=lambda r: r.meta.get("finished", False))
                evaluate(k, "instance_dpo_round1", out or start)
        else:
            def round_sft_rows(k=k):
                return (run.task.sft_records(cfg.seed, cfg.sft.n_per_problem)
                        + sft_rows(run.buffer.load([k]), max_paths=cfg.cpl.max_sft_paths, seed=cfg.seed))
            start = run.train_method("sft", Path(cfg.model.name_or_path), records=round_sft_rows,
                                     stage=f"sft_round{k}")
            evaluate(k, f"sft_round{k}", start)
        policy_dir = run.train_method("step_apo", start, rounds=[k], stage=f"step_apo_round{k}") or start
        evaluate(k, f"step_apo_round{k}", policy_dir, collect_accuracy=stats["frac_correct"])
        if k < cfg.cpl.rounds:
            value_dir = run.train_method("prm", start, rounds=[k], stage=f"value_round{k}") or value_dir
    return report_rounds(run, rows, splits, "cpl")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    cfg = run_config(cfg)
    if rank_world()[0] == 0:
        print(to_yaml(cfg))
    run_cpl(cfg)


if __name__ == "__main__":
    main()
