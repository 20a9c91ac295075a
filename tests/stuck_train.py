"""A training loop that takes a few healthy optimizer steps inside ``StageCheckpoints`` and then hangs;
run by tests/test_checkpoint.py to check that SIGTERM still stops it::

    python tests/stuck_train.py OUT [--steps 2] [--grace S] [--hang sleep|mutex]

Every step is checkpointed (``OUT/stage.progress``). After ``--steps`` steps it prints ``stuck`` and
hangs: ``sleep`` loops on ``time.sleep`` (the main thread still runs Python signal handlers),
``mutex`` blocks for ever inside C (locks a pthread mutex it already holds: the main thread never runs
Python code again, so only the SIGTERM watchdog thread can notice the signal). ``--steps 0 --hang
none`` runs a healthy loop of 200 paced steps instead, printing ``step N``.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oreo.checkpoint import StageCheckpoints  # noqa: E402
from oreo.engine import OptimConfig, TorchEngine  # noqa: E402


def hang(how: str) -> None:
    if how == "sleep":
        while True:
            time.sleep(0.05)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (a normal mutex)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # relocking a normal mutex deadlocks; the GIL is released meanwhile


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--grace", type=float, default=None)
    p.add_argument("--hang", choices=["sleep", "mutex", "none"], default="sleep")
    args = p.parse_args()
    torch.manual_seed(0)
    engine = TorchEngine(nn.Linear(4, 2), OptimConfig(lr=0.1), total_steps=1000, accumulation=1)
    total = 200 if args.hang == "none" else 1000
    with StageCheckpoints(Path(args.out) / "stage", {"policy": engine}, every=1, stage="stuck",
                          sigterm_grace=args.grace) as ckpt:
        start = ckpt.restore()
        for step in range(start, total):
            engine.backward(engine.module(torch.randn(3, 4)).pow(2).mean())
            engine.step()
            if args.hang == "none":
                print(f"step {step + 1}", flush=True)
                time.sleep(0.05)
            ckpt.step_done(step + 1, total)
            if args.hang != "none" and step + 1 - start >= args.steps:
                print("stuck", flush=True)
                hang(args.hang)


if __name__ == "__main__":
    main()
