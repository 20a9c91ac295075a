"""A prepared GPU check: every CUDA path of oreo, with its figures, in under 8 minutes on one H100 or H200.

    python experiments/gpu_check.py --out DIR          # on the GPU (experiments/README.md, "GPU check")
    python experiments/gpu_check.py --dry --out DIR    # tiny sizes on this machine's device: the same code paths

Sections, in order; each passes, fails or is skipped with a reason, and a failure (or a crash, whose traceback
is recorded) never stops the sections after it. Each has a time budget, and all of them one total budget:

- ``environment``: the device, the peak FLOP/s used for MFU, the package versions.
- ``correctness``: the pure losses of ``oreo/losses.py`` (OREO value and policy, DPO, Step-APO, k3) and the
  chunked log-probs with the exact KL, values and gradients; then one real step of the OREO, DPO and Step-APO
  objectives (the trainers' ``losses``, ``backward`` and, for OREO, ``TorchEngine.step``) on a small Qwen2 model.
  The device in float32 must equal the CPU in float32 within a tight tolerance, and in bfloat16 within a looser
  one (both printed with every comparison).
- ``oreo_step``: one bf16 OREO optimisation step (policy, value model, cached reference log-probs, exact KL) on a
  model of Qwen2.5-1.5B's shape with random weights: tokens/s, MFU, peak memory, gradient checkpointing on/off.
- ``logprobs``: ``oreo.logprobs.token_logprobs`` (chunked) against the naive full-vocabulary log-softmax, forward
  and backward: time and peak memory.
- ``generation``: ``HFSampler`` on GSM8K-length prompts (150-250 tokens), 8 samples each, shared prefixes on/off.
- ``smoke``: ``python -m oreo.train +experiment=smoke`` on the device (float32, and bfloat16 on a GPU).
- ``deepspeed``: the OREO trainer on DeepSpeed ZeRO-2 and ZeRO-3 (one process; with gradient accumulation, and
  ZeRO-3 also without) logs the losses and gradient norms of the torch engine, step by step. Last, since it
  leaves a process group behind.

Writes ``gpu_check.json``, ``gpu_check.md`` and ``gpu_check.log`` into ``--out`` after every section, so a run
cut short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import copy
import faulthandler
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch
from bench_step import PeakMemory, make_batch, model_flops_per_token, oreo_step
from torch import nn

from oreo import losses
from oreo.batch import Batch
from oreo.engine import OptimConfig, TorchEngine
from oreo.logprobs import token_logprobs, token_logprobs_and_reverse_kl
from oreo.models import ValueModel, enable_gradient_checkpointing, hidden_states
from oreo.trainers.common import TrainConfig
from oreo.trainers.dpo import DPOConfig, DPOObjective
from oreo.trainers.oreo import OREOConfig, OREOObjective
from oreo.trainers.step_apo import StepAPOConfig, StepAPOObjective

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30

# Qwen2.5-1.5B's config.json, written out (no download); random weights
QWEN2_5_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                    num_attention_heads=12, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                    bos_token_id=151643, eos_token_id=151643)
SMALL = dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096)
TINY = dict(SMALL, vocab_size=1024, hidden_size=64, intermediate_size=128)

SIZES = {
    "full": dict(
        loss_batch=(8, 512), lp_rows=512,                      # correctness: pure losses, chunked log-probs
        objective_model=SMALL, objective_batch=(4, 64),         # correctness: one objective step
        step_model=QWEN2_5_1_5B, warmup=1, iters=3,             # oreo_step: (label, batch, seq, checkpointing)
        step_configs=[("checkpointing on", 8, 512, True), ("checkpointing off", 8, 512, False),
                      ("checkpointing on, the reference's 4 x 2048", 4, 2048, True)],
        logprob_rows=8192, logprob_model=QWEN2_5_1_5B, chunk_size=1024,
        gen_model=QWEN2_5_1_5B, gen_prompts=16, gen_samples=8, gen_prompt_len=(150, 250), gen_new_tokens=128,
        gen_reps=2, total_budget=400.0),
    "dry": dict(
        loss_batch=(4, 64), lp_rows=128,
        objective_model=TINY, objective_batch=(4, 32),
        step_model=TINY, warmup=1, iters=2,
        step_configs=[("checkpointing on", 2, 64, True), ("checkpointing off", 2, 64, False)],
        logprob_rows=256, logprob_model=TINY, chunk_size=64,
        gen_model=TINY, gen_prompts=2, gen_samples=4, gen_prompt_len=(20, 30), gen_new_tokens=8,
        gen_reps=1, total_budget=300.0),
}
# seconds each section may take at most (on a GPU; expected about half); the total budget caps them all, and a
# watchdog ends a run still going a minute after it: under 8 minutes with the imports
BUDGETS = {"environment": 20, "correctness": 60, "oreo_step": 120, "logprobs": 40, "generation": 60, "smoke": 90,
           "deepspeed": 75}

# Tolerances: rtol of the largest |difference| against the largest |value| (scalars: against the value itself),
# and for bf16 gradients the cosine similarity with the float32 CPU gradient.
# (float32 against float64 on a CPU, for scale: pure losses 2e-6, objectives' losses 5e-6 and gradients 7e-6)
FP32_LOSS_RTOL = 2e-5      # the pure loss functions: only reduction orders differ
FP32_MODEL_RTOL = 1e-4     # through a model: matmul kernels differ
FP32_GRAD_RTOL = 1e-3      # model gradients, after a backward through every layer
FP32_AFTER_RTOL = 1e-3     # losses after one AdamW step (its first step moves near-zero gradients by about ±lr)
BF16_RTOL = 1e-2           # bf16 inputs against float32 on the CPU (measured on a CPU: < 1e-3)
BF16_MODEL_RTOL = 5e-2     # bf16 weights (on a CPU: < 3e-3)
BF16_COSINE = 0.99         # bf16 gradients (on a CPU: > 0.9999)


class Skip(Exception):
    """A section that cannot run here (its reason is recorded)."""


class Section:
    def __init__(self, name: str, budget: float):
        self.name, self.budget, self.start = name, budget, time.perf_counter()
        self.status, self.reason, self.traceback, self.seconds = "running", None, None, None
        self.checks: list[dict] = []     # comparisons with a tolerance
        self.tables: dict[str, list[dict]] = {}
        self.values: dict = {}
        self.headline = ""

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def check(self, what: str, ref, got, *, rtol: float | None, cosine: float | None = None,
              atol: float = 0.0) -> bool:
        """Compare ``got`` with ``ref`` (numbers or tensors): max |got − ref| <= atol + rtol·max |ref| (unless
        ``rtol`` is None) and the cosine similarity >= ``cosine`` (if given). Recorded either way."""
        ref_t = torch.as_tensor(ref).double().cpu().flatten()
        got_t = torch.as_tensor(got).double().cpu().flatten()
        scale = float(ref_t.abs().max()) if ref_t.numel() else 0.0
        diff = float((got_t - ref_t).abs().max()) if ref_t.numel() else 0.0
        ok = math.isfinite(diff) and (rtol is None or diff <= atol + rtol * scale)
        tolerance = [] if rtol is None else [f"rel <= {rtol:g}" + (f" + {atol:g}" if atol else "")]
        row = {"what": what, "reference": float(ref_t[0]) if ref_t.numel() == 1 else None, "max_abs_diff": diff,
               "rel_diff": diff / scale if scale else diff, "cosine": None}
        if cosine is not None:
            row["cosine"] = float(torch.nn.functional.cosine_similarity(got_t, ref_t, dim=0)) if ref_t.numel() else 1.0
            tolerance.append(f"cosine >= {cosine:g}")
            ok = ok and row["cosine"] >= cosine
        row["tolerance"] = ", ".join(tolerance)
        row["pass"] = bool(ok)
        self.checks.append(row)
        if not ok:
            log(f"    MISMATCH {what}: max|diff| {diff:.3g} ({row['tolerance']})")
        return ok

    def as_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "seconds": self.seconds, "budget_s": self.budget,
                "headline": self.headline, "checks": self.checks, "tables": self.tables, "values": self.values,
                "traceback": self.traceback}


# ------------------------------------------------------------------------------------------------ output

_LOG: list[str] = []
_T0 = time.perf_counter()


def log(msg: str) -> None:
    line = f"[{time.perf_counter() - _T0:6.1f}s] {msg}"
    _LOG.append(line)
    print(line, flush=True)


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["total_s"] = round(time.perf_counter() - _T0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    (out / "gpu_check.log").write_text("\n".join(_LOG) + "\n")


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6f}" if 0.99 < v < 1 else f"{v:.4g}"  # cosine similarities
    return "" if v is None else str(v)


def _table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return lines + [""]


def markdown(report: dict) -> str:
    env = report["sections"].get("environment", {}).get("values", {})
    sizes = "DRY RUN (tiny sizes)" if report["dry"] else "full sizes"
    versions = f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}"
    lines = ["# GPU check (`experiments/gpu_check.py`)", "",
             f"Device: {env.get('device_name', '?')} ({report['device']}); {sizes}; {versions}; {report['started']}; "
             f"{report.get('total_s', '?')} s in all.", "",
             "| section | status | seconds | result |", "|---|---|---|---|"]
    for name, s in report["sections"].items():
        lines.append(f"| {name} | {s['status']} | {_fmt(s['seconds'])} | {s['reason'] or s['headline']} |")
    lines.append("")
    for name, s in report["sections"].items():
        lines += [f"## {name}: {s['status']}", ""]
        if s["reason"]:
            lines += [s["reason"], ""]
        for k, v in s["values"].items():
            multiline = isinstance(v, str) and "\n" in v  # a failed command's output
            lines += [f"{k}:", "", "```", v.rstrip(), "```", ""] if multiline else [f"- {k}: {_fmt(v)}"]
        lines.append("")
        if s["checks"]:
            lines += _table(s["checks"])
        for title, rows in s["tables"].items():
            lines += [f"{title}:", ""] + _table(rows)
        if s["traceback"]:
            lines += ["```", s["traceback"].rstrip(), "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ helpers


def qwen2(shape: dict, *, device, dtype, seed: int = 0):
    """A Qwen2 causal LM of ``shape`` with random weights, built on ``device`` (fast on a GPU)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, attn_implementation="sdpa")
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cached_ref_logprobs(reference, data: Batch, chunk_size: int) -> torch.Tensor:
    """The reference's per-token log-probs, computed once as the trainers cache them."""
    with torch.no_grad():
        h = hidden_states(reference, data.input_ids, data.attention_mask)[:, :-1]
        return token_logprobs(h, reference.get_output_embeddings(), data.input_ids[:, 1:],
                              chunk_size=chunk_size).float()


