"""ReST-MCTS*'s inferred per-step targets (spec §1.3): from a search tree whose terminal nodes are graded,
a quality value v_k in [0, 1] for every partial solution that lies on, or branches off, a path to a
correct answer. These are the process value model's regression targets; the search itself never uses
them (it uses the value model's raw outputs).

With m_k the reasoning distance (the fewest further steps from p_k to a correct answer) and r_k = 0 if
step k can still lead to the correct answer, else 1:

    w_k = (1 − v_{k−1}) / (m_k + 1) · (1 − 2 r_k),     v_0 = 0,     v_k = max(v_{k−1} + w_k, 0).

As in the reference code, ``min_steps`` = m + 1 is 1 at a correct leaf and grows by one per step up to
the root; the nodes of a branch that ends in a wrong answer take the ``min_steps`` of the node they
branch off (the nearest ancestor on a path to a correct leaf) and have r = 1; the other nodes (never
finished, dead ends without a grade, or on no path to a graded answer) get no target. A tree without a
correct leaf gives none. Along a correct path of K steps, v_k = k/K.
"""
from __future__ import annotations

from collections import defaultdict

from oreo.search.tree import Node, Tree, prefix_tree
from oreo.trajectory import Trajectory


def min_steps_to_correct(tree: Tree) -> tuple[dict[str, int], set[str]]:
    """``({node id: min_steps}, ids of the nodes on a path to a correct leaf)`` for the nodes that get
    a target (spec §1.3, steps 1-3); empty if no leaf is correct."""
    correct = [n for n in tree.nodes.values() if n.terminal and n.reward is not None and n.reward > 0]
    steps: dict[str, int] = {}
    for leaf in correct:            # step 2: the distance to the nearest correct leaf, walked up to the root
        node, distance = leaf, 1
        while True:
            if steps.get(node.id, distance + 1) > distance:
                steps[node.id] = distance
            if node.parent is None:
                break
            node, distance = tree.nodes[node.parent], distance + 1
    on_correct_path = set(steps)
    if not correct:
        return {}, set()
    for leaf in tree.nodes.values():  # step 3: wrong answers inherit their branching point's distance
        if not leaf.terminal or leaf.reward is None or leaf.id in on_correct_path:
            continue  # a dead end (terminal, no grade) is not an answer
        branch: list[Node] = []
        node = leaf
        while node.id not in on_correct_path:
            branch.append(node)
            node = tree.nodes[node.parent]
        for n in branch:
            steps[n.id] = steps[node.id]
    return steps, on_correct_path


def inferred_values(tree: Tree) -> dict[str, float]:
    """``{node id: v}`` for every node but the root that gets a target (spec §1.3, step 4)."""
    steps, good = min_steps_to_correct(tree)
    values: dict[str, float] = {}

    def visit(node: Node, v_parent: float) -> None:
        for child in tree.children(node):
            if child.id not in steps:
                continue
            sign = 1.0 if child.id in good else -1.0
            v = max(0.0, v_parent + (1.0 - v_parent) * sign / steps[child.id])
            values[child.id] = v
            visit(child, v)

    if steps:
        visit(tree.root, 0.0)
    return values


def target_rows(rows: list[Trajectory]) -> list[Trajectory]:
    """Training rows for a process value model from buffer rows: the rows of a search tree (``tree_id``)
    are read back as that tree, the other rows of a problem (samples) as their prefix tree; every leaf
    whose whole path has targets gives one row with them as ``step_values``. Rows that already carry a
    target per step (imported process labels) are kept as they are."""
    labelled = [r for r in rows if r.step_values and len(r.step_values) == len(r.steps) and r.tree_id is None]
    groups: dict[tuple, list[Trajectory]] = defaultdict(list)
    for r in rows:
        if r.tree_id is not None:
            groups[("tree", r.tree_id)].append(r)
        elif not (r.step_values and len(r.step_values) == len(r.steps)):
            groups[("samples", r.problem_id)].append(r)
    out = list(labelled)
    for (kind, _), members in groups.items():
        tree = Tree.from_trajectories(members) if kind == "tree" else prefix_tree(members)
        targets = inferred_values(tree)
        for leaf in tree.leaves():
            path = tree.path(leaf)
            if path and all(n.id in targets for n in path):
                out.append(Trajectory(id=f"{tree.id}-{leaf.id}-target", task=tree.task, problem_id=tree.problem_id,
                                      prompt=tree.prompt, steps=[n.step for n in path],
                                      observations=tree.observations(leaf), reward=leaf.reward or 0.0,
                                      correct=bool(leaf.reward), step_values=[targets[n.id] for n in path]))
    return out

