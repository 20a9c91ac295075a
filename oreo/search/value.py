"""Value scoring of partial trajectories for test-time search.

The value of a candidate is V at the **last token of its text**, with no EOS appended: V(x_≤t) for the
prefix the candidate has written. That is a state the value loss trained:
- an unfinished candidate ends with a step separator, so its last token is the state just before the
  next step's first token (a trained state at token and at step granularity);
- a finished candidate (its EOS not in the text) is read at the state just before its EOS, the last
  state of the trajectory (trained at token granularity, where V ≈ the expected reward there).
The reference instead reads V one position earlier (``values[:, -1]`` of a critic that drops the last
position), which for an unfinished candidate is the state *before* its separator.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from oreo.logprobs import token_logprobs
from oreo.models import VALUE_HEAD_FILE, ValueHead, ValueModel, hidden_states, load_head
from oreo.rollout.sampler import context_ids
from oreo.types import Context


class SharedBackboneValue(nn.Module):
    """The value of a ``shared_backbone`` OREO run: its head over the policy's own hidden states."""

    def __init__(self, policy: nn.Module, head: ValueHead):
        super().__init__()
        self.policy, self.head = policy, head

    def forward(self, input_ids, attention_mask):
        return self.head.values_from_hidden(hidden_states(self.policy, input_ids, attention_mask))


def load_value_model(path: str | Path, *, dtype: str = "float32", policy: nn.Module | None = None) -> nn.Module:
    """The value model OREO saved at ``path`` (``checkpoints/oreo/value``): a backbone with its head, or,
    for a shared-backbone run (a head alone), that head over ``policy``."""
    path = Path(path)
    if not (path / VALUE_HEAD_FILE).exists():
        raise FileNotFoundError(f"{path}: no {VALUE_HEAD_FILE}; a value model is the value/ folder that OREO writes "
                                f"next to policy/ (checkpoints/oreo/value)")
    if (path / "config.json").exists():
        return ValueModel.from_pretrained(path, dtype=dtype)
    if policy is None:
        raise ValueError(f"{path} holds a shared-backbone value head: it needs the policy it was trained with")
    state, output = load_head(path / VALUE_HEAD_FILE)
    head = ValueHead(state["weight"].shape[1], output=output)
    head.head.load_state_dict(state)
    return SharedBackboneValue(policy, head.to(next(policy.parameters()).device))


class ValueScorer:
    """Batched V of prompts or ``Context``s, read at each one's last token (see the module docstring)."""

    def __init__(self, value_model: nn.Module, encoder, *, batch_size: int = 64):
        self.model, self.encoder, self.batch_size = value_model, encoder, batch_size
        self.tokens_scored = 0

    @torch.no_grad()
    def __call__(self, items: list[Context]) -> list[float]:
        ids = [context_ids(self.encoder, item) for item in items]
        device = next(self.model.parameters()).device
        pad = self.encoder.tokenizer.pad_token_id
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: less padding
        values = [0.0] * len(ids)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                length = max(len(ids[i]) for i in chunk)
                input_ids = torch.tensor([ids[i] + [pad] * (length - len(ids[i])) for i in chunk], device=device)
                mask = torch.tensor([[1] * len(ids[i]) + [0] * (length - len(ids[i])) for i in chunk], device=device)
                v = self.model(input_ids, mask)
                last = mask.sum(-1) - 1
                for i, x in zip(chunk, v[torch.arange(len(chunk), device=device), last].float().tolist()):
                    values[i] = x
                self.tokens_scored += int(mask.sum())
        finally:
            self.model.train(was_training)
        return values


@torch.no_grad()
def step_logprobs(model: nn.Module, encoder, contexts: list[Context], *, batch_size: int = 64) -> list[list[float]]:
    """log π(step_k | prompt, steps before it) for every step of every (single-turn) context, under the causal
    LM ``model``: the sum of its tokens' log-probabilities, tokenized as training and sampling tokenize it."""
    if any(c.observations for c in contexts):
        raise ValueError("step_logprobs scores single-turn contexts (no observations)")
    rows = []
    for c in contexts:
        steps = [encoder._ids(s) for s in c.steps]
        rows.append((encoder.prompt_ids(c.prompt), steps))
    device = next(model.parameters()).device
    pad = encoder.tokenizer.pad_token_id
    out: list[list[float]] = [[] for _ in contexts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + sum(map(len, rows[i][1])))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ids = [rows[i][0] + [t for s in rows[i][1] for t in s] for i in chunk]
            length = max(len(x) for x in ids)
            input_ids = torch.tensor([x + [pad] * (length - len(x)) for x in ids], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in ids], device=device)
            hidden = hidden_states(model, input_ids, mask)
            logp = token_logprobs(hidden[:, :-1], model.get_output_embeddings(), input_ids[:, 1:]).tolist()
            for row, i in zip(logp, chunk):
                pos = len(rows[i][0]) - 1   # the prediction of token t+1 sits at position t
                for step in rows[i][1]:
                    out[i].append(float(sum(row[pos:pos + len(step)])))
                    pos += len(step)
    finally:
        model.train(was_training)
    return out


class StepLikelihoodScorer:
    """The policy as its own verifier: exp of the mean over a context's steps of log π(step | prefix), in (0, 1]
    (1 for a context with no step). Free (no training) and, on the embedded task, the ranking any learned value
    has to beat (``experiments/results/value_designs.md``): a wrong line is an unlikely one."""

    def __init__(self, policy: nn.Module, encoder, *, batch_size: int = 64):
        self.policy, self.encoder, self.batch_size = policy, encoder, batch_size

    def __call__(self, items: list[Context]) -> list[float]:
        per_step = step_logprobs(self.policy, self.encoder, items, batch_size=self.batch_size)
        return [math.exp(sum(s) / len(s)) if s else 1.0 for s in per_step]


class StepPrior:
    """PUCT's prior of a step (CPL and AlphaMath, spec §2.2): the policy's mean token log-prob of each
    context's last step (PUCT reads its exp)."""

    def __init__(self, policy: nn.Module, encoder, *, batch_size: int = 64):
        self.policy, self.encoder, self.batch_size = policy, encoder, batch_size

    def __call__(self, contexts: list[Context]) -> list[float]:
        per_step = step_logprobs(self.policy, self.encoder, contexts, batch_size=self.batch_size)
        return [lp[-1] / max(1, len(self.encoder._ids(c.steps[-1]))) for lp, c in zip(per_step, contexts)]
