"""Train a tiny model (OREO or SFT) with in-stage checkpoints; run by tests/test_resume.py::

    python tests/resume_train.py OUT --trainer oreo [--pace 0.05]

Checkpoints every 2 optimizer steps (batch 4 = 2 micro-batches of 2), 12 steps in all. With ``--pace``
it prints ``micro N`` (1-based) as micro-batch N starts and then sleeps, so the test can kill it at a
known point. A rerun resumes from ``OUT/stage.progress``; the final weights go to ``OUT/params.pt``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dist_train import TINY, records, state  # noqa: E402

import oreo.trainers.sft as sft_module  # noqa: E402
from oreo.models import load_policy  # noqa: E402
from oreo.trainers.common import TrainConfig  # noqa: E402
from oreo.trainers.oreo import OREOConfig, OREOTrainer  # noqa: E402


def paced(fn, pace: float):
    count = 0

    def wrapper(*args, **kwargs):
        nonlocal count
        count += 1
        print(f"micro {count}", flush=True)
        time.sleep(pace)
        return fn(*args, **kwargs)
    return wrapper


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--trainer", choices=["oreo", "sft"], default="oreo")
    p.add_argument("--pace", type=float, default=0.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    cfg = TrainConfig(epochs=4.0, batch_size=4, micro_batch_size=2, lr=3e-3, value_lr=3e-3, warmup_ratio=0.1,
                      save_every=2, seed=0)
    policy, tok = load_policy("tiny", tiny=TINY, seed=0)
    if args.trainer == "oreo":
        if args.pace:
            OREOTrainer.losses = paced(OREOTrainer.losses, args.pace)
        trainer = OREOTrainer(policy, tok, OREOConfig(kl_type="exact", beta=0.1, max_len=64), cfg)
        trainer.fit(records(), out_dir=out / "stage")
        params = {"policy": state(trainer.policy), "value": state(trainer.value)}
    else:
        if args.pace:
            sft_module.sft_loss = paced(sft_module.sft_loss, args.pace)
        sft_module.train_sft(policy, tok, records(), cfg, max_len=64, out_dir=out / "stage")
        params = {"policy": state(policy)}
    torch.save(params, out / "params.pt")


if __name__ == "__main__":
    main()
