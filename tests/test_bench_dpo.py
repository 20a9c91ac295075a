"""experiments/bench_dpo.py compares like with like: oreo's DPO step and TRL's DPOTrainer step see the same
tokens, count the same response tokens, compute the same loss and gradients and take the same optimizer step;
and the script runs end to end. Skipped when TRL (the optional ``bench`` extra) is not installed."""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("bench_dpo", ROOT / "experiments" / "bench_dpo.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules["bench_dpo"] = bench  # its dataclass looks its module up there
SPEC.loader.exec_module(bench)

CFG = bench.BenchConfig(shape="tiny", vocab=211, pairs=3, prompt_len=6, response_len=9, chunk_size=7, lr=1e-2)
TINY = ["--shape", "tiny", "--vocab", "211", "--pairs", "2", "--prompt-len", "5", "--response-len", "7",
        "--chunk-size", "4"]


@pytest.fixture(scope="module")
def sides():
    """Both sides at step 0 (reference log-probs precomputed from the initial weights), then the policy moved
    away from the reference by the same seeded noise, so the log-ratios and the loss are not trivial."""
    out = {}
    for name, cls in bench.SIDES.items():
        side = cls(CFG, torch.device("cpu"))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in side.policy.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        out[name] = side
    return out


def test_both_sides_see_the_same_tokens_and_count_the_same_response_tokens(sides):
    ours_ids, ours_mask = sides["oreo"].batch_ids()
    trl_ids, trl_mask = sides["trl"].batch_ids()
    assert ours_ids.shape == (2 * CFG.pairs, CFG.prompt_len + CFG.response_len)
    torch.testing.assert_close(ours_ids, trl_ids, rtol=0, atol=0)
    torch.testing.assert_close(ours_mask, trl_mask, rtol=0, atol=0)  # the response tokens, EOS included
    assert int(ours_mask.sum()) == 2 * CFG.pairs * CFG.response_len


def test_same_loss_gradients_and_update_at_step_0(sides):
    losses, grads = {}, {}
    for name, side in sides.items():
        losses[name] = side.forward_backward()
        grads[name] = {k: p.grad.clone() for k, p in side.policy.named_parameters() if p.grad is not None}
    assert abs(losses["oreo"].item() - math.log(2)) > 1e-3  # the policy differs from the reference
    torch.testing.assert_close(losses["oreo"], losses["trl"], rtol=1e-5, atol=1e-6)
    assert grads["oreo"].keys() == grads["trl"].keys() and len(grads["oreo"]) > 10
    for k in grads["oreo"]:
        torch.testing.assert_close(grads["oreo"][k], grads["trl"][k], rtol=1e-4, atol=1e-6)
    for side in sides.values():
        side.optimizer_step()
    theirs = dict(sides["trl"].policy.named_parameters())
    for k, p in sides["oreo"].policy.named_parameters():  # same AdamW, clipping and schedule
        torch.testing.assert_close(p, theirs[k], rtol=1e-5, atol=1e-6)
        assert p.grad is None and theirs[k].grad is None


def test_bench_script_runs_and_prints_ratios():
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_dpo.py"), *TINY, "--reps", "1",
                           "--warmup", "0", "--steps", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio oreo / TRL: tokens/s" in proc.stdout
    assert float(proc.stdout.split("step-0 loss |oreo - TRL| = ")[1].split()[0]) < 1e-5
