"""Test-time strategies behind one interface: ``Searcher(cfg, task, sampler, scorer).solve(problems, seed)``
returns one ``Choice`` per problem (the chosen response, its value, the tokens spent on it).

- ``greedy``: one greedy completion.
- ``majority``: N samples, the most frequent answer (spec §4.3's equivalence key of the task).
- ``best_of_n``: N samples, the finished one of highest value.
- ``weighted_vote``: N samples, the answer whose samples' values sum highest (ReST-MCTS*'s
  value-weighted vote); its highest-valued sample is the response.
- ``beam``: step-level beam search (spec §6.2). B beams; every beam state gets B sampled next steps;
  finished candidates join an answer pool; the B highest-valued unfinished candidates form the next
  beam; at most S steps; the answer is the highest-valued finished candidate.
- ``mcts``: MCTS* (``oreo.search.mcts.MCTSStar``, ReST-MCTS*'s tree search) with the value model, answered by the
  spec's §1.2.5 rules (``mcts.answer``): the node that reached ``mcts.end_gate``, else the highest-valued
  node, completed greedily by the policy when it is not a finished solution (the reference's separate
  summary call); or the highest-valued finished solution; or the value-weighted vote of the finished ones.

A completion cut by a token limit is never an answer, in every strategy. All candidates of one step
(over every problem of the call) are generated in one ``generate`` call and scored in one scorer
call. ``best_of_k_actions`` is the per-turn choice for agents (spec §6.3); ``plan_turns`` is MCTS* over an
agent's turns, whose chosen path an episode plays before its policy continues greedily.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from oreo.config import at_least, one_of, validate
from oreo.search.mcts import MCTSConfig, MCTSStar
from oreo.search.tree import Node, Tree
from oreo.types import Choice, Context


# ------------------------------------------------------------------ selection rules (pure)
def majority_index(keys: list) -> int | None:
    """Index of the first item whose key is the most frequent (ties to the earliest; None never wins)."""
    counts: dict = defaultdict(int)
    for k in keys:
        if k is not None:
            counts[k] += 1
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)


def best_value_index(values: list[float], eligible: list[bool]) -> int | None:
    """Index of the highest value among the eligible items (ties to the earliest)."""
    best = None
    for i, (v, ok) in enumerate(zip(values, eligible)):
        if ok and (best is None or v > values[best]):
            best = i
    return best


def weighted_vote_index(keys: list, values: list[float]) -> int | None:
    """The key whose items' values sum highest (ties to the key seen first), and of its items the
    highest-valued one; items with key None do not vote."""
    totals: dict = {}
    for k, v in zip(keys, values):
        if k is not None:
            totals[k] = totals.get(k, 0.0) + v
    if not totals:
        return None
    winner = max(totals, key=lambda k: totals[k])  # dicts keep first-seen order: ties go to the earliest
    return best_value_index(values, [k == winner for k in keys])


# ------------------------------------------------------------------ the registry
# Sample-and-choose strategies: N samples per problem (greedy: one), then a rule picks one.
# A rule maps (finished flags, answer keys, values) to the chosen index or None; keys and values
# are callables, computed only by the rules that read them (grading every sample costs time).
RULES = {
    "greedy": lambda finished, keys, values: 0 if finished[0] else None,
    "majority": lambda finished, keys, values: majority_index(keys()),
    "best_of_n": lambda finished, keys, values: best_value_index(values(), finished),
    "weighted_vote": lambda finished, keys, values: weighted_vote_index(keys(), values()),
}
STRATEGIES = (*RULES, "beam", "mcts")  # step-level searches: ``Searcher.beam``, ``Searcher.mcts``


@dataclass
class SearchConfig:
    """The test-time strategy of ``python -m oreo.evaluate`` (presets in conf/search/)."""
    strategy: str = one_of(STRATEGIES, "greedy")
    n: int = at_least(1, 8)                 # majority, best_of_n, weighted_vote: samples per problem
    width: int = at_least(1, 3)             # beam: B beams, and B samples per beam state per step (B² candidates)
    # beam: S, steps before the unfinished candidates are dropped (the reference's 20)
    max_steps: int = at_least(1, 20)
    step_max_tokens: int = at_least(1, 64)  # beam: token limit of one step (the reference: 2048 on GSM8K/MATH)
    temperature: float = at_least(0.0, 1.0)  # sampling temperature (every strategy but greedy)
    dedupe: bool = True                     # beam: identical candidates take one place (the reference keeps copies)
    problems_per_batch: int = at_least(1, 64)  # problems searched together: one block, the unit of resume
    value_batch_size: int = at_least(1, 64)    # sequences per value forward
    # mcts: the tree search's settings (budget, branching, end_gate, answer rule); its temperature is mcts.temperature
    mcts: MCTSConfig = field(default_factory=lambda: MCTSConfig(end_gate=0.9))

    def __post_init__(self):
        validate(self)

    @property
    def tag(self) -> str:
        """A name for the output folder that tells settings apart: ``beam-w5``, ``majority-n8``, ``greedy``,
        ``best_of_n-n5-t0.3`` for a sampling temperature other than 1, ``mcts-i40-b3-best_value-t0.7`` (and
        ``-g0.8`` for an end gate other than 0.9, ``-nogate`` without one)."""
        if self.strategy == "greedy":
            return "greedy"
        if self.strategy == "mcts":
            m = self.mcts
            gate = "" if m.end_gate == 0.9 else "-nogate" if m.end_gate is None else f"-g{m.end_gate:g}"
            return f"mcts-i{m.iterations}-b{m.branch}-{m.answer}-t{m.temperature:g}{gate}"
        tag = f"beam-w{self.width}" if self.strategy == "beam" else f"{self.strategy}-n{self.n}"
        return tag if self.temperature == 1.0 else f"{tag}-t{self.temperature:g}"


NEEDS_VALUE = ("best_of_n", "weighted_vote", "beam", "mcts")


# ------------------------------------------------------------------ strategies
class Searcher:
    def __init__(self, cfg: SearchConfig, task, sampler, scorer=None):
        if cfg.strategy in NEEDS_VALUE and scorer is None:
            raise ValueError(f"search.strategy={cfg.strategy} needs a value model: give a checkpoint with value/ "
                             f"(an OREO run's checkpoints/oreo)")
        self.cfg, self.task, self.sampler, self.scorer = cfg, task, sampler, scorer

    def solve(self, problems: list, seed: int = 0) -> list[Choice]:
        if self.cfg.strategy in ("beam", "mcts"):
            return getattr(self, self.cfg.strategy)(problems, seed)
        if self.cfg.strategy == "greedy":
            outs = self.sampler.generate([p.prompt for p in problems], n=1, temperature=0.0, seed=seed)
        else:
            outs = self.sampler.generate([p.prompt for p in problems], n=self.cfg.n,
                                         temperature=self.cfg.temperature, seed=seed)
        return [self.choose(p, completions) for p, completions in zip(problems, outs)]

    def _key(self, problem, completion):
        """The answer a finished completion gives, as the vote groups it; None if cut or no answer."""
        return self._answer_key(problem, completion.text) if completion.finished else None

    def _answer_key(self, problem, text: str):
        answer, _ = self.task.grade(problem, text)
        return None if answer is None else getattr(self.task, "answer_key", str)(answer)

    def values(self, problem, completions) -> list[float] | None:
        """V of each whole completion (split into steps as training split it), or None without a value model."""
        if self.scorer is None:
            return None
        return self.scorer([Context(problem.prompt, tuple(self.task.split_steps(c.text))) for c in completions])

    def choose(self, problem, completions, values: list[float] | None = None) -> Choice:
        """Apply the strategy's rule to one problem's samples (``values``: their V, if already computed)."""
        values = self.values(problem, completions) if values is None else values
        pick = RULES[self.cfg.strategy]([c.finished for c in completions],
                                        lambda: [self._key(problem, c) for c in completions], lambda: values)
        return Choice(None if pick is None else completions[pick].text,
                      None if pick is None or values is None else values[pick],
                      sum(c.n_tokens for c in completions), len(completions))

    def beam(self, problems: list, seed: int) -> list[Choice]:
        """Step-level beam search (module docstring) over all ``problems`` at once."""
        B, budget = self.cfg.width, self.sampler.max_new_tokens
        beams = [[((), 0)] for _ in problems]  # per problem: (steps taken, tokens in them)
        pools: list[list[tuple[str, float]]] = [[] for _ in problems]
        tokens, samples = [0] * len(problems), [0] * len(problems)
        for step in range(self.cfg.max_steps):
            states = [(p, steps, used) for p, beam in enumerate(beams) for steps, used in beam]
            if not states:
                break
            outs = self.sampler.generate([Context(problems[p].prompt, steps) for p, steps, _ in states], n=B,
                                         temperature=self.cfg.temperature, seed=seed * 1009 + step,
                                         stop=self.task.step_stops, max_new_tokens=self.cfg.step_max_tokens)
            candidates, seen = [], set()  # (problem, steps, tokens used, finished)
            for (p, steps, used), completions in zip(states, outs):
                for c in completions:
                    tokens[p] += c.n_tokens
                    samples[p] += 1
                    if c.truncated or used + c.n_tokens > budget:
                        continue  # cut by a limit: never an answer, never continued
                    key = (p, steps + (c.text,), c.finished)
                    if self.cfg.dedupe and key in seen:
                        continue
                    seen.add(key)
                    candidates.append((p, steps + (c.text,), used + c.n_tokens, c.finished))
            values = self.scorer([Context(problems[p].prompt, steps) for p, steps, _, _ in candidates])
            unfinished: list[list] = [[] for _ in problems]
            for (p, steps, used, done), v in zip(candidates, values):
                if done:
                    pools[p].append(("".join(steps), v))
                else:
                    unfinished[p].append((v, steps, used))
            beams = [[(steps, used) for _, steps, used in sorted(u, key=lambda x: -x[0])[:B]] for u in unfinished]
        choices = []
        for p, pool in enumerate(pools):
            pick = best_value_index([v for _, v in pool], [True] * len(pool))
            choices.append(Choice(None if pick is None else pool[pick][0], None if pick is None else pool[pick][1],
                                  tokens[p], samples[p]))
        return choices

    def mcts(self, problems: list, seed: int) -> list[Choice]:
        """MCTS* over all ``problems`` at once, each answered by ``mcts.answer`` (module docstring). The tokens
        of a problem are those of its tree's expansions and rollouts plus the completion of its answer."""
        check_test_time_style(self.cfg.mcts)
        search = MCTSStar(self.cfg.mcts, self.task, self.sampler, self.scorer)
        trees = search.search(problems, seed=seed)
        rule = self.cfg.mcts.answer
        picks = []
        for problem, tree in zip(problems, trees):
            keys = {n.id: self._answer_key(problem, "".join(tree.steps(n))) for n in tree.nodes.values()
                    if n.terminal and n.reward is not None} if rule == "weighted_vote" else None
            picks.append(mcts_answer(tree, rule, search.gated.get(tree.id), keys))
        todo = [i for i, node in enumerate(picks) if node is not None and not node.terminal]
        outs = self.sampler.generate([search.expansion.sample_context(trees[i], picks[i]) for i in todo],
                                     n=1, temperature=0.0, seed=seed) if todo else []
        completions = {i: c for i, (c,) in zip(todo, outs)}
        choices = []
        for i, (tree, node) in enumerate(zip(trees, picks)):
            tokens, samples = search.tokens[tree.id], search.samples[tree.id]
            response = None if node is None else "".join(tree.steps(node))
            if i in completions:
                c = completions[i]
                tokens, samples = tokens + c.n_tokens, samples + 1
                response = response + c.text if c.finished else None   # cut by the token limit: no answer
            choices.append(Choice(response, None if node is None else node.value, tokens, samples))
        return choices


