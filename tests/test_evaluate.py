"""pass@k, maj@k and balanced selection against hand-computed values."""
from __future__ import annotations

import pytest

from oreo.evaluate import evaluate_sampled, majority_correct, pass_at_k
from oreo.rollout.selection import balanced_selection
from oreo.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from oreo.trajectory import Trajectory
from oreo.types import Completion


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)      # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)     # 1 - C(3,3)/C(5,3)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_majority_vote_ties_to_the_earliest_and_ignores_missing_answers():
    assert majority_correct(["5", "7", "7"], [True, False, False]) is False
    assert majority_correct(["5", "7", "5"], [True, False, True]) is True
    assert majority_correct(["7", "5"], [False, True]) is False            # tie: the earliest answer wins
    assert majority_correct([None, None, "5"], [False, False, True]) is True
    assert majority_correct([None, None], [False, False]) is False
    assert majority_correct(["0.50", "0.5"], [True, True], key=lambda a: str(float(a))) is True


class Fixed:
    """Each prompt's samples: the gold answer for the first ``right`` rows, a wrong one after."""

    batch_size = 6

    def __init__(self, answers, right):
        self.answers, self.right = answers, right

    def generate(self, prompts, *, n=1, temperature=1.0, seed=0, progress=None):
        return [[Completion(f"#### {self.answers[p] + (0 if k < self.right[p] else 1 + k)}", True, 3)
                 for k in range(n)] for p in prompts]


def test_evaluate_sampled_on_scripted_samples(tmp_path):
    task = ArithmeticTask(ArithmeticConfig(n_train=4, n_test=3, n_heldout=1))
    problems = task.problems("test")
    right = {p.prompt: r for p, r in zip(problems, (0, 1, 3))}
    out = evaluate_sampled(task, problems, Fixed({p.prompt: p.answer for p in problems}, right), n=4,
                           temperature=1.0, ks=[1, 2, 4, 8], out_path=tmp_path / "s.jsonl")
    assert set(out) == {"pass@1", "maj@1", "pass@2", "maj@2", "pass@4", "maj@4"}  # k=8 > n is left out
    assert out["pass@1"] == pytest.approx((0 + 1 / 4 + 3 / 4) / 3)
    assert out["pass@4"] == pytest.approx(2 / 3)
    # maj@4: the wrong answers all differ, so with 1 right answer every answer counts once and the tie
    # goes to the earliest (the right one); with 3 right answers they win outright
    assert out["maj@4"] == pytest.approx(2 / 3) and out["maj@1"] == pytest.approx(2 / 3)
    right[problems[1].prompt] = 0  # now nobody is right there: maj@4 drops by a third
    out = evaluate_sampled(task, problems, Fixed({p.prompt: p.answer for p in problems}, right), n=4,
                           temperature=1.0, ks=[4])
    assert out["maj@4"] == pytest.approx(1 / 3)
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 3


def _records(spec):
    """spec: problem -> (n correct, n wrong)."""
    out = []
    for pid, (c, w) in spec.items():
        out += [Trajectory(problem_id=pid, reward=1.0, id=f"{pid}-c{i}", task="t", prompt="q", steps=[])
                for i in range(c)]
        out += [Trajectory(problem_id=pid, reward=0.0, id=f"{pid}-w{i}", task="t", prompt="q", steps=[])
                for i in range(w)]
    return out


def test_balanced_selection_follows_the_reference_rule():
    records = _records({"a": (6, 2), "b": (0, 9), "c": (3, 0), "d": (5, 5)})
    kept = balanced_selection(records, k=4, seed=0)
    count = {(r.problem_id, r.correct): 0 for r in records}
    for r in kept:
        count[(r.problem_id, r.correct)] += 1
    # min(c, max(w, 1), k) correct, min(w, k) wrong
    assert count == {("a", True): 2, ("a", False): 2, ("b", False): 4, ("c", True): 1, ("d", True): 4,
                     ("d", False): 4}
    assert [r.id for r in kept] == [r.id for r in records if r in kept]  # input order kept
    assert kept == balanced_selection(records, k=4, seed=0) != balanced_selection(records, k=4, seed=1)
