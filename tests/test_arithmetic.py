"""Tests for the procedurally generated arithmetic task."""

import random

import pytest

from oreo.tasks.arithmetic import (
    ArithmeticConfig,
    ArithmeticTask,
    Problem,
    apply_op,
    extract_answer,
    first_mistake,
    from_plan_format,
    grade,
    make_splits,
    parse_prompt,
    parse_step,
    plan_step_kind,
    repeats_operator,
    sound_prefix,
    split_steps,
    teacher_steps,
    to_plan_format,
)

# wide values and a teacher that only slips: the statistics below are calibrated on these
CFG = ArithmeticConfig(n_train=1000, n_test=200, n_heldout=200, max_value=99, teacher_skip_rate=0.0)


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask(CFG)


def all_problems(task):
    return [p for split in ("train", "test", "heldout") for p in task.problems(split)]


def check_chain(problem, steps):
    """Assert the steps follow the prompt's ops and each starts from the last result."""
    start, ops = parse_prompt(problem.prompt)
    assert len(steps) == len(ops) + 1
    v = start
    for (op, b), step in zip(ops, steps):
        parsed = parse_step(step)
        assert parsed is not None, step
        a, op2, b2, result = parsed
        assert (a, op2, b2) == (v, op, b)
        v = result
    assert steps[-1] == f"#### {v}"
    return v


def test_split_sizes_and_ids(task):
    assert [len(task.problems(s)) for s in ("train", "test", "heldout")] == [1000, 200, 200]
    assert task.problems("train")[17].id == "train-00017"
    ids = [p.id for p in all_problems(task)]
    assert len(set(ids)) == len(ids)
    with pytest.raises(KeyError):
        task.problems("dev")


def test_deterministic_by_seed(task):
    cfg = ArithmeticConfig(n_train=100, n_test=20, n_heldout=20)
    assert make_splits(cfg) == make_splits(ArithmeticConfig(n_train=100, n_test=20, n_heldout=20))
    assert make_splits(cfg) != make_splits(ArithmeticConfig(seed=1, n_train=100, n_test=20, n_heldout=20))
    assert task.teacher_dataset(3) == task.teacher_dataset(3)


def test_splits_disjoint(task):
    keys = [parse_prompt(p.prompt) for p in all_problems(task)]
    as_tuples = {(start, tuple(ops)) for start, ops in keys}
    assert len(as_tuples) == len(keys)


def test_values_in_range_and_lengths(task):
    for split, (lo, hi) in {"train": (2, 4), "test": (2, 4), "heldout": (5, 6)}.items():
        for p in task.problems(split):
            start, ops = parse_prompt(p.prompt)
            assert lo <= p.n_ops == len(ops) <= hi
            assert 0 <= start <= CFG.max_value
            v = start
            for op, b in ops:
                assert (op in "+-" and 1 <= b <= CFG.max_operand) or (op == "*" and 2 <= b <= 9)
                v = apply_op(v, op, b)
                assert 0 <= v <= CFG.max_value
            assert v == p.answer


def test_heldout_longer(task):
    assert min(p.n_ops for p in task.problems("heldout")) > max(p.n_ops for p in task.problems("train"))
    assert {p.n_ops for p in task.problems("test")} == {2, 3, 4}


def test_gold_solution_grades_correct(task):
    for p in all_problems(task):
        assert check_chain(p, p.solution) == p.answer
        assert grade(p, "".join(p.solution)) == (p.answer, True)
        assert task.grade(p, "".join(p.solution)) == (p.answer, True)
        assert p.solution[-1] == f"#### {p.answer}"
        assert all(s.endswith("\n") for s in p.solution[:-1])


def test_example_format():
    # Pins the exact text format other modules rely on.
    p = ArithmeticTask(ArithmeticConfig(n_train=1, n_test=0, n_heldout=0)).problems("train")[0]
    start, ops = parse_prompt(p.prompt)
    assert p.prompt == " ".join([str(start)] + [f"{op}{b}" for op, b in ops]) + "\n"
    assert parse_step("7+5=12\n") == (7, "+", 5, 12)
    assert parse_step("36-4=32\n") == (36, "-", 4, 32)
    assert parse_step("12*3=36\n") == (12, "*", 3, 36)
    assert parse_step("#### 32") is None


