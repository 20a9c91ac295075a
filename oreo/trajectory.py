"""The trajectory record: one sampled (or expert, or imported) response to one problem, or one episode.

``Trajectory`` is what tasks, collectors, episodes, imports and selection build, what the buffer stores
(one row each) and what the encoder reads. It validates on construction: a malformed one raises
``RecordError`` naming where it came from, its id and the field. It is frozen: build a changed copy with
``dataclasses.replace`` (which validates again).

Besides the outcome (``reward``, ``correct``) a trajectory can carry, optional and empty by default:

- per-step rewards and values (process supervision: a process reward model's labels, MCTS values);
- tree identity: the id of the search tree it was read from and, per step, the id of the node the
  step leads to and of the node it leaves, so that the paths of a search tree stored in a buffer round
  are read back as the same tree (``tree_nodes``).

This module sits at the bottom of the package: it imports nothing from ``oreo``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Iterable


class RecordError(ValueError):
    """A record is malformed. The message names where it came from, the record and the field."""

    def __init__(self, message: str, where: str = "", field: str | None = None):
        self.problem, self.where, self.field = message, where, field
        parts = [where] if where else []
        if field is not None:
            parts.append(f"field '{field}'")
        super().__init__(": ".join(parts + [message]))


@dataclass(frozen=True, kw_only=True)
class Trajectory:
    """One trajectory record (one buffer row). Lists have one entry per step where they are not empty.

    Attributes:
        id: unique within a buffer (and within an imported file); not empty.
        round: the buffer round it is stored in (``Buffer.append`` sets it); ``None`` before that.
        task: the task's name (``arithmetic``, ``gsm8k``, ``household``, ...).
        problem_id: the problem (or game) this trajectory answers; trajectories of a problem share it.
        prompt: what the model was given: plain text, or chat messages (a non-empty list of
            ``{"role": str, "content": str}``).
        steps: the actions. Single-turn tasks: the response split losslessly into reasoning steps
            (``"".join(steps)`` is the response); agents: one entry per assistant turn. May be empty.
        observations: the environment's observation after each turn (agents; the one after the last turn
            is optional); empty for single-turn tasks.
        reward: the outcome reward (finite): 1/0 for a graded answer, the environment's reward of an
            episode (the sum of its per-turn rewards, which may be fractional).
        correct: the answer is right / the episode succeeded; defaults to ``reward > 0``.
        answer: the answer extracted from the response, if any.
        meta: JSON-serialisable extras: ``finished`` (bool: the response ended with EOS; absent means
            true), the sampler settings, the source, ...
        step_rewards: the reward given for each step (process rewards; an environment's per-turn
            rewards); empty if not known.
        step_values: a value estimate for the state after each step (a value model's, an MCTS node's
            value, a process-supervision target); empty if not known.
        tree_id: the search tree this trajectory is a path of; ``None`` if it is not from a tree.
        node_ids: with ``tree_id``: the id of the tree node each step leads to (unique in the tree).
        parent_ids: with ``tree_id``: the id of the node each step leaves, so ``parent_ids[k] ==
            node_ids[k - 1]`` for ``k >= 1`` (a trajectory is one path down its tree); ``parent_ids[0]``
            is the root's id, or ``None`` when the root (the prompt) has none.
    """

    id: str
    round: int | None = None
    task: str
    problem_id: str
    prompt: str | list[dict]
    steps: list[str]
    observations: list[str] = field(default_factory=list)
    reward: float
    correct: bool | None = None
    answer: str | None = None
    meta: dict = field(default_factory=dict)
    step_rewards: list[float] = field(default_factory=list)
    step_values: list[float] = field(default_factory=list)
    tree_id: str | None = None
    node_ids: list[str] = field(default_factory=list)
    parent_ids: list[str | None] = field(default_factory=list)

    def __post_init__(self):
        where = f"id {self.id!r}" if isinstance(self.id, str) else ""

        def fail(name: str, problem: str):
            raise RecordError(problem, where, name)

        def put(name: str, value):
            object.__setattr__(self, name, value)

        for name in ("id", "task", "problem_id"):
            if not isinstance(getattr(self, name), str):
                fail(name, f"expected a str, got {type(getattr(self, name)).__name__}")
        if not self.id:
            fail("id", "must not be empty")

        rnd = self.round
        if rnd is not None and (isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0):
            fail("round", f"expected a non-negative int, got {rnd!r}")

        problem = _check_prompt(self.prompt)
        if problem:
            fail("prompt", problem)
        if not isinstance(self.prompt, str):
            put("prompt", [dict(m) for m in self.prompt])
            _check_json(self.prompt, lambda e: fail("prompt", f"not JSON-serialisable: {e}"))

        if not _is_str_list(self.steps):
            fail("steps", "expected a list of str")
        put("steps", list(self.steps))
        n_steps = len(self.steps)

        obs = [] if self.observations is None else self.observations
        if not _is_str_list(obs):
            fail("observations", "expected a list of str")
        # One observation after each turn, except possibly after the last; none for single-turn.
        if obs and not n_steps - 1 <= len(obs) <= n_steps:
            fail("observations", f"{len(obs)} observations for {n_steps} steps "
                                 f"(expected 0, {n_steps - 1} or {n_steps})")
        put("observations", list(obs))

        problem = _check_number(self.reward)
        if problem:
            fail("reward", problem)
        put("reward", float(self.reward))

        if self.correct is None:
            put("correct", self.reward > 0)
        elif not isinstance(self.correct, bool):
            fail("correct", f"expected a bool, got {type(self.correct).__name__}")

        if self.answer is not None and not isinstance(self.answer, str):
            fail("answer", f"expected a str or None, got {type(self.answer).__name__}")

        meta = {} if self.meta is None else self.meta
        if not isinstance(meta, dict):
            fail("meta", f"expected a dict, got {type(meta).__name__}")
        if not isinstance(meta.get("finished", True), bool):
            fail("meta", "'finished' must be a bool")
        _check_json(meta, lambda e: fail("meta", f"not JSON-serialisable: {e}"))
        put("meta", dict(meta))

        for name in ("step_rewards", "step_values"):
            values = [] if getattr(self, name) is None else getattr(self, name)
            if not isinstance(values, (list, tuple)):
                fail(name, f"expected a list of numbers, got {type(values).__name__}")
            for k, v in enumerate(values):
                problem = _check_number(v)
                if problem:
                    fail(name, f"step {k}: {problem}")
            if values and len(values) != n_steps:
                fail(name, f"{len(values)} values for {n_steps} steps (expected 0 or {n_steps})")
            put(name, [float(v) for v in values])

        self._check_tree(fail, put, n_steps)

    def _check_tree(self, fail, put, n_steps: int) -> None:
        node_ids = [] if self.node_ids is None else self.node_ids
        parent_ids = [] if self.parent_ids is None else self.parent_ids
        if self.tree_id is not None and not (isinstance(self.tree_id, str) and self.tree_id):
            fail("tree_id", f"expected a non-empty str or None, got {self.tree_id!r}")
        if not _is_str_list(node_ids) or not all(node_ids):
            fail("node_ids", "expected a list of non-empty str")
        if not isinstance(parent_ids, (list, tuple)) or not all(p is None or isinstance(p, str) and p
                                                                for p in parent_ids):
            fail("parent_ids", "expected a list of non-empty str or None")
        if self.tree_id is None:
            for name, ids in (("node_ids", node_ids), ("parent_ids", parent_ids)):
                if ids:
                    fail(name, "given without a 'tree_id'")
        else:
            for name, ids in (("node_ids", node_ids), ("parent_ids", parent_ids)):
                if len(ids) != n_steps:
                    fail(name, f"{len(ids)} ids for {n_steps} steps (a tree's trajectory has one per step)")
            if len(set(node_ids)) != len(node_ids):
                fail("node_ids", "a node occurs twice on one path")
            for k in range(1, n_steps):
                if parent_ids[k] != node_ids[k - 1]:
                    fail("parent_ids", f"step {k}: parent {parent_ids[k]!r} is not the node of step {k - 1} "
                                       f"({node_ids[k - 1]!r}); a trajectory is one path down its tree")
            if n_steps and parent_ids[0] in node_ids:
                fail("parent_ids", f"step 0: the root {parent_ids[0]!r} is also a node of the path")
        put("node_ids", list(node_ids))
        put("parent_ids", list(parent_ids))

    # ------------------------------------------------------------------ conversions
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, record: dict, where: str = "") -> Trajectory:
        """A trajectory from a plain record (a JSON line, an older caller's dict). Missing optional
        fields take their defaults (a record written before a field existed still reads); ``None``
        stands for the default of a list or ``meta``. Unknown fields are refused, naming them (put
        extra data in ``meta``). Errors name ``where``, the record's id and the field."""
        if isinstance(record, Trajectory):
            return record
        if not isinstance(record, dict):
            raise RecordError(f"expected a dict, got {type(record).__name__}", where)
        at = _where(where, record.get("id"))
        for name in REQUIRED_FIELDS:
            if name not in record:
                raise RecordError("missing required field", at, name)
        names = cls.field_names()
        for name in record:
            if name not in names:
                raise RecordError("unknown field (put extra data in 'meta')", at, name)
        try:
            return cls(**record)
        except RecordError as e:
            raise RecordError(e.problem, at, e.field) from None

    def to_dict(self) -> dict:
        """A plain, JSON-serialisable dict of every field (a deep copy: changing it leaves ``self`` as is)."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.field_names()}


REQUIRED_FIELDS = ("id", "task", "problem_id", "prompt", "steps", "reward")
FIELDS = Trajectory.field_names()


def tree_nodes(trajectories: Iterable[Trajectory]) -> dict[str, dict[str, tuple[str | None, str]]]:
    """The search trees the ``trajectories`` are paths of: ``{tree_id: {node_id: (parent_id, step)}}``
    (a node's step is the action that leads to it from its parent). Trajectories without a tree are
    skipped. Raises ``ValueError`` if two trajectories disagree about a node's parent or step."""
    trees: dict[str, dict[str, tuple[str | None, str]]] = {}
    for t in trajectories:
        if t.tree_id is None:
            continue
        nodes = trees.setdefault(t.tree_id, {})
        for node, parent, step in zip(t.node_ids, t.parent_ids, t.steps):
            if nodes.setdefault(node, (parent, step)) != (parent, step):
                raise ValueError(f"tree {t.tree_id!r}, node {node!r}: trajectory {t.id!r} gives parent and step "
                                 f"{(parent, step)!r}, another gave {nodes[node]!r}")
    return trees


def _where(where: str, record_id: Any) -> str:
    if not isinstance(record_id, str):
        return where
    return f"{where} (id {record_id!r})" if where else f"id {record_id!r}"


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _check_number(value: Any) -> str | None:
    """A problem description, or None if ``value`` is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return f"expected a number, got {type(value).__name__}"
    if not math.isfinite(value):
        return f"must be finite, got {value!r}"
    return None


def _check_json(value: Any, fail) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        fail(e)


def _check_prompt(prompt: Any) -> str | None:
    """Return a problem description, or None if ``prompt`` is valid text or chat messages."""
    if isinstance(prompt, str):
        return None
    if not isinstance(prompt, list) or not prompt:
        return f"expected a str or a non-empty list of messages, got {type(prompt).__name__}"
    for i, message in enumerate(prompt):
        if not isinstance(message, dict):
            return f"message {i}: expected a dict, got {type(message).__name__}"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                return f"message {i}: '{key}' must be a str"
    return None
