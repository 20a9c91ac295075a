"""One DPO optimizer step: oreo's DPO objective against TRL's ``DPOTrainer``, side by side.

    python experiments/bench_dpo.py                        # CPU: small Qwen2-style model, 151,936-token vocabulary
    python experiments/bench_dpo.py --device cuda --shape qwen2.5-1.5b --dtype bfloat16 --response-len 1024

TRL is an optional benchmark dependency (``pip install -e '.[bench]'``), never a runtime one.

Both sides get the same model (a Qwen2-style causal LM with random weights, built in-process from the same
seed), the same preference pairs (random prompt tokens, chosen and rejected responses of fixed lengths ending
with EOS), the same batch (``--pairs`` pairs per optimizer step), β, the same AdamW (oreo's
``build_optimizer`` and schedule: TRL is handed them through ``optimizers=``), gradient clipping at 1.0 and
gradient checkpointing on (TRL's default; ``--no-grad-ckpt`` turns it off for both). The reference
log-probs are precomputed before timing on both sides: oreo's ``ReferenceObjective.prepare`` (its cache),
TRL's ``precompute_ref_log_probs=True``.

(a) ``oreo``: ``DPOObjective``; one step = ``collate`` → ``losses`` → ``TorchEngine.backward`` → ``step``,
    what the training loop does per micro-batch. The reference model is loaded and handed to the objective
    as the pipeline does (it keeps it after ``prepare``).
(b) ``trl``: ``DPOTrainer`` (``ref_model=None``, so no reference copy is kept); one step = the data
    collator on the batch's rows → ``trainer.training_step`` → clip the gradient norm → optimizer and
    scheduler step → ``model.zero_grad()``, the body of ``Trainer``'s inner loop for one micro-batch.

Each side runs in its own subprocess, interleaved (oreo, trl, oreo, trl, ...; ``--reps`` of each), so that
memory is measured per process. Each subprocess builds its side, runs ``--warmup`` steps (the first creates
AdamW's states) and then ``--steps`` timed steps of the same batch. Peak memory of a step: on CPU the
process's peak resident memory during the step (``VmHWM``, reset before the step through
``/proc/self/clear_refs``), in total and above the resident memory before the step; on CUDA
``torch.cuda.max_memory_allocated`` during the step. tokens/s counts every token of the batch (prompt and
response of the chosen and the rejected sequences). The table shows medians over all timed steps.
"""
from __future__ import annotations

import argparse
import atexit
import copy
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from oreo.engine import OptimConfig, TorchEngine, build_optimizer, cosine_with_warmup

# the model shapes and the peak-memory meter of experiments/bench_step.py (loaded by path: experiments/ is no package)
_SPEC = importlib.util.spec_from_file_location("bench_step", Path(__file__).resolve().with_name("bench_step.py"))
_bench_step = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_bench_step)
STEP_SHAPES, PeakMemory = _bench_step.SHAPES, _bench_step.PeakMemory

