"""CPL's datasets, read off plan-search trees (spec §2.5): Step-APO pairs, policy SFT paths, value targets.

In a plan tree (``oreo.search.tree``) an edge is a plan step or, as a terminal child, the whole solution
block; a node's ``value`` is its MCTS Q (the mean of the values backed up through it: ``PlanSearch``,
``mcts.style=alphazero``), a solution's ``reward`` its grade (1 right, 0 wrong; its Q is then +1 or −1). A format
failure or a too-deep plan is a terminal node with no reward (an invalid child: never paired, never
trained on). A solution is thus a graded terminal node, a plan step any other valid one.

- **Step-APO pairs**: at every node, of its first 5 children (the root) or first 3 (below it), the valid
  ones; if their Q straddle zero, every (plan step with Q > 0, plan step with Q < 0) pair, and one pair of
  solutions, the highest- and the lowest-valued, if they straddle zero too, with both Q scaled by
  ``solution_weight`` (0.3). Chosen and rejected share the node's prefix. The reference's data scripts
  make plan pairs only at nodes without a solution child and pair solutions only below the root (spec
  §2.8); here plan steps pair with plan steps and solutions with solutions at every node, as its paper
  describes. Two departures, off by default, for a policy that seldom succeeds (``experiments/cpl_pairs.py``
  measures them): ``baseline="node"`` pairs children whose Q straddle the node's own Q instead of zero (the
  advantage Q(s, a) − V(s) changes sign, spec §2.3; zero is that baseline only where half the paths end
  right), and ``kinds="any"`` also pairs a plan step with a solution (to stop planning or plan one more
  step: where a plan that leaves its last operation out goes wrong), their Q unscaled.
- **Agents** (turns played in an environment): every turn is a plan step, the game's end (+1 won, −1 lost) a
  terminal one, so turns pair with turns whatever ``kinds`` says; a pair carries the observations of its
  prefix, and each turn ends with the end-of-turn token.
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
    chosen_solution: bool     # the chosen step is a solution block (it ends the response)
    rejected_solution: bool
    observations: tuple[str, ...] = ()   # agents: the observations after the prefix's turns
    turns: bool = False       # agents: both steps are turns (each ends with the end-of-turn token)

    @property
    def solution(self) -> bool:
        """A pair of solution blocks (their Q scaled by the solution weight)."""
        return self.chosen_solution and self.rejected_solution

    @property
    def kind(self) -> str:
        """``"turns"`` (agents), ``"plan steps"``, ``"solutions"`` or ``"plan step/solution"``."""
        if self.turns:
            return "turns"
        sides = {self.chosen_solution, self.rejected_solution}
        return "plan step/solution" if len(sides) == 2 else "solutions" if self.solution else "plan steps"

    def ends(self, chosen: bool) -> bool:
        """Whether the chosen (or rejected) step ends with EOS: a solution or a turn."""
        return self.turns or (self.chosen_solution if chosen else self.rejected_solution)


def valid(node: Node) -> bool:
    """Not a format failure or a too-deep plan (terminal without a grade)."""
    return not (node.terminal and node.reward is None)


def is_solution(node: Node) -> bool:
    """A graded terminal node: the solution block (every other valid node is a plan step)."""
    return node.terminal and node.reward is not None


def of_turns(tree: Tree) -> bool:
    """An agent's tree: its edges are turns played in an environment (some node holds an observation)."""
    return any(n.observation is not None for n in tree.nodes.values())


BASELINES = ("zero", "node")
KINDS = ("same", "any")


