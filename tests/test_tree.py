"""The search-tree core: merged duplicate steps, selection and backup by hand, a tree that round-trips
through a buffer round, and ReST-MCTS*'s inferred per-step targets on hand-built trees."""
import math
import random

import pytest

from oreo.buffer import Buffer
from oreo.search.process_values import inferred_values, min_steps_to_correct
from oreo.search.tree import Tree, backup, backup_mean, puct_score, select_child, uct_score


def chain(tree, parent, steps, *, reward=None):
    """Add ``steps`` below ``parent``; the last node is terminal with ``reward`` if it is given."""
    node = parent
    for s in steps:
        node, _ = tree.add(node, s)
    if reward is not None:
        node.terminal, node.reward = True, reward
    return node


def test_duplicate_steps_are_one_child():
    tree = Tree("t", "p", "2+2?")
    a, new = tree.add(tree.root, "2+2=4\n", prior=-0.5)
    b, again = tree.add(tree.root, " 2+2=4 \n", prior=-9.0)
    assert new and not again and a is b and a.prior == -0.5
    assert len(tree.children(tree.root)) == 1 and a.depth == 1 and tree.steps(a) == ["2+2=4\n"]
    a.terminal = True
    with pytest.raises(ValueError, match="terminal"):
        tree.add(a, "more")


def test_uct_prefers_the_unvisited_bonus_then_value_plus_exploration():
    tree = Tree("t", "p", "q")
    a, _ = tree.add(tree.root, "a")
    b, _ = tree.add(tree.root, "b")
    tree.root.visits, a.visits, a.value, b.value = 4, 2, 0.5, 0.1
    assert uct_score(b, 4, c=0.5, unvisited_bonus=0.9) == pytest.approx(1.0)
    assert uct_score(a, 4, c=0.5, unvisited_bonus=0.9) == pytest.approx(0.5 + 0.5 * (2 * 1.3862944 / 2) ** 0.5)
    assert select_child(tree, tree.root, random.Random(0), c=0.5, unvisited_bonus=0.9) is a  # 1.089 > 1.0
    assert select_child(tree, tree.root, random.Random(0), c=0.5, unvisited_bonus=1.2) is b


def test_puct_weighs_the_prior():
    tree = Tree("t", "p", "q")
    a, _ = tree.add(tree.root, "a", prior=-0.1)
    b, _ = tree.add(tree.root, "b", prior=-3.0)
    tree.root.visits = 1
    assert select_child(tree, tree.root, random.Random(0), rule="puct", c=1.0) is a
    a.value, b.value = -1.0, 0.5
    assert select_child(tree, tree.root, random.Random(0), rule="puct", c=1.0) is b
    # P = exp(prior), not normalised over the siblings (CPL's code): 0 + 1.5·e^-0.1·√4/(1+1) = 1.357
    a.value, a.visits, tree.root.visits = 0.0, 1, 4
    assert puct_score(a, 4, 1.5) == pytest.approx(1.5 * math.exp(-0.1))


def test_backup_counts_visits_and_takes_the_visit_weighted_mean():
    tree = Tree("t", "p", "q")
    a, _ = tree.add(tree.root, "a")
    b, _ = tree.add(tree.root, "b")
    a1, _ = tree.add(a, "a1")
    a2, _ = tree.add(a, "a2")
    a1.value, a1.visits, a2.value, a2.visits = 0.8, 1, 0.2, 3
    b.value, b.visits = 0.6, 2
    backup(tree, a)
    assert a.visits == 1 and a.value == pytest.approx((0.8 * 1 + 0.2 * 3) / 4)
    assert tree.root.visits == 1 and tree.root.value == pytest.approx((0.35 * 1 + 0.6 * 2) / 3)


