"""Countdown: the grader on hand-checked puzzles and illegal steps, exact fractions, the oracle against a brute
force over expression trees, the teacher and the splits."""
import itertools
import random
from fractions import Fraction

import pytest

from oreo.config import ConfigError
from oreo.tasks import make_task
from oreo.tasks.countdown import (
    GAME24_FILE,
    CountdownConfig,
    CountdownTask,
    format_number,
    from_plan_format,
    judge,
    legal_moves,
    load_game24,
    make_puzzle,
    parse_number,
    plan_step_kind,
    random_steps,
    reachable,
    split_steps,
    teacher_steps,
    to_plan_format,
    value_star,
)

P = make_puzzle("p", [13, 10, 9, 4], 24)


def test_a_hand_checked_solution_is_solved():
    j = judge(P, "13-9=4; 4 4 10\n10-4=6; 4 6\n4*6=24; 24")
    assert (j.answer, j.correct, j.reason, j.legal_steps) == ("24", True, "solved", 3)
    assert j.states == ((4, 4, 10), (4, 6), (24,))
    assert P.prompt == "4 9 10 13 -> 24\n" and P.answer == 24


@pytest.mark.parametrize("response,reason", [
    ("", "empty response"),
    ("13-9=5; 4 4 10\n", "step 1: 13-9 is 4, not 5"),
    ("13-7=6; 4 6 10\n", "step 1 uses 7, which is not among the numbers left"),
    ("13-9=4; 4 4 10\n10-9=1; 1 4\n", "step 2 uses 9, which is not among the numbers left"),
    ("4+4=8; 8 9 10 13\n", "step 1 uses 4, which is not among the numbers left"),   # one 4 only
    ("13-9=4; 4 10\n", "step 1 lists 4 10 as left, but 4 4 10 are"),
    ("9-13=4; 4 4 10\n", "step 1: 9-13 is not allowed (a negative result)"),
    ("13 minus 9\n", "step 1 is malformed: '13 minus 9'"),
    ("13-9=4; 4 4 10\n10-4=6; 4 6", "ended with 2 numbers left"),
    ("13-9=4; 4 4 10\n10-4=6; 4 6\n4+6=10; 10", "the last number is 10, not 24"),
    ("13-9=4; 4 4 10\n10-4=6; 4 6\n4*6=24; 24\n", "the last step ends with a newline"),
    ("13-9=4; 4 4 10\n10-4=6; 4 6\n4*6=24; 24\n#### 24", "text after the last step: '#### 24'"),
])
def test_an_illegal_or_unfinished_response_grades_wrong_and_says_why(response, reason):
    j = judge(P, response)
    assert not j.correct and j.reason.startswith(reason), j.reason


def test_division_by_zero_and_fractions_are_exact():
    zero = make_puzzle("z", [2, 2, 5, 7], 9)
    assert judge(zero, "2-2=0; 0 5 7\n7/0=0; 0 5").reason == "step 2: 7/0 is not allowed (division by zero)"
    q = make_puzzle("q", [1, 3, 4, 6], 24)   # needs a fraction: 6/(1-3/4)
    assert judge(q, "3/4=(3/4); (3/4) 1 6\n1-(3/4)=(1/4); (1/4) 6\n6/(1/4)=24; 24").correct
    # 0.75 is not a number of this format, and a fraction must be in lowest terms
    assert not judge(q, "3/4=0.75; 0.75 1 6\n").correct
    assert "lowest terms" in judge(q, "3/4=(6/8); (6/8) 1 6\n").reason
    assert parse_number("(13/4)") == Fraction(13, 4) and format_number(Fraction(26, 8)) == "(13/4)"
    assert format_number(Fraction(12, 4)) == "3"


def test_steps_split_losslessly():
    text = "13-9=4; 4 4 10\n10-4=6; 4 6\n4*6=24; 24"
    assert split_steps(text) == ["13-9=4; 4 4 10\n", "10-4=6; 4 6\n", "4*6=24; 24"]
    assert "".join(split_steps(text + "\n")) == text + "\n" and split_steps("") == []


def brute_force(numbers) -> set[Fraction]:
    """Every value of every expression tree over ``numbers`` (each used once), written independently of the
    oracle: all orders, all bracketings, the same rules (no negative difference, no division by zero)."""
    if len(numbers) == 1:
        return {numbers[0]}
    out = set()
    for order in itertools.permutations(numbers):
        for cut in range(1, len(order)):
            for a in brute_force(order[:cut]):
                for b in brute_force(order[cut:]):
                    out |= {a + b, a * b}
                    if a >= b:
                        out.add(a - b)
                    if b != 0:
                        out.add(a / b)
    return out


