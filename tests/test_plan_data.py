"""CPL's datasets from a hand-built plan tree (spec §2.5): Step-APO pairs, SFT paths, value targets."""
import random

import pytest

from oreo.search.plan_data import pair_records, sft_paths, step_apo_pairs, value_targets
from oreo.search.tree import Tree


def add(tree, parent, step, q, *, terminal=False, reward=None):
    node, _ = tree.add(parent, step)
    node.value, node.terminal, node.reward = q, terminal, reward
    return node


@pytest.fixture
def tree():
    """root ─ A "Plan 1: add 5" (Q .8) ─ A1 solution, right (+1)
                                        ─ A2 solution, wrong (−1)
                                        ─ A3 "Plan 2: add 1" (.5) ─ A3a solution, right (+1)
                                        ─ A4 "Plan 2: sub 1" (−.4)   (a 4th child: beyond the 3 read below the root)
           ─ B "Plan 1: sub 3" (−.5) ─ B1 solution, wrong (−1)
           ─ C "Plan 1: mul 2" (.3)
           ─ D a format failure (terminal, no grade, −1)
           ─ E solution, wrong (−1)
           ─ F "Plan 1: div 2" (−1)    (a 6th child: beyond the 5 read at the root)"""
    t = Tree("t", "p", "3 +5 +1\n")
    root = t.root
    a = add(t, root, "Plan 1: add 5\n", 0.8)
    b = add(t, root, "Plan 1: sub 3\n", -0.5)
    add(t, root, "Plan 1: mul 2\n", 0.3)
    add(t, root, "Plan ??\n", -1.0, terminal=True)
    add(t, root, "Solution: 3+5=8 #### 8", -1.0, terminal=True, reward=0.0)
    add(t, root, "Plan 1: div 2\n", -1.0)
    add(t, a, "Solution: 3+5=8 8+1=9 #### 9", 1.0, terminal=True, reward=1.0)
    add(t, a, "Solution: 3+5=8 8+1=10 #### 10", -1.0, terminal=True, reward=0.0)
    a3 = add(t, a, "Plan 2: add 1\n", 0.5)
    add(t, a, "Plan 2: sub 1\n", -0.4)
    add(t, a3, "Solution: 8+1=9 #### 9", 1.0, terminal=True, reward=1.0)
    add(t, b, "Solution: 3-3=0 #### 0", -1.0, terminal=True, reward=0.0)
    return t


def test_step_apo_pairs_by_hand(tree):
    pairs = step_apo_pairs(tree)
    got = [(p.node_id, p.chosen.strip(), p.rejected.strip(), p.q_chosen, p.q_rejected, p.solution) for p in pairs]
    assert got == [
        # root: plan pairs (Q > 0 against Q < 0) among its first 5 children; F (the 6th) and D (a failure) never;
        # E is its only solution: no solution pair
        ("0", "Plan 1: add 5", "Plan 1: sub 3", 0.8, -0.5, False),
        ("0", "Plan 1: mul 2", "Plan 1: sub 3", 0.3, -0.5, False),
        # A: the right and the wrong solution, Q × 0.3; A3 has no negative plan sibling among the first 3
        ("1", "Solution: 3+5=8 8+1=9 #### 9", "Solution: 3+5=8 8+1=10 #### 10", pytest.approx(0.3),
         pytest.approx(-0.3), True),
    ]
    assert all(p.prefix == tuple(tree.steps(tree.nodes[p.node_id])) for p in pairs)
    assert pairs[2].prefix == ("Plan 1: add 5\n",) and pairs[0].prefix == ()
    # reading every child of A (4) adds the plan pair A3 > A4
    wider = step_apo_pairs(tree, children=4)
    assert ("Plan 2: add 1\n", "Plan 2: sub 1\n") in [(p.chosen, p.rejected) for p in wider]


def test_a_node_whose_children_do_not_straddle_zero_gives_no_pair():
    t = Tree("t", "p", "1 +1\n")
    add(t, t.root, "Plan 1: add 1\n", 0.9)
    add(t, t.root, "Plan 1: add 2\n", 0.1)
    add(t, t.root, "Plan ??\n", -1.0, terminal=True)   # a failure does not count as the negative side
    assert step_apo_pairs(t) == []


