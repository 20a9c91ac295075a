"""Trajectory records → token ids, action mask and state mask, at token or step granularity.

Each segment (prompt, every step, every observation) is tokenized on its own, so token boundaries are
exact: no boundary ever falls inside a token. A finished trajectory ends with the EOS token, which is
part of the last action, so the model learns to stop.

Multi-turn records (agents) have an observation after each turn. A turn followed by an observation has
ended, so it gets the end-of-turn token (the tokenizer's EOS, ``<|im_end|>`` for ChatML models) as its
last action token: the model learns to end its turns, and a sampler stops at it. The observation is
laid out as the prompt is: plain text on its own line, or, for a chat prompt, a user message of the
model's chat template followed by the assistant header. Observation tokens are never actions.
The observation after the last turn is not encoded (no action follows it).

Conventions (spec §0). For tokens x_0..x_{L-1}, masks over prediction positions t = 0..L-2:
- ``action_mask[t] = 1`` iff token t+1 is an action token (a step or turn token, or the final EOS);
- ``state_mask[t] = 1`` iff the prefix x_≤t is a trained MDP state:
  - ``token`` granularity: every prefix that is followed by an action token (so state_mask == action_mask);
  - ``step`` (alias ``turn``) granularity: the prefix just before the first token of each step/turn,
    and the prefix just before the EOS / end-of-turn token that closes a step or turn (so that the
    value of a finished response or of a whole turn, which search reads there, is trained).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from oreo.trajectory import Trajectory

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
    step_ends: list[int] = field(default_factory=list)  # per step: the index of its last token (before any EOS)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Encoder:
    tokenizer: object
    granularity: str = "token"
    max_len: int = 512
    stats: EncodeStats = field(default_factory=EncodeStats)

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    @classmethod
    def unbounded(cls, tokenizer) -> Encoder:
        """A token-granularity encoder whose ``encode`` drops no trajectory for its length (``max_len`` 10**9):
        the one samplers, scorers and search use to lay out the contexts they continue or score."""
        return cls(tokenizer, max_len=10**9)

    def prompt_text(self, prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, prompt) -> list[int]:
        """Token ids of a prompt as the model sees it when generating (BOS included if the tokenizer adds one)."""
        return self.tokenizer(self.prompt_text(prompt), add_special_tokens=True)["input_ids"]

    def context_ids(self, prompt, steps=(), observations=()) -> list[int]:
        """Ids of a partial trajectory (prompt, the steps taken, the observations between them) exactly as
        ``encode`` lays it out, without a final EOS: what a sampler continues and a value model scores."""
        return [i for ids, _, _ in self._segments(prompt, list(steps), list(observations), finished=False,
                                                last_observation=True) for i in ids]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def observation_text(self, prompt, observation: str) -> str:
        """An observation as the model reads it between two turns (see the module docstring)."""
        if isinstance(prompt, str):
            return f"\n{observation}\n"
        before, after = self._chat_observation_glue()
        return before + observation + after

    def _chat_observation_glue(self) -> tuple[str, str]:
        """The chat template's text around a user message that follows an assistant turn, up to the next
        assistant header; the end-of-turn token that closes the assistant turn is not part of it."""
        if not hasattr(self, "_glue"):
            act, obs = "\x00ACT\x00", "\x00OBS\x00"
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "U"}, {"role": "assistant", "content": act},
                 {"role": "user", "content": obs}], tokenize=False, add_generation_prompt=True)
            tail = text.split(act, 1)[1]
            eos = self.tokenizer.eos_token or ""
            tail = tail[len(eos):] if eos and tail.startswith(eos) else tail
            self._glue = tuple(tail.split(obs, 1))
        return self._glue

    def _segments(self, prompt, steps: list[str], observations: list[str], *, finished: bool,
                  last_observation: bool = False):
        """``(ids, is_action, closed)`` per segment: the prompt, then each turn (closed by the end-of-turn
        token when an observation follows it, or when it is the last and ``finished``) and the observation
        after it."""
        yield list(self.prompt_ids(prompt)), False, False
        for k, step in enumerate(steps):
            last = k == len(steps) - 1
            ended = k < len(observations) or (last and finished)
            yield self._ids(step) + ([self.tokenizer.eos_token_id] if ended else []), True, ended
            if k < len(observations) and (not last or last_observation):
                yield self._ids(self.observation_text(prompt, observations[k])), False, False

    def encode(self, record: Trajectory | dict, index: int = 0) -> Encoded | None:
        """Encode one trajectory (a plain dict record is read with ``Trajectory.from_dict``); ``None``
        (and counted in ``stats``) if it is too long or has no state."""
        if not isinstance(record, Trajectory):
            record = Trajectory.from_dict(record, f"record {index}")
        self.stats.seen += 1
        observations = record.observations
        finished = record.meta.get("finished", True)
        # An empty response that ended with EOS is still one action (the EOS): the model must learn
        # from stopping at once too.
        steps = list(record.steps) or ([""] if finished else [])
        ids, is_action, step_starts, step_ends = [], [], [], []
        ends = []  # positions of the EOS / end-of-turn tokens that close a step
        for segment, action, closed in self._segments(record.prompt, steps, observations, finished=finished):
            if action and segment:
                step_starts.append(len(ids))
            if closed:
                ends.append(len(ids) + len(segment) - 1)
            if action:  # where V of the prefix ending with this step is read (an empty step: where it would be)
                step_ends.append(len(ids) + len(segment) - 1 - int(closed))
            ids += segment
            is_action += [int(action)] * len(segment)
        if len(ids) > self.max_len:
            self.stats.too_long += 1
            return None
        action_mask = is_action[1:]
        if self.granularity == "token":
            state_mask = list(action_mask)
        else:
            state_mask = [0] * (len(ids) - 1)
            # Also the state just before a closing EOS / end-of-turn token: that is where search reads
            # the value of a finished response or of a whole agent turn (``oreo.search.value``).
            for start in step_starts + ends:
                if start >= 1:
                    state_mask[start - 1] = 1
        if not any(state_mask):
            self.stats.no_state += 1
            return None
        self.stats.kept += 1
        return Encoded(ids, action_mask, state_mask, record.reward, index, step_ends[:len(record.steps)])

    def encode_all(self, records: list[Trajectory | dict]) -> list[Encoded]:
        out = [self.encode(r, i) for i, r in enumerate(records)]
        return [e for e in out if e is not None]

