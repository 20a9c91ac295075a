"""Which mistakes each method's greedy answers make on the arithmetic task:
``python experiments/mistakes.py RUN_DIR [RUN_DIR ...]``.

Reads ``RUN_DIR/eval/METHOD-SPLIT.jsonl`` and classifies every answer by its first mistake
(:func:`oreo.tasks.arithmetic.first_mistake`): ``sound`` (every line right), ``skip`` (an operation
left out: the teacher's systematic mistake), ``slip`` (a wrong result: the teacher's random mistake,
or the model's own), ``other``. Prints the percentage of each per method and split, and how often
the answer skips among the problems where the teacher may skip (an operator repeated).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from oreo.tasks.arithmetic import Problem, first_mistake, repeats_operator

KINDS = ("sound", "skip", "slip", "other")


def summarise(path: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    kinds, exposed, skipped = Counter(), 0, 0
    for r in rows:
        problem = Problem(r["problem_id"], r["prompt"], r["gold"], [], 0)
        kind = first_mistake(problem, r["response"])
        kinds[kind] += 1
        if repeats_operator(problem):
            exposed += 1
            skipped += kind == "skip"
    out = {k: 100 * kinds[k] / len(rows) for k in KINDS}
    out["skip_when_repeated"] = 100 * skipped / max(1, exposed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | method | split | " + " | ".join(KINDS) + " | skips where an operator repeats |")
    print("|---|---|---|" + "---|" * (len(KINDS) + 1))
    for run in args.run_dirs:
        for path in sorted((run / "eval").glob("*.jsonl")):
            method, split = path.stem.rsplit("-", 1)
            s = summarise(path)
            print(f"| {run} | {method} | {split} | " + " | ".join(f"{s[k]:.1f}" for k in KINDS)
                  + f" | {s['skip_when_repeated']:.1f} |")


if __name__ == "__main__":
    main()
