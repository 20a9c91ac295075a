"""The MATH grader on hand-written equivalence and non-equivalence pairs (tests/data/grader_pairs.jsonl).

Each line: ``gold``, ``answer``, ``equal`` (the expected verdict), ``kind`` and, for copies, the
``problem`` statement. ``experiments/grader_gaming.py`` reports the same accuracy for any git
revision of the grader (``--ref``); experiments/results/grader.md records it before and after.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from oreo.tasks.grading import grade_math

PAIRS_FILE = Path(__file__).resolve().parent / "data" / "grader_pairs.jsonl"
# The kinds the issue names, each covered by pairs that should and should not grade correct.
KINDS = ("repeating", "interval", "scientific", "unicode", "connective", "copy", "operator")


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    with open(PAIRS_FILE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_the_pair_set(pairs):
    assert len(pairs) >= 100
    assert all(isinstance(p["gold"], str) and isinstance(p["answer"], str) and isinstance(p["equal"], bool)
               for p in pairs)
    verdicts = Counter((p["kind"], p["equal"]) for p in pairs)
    for kind in KINDS:
        assert verdicts[kind, False] > 0, kind
    for kind in KINDS:
        if kind not in ("connective",):
            assert verdicts[kind, True] > 0, kind
    assert all("problem" in p for p in pairs if p["kind"] == "copy")


def test_the_grader_on_every_pair(pairs):
    wrong = []
    for p in pairs:
        response = f"The answer is $\\boxed{{{p['answer']}}}$."
        if grade_math(response, p["gold"], problem=p.get("problem"))[1] is not p["equal"]:
            wrong.append((p["kind"], p["gold"], p["answer"], p["equal"]))
    print(f"grader pairs: {len(pairs) - len(wrong)}/{len(pairs)} graded as expected")
    assert wrong == []