def test_teacher_error_rate_zero_is_gold(task):
    rng = random.Random(0)
    for p in all_problems(task):
        assert teacher_steps(p, rng, 0.0) == p.solution


def test_teacher_error_rate_one_always_wrong(task):
    rng = random.Random(0)
    for p in all_problems(task):
        steps = teacher_steps(p, rng, 1.0)
        final = check_chain(p, steps)  # internally consistent chain
        assert grade(p, "".join(steps)) == (final, False)
        for step in steps[:-1]:
            a, op, b, result = parse_step(step)
            assert result != apply_op(a, op, b)
            assert result >= 0


def test_teacher_empirical_error_rate(task):
    data = task.teacher_dataset(rng_seed=1, n_per_problem=2)
    assert len(data) == 2 * len(task.problems("train"))
    n_steps = n_wrong = n_solved = 0
    for p, steps in data:
        final = check_chain(p, steps)
        wrong_here = 0
        for step in steps[:-1]:
            a, op, b, result = parse_step(step)
            n_steps += 1
            wrong_here += result != apply_op(a, op, b)
        n_wrong += wrong_here
        # Correct iff no step slipped: errors never cancel out.
        assert (final == p.answer) == (wrong_here == 0)
        n_solved += grade(p, "".join(steps))[1]
    assert abs(n_wrong / n_steps - CFG.teacher_error_rate) < 0.02
    assert 0.4 < n_solved / len(data) < 0.8


def test_split_steps_lossless(task):
    cases = ["", "\n", "\n\n", "abc", "a\nb", "a\nb\n", "7+5=12\n#### 12", "x\r\ny\x0bz\n"]
    cases += ["".join(p.solution) for p in task.problems("test")]
    for text in cases:
        parts = split_steps(text)
        assert "".join(parts) == text
        assert all(part for part in parts)
        assert all(part.endswith("\n") for part in parts[:-1])
        assert all("\n" not in part[:-1] for part in parts)
    assert split_steps("") == []
    assert split_steps("7+5=12\n12*3=36\n#### 36") == ["7+5=12\n", "12*3=36\n", "#### 36"]
    assert split_steps("a\n") == ["a\n"]


def test_extract_answer():
    assert extract_answer("7+5=12\n#### 12") == 12
    assert extract_answer("#### 12\n") == 12
    assert extract_answer("#### -3") == -3
    assert extract_answer("#### 1\n#### 2") == 2
    for bad in ["", "12", "### 12", "####12", "#### ", "#### x", "#### 12abc", "#### 1 2",
                "#### 1.5", "#### +3", "#### " + "9" * 5000]:
        assert extract_answer(bad) is None, bad


def test_grade_malformed():
    p = ArithmeticTask(ArithmeticConfig(n_train=1, n_test=0, n_heldout=0)).problems("train")[0]
    assert grade(p, "") == (None, False)
    assert grade(p, f"#### {p.answer + 1}") == (p.answer + 1, False)
    assert grade(p, f"#### {p.answer}") == (p.answer, True)


def test_problem_hashable(task):
    p = task.problems("train")[0]
    assert {p: 1}[p] == 1


def test_first_mistake_classifies_gold_and_teacher_mistakes(task):
    rng = random.Random(0)
    for p in all_problems(task):
        assert first_mistake(p, "".join(p.solution)) == "sound"
        assert first_mistake(p, "".join(teacher_steps(p, rng, 1.0))) == "slip"
        assert first_mistake(p, "".join(p.solution[:-1]) + "#### 123456") == "other"
        skipped = "".join(teacher_steps(p, rng, 0.0, skip_rate=1.0))
        assert first_mistake(p, skipped) == ("skip" if repeats_operator(p) else "sound")
    p = next(p for p in task.problems("test") if p.n_ops >= 3)
    assert first_mistake(p, "".join(p.solution[1:])) == "other"  # starts from the wrong value


