"""The padded training batch every objective's losses read, and ``collate`` that builds it.

Positions follow ``oreo.encode``'s convention: for tokens x_0..x_{L-1}, per-position fields are
``[B, L-1]`` and position t predicts token t+1. Padding may be on either side; positions come from
the attention mask, so nothing downstream depends on it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from oreo.encode import Encoded


@dataclass
class Batch:
    # the sequences
    input_ids: Tensor          # [B, L] long: token ids, padded with the tokenizer's pad id
    attention_mask: Tensor     # [B, L] long: 1 on real tokens, 0 on padding
    # the MDP, aligned to prediction positions (t predicts token t+1)
    action_mask: Tensor        # [B, L-1] bool: token t+1 is an action token (a step, a turn, the final EOS)
    state_mask: Tensor         # [B, L-1] bool: the prefix x_≤t is a trained state (oreo.encode granularity)
    # outcomes
    rewards: Tensor            # [B] float32: the trajectory's terminal reward
    index: Tensor              # [B] long: each row's position in the list of records given to the encoder
    # the frozen reference, when the objective uses one
    ref_logprobs: Tensor | None = None  # [B, L-1] float32: log π_ref(x_{t+1} | x_≤t), 0 on padding
    # per-step value targets, when the objective trains a process value model
    value_targets: Tensor | None = None  # [B, L] float32: a step's target at its last token, NaN elsewhere

    def to(self, device) -> Batch:
        return Batch(**{f.name: None if (v := getattr(self, f.name)) is None else v.to(device) for f in fields(self)})

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(examples: list[Encoded], pad_token_id: int, padding_side: str = "right",
            ref_logprobs: list[Tensor] | None = None, step_targets: list[list[float]] | None = None) -> Batch:
    """Pad encoded trajectories (and, when given, their reference log-probs, ``[len - 1]`` each, and their
    per-step targets, one per ``Encoded.step_ends`` entry) into a ``Batch``; ``padding_side`` is ``"right"``
    or ``"left"``."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(e.input_ids) for e in examples)

    def pad(seq, value, size):
        fill = [value] * (size - len(seq))
        return fill + list(seq) if padding_side == "left" else list(seq) + fill

    return Batch(
        input_ids=torch.tensor([pad(e.input_ids, pad_token_id, length) for e in examples]),
        attention_mask=torch.tensor([pad([1] * len(e.input_ids), 0, length) for e in examples]),
        action_mask=torch.tensor([pad(e.action_mask, 0, length - 1) for e in examples]).bool(),
        state_mask=torch.tensor([pad(e.state_mask, 0, length - 1) for e in examples]).bool(),
        rewards=torch.tensor([e.reward for e in examples], dtype=torch.float32),
        index=torch.tensor([e.index for e in examples]),
        ref_logprobs=None if ref_logprobs is None else torch.tensor(
            [pad(r.tolist(), 0.0, length - 1) for r in ref_logprobs], dtype=torch.float32),
        value_targets=None if step_targets is None else torch.tensor(
            [pad(_at(e.step_ends, t, len(e.input_ids)), float("nan"), length) for e, t in zip(examples, step_targets)],
            dtype=torch.float32),
    )


def _at(positions: list[int], values: list[float], length: int) -> list[float]:
    row = [float("nan")] * length
    for position, value in zip(positions, values):
        row[position] = value
    return row
