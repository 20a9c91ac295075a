"""A search tree over reasoning steps, shared by the tree-search methods (ReST-MCTS*, CPL).

A node is a partial solution: the prompt and the steps on the path to it; an edge is one step. Siblings
are keyed by their normalised step text, so the same step sampled twice is one child. Per node: visits
N, value V, prior (the policy's log-prob of the step, for PUCT), a terminal flag and, on terminal nodes,
the grader's reward. Values live on nodes (there is no separate Q(s, a)), as in ReST-MCTS*'s code.

For agents an edge is a turn and a node also holds the environment's observation after it.

The tree round-trips through ``Trajectory`` rows: each root-to-leaf path is one row whose ``node_ids``
and ``parent_ids`` say where its steps sit, whose ``observations`` are its nodes' (agents) and whose
``step_values`` hold the nodes' values; the
visits, priors and the terminal flags ride in ``meta``. ``Tree.from_trajectories`` reads them back as the
same tree. Selection (UCT with the unvisited bonus, PUCT) and backup (ReST-MCTS*'s visit-weighted mean of the
children, AlphaZero's running mean of the backed-up values) are pure functions of the tree.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from oreo.trajectory import Trajectory


def normalise(step: str) -> str:
    """The key siblings are merged by: the step with its whitespace collapsed."""
    return " ".join(step.split())


@dataclass
class Node:
    id: str
    parent: str | None          # None for the root
    step: str = ""              # the step from the parent to this node ("" for the root)
    depth: int = 0
    prior: float = 0.0          # PUCT's: the policy's mean token log-prob of the step (0: no prior given)
    visits: int = 0
    value: float = 0.0
    terminal: bool = False      # a finished solution (or a dead end): never expanded
    reward: float | None = None  # the grader's, on terminal nodes
    observation: str | None = None  # agents: the environment's observation after this turn (None: not taken)
    children: dict[str, str] = field(default_factory=dict)   # normalised step → child id


class Tree:
    """One problem's tree. Node ids are ``"0"`` (the root), ``"1"``, ... in creation order."""

    def __init__(self, tree_id: str, problem_id: str, prompt, task: str = ""):
        self.id, self.problem_id, self.prompt, self.task = tree_id, problem_id, prompt, task
        self.nodes: dict[str, Node] = {"0": Node("0", None)}

    @property
    def root(self) -> Node:
        return self.nodes["0"]

    def add(self, parent: Node, step: str, prior: float = 0.0) -> tuple[Node, bool]:
        """The child of ``parent`` for ``step`` and whether it is new (a duplicate step returns the
        existing child, whose prior is kept)."""
        key = normalise(step)
        if key in parent.children:
            return self.nodes[parent.children[key]], False
        if parent.terminal:
            raise ValueError(f"tree {self.id}: node {parent.id} is terminal and cannot be expanded")
        node = Node(str(len(self.nodes)), parent.id, step, parent.depth + 1, prior)
        self.nodes[node.id] = node
        parent.children[key] = node.id
        return node, True

    def children(self, node: Node) -> list[Node]:
        return [self.nodes[c] for c in node.children.values()]

    def path(self, node: Node) -> list[Node]:
        """The nodes from the root's first child down to ``node`` (empty for the root)."""
        out = []
        while node.parent is not None:
            out.append(node)
            node = self.nodes[node.parent]
        return out[::-1]

    def steps(self, node: Node) -> list[str]:
        return [n.step for n in self.path(node)]

    def observations(self, node: Node) -> list[str]:
        """Agents: the observations after the turns on the path to ``node`` (none for single-turn trees; an
        action the environment never took has none)."""
        return [n.observation for n in self.path(node) if n.observation is not None]

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.children]

    # ------------------------------------------------------------------ buffer rows
    def to_trajectories(self, round: int | None = None, meta: dict | None = None) -> list[Trajectory]:
        """One row per leaf (every node lies on one), in node order: the path's steps, node and parent ids,
        node values, and in ``meta`` the visits, priors and terminal flags of the path's nodes (the
        root's in ``meta["root"]``), besides ``meta``. ``reward``/``correct``: the leaf's grade (0 if it has
        none); ``meta["finished"]``: the leaf is a graded solution."""
        rows = []
        root = self.root
        for leaf in self.leaves():  # a tree that is its root alone (nothing usable was sampled) is one empty row
            path = self.path(leaf)
            rows.append(Trajectory(
                id=f"{self.id}-{leaf.id}", round=round, task=self.task, problem_id=self.problem_id,
                prompt=self.prompt, steps=[n.step for n in path], observations=self.observations(leaf),
                reward=leaf.reward or 0.0,
                correct=bool(leaf.reward and leaf.reward > 0),
                step_values=[n.value for n in path], tree_id=self.id, node_ids=[n.id for n in path],
                parent_ids=[n.parent for n in path],
                meta={**(meta or {}), "finished": leaf.terminal and leaf.reward is not None,
                      "tree": {"visits": [n.visits for n in path], "priors": [n.prior for n in path],
                               "terminal": [n.terminal for n in path], "leaf_reward": leaf.reward,
                               "root": {"visits": root.visits, "value": root.value,
                                        "terminal": root.terminal}}}))
        return rows

    @classmethod
    def from_trajectories(cls, rows: list[Trajectory]) -> Tree:
        """The tree ``rows`` (all of one ``tree_id``, from ``to_trajectories``) are the paths of."""
        if not rows or len({r.tree_id for r in rows}) != 1 or rows[0].tree_id is None:
            raise ValueError("from_trajectories needs the rows of exactly one tree")
        first = rows[0]
        tree = cls(first.tree_id, first.problem_id, first.prompt, first.task)
        info = first.meta.get("tree", {}).get("root", {})
        tree.root.visits, tree.root.value = info.get("visits", 0), info.get("value", 0.0)
        tree.root.terminal = info.get("terminal", False)
        found = {}
        for r in rows:
            t = r.meta.get("tree", {})
            for k, (node_id, parent_id, step) in enumerate(zip(r.node_ids, r.parent_ids, r.steps)):
                node = Node(node_id, "0" if parent_id is None else parent_id, step, k + 1,
                            prior=t.get("priors", [0.0] * len(r.steps))[k],
                            visits=t.get("visits", [0] * len(r.steps))[k],
                            value=r.step_values[k] if r.step_values else 0.0,
                            terminal=t.get("terminal", [False] * len(r.steps))[k],
                            observation=r.observations[k] if k < len(r.observations) else None)
                if k == len(r.steps) - 1:
                    node.reward = t.get("leaf_reward", r.reward if node.terminal else None)
                if found.setdefault(node_id, node) != node:
                    raise ValueError(f"tree {r.tree_id!r}: rows disagree about node {node_id!r}")
        for node_id in sorted(found, key=int):   # parents before children: ids grow with creation
            node = found[node_id]
            tree.nodes[node_id] = node
            tree.nodes[node.parent].children[normalise(node.step)] = node_id
        return tree


