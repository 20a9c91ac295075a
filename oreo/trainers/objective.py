"""What a training method is: an objective that the one training loop (``oreo.trainers.loop``) runs.

An objective says *what* is learned; the loop owns *how*: data order, micro-batches, backward and
optimizer steps on every engine, logging, in-stage checkpoints, SIGTERM, exact resume, the final save.

The contract (``Objective`` below implements the shared parts):

- ``models() -> {name: (module, lr)}``: the modules it trains, each with its learning rate; the loop
  builds one engine per entry (in this order) and puts them in ``self.engines``.
- ``encode(records) -> examples``: the training examples (``len(example)`` is its token count, used
  by ``train.group_by_length``); one optimizer step takes ``train.batch_size`` of them.
- ``prepare(device)``: once, after the engines exist and before the first step (say, the frozen
  reference's log-probs of the data).
- ``collate(examples) -> Batch``: a micro-batch (``oreo.batch.Batch`` or a type with ``to`` and ``n_tokens``).
- ``losses(batch) -> {name: scalar}``: the losses and the diagnostics to log, all in one dict.
- ``backward(losses) -> {engine name: loss}``: what each engine back-propagates.
- ``save(folder)``: write the trained models (called on rank 0, with full parameters under ZeRO-3).

A new method is a loss in ``oreo/losses.py``, an objective file, a config section and an entry in
``oreo.trainers.OBJECTIVES``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from oreo.batch import Batch, collate
from oreo.config import EngineConfig
from oreo.encode import Encoded, Encoder
from oreo.logprobs import gather_rows, scatter_rows, token_logprobs
from oreo.lora import save_model
from oreo.models import hidden_states
from oreo.trainers.common import TrainConfig, unwrap
from oreo.trainers.loop import train
from oreo.trainers.reference import reference_logprobs
from oreo.trajectory import Trajectory


class Objective:
    """Shared parts of every objective: the encoder, the padding, ``fit`` (the loop), saving a policy."""

    name = "objective"  # the stage name in logs and progress bars, unless ``fit`` is given another

    def __init__(self, tokenizer, train: TrainConfig, encoder: Encoder):
        self.tokenizer, self.train_cfg, self.encoder = tokenizer, train, encoder
        self.engines: dict = {}
        self.records: list[Trajectory] = []
        self.data: list[Encoded] = []   # the encoded trajectories the examples are made of (Encoded.index: records)

    def encode_trajectories(self, records: list, stage: str) -> list[Encoded]:
        """Encode ``records`` (Trajectories, or dicts read with ``Trajectory.from_dict``) into ``self.data``,
        saying what was dropped (too long, no state)."""
        self.records = [r if isinstance(r, Trajectory) else Trajectory.from_dict(r, f"record {i}")
                        for i, r in enumerate(records)]
        self.data = self.encoder.encode_all(self.records)
        self.encoder.stats.report(stage, self.encoder.max_len)
        return self.data

    def encode(self, records: list) -> list:
        return self.encode_trajectories(records, self.name)

    def prepare(self, device: torch.device) -> None:
        pass

    def collate(self, examples: list[Encoded]) -> Batch:
        return collate(examples, self.tokenizer.pad_token_id, self.train_cfg.padding_side)

    def fit(self, records: list, *, engine: EngineConfig | None = None, logger=None,
            out_dir: str | Path | None = None, resume: bool = True, stage: str | None = None) -> dict:
        """Train on ``records`` with the loop on ``engine`` (default: torch); save to ``out_dir`` if given
        (a killed run resumes there)."""
        return train(self, records, self.train_cfg, engine=engine, logger=logger, out_dir=out_dir, resume=resume,
                     stage=stage or self.name)


class PolicyObjective(Objective):
    """An objective that trains one policy and saves it in Hugging Face format at the stage's folder."""

    def __init__(self, policy: nn.Module, tokenizer, train: TrainConfig, encoder: Encoder):
        super().__init__(tokenizer, train, encoder)
        self.policy = policy

    def models(self) -> dict[str, tuple[nn.Module, float]]:
        return {"policy": (self.policy, self.train_cfg.lr)}

    def backward(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"policy": losses["loss"]}

    def save(self, folder: Path) -> None:
        save_model(unwrap(self.policy), folder)
        self.tokenizer.save_pretrained(folder)

    def action_logprobs(self, batch: Batch) -> Tensor:
        """log π(x_{t+1} | x_≤t) at action positions, 0 elsewhere: [B, L-1] (the vocabulary projection
        runs on action rows only, ``self.chunk_size`` of them at a time)."""
        hidden = hidden_states(self.policy, batch.input_ids, batch.attention_mask)[:, :-1]
        am = batch.action_mask
        rows = token_logprobs(gather_rows(hidden, am), unwrap(self.policy).get_output_embeddings(),
                              gather_rows(batch.input_ids[:, 1:], am), chunk_size=self.chunk_size)
        return scatter_rows(rows, am)


class ReferenceObjective(PolicyObjective):
    """A policy objective anchored to a frozen reference whose log-probs of the data are cached
    (``oreo.trainers.reference``) and ride in ``Batch.ref_logprobs``."""

    def __init__(self, policy: nn.Module, tokenizer, cfg, train: TrainConfig | None = None, *, reference: nn.Module,
                 cache_dir: str | Path | None = None, ref_name: str = "", granularity: str = "token"):
        """``cfg``: the method's config (its ``max_len``, ``chunk_size`` and, unless ``train`` is given,
        ``train`` are read here)."""
        super().__init__(policy, tokenizer, train or cfg.train,
                         Encoder(tokenizer, granularity=granularity, max_len=cfg.max_len))
        self.cfg = cfg
        self.reference = reference.requires_grad_(False).eval()
        self.chunk_size, self.cache_dir, self.ref_name = cfg.chunk_size, cache_dir, ref_name
        self.ref_logprobs: dict[int, Tensor] = {}  # Encoded.index → [len - 1]

    def prepare(self, device: torch.device) -> None:
        self.reference.to(device)
        logps = reference_logprobs(self.reference, self.data, self.tokenizer.pad_token_id,
                                   chunk_size=self.chunk_size, cache_dir=self.cache_dir, ref_name=self.ref_name)
        self.ref_logprobs = {e.index: lp for e, lp in zip(self.data, logps)}

    def collate(self, examples: list[Encoded]) -> Batch:
        return collate(examples, self.tokenizer.pad_token_id, self.train_cfg.padding_side,
                       ref_logprobs=[self.ref_logprobs[e.index] for e in examples])