def best_of_k_actions(sampler, scorer, contexts: list[Context], *, k: int, temperature: float = 1.0, seed: int = 0,
                      stop: list[str] | None = None) -> list[Choice]:
    """The next action for each agent context (spec §6.3): ``k`` sampled actions, the one of highest value
    executed; ``k == 1`` is the greedy action. A cut action is chosen only when every sample was cut."""
    if k == 1:
        outs = sampler.generate(contexts, n=1, temperature=0.0, seed=seed, stop=stop)
        return [Choice(c.text, None, c.n_tokens, 1, c.truncated) for (c,) in outs]
    outs = sampler.generate(contexts, n=k, temperature=temperature, seed=seed, stop=stop)
    flat = [Context(ctx.prompt, tuple(ctx.steps) + (c.text,), ctx.observations) for ctx, cs in zip(contexts, outs)
            for c in cs]
    values = scorer(flat)
    choices = []
    for i, completions in enumerate(outs):
        vs = values[i * k:(i + 1) * k]
        whole = [not c.truncated for c in completions]
        pick = best_value_index(vs, whole if any(whole) else [True] * k)
        choices.append(Choice(completions[pick].text, vs[pick], sum(c.n_tokens for c in completions), k,
                              completions[pick].truncated))
    return choices


def check_test_time_style(cfg) -> None:
    """Test-time MCTS* (``MCTSStar``) ranks by the value model alone; CPL's plan search (``PlanSearch``, style
    alphazero) grades finished children (data only)."""
    if cfg.style != "rest":
        raise ValueError("search.mcts.style=alphazero values finished solutions by the grader (CPL's data "
                         "collection): at test time it would read the gold answer; use style=rest")


