"""experiments/bench_step.py compares like with like: its re-created reference pass structure computes
the same losses and gradients as oreo's trainer, and the script runs end to end."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("bench_step", ROOT / "experiments" / "bench_step.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)
bench.SHAPES["test-tiny"] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=64)


def _run(step_name: str):
    policy, value, reference, engines, trainer, cfg, batch = bench.setup(
        "test-tiny", torch.float32, torch.device("cpu"), batch=3, seq=24, chunk_size=7, grad_ckpt=True,
        total_steps=4, vocab=211, lr=1e-2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # policy ≠ reference, so the KL and the log-ratios are not zero
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    grads = {}
    for name, engine in engines.items():
        step = engine.step

        def recording_step(name=name, engine=engine, step=step):
            grads.update({f"{name}.{k}": p.grad.clone() for k, p in engine.module.named_parameters()
                          if p.grad is not None})
            return step()
        engine.step = recording_step
    if step_name == "oreo":
        out = bench.oreo_step(trainer, batch, cfg.kl_coef)
    else:
        out = bench.reference_structure_step(policy, value, reference, engines, batch, cfg.beta, cfg.kl_coef)
    return out, grads


def test_reference_structure_computes_the_same_losses_and_gradients_as_oreo():
    ours, ours_grads = _run("oreo")
    theirs, theirs_grads = _run("reference structure")
    for k in ("value_loss", "policy_loss", "kl"):
        assert ours[k].item() != 0.0, k
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-7)
    assert ours_grads.keys() == theirs_grads.keys() and len(ours_grads) > 10
    for k in ours_grads:
        torch.testing.assert_close(ours_grads[k], theirs_grads[k], rtol=1e-4, atol=1e-6)


def test_bench_script_runs_and_prints_ratios():
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_step.py"), "--batch", "1", "--seq", "16",
                           "--iters", "1", "--warmup", "0", "--no-grad-ckpt"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio oreo / reference: tokens/s" in proc.stdout