VOCAB = 151_936  # Qwen2's
SHAPES = {**STEP_SHAPES,
          # for the smoke test
          "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=64)}
PAD, EOS, UNK = 0, 1, 2  # the token ids of the benchmark's tokenizer; every other id i is the word f"t{i}"
TARGET_SPEED, TARGET_MEMORY = 1.3, 0.8


@dataclass
class BenchConfig:
    shape: str = "cpu-small"
    vocab: int = VOCAB
    dtype: str = "float32"
    pairs: int = 4
    prompt_len: int = 64
    response_len: int = 128      # EOS included
    beta: float = 0.1
    lr: float = 1e-6
    chunk_size: int = 256        # oreo's DPOConfig.chunk_size (its default)
    grad_ckpt: bool = True
    total_steps: int = 100       # the cosine schedule's length (both sides)
    seed: int = 0

    @property
    def tokens_per_step(self) -> int:
        return 2 * self.pairs * (self.prompt_len + self.response_len)


# ------------------------------------------------------------------------------- model, tokenizer, data


def build_model(cfg: BenchConfig, device):
    """A Qwen2-style causal LM with random weights (tied embeddings, as Qwen2.5-0.5B/1.5B), the same for a seed."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=cfg.vocab, max_position_embeddings=32768, tie_word_embeddings=True,
                         attn_implementation="sdpa", pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None,
                         **SHAPES[cfg.shape])
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(getattr(torch, cfg.dtype))


def build_tokenizer(vocab: int):
    """A word-level tokenizer whose ids are the benchmark's tokens: "t{i}" ↔ i, "<eos>" ↔ 1, "<pad>" ↔ 0.
    Both libraries tokenize text, so the pairs are written as words that map back to exactly their ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK, **{f"t{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def make_pairs(cfg: BenchConfig) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token ids: random tokens; each response ends with EOS."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    out = []
    for _ in range(cfg.pairs):
        prompt = torch.randint(3, cfg.vocab, (cfg.prompt_len,), generator=g).tolist()
        chosen, rejected = (torch.randint(3, cfg.vocab, (cfg.response_len - 1,), generator=g).tolist() + [EOS]
                            for _ in range(2))
        out.append((prompt, chosen, rejected))
    return out


def _text(ids: list[int]) -> str:
    return " ".join("<eos>" if i == EOS else f"t{i}" for i in ids)


def oreo_records(pairs):
    """One problem per pair, a correct (chosen) and an incorrect (rejected) finished trajectory; the encoder
    appends the EOS."""
    from oreo.trajectory import Trajectory

    records = []
    for k, (prompt, chosen, rejected) in enumerate(pairs):
        for name, ids, reward in (("c", chosen, 1.0), ("r", rejected, 0.0)):
            records.append(Trajectory(id=f"{k}{name}", task="bench", problem_id=str(k), prompt=_text(prompt),
                                      steps=[" " + _text(ids[:-1])], reward=reward))
    return records


def trl_dataset(pairs):
    """TRL's standard preference format (plain text; the responses already end with the EOS token)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [_text(p) for p, _, _ in pairs],
                              "chosen": [" " + _text(c) for _, c, _ in pairs],
                              "rejected": [" " + _text(r) for _, _, r in pairs]})


def optim_config(cfg: BenchConfig) -> OptimConfig:
    return OptimConfig(lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95), warmup_ratio=0.0, grad_clip=1.0)


# ------------------------------------------------------------------------------------------ (a) oreo


class OreoSide:
    name = "oreo"

    def __init__(self, cfg: BenchConfig, device: torch.device):
        from oreo.models import enable_gradient_checkpointing
        from oreo.trainers.common import TrainConfig
        from oreo.trainers.dpo import DPOConfig, DPOObjective

        self.policy = build_model(cfg, device)
        reference = copy.deepcopy(self.policy)  # the pipeline loads the starting checkpoint a second time
        if cfg.grad_ckpt:
            enable_gradient_checkpointing(self.policy)
        self.policy.train()
        tokenizer = build_tokenizer(cfg.vocab)
        dpo = DPOConfig(beta=cfg.beta, label_smoothing=0.0, max_len=cfg.prompt_len + cfg.response_len + 1,
                        chunk_size=cfg.chunk_size)
        self.objective = DPOObjective(self.policy, tokenizer, dpo, TrainConfig(lr=cfg.lr, seed=cfg.seed),
                                      reference=reference)
        self.examples = self.objective.encode(oreo_records(make_pairs(cfg)))
        self.engine = TorchEngine(self.policy, optim_config(cfg), cfg.total_steps, accumulation=1)
        self.objective.engines = {"policy": self.engine}
        self.device = device
        self.objective.prepare(device)  # the reference's log-probs of the data, once (before timing)

    def forward_backward(self) -> torch.Tensor:
        batch = self.objective.collate(self.examples).to(self.device)
        out = self.objective.losses(batch)
        for name, loss in self.objective.backward(out).items():
            self.objective.engines[name].backward(loss)
        return out["loss"].detach()

    def optimizer_step(self) -> None:
        self.engine.step()

    def batch_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.objective.collate(self.examples)
        return batch.input_ids, batch.action_mask


# ------------------------------------------------------------------------------------------- (b) TRL


class TRLSide:
    name = "trl"

    def __init__(self, cfg: BenchConfig, device: torch.device):
        from trl import DPOConfig, DPOTrainer

        self.policy = build_model(cfg, device)
        tokenizer = build_tokenizer(cfg.vocab)
        self.optimizer = build_optimizer(self.policy.parameters(), optim_config(cfg))
        self.scheduler = cosine_with_warmup(self.optimizer, cfg.total_steps, 0.0)
        output_dir = tempfile.mkdtemp(prefix="bench_dpo_trl_")  # nothing is written there (save_strategy="no")
        atexit.register(shutil.rmtree, output_dir, ignore_errors=True)
        args = DPOConfig(
            output_dir=output_dir, per_device_train_batch_size=cfg.pairs,
            precompute_ref_log_probs=True, beta=cfg.beta, loss_type=["sigmoid"], label_smoothing=0.0,
            max_length=None, activation_checkpointing=cfg.grad_ckpt, bf16=False, fp16=False,
            learning_rate=cfg.lr, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
            lr_scheduler_type="cosine", warmup_steps=0, max_steps=cfg.total_steps, seed=cfg.seed,
            report_to="none", save_strategy="no", logging_steps=10**9, disable_tqdm=True,
            dataloader_num_workers=0, use_cpu=device.type == "cpu")
        self.trainer = DPOTrainer(model=self.policy, ref_model=None, args=args,
                                  train_dataset=trl_dataset(make_pairs(cfg)), processing_class=tokenizer,
                                  optimizers=(self.optimizer, self.scheduler))
        # What Trainer.train() does before its loop: activation checkpointing, accelerator.prepare.
        if args.activation_checkpointing:
            self.trainer.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=args.activation_checkpointing_kwargs or None)
        self.model, self.optimizer = self.trainer.accelerator.prepare(self.trainer.model, self.optimizer)
        self.trainer.optimizer, self.trainer.lr_scheduler = self.optimizer, self.scheduler
        self.trainer.current_gradient_accumulation_steps = 1  # set per optimizer step by Trainer._run_epoch
        self.model.train()
        # the batch's rows, reference log-probs included (what the data loader yields, in dataset order)
        self.rows = [self.trainer.train_dataset[i] for i in range(cfg.pairs)]

    def forward_backward(self) -> torch.Tensor:
        inputs = self.trainer.data_collator(self.rows)
        return self.trainer.training_step(self.model, inputs)

    def optimizer_step(self) -> None:
        self.trainer.accelerator.clip_grad_norm_(self.model.parameters(), self.trainer.args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.model.zero_grad()

    def batch_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.trainer.data_collator(self.rows)
        return inputs["input_ids"], inputs["completion_mask"][:, 1:].bool()


SIDES = {"oreo": OreoSide, "trl": TRLSide}


# ------------------------------------------------------------------------------------------- measuring


def run_worker(side: str, cfg: BenchConfig, device: torch.device, warmup: int, steps: int) -> dict:
    """Build one side in this process, run warm-up and timed steps; times, peaks and losses per step."""
    t0 = time.perf_counter()
    bench = SIDES[side](cfg, device)
    setup_s = time.perf_counter() - t0
    rows = []
    for i in range(warmup + steps):
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            loss = bench.forward_backward()
            bench.optimizer_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        rows.append({"warmup": i < warmup, "seconds": dt, "peak": mem.peak, "before": mem.before,
                     "loss": float(loss)})
    return {"side": side, "setup_s": setup_s, "steps": rows}


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "transformers", "trl", "accelerate", "datasets"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--shape", default="cpu-small", choices=sorted(SHAPES))
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--pairs", type=int, default=4, help="preference pairs per optimizer step")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=128, help="tokens per response, EOS included")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--chunk-size", type=int, default=BenchConfig.chunk_size,
                   help="oreo's dpo.chunk_size (rows of logits at a time; default: DPOConfig's)")
    p.add_argument("--no-grad-ckpt", action="store_true")
    p.add_argument("--reps", type=int, default=3, help="subprocesses of each side, interleaved")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per subprocess (the first creates AdamW state)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per subprocess")
    p.add_argument("--worker", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = p.parse_args()
    cfg = BenchConfig(shape=args.shape, vocab=args.vocab, dtype=args.dtype, pairs=args.pairs,
                      prompt_len=args.prompt_len, response_len=args.response_len, beta=args.beta,
                      chunk_size=args.chunk_size, grad_ckpt=not args.no_grad_ckpt)
    device = torch.device(args.device)
    if args.worker:
        result = run_worker(args.worker, cfg, device, args.warmup, args.steps)
        print("RESULT " + json.dumps(result), flush=True)
        return

    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    where = (torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads")
    print(f"DPO step, oreo vs TRL: Qwen2-style shape {args.shape}, vocab {args.vocab}, {args.dtype}, device "
          f"{device} ({where}); {args.pairs} pairs x (prompt {args.prompt_len} + response {args.response_len}) "
          f"= {cfg.tokens_per_step} tokens per step; beta {args.beta}; AdamW lr {cfg.lr} betas (0.9, 0.95) "
          f"clip 1.0; gradient checkpointing {'on' if cfg.grad_ckpt else 'off'}; oreo chunk_size {args.chunk_size}; "
          f"precomputed reference log-probs on both sides")
    print(f"versions: {versions()}")
    print(f"{args.reps} subprocesses per side, interleaved, each {args.warmup} warm-up + {args.steps} timed steps",
          flush=True)
    results: dict[str, list[dict]] = {name: [] for name in SIDES}
    worker_args = sys.argv[1:]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    for rep in range(args.reps):
        for side in SIDES:
            proc = subprocess.run([sys.executable, __file__, *worker_args, "--worker", side], capture_output=True,
                                  text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
                raise SystemExit(f"the {side} worker failed (exit {proc.returncode})")
            res = json.loads(lines[-1][len("RESULT "):])
            results[side].append(res)
            for i, row in enumerate(res["steps"]):
                print(f"  rep {rep} {side:<5} {'warm-up' if row['warmup'] else 'step'} {i}: {row['seconds']:7.2f} s  "
                      f"peak {row['peak'] / 2**30:6.2f} GiB  above start {(row['peak'] - row['before']) / 2**30:6.2f} "
                      f"GiB  loss {row['loss']:.6f}  (setup {res['setup_s']:.1f} s)", flush=True)

    summary = {}
    for side, runs in results.items():
        timed = [row for res in runs for row in res["steps"] if not row["warmup"]]
        t = statistics.median(row["seconds"] for row in timed)
        summary[side] = {"tokens_per_s": cfg.tokens_per_step / t, "seconds": t, "n": len(timed),
                         "peak": statistics.median(row["peak"] for row in timed),
                         "extra": statistics.median(row["peak"] - row["before"] for row in timed),
                         "loss0": runs[0]["steps"][0]["loss"]}
    mem = "peak GiB" if device.type == "cpu" else "max alloc GiB"
    print()
    print(f"{'':<8}{'tokens/s':>12}{'s/step':>10}{mem:>15}{'above start GiB':>18}{'timed steps':>13}"
          f"{'step-0 loss':>14}")
    for side, s in summary.items():
        print(f"{side:<8}{s['tokens_per_s']:>12.1f}{s['seconds']:>10.2f}{s['peak'] / 2**30:>15.2f}"
              f"{s['extra'] / 2**30:>18.2f}{s['n']:>13}{s['loss0']:>14.6f}")
    a, b = summary["oreo"], summary["trl"]
    speed, memory, extra = a["tokens_per_s"] / b["tokens_per_s"], a["peak"] / b["peak"], a["extra"] / b["extra"]
    print(f"ratio oreo / TRL: tokens/s {speed:.2f}x (target >= {TARGET_SPEED}), peak memory {memory:.2f}x "
          f"(target <= {TARGET_MEMORY}), memory above start {extra:.2f}x")
    held = speed >= TARGET_SPEED and memory <= TARGET_MEMORY
    print(f"target {'holds' if held else 'does not hold'}: tokens/s {'met' if speed >= TARGET_SPEED else 'missed'}, "
          f"peak memory {'met' if memory <= TARGET_MEMORY else 'missed'}")
    print(f"step-0 loss |oreo - TRL| = {abs(a['loss0'] - b['loss0']):.2e}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
