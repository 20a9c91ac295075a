"""Countdown: make a target from four numbers with + - * /, one combination per step, graded exactly.

A puzzle is four numbers from 1-13 and a target. Each step combines two of the numbers left with an operation
and replaces them with the result; the puzzle is solved when the one number left is the target::

    4 9 10 13 -> 24
    13-9=4; 4 4 10
    10-4=6; 4 6
    4*6=24; 24

A step line is ``A op B=R; LEFT``: ``LEFT`` is the numbers left after it, smallest first. Each step keeps its
``"\\n"`` but the last, which the model's EOS follows, so ``"".join(steps)`` is the response. Arithmetic is exact
over the rationals: a fraction is written ``(p/q)`` in lowest terms (``6/(1/4)=24``). A subtraction may not go
below zero and nothing is divided by zero (every puzzle of the Game of 24 file is solvable under these rules).

Why this task: every step is a choice whose consequence shows only later. After ``13-9=4`` the target may still
be reachable or not, and the exact oracle (``reachable``: exhaustive search over what is left, cached) says
which, so each step prefix has an exact value V* ∈ {0, 1} and each move an exact Q*. The oracle is for
measurement and for the teacher's data only: no method trains on it.

The teacher (SFT data) is imperfect in a systematic way: at each step it plays, with probability
``teacher_solve_rate``, a move that keeps the target reachable (uniformly among them), and otherwise the move
whose result is closest to the target, a plausible heuristic that often leads into a dead end. Greedy imitation
inherits the heuristic; only the outcome says where it fails.

With ``format=plan`` (CPL's plan-then-solve) a response first names its moves, one plan step per line, then
solves in one line, the step lines joined by `` | ``::

    4 9 10 13 -> 24
    Plan 13-9
    Plan 10-4
    Plan 4*6
    13-9=4; 4 4 10 | 10-4=6; 4 6 | 4*6=24; 24

A plan step is the choice of a move (which two numbers, which operation), the decision whose consequence shows
later; the solution line is its execution, graded exactly as the step format.

Splits: ``train``, ``validation`` (all tuning happens there) and ``test`` hold distinct solvable (numbers, target)
pairs with targets in ``[min_target, max_target]`` except 24; ``game24`` holds the 100 puzzles Tree of Thoughts
evaluates (ranks 901-1000 of its ``24.csv``, shipped in ``oreo/tasks/data/``), so no split the model is trained or
tuned on holds a target of 24.
"""
from __future__ import annotations

import csv
import itertools
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from oreo.config import ConfigError, at_least, between, one_of, validate
from oreo.trajectory import Trajectory

__all__ = ["CountdownConfig", "CountdownTask", "Judgement", "Move", "Puzzle", "format_number", "from_plan_format",
           "judge", "legal_moves", "load_game24", "make_splits", "parse_number", "plan_step_kind", "random_steps",
           "reachable", "reachable_values", "split_steps", "state_after", "teacher_steps", "to_plan_format",
           "value_star"]

SPLITS = ("train", "validation", "test", "game24")
OPS = "+-*/"
GAME24_FILE = Path(__file__).with_name("data") / "game24_tot.csv"

_NUM = r"(?:\d+|\(\d+/\d+\))"
_STEP_RE = re.compile(rf"({_NUM})([+\-*/])({_NUM})=({_NUM}); ({_NUM}(?: {_NUM})*)\n?")
_PROMPT_RE = re.compile(r"(\d+(?: \d+)*) -> (\d+)\n")
PLAN_PREFIX = "Plan "
SOLUTION_SEP = " | "
_PLAN_RE = re.compile(rf"{PLAN_PREFIX}{_NUM}[+\-*/]{_NUM}\n")


@dataclass(frozen=True)
class Puzzle:
    """Numbers (smallest first) and a target. ``answer`` is the target (what evaluation files call the gold)."""
    id: str
    numbers: tuple[int, ...]
    target: int
    prompt: str = field(compare=False)

    @property
    def answer(self) -> int:
        return self.target


def make_puzzle(id: str, numbers, target: int) -> Puzzle:
    numbers = tuple(sorted(int(n) for n in numbers))
    return Puzzle(id, numbers, int(target), f"{' '.join(map(str, numbers))} -> {int(target)}\n")


