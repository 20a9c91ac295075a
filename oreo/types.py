"""The seams of oreo, at the bottom of the package: the value types that cross them and the interfaces
each side implements. Nothing here imports from oreo.

- a ``Task`` (single turn: problems, prompts, grading, step splitting) or an ``AgentTask`` (games and
  an ``Env`` to play them in); ``oreo.tasks.TASKS`` registers them by name;
- a ``Sampler`` turns prompts or ``Context``s into ``Completion``s (HF generate, vLLM);
- a ``ValueScorer`` gives V of partial trajectories (``Context``s);
- a search strategy turns problems into ``Choice``s (``oreo.search.strategies.STRATEGIES``);
- a collector turns a task's problems into a buffer round (``oreo.rollout.collector.COLLECTORS``, by task kind);
- a training method is an objective run by the one loop (``oreo.trainers.METHODS``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable


@dataclass
class Completion:
    """What a sampler generated for one prompt."""
    text: str
    finished: bool      # ended with EOS
    n_tokens: int       # tokens generated, the EOS or the tokens of the stop string included
    stop: str | None = None  # the stop string that ended it (kept at the end of ``text``)

    @property
    def truncated(self) -> bool:
        return not self.finished and self.stop is None


@dataclass(frozen=True)
class Context:
    """A partial trajectory to continue: the prompt, the steps taken and the observations after them
    (agents). A sampler continues it exactly as training encodes it (``Encoder.context_ids``)."""
    prompt: object
    steps: tuple = ()
    observations: tuple = field(default=())


@dataclass
class Choice:
    """What a decision rule picked for one problem (or one agent turn)."""
    response: str | None     # None: no finished candidate, counted wrong
    value: float | None      # V of the chosen response (None without a value model)
    tokens: int              # tokens generated for this problem, every candidate included
    samples: int             # completions generated for this problem
    truncated: bool = False  # an agent action cut by the token limit (chosen only when every sample was)


@dataclass(frozen=True)
class Game:
    """One agent task instance: an id unique within its task, the split, the goal type and what the
    environment needs to build it (a layout seed, a game folder, ...)."""
    id: str
    split: str
    kind: str = ""                                  # goal type: put, clean, heat, cool, examine, puttwo
    spec: Any = field(default=None, hash=False, compare=False)


class Sampler(Protocol):
    def generate(self, prompts: list, *, n: int = 1, temperature: float = 1.0, seed: int = 0, progress=None,
                 stop: list[str] | None = None, max_new_tokens: int | None = None) -> list[list[Completion]]:
        """``n`` completions of each prompt (text, chat messages or a ``Context``)."""


ValueScorer = Callable[[list[Context]], list[float]]  # V of each partial trajectory


@runtime_checkable
class Task(Protocol):
    """A single-turn task: a problem's prompt is answered by one response, split into steps."""
    kind = "single_turn"
    name: str
    step_stops: list[str]  # the strings that end a step (what a step-level search stops at)
    reward_range: tuple[float, float]  # the rewards its grader gives (imported data outside it is refused)

    def problems(self, split: str) -> list: ...

    def grade(self, problem, response: str) -> tuple[Any, bool]: ...  # (extracted answer or None, correct)

    def split_steps(self, response: str) -> list[str]: ...  # lossless: "".join(steps) == response

    def sft_records(self, rng_seed: int, n_per_problem: int = 1) -> list: ...  # the teacher's Trajectories


class Env(Protocol):
    """A text environment playing one ``Game`` at a time (``oreo.tasks.agent`` describes ``info``)."""
    max_steps: int

    def reset(self, game: Game) -> str: ...

    def step(self, action: str) -> tuple[str, float, bool, dict]: ...

    def expert_action(self) -> str | None: ...

    def close(self) -> None: ...


@runtime_checkable
class AgentTask(Protocol):
    """A multi-turn task: games played in an environment, turn by turn."""
    kind = "agent"
    name: str
    max_steps: int
    reward_range: tuple[float, float]  # an episode's total reward

    def problems(self, split: str) -> list[Game]: ...

    def make_env(self) -> Env: ...

    def prompt(self, game: Game, first_observation: str): ...

    def sft_records(self, rng_seed: int, n_per_problem: int = 1) -> list: ...  # expert episodes
