"""DeepSpeed engine states load weights_only; run by tests/test_damaged_state.py::

    DS_ACCELERATOR=cpu python tests/ds_state.py OUT

One process (a world of one), ZeRO-2: trains 2 steps, saves an in-stage checkpoint, loads it into a
fresh engine (the round trip must give the same parameters and optimizer moments), then loads copies of
it with a file replaced by a pickle that would create ``OUT/code-ran``, a file cut in half, and the
engine folder missing. Writes ``OUT/results.json``: ``round_trip``, ``payload_ran`` and each case's
error message.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oreo.checkpoint import CheckpointError, StageCheckpoints, save_trainer_state  # noqa: E402
from oreo.engine import OptimConfig, make_engine  # noqa: E402


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def engine():
    torch.manual_seed(0)
    return make_engine(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), OptimConfig(lr=0.1), backend="deepspeed",
                       total_steps=10, accumulation=1, micro_batch_size=5, zero_stage=2)


def main() -> None:
    out = Path(sys.argv[1])
    trained = engine()
    for _ in range(2):
        trained.backward(trained.ds(torch.randn(5, 4)).pow(2).mean())
        trained.step()
    source = out / "source.progress"
    save_trainer_state(source, {"policy": trained}, step=2)
    results = {}

    fresh = engine()
    step = StageCheckpoints(out / "source", {"policy": fresh}).restore()
    same = step == 2 and all(torch.equal(p, q) for p, q in zip(trained.module.parameters(), fresh.module.parameters()))
    moments = [s["exp_avg"] for s in fresh.optimizer.optimizer.state.values()]
    expected = [s["exp_avg"] for s in trained.optimizer.optimizer.state.values()]
    same = same and len(moments) == len(expected) > 0 and all(torch.equal(a, b) for a, b in zip(moments, expected))
    results["round_trip"] = "same" if same else "different"

    files = sorted((source / "policy" / "engine").glob("*.pt"))
    print("engine files:", [f.name for f in files], flush=True)
    marker = out / "code-ran"
    for case in ("payload", "truncated", "missing"):
        progress = out / "damaged" / f"{case}.progress"
        shutil.copytree(source, progress)
        if case == "payload":
            for f in progress.glob("policy/engine/*model_states.pt"):
                torch.save({"module": Payload(str(marker))}, f)
        elif case == "truncated":
            for f in progress.glob("policy/engine/*optim_states.pt"):
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        else:
            shutil.rmtree(progress / "policy" / "engine")
        try:
            StageCheckpoints(progress.with_name(case), {"policy": engine()}).restore()
            results[case] = "loaded"
        except CheckpointError as e:
            results[case] = str(e)
        print(case, "->", results[case], flush=True)
    results["payload_ran"] = marker.exists()
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
