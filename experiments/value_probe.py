"""Can the value model learn what the outcome depends on? A probe on a finished demo run.

``python experiments/value_probe.py runs/seeds/0`` trains only the value model (policy learning rate 0,
no KL) on the run's buffer, once per reward definition, and prints the final value loss next to the
reward variance (the loss of predicting the mean everywhere):

- ``outcome``: the buffer's reward (final answer correct), what OREO trains on;
- ``valid_steps``: 1 if every written step is correct arithmetic (process correctness);
- ``prompt_digit``: 1 if the prompt starts with 1 or 2 (a control any backbone can read).

A value loss near the variance means the value model found nothing to condition on, so OREO's
per-step credit assignment degenerates to a per-trajectory baseline.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from oreo.buffer import Buffer
from oreo.metrics import MetricsLogger, read_metrics
from oreo.models import load_policy
from oreo.tasks.arithmetic import apply_op, parse_step
from oreo.trainers.common import TrainConfig
from oreo.trainers.oreo import OREOConfig, OREOObjective


def valid_steps(record) -> float:
    steps = [parse_step(s) for s in record.steps[:-1]]
    return float(all(p is not None and apply_op(p[0], p[1], p[2]) == p[3] for p in steps))


REWARDS = {
    "outcome": lambda r: r.reward,
    "valid_steps": valid_steps,
    "prompt_digit": lambda r: float(r.prompt[0] in "12"),
}


def probe(run_dir: Path, name: str, n: int, epochs: float) -> dict:
    records = Buffer(run_dir / "buffer").load()[:n]
    rewards = [REWARDS[name](r) for r in records]
    records = [dataclasses.replace(r, reward=reward) for r, reward in zip(records, rewards)]
    mean = sum(rewards) / len(rewards)
    policy, tokenizer = load_policy(str(run_dir / "checkpoints" / "sft"))
    trainer = OREOObjective(policy, tokenizer, OREOConfig(beta=0.3, kl_type="none"),
                          TrainConfig(epochs=epochs, batch_size=32, micro_batch_size=32, lr=0.0, value_lr=1e-3,
                                      log_every=10))
    with tempfile.TemporaryDirectory() as tmp:
        trainer.fit(records, logger=MetricsLogger(tmp, wandb_cfg={"mode": "disabled"}))
        rows = read_metrics(Path(tmp) / "metrics.jsonl")
    last = rows[-5:]
    return {"reward": name, "reward_mean": mean, "reward_variance": mean * (1 - mean),
            "final_value_loss": sum(r["value_loss"] for r in last) / len(last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n", type=int, default=4000, help="trajectories from the buffer")
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    results = [probe(args.run_dir, name, args.n, args.epochs) for name in REWARDS]
    lines = ["| reward | mean | variance (loss of the mean) | value loss after training |", "|---|---|---|---|"]
    lines += [f"| {r['reward']} | {r['reward_mean']:.3f} | {r['reward_variance']:.3f} | {r['final_value_loss']:.3f} |"
              for r in results]
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results" / "value_probe.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"`python experiments/value_probe.py {args.run_dir} --n {args.n} --epochs {args.epochs}`\n\n"
                   f"{table}\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
