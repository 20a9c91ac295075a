"""OREO: joint policy and value training by soft Bellman consistency on offline trajectories.

One micro-batch costs one policy forward/backward and one value forward/backward (spec §9.1 without
its redundant passes): the reference's per-token log-probs are computed once per buffer and cached,
and the critic's target uses this step's policy log-probs, detached (identical to a separate no-grad
pass because the policy has not been updated yet). The exact reverse KL over the vocabulary needs the
reference *distribution* at every action position, so with ``kl.type=exact`` the frozen reference
also runs one no-grad forward per micro-batch (``k3`` on data tokens, or ``none``, avoid it); the policy
logits of a chunk then serve both the token log-probs and the KL. Everything is computed at action
positions only.
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from oreo import losses
from oreo.checkpoint import StageCheckpoints, save_atomically, save_trainer_state
from oreo.distributed import full_parameters
from oreo.encode import Encoder, collate
from oreo.logprobs import (
    gather_rows,
    scatter_rows,
    token_logprobs,
    token_logprobs_and_reverse_kl,
)
from oreo.lora import save_model
from oreo.models import ValueHead, ValueModel, hidden_states
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

POLICY_LOSSES = {
    "oreo": losses.oreo_policy_loss,
    "response": losses.response_policy_loss,
    "single_step": losses.single_step_policy_loss,
}


@dataclass
class OREOConfig:
    beta: float = 0.03
    granularity: str = "token"        # token | step | turn: which prefixes are MDP states
    policy_loss: str = "oreo"         # oreo (Eq. 9, next-state form) | response (Eq. 10) | single_step
    kl_type: str = "exact"            # exact (reverse KL over the vocabulary) | k3 (data tokens) | none
    kl_coef: float = 0.01
    reward_mul: float = 1.0           # R = reward·mul + add, the same for every task
    reward_add: float = 0.0
    clip_logratio: float | None = None
    importance_sampling: bool = False
    importance_log_clip: float = 1.0
    shared_backbone: bool = False
    max_len: int = 512
    chunk_size: int = 1024

    def __post_init__(self):
        if self.policy_loss not in POLICY_LOSSES:
            raise ValueError(f"oreo.policy_loss must be one of {sorted(POLICY_LOSSES)}, got {self.policy_loss!r}")
        if self.kl_type not in ("exact", "k3", "none"):
            raise ValueError(f"oreo.kl_type must be exact, k3 or none, got {self.kl_type!r}")


@torch.no_grad()
def reference_logprobs(ref_model, data, pad_token_id: int, *, batch_size: int = 32, chunk_size: int = 1024,
                       cache_dir: str | Path | None = None, ref_name: str = "") -> list[torch.Tensor]:
    """ℓ^ref_t for every encoded trajectory ([L-1] float32 each), computed once and cached on disk.

    The cache key hashes the token ids and ``ref_name``, which must name the reference model and its
    dtype (the pipeline passes ``"<checkpoint path>|<dtype>"``).
    """
    if cache_dir is not None and not ref_name:
        raise ValueError("reference_logprobs: a cache_dir needs a ref_name naming the reference model")
    key = hashlib.sha256(ref_name.encode())
    for e in data:
        key.update(bytes(str(e.input_ids), "utf8"))
    path = Path(cache_dir) / f"ref_logprobs-{key.hexdigest()[:16]}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        stored = load_file(str(path))
        return [stored[str(i)] for i in range(len(data))]
    was_training = ref_model.training
    ref_model.eval()
    device = next(ref_model.parameters()).device
    out = []
    for start in progress(iterable=range(0, len(data), batch_size), desc="reference log-probs", leave=False,
                      disable=world()[0] != 0):
        chunk = data[start:start + batch_size]
        batch = collate(chunk, pad_token_id, "right")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        hidden = hidden_states(ref_model, ids, mask)
        logp = token_logprobs(hidden[:, :-1], ref_model.get_output_embeddings(), ids[:, 1:], chunk_size=chunk_size)
        out += [logp[i, :len(e.input_ids) - 1].float().cpu() for i, e in enumerate(chunk)]
    ref_model.train(was_training)
    if path is not None and world()[0] == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({str(i): t.contiguous() for i, t in enumerate(out)}, str(tmp))
        tmp.replace(path)
    return out


class OREOTrainer:
    """Owns the policy, the value model (or head), the frozen reference and their engines."""

    def __init__(self, policy, tokenizer, cfg: OREOConfig, train: TrainConfig, *, reference=None, value=None):
        """``reference`` defaults to a frozen copy of ``policy``; ``value`` (a ``ValueModel`` or
        ``ValueHead`` to warm-start from) defaults to a fresh one initialised from ``policy``."""
        self.cfg, self.train_cfg, self.tokenizer = cfg, train, tokenizer
        self.reference = reference if reference is not None else copy.deepcopy(policy)
        self.reference.requires_grad_(False).eval()
        self.policy = policy
        if value is not None:
            self.value = value
        elif cfg.shared_backbone:
            self.value = ValueHead(policy.config.hidden_size).to(next(policy.parameters()).device)
        else:
            self.value = ValueModel.from_policy(policy)
        self.engines = {}
        if cfg.shared_backbone and train.engine == "deepspeed":
            raise ValueError("oreo.shared_backbone=true is supported with the torch engine only: two DeepSpeed "
                             "engines cannot share one backbone's gradients; use shared_backbone=false")

    def _forward(self, batch):
        """Log-ratios, values and the KL term of one micro-batch.

        Policy log-probs are computed at action positions only (nothing else is used), and with the
        exact KL they come out of the same chunked pass over the vocabulary as the KL itself."""
        policy = self.engines["policy"].module
        value = self.engines["value"].module
        ids, mask, am = batch["input_ids"], batch["attention_mask"], batch["action_mask"]
        hidden = hidden_states(policy, ids, mask)[:, :-1]
        head = unwrap(policy).get_output_embeddings()
        rows, targets = gather_rows(hidden, am), gather_rows(ids[:, 1:], am)
        kl = None
        if self.cfg.kl_type == "exact":
            with torch.no_grad():
                ref_rows = gather_rows(hidden_states(self.reference, ids, mask)[:, :-1], am)
            logp_rows, kl_rows = token_logprobs_and_reverse_kl(
                rows, head, targets, ref_rows, self.reference.get_output_embeddings(), chunk_size=self.cfg.chunk_size)
            kl = losses.masked_kl_mean(scatter_rows(kl_rows, am), am)
        else:
            logp_rows = token_logprobs(rows, head, targets, chunk_size=self.cfg.chunk_size)
        logratio = (scatter_rows(logp_rows, am) - batch["ref_logprobs"]) * am
        if self.cfg.kl_type == "k3":
            kl = losses.k3_kl(logratio, am)
        elif kl is None:
            kl = logratio.new_zeros(())
        if self.cfg.shared_backbone:
            values = value.values_from_hidden(hidden)
        else:
            values = value(ids, mask)[:, :-1]
        return logratio, values, kl

    def losses(self, batch) -> dict[str, torch.Tensor]:
        """Value loss, policy loss (+KL) and logging statistics for one micro-batch."""
        cfg = self.cfg
        logratio, values, kl = self._forward(batch)
        am, sm = batch["action_mask"], batch["state_mask"]
        rewards = losses.scale_reward(batch["rewards"], mul=cfg.reward_mul, add=cfg.reward_add)
        weights = (losses.importance_weights(logratio.detach(), am, log_clip=cfg.importance_log_clip)
                   if cfg.importance_sampling else None)
        value_loss = losses.value_loss(values, logratio.detach(), am, sm, rewards, beta=cfg.beta,
                                       clip_logratio=cfg.clip_logratio, weights=weights)
        kwargs = {"weights": weights} if cfg.policy_loss == "oreo" else {}
        policy_loss = POLICY_LOSSES[cfg.policy_loss](logratio, values.detach(), am, sm, rewards, beta=cfg.beta,
                                                     **kwargs)
        state_values, _ = losses.sequence_mean(values.detach(), sm)
        first = sm.float().argmax(-1)
        return {
            "value_loss": value_loss, "policy_loss": policy_loss, "kl": kl,
            "k3_kl": losses.k3_kl(logratio.detach(), am),
            "value_mean": state_values.mean(),
            "value_first_state": values.detach().gather(1, first[:, None]).mean(),
            "reward_mean": rewards.mean(),
        }

    def fit(self, records: list[dict], *, logger=None, cache_dir=None, ref_name: str = "", stage: str = "oreo",
            out_dir: str | Path | None = None, resume: bool = True) -> dict:
        """Train on ``records``; save to ``out_dir`` if given, with in-stage checkpoints next to it
        (``oreo.checkpoint``) that a rerun resumes from if ``resume``."""
        cfg, tcfg = self.cfg, self.train_cfg
        encoder = Encoder(self.tokenizer, granularity=cfg.granularity, max_len=cfg.max_len)
        data = encoder.encode_all(records)
        encoder.stats.report(stage, encoder.max_len)
        ref_logps = reference_logprobs(self.reference, data, self.tokenizer.pad_token_id, chunk_size=cfg.chunk_size,
                                       cache_dir=cache_dir, ref_name=ref_name)
        total = optimizer_steps(len(data), tcfg)
        self.engines = {"policy": build_engine(self.policy, tcfg, tcfg.lr, total),
                        "value": build_engine(self.value, tcfg, tcfg.value_lr, total)}
        device = next(unwrap(self.engines["policy"].module).parameters()).device
        self.reference.to(device)
        self.policy.train()
        self.value.train()
        rank, _ = world()
        with StageCheckpoints(out_dir, self.engines, every=tcfg.save_every, resume=resume, stage=stage) as ckpt:
            start = ckpt.restore()
            bar = progress(total=total, initial=start, desc=stage, unit="step", leave=False, disable=rank != 0)
            tokens, t0, running = 0, time.perf_counter(), {}
            for step, _, idx in micro_batches(len(data), tcfg, total, start_step=start,
                                              lengths=[len(d.input_ids) for d in data]):
                batch = collate([data[i] for i in idx], self.tokenizer.pad_token_id, tcfg.padding_side,
                                ref_logprobs=[ref_logps[i] for i in idx])
                batch = {k: v.to(device) for k, v in batch.items()}
                out = self.losses(batch)
                # Values are detached in the policy loss and log-ratios in the value loss, so with separate
                # models each loss reaches only its own model; a shared backbone takes both in one backward.
                if cfg.shared_backbone:
                    self.engines["policy"].backward(out["policy_loss"] + cfg.kl_coef * out["kl"] + out["value_loss"])
                else:
                    self.engines["value"].backward(out["value_loss"])
                    self.engines["policy"].backward(out["policy_loss"] + cfg.kl_coef * out["kl"])
                for k, v in out.items():
                    running.setdefault(k, []).append(float(v.detach()))
                tokens += int(batch["attention_mask"].sum())
                infos = {name: engine.step() for name, engine in self.engines.items()}
                if infos["policy"] is None:
                    continue
                bar.update(1)
                bar.set_postfix(v_loss=f"{running['value_loss'][-1]:.4f}",
                                p_loss=f"{running['policy_loss'][-1]:.4f}", refresh=False)
                if (step + 1) % tcfg.log_every == 0 or step + 1 == total:
                    log_window(logger, stage, step + 1, running, tokens, t0, infos)
                    running = {}
                ckpt.step_done(step + 1, total)
            bar.close()
            if out_dir is not None:
                self.save(out_dir, step=total)
            ckpt.finish()
        return {"steps": total, "resumed_from": start, "encode": encoder.stats.as_dict()}

    def save(self, out_dir: str | Path, step: int | None = None) -> Path:
        """``policy/`` and ``value/`` in Hugging Face format, ``trainer_state/`` (optimizers, schedulers,
        step, RNG) for resuming; written to a temporary folder and renamed."""
        policy = unwrap(self.engines["policy"].module) if self.engines else self.policy
        value = unwrap(self.engines["value"].module) if self.engines else self.value

        def write(tmp):
            save_trainer_state(tmp / "trainer_state", self.engines, step)
            # ZeRO-3: every rank gathers the partitioned weights (after the engine state: DeepSpeed's
            # save_checkpoint re-partitions them), rank 0 writes them
            with full_parameters(policy, value):
                if world()[0] != 0:
                    return
                save_model(policy, tmp / "policy")
                self.tokenizer.save_pretrained(tmp / "policy")
                if isinstance(value, ValueModel):
                    value.save_pretrained(tmp / "value")
                    self.tokenizer.save_pretrained(tmp / "value")
                else:
                    (tmp / "value").mkdir()
                    save_file({k: v.detach().cpu().contiguous() for k, v in value.head.state_dict().items()},
                              str(tmp / "value" / "value_head.safetensors"))
        return save_atomically(out_dir, write)
