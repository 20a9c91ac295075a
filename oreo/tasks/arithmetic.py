"""Procedurally generated multi-step arithmetic reasoning with exact grading.

A problem is a start value and a chain of operations applied strictly left to
right (no precedence), e.g. the prompt ``"7 +5 *3 -4\\n"``. Its gold solution
is one step per line followed by a final-answer line::

    7+5=12
    12*3=36
    36-4=32
    #### 32

Each step string keeps its trailing ``"\\n"``; the final line has none (the
model's EOS token follows it), so ``"".join(solution)`` is the full response.
Every intermediate value of a gold chain lies in ``[0, max_value]``.

The texts are short on purpose: the default experiment trains a tiny
character-level transformer, where every character is a token.

With ``format=plan`` (CPL's plan-then-solve, spec §2.1) a response first names
the operations it will apply, one plan step per line, then solves in one
solution line, the final answer at its end::

    Plan +5
    Plan *3
    Plan -4
    7+5=12 12*3=36 36-4=32 #### 32

Plan steps are the search tree's inner edges, the solution line its terminal
action. The teacher's skips are then plan-level mistakes (a plan that leaves
an operation out), its slips solution-level ones.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from oreo.config import ConfigError, at_least, between, one_of, validate
from oreo.trajectory import Trajectory

__all__ = [
    "ANSWER_PREFIX",
    "PLAN_PREFIX",
    "ArithmeticConfig",
    "ArithmeticTask",
    "Problem",
    "apply_op",
    "extract_answer",
    "first_mistake",
    "format_prompt",
    "format_step",
    "grade",
    "make_splits",
    "parse_prompt",
    "parse_step",
    "plan_step_kind",
    "to_plan_format",
    "repeats_operator",
    "split_steps",
    "teacher_steps",
]

ANSWER_PREFIX = "#### "
PLAN_PREFIX = "Plan "
SPLITS = ("train", "test", "heldout")
MAX_MULTIPLIER = 9

_STEP_RE = re.compile(r"(-?\d+)([+\-*])(-?\d+)=(-?\d+)\n?")
_PLAN_RE = re.compile(r"Plan ([+\-*])(\d+)\n")
_OP_RE = re.compile(r"([+\-*])(\d+)")
# Bounded digit count: answers are small, and this keeps int() cheap on junk.
_ANSWER_RE = re.compile(r"-?\d{1,9}")


@dataclass(frozen=True)
class Problem:
    """One arithmetic chain with its gold solution."""

    id: str
    prompt: str
    answer: int
    # Excluded from the hash (lists are unhashable) so Problems can be dict keys.
    solution: list[str] = field(hash=False)
    n_ops: int


@dataclass
class ArithmeticConfig:
    """The embedded default task: multi-step arithmetic chains, graded exactly."""

    name: str = one_of(("arithmetic",), "arithmetic")
    seed: int = 0                     # the generator's (in a run: the run's seed)
    n_train: int = at_least(1, 2000)  # training problems (SFT teacher data and OREO rollouts)
    n_test: int = at_least(0, 1000)   # same chain lengths as train, disjoint problems
    n_heldout: int = at_least(0, 500)  # longer chains: generalisation
    min_ops: int = at_least(1, 2)
    max_ops: int = at_least(1, 4)
    heldout_min_ops: int = at_least(1, 5)
    heldout_max_ops: int = at_least(1, 6)
    max_value: int = at_least(2, 30)               # every intermediate value stays in [0, max_value]
    # per-step slip rate of the imperfect SFT teacher (random: greedy decoding averages it out)
    teacher_error_rate: float = between(0.0, 1.0, 0.15)
    # chance the teacher skips an operation whose operator repeats the previous one (systematic)
    teacher_skip_rate: float = between(0.0, 1.0, 0.6)
    max_operand: int = at_least(1, 9)              # largest operand of + and -
    # the response format: steps (one line per operation, then the answer) or plan (CPL's plan-then-solve: one
    # "Plan +5" line per operation to apply, then one solution line that does the arithmetic and answers)
    format: str = one_of(("steps", "plan"), "steps")

    def __post_init__(self) -> None:
        validate(self)
        if self.min_ops > self.max_ops:
            raise ConfigError("min_ops", f"must be <= max_ops ({self.max_ops}), got {self.min_ops}")
        if self.heldout_min_ops > self.heldout_max_ops:
            raise ConfigError("heldout_min_ops", f"must be <= heldout_max_ops ({self.heldout_max_ops}), "
                                                 f"got {self.heldout_min_ops}")


# --------------------------------------------------------------------- format


def apply_op(a: int, op: str, b: int) -> int:
    """Exact result of ``a op b`` for op in ``+ - *``."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def format_prompt(start: int, ops: list[tuple[str, int]]) -> str:
    """``(7, [("+", 5), ("*", 3)])`` -> ``"7 +5 *3\\n"``."""
    return " ".join([str(start)] + [f"{op}{b}" for op, b in ops]) + "\n"