def test_sound_prefix_by_hand():
    prompt = "7 +5 *3\n"
    assert sound_prefix(prompt, [])
    assert sound_prefix(prompt, ["7+5=12\n"])
    assert sound_prefix(prompt, ["7+5=12\n", "12*3=36\n", "#### 36"])
    assert not sound_prefix(prompt, ["7+5=13\n"])                       # a slip
    assert not sound_prefix(prompt, ["12*3=36\n"])                      # starts from the wrong value
    assert not sound_prefix(prompt, ["7+5=12\n", "#### 12"])            # answers before the last operation
    assert not sound_prefix(prompt, ["7+5=12\n", "12*3=36\n", "#### 35"])
    assert not sound_prefix(prompt, ["7+5=12\n", "12*3=36\n", "36*1=36\n"])  # one operation too many


def test_sound_prefix_agrees_with_first_mistake(task):
    rng = random.Random(1)
    for p in task.problems("test")[:200]:
        response = "".join(teacher_steps(p, rng, 0.3, skip_rate=0.3))
        assert sound_prefix(p.prompt, split_steps(response)) == (first_mistake(p, response) == "sound")


def test_teacher_skips_only_repeated_operators_and_is_then_wrong(task):
    data = ArithmeticTask(ArithmeticConfig(n_train=1000, max_value=99, teacher_error_rate=0.1,
                                         teacher_skip_rate=0.6)).teacher_dataset(0, 2)
    exposed = skipped = 0
    for p, steps in data:
        kind = first_mistake(p, "".join(steps))
        assert grade(p, "".join(steps))[1] == (kind == "sound")  # every mistake is fatal
        if not repeats_operator(p):
            assert kind in ("sound", "slip")
        else:
            exposed += 1
            skipped += kind == "skip"
    # a problem may repeat an operator more than once, and a slip may come first
    assert 0.55 < skipped / exposed < 0.8


def test_teacher_rates_are_validated():
    with pytest.raises(ValueError, match="teacher_skip_rate"):
        ArithmeticConfig(teacher_skip_rate=1.5)


# ------------------------------------------------------------------------ plan format (CPL)
def test_plan_format_by_hand():
    steps = ["7+5=12\n", "12*3=36\n", "36-4=32\n", "#### 32"]
    plan = to_plan_format(steps)
    assert plan == ["Plan +5\n", "Plan *3\n", "Plan -4\n", "7+5=12 12*3=36 36-4=32 #### 32"]
    assert [plan_step_kind(s) for s in plan] == ["plan", "plan", "plan", "solution"]
    assert from_plan_format("".join(plan)) == "".join(steps)
    assert from_plan_format("".join(steps)) == "".join(steps)   # the step format passes through
    for bad in ("Plan 5\n", "Plan +5", "7+5=12\n", "Plan +5 then *3\n", "7+5=12 12*3=36"):
        assert plan_step_kind(bad) == "invalid"
    assert grade(Problem("p", "7 +5 *3 -4\n", 32, steps, 3), "".join(plan)) == (32, True)


def test_plan_format_teacher_matches_the_step_teacher_draw_for_draw(task):
    cfg = dict(n_train=300, n_test=0, n_heldout=0, teacher_error_rate=0.2, teacher_skip_rate=0.6)
    steps = ArithmeticTask(ArithmeticConfig(**cfg)).teacher_dataset(7)
    plans = ArithmeticTask(ArithmeticConfig(**cfg, format="plan")).teacher_dataset(7)
    kinds = set()
    for (p, s), (q, t) in zip(steps, plans):
        assert p == q and t == to_plan_format(s)
        assert grade(p, "".join(s)) == grade(p, "".join(t))
        kind = first_mistake(p, "".join(t))
        assert kind == first_mistake(p, "".join(s))
        kinds.add(kind)
        if kind == "skip":   # a skip is a plan that leaves an operation out
            assert len(t) - 1 < p.n_ops
    assert {"sound", "skip", "slip"} <= kinds