def step_apo_pairs(tree: Tree, *, solution_weight: float = 0.3, root_children: int = 5, children: int = 3,
                   baseline: str = "zero", kinds: str = "same", solution_pairs: bool = True) -> list[StepPair]:
    """Every Step-APO pair of ``tree`` (module docstring), nodes in creation order. ``baseline``: the Q that
    the two sides of a pair straddle, ``"zero"`` (the reference) or ``"node"`` (the node's own Q);
    ``kinds``: ``"same"`` (plan with plan, solution with solution: the reference) or ``"any"`` (also a plan
    step with a solution); ``solution_pairs=False`` leaves out the pairs of two solutions."""
    if baseline not in BASELINES or kinds not in KINDS:
        raise ValueError(f"baseline must be one of {BASELINES} and kinds one of {KINDS}, not {baseline!r}, {kinds!r}")
    turns = of_turns(tree)
    solution = (lambda c: False) if turns else is_solution
    pairs = []
    for node in tree.nodes.values():
        kids = [c for c in tree.children(node)[:root_children if node.parent is None else children] if valid(c)]
        cut = 0.0 if baseline == "zero" else node.value
        if len(kids) < 2 or not (max(c.value for c in kids) > cut > min(c.value for c in kids)):
            continue
        prefix, seen = tuple(tree.steps(node)), tuple(tree.observations(node))

        def pair(w: Node, lo: Node, weight: float = 1.0) -> StepPair:
            return StepPair(tree.id, node.id, tree.problem_id, tree.prompt, prefix, w.step, lo.step,
                            weight * w.value, weight * lo.value, solution(w), solution(lo), seen, turns)

        plans = [c for c in kids if not solution(c)]
        solutions = [c for c in kids if solution(c)]
        pairs += [pair(w, lo) for w in plans if w.value > cut for lo in plans if lo.value < cut]
        if kinds == "any":
            pairs += [pair(w, lo) for w in plans if w.value > cut for lo in solutions if lo.value < cut]
            pairs += [pair(w, lo) for w in solutions if w.value > cut for lo in plans if lo.value < cut]
        if solutions and solution_pairs:
            best = max(solutions, key=lambda c: c.value)
            worst = min(solutions, key=lambda c: c.value)
            if best.value > cut > worst.value:
                pairs.append(pair(best, worst, solution_weight))
    return pairs


def solution_paths(tree: Tree) -> list[list[Node]]:
    """The root-to-solution paths of ``tree`` (a graded solution at the end), in creation order."""
    return [tree.path(n) for n in tree.nodes.values() if is_solution(n)]


def sft_paths(tree: Tree, *, max_paths: int = 4,
              rng: random.Random | None = None) -> list[list[str]]:
    """At most ``max_paths`` right root-to-solution paths with no node of Q = −1, as their steps."""
    return [[n.step for n in p] for p in _sft_paths(tree, max_paths, rng)]


def _sft_paths(tree: Tree, max_paths: int, rng: random.Random | None) -> list[list[Node]]:
    good = [p for p in solution_paths(tree) if p[-1].reward > 0 and all(n.value != -1.0 for n in p)]
    if len(good) > max_paths:
        good = (rng or random.Random(0)).sample(good, max_paths)
    return good


def _observations(path: list[Node]) -> list[str]:
    return [n.observation for n in path if n.observation is not None]


def value_targets(tree: Tree) -> list[tuple[list[str], list[float]]]:
    """``(steps, Q of each step's node)`` for every root-to-solution path."""
    return [([n.step for n in p], [n.value for n in p]) for p in solution_paths(tree)]


def pair_records(pairs: list[StepPair], task: str = "") -> list[Trajectory]:
    """Each pair as two trajectories (chosen, then rejected): the prompt, the shared prefix and the step, the
    step's Q as ``reward``; ``meta``: ``pair`` (the pair's id), ``kind``, ``role``, ``context_steps`` (the prefix's
    length: those steps are context, not actions) and ``finished`` (a solution ends with EOS, a plan step
    does not, as in the reference)."""
    rows = []
    for k, p in enumerate(pairs):
        pair_id = f"{p.tree_id}-{p.node_id}-{k}"
        for role, step, q in (("chosen", p.chosen, p.q_chosen), ("rejected", p.rejected, p.q_rejected)):
            ends = p.ends(role == "chosen")
            rows.append(Trajectory(id=f"{pair_id}-{role}", task=task, problem_id=p.problem_id, prompt=p.prompt,
                                   steps=[*p.prefix, step], observations=list(p.observations), reward=q,
                                   correct=role == "chosen",
                                   meta={"pair": pair_id, "kind": p.kind, "role": role,
                                         "context_steps": len(p.prefix),
                                         "finished": ends}))
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
    return [Trajectory(id=f"{t.id}-q{k}", task=t.task, problem_id=t.problem_id, prompt=t.prompt,
                       steps=[n.step for n in p], observations=_observations(p), reward=p[-1].value,
                       correct=p[-1].value > 0, step_values=[n.value for n in p])
            for t in trees_of(records) for k, p in enumerate(solution_paths(t))]


def sft_rows(records: list, *, max_paths: int = 4, seed: int = 0) -> list[Trajectory]:
    """Policy SFT rows from the trees among ``records``: at most ``max_paths`` right paths per tree
    (``sft_paths``, drawn with ``seed``)."""
    rng = random.Random(seed)
    return [Trajectory(id=f"{t.id}-sft{k}", task=t.task, problem_id=t.problem_id, prompt=t.prompt,
                       steps=[n.step for n in p], observations=_observations(p), reward=1.0, correct=True,
                       meta={"source": "plan search"})
            for t in trees_of(records) for k, p in enumerate(_sft_paths(t, max_paths, rng))]
