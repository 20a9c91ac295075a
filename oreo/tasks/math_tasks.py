"""GSM8K and MATH: problems from the Hugging Face hub or local jsonl files, chat prompts, lossless
step splitting, and grading (``oreo.tasks.grading``).

Splits:

- ``gsm8k``: ``train`` (7,473), ``test`` (1,319); hub ``openai/gsm8k`` (config ``main``), or
  ``DATA_DIR/train.jsonl`` and ``DATA_DIR/test.jsonl`` with the hub's fields (``question``, ``answer``).
- ``math``: ``test`` (the 5,000-problem MATH test set), ``math500`` (its PRM800K subset) and ``train``.
  Locally: ``DATA_DIR/math_test5000.jsonl`` (``problem``, ``solution``; the answer is the solution's
  last ``\\boxed{}``), ``DATA_DIR/math500_test.jsonl`` (``problem``, ``solution``, ``answer``,
  ``unique_id``) and, if present, ``DATA_DIR/train.jsonl``; without a train file the test problems
  outside MATH500 stand in for it (the PRM800K train split holds exactly those).

A problem's ``prompt`` is a list of chat messages (system prompt + question) rendered by the model's
chat template, or, with ``prompt_template``, a plain string (``{question}`` is substituted).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from oreo.buffer import json_lines
from oreo.config import above, one_of, validate
from oreo.tasks import grading
from oreo.trajectory import Trajectory

GSM8K_SYSTEM = "Please reason step by step, and produce a final answer following 4 '#', like '#### 0'"
MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
STEP_SEPARATORS = {"gsm8k": ["\n"], "math": ["\n", ". ", ".$ "]}
# CPL's Round-1 plan-then-solve format (spec §2.1), with demonstrations of our own: plan steps end with <endstep>,
# the solution with <endsolution>; a base model continues after "Plans:" (``format=plan``)
PLAN_END, SOLUTION_END = "<endstep>", "<endsolution>"
_PLAN_STEP_RE = re.compile(r"Plan \d+:.*<endstep>", re.S)
_PLAN_HEAD_RE = re.compile(r"Plan \d+:")
PLAN_PROMPT = """Solve the question. First write a plan: short, general steps that say what to find and which \
facts or formulas to use, one per line, each ending with <endstep>, without computing anything. Then carry out \
every plan step under "Detailed Implementation:", put the final answer in \\boxed{}, and end with <endsolution>.

Question: A baker makes 4 trays of 12 muffins and sells all but 7. How many muffins does he sell?

Plans:
Plan 1: Find how many muffins were made from the number of trays and muffins per tray.<endstep>
Plan 2: Subtract the muffins left over from the muffins made.<endstep>
Detailed Implementation:
1. He made 4 * 12 = 48 muffins.
2. He sold 48 - 7 = 41 muffins.
The final answer is \\boxed{41}.<endsolution>

Question: What is the sum of the roots of $x^2 - 5x + 6 = 0$?

Plans:
Plan 1: Recall how the sum of the roots of a quadratic relates to its coefficients.<endstep>
Plan 2: Read the coefficients off the equation and apply the relation.<endstep>
Detailed Implementation:
1. For $ax^2 + bx + c = 0$ the roots sum to $-b/a$.
2. Here $a = 1$ and $b = -5$, so the roots sum to $5$.
The final answer is \\boxed{5}.<endsolution>

Question: {question}