def parse_prompt(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    """Inverse of :func:`format_prompt`; raises ValueError on malformed text."""
    tokens = prompt.strip().split(" ")
    try:
        start = int(tokens[0])
    except ValueError:
        raise ValueError(f"malformed prompt {prompt!r}") from None
    ops = []
    for tok in tokens[1:]:
        m = _OP_RE.fullmatch(tok)
        if m is None:
            raise ValueError(f"malformed prompt {prompt!r}")
        ops.append((m.group(1), int(m.group(2))))
    return start, ops


def format_step(a: int, op: str, b: int, result: int) -> str:
    """One solution line, including its trailing newline: ``"7+5=12\\n"``."""
    return f"{a}{op}{b}={result}\n"


def parse_step(step: str) -> tuple[int, str, int, int] | None:
    """``"7+5=12\\n"`` -> ``(7, "+", 5, 12)``; None if the line is not a step."""
    m = _STEP_RE.fullmatch(step)
    if m is None:
        return None
    return int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))


def split_steps(response: str) -> list[str]:
    """Split a response into lines, each keeping its ``"\\n"``; lossless.

    Only ``"\\n"`` separates lines (unlike ``str.splitlines``), and
    ``"".join(split_steps(r)) == r`` always holds. ``""`` gives ``[]``.
    """
    parts = response.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def to_plan_format(steps: list[str]) -> list[str]:
    """A solution in the step format (operation lines, then ``"#### v"``) as a plan-format one: a
    ``"Plan +5\n"`` line per operation line, then the lines joined into one solution line."""
    plans = []
    for line in steps[:-1]:
        parsed = parse_step(line)
        if parsed is None:
            raise ValueError(f"not an operation line: {line!r}")
        plans.append(f"{PLAN_PREFIX}{parsed[1]}{parsed[2]}\n")
    return plans + [" ".join([line.strip() for line in steps[:-1]] + [steps[-1].strip()])]


def from_plan_format(response: str) -> str:
    """A plan-format response's solution line as a step-format response (its plan lines dropped), so
    that step-level checks read it; a step-format response comes back unchanged."""
    lines = split_steps(response)
    if not lines or not lines[0].startswith(PLAN_PREFIX):
        return response
    solution = "".join(line for line in lines if not line.startswith(PLAN_PREFIX))
    head, sep, answer = solution.partition(ANSWER_PREFIX)
    return "".join(f"{part}\n" for part in head.split()) + sep + answer


def plan_step_kind(step: str) -> str:
    """``"plan"`` (``"Plan +5\n"``), ``"solution"`` (a line without a newline that holds the final answer)
    or ``"invalid"`` (a format failure)."""
    if _PLAN_RE.fullmatch(step):
        return "plan"
    if "\n" not in step and extract_answer(step) is not None:
        return "solution"
    return "invalid"


def extract_answer(response: str) -> int | None:
    """The integer after the last ``"#### "``; None if absent or malformed.

    The answer runs to the end of its line and must be a plain integer
    (surrounding whitespace allowed), so ``"#### 32"`` -> 32 but
    ``"#### 3x"`` -> None.
    """
    i = response.rfind(ANSWER_PREFIX)
    if i < 0:
        return None
    text = response[i + len(ANSWER_PREFIX):].split("\n", 1)[0].strip()
    if _ANSWER_RE.fullmatch(text) is None:
        return None
    return int(text)


def grade(problem: Problem, response: str) -> tuple[int | None, bool]:
    """``(extracted answer, whether it equals the gold answer)``."""
    answer = extract_answer(response)
    return answer, answer is not None and answer == problem.answer


def sound_prefix(prompt: str, steps) -> bool:
    """Whether every line of ``steps`` (a partial or whole response to ``prompt``) applies the prompt's next
    operation right, and a final answer line, if any, comes after the last operation and is the true result:
    what a perfect step critic of this task would say."""
    value, ops = parse_prompt(prompt)
    for k, step in enumerate(steps):
        if step.startswith(ANSWER_PREFIX):
            return k == len(ops) and step[len(ANSWER_PREFIX):].strip() == str(value)
        parsed = parse_step(step)
        if parsed is None or k >= len(ops) or parsed != (value, ops[k][0], ops[k][1], apply_op(value, *ops[k])):
            return False
        value = parsed[3]
    return True