def plan_turns(cfg, task, sampler, scorer, games: list, *, seed: int = 0) -> list[tuple[list[str], int]]:
    """MCTS* (``cfg``: an ``MCTSConfig``) over the turns of each agent game from its start, in an environment
    replayed from the path's actions (a simulator the agent plans in); per game, the turns of the node the
    ``best_value`` rule picks by the value model (a turn without an action is never planned: the path stops
    before it) and the tokens the search spent. The episode plays those turns, then its policy continues
    (``oreo.evaluate.agent_plan``). ``best_leaf`` is refused: a household game ends before its step limit only
    when it is won, so choosing among ended episodes would read the outcome."""
    check_test_time_style(cfg)
    if cfg.answer != "best_value":
        raise ValueError(f"search.mcts.answer={cfg.answer} for agents: only best_value ranks by the value alone "
                         f"(an ended episode tells its outcome; there are no final answers to vote on)")
    from oreo.tasks.agent import parse_action

    search = MCTSStar(cfg, task, sampler, scorer)
    trees = search.search(games, seed=seed)
    plans = []
    for tree in trees:
        node = mcts_answer(tree, cfg.answer, search.gated.get(tree.id))
        turns = [] if node is None else list(tree.steps(node))
        while turns and parse_action(turns[-1]) is None:
            turns.pop()
        plans.append((turns, search.tokens[tree.id]))
    return plans