Plans:
"""
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
# split -> (hub dataset, its configs, its split); the MATH copy on the hub has one config per subject
HUB = {"gsm8k": {"train": ("openai/gsm8k", ("main",), "train"), "test": ("openai/gsm8k", ("main",), "test")},
       "math": {"train": ("EleutherAI/hendrycks_math", MATH_SUBJECTS, "train"),
                "test": ("EleutherAI/hendrycks_math", MATH_SUBJECTS, "test"),
                "math500": ("HuggingFaceH4/MATH-500", (None,), "test")}}


@dataclass(frozen=True)
class MathProblem:
    id: str
    question: str
    prompt: str | list = field(hash=False)  # chat messages, or plain text
    answer: str = ""                        # the gold final answer
    solution: str = field(default="", hash=False)


@dataclass
class MathConfig:
    """GSM8K (graded on the final number) and MATH (the last \\boxed{} answer, by symbolic equivalence)."""
    name: str = one_of(("gsm8k", "math"), "gsm8k")
    # None: the Hugging Face hub (GSM8K: openai/gsm8k; MATH: EleutherAI/hendrycks_math
    data_dir: str | None = None
                                        # and HuggingFaceH4/MATH-500); else a folder of jsonl files (module docstring)
    # split -> keep N problems (a seeded sample), e.g. {train: 64, test: 32}
    limits: dict = field(default_factory=dict)
    system_prompt: str | None = None    # None: the paper's (GSM8K_SYSTEM / MATH_SYSTEM)
    prompt_template: str | None = None  # a plain-text prompt instead of chat messages, e.g. "Q: {question}\nA:"
    step_separators: list[str] | None = None   # None: newline (GSM8K); newline, ". " and ".$ " (MATH)
    grade_timeout: float = above(0, 5.0)          # seconds per symbolic comparison (MATH); a timeout counts as wrong
    # steps | plan: CPL's plan-then-solve format (a few-shot prompt, plan steps ending <endstep>, one solution
    # ending <endsolution> with the answer in \boxed{}; python -m oreo.cpl)
    format: str = one_of(("steps", "plan"), "steps")
    seed: int = 0                       # the sample of limits (in a run: the run's seed)

    def __post_init__(self):
        validate(self)


def split_on(text: str, separators: list[str]) -> list[str]:
    """Split ``text`` after every occurrence of any separator (kept with the step before it); lossless:
    ``"".join(split_on(t, s)) == t``, no empty steps."""
    steps, start, i = [], 0, 0
    while i < len(text):
        for sep in sorted(separators, key=len, reverse=True):
            if sep and text.startswith(sep, i):
                i += len(sep)
                steps.append(text[start:i])
                start = i
                break
        else:
            i += 1
    if start < len(text):
        steps.append(text[start:])
    return steps


def _read_jsonl(path: Path) -> list[dict]:
    return [obj for _, _, obj in json_lines(path)]


class MathTask:
    """One of GSM8K or MATH, with the paper's prompts and graders."""

    kind = "single_turn"
    reward_range = (0.0, 1.0)

    def __init__(self, cfg: MathConfig | None = None):
        self.cfg = cfg if cfg is not None else MathConfig()
        self.name = self.cfg.name
        self.separators = ([PLAN_END] if self.cfg.format == "plan" else
                           self.cfg.step_separators or STEP_SEPARATORS[self.name])
        self.system_prompt = self.cfg.system_prompt or (GSM8K_SYSTEM if self.name == "gsm8k" else MATH_SYSTEM)
        self._splits: dict[str, list[MathProblem]] = {}

    # ------------------------------------------------------------------ data
    def _rows(self, split: str) -> list[dict]:
        if self.cfg.data_dir is None:
            if split not in HUB[self.name]:
                raise KeyError(f"unknown split {split!r} for {self.name}; expected one of {sorted(HUB[self.name])}")
            from datasets import load_dataset

            path, configs, hub_split = HUB[self.name][split]
            return [row for config in configs for row in load_dataset(path, config, split=hub_split)]
        folder = Path(self.cfg.data_dir)
        if self.name == "gsm8k":
            files = {"train": "train.jsonl", "test": "test.jsonl"}
        else:
            files = {"test": "math_test5000.jsonl", "math500": "math500_test.jsonl", "train": "train.jsonl"}
        if split not in files:
            raise KeyError(f"unknown split {split!r} for {self.name}; expected one of {sorted(files)}")
        path = folder / files[split]
        if self.name == "math" and split == "train" and not path.exists():
            held = {r["problem"] for r in _read_jsonl(folder / files["math500"])}
            return [r for r in _read_jsonl(folder / files["test"]) if r["problem"] not in held]
        if not path.exists():
            raise FileNotFoundError(f"{self.name} {split}: {path} does not exist (task.data_dir={folder})")
        return _read_jsonl(path)

    def _problem(self, split: str, i: int, row: dict) -> MathProblem:
        if self.name == "gsm8k":
            question, solution = row["question"], row["answer"]
            answer = grading.gsm8k_gold(solution)
        else:
            question, solution = row["problem"], row["solution"]
            answer = grading.math_gold(row)
        if self.cfg.format == "plan":
            prompt = PLAN_PROMPT.replace("{question}", question)
        elif self.cfg.prompt_template is not None:
            prompt = self.cfg.prompt_template.format(question=question)
        else:
            prompt = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": question}]
        return MathProblem(f"{self.name}-{split}-{i:05d}", question, prompt, answer, solution)

    def problems(self, split: str) -> list[MathProblem]:
        if split not in self._splits:
            problems = [self._problem(split, i, row) for i, row in enumerate(self._rows(split))]
            limit = self.cfg.limits.get(split)
            if limit is not None and limit < len(problems):
                problems = random.Random(self.cfg.seed).sample(problems, int(limit))
            self._splits[split] = problems
        return self._splits[split]

    # -------------------------------------------------------------- grading
    def grade(self, problem: MathProblem, response: str) -> tuple[str | None, bool]:
        if self.name == "gsm8k":
            if self.cfg.format == "plan":   # the answer is the solution's \boxed{}
                boxed = grading.extract_boxed(response)
                return grading.grade_gsm8k(boxed, problem.answer) if boxed is not None else (None, False)
            return grading.grade_gsm8k(response, problem.answer)
        # The problem text lets the grader tell an answer from a copy of the question.
        return grading.grade_math(response, problem.answer, timeout=self.cfg.grade_timeout,
                                  problem=problem.question)

    def answer_key(self, answer: str) -> str:
        """What majority voting groups by: equal numbers (GSM8K) or normalised expressions (MATH)."""
        if self.name == "gsm8k":
            try:
                return str(Decimal(answer).normalize())
            except InvalidOperation:
                return answer
        return grading.normalize_math_answer(answer)

    def split_steps(self, response: str) -> list[str]:
        return split_on(response, self.separators)

    @property
    def step_stops(self) -> list[str]:
        """The strings that end a step: the step separators (plan format: a plan step's or the solution's end,
        or a new question)."""
        return [PLAN_END, SOLUTION_END, "Question:"] if self.cfg.format == "plan" else list(self.separators)

    @property
    def plan_format(self) -> bool:
        return self.cfg.format == "plan"

    def step_kind(self, step: str) -> str:
        """Plan format: ``"plan"`` (one "Plan k: ..." ending with <endstep>), ``"solution"`` ("Detailed
        Implementation:" with a \boxed{} answer, ending with <endsolution>) or ``"invalid"``."""
        text = step.strip()
        if _PLAN_STEP_RE.fullmatch(text) and len(_PLAN_HEAD_RE.findall(text)) == 1:
            return "plan"
        if (text.startswith("Detailed Implementation:") and text.endswith(SOLUTION_END)
                and grading.extract_boxed(text) is not None):
            return "solution"
        return "invalid"

    def sft_records(self, rng_seed: int, n_per_problem: int = 1) -> list[Trajectory]:
        """The dataset's own solutions of the train split as trajectories (reward 1)."""
        if self.cfg.format == "plan":
            raise ValueError("task.format=plan: the dataset's solutions are not plans, so there is no SFT data before "
                             "the first plan search; CPL starts from the base model (cpl.initial_sft=false)")
        records = []
        for p in self.problems("train"):
            steps = self.split_steps(p.solution)
            records.append(Trajectory(id=f"gold-{p.id}", task=self.name, problem_id=p.id, prompt=p.prompt,
                                      steps=steps, reward=1.0, correct=True, answer=p.answer,
                                      meta={"source": "dataset"}))
        return records