def first_mistake(problem: Problem, response: str) -> str:
    """Classify a response by its first mistake: ``"sound"`` (every line right and the right final
    answer), ``"skip"`` (an operation of the prompt left out, in the middle or at the end: the teacher's
    systematic mistake, and what a model does that stops short on a longer chain),
    ``"slip"`` (a line with a wrong result) or ``"other"`` (a malformed line, a wrong operand, a
    missing or wrong final answer). A response can grade correct by luck and still not be sound. A
    plan-format response is judged by its solution line (``from_plan_format``).
    """
    start, ops = parse_prompt(problem.prompt)
    v, i = start, 0
    for line in split_steps(from_plan_format(response)):
        if line.startswith(ANSWER_PREFIX):
            break
        step = parse_step(line)
        if step is None or step[0] != v or i >= len(ops):
            return "other"
        _, op, b, result = step
        if (op, b) != ops[i]:
            return "skip" if (op, b) in ops[i + 1:] else "other"
        if result != apply_op(v, op, b):
            return "slip"
        v, i = result, i + 1
    if i < len(ops):
        return "skip" if extract_answer(response) == v else "other"
    return "sound" if extract_answer(response) == problem.answer else "other"


def repeats_operator(problem: Problem) -> bool:
    """Whether some operator follows the same operator: where the teacher may skip."""
    _, ops = parse_prompt(problem.prompt)
    return any(ops[k][0] == ops[k - 1][0] for k in range(1, len(ops)))


# ----------------------------------------------------------------- generation


def _render_solution(start: int, ops: list[tuple[str, int]]) -> tuple[list[str], int]:
    steps, v = [], start
    for op, b in ops:
        r = apply_op(v, op, b)
        steps.append(format_step(v, op, b, r))
        v = r
    return steps + [f"{ANSWER_PREFIX}{v}"], v


