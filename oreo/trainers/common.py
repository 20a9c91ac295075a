"""What every trainer shares: the training config, seeded batching across ranks, engines, logging."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from oreo.config import ConfigError, EngineConfig, above, at_least, between, one_of, validate
from oreo.distributed import all_reduce_scalars, init_distributed, rank_world
from oreo.engine import OptimConfig, make_engine


@dataclass
class TrainConfig:
    """A training stage's optimisation (each method's section has its own ``train``; the engine that runs
    it is the run's ``engine`` section)."""
    epochs: float = above(0, 1.0)
    batch_size: int = at_least(1, 32)         # global: micro_batch_size × accumulation × world size
    micro_batch_size: int = at_least(1, 32)   # per process and forward; the rest is gradient accumulation
    lr: float = above(0, 1e-4)
    value_lr: float = above(0, 1e-3)          # methods with a value model (OREO)
    warmup_ratio: float = between(0, 1, 0.05)
    min_lr_ratio: float = between(0, 1, 0.0)  # the cosine schedule ends at lr × this
    grad_clip: float = at_least(0, 1.0)       # 0: no clipping
    weight_decay: float = at_least(0, 0.0)
    betas: tuple = (0.9, 0.95)
    seed: int = at_least(0, 0)                # data order (in a run: the run's seed)
    padding_side: str = one_of(("right", "left"), "right")
    group_by_length: bool = False  # batches of similar lengths, in random order (less padding, faster; see epoch_order)
    log_every: int = at_least(1, 10)          # optimizer steps between logged rows
    # optimizer steps between in-stage checkpoints (a killed stage resumes from the last; 0: none)
    save_every: int = at_least(0, 100)

    def __post_init__(self):
        validate(self)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("betas", f"must be two numbers in [0, 1), got {self.betas!r}")

    def optim(self, lr: float) -> OptimConfig:
        return OptimConfig(lr=lr, weight_decay=self.weight_decay, betas=tuple(self.betas),
                           warmup_ratio=self.warmup_ratio, grad_clip=self.grad_clip, min_lr_ratio=self.min_lr_ratio)


def world() -> tuple[int, int]:
    """(rank, world size): the process group's, else the launcher's (torchrun env), else (0, 1)."""
    return rank_world()


def accumulation_steps(cfg: TrainConfig) -> int:
    _, size = world()
    per_step = cfg.micro_batch_size * size
    if cfg.batch_size % per_step:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size × world size "
                         f"= {cfg.micro_batch_size} × {size}")
    return cfg.batch_size // per_step


class NotEnoughData(ValueError):
    """Fewer training examples than one batch: the stage cannot take a single optimizer step."""


def optimizer_steps(n_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps for the run: incomplete global batches are dropped (every step sees batch_size)."""
    per_epoch = n_examples // cfg.batch_size
    if per_epoch == 0:
        raise NotEnoughData(f"{n_examples} training examples, fewer than one batch of {cfg.batch_size}")
    return max(1, math.floor(cfg.epochs * per_epoch))


def epoch_order(n_examples: int, cfg: TrainConfig, epoch: int, lengths: list[int] | None = None) -> list[int]:
    """The examples of ``epoch`` in training order: a shuffle seeded by ``cfg.seed`` and the epoch.

    With ``cfg.group_by_length`` (and ``lengths``), each run of 64 global batches of the shuffle is
    sorted by length and cut into batches, and those batches are shuffled: a batch holds examples of
    similar length (padding is wasted compute) while the batches still come in random order."""
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    if not (cfg.group_by_length and lengths):
        return order
    size = cfg.batch_size
    batches = []
    for start in range(0, n_examples - n_examples % size, 64 * size):
        chunk = sorted(order[start:start + 64 * size], key=lambda i: -lengths[i])
        batches += [chunk[b:b + size] for b in range(0, len(chunk) - len(chunk) % size, size)]
    return [i for b in torch.randperm(len(batches), generator=generator).tolist() for i in batches[b]]


def micro_batches(n_examples: int, cfg: TrainConfig, total_steps: int, start_step: int = 0,
                  lengths: list[int] | None = None):
    """Yield ``(step, micro_index, indices)`` for this rank: each epoch in ``epoch_order``, global batches
    split into equal micro-batches, rank r taking its contiguous share of each global batch.

    The order depends only on ``cfg.seed`` (and the lengths), so starting at ``start_step`` yields exactly
    the tail of a run started at 0 (how an interrupted stage resumes)."""
    rank, size = world()
    per_epoch = n_examples // cfg.batch_size
    accumulation = cfg.batch_size // (cfg.micro_batch_size * size)
    share = accumulation * cfg.micro_batch_size
    step = start_step
    while step < total_steps:
        epoch, b = divmod(step, per_epoch)
        order = epoch_order(n_examples, cfg, epoch, lengths)
        for b in range(b, per_epoch):
            if step >= total_steps:
                return
            batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            mine = batch[rank * share:(rank + 1) * share]
            for m in range(accumulation):
                yield step, m, mine[m * cfg.micro_batch_size:(m + 1) * cfg.micro_batch_size]
            step += 1


def build_engine(module, cfg: TrainConfig, lr: float, total_steps: int, engine: EngineConfig | None = None):
    engine = engine or EngineConfig()
    if engine.backend == "deepspeed":
        init_distributed()  # before accumulation_steps: it divides by the world size
    return make_engine(module, cfg.optim(lr), backend=engine.backend, total_steps=total_steps,
                       accumulation=accumulation_steps(cfg), micro_batch_size=cfg.micro_batch_size,
                       zero_stage=engine.zero_stage, bf16=engine.bf16, offload_optimizer=engine.offload_optimizer)


def unwrap(module):
    return getattr(module, "module", module)


def log_window(logger, stage: str, step: int, running: dict[str, list[float]], tokens: int, t0: float,
               infos: dict[str, dict]) -> None:
    """Log the means of ``running`` since the last log, the engines' ``infos`` (keys prefixed by the
    engine name unless it is empty) and tokens/s. A collective: every rank reduces, rank 0 logs."""
    row = all_reduce_scalars({k: sum(v) / len(v) for k, v in running.items()})
    n_tokens = all_reduce_scalars({"tokens": tokens}, op="sum")["tokens"]
    if logger is None or world()[0] != 0:
        return
    for name, info in infos.items():
        row.update({f"{name}_{k}" if name else k: v for k, v in info.items()})
    row["tokens_per_s"] = n_tokens / (time.perf_counter() - t0)
    logger.log(stage, step, row)