def mcts_answer(tree: Tree, rule: str, gated: Node | None = None, keys: dict[str, object] | None = None) -> Node | None:
    """The node whose solution answers a searched ``tree`` (spec §1.2.5), or None if there is none.

    ``best_value``: ``gated`` (the node that reached the end gate) if given, else the highest-valued node that
    is a finished solution or can still be continued (dead ends are never answers); ``best_leaf``: the
    highest-valued finished solution; ``weighted_vote``: of the finished solutions, grouped by ``keys`` (node
    id → answer key, None: no answer), the group whose values sum highest, and its highest-valued node.
    Ties go to the earliest node."""
    nodes = [n for n in tree.nodes.values() if n.parent is not None]
    finished = [n.terminal and n.reward is not None for n in nodes]
    if rule == "best_value":
        if gated is not None and (gated.reward is not None or not gated.terminal):
            return gated
        pick = best_value_index([n.value for n in nodes], [f or not n.terminal for n, f in zip(nodes, finished)])
    elif rule == "best_leaf":
        pick = best_value_index([n.value for n in nodes], finished)
    elif rule == "weighted_vote":
        keys = keys or {}
        pick = weighted_vote_index([keys.get(n.id) if f else None for n, f in zip(nodes, finished)],
                                   [n.value for n in nodes])
    else:
        raise ValueError(f"mcts.answer must be best_value, best_leaf or weighted_vote, got {rule!r}")
    return None if pick is None else nodes[pick]
