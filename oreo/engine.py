"""One small interface over plain torch and DeepSpeed ZeRO: backward, step, state save/load.

The trainer calls ``backward(loss)`` and ``step()`` once per micro-batch; the engine divides the loss
by the accumulation count and updates the parameters only at an accumulation boundary, where ``step``
returns the gradient norm and learning rate (``None`` otherwise).

``torch`` trains in one process. ``deepspeed`` runs ZeRO stage ``zero_stage`` (0-3) in one process or
in several under ``torchrun --nproc_per_node N`` (gloo on CPU, where DeepSpeed needs
``DS_ACCELERATOR=cpu``; nccl on CUDA); every rank takes its share of each global batch, so the same
config trains the same model whatever the number of ranks. Under ZeRO-3 the parameters are partitioned:
read or save them inside ``engine.full_parameters()`` (entered by every rank).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from oreo.checkpoint import CheckpointError, safe_load
from oreo.distributed import full_parameters, init_distributed, rank_world


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    warmup_ratio: float = 0.03
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.0


def cosine_with_warmup(optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float = 0.0):
    """Linear warmup over ceil(warmup_ratio·total) steps, then cosine decay to min_lr_ratio·lr."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(params, cfg: OptimConfig):
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


class TorchEngine:
    """Plain PyTorch: gradient accumulation, clipping, AdamW, cosine schedule."""

    def __init__(self, module: nn.Module, cfg: OptimConfig, total_steps: int, accumulation: int):
        if rank_world()[1] > 1:
            raise ValueError("engine=torch trains in one process (it does not synchronise gradients); "
                             "use engine=deepspeed under torchrun")
        self.module = module
        self.cfg = cfg
        self.accumulation = accumulation
        self.optimizer = build_optimizer(module.parameters(), cfg)
        self.scheduler = cosine_with_warmup(self.optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
        self.micro_step = 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> dict | None:
        self.micro_step += 1
        if self.micro_step % self.accumulation:
            return None
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(norm), "lr": lr}

    def full_parameters(self):
        """Context in which ``self.module`` holds its full parameters (nothing to do here)."""
        return full_parameters(self.module)

    def state_dict(self) -> dict:
        """Everything to continue training: weights, optimizer, scheduler, micro-step."""
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "micro_step": self.micro_step}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro_step = int(state["micro_step"])

    def save_state(self, path: Path) -> None:
        torch.save(self.state_dict(), Path(path) / "engine.pt")

    def load_state(self, path: Path) -> None:
        """Load ``path/engine.pt`` (``weights_only=True``: tensors and plain data only). A missing,
        damaged or refused file, or one that does not fit this model and optimizer, raises
        ``CheckpointError`` naming it."""
        file = Path(path) / "engine.pt"
        state = safe_load(file)
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(file, "does not fit this stage's model and optimizer (written with other "
                                        f"settings, or damaged): {type(e).__name__}: {e}") from e


