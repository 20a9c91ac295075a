"""Why does the learned value miss V*: too little signal in the outcomes, or a model that cannot compute it?

    python experiments/countdown_value_probe.py RUN_DIR --labels vstar|outcome [--epochs 2] \
        [--states random --per-puzzle 4 --puzzles 20000]

Trains a value model (the run's value architecture, started from its SFT policy, as the ``prm`` stage does) by MSE
on every step prefix of trajectories: the run's collection (``--states collection``), or rollouts of uniformly
random legal moves, ``--per-puzzle`` on each of the first ``--puzzles`` training puzzles (``--states random``: as
many states as wanted, at no generation cost). One of two labels per step:

- ``outcome``: the trajectory's reward at every step, the Monte Carlo return that outcome-trained values (OREO's,
  a PRM from outcomes) learn from;
- ``vstar``: the oracle's V* of the prefix. A diagnostic only, never a method: if even these labels leave the
  value far from V*, the model or the data is the limit; if they bring it close, the outcome signal is.

Saves the model to ``RUN_DIR/checkpoints/probe_LABELS``, which ``experiments/countdown_values.py`` then scores
against V* next to the run's own values.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oreo.buffer import Buffer  # noqa: E402
from oreo.metrics import MetricsLogger  # noqa: E402
from oreo.models import load_policy  # noqa: E402
from oreo.run_config import read_run_config  # noqa: E402
from oreo.runtime import new_value_model  # noqa: E402
from oreo.tasks import make_task  # noqa: E402
from oreo.trainers.prm import PRMObjective  # noqa: E402


def labelled(records, task, labels: str) -> list[dict]:
    """The records with ``step_values``: the reward at every step, or V* of each prefix."""
    puzzles = {p.id: p for p in task.problems("train")}
    out = []
    for r in records:
        steps = list(r.steps)
        if not steps:
            continue
        values = ([r.reward] * len(steps) if labels == "outcome" else
                  [float(task.value_star(puzzles[r.problem_id], steps[:k])) for k in range(1, len(steps) + 1)])
        out.append(dataclasses.replace(r, step_values=values).to_dict())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--labels", choices=["outcome", "vstar"], required=True)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=None,
                    help="a fresh tiny backbone this wide (and --layers deep) instead of a copy of the SFT policy")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--states", choices=["collection", "random"], default="collection")
    ap.add_argument("--per-puzzle", type=int, default=4, help="--states random: rollouts per puzzle")
    ap.add_argument("--puzzles", type=int, default=None, help="--states random: the first N train puzzles (all)")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    cfg = read_run_config(run_dir)
    task = make_task(cfg.task)
    trajectories = (Buffer(run_dir / "buffer").load() if args.states == "collection" else
                    task.random_records(0, args.per_puzzle, args.puzzles))
    records = labelled(trajectories, task, args.labels)
    print(f"{len(records)} trajectories, {sum(len(r['steps']) for r in records)} labelled states, "
          f"{sum(r['correct'] for r in records)} solved", flush=True)
    policy, tokenizer = load_policy(str(run_dir / "checkpoints" / "sft"), dtype=cfg.model.dtype)
    train = dataclasses.replace(cfg.prm.train, epochs=args.epochs, lr=args.lr)
    value, name = None, f"probe_{args.labels}" + ("" if args.states == "collection" else
                                                   f"_random{args.per_puzzle}x{args.puzzles or 'all'}")
    if args.width:   # a fresh backbone of its own: model.value.name_or_path=tiny with these sizes
        tiny = dataclasses.replace(cfg.model.tiny, hidden_size=args.width, num_layers=args.layers,
                                   num_heads=max(1, args.width // 32), intermediate_size=3 * args.width)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, value=dataclasses.replace(cfg.model.value, name_or_path="tiny", tiny=tiny)))
        value, name = new_value_model(cfg, policy), f"{name}_w{args.width}_l{args.layers}"
    objective = PRMObjective(policy, tokenizer, cfg.prm, train, value=value)
    out = run_dir / "checkpoints" / name
    logger = MetricsLogger(out.with_name(out.name + ".logs"), wandb_cfg={"mode": "disabled"})
    info = objective.fit(records, logger=logger, out_dir=out, stage=name)
    print(f"{out}: {info}")


if __name__ == "__main__":
    main()