def prefix_tree(rows: list[Trajectory], tree_id: str | None = None) -> Tree:
    """The tree that sampled solutions of one problem form by their shared step prefixes (MATH-SHEPHERD's
    view of N samples): each finished, graded sample ends in a terminal node with its reward; a sample cut
    by the token limit ends in an ungraded leaf. ReST-MCTS*'s targets can be read from it like from a
    search tree (a cold start for the process value model, from an ordinary collection round)."""
    if not rows or len({r.problem_id for r in rows}) != 1:
        raise ValueError("prefix_tree needs the samples of exactly one problem")
    first = rows[0]
    tree = Tree(tree_id or f"prefix-{first.problem_id}", first.problem_id, first.prompt, first.task)
    for r in rows:
        node = tree.root
        for k, step in enumerate(r.steps):
            if node.terminal:   # a longer sample continues a finished one's text: keep the finished one
                break
            node, fresh = tree.add(node, step)
            if fresh and k < len(r.observations):
                node.observation = r.observations[k]
        if r.meta.get("finished", True) and node is not tree.root and not node.children:
            node.terminal, node.reward = True, (1.0 if r.correct else 0.0)
    return tree


# ---------------------------------------------------------------------- selection and backup (pure)
def uct_score(child: Node, parent_visits: int, c: float, unvisited_bonus: float) -> float:
    """ReST-MCTS*'s selection score: V + c·sqrt(2 ln N_parent / N_child); an unvisited child gets V plus a
    finite bonus instead (spec §1.2.1)."""
    if child.visits == 0:
        return child.value + unvisited_bonus
    return child.value + c * math.sqrt(2 * math.log(max(parent_visits, 1)) / child.visits)


def puct_score(child: Node, parent_visits: int, c: float) -> float:
    """AlphaZero's PUCT as CPL's code computes it (spec §2.2): V + c·P·sqrt(N_parent)/(1 + N_child) with
    P = exp(prior), the step's exp(mean token log-prob), not normalised over the siblings."""
    return child.value + c * math.exp(child.prior) * math.sqrt(parent_visits) / (1 + child.visits)


def select_child(tree: Tree, node: Node, rng: random.Random, *, rule: str = "uct", c: float = 0.5,
                 unvisited_bonus: float = 0.9, skip=None) -> Node:
    """The child of ``node`` with the best score under ``rule`` (``uct`` or ``puct``), the children for which
    ``skip(child)`` holds left out (AlphaZero style: those with nothing left to search); ties broken by
    ``rng``."""
    kids = [k for k in tree.children(node) if skip is None or not skip(k)]
    if not kids:
        raise ValueError(f"tree {tree.id}: node {node.id} has no children to select from")
    if rule == "uct":
        scores = [uct_score(k, node.visits, c, unvisited_bonus) for k in kids]
    elif rule == "puct":
        scores = [puct_score(k, node.visits, c) for k in kids]
    else:
        raise ValueError(f"selection rule must be uct or puct, got {rule!r}")
    best = max(scores)
    return rng.choice([k for k, s in zip(kids, scores) if s == best])


def backup(tree: Tree, node: Node) -> None:
    """After expanding ``node`` (spec §1.2.4): every node from it up to the root gets one more visit, and
    each that has visited children takes their visit-weighted mean value."""
    while True:
        node.visits += 1
        visited = [k for k in tree.children(node) if k.visits > 0]
        if visited:
            node.value = sum(k.value * k.visits for k in visited) / sum(k.visits for k in visited)
        if node.parent is None:
            return
        node = tree.nodes[node.parent]


def backup_mean(tree: Tree, node: Node, value: float) -> None:
    """AlphaZero-style backup (CPL, spec §2.2): ``value`` joins the running mean of ``node`` and of every
    ancestor, each getting one more visit, so a node's value is the mean of all values backed up through
    it (Q = value_sum / N)."""
    while True:
        node.visits += 1
        node.value += (value - node.value) / node.visits
        if node.parent is None:
            return
        node = tree.nodes[node.parent]