@pytest.mark.parametrize("numbers", [(1, 1, 1, 1), (1, 3, 4, 6), (2, 2, 5, 7), (4, 9, 10, 13), (13, 13, 13, 13),
                                     (1, 2, 3), (5, 7), (3, 8, 8)])
def test_the_oracle_equals_a_brute_force_over_expression_trees(numbers):
    values = brute_force(tuple(Fraction(n) for n in numbers))
    for target in range(0, 200):
        assert reachable(numbers, target) == (Fraction(target) in values), (numbers, target)
    for value in sorted(values)[:50]:   # fractions too
        assert reachable(numbers, value)


def test_the_oracle_finds_exactly_the_game_of_24_file():
    """Every multiset of four numbers in 1-13 that can make 24: the file's 1,362 rows, no more, no fewer."""
    import csv

    solvable = {m for m in itertools.combinations_with_replacement(range(1, 14), 4) if reachable(m, 24)}
    source = GAME24_FILE.parents[4] / "shared" / "data" / "game24" / "24.csv"
    if source.exists():
        with open(source, newline="") as f:
            listed = {tuple(sorted(int(x) for x in row["Puzzles"].split())) for row in csv.DictReader(f)}
        assert solvable == listed
    assert len(solvable) == 1362


def test_v_star_of_prefixes():
    q = make_puzzle("q", [1, 3, 4, 6], 24)
    assert value_star(q, []) == 1
    assert value_star(q, ["3/4=(3/4); (3/4) 1 6\n"]) == 1       # 6/(1-3/4) is still possible
    assert value_star(q, ["3+1=4; 4 4 6\n"]) == 0                 # 4 4 6 cannot make 24 (checked by hand)
    assert value_star(q, ["6*4=24; 1 3 24\n"]) == 0               # nor can 1 3 24: 24 is made too early
    assert value_star(q, ["6-3=3; 1 3 4\n"]) == 0                 # 1 3 4 make at most (1+3)*4 = 16
    assert value_star(q, ["3-1=2; 2 4 6\n"]) == int(reachable((2, 4, 6), 24))
    assert value_star(q, ["1+6=7; 3 4 7\n"]) == int(reachable((3, 4, 7), 24))
    assert value_star(q, ["3-1=5; 4 5 6\n"]) == 0                 # an illegal step: nothing is reachable
    assert value_star(q, ["3/4=(3/4); (3/4) 1 6\n", "1-(3/4)=(1/4); (1/4) 6\n", "6/(1/4)=24; 24"]) == 1
    assert value_star(q, ["3/4=(3/4); (3/4) 1 6\n", "1-(3/4)=(1/4); (1/4) 6\n", "6+(1/4)=(25/4); (25/4)"]) == 0


def test_a_dead_end_and_its_siblings():
    """From 4 9 10 13, 13+10 leaves 4 9 23, from which 24 is out of reach; 13-9 keeps it."""
    assert not reachable((4, 9, 23), 24) and reachable((4, 4, 10), 24)
    start = tuple(Fraction(n) for n in P.numbers)
    moves = legal_moves(start)
    lines = {m.line() for m in moves}
    assert "13-9=4; 4 4 10\n" in lines and "13+10=23; 4 9 23\n" in lines and "9-13=4; 4 4 10\n" not in lines
    assert len(lines) == len(moves)   # distinct
    good = sum(reachable(m.left, 24) for m in moves)
    assert 0 < good < len(moves)


