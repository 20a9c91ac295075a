"""MCTS* on scripted samplers and values: what one iteration does by hand, one sampler call and one value
call per phase for all problems together, terminal grading, merged and cut samples, dead ends, the end
gate, and trees that give ReST-MCTS*'s targets."""
import json

import pytest

from oreo.search.mcts import MCTS, MCTSConfig
from oreo.search.process_values import inferred_values
from oreo.types import Choice, Completion


class Task:
    name = "toy"
    step_stops = ["\n"]

    def grade(self, problem, text):
        answer = text.rsplit("#### ", 1)[1] if "#### " in text else None
        return answer, answer == problem.answer


class Problem:
    def __init__(self, pid, answer="1"):
        self.id, self.prompt, self.answer = pid, f"q{pid}\n", answer


def step(text):
    return Completion(text, finished=False, n_tokens=len(text), stop="\n")


def end(text):
    return Completion(text, finished=True, n_tokens=len(text) + 1)


class Scripted:
    """Completions of a context scripted by its steps (cycled over n); records every call."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, *, n=1, temperature=1.0, seed=0, progress=None, stop=None, max_new_tokens=None):
        self.calls.append(len(prompts))
        return [[self.script.get("".join(p.steps), [end("#### 0")])[k % len(self.script.get("".join(p.steps),
                                                                                              [end("#### 0")]))]
                 for k in range(n)] for p in prompts]


class Values:
    def __init__(self, values):
        self.values, self.calls = values, []

    def __call__(self, contexts):
        self.calls.append(len(contexts))
        return [self.values.get("".join(c.steps), 0.5) for c in contexts]


def test_one_iteration_by_hand():
    sampler = Scripted({"": [step("a\n"), step("b\n")], "a\n": [end("#### 1")]})
    scorer = Values({"a\n": 0.6, "b\n": 0.2, "a\n#### 1": 0.9})
    cfg = MCTSConfig(iterations=1, branch=2, rollout_steps=1, alpha=0.5)
    (tree,) = MCTS(cfg, Task(), sampler, scorer).search([Problem(0)])
    a, b = tree.children(tree.root)
    assert (a.step, b.step) == ("a\n", "b\n") and (a.depth, b.depth) == (1, 1)
    # both unvisited: UCT gives V + 0.9, so a (0.6) is rolled out: one step, "#### 1" valued 0.9
    assert a.value == pytest.approx(0.5 * 0.6 + 0.5 * 0.9) and a.visits == 1
    assert b.value == pytest.approx(0.2) and b.visits == 0
    assert tree.root.visits == 1 and tree.root.value == pytest.approx(a.value)  # visit-weighted mean
    assert sampler.calls == [1, 1] and scorer.calls == [2, 1]   # expansion, rollout


def test_every_phase_is_one_call_for_all_problems():
    sampler = Scripted({"": [step("x\n"), step("y\n"), end("#### 1")]})
    scorer = Values({})
    problems = [Problem(i) for i in range(5)]
    trees = MCTS(MCTSConfig(iterations=3, branch=3, rollout_steps=0), Task(), sampler, scorer).search(problems)
    assert len(trees) == 5 and sampler.calls[0] == 5 and scorer.calls[0] == 5 * 3
    assert len(sampler.calls) == 3 and len(scorer.calls) == 3


def test_terminal_children_are_graded_duplicates_merged_cut_samples_dropped():
    cut = Completion("never ends", finished=False, n_tokens=64)
    sampler = Scripted({"": [end("#### 1"), end("#### 2"), end("#### 1"), cut]})
    mcts = MCTS(MCTSConfig(iterations=1, branch=4, rollout_steps=0), Task(), sampler, Values({}))
    (tree,) = mcts.search([Problem(0, answer="1")])
    kids = tree.children(tree.root)
    assert [(k.step, k.terminal, k.reward) for k in kids] == [("#### 1", True, 1.0), ("#### 2", True, 0.0)]
    assert mcts.stats.nodes == 2 and mcts.stats.tokens == 7 + 7 + 7 + 64
    assert inferred_values(tree) == {kids[0].id: 1.0, kids[1].id: 0.0}


def test_a_leaf_that_gives_nothing_usable_is_a_dead_end():
    cut = Completion("…", finished=False, n_tokens=64)
    sampler = Scripted({"": [step("a\n")], "a\n": [cut]})
    (tree,) = MCTS(MCTSConfig(iterations=3, branch=1, rollout_steps=0), Task(), sampler, Values({})).search(
        [Problem(0)])
    (a,) = tree.children(tree.root)
    assert a.terminal and a.reward is None and not a.children
    assert sampler.calls == [1, 1]  # the dead end is never expanded again
    assert inferred_values(tree) == {}


def test_max_depth_and_the_end_gate():
    sampler = Scripted({"": [step("a\n")], "a\n": [step("b\n")], "a\nb\n": [step("c\n")]})
    (tree,) = MCTS(MCTSConfig(iterations=10, branch=1, rollout_steps=0, max_depth=2), Task(), sampler,
                   Values({})).search([Problem(0)])
    assert max(n.depth for n in tree.nodes.values()) == 2 and len(sampler.calls) == 2
    gated = Scripted({"": [step("a\n"), step("b\n")]})
    mcts = MCTS(MCTSConfig(iterations=10, branch=2, rollout_steps=0, end_gate=0.8), Task(), gated,
                Values({"b\n": 0.85}))
    mcts.search([Problem(0)])
    assert gated.calls == [1]  # b reached the gate in the first iteration: the search stopped


def test_search_is_deterministic_and_finds_the_correct_leaf():
    script = {"": [step("1+0=1\n"), step("1+0=2\n")], "1+0=1\n": [end("#### 1")], "1+0=2\n": [end("#### 2")]}
    values = {"1+0=1\n": 0.7, "1+0=2\n": 0.6}

    def run():
        return MCTS(MCTSConfig(iterations=6, branch=2), Task(), Scripted(script), Values(values)).search(
            [Problem(0, answer="1")], seed=3)[0]

    tree = run()
    assert tree.nodes == run().nodes
    targets = inferred_values(tree)
    good = [n for n in tree.nodes.values() if n.reward == 1.0]
    assert good and [targets[n.id] for n in tree.path(good[0])] == pytest.approx([0.5, 1.0])


def test_runs_with_a_real_sampler_and_value_model_and_round_trips_its_trees(tmp_path):
    from oreo.buffer import Buffer
    from oreo.encode import Encoder
    from oreo.models import ValueModel, load_policy
    from oreo.rollout.sampler import HFSampler
    from oreo.search.tree import Tree
    from oreo.search.value import ValueScorer
    from oreo.tasks.arithmetic import ArithmeticConfig, ArithmeticTask

    task = ArithmeticTask(ArithmeticConfig(n_train=3, n_test=1, n_heldout=1))
    policy, tok = load_policy("tiny", tiny=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                              seed=1)
    sampler = HFSampler(policy, tok, Encoder(tok), batch_size=64, max_new_tokens=64)
    mcts = MCTS(MCTSConfig(iterations=3, branch=4, step_max_tokens=64), task, sampler,
                ValueScorer(ValueModel.from_policy(policy), Encoder(tok)))
    trees = mcts.search(task.problems("train"), seed=0)
    assert len(trees) == 3 and mcts.stats.nodes == sum(len(t.nodes) - 1 for t in trees) > 0
    assert all(0.0 <= n.value <= 1.0 for t in trees for n in t.nodes.values())
    assert mcts.stats.as_dict()["nodes_per_s"] > 0
    buffer = Buffer(tmp_path / "buffer")
    buffer.append([row for t in trees for row in t.to_trajectories()], round=0)
    rows = buffer.load()
    for tree in trees:
        if len(tree.nodes) > 1:
            assert Tree.from_trajectories([r for r in rows if r.tree_id == tree.id]).nodes == tree.nodes


@pytest.mark.parametrize("style", ["rest", "alphazero"])
def test_tree_collection_resumes_by_chunk_with_the_same_trees(tmp_path, style):
    """A killed collection (MCTS*, or CPL's plan search) resumes with no duplicate or lost tree."""
    from oreo.buffer import Buffer
    from oreo.search.mcts import collect_trees
    from oreo.search.tree import Tree

    first, second = ("1+0=1\n", "1+0=2\n") if style == "rest" else ("P1\n", "P2\n")
    script = {"": [step(first), step(second), end("#### 3")], first: [end("#### 1"), step("x\n")],
              second: [end("#### 2")]}
    task = Task() if style == "rest" else PlanTask()

    class Flaky(Scripted):
        def __init__(self, fail_at=None):
            super().__init__(script)
            self.fail_at = fail_at

        def generate(self, prompts, **kw):
            if self.fail_at is not None and len(self.calls) == self.fail_at:
                raise KeyboardInterrupt
            return super().generate(prompts, **kw)

    problems = [Problem(str(i), answer="1") for i in range(5)]
    cfg = MCTSConfig(iterations=4, branch=3, style=style, selection="puct" if style == "alphazero" else "uct")
    whole = Buffer(tmp_path / "a")
    info = collect_trees(task, problems, Flaky(), Values({}), whole, cfg, seed=1, round=0, problems_per_chunk=2)
    assert info["records"] == len(whole.load()) and info["nodes"] > 0 and info["nodes_per_s"] > 0
    resumed = Buffer(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        fail_at = 9 if style == "rest" else 5   # in the second chunk: the first one is written
        collect_trees(task, problems, Flaky(fail_at=fail_at), Values({}), resumed, cfg, seed=1, round=0,
                      problems_per_chunk=2)
    assert not resumed.rounds() and list((tmp_path / "b").glob("round_000.partial*.jsonl"))
    collect_trees(task, problems, Flaky(), Values({}), resumed, cfg, seed=1, round=0, problems_per_chunk=2)
    a, b = whole.load(), resumed.load()
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    trees = {t: Tree.from_trajectories([r for r in a if r.tree_id == t]) for t in {r.tree_id for r in a}}
    assert sorted(trees) == [f"r0-{i}" for i in range(5)]


# ---------------------------------------------------------------------- search=mcts at test time
def _answer_tree():
    from oreo.search.tree import Tree

    tree = Tree("t", "0", "q\n")
    a, _ = tree.add(tree.root, "a\n")
    b, _ = tree.add(tree.root, "b\n")
    a1, _ = tree.add(a, "#### 1")
    a2, _ = tree.add(a, "#### 2")
    b2, _ = tree.add(b, "#### 2")
    dead, _ = tree.add(b, "c\n")
    for node, value in [(a, 0.7), (b, 0.95), (a1, 0.8), (a2, 0.6), (b2, 0.5), (dead, 0.99)]:
        node.value = value
    for leaf, reward in [(a1, 1.0), (a2, 0.0), (b2, 0.0), (dead, None)]:
        leaf.terminal, leaf.reward = True, reward
    return tree, {"a": a, "b": b, "a1": a1, "a2": a2, "b2": b2, "dead": dead}


def test_mcts_answer_rules_by_hand():
    from oreo.search.strategies import mcts_answer

    tree, n = _answer_tree()
    # the dead end (0.99) is never an answer; b (0.95) is the best node that can still be continued
    assert mcts_answer(tree, "best_value") is n["b"]
    assert mcts_answer(tree, "best_value", gated=n["a2"]) is n["a2"]
    assert mcts_answer(tree, "best_value", gated=n["dead"]) is n["b"]
    assert mcts_answer(tree, "best_leaf") is n["a1"]
    # answer "2": 0.6 + 0.5 = 1.1 beats answer "1": 0.8; its best node is a2
    keys = {n["a1"].id: "1", n["a2"].id: "2", n["b2"].id: "2"}
    assert mcts_answer(tree, "weighted_vote", keys=keys) is n["a2"]
    with pytest.raises(ValueError, match="mcts.answer"):
        mcts_answer(tree, "nope")


def test_search_mcts_completes_an_unfinished_answer_and_counts_its_tokens():
    from oreo.search.strategies import SearchConfig, Searcher

    script = {"": [step("a\n"), step("b\n")], "a\n": [end("#### 1")], "b\n": [end("#### 2")]}
    cfg = SearchConfig(strategy="mcts", mcts=MCTSConfig(iterations=5, branch=2, rollout_steps=0, end_gate=0.9))
    sampler = Scripted(script)
    (choice,) = Searcher(cfg, Task(), sampler, Values({"a\n": 0.95, "b\n": 0.1})).solve([Problem(0)])
    # "a" reached the gate at once: the search stopped and the policy finished "a" greedily
    assert choice.response == "a\n#### 1" and choice.value == pytest.approx(0.95)
    assert sampler.calls == [1, 1] and choice.samples == 3 and choice.tokens == 2 + 2 + 7
    cut = Scripted({"": [step("a\n")], "a\n": [Completion("…", finished=False, n_tokens=64)]})
    (choice,) = Searcher(cfg, Task(), cut, Values({"a\n": 0.95})).solve([Problem(0)])
    assert choice.response is None and choice.tokens == 2 + 2 + 64  # the completion was cut: no answer


def test_search_mcts_best_leaf_over_several_problems():
    from oreo.search.strategies import SearchConfig, Searcher

    script = {"": [end("#### 1"), end("#### 2"), step("a\n")]}
    cfg = SearchConfig(strategy="mcts", mcts=MCTSConfig(iterations=1, branch=3, rollout_steps=0, answer="best_leaf"))
    values = Values({"#### 1": 0.3, "#### 2": 0.4, "a\n": 0.9})
    mcts_choices = Searcher(cfg, Task(), Scripted(script), values).solve([Problem(0), Problem(1)])
    assert [c.response for c in mcts_choices] == ["#### 2", "#### 2"]
    assert all(c.tokens == 7 + 7 + 2 and c.samples == 3 for c in mcts_choices)
    assert cfg.tag == "mcts-i1-b3-best_leaf-t0.7-nogate"   # the search ran its whole budget
    assert SearchConfig(strategy="mcts").tag == "mcts-i40-b3-best_value-t0.7"   # the default end gate, 0.9
    assert SearchConfig(strategy="mcts", mcts=MCTSConfig(end_gate=0.8)).tag == "mcts-i40-b3-best_value-t0.7-g0.8"


# ---------------------------------------------------------------------- CPL's plan search (style=alphazero)
class PlanTask(Task):
    """Plan steps start with "P" and end the line; a solution is a line with the answer."""
    plan_format = True

    def step_kind(self, text):
        if text.startswith("P") and text.endswith("\n"):
            return "plan"
        return "solution" if "#### " in text and "\n" not in text else "invalid"


def test_alphazero_iterations_by_hand():
    import math

    sampler = Scripted({"": [step("Pa\n"), step("Pb\n"), end("#### 1"), end("#### 2"), step("junk\n")],
                        "Pa\n": [end("#### 1"), step("Pc\n")]})
    scorer = Values({"": 0.2, "Pa\n": 0.5, "Pb\n": -0.4})   # any other state: 0.5
    probs = {"Pa\n": 0.3, "Pb\n": 0.1, "#### 1": 0.4, "#### 2": 0.1, "junk\n": 0.1}
    priors = []

    def prior(contexts):
        priors.append(len(contexts))
        return [math.log(probs.get(c.steps[-1], 0.5)) for c in contexts]

    cfg = MCTSConfig(iterations=3, branch=2, root_branch=5, style="alphazero", selection="puct", c=1.5,
                     rollout_steps=1)
    (tree,) = MCTS(cfg, PlanTask(), sampler, scorer, prior=prior).search([Problem(0)])
    kids = {n.step: n for n in tree.children(tree.root)}
    pa, pb = kids["Pa\n"], kids["Pb\n"]
    # iteration 0: the root scored 0.2, expanded into 5 children; its 3 terminal ones back up +1, -1 (wrong)
    # and -1 (invalid, no grade) at once; no rollout in this style
    assert (kids["#### 1"].reward, kids["#### 2"].reward, kids["junk\n"].reward) == (1.0, 0.0, None)
    assert [(kids[k].visits, kids[k].value) for k in ("#### 1", "#### 2", "junk\n")] == [(1, 1.0), (1, -1.0),
                                                                                         (1, -1.0)]
    assert pa.prior == pytest.approx(math.log(0.3))
    # iteration 1: PUCT over the non-terminal children, P = exp(prior) (Pa 0.3, Pb 0.1): Pa (0.9 against 0.3),
    # scored 0.5, expanded into a right solution (+1 backed up) and Pc.
    # iteration 2: Pa (Q 0.75, N 2) scores 0.75 + 1.5·0.3·√6/3 = 1.12 against Pb's 1.5·0.1·√6 = 0.37; below Pa
    # the terminal child is skipped: Pc, scored 0.5, expanded into one wrong solution (-1 at once, duplicates merged)
    pc = next(n for n in tree.children(pa) if n.step == "Pc\n")
    assert (pc.visits, pc.value) == (2, pytest.approx((-1 + 0.5) / 2))
    assert (pa.visits, pa.value) == (4, pytest.approx((1 + 0.5 - 1 + 0.5) / 4))
    assert (pb.visits, pb.value) == (0, 0.0)
    assert tree.root.visits == 8 and tree.root.value == pytest.approx((1 - 1 - 1 + 0.2 + 1 + 0.5 - 1 + 0.5) / 8)
    assert scorer.calls == [1, 1, 1] and sampler.calls == [1, 1, 1] and priors == [5, 2, 1]


def test_alphazero_stops_a_tree_whose_every_path_is_finished():
    sampler = Scripted({"": [end("#### 1"), end("#### 2")]})
    scorer = Values({})
    trees = MCTS(MCTSConfig(iterations=5, branch=2, style="alphazero", selection="puct"), PlanTask(), sampler,
                 scorer).search([Problem(0), Problem(1)])
    assert all(t.root.visits == 3 for t in trees)   # its value and two terminal rewards
    assert sampler.calls == [2] and scorer.calls == [2]


def test_alphazero_skips_an_exhausted_plan_step_without_making_it_invalid():
    """A plan step whose children are all terminal is never selected again, yet stays a valid node (its Q
    makes Step-APO pairs)."""
    from oreo.search.plan_data import step_apo_pairs

    sampler = Scripted({"": [step("Pa\n"), step("Pb\n")], "Pa\n": [end("#### 1")], "Pb\n": [end("#### 2")]})
    cfg = MCTSConfig(iterations=10, branch=2, style="alphazero", selection="puct")
    (tree,) = MCTS(cfg, PlanTask(), sampler, Values({})).search([Problem(0)])
    pa, pb = tree.children(tree.root)
    assert not pa.terminal and not pb.terminal and pa.value > 0 > pb.value
    assert sampler.calls == [1, 1, 1]   # the root, Pa, Pb: then nothing is left to search
    (pair,) = step_apo_pairs(tree)
    assert (pair.chosen, pair.rejected) == ("Pa\n", "Pb\n")


def test_plan_expansion_grades_solutions_and_marks_invalid_children():
    from oreo.search.mcts import PlanExpansion
    from oreo.search.tree import Tree
    from oreo.tasks.arithmetic import ArithmeticConfig, ArithmeticTask, to_plan_format

    task = ArithmeticTask(ArithmeticConfig(n_train=5, n_test=0, n_heldout=0, format="plan"))
    problem = next(p for p in task.problems("train") if p.n_ops == 2)
    plan = to_plan_format(problem.solution)
    grow = PlanExpansion(task, max_depth=3).grow
    tree = Tree("t", problem.id, problem.prompt)
    first = grow(problem, tree, tree.root, step(plan[0]))
    second = grow(problem, tree, first, step(plan[1]))
    right = grow(problem, tree, second, end(plan[2]))
    wrong = grow(problem, tree, second, end(plan[2] + "0"))
    assert not first.terminal and not second.terminal
    assert (right.terminal, right.reward, wrong.terminal, wrong.reward) == (True, 1.0, True, 0.0)
    third = grow(problem, tree, second, step("Plan +1\n"))           # depth 3: still a plan step
    too_deep = grow(problem, tree, third, end(plan[2]))              # depth 4 > max_depth 3, even a solution
    assert not third.terminal
    malformed = grow(problem, tree, tree.root, step("Plan 5\n"))
    cut = grow(problem, tree, tree.root, Completion("Plan +", finished=False, n_tokens=6))
    assert all(n.terminal and n.reward is None for n in (too_deep, malformed, cut))
    assert grow(problem, tree, tree.root, step(plan[0])) is None       # a duplicate


# ---------------------------------------------------------------------- agents: turns played in a replayed environment
class ExpertOrSilence:
    """A sampler for one household ``game``: per context, the expert's next turn (from the state the context's
    actions reach) and ``silence``, a turn with no action (which ends the episode, lost), alternately."""

    def __init__(self, task, game, silence: str):
        self.task, self.game, self.silence, self.contexts = task, game, silence, []

    def generate(self, prompts, *, n=1, temperature=1.0, seed=0, progress=None, stop=None, max_new_tokens=None):
        from oreo.tasks.agent import format_turn, parse_action

        out = []
        for ctx in prompts:
            self.contexts.append(ctx)
            env = self.task.make_env()
            env.reset(self.game)
            for turn in ctx.steps:
                env.step(parse_action(turn))
            turns = [format_turn(env.expert_action()), self.silence]
            out.append([Completion(turns[k % 2], finished=True, n_tokens=5) for k in range(n)])
        return out


def test_agent_trees_play_turns_in_a_replayed_environment_and_round_trip():
    from oreo.search.process_values import inferred_values
    from oreo.search.tree import Tree
    from oreo.tasks.agent import format_observation, parse_action
    from oreo.tasks.household import HouseholdConfig, HouseholdTask

    task = HouseholdTask(HouseholdConfig(n_train=4, n_test=0, teacher_error_rate=0.0, teacher_skip_rate=0.0))
    game = task.games("train")[0]

    read = []

    def values(contexts):   # a turn with an action looks better than one without
        read.extend(contexts)
        return [0.8 if c.steps[-1].startswith("Action:") else 0.2 for c in contexts]

    sampler = ExpertOrSilence(task, game, "Thought: I am not sure")
    cfg = MCTSConfig(iterations=30, branch=2, rollout_steps=1, max_depth=20)
    (tree,) = MCTS(cfg, task, sampler, values).search([game])
    won = [n for n in tree.nodes.values() if n.terminal and n.reward == 1.0]
    assert len(won) == 1
    # the winning path is the expert's episode, each node holding the observation its turn got
    env = task.make_env()
    env.reset(game)
    for node in tree.path(won[0]):
        observation, _, done, info = env.step(parse_action(node.step))
        assert node.observation == format_observation(observation)
    assert done and info["won"]
    silent = [n for n in tree.nodes.values() if n.step == "Thought: I am not sure"]
    assert silent and all(n.terminal and n.reward == 0.0 and n.observation is None for n in silent)
    # a node's turn is sampled after every observation so far; its value read before its own observation
    assert all(len(c.observations) == len(c.steps) for c in sampler.contexts)
    assert read and all(len(c.observations) == len(c.steps) - 1 for c in read)
    rows = tree.to_trajectories()
    assert Tree.from_trajectories(rows).nodes == tree.nodes
    assert all(len(r.observations) in (len(r.steps), len(r.steps) - 1) for r in rows)
    targets = inferred_values(tree)
    assert targets[won[0].id] == 1.0 and all(targets[n.id] == 0.0 for n in silent if n.parent == "0")


def test_agent_mcts_plan_is_played_then_the_policy_continues(tmp_path):
    """search=mcts for agents: the episode plays the path MCTS* chose by value, then acts on its own; its tokens
    are the search's plus its own. A planned path never ends on a turn without an action."""
    from oreo.evaluate import evaluate_episodes
    from oreo.search.strategies import plan_turns
    from oreo.tasks.agent import format_turn, parse_action
    from oreo.tasks.household import HouseholdConfig, HouseholdTask

    task = HouseholdTask(HouseholdConfig(n_train=2, n_test=0, teacher_error_rate=0.0, teacher_skip_rate=0.0))
    games = task.games("train")

    def expert_turns(ctx):
        game = next(g for g in games if task.prompt(g, task.make_env().reset(g)) == ctx.prompt)
        env = task.make_env()
        env.reset(game)
        for turn in ctx.steps:
            env.step(parse_action(turn))
        return format_turn(env.expert_action())

    class ExpertOrSilence:
        def generate(self, prompts, *, n=1, temperature=1.0, seed=0, progress=None, stop=None, max_new_tokens=None):
            return [[Completion([expert_turns(c), "Thought: hmm"][k % 2], finished=True, n_tokens=5)
                     for k in range(n)] for c in prompts]

    def values(contexts):   # a turn without an action after the first looks best: it must never be planned
        return [(0.95 if len(c.steps) > 1 else 0.1) if c.steps[-1] == "Thought: hmm" else 0.8 for c in contexts]

    acted = []

    def act(contexts, seed):
        acted.extend(len(c.steps) for c in contexts)
        return [Choice(expert_turns(c), None, 4, 1) for c in contexts]

    plans = []

    def plan(gs, seed):
        plans[:] = plan_turns(MCTSConfig(iterations=3, branch=2, max_depth=20), task, ExpertOrSilence(), values, gs,
                              seed=seed)
        return plans

    metrics = evaluate_episodes(task, games, act, plan=plan, out_path=tmp_path / "mcts.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "mcts.jsonl").read_text().splitlines()]
    assert metrics["success"] == 1.0 and acted
    for r, (turns, spent) in zip(rows, plans):
        assert turns and all(parse_action(t) is not None for t in turns)
        assert 1 <= r["planned_turns"] == len(turns) < r["turns"]
        assert r["tokens"] == spent + 4 * (r["turns"] - len(turns)) and spent > 0
    for answer in ("best_leaf", "weighted_vote"):   # an ended episode tells its outcome; there are no answers
        with pytest.raises(ValueError, match="only best_value"):
            plan_turns(MCTSConfig(answer=answer), task, ExpertOrSilence(), values, games)
    with pytest.raises(ValueError, match="style=rest"):
        plan_turns(MCTSConfig(style="alphazero"), task, ExpertOrSilence(), values, games)


def test_agent_tree_collection_with_a_real_sampler_and_value_model(tmp_path):
    """collect_trees on household games: real turns sampled after real observations, scored, stored, read back."""
    from oreo.buffer import Buffer
    from oreo.encode import Encoder
    from oreo.models import ValueModel, load_policy
    from oreo.rollout.sampler import HFSampler
    from oreo.search.mcts import collect_trees
    from oreo.search.tree import Tree
    from oreo.search.value import ValueScorer
    from oreo.tasks.household import HouseholdConfig, HouseholdTask

    task = HouseholdTask(HouseholdConfig(n_train=3, n_test=0, max_steps=4))
    policy, tok = load_policy("tiny", tiny=dict(vocabulary="household", hidden_size=32, num_layers=1, num_heads=2,
                                                intermediate_size=64, max_position_embeddings=1024), seed=1)
    sampler = HFSampler(policy, tok, Encoder(tok), batch_size=64, max_new_tokens=12)
    scorer = ValueScorer(ValueModel.from_policy(policy), Encoder(tok))
    buffer = Buffer(tmp_path / "buffer")
    info = collect_trees(task, task.games("train"), sampler, scorer, buffer, MCTSConfig(iterations=3, branch=2),
                         seed=0, round=1)
    rows = buffer.load([1])
    assert info["nodes"] > 0 and len({r.tree_id for r in rows}) == 3
    for tree_id in {r.tree_id for r in rows}:
        tree = Tree.from_trajectories([r for r in rows if r.tree_id == tree_id])
        assert all(n.observation is not None or n.terminal for n in tree.nodes.values() if n.parent is not None)


def test_alphazero_over_turns_gives_step_apo_pairs_of_turns():
    """CPL on agents: a turn is a plan step. The game's end is a terminal child (+1 won, -1 a turn without an
    action); the pairs are sibling turns, with the observations of their prefix, each ending its turn."""
    from oreo.search.plan_data import pair_records, step_apo_pairs
    from oreo.tasks.household import HouseholdConfig, HouseholdTask

    task = HouseholdTask(HouseholdConfig(n_train=1, n_test=0, teacher_error_rate=0.0, teacher_skip_rate=0.0))
    game = task.games("train")[0]

    cfg = MCTSConfig(style="alphazero", selection="puct", c=1.5, branch=2, root_branch=2, rollout_steps=0,
                     iterations=40, max_depth=20)
    sampler = ExpertOrSilence(task, game, "Thought: look")
    (tree,) = MCTS(cfg, task, sampler, lambda contexts: [0.0] * len(contexts)).search([game])
    won = [n for n in tree.nodes.values() if n.terminal and n.reward == 1.0]
    silent = [n for n in tree.nodes.values() if n.step == "Thought: look"]
    assert len(won) == 1 and won[0].value == 1.0 and all(n.value == -1.0 for n in silent)
    pairs = step_apo_pairs(tree)
    # the winning turn (Q +1) against silence (Q -1) after the same turns; higher up, every silent child's -1 was
    # backed up through the expert's turns too, so their Q straddle zero only where the win outweighs it
    assert pairs and all(p.rejected == "Thought: look" and p.q_rejected == -1.0 for p in pairs)
    assert all(p.turns and not p.solution and len(p.observations) == len(p.prefix) for p in pairs)
    deepest = max(pairs, key=lambda p: len(p.prefix))
    assert deepest.chosen == won[0].step and deepest.q_chosen == 1.0
    chosen, rejected = pair_records([deepest])
    assert chosen.meta["finished"] and rejected.meta["finished"] and chosen.observations == list(deepest.observations)
    # Step-APO trains on the turn's tokens alone: the prompt, the earlier turns and their observations are context
    from oreo.models import load_policy
    from oreo.trainers.common import TrainConfig
    from oreo.trainers.step_apo import StepAPOConfig, StepAPOObjective

    policy, tok = load_policy("tiny", tiny=dict(vocabulary="household", hidden_size=32, num_layers=1, num_heads=2,
                                                intermediate_size=64, max_position_embeddings=1024), seed=1)
    objective = StepAPOObjective(policy, tok, StepAPOConfig(max_len=1024), TrainConfig(), reference=policy)
    encoded = objective.encode(tree.to_trajectories())
    assert len(encoded) == len(pairs)
    for p in encoded:
        for e in (p.chosen, p.rejected):
            r = objective.records[e.index]
            actions = tok.decode([t for t, a in zip(e.input_ids[1:], e.action_mask) if a])
            assert actions == r.steps[-1] + tok.eos_token and len(r.observations) == len(r.steps) - 1


def test_the_style_picks_the_search_and_alphazero_refuses_an_end_gate():
    from oreo.config import ConfigError
    from oreo.search.mcts import MCTSStar, PlanSearch, make_search

    assert type(make_search(MCTSConfig(), Task(), None, None)) is MCTSStar
    assert type(make_search(MCTSConfig(style="alphazero"), PlanTask(), None, None)) is PlanSearch
    with pytest.raises(ConfigError, match="end_gate"):
        MCTSConfig(style="alphazero", end_gate=0.9)
