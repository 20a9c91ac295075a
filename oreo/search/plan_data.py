"""CPL's datasets, read off plan-search trees (spec §2.5): Step-APO pairs, policy SFT paths, value targets.

In a plan tree (``oreo.search.tree``) an edge is a plan step or, as a terminal child, the whole solution
block; a node's ``value`` is its MCTS Q (the mean of the values backed up through it: ``MCTS`` with
``style=alphazero``), a solution's ``reward`` its grade (1 right, 0 wrong; its Q is then +1 or −1). A format
failure or a too-deep plan is a terminal node with no reward (an invalid child: never paired, never
trained on). A solution is thus a graded terminal node, a plan step any other valid one.

- **Step-APO pairs**: at every node, of its first 5 children (the root) or first 3 (below it), the valid
  ones; if their Q straddle zero, every (plan step with Q > 0, plan step with Q < 0) pair, and one pair of
  solutions, the highest- and the lowest-valued, if they straddle zero too, with both Q scaled by
  ``solution_weight`` (0.3). Chosen and rejected share the node's prefix. The reference's data scripts
  make plan pairs only at nodes without a solution child and pair solutions only below the root (spec
  §2.8); here plan steps pair with plan steps and solutions with solutions at every node, as its paper
  describes.
- **SFT paths**: root-to-solution paths on which no node has Q = −1 and whose solution is right; at
  most ``max_paths`` per tree, drawn at random.
- **Value targets**: every root-to-solution path (failures excluded), with the Q of each of its nodes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from oreo.search.tree import Node, Tree
from oreo.trajectory import Trajectory


@dataclass(frozen=True)
class StepPair:
    """Two sibling steps after the same prefix, the preferred one first, with their MCTS Q."""
    tree_id: str
    node_id: str              # the node both steps continue
    problem_id: str
    prompt: object
    prefix: tuple[str, ...]   # the steps from the root to that node
    chosen: str
    rejected: str
    q_chosen: float
    q_rejected: float
    solution: bool            # a pair of solution blocks (Q scaled by the solution weight)


def valid(node: Node) -> bool:
    """Not a format failure or a too-deep plan (terminal without a grade)."""
    return not (node.terminal and node.reward is None)


def is_solution(node: Node) -> bool:
    """A graded terminal node: the solution block (every other valid node is a plan step)."""
    return node.terminal and node.reward is not None


def step_apo_pairs(tree: Tree, *, solution_weight: float = 0.3,
                   root_children: int = 5, children: int = 3) -> list[StepPair]:
    """Every Step-APO pair of ``tree`` (module docstring), nodes in creation order."""
    pairs = []
    for node in tree.nodes.values():
        kids = [c for c in tree.children(node)[:root_children if node.parent is None else children] if valid(c)]
        if len(kids) < 2 or not (max(c.value for c in kids) > 0 > min(c.value for c in kids)):
            continue
        prefix = tuple(tree.steps(node))

        def pair(w: Node, lo: Node, weight: float, solution: bool) -> StepPair:
            return StepPair(tree.id, node.id, tree.problem_id, tree.prompt, prefix, w.step, lo.step,
                            weight * w.value, weight * lo.value, solution)

        plans = [c for c in kids if not is_solution(c)]
        pairs += [pair(w, lo, 1.0, False) for w in plans if w.value > 0 for lo in plans if lo.value < 0]
        solutions = [c for c in kids if is_solution(c)]
        if solutions:
            best = max(solutions, key=lambda c: c.value)
            worst = min(solutions, key=lambda c: c.value)
            if best.value > 0 > worst.value:
                pairs.append(pair(best, worst, solution_weight, True))
    return pairs


def solution_paths(tree: Tree) -> list[list[Node]]:
    """The root-to-solution paths of ``tree`` (a graded solution at the end), in creation order."""
    return [tree.path(n) for n in tree.nodes.values() if is_solution(n)]


def sft_paths(tree: Tree, *, max_paths: int = 4,
              rng: random.Random | None = None) -> list[list[str]]:
    """At most ``max_paths`` right root-to-solution paths with no node of Q = −1, as their steps."""
    good = [p for p in solution_paths(tree) if p[-1].reward > 0 and all(n.value != -1.0 for n in p)]
    if len(good) > max_paths:
        good = (rng or random.Random(0)).sample(good, max_paths)
    return [[n.step for n in p] for p in good]


def value_targets(tree: Tree) -> list[tuple[list[str], list[float]]]:
    """``(steps, Q of each step's node)`` for every root-to-solution path."""
    return [([n.step for n in p], [n.value for n in p]) for p in solution_paths(tree)]


def pair_records(pairs: list[StepPair], task: str = "") -> list[Trajectory]:
    """Each pair as two trajectories (chosen, then rejected): the prompt, the shared prefix and the step, the
    step's Q as ``reward``; ``meta``: ``pair`` (the pair's id), ``role``, ``context_steps`` (the prefix's
    length: those steps are context, not actions) and ``finished`` (a solution ends with EOS, a plan step
    does not, as in the reference)."""
    rows = []
    for k, p in enumerate(pairs):
        pair_id = f"{p.tree_id}-{p.node_id}-{k}"
        for role, step, q in (("chosen", p.chosen, p.q_chosen), ("rejected", p.rejected, p.q_rejected)):
            rows.append(Trajectory(id=f"{pair_id}-{role}", task=task, problem_id=p.problem_id, prompt=p.prompt,
                                   steps=[*p.prefix, step], reward=q, correct=role == "chosen",
                                   meta={"pair": pair_id, "role": role, "context_steps": len(p.prefix),
                                         "finished": p.solution}))
    return rows


def trees_of(records: list) -> list[Tree]:
    """The search trees among buffer ``records`` (rows with a ``tree_id``; dicts are read as ``Trajectory``),
    in first-seen order."""
    rows: dict[str, list[Trajectory]] = {}
    for i, r in enumerate(records):
        r = r if isinstance(r, Trajectory) else Trajectory.from_dict(r, f"record {i}")
        if r.tree_id is not None:
            rows.setdefault(r.tree_id, []).append(r)
    return [Tree.from_trajectories(group) for group in rows.values()]


def tree_pairs(records: list, **kwargs) -> list[StepPair]:
    """The Step-APO pairs of every search tree among ``records``; ``kwargs`` go to ``step_apo_pairs``."""
    return [p for tree in trees_of(records) for p in step_apo_pairs(tree, **kwargs)]


def q_target_rows(records: list) -> list[Trajectory]:
    """A process value model's rows from the trees among ``records``: every root-to-solution path with the
    MCTS Q of each of its nodes as ``step_values`` (CPL's value data, ``prm.targets=q``)."""
    return [Trajectory(id=f"{t.id}-q{k}", task=t.task, problem_id=t.problem_id, prompt=t.prompt, steps=steps,
                       reward=qs[-1], correct=qs[-1] > 0, step_values=qs)
            for t in trees_of(records) for k, (steps, qs) in enumerate(value_targets(t))]


def sft_rows(records: list, *, max_paths: int = 4, seed: int = 0) -> list[Trajectory]:
    """Policy SFT rows from the trees among ``records``: at most ``max_paths`` right paths per tree
    (``sft_paths``, drawn with ``seed``)."""
    rng = random.Random(seed)
    return [Trajectory(id=f"{t.id}-sft{k}", task=t.task, problem_id=t.problem_id, prompt=t.prompt, steps=steps,
                       reward=1.0, correct=True, meta={"source": "plan search"})
            for t in trees_of(records) for k, steps in enumerate(sft_paths(t, max_paths=max_paths, rng=rng))]