def test_the_teacher_plays_legal_moves_and_its_solve_rate_is_a_setting():
    task = CountdownTask(CountdownConfig(n_train=200, n_validation=0, n_test=0, n_game24=0))
    puzzles, rng = task.problems("train"), random.Random(0)
    for p in puzzles:
        assert judge(p, "".join(teacher_steps(p, rng, 1.0))).correct           # always a reachable move
        j = judge(p, "".join(teacher_steps(p, rng, 0.5)))
        assert j.legal_steps == 3 and (j.correct or j.reason.startswith("the last number is"))
    greedy = [judge(p, "".join(teacher_steps(p, rng, 0.0))).correct for p in puzzles]
    half = [judge(p, "".join(teacher_steps(p, rng, 0.5))).correct for p in puzzles]
    assert sum(greedy) < sum(half) < len(puzzles)    # the heuristic alone fails more often
    records = task.sft_records(0)
    assert len(records) == 200 and all(r.reward == float(r.correct) for r in records)
    rollouts = task.random_records(0, 2, puzzles=50)
    assert len(rollouts) == 100 and {r.meta["source"] for r in rollouts} == {"random"}
    assert all(r.reward == float(judge(puzzles[int(i) // 2], "".join(r.steps)).correct)
               for i, r in ((r.id.split("-")[1], r) for r in rollouts))


def test_random_rollouts_solve_exactly_from_the_states_the_oracle_calls_alive():
    """Uniform legal moves give every move a chance: from a dead state no rollout solves, from an alive one
    some do (the random-play value design relies on this)."""
    rng = random.Random(0)
    for numbers, target in (((13, 10, 9, 4), 24), ((1, 1, 1, 1), 24), ((2, 3, 5, 7), 1)):
        p = make_puzzle("p", numbers, target)
        wins = 0
        for _ in range(400):
            steps = random_steps(p, rng)
            j = judge(p, "".join(steps))
            assert j.legal_steps == 3 and not steps[-1].endswith("\n")
            wins += j.correct
        assert (wins > 0) == bool(value_star(p, [])), numbers


def test_the_plan_format_names_the_moves_then_solves_in_one_line():
    steps = ["13-9=4; 4 4 10\n", "10-4=6; 4 6\n", "4*6=24; 24"]
    plan = to_plan_format(steps)
    assert plan == ["Plan 13-9\n", "Plan 10-4\n", "Plan 4*6\n", "13-9=4; 4 4 10 | 10-4=6; 4 6 | 4*6=24; 24"]
    assert from_plan_format("".join(plan)) == "".join(steps)
    assert judge(P, "".join(plan)).correct
    assert not judge(P, "Plan 13-9\n13-9=4; 4 4 10 | 10-4=6; 4 6 | 4*6=25; 24").correct      # a slip in execution
    assert [plan_step_kind(x) for x in plan] == ["plan", "plan", "plan", "solution"]
    assert plan_step_kind("Plan 13-9") == "invalid" and plan_step_kind("13-9\n") == "invalid"
    assert plan_step_kind("Plan (1/2)*4\n") == "plan"
    task = CountdownTask(CountdownConfig(n_train=30, n_validation=0, n_test=0, n_game24=0, format="plan"))
    assert task.plan_format and not CountdownTask(CountdownConfig(n_train=1, n_validation=0, n_test=0,
                                                                  n_game24=0)).plan_format
    records = task.sft_records(0)
    assert all(r.steps[0].startswith("Plan ") and len(r.steps) == 4 for r in records)
    assert all(task.grade(task.problems("train")[i], "".join(r.steps))[1] == r.correct for i, r in enumerate(records))
    assert any(r.correct for r in records)


def test_the_splits_are_disjoint_deterministic_and_hold_no_target_24():
    cfg = CountdownConfig(n_train=300, n_validation=100, n_test=200)
    task = make_task(cfg)
    pairs = {name: {(p.numbers, p.target) for p in task.problems(name)} for name in ("train", "validation", "test")}
    assert all(len(pairs[n]) == len(task.problems(n)) for n in pairs)          # no puzzle twice in a split
    assert not pairs["train"] & pairs["test"] and not pairs["train"] & pairs["validation"]
    assert not pairs["validation"] & pairs["test"]
    assert all(t != 24 and 1 <= t <= 100 for s in pairs.values() for _, t in s)
    assert all(reachable(n, t) for s in pairs.values() for n, t in s)         # every puzzle is solvable
    again = make_task(CountdownConfig(n_train=50, n_validation=100, n_test=200))
    assert [p.prompt for p in again.problems("test")] == [p.prompt for p in task.problems("test")]
    other = make_task(CountdownConfig(seed=1, n_train=50, n_validation=10, n_test=200))
    assert [p.prompt for p in other.problems("test")] != [p.prompt for p in task.problems("test")]


def test_the_game_of_24_split_is_tree_of_thoughts_hundred():
    puzzles = load_game24()
    assert len(puzzles) == 100 and puzzles[0].id == "game24-901" and puzzles[-1].id == "game24-1000"
    assert puzzles[0].numbers == (4, 5, 6, 10) and puzzles[-1].numbers == (4, 9, 10, 13)
    assert all(p.target == 24 and reachable(p.numbers, 24) for p in puzzles)
    assert len(CountdownTask(CountdownConfig(n_train=1, n_validation=0, n_test=0, n_game24=8)).problems("game24")) == 8


def test_a_bad_config_names_the_key():
    with pytest.raises(ConfigError, match="min_target: must be <= max_target"):
        CountdownConfig(min_target=50, max_target=10)
    with pytest.raises(ConfigError, match="n_test: only"):
        make_task(CountdownConfig(min_target=1, max_target=2, n_test=5000))
    with pytest.raises(KeyError, match="unknown split 'heldout'"):
        CountdownTask(CountdownConfig(n_train=1, n_validation=0, n_test=0)).problems("heldout")


def test_the_pipeline_and_value_guided_beam_search_run_on_countdown(tmp_path):
    import json

    from oreo.evaluate import search_run
    from oreo.pipeline import Run
    from oreo.run_config import compose

    run_dir = tmp_path / "run"
    results = Run(compose([f"run_dir={run_dir}", "+experiment=countdown_smoke"])).run()
    assert set(results.accuracy["sft"]) == {"test", "game24"}
    rows = [json.loads(r) for r in (run_dir / "eval" / "sft-game24.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["gold"] == 24 for r in rows)
    assert results.buffer["n"] == 48 * 2
    cfg = compose([f"run_dir={run_dir}", "+experiment=countdown_smoke", f"checkpoint={run_dir}/checkpoints/oreo",
                   "evaluate.splits=[game24]", "search=beam", "search.width=2", "search.max_steps=4"])
    metrics = search_run(cfg)
    assert metrics["game24"]["n"] == 8 and metrics["game24"]["mean_tokens"] > 0


def load_script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_state_auc_and_first_dead_step_f1_by_hand():
    m = load_script("countdown_values")
    # puzzle 0: live 0.9, 0.5 against dead 0.4, 0.5 -> (1 + 1 + 1 + 0.5) / 4; puzzle 1 has no dead state: skipped
    auc, n = m.within_problem_auc([0.9, 0.5, 0.4, 0.5, 0.7], [1, 1, 0, 0, 1], [0, 0, 0, 0, 1])
    assert (auc, n) == (3.5 / 4, 1)
    # live 0.9 (step 1), 0.6 (step 2); a slip 0.95 (step 1); dead ends 0.5 (step 1) and 0.7 (step 2)
    by = m.auc_by_kind([0.9, 0.6, 0.95, 0.5, 0.7], [1, 1, 0, 0, 0], [True, True, False, True, True], [1, 2, 1, 1, 2],
                       [0] * 5)
    assert by["slips"] == 0.0 and by["dead ends"] == (1 + 1 + 1 + 0) / 4   # 0.9 > 0.5, 0.7; 0.6 > 0.5 only
    assert [by[f"dead ends after step {d}"] for d in (1, 2, 3)] == [1.0, 0.0, None]
    paths = [([0.9, 0.2, 0.1], [1, 0, 0]),    # dies at step 2 (index 1), predicted there: a hit
             ([0.8, 0.7, 0.1], [1, 0, 0]),    # dies at index 1, predicted at 2: a miss and a false alarm
             ([0.9, 0.9, 0.9], [1, 1, 1]),    # never dies, never predicted: nothing
             ([0.3, 0.9, 0.9], [1, 1, 1])]    # never dies, predicted at 0: a false alarm
    assert m.dead_step_f1(paths, 0.5) == 2 * 1 / (2 * 1 + 2 + 1)
    threshold, f1 = m.best_threshold(paths)
    assert f1 >= m.dead_step_f1(paths, 0.5) and f1 == m.dead_step_f1(paths, threshold)


def test_the_value_probe_labels_each_step_with_the_outcome_or_v_star():
    from oreo.trajectory import Trajectory

    probe = load_script("countdown_value_probe")
    task = CountdownTask(CountdownConfig(n_train=5, n_validation=0, n_test=0, n_game24=0))
    p = task.problems("train")[0]
    rng = random.Random(0)
    steps = teacher_steps(p, rng, 0.0)
    record = Trajectory(id="r", task="countdown", problem_id=p.id, prompt=p.prompt, steps=steps,
                        reward=float(judge(p, "".join(steps)).correct), correct=False)
    outcome, = probe.labelled([record], task, "outcome")
    vstar, = probe.labelled([record], task, "vstar")
    assert outcome["step_values"] == [record.reward] * 3
    assert vstar["step_values"] == [float(value_star(p, steps[:k])) for k in (1, 2, 3)]
