"""Trajectory records → token ids, action mask and state mask, at token or step granularity.

Each segment (prompt, every step, every observation) is tokenized on its own, so token boundaries are
exact: no boundary ever falls inside a token. A finished trajectory ends with the EOS token, which is
part of the last action, so the model learns to stop.

Conventions (spec §0). For tokens x_0..x_{L-1}, masks over prediction positions t = 0..L-2:
- ``action_mask[t] = 1`` iff token t+1 is an action token (a step or turn token, or the final EOS);
- ``state_mask[t] = 1`` iff the prefix x_≤t is a trained MDP state:
  - ``token`` granularity: every prefix that is followed by an action token (so state_mask == action_mask);
  - ``step`` (alias ``turn``) granularity: the prefix just before the first token of each step/turn.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

GRANULARITIES = ("token", "step", "turn")


@dataclass
class EncodeStats:
    seen: int = 0
    kept: int = 0
    too_long: int = 0
    no_state: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def report(self, stage: str, max_len: int) -> None:
        """Say what was left out, so a short ``max_len`` never silently shrinks the data."""
        if self.too_long or self.no_state:
            print(f"{stage}: kept {self.kept} of {self.seen} trajectories; dropped {self.too_long} longer than "
                  f"max_len={max_len} tokens and {self.no_state} with no trainable state", flush=True)


@dataclass
class Encoded:
    """One encoded trajectory. Masks have length ``len(input_ids) - 1``."""
    input_ids: list[int]
    action_mask: list[int]
    state_mask: list[int]
    reward: float
    index: int  # position of the record in the input list


@dataclass
class Encoder:
    tokenizer: object
    granularity: str = "token"
    max_len: int = 512
    stats: EncodeStats = field(default_factory=EncodeStats)

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    def prompt_text(self, prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, prompt) -> list[int]:
        """Token ids of a prompt as the model sees it when generating (BOS included if the tokenizer adds one)."""
        return self.tokenizer(self.prompt_text(prompt), add_special_tokens=True)["input_ids"]

    def context_ids(self, prompt, steps=(), observations=()) -> list[int]:
        """Ids of a partial trajectory (prompt, the steps taken, the observations between them) exactly as
        ``encode`` lays it out, without EOS: what a sampler continues and a value model scores."""
        ids = list(self.prompt_ids(prompt))
        for k, step in enumerate(steps):
            ids += self._ids(step)
            if k < len(observations):
                ids += self._ids(observations[k])
        return ids

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def encode(self, record: dict, index: int = 0) -> Encoded | None:
        """Encode one record; ``None`` (and counted in ``stats``) if it is too long or has no state."""
        self.stats.seen += 1
        ids = list(self.prompt_ids(record["prompt"]))
        is_action = [0] * len(ids)
        step_starts = []
        observations = record.get("observations") or []
        finished = (record.get("meta") or {}).get("finished", True)
        # An empty response that ended with EOS is still one action (the EOS): the model must learn
        # from stopping at once too.
        steps = list(record["steps"]) or ([""] if finished else [])
        for k, step in enumerate(steps):
            step_ids = self._ids(step)
            if k == len(steps) - 1 and finished:
                step_ids = step_ids + [self.tokenizer.eos_token_id]
            if step_ids:
                step_starts.append(len(ids))
            ids += step_ids
            is_action += [1] * len(step_ids)
            if k < len(observations) and k < len(steps) - 1:
                obs_ids = self._ids(observations[k])
                ids += obs_ids
                is_action += [0] * len(obs_ids)
        if len(ids) > self.max_len:
            self.stats.too_long += 1
            return None
        action_mask = is_action[1:]
        if self.granularity == "token":
            state_mask = list(action_mask)
        else:
            state_mask = [0] * (len(ids) - 1)
            for start in step_starts:
                if start >= 1:
                    state_mask[start - 1] = 1
        if not any(state_mask):
            self.stats.no_state += 1
            return None
        self.stats.kept += 1
        return Encoded(ids, action_mask, state_mask, float(record["reward"]), index)

    def encode_all(self, records: list[dict]) -> list[Encoded]:
        out = [self.encode(r, i) for i, r in enumerate(records)]
        return [e for e in out if e is not None]


def collate(batch: list[Encoded], pad_token_id: int, padding_side: str = "right",
            ref_logprobs: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of encoded trajectories into tensors.

    Returns ``input_ids`` and ``attention_mask`` [B, L]; ``action_mask``, ``state_mask`` (bool) and,
    when given, ``ref_logprobs`` (float32) [B, L-1]; ``rewards`` [B] (float32); ``index`` [B].
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(e.input_ids) for e in batch)

    def pad(seq, value, size):
        fill = [value] * (size - len(seq))
        return fill + list(seq) if padding_side == "left" else list(seq) + fill

    out = {
        "input_ids": torch.tensor([pad(e.input_ids, pad_token_id, length) for e in batch]),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0, length) for e in batch]),
        "action_mask": torch.tensor([pad(e.action_mask, 0, length - 1) for e in batch]).bool(),
        "state_mask": torch.tensor([pad(e.state_mask, 0, length - 1) for e in batch]).bool(),
        "rewards": torch.tensor([e.reward for e in batch], dtype=torch.float32),
        "index": torch.tensor([e.index for e in batch]),
    }
    if ref_logprobs is not None:
        out["ref_logprobs"] = torch.tensor(
            [pad(r.tolist(), 0.0, length - 1) for r in ref_logprobs], dtype=torch.float32)
    return out
