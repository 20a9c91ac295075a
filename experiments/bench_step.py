"""One OREO optimisation step: oreo's trainer against the reference implementation's pass structure.

    python experiments/bench_step.py                 # CPU: small Llama, Qwen2.5-sized vocabulary
    python experiments/bench_step.py --shape qwen2.5-1.5b --dtype bfloat16 --batch 4 --seq 2048   # GPU

Same models (random weights), same batch, same optimizers, same machine; the two step functions are
interleaved (a, b, a, b, ...) after warm-up, and the medians are compared.

(a) ``oreo``: ``OREOObjective.losses`` + backward + step. The reference's per-token log-probs are
    cached once per buffer (computed here before timing, as the trainer does); the exact reverse KL
    runs one no-grad reference forward; log-probs and KL are computed chunk by chunk, at action
    positions only.
(b) ``reference structure`` (spec §9.1, published config: exact KL, no EMA): F1 no-grad policy
    forward keeping log π [B, L-1, V]; F2 value forward; F3 reference forward keeping log π_ref;
    B1 value backward; F4 policy forward (grad) with log π again; exact KL over every position from
    the kept tensors, masked afterwards; B2 policy backward. Every LM forward also computes the
    discarded full-vocabulary log_softmax + gather of ``Actor.forward`` (two log-softmaxes per
    forward, as the reference does). Logits are upcast to float32 as in HF 4.41.

Gradient checkpointing is on for the policy in both (the published config); ``--no-grad-ckpt`` turns
it off. Peak memory: on CUDA ``max_memory_allocated`` during the step; on CPU the process's peak
resident memory during the step (``VmHWM``, reset before each step via ``/proc/self/clear_refs``).
Both are reported in total and above the memory held before the step (weights, optimizer states).
On CUDA it also prints model FLOPs utilisation (nanoGPT's ``estimate_mfu`` accounting: 6·N per
trained token for policy and value, 2·N for the reference forward, plus attention), against the
GPU's dense bf16 peak (``--peak-tflops``, default 989 for an H100 SXM).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch

from oreo import losses
from oreo.batch import Batch
from oreo.engine import OptimConfig, TorchEngine
from oreo.logprobs import token_logprobs
from oreo.models import ValueModel, enable_gradient_checkpointing, hidden_states
from oreo.trainers.common import TrainConfig
from oreo.trainers.oreo import OREOConfig, OREOObjective

SHAPES = {
    # a small model whose cost is dominated, like real ones at long sequence, by the vocabulary
    "cpu-small": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=704),
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960),
}
VOCAB = 151_936


def build_model(shape: str, dtype: torch.dtype, device: torch.device, seed: int = 0, vocab: int = VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=32768, tie_word_embeddings=True,
                         attn_implementation="sdpa", **SHAPES[shape])
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def make_batch(batch: int, seq: int, device, seed: int = 0, vocab: int = VOCAB) -> Batch:
    """Random tokens; the first quarter of each row is prompt, the rest actions (token-level states)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    action = torch.zeros(batch, seq - 1, dtype=torch.bool)
    action[:, seq // 4:] = True
    state = action.clone()
    rewards = torch.randint(0, 2, (batch,), generator=g).float()
    return Batch(input_ids=ids, attention_mask=mask, action_mask=action, state_mask=state, rewards=rewards,
                 index=torch.arange(batch)).to(device)


# ------------------------------------------------------------------------- (b) the reference's structure


def actor_forward_reference(model, ids, mask):
    """``Actor.forward(..., return_output=True)`` of the reference: float32 logits, a full log_softmax
    and gather whose result is discarded, then the trainer's own full log_softmax, kept."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    _discarded = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    del _discarded
    logp_full = torch.log_softmax(logits, -1)
    logp = logp_full.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp, logp_full


def reference_structure_step(policy, value, reference, engines, batch, beta, kl_coef) -> dict:
    ids, mask = batch.input_ids, batch.attention_mask
    am, sm, rewards = batch.action_mask, batch.state_mask, batch.rewards
    with torch.no_grad():                                               # F1
        logp_old, _ = actor_forward_reference(policy, ids, mask)
    values = value(ids, mask)[:, :-1]                                   # F2
    with torch.no_grad():                                               # F3
        ref_logp, ref_full = actor_forward_reference(reference, ids, mask)
    logratio_old = (logp_old - ref_logp) * am
    value_loss = losses.value_loss(values, logratio_old, am, sm, rewards, beta=beta)
    engines["value"].backward(value_loss)                               # B1
    logp, logp_full = actor_forward_reference(policy, ids, mask)        # F4
    logratio = (logp - ref_logp) * am
    policy_loss = losses.oreo_policy_loss(logratio, values.detach(), am, sm, rewards, beta=beta)
    kl_all = (logp_full.exp() * (logp_full - ref_full)).sum(-1)         # every position, masked afterwards
    kl = losses.masked_kl_mean(kl_all, am)
    engines["policy"].backward(policy_loss + kl_coef * kl)              # B2
    del ref_full, logp_full
    for e in engines.values():
        e.step()
    return {"value_loss": value_loss.detach(), "policy_loss": policy_loss.detach(), "kl": kl.detach()}


# ------------------------------------------------------------------------------------------ (a) oreo


def oreo_step(trainer, batch, kl_coef) -> dict:
    out = trainer.losses(batch)
    trainer.engines["value"].backward(out["value_loss"])
    trainer.engines["policy"].backward(out["policy_loss"] + kl_coef * out["kl"])
    for e in trainer.engines.values():
        e.step()
    return {k: out[k].detach() for k in ("value_loss", "policy_loss", "kl")}


def setup(shape: str, dtype, device, *, batch: int, seq: int, chunk_size: int, grad_ckpt: bool, total_steps: int,
          vocab: int = VOCAB, lr: float = 1e-7):
    """Models, engines, trainer and batch shared by both step functions."""
    policy = build_model(shape, dtype, device, vocab=vocab)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    value = ValueModel.from_policy(policy).to(device)
    torch.nn.init.normal_(value.head.weight, std=0.02, generator=torch.Generator().manual_seed(0))
    if grad_ckpt:
        enable_gradient_checkpointing(policy)
    policy.train()
    value.train()
    optim = OptimConfig(lr=lr, warmup_ratio=0.0)
    engines = {"policy": TorchEngine(policy, optim, total_steps, 1), "value": TorchEngine(value, optim, total_steps, 1)}
    cfg = OREOConfig(beta=0.03, kl_type="exact", kl_coef=0.01, chunk_size=chunk_size)
    trainer = OREOObjective(policy, None, cfg, TrainConfig(), reference=reference, value=value)
    trainer.engines = engines
    data = make_batch(batch, seq, device, vocab=vocab)
    with torch.no_grad():  # oreo's cached reference log-probs (computed once per buffer, not per step)
        h = hidden_states(reference, data.input_ids, data.attention_mask)[:, :-1]
        data.ref_logprobs = token_logprobs(h, reference.get_output_embeddings(), data.input_ids[:, 1:],
                                              chunk_size=chunk_size).float()
    return policy, value, reference, engines, trainer, cfg, data


# ------------------------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory during a block: CUDA allocator statistics, or the process's peak RSS on Linux."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.before = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _status_kib("VmHWM") * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def model_flops_per_token(model, seq: int) -> float:
    """nanoGPT's estimate_mfu accounting for one forward+backward of one token: 6·N + 12·L·H·T."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="cpu-small", choices=sorted(SHAPES))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--iters", type=int, default=5, help="timed steps of each, interleaved")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--no-grad-ckpt", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100 SXM: 989)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu" and dtype == torch.bfloat16:
        print("note: bf16 on CPU is very slow; float32 is the CPU setting")

    total = args.warmup + args.iters
    policy, value, reference, engines, trainer, cfg, batch = setup(
        args.shape, dtype, device, batch=args.batch, seq=args.seq, chunk_size=args.chunk_size,
        grad_ckpt=not args.no_grad_ckpt, total_steps=2 * total)

    steps = {
        "oreo": lambda: oreo_step(trainer, batch, cfg.kl_coef),
        "reference structure": lambda: reference_structure_step(policy, value, reference, engines, batch,
                                                                cfg.beta, cfg.kl_coef),
    }
    times = {k: [] for k in steps}
    peaks = {k: [] for k in steps}
    befores = {k: [] for k in steps}
    n_tokens = args.batch * args.seq
    print(f"shape {args.shape} ({sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M params per model), "
          f"vocab {VOCAB}, {args.dtype}, batch {args.batch} x {args.seq} tokens, device {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"policy gradient checkpointing {'off' if args.no_grad_ckpt else 'on'}")
    for i in range(args.warmup + args.iters):
        for name, step in steps.items():
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)
                peaks[name].append(mem.peak)
                befores[name].append(mem.before)
            print(f"  {'warm-up' if i < args.warmup else 'step'} {i}: {name:<20} {dt:7.2f} s  "
                  f"peak {mem.peak / 2**30:6.2f} GiB", flush=True)

    rows = {}
    for name in steps:
        t = statistics.median(times[name])
        peak = max(peaks[name])
        extra = peak - statistics.median(befores[name])
        rows[name] = (n_tokens / t, peak, extra)
    print()
    print(f"{'':<22}{'tokens/s':>12}{'peak GiB':>12}{'above start GiB':>18}")
    for name, (tps, peak, extra) in rows.items():
        print(f"{name:<22}{tps:>12.1f}{peak / 2**30:>12.2f}{extra / 2**30:>18.2f}")
    (a_tps, a_peak, a_extra), (b_tps, b_peak, b_extra) = rows["oreo"], rows["reference structure"]
    print(f"ratio oreo / reference: tokens/s {a_tps / b_tps:.2f}x (target >= 1.5), peak memory {a_peak / b_peak:.2f}x "
          f"(target <= 0.6), memory above start {a_extra / b_extra:.2f}x")
    if device.type == "cuda":
        # policy fwd+bwd and value fwd+bwd: 6N each; reference forward: 2N (a third of 6N)
        flops = n_tokens * model_flops_per_token(policy, args.seq) * (1 + 1 + 1 / 3)
        for name, (tps, _, _) in rows.items():
            mfu = flops / (n_tokens / tps) / (args.peak_tflops * 1e12)
            print(f"MFU {name}: {100 * mfu:.1f}% of {args.peak_tflops:.0f} TFLOP/s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