def test_a_tree_round_trips_through_a_buffer_round(tmp_path):
    tree = Tree("tree-7", "p7", "1+2+3?", task="arithmetic")
    a, _ = tree.add(tree.root, "1+2=3\n", prior=-0.2)
    chain(tree, a, ["3+3=6\n", "#### 6"], reward=1.0)
    chain(tree, a, ["3+3=7\n", "#### 7"], reward=0.0)
    tree.add(tree.root, "1+3=4\n", prior=-1.5)   # an unexpanded leaf
    for i, node in enumerate(tree.nodes.values()):
        node.visits, node.value = i, i / 10
    rows = tree.to_trajectories()
    assert len(rows) == 3 and all(r.tree_id == "tree-7" for r in rows)
    buffer = Buffer(tmp_path / "buffer")
    buffer.append(rows, round=0)
    again = Tree.from_trajectories(buffer.load())
    assert again.nodes == tree.nodes
    assert (again.id, again.problem_id, again.prompt, again.task) == ("tree-7", "p7", "1+2+3?", "arithmetic")


def test_values_along_an_all_correct_path_are_k_over_K():
    tree = Tree("t", "p", "q")
    leaf = chain(tree, tree.root, ["s1", "s2", "s3", "s4"], reward=1.0)
    values = inferred_values(tree)
    assert [values[n.id] for n in tree.path(leaf)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_a_wrong_branch_inherits_its_branching_points_distance():
    tree = Tree("t", "p", "q")
    a, _ = tree.add(tree.root, "a")
    c = chain(tree, a, ["b", "c"], reward=1.0)
    y = chain(tree, a, ["x", "y"], reward=0.0)
    steps, good = min_steps_to_correct(tree)
    b, x = tree.nodes[c.parent], tree.nodes[y.parent]
    assert (steps["0"], steps[a.id], steps[b.id], steps[c.id]) == (4, 3, 2, 1)
    assert steps[x.id] == steps[y.id] == 3 and good == {"0", a.id, b.id, c.id}
    v = inferred_values(tree)
    # v_a = 1/3; v_b = 1/3 + (2/3)/2; v_c = 2/3 + (1/3)/1; v_x = 1/3 - (2/3)/3 = 1/9; v_y = max(0, 1/9 - (8/9)/3)
    assert (v[a.id], v[b.id], v[c.id], v[x.id], v[y.id]) == pytest.approx((1 / 3, 2 / 3, 1.0, 1 / 9, 0.0))


def test_the_nearest_correct_leaf_sets_the_distance_and_unfinished_nodes_get_none():
    tree = Tree("t", "p", "q")
    short = chain(tree, tree.root, ["a", "b"], reward=1.0)
    long = chain(tree, tree.root, ["p", "q", "r"], reward=1.0)
    wrong = chain(tree, tree.root, ["w"], reward=0.0)
    open_leaf = chain(tree, tree.nodes[long.parent], ["unfinished"])
    v = inferred_values(tree)
    assert [v[n.id] for n in tree.path(short)] == pytest.approx([0.5, 1.0])
    assert [v[n.id] for n in tree.path(long)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert v[wrong.id] == 0.0          # max(0, 0 - 1/3): it branches off the root (distance 3)
    assert open_leaf.id not in v and "0" not in v


def test_a_tree_without_a_correct_answer_gives_no_targets():
    tree = Tree("t", "p", "q")
    chain(tree, tree.root, ["a", "b"], reward=0.0)
    chain(tree, tree.root, ["c"])
    assert inferred_values(tree) == {} and min_steps_to_correct(tree) == ({}, set())


def test_samples_of_a_problem_form_a_prefix_tree_with_targets():
    from oreo.search.tree import prefix_tree
    from oreo.trajectory import Trajectory

    def sample(i, steps, correct, finished=True):
        return Trajectory(id=f"s{i}", task="arithmetic", problem_id="p", prompt="1+2+3?\n", steps=steps,
                          reward=float(correct), correct=correct, meta={"finished": finished})

    rows = [sample(0, ["1+2=3\n", "3+3=6\n", "#### 6"], True),
            sample(1, ["1+2=3\n", "3+3=7\n", "#### 7"], False),
            sample(2, ["1+2=3\n", "3+3=6\n", "#### 6"], True),      # a duplicate: the same path
            sample(3, ["1+2=4\n", "4+3"], False, finished=False)]    # cut: an ungraded leaf
    tree = prefix_tree(rows)
    assert len(tree.nodes) == 1 + 5 + 2
    a = tree.children(tree.root)[0]
    assert [k.step for k in tree.children(a)] == ["3+3=6\n", "3+3=7\n"]
    cut = tree.children(tree.children(tree.root)[1])[0]
    assert not cut.terminal and cut.reward is None
    v = inferred_values(tree)
    six, seven = tree.children(a)
    assert (v[a.id], v[six.id]) == pytest.approx((1 / 3, 2 / 3))
    # the wrong branch inherits a's distance (3): 1/3 - (2/3)/3 = 1/9, then max(0, 1/9 - (8/9)/3) = 0
    assert v[seven.id] == pytest.approx(1 / 9) and cut.id not in v
    with pytest.raises(ValueError, match="exactly one problem"):
        prefix_tree(rows + [Trajectory(**{**rows[0].to_dict(), "id": "o", "problem_id": "q"})])


def test_target_rows_from_samples_trees_and_labels():
    from oreo.search.process_values import target_rows
    from oreo.trajectory import Trajectory

    def sample(i, pid, steps, correct):
        return Trajectory(id=f"s{i}", task="t", problem_id=pid, prompt="q\n", steps=steps, reward=float(correct),
                          correct=correct)

    samples = [sample(0, "p", ["a\n", "#### 1"], True), sample(1, "p", ["b\n", "#### 2"], False),
               sample(2, "never", ["c\n", "#### 3"], False)]     # no correct sample: no targets
    tree = Tree("r1-p", "p", "q\n", task="t")
    chain(tree, tree.root, ["x\n", "#### 1"], reward=1.0)
    chain(tree, tree.root, ["y\n"])                                 # unfinished: no target
    labelled = Trajectory(id="l", task="t", problem_id="z", prompt="q\n", steps=["s\n"], reward=1.0,
                          step_values=[0.7])
    out = {tuple(r.steps): r.step_values for r in target_rows(samples + tree.to_trajectories() + [labelled])}
    assert out == {("a\n", "#### 1"): pytest.approx([0.5, 1.0]), ("b\n", "#### 2"): pytest.approx([0.0, 0.0]),
                   ("x\n", "#### 1"): pytest.approx([0.5, 1.0]), ("s\n",): [0.7]}


def test_a_tree_that_is_its_root_alone_is_one_empty_row():
    tree = Tree("lone", "p", "q")
    tree.root.visits, tree.root.terminal = 2, True   # a dead end: nothing usable was sampled
    (row,) = tree.to_trajectories()
    assert row.steps == [] and row.tree_id == "lone" and not row.correct
    assert Tree.from_trajectories([row]).nodes == tree.nodes


def test_backup_mean_keeps_the_mean_of_every_value_backed_up_through_a_node():
    tree = Tree("t", "p", "q")
    a, _ = tree.add(tree.root, "a")
    b, _ = tree.add(a, "b")
    backup_mean(tree, b, 1.0)
    backup_mean(tree, a, -0.5)
    backup_mean(tree, b, 0.25)
    assert (b.visits, b.value) == (2, pytest.approx(0.625))
    assert (a.visits, a.value) == (3, pytest.approx(0.75 / 3))
    assert (tree.root.visits, tree.root.value) == (3, pytest.approx(0.25))


def test_selection_can_skip_children():
    tree = Tree("t", "p", "q")
    a, _ = tree.add(tree.root, "a")
    b, _ = tree.add(tree.root, "b")
    a.value, a.terminal, b.value = 1.0, True, 0.1
    assert select_child(tree, tree.root, random.Random(0), c=0.0) is a
    assert select_child(tree, tree.root, random.Random(0), c=0.0, skip=lambda k: k.terminal) is b
