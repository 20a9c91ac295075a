"""``python -m oreo.cpl +experiment=cpl``: CPL's two rounds (spec §2.6), Critical Plan Step Learning.

The task answers in a plan format (``task.format=plan``: plan steps, then one solution), or is an agent task whose
turns are the plan steps (``+experiment=cpl_household``: the game's end is the terminal child). The plan search is
``oreo.search.mcts.PlanSearch``, ``mcts.style=alphazero`` (PUCT over the policy's step priors, the value model's
score of each selected leaf, terminal rewards ±1, running-mean backup), and every method is an objective of the one
training loop:

- **Round 1.** With ``cpl.initial_sft`` (the embedded task): SFT on the teacher's plan-format solutions, and
  the plan search with that model; without it (GSM8K/MATH, the paper's setting): the plan search with the base
  model and its few-shot prompt, then SFT from the base on at most ``cpl.max_sft_paths`` right paths per
  problem. The search runs on the first ``cpl.max_problems`` training problems with a value head that has not
  been trained (as the paper's round 1: tanh of a random head), or the trained value ``cpl.value`` → buffer
  round 1 → Step-APO from the round's SFT model, which is also its frozen reference (``step_apo``). With
  ``cpl.baselines`` the paper's ablation trains on the same trees from the same model: Step-DPO (``alpha`` 0)
  and instance-DPO (``dpo`` on whole solution paths, right against wrong). The value model then learns the
  trees' Q at every step end (``prm`` with ``targets=q``).
- **Round 2.** Plan search with round 1's Step-APO policy and value → buffer round 2 → SFT from the base
  model on the round-2 paths (with ``cpl.initial_sft``, plus the teacher's solutions: the base here is
  untrained, unlike the paper's) → Step-APO from that model: the CPL policy.

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
from oreo.models import VALUE_HEAD_FILE
from oreo.run_config import CONF_DIR, RunConfig, run_config, to_yaml
from oreo.search.plan_data import sft_rows
from oreo.stages import StageId
from oreo.tasks import task_kind


def check_cpl(cfg: RunConfig) -> None:
    """CPL needs a plan format and the AlphaZero-style search; fail before any training otherwise."""
    if getattr(cfg.task, "format", "") != "plan" and task_kind(cfg.task.name) != "agent":
        raise ConfigError("task.format", f"CPL searches over plan steps: give a task in a plan format "
                                         f"(task.format=plan; arithmetic, countdown, gsm8k or math) or an agent task "
                                         f"(household, alfworld: a turn is a plan step), not {cfg.task.name}")
    if cfg.mcts.style != "alphazero" or cfg.mcts.selection != "puct":
        raise ConfigError("mcts.style", "CPL's plan search is mcts.style=alphazero with mcts.selection=puct "
                                        "(+experiment=cpl sets both)")
    if cfg.sampler.backend == "vllm":
        raise ConfigError("sampler.backend", "CPL's step priors are read off the policy's log-probs, which needs "
                                             "sampler.backend=hf")
    if cfg.prm.targets != "q":
        raise ConfigError("prm.targets", "CPL's value model learns the trees' Q: prm.targets=q")
    value = Path(cfg.cpl.value) if cfg.cpl.value is not None else None
    if value is not None and not ((value / VALUE_HEAD_FILE).exists() and (value / "config.json").exists()):
        raise ConfigError("cpl.value", f"{value}: not a value model with its own backbone (config.json and "
                                       f"{VALUE_HEAD_FILE}); give an OREO run's checkpoints/oreo/value (without "
                                       f"oreo.shared_backbone), a PRM, or a CPL run's checkpoints/value_round1")


def run_cpl(cfg: RunConfig) -> list[dict]:
    from oreo.pipeline import Run

    check_cpl(cfg)
    run = Run(cfg)
    splits = list(cfg.evaluate.splits)
    base = Path(cfg.model.name_or_path)
    rows = []

    def evaluate(round_: int, stage: StageId, policy_dir: Path, **extra) -> Path:
        name = stage.name
        rows.append({"round": round_, "method": name, **extra, **run.evaluate(name, policy_dir)})
        if run.main:
            print(f"{name}: " + ", ".join(f"{s} {100 * rows[-1][s]:.1f}%" for s in splits), flush=True)
        return policy_dir

    def round_sft(k: int) -> Path:
        """SFT from the base model on the round's right paths (and the task's own solutions, with initial_sft)."""
        def records():
            teacher = run.task.sft_records(cfg.seed, cfg.sft.n_per_problem) if cfg.cpl.initial_sft else []
            return teacher + sft_rows(run.buffer.load([k]), max_paths=cfg.cpl.max_sft_paths, seed=cfg.seed)
        # fails (NotEnoughData) when the round's search found fewer right paths than one batch
        stage = StageId("sft", k)
        return evaluate(k, stage, run.train_method(stage, base, records_fn=records))

    sft_dir = evaluate(0, StageId("sft"), run.sft()) if cfg.cpl.initial_sft else None
    policy_dir, value_dir = sft_dir or base, Path(cfg.cpl.value) if cfg.cpl.value else None
    for k in range(1, cfg.cpl.rounds + 1):
        stats = run.collect_trees(policy_dir, value_dir, round=k, max_problems=cfg.cpl.max_problems)
        start = sft_dir if k == 1 and sft_dir is not None else round_sft(k)
        if k == 1 and cfg.cpl.baselines:
            step_dpo, instance_dpo = StageId("step_dpo", k), StageId("instance_dpo", k)
            out = run.train_method(step_dpo, start, rounds=[k], method_cfg=dataclasses.replace(cfg.step_apo, alpha=0.0))
            evaluate(k, step_dpo, out or start)
            out = run.train_method(instance_dpo, start, rounds=[k], keep=lambda r: r.meta.get("finished", False))
            evaluate(k, instance_dpo, out or start)
        step_apo = StageId("step_apo", k)
        policy_dir = run.train_method(step_apo, start, rounds=[k]) or start
        evaluate(k, step_apo, policy_dir, collect_accuracy=stats["frac_correct"])
        if k < cfg.cpl.rounds:
            value_dir = run.train_method(StageId("value", k), start, rounds=[k]) or value_dir
    return report_rounds(run, rows, splits, "cpl")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    cfg = run_config(cfg)
    if rank_world()[0] == 0:
        print(to_yaml(cfg))
    run_cpl(cfg)


if __name__ == "__main__":
    main()