def test_sft_paths_and_value_targets_by_hand(tree):
    assert sft_paths(tree) == [["Plan 1: add 5\n", "Solution: 3+5=8 8+1=9 #### 9"],
                                            ["Plan 1: add 5\n", "Plan 2: add 1\n", "Solution: 8+1=9 #### 9"]]
    one = sft_paths(tree, max_paths=1, rng=random.Random(3))
    assert len(one) == 1 and one[0] in sft_paths(tree)
    tree.nodes["1"].value = -1.0   # a node on the path valued −1: its paths are not learned from
    assert sft_paths(tree) == []
    tree.nodes["1"].value = 0.8
    targets = value_targets(tree)
    assert [(len(steps), qs) for steps, qs in targets] == [
        (1, [-1.0]),              # E
        (2, [0.8, 1.0]),          # A → A1
        (2, [0.8, -1.0]),         # A → A2
        (3, [0.8, 0.5, 1.0]),     # A → A3 → A3a
        (2, [-0.5, -1.0]),        # B → B1
    ]


def test_pairs_around_the_node_q_and_across_kinds_by_hand():
    """root (Q −.6) ─ P1 "Plan +1" (−.2)
                    ─ P2 "Plan +2" (−.8)
                    ─ S  a wrong solution (−1)
                    ─ R  a right solution (+1)
    The reference pairs only R > S (its Q × 0.3): no plan step has Q > 0."""
    t = Tree("t", "p", "1 +1\n")
    t.root.value = -0.6
    add(t, t.root, "Plan +1\n", -0.2)
    add(t, t.root, "Plan +2\n", -0.8)
    add(t, t.root, "1+1=3 #### 3", -1.0, terminal=True, reward=0.0)
    add(t, t.root, "1+1=2 #### 2", 1.0, terminal=True, reward=1.0)

    def got(**kw):
        return [(p.chosen.split()[-1], p.rejected.split()[-1], round(p.q_chosen, 2), round(p.q_rejected, 2),
                 p.chosen_solution, p.rejected_solution) for p in step_apo_pairs(t, **kw)]

    reference = [("2", "3", 0.3, -0.3, True, True)]
    assert got() == reference
    assert got(kinds="same", baseline="zero") == reference
    # around the node's Q (−.6): P1 above, P2 and S below it; the solution pair is unchanged
    assert got(baseline="node") == [("+1", "+2", -0.2, -0.8, False, False), *reference]
    # across kinds too: a plan step above against the solution below, the solution above against a plan
    # step below, both Q unscaled
    assert got(baseline="node", kinds="any") == [
        ("+1", "+2", -0.2, -0.8, False, False),
        ("+1", "3", -0.2, -1.0, False, True),
        ("2", "+2", 1.0, -0.8, True, False),
        *reference]
    # around zero across kinds: only R is above
    assert got(kinds="any") == [("2", "+1", 1.0, -0.2, True, False), ("2", "+2", 1.0, -0.8, True, False),
                                *reference]
    assert got(baseline="node", solution_pairs=False) == [("+1", "+2", -0.2, -0.8, False, False)]
    # a plan step ends without EOS, a solution with it, whichever side it is on
    cross = step_apo_pairs(t, baseline="node", kinds="any")[1]
    assert [r.meta["finished"] for r in pair_records([cross])] == [False, True]
    with pytest.raises(ValueError, match="baseline"):
        step_apo_pairs(t, baseline="mean")


def test_cpl_pairs_counts_the_pairs_the_outcomes_back(tree):
    """experiments/cpl_pairs.py: A > B is backed (A's subtree holds a right solution, B's none); C > B is not (C
    has no subtree: only its Q orders it); the solution pair is not counted as backed or not."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))
    from cpl_pairs import pair_counts

    from oreo.trainers.step_apo import StepAPOConfig

    records = tree.to_trajectories()
    assert pair_counts(records, StepAPOConfig()) == {"plan steps": 2, "solutions": 1, "backed": 1}
