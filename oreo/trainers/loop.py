"""The one training loop. Every method (SFT, RFT, OREO, DPO, KTO, ...) is an objective
(``oreo.trainers.objective``) that this loop runs; nothing else owns a micro-batch loop.

Exact resume: the data order is a function of ``train.seed`` and the step (``micro_batches``), the
engines' states and the RNGs are checkpointed at optimizer-step boundaries (``StageCheckpoints``), so a
stage killed anywhere, even mid-accumulation, ends with the parameters of an uninterrupted run.
"""
from __future__ import annotations

import time
from pathlib import Path

from oreo.checkpoint import StageCheckpoints, save_atomically, save_trainer_state
from oreo.config import EngineConfig
from oreo.distributed import full_parameters
from oreo.progress import progress
from oreo.trainers.common import TrainConfig, build_engine, log_window, micro_batches, optimizer_steps, unwrap, world


def train(objective, records: list, cfg: TrainConfig, *, engine: EngineConfig | None = None, logger=None,
          out_dir: str | Path | None = None, resume: bool = True, stage: str = "train") -> dict:
    """Train ``objective`` on ``records`` on ``engine`` (default: torch); with ``out_dir``, save the result
    there and keep in-stage checkpoints next to it (``OUT.progress/``) that a rerun resumes from if ``resume``."""
    examples = objective.encode(records)
    total = optimizer_steps(len(examples), cfg)
    engines = objective.engines = {name: build_engine(module, cfg, lr, total, engine)
                                   for name, (module, lr) in objective.models().items()}
    device = next(unwrap(next(iter(engines.values())).module).parameters()).device
    objective.prepare(device)
    for engine in engines.values():
        engine.module.train()
    with StageCheckpoints(out_dir, engines, every=cfg.save_every, resume=resume, stage=stage) as ckpt:
        start = ckpt.restore()
        bar = progress(total=total, initial=start, desc=stage, unit="step", leave=False, disable=world()[0] != 0)
        tokens, t0, running = 0, time.perf_counter(), {}
        for step, _, idx in micro_batches(len(examples), cfg, total, start_step=start,
                                          lengths=[len(e) for e in examples]):
            batch = objective.collate([examples[i] for i in idx]).to(device)
            out = objective.losses(batch)
            # Each engine divides its loss by the accumulation count; objectives detach across models,
            # so a loss reaches only the parameters of the engine it is given to.
            for name, loss in objective.backward(out).items():
                engines[name].backward(loss)
            for k, v in out.items():
                running.setdefault(k, []).append(float(v.detach()))
            tokens += batch.n_tokens
            # Every engine steps together; they update only at the accumulation boundary (info not None).
            infos = {name: engine.step() for name, engine in engines.items()}
            if next(iter(infos.values())) is None:
                continue
            bar.update(1)
            bar.set_postfix({k: f"{v[-1]:.4f}" for k, v in running.items() if k.endswith("loss")}, refresh=False)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                log_window(logger, stage, step + 1, running, tokens, t0,
                           {"": infos[name] for name in infos} if len(infos) == 1 else infos)
                running = {}
            ckpt.step_done(step + 1, total)
        bar.close()
        if out_dir is not None:
            save(objective, out_dir, step=total)
        ckpt.finish()
    return {"steps": total, "resumed_from": start, "encode": objective.encoder.stats.as_dict()}


def save(objective, out_dir: str | Path, step: int | None = None) -> Path:
    """The objective's models at ``out_dir`` and ``trainer_state/`` (engines, step, RNG) for resuming;
    written to a temporary folder and renamed."""
    def write(tmp: Path) -> None:
        save_trainer_state(tmp / "trainer_state", objective.engines, step)
        # ZeRO-3: every rank gathers the partitioned weights (after the engine states: DeepSpeed's
        # save_checkpoint re-partitions them), rank 0 writes them
        with full_parameters(*(unwrap(e.module) for e in objective.engines.values())):
            if world()[0] == 0:
                objective.save(tmp)
    return save_atomically(out_dir, write)