class DeepSpeedEngine:
    """DeepSpeed ZeRO (stage 0-3) around a torch AdamW (no fused-op compilation) and our scheduler."""

    def __init__(self, module: nn.Module, cfg: OptimConfig, total_steps: int, accumulation: int,
                 micro_batch_size: int, zero_stage: int = 2, bf16: bool = False, offload_optimizer: bool = False):
        import deepspeed

        init_distributed()
        ds_config = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": accumulation,
            "gradient_clipping": cfg.grad_clip or 0.0,
            "zero_optimization": {"stage": zero_stage},
            "bf16": {"enabled": bf16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if offload_optimizer:
            ds_config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
            ds_config["zero_force_ds_cpu_optimizer"] = False
        self.cfg = cfg
        self.accumulation = accumulation
        self.zero_stage = zero_stage
        self.bf16 = bf16
        optimizer = build_optimizer(module.parameters(), cfg)
        scheduler = cosine_with_warmup(optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.module = self.ds.module

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> dict | None:
        try:
            return self._step()
        finally:
            self._micro_batch_done()

    def _micro_batch_done(self) -> None:
        """What ``DeepSpeedEngine.forward`` does first, done here at the end of every micro-batch.

        The objectives call their models (``self.module``) directly, never the DeepSpeed engine, so its
        ``forward`` does not run; but that is where DeepSpeed tells a ZeRO optimizer that a new micro-batch
        begins (``clear_backward_seen_flag``). Under ZeRO-3 it advances ``micro_step_id``: left at 0, every
        backward *copies* its reduced gradient partitions over the previous micro-batches' instead of adding
        to them, so an accumulated step kept only its last micro-batch's gradient (a half-size gradient norm
        with two micro-batches). It also resets the backward-hook counters of every ZeRO stage. Nothing runs
        between one micro-batch's ``step`` and the next one's forward, so this is the same point in the
        sequence. (DeepSpeed versions without the method advanced the counter in their backward epilogue.)"""
        clear = getattr(self.ds.optimizer, "clear_backward_seen_flag", None)
        if clear is not None:
            clear()

    def _step(self) -> dict | None:
        boundary = self.ds.is_gradient_accumulation_boundary()
        if not boundary:
            self.ds.step()
            return None
        lr = self.scheduler.get_last_lr()[0]
        norm = None
        if self.zero_stage == 0 and not self.bf16:
            # DeepSpeed clips plain fp32 (no ZeRO) gradients without keeping the norm: take it here, from the
            # gradients already averaged over ranks, before step() clips and clears them.
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) \
                if grads else torch.zeros(())
        self.ds.step()
        if norm is None:
            norm = self.ds.get_global_grad_norm()
        return {"grad_norm": float(norm) if norm is not None else float("nan"), "lr": lr}

    def full_parameters(self):
        """Context in which ``self.module`` holds its full parameters on every rank: under ZeRO-3 a
        collective gather (every rank must enter it; read-only); a no-op for stages 0-2."""
        return full_parameters(self.module)

    def save_state(self, path: Path) -> None:
        self.ds.save_checkpoint(str(path), tag="engine")

    def load_state(self, path: Path) -> None:
        """DeepSpeed's ``load_checkpoint``, with every file it reads loaded ``weights_only=True``.

        DeepSpeed itself calls ``torch.load(weights_only=False)`` (through its checkpoint engine's
        ``load``), which would run any code pickled in the files. Here that ``load`` is replaced, for this
        call, by ``safe_load`` allowing only the few plain-data classes DeepSpeed pickles into ZeRO
        optimizer states (``DEEPSPEED_SAFE_GLOBALS``). A missing, damaged or refused file raises
        ``CheckpointError`` naming it."""
        folder = Path(path) / "engine"
        if not any(folder.glob("*model_states.pt")):  # DeepSpeed would only assert or warn
            raise CheckpointError(folder, "missing or incomplete: no DeepSpeed model states there")
        checkpoint_engine = self.ds.checkpoint_engine
        own = vars(checkpoint_engine).get("load")

        def load(file, map_location=None):
            return safe_load(file, map_location=map_location, safe_globals=deepspeed_safe_globals())

        checkpoint_engine.load = load
        try:
            load_path, _ = self.ds.load_checkpoint(str(path), tag="engine", load_module_strict=True)
        except CheckpointError:
            raise
        except (AssertionError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(folder, f"DeepSpeed could not load it (damaged, or written with other settings): "
                                          f"{type(e).__name__}: {e}") from e
        finally:
            if own is None:
                del checkpoint_engine.load
            else:
                checkpoint_engine.load = own
        if load_path is None:
            raise CheckpointError(folder, "missing or incomplete: DeepSpeed found no checkpoint to load there")


DEEPSPEED_SAFE_GLOBALS = (
    # the classes DeepSpeed's ZeRO / bf16 optimizers pickle into their state dicts: plain data holders
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def deepspeed_safe_globals() -> list:
    """The classes of ``DEEPSPEED_SAFE_GLOBALS`` that this DeepSpeed version has."""
    import importlib

    found = []
    for name in DEEPSPEED_SAFE_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    return found


def make_engine(module: nn.Module, cfg: OptimConfig, *, backend: str, total_steps: int, accumulation: int,
                micro_batch_size: int, zero_stage: int = 2, bf16: bool = False, offload_optimizer: bool = False):
    if backend == "torch":
        return TorchEngine(module, cfg, total_steps, accumulation)
    if backend == "deepspeed":
        return DeepSpeedEngine(module, cfg, total_steps, accumulation, micro_batch_size, zero_stage, bf16,
                               offload_optimizer)
    raise ValueError(f"engine backend must be 'torch' or 'deepspeed', got {backend!r}")
