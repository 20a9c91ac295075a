"""Greedy against sampled play on the same household games: training games and held-out games.

    python experiments/household_sampling.py runs/household/0 [--policy sft] [--samples 2] [--temperature 1.0]

The collection's rollouts are sampled (T = 1) on the training games, which the SFT model was fitted on, while the
reported success is greedy on held-out games. This plays one policy both ways on both splits, so each comparison
holds the games fixed: greedy (one episode per game) and ``--samples`` sampled episodes per game. Writes
``experiments/results/household_sampling.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from oreo.rollout.episodes import run_episodes, sampled_actions
from oreo.run_config import read_run_config
from oreo.runtime import build_sampler, pick_device
from oreo.tasks import make_task


def success(task, games, sampler, *, temperature: float, repeats: int, seed: int) -> tuple[float, float]:
    """Share of won episodes, and the share that end repeating at most two distinct actions in their last 6."""
    episodes = run_episodes(task, games, sampled_actions(sampler, temperature=temperature), repeats=repeats,
                            seed=seed)
    won = sum(e.won for e in episodes) / len(episodes)
    looping = sum(not e.won and len(e.steps) >= 6 and len(set(e.steps[-6:])) <= 2 for e in episodes)
    return won, looping / len(episodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--policy", default="sft", choices=["sft", "rft", "oreo"])
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="experiments/results/household_sampling.md")
    args = ap.parse_args()

    run_dir = Path(args.run_dir)
    cfg = dataclasses.replace(read_run_config(run_dir), run_dir=str(run_dir))
    task = make_task(cfg.task)
    policy_dir = run_dir / "checkpoints" / ("oreo/policy" if args.policy == "oreo" else args.policy)
    sampler = build_sampler(cfg, policy_dir, cfg.evaluate, pick_device("auto"))

    rows = []
    for split in ("train", "test"):
        games = task.games(split)
        for label, temperature, repeats in (("greedy", 0.0, 1), (f"sampled at T={args.temperature}, "
                                                                   f"{args.samples} per game",
                                                                   args.temperature, args.samples)):
            start = time.time()
            won, looping = success(task, games, sampler, temperature=temperature, repeats=repeats, seed=args.seed)
            rows.append((split, len(games), label, won, looping, time.time() - start))
            print(rows[-1], flush=True)

    lines = [f"# Greedy against sampled play on the same household games ({args.policy} policy, {run_dir})", "",
             f"`python experiments/household_sampling.py {' '.join(sys.argv[1:])}`", "",
             "Training games are the ones SFT was fitted on and the collection samples; held-out games are the "
             "reported ones. looping: episodes lost with at most two distinct turns among their last six.", "",
             "| games | n | play | success (%) | looping (%) | wall (s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {split} | {n} | {label} | {100 * won:.1f} | {100 * loop:.1f} | {wall:.0f} |"
              for split, n, label, won, loop, wall in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
