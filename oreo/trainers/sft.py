"""Supervised fine-tuning on trajectory records: next-token loss on action tokens only.

Used for the SFT stage (teacher data) and for RFT, the paper's rejection-sampling baseline (SFT on the
correct samples of the offline buffer). Prompt tokens never get loss, whatever the padding side.
"""
from __future__ import annotations

import time
from pathlib import Path

from oreo.checkpoint import StageCheckpoints, save_atomically, save_trainer_state
from oreo.distributed import full_parameters
from oreo.encode import Encoder, collate
from oreo.logprobs import token_logprobs
from oreo.lora import save_model
from oreo.losses import sft_loss
from oreo.models import hidden_states
from oreo.progress import progress
from oreo.trainers.common import (
    TrainConfig,
    build_engine,
    log_window,
    micro_batches,
    optimizer_steps,
    unwrap,
    world,
)


def train_sft(model, tokenizer, records: list[dict], cfg: TrainConfig, *, max_len: int, logger=None,
              stage: str = "sft", out_dir: str | Path | None = None, chunk_size: int = 1024,
              resume: bool = True) -> dict:
    """Train ``model`` in place on ``records``; save it to ``out_dir`` (HF format) if given, with
    in-stage checkpoints next to it (``oreo.checkpoint``) that a rerun resumes from if ``resume``."""
    encoder = Encoder(tokenizer, granularity="token", max_len=max_len)
    data = encoder.encode_all(records)
    encoder.stats.report(stage, max_len)
    total = optimizer_steps(len(data), cfg)
    engine = build_engine(model, cfg, cfg.lr, total)
    device = next(unwrap(engine.module).parameters()).device
    model.train()
    rank, _ = world()
    with StageCheckpoints(out_dir, {"policy": engine}, every=cfg.save_every, resume=resume, stage=stage) as ckpt:
        start = ckpt.restore()
        bar = progress(total=total, initial=start, desc=stage, unit="step", leave=False, disable=rank != 0)
        tokens, t0, running = 0, time.perf_counter(), []
        for step, _, idx in micro_batches(len(data), cfg, total, start_step=start,
                                          lengths=[len(d.input_ids) for d in data]):
            batch = {k: v.to(device) for k, v in collate([data[i] for i in idx], tokenizer.pad_token_id,
                                                         cfg.padding_side).items()}
            hidden = hidden_states(engine.module, batch["input_ids"], batch["attention_mask"])
            logp = token_logprobs(hidden[:, :-1], unwrap(engine.module).get_output_embeddings(),
                                  batch["input_ids"][:, 1:], chunk_size=chunk_size)
            loss = sft_loss(logp, batch["action_mask"])
            engine.backward(loss)
            running.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
            info = engine.step()
            if info is None:
                continue
            bar.update(1)
            bar.set_postfix(loss=f"{running[-1]:.3f}", refresh=False)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                log_window(logger, stage, step + 1, {"loss": running}, tokens, t0, {"": info})
                running = []
            ckpt.step_done(step + 1, total)
        bar.close()
        if out_dir is not None:
            save_policy(unwrap(engine.module), tokenizer, out_dir, engines={"policy": engine}, step=total)
        ckpt.finish()
    return {"steps": total, "resumed_from": start, "encode": encoder.stats.as_dict()}


def save_policy(model, tokenizer, out_dir: str | Path, *, engines: dict | None = None, step: int | None = None) -> Path:
    """The policy in Hugging Face format at ``out_dir``, with ``trainer_state/`` when engines are given."""
    def write(tmp):
        if engines:
            save_trainer_state(tmp / "trainer_state", engines, step)
        # ZeRO-3: every rank gathers the partitioned weights (after the engine state: DeepSpeed's
        # save_checkpoint re-partitions them), rank 0 writes them
        with full_parameters(model):
            if world()[0] == 0:
                save_model(model, tmp)
                tokenizer.save_pretrained(tmp)
    return save_atomically(out_dir, write)
