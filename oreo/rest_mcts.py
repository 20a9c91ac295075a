"""``python -m oreo.rest_mcts rest.rounds=2``: ReST-MCTS*'s self-training (spec §1.5, Algorithm 1).

After SFT and a first collection of samples (round 0), a process value model (PRM) starts from the SFT
policy on the targets inferred from those samples (their prefix trees). Then each round k:

1. MCTS* with the latest policy and PRM on the training problems (``mcts.*``, ``rest.max_problems``) →
   buffer round k, the search trees;
2. the policy is fine-tuned from the latest one on the trees' correct solutions (the ``rft`` settings);
3. the PRM is fine-tuned from the latest one on the targets inferred from the trees (the ``prm`` settings);
4. the new policy is evaluated greedily.

A round whose trees hold no correct solution (or no target) keeps the previous policy (or PRM), and
``run.json`` says why. Every stage resumes like the others. A per-round table is printed and plotted to
``plots/rest_mcts.png``. With ``rest.value_filter`` set, the policy learns only from the correct paths whose
finished solution the guiding PRM valued at least that (the reference's ``vm_critic`` filter, 0.2), and with
``rest.min_chars`` only from responses at least that long (the reference: 50 characters).
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from oreo.distributed import rank_world
from oreo.iterate import report_rounds
from oreo.run_config import CONF_DIR, RestConfig, RunConfig, run_config, to_yaml
from oreo.stages import StageId
from oreo.trajectory import Trajectory


def trace_kept(row: Trajectory, rest: RestConfig) -> bool:
    """Whether a correct search path trains the policy: its response is at least ``rest.min_chars`` long and,
    with ``rest.value_filter`` set, the value the search gave its last node (the finished solution) reaches it."""
    if len("".join(row.steps)) < rest.min_chars:
        return False
    return rest.value_filter is None or bool(row.step_values) and row.step_values[-1] >= rest.value_filter


def run_rest_mcts(cfg: RunConfig) -> list[dict]:
    from oreo.pipeline import Run

    run = Run(cfg)
    splits = list(cfg.evaluate.splits)
    sft_dir = run.sft()
    rows = [{"round": 0, "method": "sft", **run.evaluate("sft", sft_dir)}]
    run.collect(sft_dir, round=0)
    value_dir = run.train_method(StageId("prm", 0), sft_dir, rounds=[0])
    if value_dir is None:
        raise RuntimeError("the first collection gave the process value model no targets (no problem has a correct "
                           "sample): collect more samples (collect.n) or train the SFT model longer")
    policy_dir = sft_dir
    for k in range(1, cfg.rest.rounds + 1):
        stats = run.collect_trees(policy_dir, value_dir, round=k, max_problems=cfg.rest.max_problems)
        policy_dir = run.train_method(StageId("rft", k), policy_dir, rounds=[k],
                                      keep=lambda r: trace_kept(r, cfg.rest)) or policy_dir
        value_dir = run.train_method(StageId("prm", k), policy_dir, value_dir=value_dir, rounds=[k]) or value_dir
        name = f"rest_round{k}"
        rows.append({"round": k, "method": name, "collect_accuracy": stats["frac_correct"],
                     **run.evaluate(name, policy_dir)})
        if run.main:
            print(f"round {k}: " + ", ".join(f"{s} {100 * rows[-1][s]:.1f}%" for s in splits), flush=True)
    return report_rounds(run, rows, splits, "rest_mcts")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    cfg = run_config(cfg)
    if rank_world()[0] == 0:
        print(to_yaml(cfg))
    run_rest_mcts(cfg)


if __name__ == "__main__":
    main()