# ----------------------------------------------------------------------------- numbers and moves
def format_number(x: Fraction) -> str:
    """``13`` or ``(13/4)``."""
    return str(x.numerator) if x.denominator == 1 else f"({x.numerator}/{x.denominator})"


def parse_number(text: str) -> Fraction:
    """Inverse of ``format_number`` (a fraction must be in lowest terms, with a non-zero denominator)."""
    if text.startswith("("):
        p, q = text[1:-1].split("/")
        x = Fraction(int(p), int(q)) if int(q) else None
        if x is None or (x.numerator, x.denominator) != (int(p), int(q)):
            raise ValueError(f"{text} is not a fraction in lowest terms")
        return x
    return Fraction(int(text))


def apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    """``a op b``, or None where the rules forbid it (a negative difference, a division by zero)."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a >= b else None
    return a / b if b != 0 else None


@dataclass(frozen=True)
class Move:
    a: Fraction
    op: str
    b: Fraction
    result: Fraction
    left: tuple[Fraction, ...]  # the numbers left after the move, smallest first

    def line(self, last: bool = False) -> str:
        text = (f"{format_number(self.a)}{self.op}{format_number(self.b)}={format_number(self.result)}; "
                f"{' '.join(map(format_number, self.left))}")
        return text if last else text + "\n"


def legal_moves(state: tuple[Fraction, ...]) -> list[Move]:
    """Every distinct legal move from ``state`` (numbers smallest first): ``+`` and ``*`` with the larger number
    first, ``-`` with the larger first, ``/`` either way; duplicates from equal numbers once."""
    moves, seen = [], set()
    for i, j in itertools.permutations(range(len(state)), 2):
        a, b = state[i], state[j]
        rest = tuple(state[k] for k in range(len(state)) if k not in (i, j))
        for op in OPS:
            if op in "+*-" and a < b:
                continue
            result = apply(a, op, b)
            if result is None or (a, op, b) in seen:
                continue
            seen.add((a, op, b))
            moves.append(Move(a, op, b, result, tuple(sorted(rest + (result,)))))
    return moves


@lru_cache(maxsize=None)
def reachable_values(state: tuple[Fraction, ...]) -> frozenset[Fraction]:
    """Every number that the numbers of ``state`` (smallest first) can make, using each once (cached)."""
    n = len(state)
    if n == 1:
        return frozenset(state)
    out = set()
    for i, j in itertools.combinations(range(n), 2):   # plain tuples, not Moves: this runs ~10^5 times
        a, b = state[i], state[j]                         # a <= b
        rest = tuple(state[k] for k in range(n) if k != i and k != j)
        for r in (a + b, a * b, b - a, b / a if a else None, a / b if b else None):
            if r is not None:
                out |= reachable_values(tuple(sorted(rest + (r,))))
    return frozenset(out)


def reachable(state, target) -> bool:
    """The oracle: whether ``target`` can still be made from the numbers ``state``."""
    return Fraction(target) in reachable_values(tuple(sorted(Fraction(x) for x in state)))


# ----------------------------------------------------------------------------- responses
def split_steps(response: str) -> list[str]:
    """Lines, each keeping its ``"\\n"``; lossless (``"".join(split_steps(r)) == r``)."""
    parts = response.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def to_plan_format(steps: list[str]) -> list[str]:
    """A step-format solution as a plan-format one: a ``"Plan A op B\n"`` line per step, then the step lines
    joined into one solution line."""
    plans = []
    for line in steps:
        m = _STEP_RE.fullmatch(line)
        if m is None:
            raise ValueError(f"not a step line: {line!r}")
        plans.append(f"{PLAN_PREFIX}{m.group(1)}{m.group(2)}{m.group(3)}\n")
    return plans + [SOLUTION_SEP.join(line.rstrip("\n") for line in steps)]


def from_plan_format(response: str) -> str:
    """A plan-format response's solution as a step-format response (its plan lines dropped), so that the step
    grader reads it; a step-format response comes back unchanged."""
    lines = split_steps(response)
    if not lines or not lines[0].startswith(PLAN_PREFIX):
        return response
    solution = "".join(line for line in lines if not line.startswith(PLAN_PREFIX))
    return "\n".join(solution.split(SOLUTION_SEP))


def plan_step_kind(step: str) -> str:
    """``"plan"`` (``"Plan 13-9\n"``), ``"solution"`` (a last line, without a newline, that is not a plan) or
    ``"invalid"`` (a format failure)."""
    if _PLAN_RE.fullmatch(step):
        return "plan"
    if step.strip() and "\n" not in step and not step.startswith(PLAN_PREFIX):
        return "solution"
    return "invalid"


@dataclass(frozen=True)
class Judgement:
    """What the grader found: the last number (as written) if the response got that far, whether it solved the
    puzzle, why not, how many steps were legal, and the state after each legal step."""
    answer: str | None
    correct: bool
    reason: str
    legal_steps: int
    states: tuple[tuple[Fraction, ...], ...]


def _read_step(line: str, state: tuple[Fraction, ...], k: int) -> tuple[tuple[Fraction, ...] | None, str]:
    """The state after step ``k`` (1-based) written as ``line`` from ``state``, or None and why it is illegal."""
    m = _STEP_RE.fullmatch(line)
    if m is None:
        return None, f"step {k} is malformed: {line.strip()!r}"
    try:
        a, b, r = (parse_number(m.group(g)) for g in (1, 3, 4))
        left = tuple(parse_number(x) for x in m.group(5).split(" "))
    except (ValueError, ZeroDivisionError) as e:
        return None, f"step {k}: {e}"
    op = m.group(2)
    pool = list(state)
    for x in (a, b):
        if x not in pool:
            return None, f"step {k} uses {format_number(x)}, which is not among the numbers left"
        pool.remove(x)
    true = apply(a, op, b)
    if true is None:
        return None, f"step {k}: {format_number(a)}{op}{format_number(b)} is not allowed " + \
            ("(division by zero)" if op == "/" else "(a negative result)")
    if r != true:
        return None, f"step {k}: {format_number(a)}{op}{format_number(b)} is {format_number(true)}, not " \
                     f"{format_number(r)}"
    after = tuple(sorted(pool + [true]))
    if tuple(sorted(left)) != after:
        return None, f"step {k} lists {' '.join(map(format_number, left))} as left, but " \
                     f"{' '.join(map(format_number, after))} are"
    return after, ""


def judge(puzzle: Puzzle, response: str) -> Judgement:
    """Grade ``response``: solved when every step is legal, exactly three steps are taken (each line after the
    previous one, the last without a newline) and the one number left is the target. A plan-format response is
    judged by its solution line."""
    response = from_plan_format(response)
    state = tuple(Fraction(n) for n in puzzle.numbers)
    states, answer = [], None
    lines = split_steps(response)
    if not lines:
        return Judgement(None, False, "empty response", 0, ())
    for k, line in enumerate(lines, 1):
        if len(state) == 1:
            return Judgement(answer, False, f"text after the last step: {line.strip()!r}", len(states), tuple(states))
        after, why = _read_step(line, state, k)
        if after is None:
            return Judgement(answer, False, why, len(states), tuple(states))
        state = after
        states.append(state)
        answer = format_number(state[0]) if len(state) == 1 else None
    if len(state) > 1:
        return Judgement(None, False, f"ended with {len(state)} numbers left", len(states), tuple(states))
    if lines[-1].endswith("\n"):
        return Judgement(answer, False, "the last step ends with a newline (the answer ends the response)",
                         len(states), tuple(states))
    if state[0] != puzzle.target:
        return Judgement(answer, False, f"the last number is {answer}, not {puzzle.target}", len(states),
                         tuple(states))
    return Judgement(answer, True, "solved", len(states), tuple(states))


def state_after(puzzle: Puzzle, steps) -> tuple[Fraction, ...] | None:
    """The numbers left after ``steps`` (a legal prefix of a response), or None if a step is illegal."""
    state = tuple(Fraction(n) for n in puzzle.numbers)
    for k, line in enumerate(steps, 1):
        if len(state) == 1:
            return None
        state, _ = _read_step(line, state, k)
        if state is None:
            return None
    return state


def value_star(puzzle: Puzzle, steps) -> int:
    """V* of a step prefix: 1 if every step is legal and the target can still be made from what is left (for a
    finished response: if it solved the puzzle), else 0. For measurement only."""
    if steps and not steps[-1].endswith("\n"):
        return int(judge(puzzle, "".join(steps)).correct)
    state = state_after(puzzle, steps)
    return int(state is not None and len(state) > 1 and reachable(state, puzzle.target))


# ----------------------------------------------------------------------------- teacher
def teacher_steps(puzzle: Puzzle, rng: random.Random, solve_rate: float) -> list[str]:
    """The imperfect teacher's solution (see the module docstring): at each step, with probability
    ``solve_rate``, a move that keeps the target reachable (uniformly among those; any move once none does),
    else the move whose result is closest to the target (ties: the first in ``legal_moves`` order)."""
    state, steps = tuple(Fraction(n) for n in puzzle.numbers), []
    target = Fraction(puzzle.target)
    while len(state) > 1:
        moves = legal_moves(state)
        good = [m for m in moves if target in reachable_values(m.left)]
        if good and rng.random() < solve_rate:
            move = rng.choice(good)
        else:
            move = min(moves, key=lambda m: abs(m.result - target))
        steps.append(move.line(last=len(move.left) == 1))
        state = move.left
    return steps


def random_steps(puzzle: Puzzle, rng: random.Random) -> list[str]:
    """A rollout of uniformly random legal moves: a policy that knows the rules, not the oracle. Every move
    has a chance, so the share of such rollouts from a state that solve the puzzle is 0 exactly when the
    target is unreachable from it."""
    state, steps = tuple(Fraction(n) for n in puzzle.numbers), []
    while len(state) > 1:
        move = rng.choice(legal_moves(state))
        steps.append(move.line(last=len(move.left) == 1))
        state = move.left
    return steps


# ----------------------------------------------------------------------------- splits
@dataclass
class CountdownConfig:
    """Countdown puzzles (four numbers in 1-13, a target) with an exact oracle, and the Game of 24 benchmark."""
    name: str = one_of(("countdown",), "countdown")
    seed: int = 0                                  # the generator's (in a run: the run's seed)
    n_train: int = at_least(1, 20000)              # training puzzles (SFT teacher data, rollouts)
    n_validation: int = at_least(0, 1000)          # for choosing settings: never the test split
    n_test: int = at_least(0, 2000)
    min_target: int = at_least(1, 1)               # targets of train, validation and test (24 never)
    max_target: int = at_least(1, 100)
    # the teacher's chance, at each step, to play a move that keeps the target reachable (else: closest to target)
    teacher_solve_rate: float = between(0.0, 1.0, 0.5)
    n_game24: int = between(0, 100, 100)           # of the 100 Game of 24 puzzles, the first K (by rank)
    # the response format: steps (one line per move) or plan (CPL's plan-then-solve: the moves named, then solved)
    format: str = one_of(("steps", "plan"), "steps")

    def __post_init__(self) -> None:
        validate(self)
        if self.min_target > self.max_target:
            raise ConfigError("min_target", f"must be <= max_target ({self.max_target}), got {self.min_target}")


def load_game24(path: str | Path = GAME24_FILE) -> list[Puzzle]:
    """The Game of 24 puzzles of ``path`` (Tree of Thoughts' csv: ``Rank,Puzzles,...``), target 24, by rank."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [make_puzzle(f"game24-{int(r['Rank'])}", r["Puzzles"].split(), 24) for r in rows]


def make_splits(cfg: CountdownConfig) -> dict[str, list[Puzzle]]:
    """``train``/``validation``/``test`` (distinct solvable pairs of a multiset of four numbers in 1-13 and a
    target, never 24; drawn in the order test, validation, train, so test does not change with ``n_train``) and
    ``game24``; deterministic given ``cfg.seed``."""
    targets = [t for t in range(cfg.min_target, cfg.max_target + 1) if t != 24]
    pairs = [(m, t) for m in itertools.combinations_with_replacement(range(1, 14), 4) for t in targets]
    random.Random(cfg.seed).shuffle(pairs)
    wanted = {"test": cfg.n_test, "validation": cfg.n_validation, "train": cfg.n_train}
    splits: dict[str, list[Puzzle]] = {name: [] for name in wanted}
    order = iter(pairs)
    for name, n in wanted.items():
        for numbers, target in order:
            if len(splits[name]) >= n:
                break
            if reachable(numbers, target):
                splits[name].append(make_puzzle(f"{name}-{len(splits[name]):05d}", numbers, target))
        if len(splits[name]) < n:
            raise ConfigError(f"n_{name}", f"only {len(splits[name])} solvable puzzles are left for {name}, "
                                           f"{n} asked: lower it or widen the targets")
    splits["game24"] = load_game24()[:cfg.n_game24]
    return splits


# ----------------------------------------------------------------------------- task
class CountdownTask:
    """The splits of one config, with teacher data, an exact grader and the oracle V*."""

    name = "countdown"
    kind = "single_turn"
    reward_range = (0.0, 1.0)
    step_stops = ["\n"]

    def __init__(self, cfg: CountdownConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else CountdownConfig()
        self.splits = make_splits(self.cfg)

    def problems(self, split: str) -> list[Puzzle]:
        if split not in self.splits:
            raise KeyError(f"countdown: unknown split {split!r}; expected one of {SPLITS}")
        return self.splits[split]

    def grade(self, puzzle: Puzzle, response: str) -> tuple[str | None, bool]:
        """``(the last number as written, solved)``; ``judge`` says why not."""
        j = judge(puzzle, response)
        return j.answer, j.correct

    def judge(self, puzzle: Puzzle, response: str) -> Judgement:
        return judge(puzzle, response)

    def value_star(self, puzzle: Puzzle, steps) -> int:
        return value_star(puzzle, steps)

    def puzzle_of(self, prompt: str) -> Puzzle:
        """The puzzle a prompt states (``"4 9 10 13 -> 24\n"``)."""
        m = _PROMPT_RE.fullmatch(prompt)
        if m is None:
            raise ValueError(f"not a countdown prompt: {prompt!r}")
        return make_puzzle("prompt", m.group(1).split(), int(m.group(2)))

    def split_steps(self, response: str) -> list[str]:
        return split_steps(response)

    @property
    def plan_format(self) -> bool:
        """Responses are plans then a solution (``format=plan``): tree searches grow by plan steps."""
        return self.cfg.format == "plan"

    def step_kind(self, step: str) -> str:
        """A plan-format edge's kind (``plan_step_kind``); read only when ``plan_format`` is on."""
        return plan_step_kind(step)

    def sft_records(self, rng_seed: int, n_per_problem: int = 1) -> list[Trajectory]:
        """The teacher's solutions of the train split (reward: whether it solved the puzzle)."""
        render = to_plan_format if self.plan_format else list
        return self._rollouts("teacher", lambda p, rng: render(teacher_steps(p, rng, self.cfg.teacher_solve_rate)),
                              self.splits["train"], n_per_problem, rng_seed)

    def random_records(self, rng_seed: int, n_per_problem: int = 1, puzzles: int | None = None) -> list[Trajectory]:
        """Rollouts of uniformly random legal moves (``random_steps``) on the first ``puzzles`` train puzzles."""
        return self._rollouts("random", random_steps, self.splits["train"][:puzzles], n_per_problem, rng_seed)

    def _rollouts(self, source: str, play, puzzles: list[Puzzle], n_per_problem: int, rng_seed: int
                  ) -> list[Trajectory]:
        """``n_per_problem`` graded trajectories of ``play(puzzle, rng)`` per puzzle, ids ``SOURCE-K``."""
        rng, records = random.Random(rng_seed), []
        for puzzle in puzzles:
            for _ in range(n_per_problem):
                steps = play(puzzle, rng)
                answer, correct = self.grade(puzzle, "".join(steps))
                records.append(Trajectory(id=f"{source}-{len(records)}", task=self.name, problem_id=puzzle.id,
                                          prompt=puzzle.prompt, steps=steps, reward=float(correct),
                                          correct=correct, answer=answer, meta={"source": source}))
        return records