def _random_chain(
    rng: random.Random, n_ops: int, max_value: int, max_operand: int
) -> tuple[int, list[tuple[str, int]]]:
    """A start value and ops whose every intermediate value is in range."""
    v = rng.randint(1, max_value)
    start, ops = v, []
    for _ in range(n_ops):
        choices = []
        if v < max_value:
            choices.append("+")
        if v > 0:
            choices.append("-")
        if v >= 1 and 2 * v <= max_value:
            choices.append("*")
        op = rng.choice(choices)
        if op == "+":
            b = rng.randint(1, min(max_operand, max_value - v))
        elif op == "-":
            b = rng.randint(1, min(max_operand, v))
        else:
            b = rng.randint(2, min(MAX_MULTIPLIER, max_value // v))
        ops.append((op, b))
        v = apply_op(v, op, b)
    return start, ops


def make_splits(cfg: ArithmeticConfig) -> dict[str, list[Problem]]:
    """Generate ``train``/``test``/``heldout``, deterministic given ``cfg.seed``.

    ``train`` and ``test`` draw chain lengths uniformly from
    ``[min_ops, max_ops]``; ``heldout`` from ``[heldout_min_ops,
    heldout_max_ops]``. No prompt (i.e. no (start, ops) tuple) occurs twice,
    within or across splits.
    """
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    plan = {
        "train": (cfg.n_train, cfg.min_ops, cfg.max_ops),
        "test": (cfg.n_test, cfg.min_ops, cfg.max_ops),
        "heldout": (cfg.n_heldout, cfg.heldout_min_ops, cfg.heldout_max_ops),
    }
    splits: dict[str, list[Problem]] = {}
    for name, (n, lo, hi) in plan.items():
        problems: list[Problem] = []
        attempts = 0
        while len(problems) < n:
            attempts += 1
            if attempts > 100 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct {name} problems; widen the config")
            n_ops = rng.randint(lo, hi)
            start, ops = _random_chain(rng, n_ops, cfg.max_value, cfg.max_operand)
            prompt = format_prompt(start, ops)
            if prompt in seen:
                continue
            seen.add(prompt)
            solution, answer = _render_solution(start, ops)
            problems.append(Problem(f"{name}-{len(problems):05d}", prompt, answer, solution, n_ops))
        splits[name] = problems
    return splits


# -------------------------------------------------------------------- teacher


def _stays_in_range(v: int, ops: list[tuple[str, int]], max_value: int) -> bool:
    for op, b in ops:
        v = apply_op(v, op, b)
        if not 0 <= v <= max_value:
            return False
    return True


def _slips(op: str, b: int) -> list[int]:
    # Plausible human slips: off by one or two, a dropped/extra carry or
    # borrow (+-10), and for products a neighbouring times-table entry.
    deltas = [-2, -1, 1, 2, -10, 10]
    if op == "*":
        deltas += [-b, b]
    return deltas


def teacher_steps(
    problem: Problem, rng: random.Random, error_rate: float, *, max_value: int = 99, skip_rate: float = 0.0
) -> list[str]:
    """An imperfect teacher's solution, in the gold format.

    The teacher makes two kinds of step-level mistakes:

    - a *slip*: at each arithmetic step, with probability ``error_rate``, it
      writes a plausible wrong result (see :func:`_slips`) and continues the
      chain from that wrong value. Slips are random, so a policy trained on
      many teacher solutions puts most of its mass on the right result.
    - a *skip*: when an operator repeats the previous one (``"+3 +5"``), it
      leaves out the second operation with probability ``skip_rate``. Skips
      are systematic: above 0.5, imitating the teacher makes the skip the
      most likely continuation, so greedy decoding inherits it and only the
      outcome reward says it is wrong.

    A slipped value never equals the gold value at that step, and ``+``,
    ``-`` and ``* k`` (k >= 2) are injective and change the value, so once the
    chain is off it stays off: any mistake makes the final answer wrong.
    Slipped values are chosen, when possible, so that the rest of the chain
    stays in ``[0, max_value]``.

    With ``error_rate == skip_rate == 0`` this returns exactly ``problem.solution``.
    """
    start, ops = parse_prompt(problem.prompt)
    steps, v, gold = [], start, start
    for i, (op, b) in enumerate(ops):
        gold = apply_op(gold, op, b)
        # A skip after a slip could land back on the gold value; then it is no mistake. (No draw when
        # skip_rate is 0: the slips then match a teacher without skips, draw for draw.)
        if skip_rate > 0 and i > 0 and op == ops[i - 1][0] and v != gold and rng.random() < skip_rate:
            continue
        right = apply_op(v, op, b)
        result = right
        if rng.random() < error_rate:
            wrong = [right + d for d in _slips(op, b)]
            wrong = [w for w in wrong if w >= 0 and w != right and w != gold]
            in_range = [w for w in wrong if w <= max_value and _stays_in_range(w, ops[i + 1:], max_value)]
            result = rng.choice(in_range or wrong)
        steps.append(format_step(v, op, b, result))
        v = result
    return steps + [f"{ANSWER_PREFIX}{v}"]


# ----------------------------------------------------------------------- task


class ArithmeticTask:
    """The generated splits of one config, with teacher data and grading."""

    name = "arithmetic"
    kind = "single_turn"
    reward_range = (0.0, 1.0)

    def __init__(self, cfg: ArithmeticConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else ArithmeticConfig()
        self.splits = make_splits(self.cfg)

    def problems(self, split: str) -> list[Problem]:
        """The problems of ``split`` (``train``, ``test`` or ``heldout``)."""
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.splits[split]

    def teacher_dataset(self, rng_seed: int, n_per_problem: int = 1) -> list[tuple[Problem, list[str]]]:
        """``n_per_problem`` teacher solutions per train problem, seeded."""
        rng = random.Random(rng_seed)
        render = to_plan_format if self.cfg.format == "plan" else list
        return [
            (p, render(teacher_steps(p, rng, self.cfg.teacher_error_rate, max_value=self.cfg.max_value,
                                     skip_rate=self.cfg.teacher_skip_rate)))
            for p in self.splits["train"]
            for _ in range(n_per_problem)
        ]

    @property
    def plan_format(self) -> bool:
        """Responses are plans then a solution (``format=plan``): tree searches grow by plan steps."""
        return self.cfg.format == "plan"

    def step_kind(self, step: str) -> str:
        """A plan-format edge's kind (``plan_step_kind``); read only when ``plan_format`` is on."""
        return plan_step_kind(step)

    def grade(self, problem: Problem, response: str) -> tuple[int | None, bool]:
        """See :func:`grade`."""
        return grade(problem, response)

    def split_steps(self, response: str) -> list[str]:
        """See :func:`split_steps`."""
        return split_steps(response)

    @property
    def step_stops(self) -> list[str]:
        """The strings that end a step (a search generates one step at a time up to one of them)."""
        return ["\n"]

    def sft_records(self, rng_seed: int, n_per_problem: int = 1) -> list[Trajectory]:
        """The teacher's solutions as trajectory records (reward: whether the teacher got it right)."""
        records = []
        for k, (problem, steps) in enumerate(self.teacher_dataset(rng_seed, n_per_problem)):
            answer, correct = grade(problem, "".join(steps))
            records.append(Trajectory(id=f"teacher-{k}", task=self.name, problem_id=problem.id,
                                      prompt=problem.prompt, steps=steps, reward=float(correct),
                                      correct=correct, answer=None if answer is None else str(answer),
                                      meta={"source": "teacher"}))
        return records