def flat_grad(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten().cpu() for p in module.parameters() if p.grad is not None])


# ------------------------------------------------------------------------------------------------ sections


def environment(ctx, sec: Section) -> None:
    v = sec.values
    v["python"] = platform.python_version()
    v["torch"] = torch.__version__
    v["cuda_available"] = torch.cuda.is_available()
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        v["device_name"] = props.name
        v["device_memory_gib"] = round(props.total_memory / GiB, 1)
        v["multiprocessors"] = props.multi_processor_count
        v["cuda_runtime"] = torch.version.cuda
    else:
        v["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    v["train_dtype"] = str(ctx.dtype).replace("torch.", "")
    v["peak_flops_for_mfu"] = ctx.peak_flops
    v["peak_flops_source"] = ctx.peak_source
    for name in ("transformers", "tokenizers", "huggingface_hub", "accelerate", "peft", "safetensors", "numpy",
                 "datasets", "pyarrow", "fsspec", "hydra-core", "omegaconf", "deepspeed", "pydantic", "triton"):
        try:
            v[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            v[name] = "not installed"
    v["flash_attn"] = importlib.util.find_spec("flash_attn") is not None
    sec.headline = f"{v['device_name']}, torch {v['torch']}, transformers {v['transformers']}"


def correctness(ctx, sec: Section) -> None:
    torch.set_float32_matmul_precision("highest")  # no TF32 in the float32 comparisons
    dev, S = ctx.device, ctx.sizes
    sec.values["device_vs"] = f"{dev} against cpu (float32 reference)"
    loss_functions(ctx, sec, *S["loss_batch"])
    chunked_logprobs(ctx, sec, S["lp_rows"])
    models = objective_models(S["objective_model"])
    batch = make_batch(*S["objective_batch"], "cpu", vocab=S["objective_model"]["vocab_size"])
    for name in ("oreo", "dpo", "step_apo"):
        log(f"  objective {name}: cpu float32, {dev} float32, {dev} bfloat16")
        ref = objective_step(name, models, batch, torch.device("cpu"), torch.float32)
        for dtype in (torch.float32, torch.bfloat16):
            got = objective_step(name, models, batch, dev, dtype)
            tag = f"{name} {str(dtype)[6:]}"
            bf16 = dtype == torch.bfloat16
            for k in ref["losses"]:
                sec.check(f"{tag}: {k}", ref["losses"][k], got["losses"][k],
                          rtol=BF16_MODEL_RTOL if bf16 else FP32_MODEL_RTOL, atol=1e-6)
            for k in ref["grads"]:
                sec.check(f"{tag}: {k} gradient", ref["grads"][k], got["grads"][k],
                          rtol=None if bf16 else FP32_GRAD_RTOL, cosine=BF16_COSINE if bf16 else None)
            if not bf16:
                for k in ref["after"]:
                    sec.check(f"{tag}: {k} after one optimizer step", ref["after"][k], got["after"][k],
                              rtol=FP32_AFTER_RTOL, atol=1e-6)
    failed = [c["what"] for c in sec.checks if not c["pass"]]
    sec.headline = f"{len(sec.checks) - len(failed)} of {len(sec.checks)} comparisons within tolerance"
    if failed:
        raise AssertionError(f"{len(failed)} comparisons out of tolerance: {', '.join(failed)}")


def loss_inputs(B: int, T: int) -> dict:
    g = torch.Generator().manual_seed(1)
    am = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        am[b, T // 4 + b: T - 2 * b] = True  # ragged rows, some padding at the end
    step = am.clone()
    step[:, ::7] = False  # a step-level mask: fewer states than actions
    return {"logratio": 0.1 * torch.randn(B, T, generator=g), "values": 0.5 + 0.3 * torch.randn(B, T, generator=g),
            "policy_lp": -2 + 0.5 * torch.randn(2 * B, T, generator=g),
            "ref_lp": -2 + 0.5 * torch.randn(2 * B, T, generator=g),
            "q": torch.randn(2 * B, generator=g), "rewards": torch.randint(0, 2, (B,), generator=g).float(),
            "am": am, "am2": torch.cat([am, am]), "sm": am, "sm_step": step & am}


def loss_values(x: dict, device, dtype) -> dict:
    """Each pure loss on ``device`` with its float inputs in ``dtype``: (loss, gradients of its inputs)."""
    t = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in x.items()}
    B = t["rewards"].shape[0]

    def run(fn, *leaves):
        leaves = [t[k].clone().requires_grad_(True) for k in leaves]
        loss = fn(*leaves)
        loss = loss[0] if isinstance(loss, tuple) else loss
        grads = torch.autograd.grad(loss, leaves)
        return float(loss.detach()), torch.cat([g.float().flatten().cpu() for g in grads])

    def seq(lp, ref):
        s, r = losses.sequence_logprob(lp, t["am2"]), losses.sequence_logprob(ref, t["am2"])
        return s[:B], s[B:], r[:B], r[B:]

    return {
        "value_loss": run(lambda v: losses.value_loss(v, t["logratio"], t["am"], t["sm"], t["rewards"], beta=0.1),
                          "values"),
        "oreo_policy_loss (token states)": run(lambda r: losses.oreo_policy_loss(
            r, t["values"], t["am"], t["sm"], t["rewards"], beta=0.1), "logratio"),
        "oreo_policy_loss (step states)": run(lambda r: losses.oreo_policy_loss(
            r, t["values"], t["am"], t["sm_step"], t["rewards"], beta=0.1), "logratio"),
        "k3_kl": run(lambda r: losses.k3_kl(r, t["am"]), "logratio"),
        "dpo_loss": run(lambda lp: losses.dpo_loss(*seq(lp, t["ref_lp"]), beta=0.1), "policy_lp"),
        "step_apo_loss": run(lambda lp: losses.step_apo_loss(*seq(lp, t["ref_lp"]), t["q"][:B], t["q"][B:], beta=0.3,
                                                             alpha=1.0), "policy_lp"),
    }


def loss_functions(ctx, sec: Section, B: int, T: int) -> None:
    log(f"  pure losses on [{B}, {T}]")
    x = loss_inputs(B, T)
    ref = loss_values(x, "cpu", torch.float32)
    for dtype, rtol in ((torch.float32, FP32_LOSS_RTOL), (torch.bfloat16, BF16_RTOL)):
        got = loss_values(x, ctx.device, dtype)
        cosine = BF16_COSINE if dtype == torch.bfloat16 else None
        for name, (loss, grad) in ref.items():
            sec.check(f"{name} {str(dtype)[6:]}", loss, got[name][0], rtol=rtol, atol=1e-7)
            sec.check(f"{name} {str(dtype)[6:]} gradient", grad, got[name][1], rtol=rtol if cosine is None else None,
                      cosine=cosine, atol=1e-9)


def chunked_logprobs(ctx, sec: Section, n: int) -> None:
    log(f"  chunked log-probs and exact KL on {n} rows")
    g = torch.Generator().manual_seed(2)
    H, V = 128, 2048
    x = {"hidden": torch.randn(n, H, generator=g), "ref_hidden": torch.randn(n, H, generator=g),
         "w": 0.05 * torch.randn(V, H, generator=g), "w_ref": 0.05 * torch.randn(V, H, generator=g),
         "targets": torch.randint(0, V, (n,), generator=g)}

    def run(device, dtype):
        hidden = x["hidden"].to(device, dtype, copy=True).requires_grad_(True)
        head, ref_head = (nn.Linear(H, V, bias=False, device=device, dtype=dtype) for _ in range(2))
        with torch.no_grad():
            head.weight.copy_(x["w"])
            ref_head.weight.copy_(x["w_ref"])
        lp, kl = token_logprobs_and_reverse_kl(hidden, head, x["targets"].to(device), x["ref_hidden"].to(device, dtype),
                                               ref_head, chunk_size=max(1, n // 4))
        (lp.sum() + kl.sum()).backward()
        return lp.detach(), kl.detach(), torch.cat([hidden.grad.float().flatten().cpu(),
                                                    head.weight.grad.float().flatten().cpu()])

    ref = run("cpu", torch.float32)
    for dtype in (torch.float32, torch.bfloat16):
        got = run(ctx.device, dtype)
        bf16 = dtype == torch.bfloat16
        rtol, cosine = (BF16_MODEL_RTOL, BF16_COSINE) if bf16 else (FP32_MODEL_RTOL, None)
        tag = f"chunked log-probs + KL {str(dtype)[6:]}"
        sec.check(f"{tag}: log-probs", ref[0], got[0], rtol=rtol)
        sec.check(f"{tag}: KL", ref[1], got[1], rtol=rtol, atol=1e-4 if bf16 else 1e-6)
        sec.check(f"{tag}: gradients", ref[2], got[2], rtol=None if bf16 else rtol, cosine=cosine)


def objective_models(shape: dict) -> dict:
    """The CPU float32 models every objective run starts from: policy, another reference (so the log-ratios are
    not zero) and a value model with a random head (so the values are not zero)."""
    policy = qwen2(shape, device="cpu", dtype=torch.float32, seed=0)
    reference = qwen2(shape, device="cpu", dtype=torch.float32, seed=1)
    torch.manual_seed(2)
    value = ValueModel.from_policy(policy, head_init="random")
    return {"policy": policy, "reference": reference, "value": value}


# (not the preference losses' reward margins: small differences of large sums, ill-conditioned)
LOSS_KEYS = {"oreo": ("value_loss", "policy_loss", "kl"), "dpo": ("loss",), "step_apo": ("loss",)}


def objective_step(name: str, models: dict, batch: Batch, device, dtype) -> dict:
    """One step of objective ``name`` on copies of ``models`` in ``dtype`` on ``device``, as the training loop runs
    it: losses, each engine's backward; the gradients (before the step) and the losses after it."""
    policy = copy.deepcopy(models["policy"]).to(device, dtype)
    reference = copy.deepcopy(models["reference"]).to(device, dtype)
    data = batch.to(device)
    data.ref_logprobs = cached_ref_logprobs(reference, data, 32)
    if name == "oreo":
        value = copy.deepcopy(models["value"]).to(device)
        value.backbone.to(dtype)  # the head stays float32, as in the pipeline
        trainer = OREOObjective(policy, None, OREOConfig(beta=0.1, kl_type="exact", kl_coef=0.05, chunk_size=32),
                                reference=reference, value=value)
    elif name == "dpo":
        trainer = DPOObjective(policy, None, DPOConfig(beta=0.1, chunk_size=32), reference=reference)
    else:
        data.rewards = torch.linspace(-1, 1, data.rewards.numel(), device=device)  # the siblings' Q values
        trainer = StepAPOObjective(policy, None, StepAPOConfig(beta=0.3, alpha=1.0, chunk_size=32), reference=reference)
    trainer.engines = {k: TorchEngine(m, OptimConfig(lr=1e-4, warmup_ratio=0.0), 2, 1)
                       for k, (m, _) in trainer.models().items()}
    out = trainer.losses(data)
    for k, loss in trainer.backward(out).items():
        trainer.engines[k].backward(loss)
    grads = {k: flat_grad(e.module) for k, e in trainer.engines.items()}
    for e in trainer.engines.values():
        e.step()
    with torch.no_grad():
        after = trainer.losses(data)
    keys = LOSS_KEYS[name]
    return {"losses": {k: float(out[k].detach()) for k in keys}, "grads": grads,
            "after": {k: float(after[k]) for k in keys if k.endswith("loss")}}


def speed_step(ctx, sec: Section) -> None:
    """One OREO optimisation step (bench_step's ``oreo_step``) on a Qwen2.5-1.5B-shaped model."""
    S, dev, dtype = ctx.sizes, ctx.device, ctx.dtype
    shape = S["step_model"]
    log(f"  building policy, reference and value model ({shape['num_hidden_layers']} layers, hidden "
        f"{shape['hidden_size']}, vocab {shape['vocab_size']}, {str(dtype)[6:]}) on {dev}")
    t0 = time.perf_counter()
    policy = qwen2(shape, device=dev, dtype=dtype)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    value = ValueModel.from_policy(policy, head_init="random").to(dev)
    policy.train()
    value.train()
    n_params = sum(p.numel() for p in policy.parameters())
    sec.values.update(params_per_model_m=round(n_params / 1e6, 1), build_s=round(time.perf_counter() - t0, 1),
                      dtype=str(dtype)[6:], memory=ctx.memory_kind,
                      flops_accounting="bench_step.model_flops_per_token: (6·N + 12·L·H·T) per token for policy "
                                       "and value, a third of it for the reference forward; N = policy parameters "
                                       "(tied embedding once); recomputation not counted",
                      peak_flops=ctx.peak_flops)
    optim = OptimConfig(lr=1e-7, warmup_ratio=0.0)
    steps = len(S["step_configs"]) * (S["warmup"] + S["iters"])
    cfg = OREOConfig(beta=0.03, kl_type="exact", kl_coef=0.01, chunk_size=S["chunk_size"])
    trainer = OREOObjective(policy, None, cfg, TrainConfig(), reference=reference, value=value)
    trainer.engines = {"policy": TorchEngine(policy, optim, steps, 1), "value": TorchEngine(value, optim, steps, 1)}
    rows = sec.tables["OREO step"] = []
    for label, batch, seq, ckpt in S["step_configs"]:
        if rows and sec.left() < 2 * rows[-1].get("first_step_s", 0) + 10:
            rows.append({"config": label, "error": f"skipped: {sec.left():.0f} s left of the section's budget"})
            continue
        for m in (policy, value.backbone):
            if ckpt:
                enable_gradient_checkpointing(m)
            else:
                m.gradient_checkpointing_disable()
        data = make_batch(batch, seq, dev, vocab=shape["vocab_size"])
        data.ref_logprobs = cached_ref_logprobs(reference, data, S["chunk_size"])
        n_tokens = batch * seq
        times, peaks, befores, row = [], [], [], {"config": label, "batch": batch, "seq": seq}
        try:
            for i in range(S["warmup"] + S["iters"]):
                with PeakMemory(dev) as mem:
                    t = time.perf_counter()
                    out = oreo_step(trainer, data, cfg.kl_coef)
                    sync(dev)
                    dt = time.perf_counter() - t
                if i == 0:
                    row["first_step_s"] = round(dt, 3)
                if i >= S["warmup"]:
                    times.append(dt)
                    peaks.append(mem.peak)
                    befores.append(mem.before)
                log(f"    {label}, {batch} x {seq}: step {i} {dt:.3f} s, peak {mem.peak / GiB:.2f} GiB")
            step_s = statistics.median(times)
            row.update(step_s=round(step_s, 4), tokens_per_s=round(n_tokens / step_s, 1),
                       peak_gib=round(max(peaks) / GiB, 3),
                       above_start_gib=round((max(peaks) - statistics.median(befores)) / GiB, 3),
                       losses_finite=all(math.isfinite(float(v)) for v in out.values()))
            if ctx.peak_flops:
                flops = n_tokens * model_flops_per_token(policy, seq) * (1 + 1 + 1 / 3)
                row["mfu_pct"] = round(100 * flops / step_s / ctx.peak_flops, 1)
            if not row["losses_finite"]:
                row["error"] = "non-finite losses"
        except torch.cuda.OutOfMemoryError as e:
            row["error"] = f"out of memory: {str(e).splitlines()[0]}"
            for engine in trainer.engines.values():  # the next configuration starts without this one's gradients
                engine.optimizer.zero_grad(set_to_none=True)
        rows.append(row)
        free_memory()
    errors = [f"{r['config']}: {r['error']}" for r in rows if "error" in r and not r["error"].startswith("skipped")]
    best = next((r for r in rows if "tokens_per_s" in r), None)
    if best:
        sec.headline = (f"{best['config']}: {best['tokens_per_s']:.0f} tokens/s"
                        + (f", MFU {best['mfu_pct']}%" if "mfu_pct" in best else "")
                        + f", peak {best['peak_gib']:.1f} GiB")
    if errors:
        raise AssertionError("; ".join(errors))


def logprob_memory(ctx, sec: Section) -> None:
    """Chunked log-probs (``token_logprobs``) against the naive full-vocabulary log-softmax, forward + backward."""
    S, dev, dtype = ctx.sizes, ctx.device, ctx.dtype
    H, V, N = S["logprob_model"]["hidden_size"], S["logprob_model"]["vocab_size"], S["logprob_rows"]
    g = torch.Generator().manual_seed(3)
    head = nn.Linear(H, V, bias=False, device=dev, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(0.02 * torch.randn(V, H, generator=g))
    hidden = torch.randn(N, H, generator=g).to(dev, dtype).requires_grad_(True)
    targets = torch.randint(0, V, (N,), generator=g).to(dev)

    def naive():
        logits = head(hidden).float()
        return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)

    def chunked():
        return token_logprobs(hidden, head, targets, chunk_size=S["chunk_size"])

    sec.values.update(rows=N, hidden=H, vocab=V, dtype=str(dtype)[6:], chunk_size=S["chunk_size"],
                      memory=ctx.memory_kind)
    rows = sec.tables["log-probs, forward + backward"] = []
    outputs = {}
    for name, fn in (("naive full-vocabulary", naive), ("chunked (oreo.logprobs)", chunked)):
        times, peaks = [], []
        try:
            for i in range(1 + ctx.sizes["iters"]):
                hidden.grad = head.weight.grad = None
                free_memory()
                with PeakMemory(dev) as mem:
                    t = time.perf_counter()
                    lp = fn()
                    lp.sum().backward()
                    sync(dev)
                    dt = time.perf_counter() - t
                if i:
                    times.append(dt)
                    peaks.append(mem.peak - mem.before)
            outputs[name] = lp.detach().float().cpu()
            del lp
            rows.append({"method": name, "seconds": round(statistics.median(times), 4),
                         "peak_above_start_gib": round(max(peaks) / GiB, 3)})
        except torch.cuda.OutOfMemoryError as e:
            rows.append({"method": name, "error": f"out of memory: {str(e).splitlines()[0]}"})
        log(f"    {rows[-1]}")
    if len(outputs) == 2:
        a, b = outputs.values()
        sec.check("chunked = naive log-probs", a, b, rtol=BF16_RTOL if dtype == torch.bfloat16 else FP32_MODEL_RTOL)
    if all("seconds" in r for r in rows):
        (n, c) = rows
        sec.values["memory_ratio_chunked_to_naive"] = round(c["peak_above_start_gib"] / max(n["peak_above_start_gib"],
                                                                                           1e-9), 3)
        sec.values["time_ratio_chunked_to_naive"] = round(c["seconds"] / n["seconds"], 3)
        sec.headline = (f"chunked: {sec.values['memory_ratio_chunked_to_naive']:.2f}x the naive peak memory, "
                        f"{sec.values['time_ratio_chunked_to_naive']:.2f}x its time")
    errors = [r["error"] for r in rows if "error" in r] + [c["what"] for c in sec.checks if not c["pass"]]
    if errors:
        raise AssertionError("; ".join(errors))


class IdTokenizer:
    """The sampler's view of a tokenizer for a random-weight model: ids are the text."""

    def __init__(self, eos: int):
        self.pad_token_id = self.eos_token_id = eos

    def decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, tokens))


class IdEncoder:
    def prompt_ids(self, prompt) -> list[int]:
        return list(prompt)


def generation(ctx, sec: Section) -> None:
    """``HFSampler.generate`` on GSM8K-length prompts, n samples each, shared prefixes on and off."""
    from oreo.rollout.sampler import HFSampler

    S, dev, dtype = ctx.sizes, ctx.device, ctx.dtype
    shape = S["gen_model"]
    model = qwen2(shape, device=dev, dtype=dtype).eval()
    eos = shape["vocab_size"] - 1
    g = torch.Generator().manual_seed(4)
    lo, hi = S["gen_prompt_len"]
    prompts = [torch.randint(0, eos, (int(torch.randint(lo, hi + 1, (1,), generator=g)),), generator=g).tolist()
               for _ in range(S["gen_prompts"])]
    n = S["gen_samples"]
    sec.values.update(prompts=len(prompts), samples_per_prompt=n, prompt_tokens=f"{lo}-{hi}",
                      max_new_tokens=S["gen_new_tokens"], temperature=1.0, dtype=str(dtype)[6:],
                      model=f"Qwen2 {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
                            f"vocab {shape['vocab_size']}, random weights",
                      batch=f"all {len(prompts) * n} rows in one batch")

    def sampler(share: bool):
        return HFSampler(model, IdTokenizer(eos), IdEncoder(), batch_size=len(prompts) * n,
                         max_new_tokens=S["gen_new_tokens"], share_prefix=share)

    sampler(True).generate(prompts[:2], n=2, max_new_tokens=2)  # warm-up: kernels, allocator
    runs = {True: [], False: []}
    texts = {}
    for rep in range(S["gen_reps"]):
        for share in (True, False):
            if rep and sec.left() < 2 * runs[share][-1]["seconds"] + 5:
                continue
            s = sampler(share)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            out = s.generate(prompts, n=n, temperature=1.0, seed=0)
            sync(dev)
            dt = time.perf_counter() - t
            tokens = sum(c.n_tokens for row in out for c in row)
            texts[share] = [c.text for row in out for c in row]
            runs[share].append({"seconds": dt, "tokens": tokens, "prefill_tokens": s.prefill_tokens,
                                "peak_gib": torch.cuda.max_memory_allocated() / GiB if dev.type == "cuda" else None})
            log(f"    share_prefix={share}: {tokens} tokens in {dt:.2f} s ({tokens / dt:.0f} tokens/s), "
                f"{s.prefill_tokens} context tokens encoded")
    rows = sec.tables["HFSampler"] = []
    for share, rs in runs.items():
        best = min(rs, key=lambda r: r["seconds"])
        rows.append({"share_prefix": share, "runs": len(rs), "seconds": round(best["seconds"], 3),
                     "generated_tokens": best["tokens"], "tokens_per_s": round(best["tokens"] / best["seconds"], 1),
                     "context_tokens_encoded": best["prefill_tokens"],
                     "peak_gib": None if best["peak_gib"] is None else round(best["peak_gib"], 2)})
    same = sum(a == b for a, b in zip(texts[True], texts[False])) / len(texts[True])
    sec.values["identical_samples_on_off"] = round(same, 3)  # bf16 rounding may make them differ; not a check
    on, off = rows
    sec.values["speedup_shared"] = round(on["tokens_per_s"] / off["tokens_per_s"], 3)
    sec.headline = (f"{on['tokens_per_s']:.0f} tokens/s shared, {off['tokens_per_s']:.0f} unshared "
                    f"({sec.values['speedup_shared']:.2f}x)")
    if not (on["generated_tokens"] > 0 and off["generated_tokens"] > 0):
        raise AssertionError("no tokens generated")


def smoke(ctx, sec: Section) -> None:
    """The embedded smoke pipeline end to end through ``python -m oreo.train``, on the device."""
    runs = [("float32", [])]
    if ctx.device.type == "cuda":
        runs.append(("bfloat16", ["model.dtype=bfloat16"]))
    # a process group or launcher variables left by another section would make the pipeline think it is a rank
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    rows = sec.tables["python -m oreo.train +experiment=smoke"] = []
    for label, extra in runs:
        left = sec.left()
        if left < 15:
            rows.append({"dtype": label, "error": f"skipped: {left:.0f} s left of the section's budget"})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "oreo.train", "+experiment=smoke", f"run_dir={tmp}/run",
                   f"device={ctx.device}", *extra]
            log(f"    {' '.join(cmd[1:])}")
            t = time.perf_counter()
            row = {"dtype": label, "command": " ".join(cmd[2:])}
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left)
                row.update(exit=proc.returncode, seconds=round(time.perf_counter() - t, 1))
                if proc.returncode:
                    row["error"] = f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
                    sec.values[f"{label}_stderr_tail"] = proc.stderr[-3000:]
                else:
                    accuracy = json.loads(Path(tmp, "run", "metrics.json").read_text())
                    metrics = [json.loads(x) for x in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
                    oreo = [m for m in metrics if m["stage"] == "oreo"]
                    row["stages"] = ",".join(accuracy)
                    row["oreo_last_policy_loss"] = oreo[-1]["policy_loss"] if oreo else None
                    row["oreo_tokens_per_s"] = oreo[-1].get("tokens_per_s") if oreo else None
                    if not oreo or not all(math.isfinite(oreo[-1][k]) for k in ("policy_loss", "value_loss")):
                        row["error"] = "no finite OREO losses logged"
            except subprocess.TimeoutExpired:
                row["error"] = f"timed out after {left:.0f} s"
        rows.append(row)
        log(f"    {row}")
    errors = [f"{r['dtype']}: {r['error']}" for r in rows if "error" in r]
    sec.headline = ", ".join(f"{r['dtype']} {'ok' if 'error' not in r else 'FAILED'} "
                             f"({r.get('seconds', '-')} s)" for r in rows)
    if errors:
        raise AssertionError("; ".join(errors))


def deepspeed_section(ctx, sec: Section) -> None:
    """The OREO trainer's fit on DeepSpeed ZeRO-2 and ZeRO-3 in one process against the torch engine, with
    gradient accumulation (micro-batches of 2 in batches of 4) and without (micro-batches of 4)."""
    if importlib.util.find_spec("deepspeed") is None:
        raise Skip("deepspeed is not importable here (not installed)")
    from oreo.config import EngineConfig

    runs = {"torch": (EngineConfig(), 2), "zero2": (EngineConfig(backend="deepspeed", zero_stage=2), 2),
            "zero3": (EngineConfig(backend="deepspeed", zero_stage=3), 2),
            "torch, no accumulation": (EngineConfig(), 4),
            "zero3, no accumulation": (EngineConfig(backend="deepspeed", zero_stage=3), 4)}
    logged = {}
    for name, (engine, micro) in runs.items():
        t = time.perf_counter()
        logged[name] = fit_oreo(ctx.device, engine, micro)
        log(f"    {name}: {len(logged[name])} steps in {time.perf_counter() - t:.1f} s")
    keys = ("value_loss", "policy_loss", "kl", "policy_grad_norm", "value_grad_norm")
    table = sec.tables["logged per step"] = []
    for name, rows in logged.items():
        for r in rows:
            table.append({"engine": name, "micro_batch": runs[name][1], "step": r["step"], **{k: r[k] for k in keys}})
    for name, against in (("zero2", "torch"), ("zero3", "torch"), ("zero3, no accumulation", "torch, no accumulation")):
        for a, b in zip(logged[against], logged[name], strict=True):
            for k in keys:
                sec.check(f"{name} step {a['step']}: {k}", a[k], b[k], rtol=FP32_MODEL_RTOL, atol=1e-7)
    passed = sum(c["pass"] for c in sec.checks)
    sec.headline = f"{passed} of {len(sec.checks)} logged values match the torch engine's"
    failed = sorted({c["what"].split(" step")[0] for c in sec.checks if not c["pass"]})
    if failed:
        raise AssertionError(f"logged values differ from the torch engine's: {', '.join(failed)}")


def fit_oreo(device, engine, micro_batch: int) -> list[dict]:
    """Three OREO steps (batches of 4, exact KL) of a tiny model through the training loop, on the records of
    tests/dist_train.py (the distributed tests' own check)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from dist_train import ListLogger, records

    from oreo.models import load_policy

    policy, tok = load_policy("tiny", tiny=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                              seed=0)
    train = TrainConfig(epochs=1.0, batch_size=4, micro_batch_size=micro_batch, lr=3e-3, value_lr=3e-3,
                        warmup_ratio=0.0, log_every=1, seed=0)
    policy.to(device)
    value = ValueModel.from_policy(policy).to(device)
    trainer = OREOObjective(policy, tok, OREOConfig(kl_type="exact", beta=0.1, max_len=64), train, value=value)
    logger = ListLogger()
    trainer.fit(records(), engine=engine, logger=logger)
    return logger.rows


SECTIONS = [("environment", environment), ("correctness", correctness), ("oreo_step", speed_step),
            ("logprobs", logprob_memory), ("generation", generation), ("smoke", smoke),
            ("deepspeed", deepspeed_section)]


# ------------------------------------------------------------------------------------------------ main


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "no MFU off a GPU"
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:
        return 756e12, f"{name}: H100 PCIe dense bf16 peak"
    if "H100" in name or "H200" in name:
        return 989e12, f"{name}: H100/H200 SXM dense bf16 peak (989 TFLOP/s)"
    return None, f"{name}: peak unknown (give --peak-tflops)"


def watchdog(seconds: float, out: Path, report: dict, current: dict) -> threading.Timer:
    """Past the total budget and a grace period, a hung section (a collective, a kernel) is recorded as failed,
    the tracebacks of every thread are logged, the report is written and the process exits."""
    def fire():
        sec = current.get("section")
        log(f"WATCHDOG: still running {seconds:.0f} s after the start; giving up")
        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(f, all_threads=True)
            f.seek(0)
            stacks = f.read()
        if sec is not None:
            sec.status, sec.reason, sec.traceback = "fail", "hung: the watchdog ended the run", stacks
            report["sections"][sec.name] = sec.as_dict()
        write_report(out, report)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json, .md and .log")
    p.add_argument("--dry", action="store_true", help="tiny sizes, for any device (the CPU here)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip", nargs="*", default=[], choices=[s for s, _ in SECTIONS], help="sections not to run")
    p.add_argument("--only", nargs="*", default=[], choices=[s for s, _ in SECTIONS], help="run these sections only")
    p.add_argument("--budget", type=float, help="total seconds for every section together (default: 400; dry: 300)")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak for MFU (default: by its name)")
    args = p.parse_args()
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)  # no network there: a hub lookup would hang
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if args.dry:  # tiny sizes gain nothing from threads, and lose much where another process shares the cores
            torch.set_num_threads(1)
    sizes = SIZES["dry" if args.dry else "full"]
    flops, source = peak_flops(device, args.peak_tflops)
    ctx = SimpleNamespace(device=device, sizes=sizes, dry=args.dry, peak_flops=flops, peak_source=source,
                          dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                          memory_kind="torch.cuda.max_memory_allocated" if device.type == "cuda" else
                          "process peak RSS (VmHWM)")
    budget = args.budget or sizes["total_budget"]
    report = {"script": "experiments/gpu_check.py", "argv": sys.argv[1:], "dry": args.dry, "device": str(device),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_s": budget, "sections": {}}
    current: dict = {}
    timer = watchdog(budget + 60, args.out, report, current)
    log(f"gpu check on {device} ({'dry run, tiny sizes' if args.dry else 'full sizes'}), total budget {budget:.0f} s")
    for name, fn in SECTIONS:
        left = budget - (time.perf_counter() - _T0)
        sec = Section(name, min(BUDGETS[name], left))
        if name in args.skip or (args.only and name not in args.only):
            sec.status, sec.reason = "skipped", "not asked for (--skip / --only)"
        elif left < 10:
            sec.status, sec.reason = "skipped", f"the total budget of {budget:.0f} s is spent"
        else:
            log(f"== {name} (budget {sec.budget:.0f} s)")
            current["section"] = sec
            try:
                fn(ctx, sec)
                sec.status = "pass"
            except Skip as e:
                sec.status, sec.reason = "skipped", str(e)
            except Exception as e:  # recorded; the next section runs
                sec.status, sec.reason, sec.traceback = "fail", f"{type(e).__name__}: {e}", traceback.format_exc()
                log(sec.traceback)
            current.pop("section")
            sec.seconds = round(time.perf_counter() - sec.start, 1)
            free_memory()
        report["sections"][name] = sec.as_dict()
        log(f"== {name}: {sec.status.upper()} {sec.reason or sec.headline}")
        write_report(args.out, report)
    timer.cancel()
    log("summary:")
    for name, s in report["sections"].items():
        log(f"  {name:<12} {s['status']:<8} {_fmt(s['seconds']):>6} s  {s['reason'] or s['headline']}")
    log(f"figures: {args.out / 'gpu_check.md'} and gpu_check.json")
    write_report(args.out, report)
    return 1 if any(s["status"] == "fail" for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
