"""experiments/gpu_check.py in its dry mode (tiny sizes, this machine's CPU): the code paths the GPU check runs,
so the prepared script never rots before a GPU comes. Every section must report, the correctness comparisons
(here the CPU against itself, and bf16 against float32) must pass, and the figures must be numbers."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "gpu_check.py"
SECTIONS = ["environment", "correctness", "oreo_step", "logprobs", "generation", "smoke", "deepspeed"]


def dry_run(out: Path, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--device", "cpu", "--out", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert (out / "gpu_check.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["sections"]) == SECTIONS
    assert (out / "gpu_check.md").read_text().startswith("# GPU check")
    assert "summary:" in proc.stdout
    return report


def numbers(rows: list[dict], *keys: str) -> list[float]:
    values = [r[k] for r in rows for k in keys]
    assert values and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values), values
    return values


def test_dry_run_reports_every_section_with_numbers(tmp_path):
    report = dry_run(tmp_path, "--skip", "deepspeed")  # the DeepSpeed section: the test below
    sections = report["sections"]
    failed = {k: (s["reason"], s["traceback"]) for k, s in sections.items() if s["status"] == "fail"}
    assert not failed, failed
    assert sections["deepspeed"]["status"] == "skipped"
    assert all(sections[k]["status"] == "pass" for k in SECTIONS[:-1])

    checks = sections["correctness"]["checks"]
    names = " ".join(c["what"] for c in checks)
    for what in ("value_loss", "oreo_policy_loss", "dpo_loss", "step_apo_loss", "chunked log-probs", "oreo float32",
                 "dpo bfloat16", "step_apo float32", "after one optimizer step"):
        assert what in names, what
    assert all(c["pass"] for c in checks)
    # the CPU against itself in float32 is exact: the comparison runs, it does not just pass loosely
    assert all(c["max_abs_diff"] == 0 for c in checks if "float32" in c["what"])
    assert any(c["max_abs_diff"] > 0 for c in checks if "bfloat16" in c["what"])

    step = sections["oreo_step"]["tables"]["OREO step"]
    assert [r["config"] for r in step] == ["checkpointing on", "checkpointing off"]
    assert all(numbers(step, "tokens_per_s", "step_s", "peak_gib"))
    assert all(r["losses_finite"] for r in step)
    logprobs = sections["logprobs"]["tables"]["log-probs, forward + backward"]
    numbers(logprobs, "seconds", "peak_above_start_gib")
    generation = sections["generation"]["tables"]["HFSampler"]
    assert all(numbers(generation, "tokens_per_s", "generated_tokens"))
    shared, unshared = generation
    assert shared["context_tokens_encoded"] < unshared["context_tokens_encoded"]
    assert sections["generation"]["values"]["identical_samples_on_off"] == 1.0  # float32: the same samples
    smoke = sections["smoke"]["tables"]["python -m oreo.train +experiment=smoke"]
    assert [r["exit"] for r in smoke] == [0]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_dry_run_deepspeed_section(tmp_path):
    """ZeRO-2 and ZeRO-3 in one process against the torch engine (the first DeepSpeed start on a machine builds
    a CPU op, about a minute; tests/test_distributed.py pays it first in a full run)."""
    section = dry_run(tmp_path, "--only", "deepspeed")["sections"]["deepspeed"]
    assert section["status"] in ("pass", "fail"), section["reason"]
    assert section["status"] == "pass" or section["reason"].startswith("AssertionError: logged values differ")
    checks = section["checks"]
    numbers(section["tables"]["logged per step"], "value_loss", "policy_loss", "policy_grad_norm")
    for run in ("zero2", "zero3, no accumulation"):
        mine = [c for c in checks if c["what"].startswith(run + " step")]
        assert len(mine) == 15 and all(c["pass"] for c in mine), [c for c in mine if not c["pass"]]
    zero3 = [c for c in checks if c["what"].startswith("zero3 step")]
    assert len(zero3) == 15
    if not all(c["pass"] for c in zero3):
        pytest.xfail("ZeRO-3 with gradient accumulation in one process logs other losses and gradient norms than "
                     "the torch engine (a bug found by this check; ZeRO-3 without accumulation matches)")
