"""DeepSpeed ZeRO with gradient accumulation in one process trains exactly like the plain torch engine.

tests/dist_train.py (micro_batch_size=2, batch_size=4) run in a single process, without torchrun, so each
engine accumulates two micro-batches per optimizer step: OREO (policy and value engines), SFT, DPO and KTO
for 3 steps each, plus the crash-and-resume and value reload checks. tests/test_distributed.py covers ZeRO
on two ranks, where each rank has one micro-batch per step and nothing is accumulated.

The objectives call their models directly, never DeepSpeed's engine ``forward``; under ZeRO-3 that once
left every micro-batch's gradient partitions overwriting the previous ones (only the last micro-batch
counted: OREO logged a gradient norm of 0 at step 1, SFT about half of torch's). Losses, gradient norms
and final parameters must now agree with the torch engine's up to float32 rounding (the same tolerances
as tests/test_distributed.py). Each DeepSpeed run takes ~13 s, the torch run ~7 s, once DeepSpeed's CPU
op is compiled (the first DeepSpeed start on a machine, about a minute).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import METRIC_RTOL, PARAM_TOL, ROOT, SCRIPT, STEPS, _env, _max_diff, pytestmark  # noqa: F401


def _run(out: Path, *args: str) -> Path:
    env = _env()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # one process, its own world
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), *args, "--checks"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("torch"), "--engine", "torch")


# ZeRO-3 is the case that was wrong; ZeRO-2 checks that the fix leaves the other stages' accumulation alone
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_with_accumulation_in_one_process_matches_torch(torch_run, tmp_path, stage):
    # ZeRO-3: dist_train.py partitions every parameter (and checks that it did)
    zero = _run(tmp_path / f"zero{stage}", "--engine", "deepspeed", "--zero-stage", str(stage))

    single, mine = (json.loads((out / "logs_rank0.json").read_text()) for out in (torch_run, zero))
    assert [(r["stage"], r["step"]) for r in single] == STEPS
    assert [(r["stage"], r["step"]) for r in mine] == STEPS
    keys = ["value_loss", "policy_loss", "kl", "policy_grad_norm", "value_grad_norm", "policy_lr", "value_lr",
            "loss", "grad_norm", "lr"]
    for a, b in zip(single, mine):
        for k in keys:
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=METRIC_RTOL, abs=1e-7), (
                    f"{a['stage']} step {a['step']} {k}: torch engine {a[k]}, ZeRO-{stage} with accumulation {b[k]}")

    single, mine = (torch.load(out / "params.pt") for out in (torch_run, zero))
    assert _max_diff(single["initial_policy"], mine["initial_policy"]) == 0
    assert _max_diff(single["oreo_policy"], single["initial_policy"]) > 100 * PARAM_TOL  # training moved the weights
    diffs = {name: _max_diff(single[name], mine[name])
             for name in ("oreo_policy", "oreo_value", "sft_policy", "dpo_policy", "kto_policy",
                          "oreo_policy_resumed", "oreo_value_resumed")}
    print(f"max |Δparam| torch vs ZeRO-{stage} with accumulation, one process: {diffs}")
    assert all(d < PARAM_TOL for d in diffs.values()), diffs
    # a crash after step 2's checkpoint resumes from it and ends where the uninterrupted run did
    assert mine["resumed_from"] == 2
    for name in ("oreo_policy", "oreo_value"):
        assert _max_diff(mine[name], mine[f"{name}_resumed"]) < 1e-6, name
