"""Tree search over reasoning steps, batched across problems: ReST-MCTS*'s MCTS* and CPL's plan search, two
algorithms over the shared tree (``oreo.search.tree``).

- ``MCTSStar`` (ReST-MCTS*, spec §1.2): UCT, every new child scored by the value model at once, visit-weighted
  backup, value-guided rollouts, an end gate (evaluation). It builds the trees the process value model and the
  policy of ``python -m oreo.rest_mcts`` learn from, and is ``search=mcts`` at test time.
- ``PlanSearch`` (CPL, spec §2.2): PUCT over the policy's step priors, the selected leaf scored, terminal children
  valued ±1, running-mean backup; no rollout, no end gate. It builds CPL's Step-APO pairs and value targets.

What they share lives in ``TreeSearch``: one tree per problem, grown by the task's expansion (``StepExpansion``,
``PlanExpansion``, ``TurnExpansion``), every problem's selected leaf of an iteration expanded in one sampler call
(and, with a ``prior``, the new children's step priors read in one call), the value model's scores clipped to the
search's range, and the tokens and completions each tree cost. ``make_search`` picks the class by
``MCTSConfig.style`` (``mcts.style`` in the run's config: ``rest`` or ``alphazero``).

A leaf that cannot be expanded (every sample cut by the token limit, or ``max_depth`` reached) becomes a
dead end: terminal, with no grade.

The reference's three default sets disagree (spec §1.2.6); the defaults here are its data-generation set
for GSM8K (``generate_both_samples_GSM.py``: 40 iterations, b = 3, c = 0.5, bonus 0.9, one rollout step,
α = 0.5, temperature 0.7), because in oreo MCTS* first of all builds the trees the process value model
and the policy learn from; evaluation uses the same budget unless told otherwise.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from oreo.config import ConfigError, at_least, between, one_of, validate
from oreo.rollout.collector import collect_in_chunks
from oreo.search.tree import Node, Tree, backup, backup_mean, select_child
from oreo.types import Context


@dataclass
class MCTSConfig:
    """The ``mcts`` section: the search's settings. ``style`` picks the algorithm (``make_search``); the fields
    marked "rest only" or "alphazero ignores" are read by MCTS* alone (``MCTSStar``), ``answer`` by test-time
    search alone. The keys stay one flat section, as run directories record it."""
    iterations: int = at_least(1, 40)      # the budget: rounds of select-expand-(score-rollout)-backup per problem
    branch: int = at_least(1, 3)           # b: sampled next steps per expansion
    selection: str = one_of(("uct", "puct"), "uct")   # CPL: puct (over the step priors)
    c: float = at_least(0.0, 0.5)          # exploration constant
    unvisited_bonus: float = 0.9           # UCT only: added to an unvisited child's value (the reference's "INF")
    # rest only (alphazero ignores them, as does MCTS* over agents' turns): greedy value-guided rollout depth (0:
    # none), samples per rollout step, and the weight of the rollout's best value in the rolled node's value
    rollout_steps: int = at_least(0, 1)
    rollout_branch: int = at_least(1, 1)
    alpha: float = between(0.0, 1.0, 0.5)
    temperature: float = at_least(0.0, 0.7)
    max_depth: int = at_least(1, 20)       # steps before a partial solution becomes a dead end
    step_max_tokens: int = at_least(1, 64)  # token limit of one step
    # rest only: stop a problem at the first node with V >= end_gate (None: whole budget); alphazero refuses one
    end_gate: float | None = None
    # search=mcts (test time, rest only), the answer (spec §1.2.5): best_value: the node that reached end_gate, else
    # the highest-V node (unfinished: completed greedily); best_leaf: the highest-V finished solution;
    # weighted_vote: the answer whose finished solutions' values sum highest
    answer: str = one_of(("best_value", "best_leaf", "weighted_vote"), "best_value")
    # the algorithm: rest: MCTS* (``MCTSStar``: ReST-MCTS*, spec §1.2); alphazero: CPL's plan search
    # (``PlanSearch``, spec §2.2)
    style: str = one_of(("rest", "alphazero"), "rest")
    root_branch: int | None = at_least(1, None)   # children of a root's first expansion (CPL: 5); null: branch

    def __post_init__(self):
        validate(self)
        # rollouts are not refused the same way: rollout_steps defaults to 1, which every alphazero config that
        # leaves it out carries (and alphazero has always ignored)
        if self.style == "alphazero" and self.end_gate is not None:
            raise ConfigError("end_gate", f"style=alphazero (CPL's plan search, for data collection) runs its whole "
                                          f"budget and has no end gate, got {self.end_gate}: leave it null (the end "
                                          f"gate is MCTS*'s, style=rest)")


@dataclass
class SearchStats:
    nodes: int = 0            # nodes added to the trees
    tokens: int = 0           # tokens generated (expansions and rollouts)
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "nodes_per_s": self.nodes / max(self.wall_s, 1e-9),
                "tokens_per_s": self.tokens / max(self.wall_s, 1e-9)}


class StepExpansion:
    """Single-turn tasks: an edge is a step (it ends at the task's step separator); a sample that ends with EOS
    is a finished solution, graded by the task's grader."""

    def __init__(self, task, max_depth: int):
        self.task, self.max_depth, self.stops = task, max_depth, task.step_stops

    def root(self, problem) -> tuple[str, object]:
        return str(problem.id), problem.prompt

    def sample_context(self, tree: Tree, node: Node) -> Context:
        return Context(tree.prompt, tuple(tree.steps(node)))

    value_context = sample_context

    def grow(self, problem, tree: Tree, leaf: Node, c) -> Node | None:
        """The new child of ``leaf`` for completion ``c``, or None (cut, empty, or a step it already has)."""
        if c.truncated or not c.text.strip() and not c.finished:
            return None   # cut by the token limit (or empty): never a step
        child, fresh = tree.add(leaf, c.text)
        if not fresh:
            return None
        if c.finished:
            child.terminal = True
            child.reward = float(self.task.grade(problem, "".join(tree.steps(child)))[1])
        elif child.depth >= self.max_depth:
            child.terminal = True  # a dead end: too deep, no grade
        return child


class TurnExpansion:
    """Agent tasks (``oreo.types.AgentTask``): an edge is a turn (it ends with the end-of-turn token). Its action
    is played in an environment *replayed* from the game's start through the path's actions (the environments are
    deterministic, so a node needs no copy of one), and the child keeps the observation. A turn without an action
    ends the episode, lost; a game the environment ends is terminal with reward 1 if won, else 0. V of a child is
    read at its turn's last token, before its observation, as ``best_of_k_actions`` reads it."""

    stops = None

    def __init__(self, task, max_depth: int):
        self.task, self.max_depth = task, max_depth

    def root(self, game) -> tuple[str, object]:
        env = self.task.make_env()
        try:
            return str(game.id), self.task.prompt(game, env.reset(game))
        finally:
            env.close()

    def sample_context(self, tree: Tree, node: Node) -> Context:
        return Context(tree.prompt, tuple(tree.steps(node)), tuple(tree.observations(node)))

    def value_context(self, tree: Tree, node: Node) -> Context:
        before = tree.observations(tree.nodes[node.parent]) if node.parent is not None else []   # the root: none
        return Context(tree.prompt, tuple(tree.steps(node)), tuple(before))

    def grow(self, game, tree: Tree, leaf: Node, c) -> Node | None:
        from oreo.tasks.agent import format_observation, parse_action

        if c.truncated:
            return None
        child, fresh = tree.add(leaf, c.text)
        if not fresh:
            return None
        action = parse_action(c.text)
        if action is None:
            child.terminal, child.reward = True, 0.0   # no action: the episode ends, lost
            return child
        env = self.task.make_env()
        try:
            env.reset(game)
            for turn in tree.steps(leaf):
                env.step(parse_action(turn))
            observation, _, done, info = env.step(action)
        finally:
            env.close()
        child.observation = format_observation(observation)
        if done:
            child.terminal, child.reward = True, float(bool(info["won"]))
        elif child.depth >= self.max_depth:
            child.terminal = True
        return child


class PlanExpansion(StepExpansion):
    """Plan-then-solve formats (CPL, spec §2.1): an edge is a plan step, or the whole solution as a terminal
    child graded by the task (``task.step_kind`` tells them apart). A format failure, a sample cut by the token
    limit and any child deeper than ``max_depth`` (the reference's "too many steps": at 6, five plan steps and
    the solution) are terminal children with no grade: invalid ones."""

    def grow(self, problem, tree: Tree, leaf: Node, c) -> Node | None:
        if not c.text.strip():
            return None
        child, fresh = tree.add(leaf, c.text)
        if not fresh:
            return None
        kind = "invalid" if c.truncated or child.depth > self.max_depth else self.task.step_kind(c.text)
        if kind == "solution":
            child.terminal = True
            child.reward = float(self.task.grade(problem, "".join(tree.steps(child)))[1])
        elif kind != "plan":
            child.terminal = True   # invalid: no grade
        return child


def expansion_for(task, max_depth: int):
    """How a task's trees grow: by turns played in its environment (agents), by plan steps and a solution (a
    task in a plan format) or by sampled steps."""
    if getattr(task, "kind", "") == "agent":
        return TurnExpansion(task, max_depth)
    return (PlanExpansion if getattr(task, "plan_format", False) else StepExpansion)(task, max_depth)


class TreeSearch:
    """What MCTS* and CPL's plan search share, over a ``task`` (step separators and grader, or games and their
    environment), a ``sampler``, a value ``scorer`` and optionally a step ``prior`` (PUCT's): one tree per problem,
    grown by the task's expansion; each iteration of the subclass's algorithm (``_iteration``) runs in every
    problem's tree at once, every selected leaf expanded in one sampler call; the tokens and completions each tree
    cost (``tokens``, ``samples``) and the search's ``stats``. ``cfg.style`` is not read here: ``make_search``
    picks the subclass by it."""

    value_range: tuple[float, float]   # where the value model's scores are clipped

    def __init__(self, cfg: MCTSConfig, task, sampler, scorer, prior=None):
        self.cfg, self.task, self.sampler, self.scorer, self.prior = cfg, task, sampler, scorer, prior
        self.expansion = expansion_for(task, cfg.max_depth)
        self.stats = SearchStats()
        self.tokens: dict[str, int] = {}      # tree id → tokens generated for it
        self.samples: dict[str, int] = {}     # tree id → completions generated for it

    def search(self, problems: list, seed: int = 0, prefix: str = "") -> list[Tree]:
        """One tree per problem (its id: ``prefix`` + the problem's), searched for ``cfg.iterations``
        iterations, or until the algorithm finishes every problem."""
        start = time.perf_counter()
        rng = random.Random(seed)
        trees = [Tree(f"{prefix}{pid}", pid, prompt, getattr(self.task, "name", ""))
                 for pid, prompt in map(self.expansion.root, problems)]
        for t in trees:
            self.tokens.setdefault(t.id, 0)
            self.samples.setdefault(t.id, 0)
        done = [False] * len(trees)
        for it in range(self.cfg.iterations):
            active = [i for i, d in enumerate(done) if not d]
            if not active:
                break
            self._iteration(problems, trees, active, done, rng, seed, it)
        self.stats.wall_s += time.perf_counter() - start
        return trees

    def _iteration(self, problems: list, trees: list[Tree], active: list[int], done: list[bool],
                   rng: random.Random, seed: int, it: int) -> None:
        """Iteration ``it`` of the search seeded ``seed`` in the trees ``active`` lists; sets ``done[i]`` for a
        problem whose search is over."""
        raise NotImplementedError

    def _best_child(self, tree: Tree, node: Node, rng: random.Random, skip=None) -> Node:
        """``select_child`` under the configured rule, exploration constant and unvisited bonus."""
        return select_child(tree, node, rng, rule=self.cfg.selection, c=self.cfg.c,
                            unvisited_bonus=self.cfg.unvisited_bonus, skip=skip)

    def _expand(self, items: dict[int, tuple], seed: int) -> dict[int, list[Node]]:
        """Expand the leaf of each ``{i: (problem, tree, leaf)}`` in one sampler call (two when some roots take
        ``root_branch`` children) and give the new children their priors (with a ``prior``, in one call);
        returns them per ``i``. Their values are the algorithm's to set."""
        if not items:
            return {}
        first = self.cfg.root_branch or self.cfg.branch   # a root's first expansion may take more children
        widths = {k: first if leaf.parent is None and not leaf.children else self.cfg.branch
                  for k, (_, _, leaf) in items.items()}
        outs = {}
        for width in sorted(set(widths.values())):
            group = [k for k in items if widths[k] == width]
            generated = self.sampler.generate([self.expansion.sample_context(items[k][1], items[k][2]) for k in group],
                                              n=width, temperature=self.cfg.temperature,
                                              seed=seed if width == self.cfg.branch else seed + 1,
                                              stop=self.expansion.stops, max_new_tokens=self.cfg.step_max_tokens)
            outs.update(zip(group, generated))
        new: dict[int, list[Node]] = {}
        for k, (problem, tree, leaf) in items.items():
            completions = outs[k]
            self._spent(tree, sum(c.n_tokens for c in completions), len(completions))
            for c in completions:
                child = self.expansion.grow(problem, tree, leaf, c)
                if child is not None:
                    self.stats.nodes += 1
                    new.setdefault(k, []).append(child)
            if not leaf.children:
                leaf.terminal = True  # nothing usable came out: a dead end
        flat = _new_nodes(items, new)
        if self.prior is not None and flat:
            for (_, child), p in zip(flat, self.prior([self.expansion.sample_context(t, n) for t, n in flat])):
                child.prior = float(p)
        return new

    def _spent(self, tree: Tree, n_tokens: int, n_samples: int) -> None:
        """Count ``n_samples`` completions of ``n_tokens`` tokens in all generated for ``tree``."""
        self.stats.tokens += n_tokens
        self.tokens[tree.id] += n_tokens
        self.samples[tree.id] += n_samples

    def _scores(self, contexts: list[Context]) -> list[float]:
        """The value model's scores, clipped to ``value_range``."""
        low, high = self.value_range
        return [min(high, max(low, float(v))) for v in self.scorer(contexts)] if contexts else []


class MCTSStar(TreeSearch):
    """MCTS* (ReST-MCTS*, spec §1.2). Each iteration, in every problem's tree at once:

    1. **select** a leaf: from the root, the best child (UCT with the unvisited bonus, or PUCT) while the
       node has children;
    2. **expand** it by ``branch`` sampled next steps (a step ends at the task's step separator; a sample
       that ends with EOS is a finished solution: a terminal child, graded by the task's grader). All the
       selected leaves of all problems are expanded in one sampler call;
    3. **score** every new child with the value model, in one call, clipped to [0, 1];
    4. optionally **roll out** greedily from the best new child for ``rollout_steps`` steps (``rollout_branch``
       samples a step, the highest-valued kept, nothing added to the tree) and mix the rollout's best
       value in: V ← (1 − α)·V + α·v_max;
    5. **back up**: one more visit on the path, each node's value the visit-weighted mean of its children's.

    With ``end_gate`` set (evaluation), a problem's search stops at the first new node whose value reaches it
    (``gated``), as in the reference's evaluation mode. Agents' trees take no rollout (``rollout_steps`` is
    ignored): a rollout would have to play its turns too."""

    value_range = (0.0, 1.0)   # as the reference clips

    def __init__(self, cfg: MCTSConfig, task, sampler, scorer, prior=None):
        super().__init__(cfg, task, sampler, scorer, prior)
        self.gated: dict[str, Node] = {}      # tree id → the first node whose value reached end_gate

    def _iteration(self, problems, trees, active, done, rng, seed, it) -> None:
        leaves = {i: self._select(trees[i], rng) for i in active}
        todo = [i for i in active if not leaves[i].terminal]
        items = {i: (problems[i], trees[i], leaves[i]) for i in todo}
        new = self._expand(items, _seed(seed, it, 0))
        flat = _new_nodes(items, new)
        for (_, child), v in zip(flat, self._scores([self.expansion.value_context(t, n) for t, n in flat])):
            child.value = v
        for i in active:
            gate = self.cfg.end_gate
            passed = [k for k in new.get(i, []) if gate is not None and k.value >= gate]
            if passed:
                self.gated[trees[i].id] = max(passed, key=lambda k: k.value)
                done[i] = True
        if self.cfg.rollout_steps and isinstance(self.expansion, StepExpansion):
            self._rollout([(problems[i], trees[i], leaves[i]) for i in todo if new.get(i)], rng, _seed(seed, it, 1))
        for i in active:
            backup(trees[i], leaves[i])

    def _select(self, tree: Tree, rng: random.Random) -> Node:
        node = tree.root
        while node.children:
            node = self._best_child(tree, node, rng)
        return node

    def _rollout(self, items: list, rng: random.Random, seed: int) -> None:
        """From the best new child of each expanded leaf, ``rollout_steps`` greedy value-guided steps."""
        starts = []
        for problem, tree, leaf in items:
            node = self._best_child(tree, leaf, rng)
            if not node.terminal:
                starts.append((problem, tree, node, tuple(tree.steps(node))))
        best = {id(node): 0.0 for _, _, node, _ in starts}
        current = list(starts)
        for r in range(self.cfg.rollout_steps):
            if not current:
                break
            outs = self.sampler.generate([Context(p.prompt, steps) for p, _, _, steps in current],
                                         n=self.cfg.rollout_branch, temperature=self.cfg.temperature,
                                         seed=_seed(seed, r, 2), stop=self.task.step_stops,
                                         max_new_tokens=self.cfg.step_max_tokens)
            for (_, tree, _, _), cs in zip(current, outs):
                self._spent(tree, sum(c.n_tokens for c in cs), len(cs))
            scored = [(i, steps + (c.text,), c) for i, ((_, _, _, steps), cs) in enumerate(zip(current, outs))
                      for c in cs if not c.truncated]
            values = self._scores([Context(current[i][0].prompt, steps) for i, steps, _ in scored])
            keep = {}
            for (i, steps, c), v in zip(scored, values):
                node = current[i][2]
                best[id(node)] = max(best[id(node)], v)
                if i not in keep or v > keep[i][0]:
                    keep[i] = (v, steps, c.finished)
            current = [(current[i][0], current[i][1], current[i][2], steps)
                       for i, (_, steps, finished) in sorted(keep.items()) if not finished]
        for _, _, node, _ in starts:
            node.value = (1 - self.cfg.alpha) * node.value + self.cfg.alpha * best[id(node)]
            node.visits += 1


class PlanSearch(TreeSearch):
    """CPL's plan search (spec §2.2), AlphaZero style. Each iteration, in every problem's tree at once: **select**
    a leaf by PUCT over the policy's step priors (``prior``: the mean token log-prob of a step,
    ``oreo.search.value.StepPrior``), never entering a terminal child or a node with nothing left to search (a
    tree with nothing left is finished); **score** it with the value model, clipped to [-1, 1]; **expand** it
    (terminal children valued +1 right, -1 wrong or invalid, each backed up at once); **back up** its value.
    Every backup is a running mean (Q = value_sum / N). No rollout (``rollout_steps`` is ignored) and no end gate.

    Tasks in a plan format grow by ``PlanExpansion``: plan steps, then one solution as a terminal child. Agents
    grow by turns as in MCTS* (``TurnExpansion``), each turn a plan step: the game's end is the terminal child,
    +1 won and -1 lost."""

    value_range = (-1.0, 1.0)

    def _iteration(self, problems, trees, active, done, rng, seed, it) -> None:
        leaves = {}
        for i in active:
            leaf = self._select(trees[i], rng)
            if leaf is None:
                done[i] = True
            else:
                leaves[i] = leaf
        keys = list(leaves)
        values = self._scores([self.expansion.value_context(trees[i], leaves[i]) for i in keys])
        new = self._expand({i: (problems[i], trees[i], leaves[i]) for i in keys}, _seed(seed, it, 0))
        for kids in new.values():   # only terminal children get a value now: their reward, ±1
            for child in kids:
                child.value = 1.0 if child.terminal and child.reward else -1.0 if child.terminal else 0.0
        for i, v in zip(keys, values):
            for child in new.get(i, []):
                if child.terminal:
                    backup_mean(trees[i], child, child.value)
            backup_mean(trees[i], leaves[i], v)

    def _select(self, tree: Tree, rng: random.Random) -> Node | None:
        """From the root, the best child among those with something left to search (not terminal, and a leaf or
        with such a child of its own), down to a leaf; None if no such path is left. A node whose children are
        all terminal is skipped, not marked terminal: it stays a valid plan step."""
        memo: dict[str, bool] = {}

        def searchable(node: Node) -> bool:
            if node.id not in memo:
                memo[node.id] = not node.terminal and (not node.children or
                                                       any(searchable(k) for k in tree.children(node)))
            return memo[node.id]

        if not searchable(tree.root):
            return None
        node = tree.root
        while node.children:
            node = self._best_child(tree, node, rng, skip=lambda k: not searchable(k))
        return node


SEARCHES = {"rest": MCTSStar, "alphazero": PlanSearch}   # mcts.style → the algorithm


def make_search(cfg: MCTSConfig, task, sampler, scorer, prior=None) -> TreeSearch:
    """The search ``cfg.style`` names: ``MCTSStar`` (rest) or ``PlanSearch`` (alphazero)."""
    return SEARCHES[cfg.style](cfg, task, sampler, scorer, prior=prior)


MCTS = make_search   # the name the tests and older callers use: ``MCTS(cfg, ...)`` is the search cfg.style names


def _new_nodes(items: dict[int, tuple], new: dict[int, list[Node]]) -> list[tuple[Tree, Node]]:
    """The ``(tree, child)`` of every child ``_expand`` added, in the order it added them."""
    return [(items[k][1], child) for k, kids in new.items() for child in kids]


def _seed(seed: int, step: int, phase: int) -> int:
    """A sampler seed per (search seed, iteration or rollout step, phase), kept small: samplers multiply it."""
    return (seed * 1_000_003 + step * 3 + phase) % 2**31


def collect_trees(task, problems, sampler, scorer, buffer, cfg: MCTSConfig, *, seed: int, round: int | None = None,
                  problems_per_chunk: int = 64, meta: dict | None = None, prior=None) -> dict:
    """The search ``cfg.style`` names (MCTS*, or CPL's plan search; ``prior``: the step priors PUCT reads) on every
    problem, its trees written as one buffer round (one row per root-to-leaf path).

    Resumable and shared out between ranks like sampling (``oreo.rollout.collector.collect_in_chunks``):
    each chunk of problems is searched with a seed of its own and appended to a partial file, so a killed
    collection resumes with exactly the trees an uninterrupted one would have. Returns the collection's
    statistics plus the search's nodes/s and tokens/s."""
    round_ = buffer.next_round() if round is None else round
    stats = SearchStats()

    def produce(chunk, chunk_seed, bar):
        mcts = make_search(cfg, task, sampler, scorer, prior=prior)
        trees = mcts.search(chunk, seed=chunk_seed, prefix=f"r{round_}-")
        for key in ("nodes", "tokens", "wall_s"):
            setattr(stats, key, getattr(stats, key) + getattr(mcts.stats, key))
        bar.update(len(chunk))
        settings = {"search": "mcts", "seed": chunk_seed, **(meta or {})}
        return [row for tree in trees for row in tree.to_trajectories(meta=settings)], mcts.stats.tokens

    info = collect_in_chunks(buffer, problems, produce, n=1, seed=seed, round=round_,
                             problems_per_chunk=problems_per_chunk, unit="tree")
    return {**info, **{k: v for k, v in stats.as_dict().items() if k != "tokens"}}

