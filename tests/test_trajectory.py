"""Tests for the trajectory record (oreo/trajectory.py): validation, conversions, buffer round trips."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from datasets import Dataset, Features, List, Value

from oreo.buffer import Buffer, import_jsonl
from oreo.trajectory import RecordError, Trajectory, tree_nodes

CHAT = [{"role": "user", "content": "Task."}, {"role": "assistant", "content": "OK"}]


def make(**kw) -> Trajectory:
    fields = dict(id="t1", task="arith", problem_id="p1", prompt="2+2?", steps=["2+2=4\n", "#### 4"], reward=1.0)
    return Trajectory(**{**fields, **kw})


def full(id="full") -> Trajectory:
    """Every field set, the new ones included."""
    return Trajectory(id=id, round=None, task="tree", problem_id="p1", prompt=CHAT, steps=["a", "b", "c"],
                      observations=["o1", "o2"], reward=0.75, correct=False, answer="4",
                      meta={"finished": True, "nested": {"k": [1, 2]}}, step_rewards=[0.0, 0.25, 0.5],
                      step_values=[0.1, -0.2, 0.3], tree_id="tree-0", node_ids=["0.1", "0.1.0", "0.1.0.2"],
                      parent_ids=["0", "0.1", "0.1.0"])


# ------------------------------------------------------------------------- construction

@pytest.mark.parametrize("bad, field, problem", [
    ({"id": ""}, "id", "empty"),
    ({"id": 3}, "id", "str"),
    ({"task": None}, "task", "str"),
    ({"round": -1}, "round", "non-negative"),
    ({"round": True}, "round", "non-negative"),
    ({"prompt": []}, "prompt", "non-empty list"),
    ({"prompt": [{"role": "user", "content": 3}]}, "prompt", "'content' must be a str"),
    ({"steps": "2+2=4"}, "steps", "list of str"),
    ({"observations": ["a", "b", "c"]}, "observations", "3 observations for 2 steps"),
    ({"reward": float("inf")}, "reward", "finite"),
    ({"reward": None}, "reward", "number"),
    ({"correct": "yes"}, "correct", "bool"),
    ({"answer": 4}, "answer", "str or None"),
    ({"meta": []}, "meta", "dict"),
    ({"meta": {"finished": 1}}, "meta", "finished"),
    ({"step_rewards": [1.0]}, "step_rewards", "1 values for 2 steps"),
    ({"step_rewards": [1.0, "x"]}, "step_rewards", "step 1: expected a number"),
    ({"step_values": [float("nan"), 0.0]}, "step_values", "step 0: must be finite"),
    ({"step_values": 0.5}, "step_values", "list of numbers"),
    ({"tree_id": ""}, "tree_id", "non-empty str"),
    ({"node_ids": ["a", "b"], "parent_ids": [None, "a"]}, "node_ids", "without a 'tree_id'"),
    ({"tree_id": "t", "node_ids": ["a"], "parent_ids": [None]}, "node_ids", "1 ids for 2 steps"),
    ({"tree_id": "t", "node_ids": ["a", "b"], "parent_ids": [None]}, "parent_ids", "1 ids for 2 steps"),
    ({"tree_id": "t", "node_ids": ["a", 2], "parent_ids": [None, "a"]}, "node_ids", "non-empty str"),
    ({"tree_id": "t", "node_ids": ["a", "a"], "parent_ids": [None, "a"]}, "node_ids", "twice"),
    ({"tree_id": "t", "node_ids": ["a", "b"], "parent_ids": [None, "x"]}, "parent_ids", "one path"),
    ({"tree_id": "t", "node_ids": ["a", "b"], "parent_ids": ["b", "a"]}, "parent_ids", "root"),
])
def test_construction_error_names_the_field(bad, field, problem):
    with pytest.raises(RecordError) as err:
        make(**bad)
    assert err.value.field == field and f"field '{field}'" in str(err.value) and problem in str(err.value)
    # the same through from_dict names where the record came from and its id
    record = {**make().to_dict(), **bad}
    with pytest.raises(RecordError) as err:
        Trajectory.from_dict(record, where="data.jsonl:7")
    assert err.value.field == field and problem in str(err.value)
    named = f" (id {record['id']!r})" if isinstance(record["id"], str) else ""
    assert str(err.value).startswith(f"data.jsonl:7{named}: field '{field}': ")


def test_from_dict_refuses_unknown_and_missing_fields():
    with pytest.raises(RecordError, match=r"f:1 \(id 't1'\): field 'success': unknown field"):
        Trajectory.from_dict({**make().to_dict(), "success": True}, where="f:1")
    record = make().to_dict()
    del record["steps"]
    with pytest.raises(RecordError, match=r"field 'steps': missing required field"):
        Trajectory.from_dict(record)
    with pytest.raises(RecordError, match="expected a dict"):
        Trajectory.from_dict(["t1"])


def test_defaults_and_normalisation():
    t = make(reward=0, correct=None, meta=None, observations=None)
    assert (t.reward, type(t.reward), t.correct, t.meta, t.observations) == (0.0, float, False, {}, [])
    assert (t.step_rewards, t.step_values, t.tree_id, t.node_ids, t.parent_ids, t.round) == ([], [], None, [], [], None)
    assert make(reward=0.5).correct is True  # correct defaults to reward > 0
    assert make(step_rewards=[0, 1]).step_rewards == [0.0, 1.0]
    with pytest.raises(TypeError):
        Trajectory("t1", "arith")  # keyword-only: no field can be passed by position by mistake


def test_frozen_and_copies_its_inputs():
    steps = ["a", "b"]
    t = make(steps=steps)
    steps.append("c")
    assert t.steps == ["a", "b"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.reward = 0.0
    with pytest.raises(RecordError, match="'reward'"):
        dataclasses.replace(t, reward="high")  # a changed copy is validated again


def test_to_dict_from_dict_round_trip():
    t = full()
    d = t.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(Trajectory)]
    assert Trajectory.from_dict(d) == t
    assert Trajectory.from_dict(json.loads(json.dumps(d))) == t  # through JSON too
    d["meta"]["nested"]["k"].append(3)
    d["steps"].append("d")
    assert t.meta["nested"]["k"] == [1, 2] and t.steps == ["a", "b", "c"]  # to_dict is a copy
    assert Trajectory.from_dict(t) is t


def test_a_record_without_the_new_fields_reads_with_them_empty():
    old = {"id": "o", "round": 2, "task": "t", "problem_id": "p", "prompt": "q", "steps": ["s"], "observations": [],
           "reward": 1.0, "correct": True, "answer": None, "meta": {"finished": True}}
    t = Trajectory.from_dict(old)
    assert t.to_dict() == {**old, "step_rewards": [], "step_values": [], "tree_id": None, "node_ids": [],
                           "parent_ids": []}


# ------------------------------------------------------------------------- buffer

def test_buffer_round_trip_of_every_field(tmp_path):
    t = full()
    buf = Buffer(tmp_path)
    buf.append([t])
    (loaded,) = Buffer(tmp_path).load()
    assert loaded == dataclasses.replace(t, round=0) and loaded.to_dict() == {**t.to_dict(), "round": 0}
    buf.export_jsonl(tmp_path / "out.jsonl")
    assert import_jsonl(tmp_path / "out.jsonl") == [loaded]


def tree_paths() -> tuple[list[Trajectory], dict]:
    """A small search tree (root "r") stored as its root-to-leaf paths, and its nodes."""
    nodes = {"a": ("r", "x=1\n"), "b": ("r", "x=2\n"), "a1": ("a", "y=3\n"), "a2": ("a", "y=4\n"),
             "a1z": ("a1", "#### 4")}
    leaves = {"b": 0.0, "a2": 0.0, "a1z": 1.0}

    def path(node):
        out = []
        while node != "r":
            out.append(node)
            node = nodes[node][0]
        return out[::-1]

    trajectories = []
    for i, (leaf, reward) in enumerate(leaves.items()):
        ids = path(leaf)
        trajectories.append(Trajectory(
            id=f"tree0-{i}", task="arith", problem_id="p1", prompt="1+3?", steps=[nodes[n][1] for n in ids],
            reward=reward, step_values=[0.5 + 0.1 * k for k in range(len(ids))], step_rewards=[0.0] * len(ids),
            tree_id="tree0", node_ids=ids, parent_ids=[nodes[n][0] for n in ids]))
    return trajectories, nodes


def test_a_tree_stored_in_a_round_reads_back_as_the_same_tree(tmp_path):
    paths, nodes = tree_paths()
    other = Trajectory(id="flat", task="arith", problem_id="p2", prompt="q", steps=["s"], reward=1.0)
    buf = Buffer(tmp_path)
    buf.append(paths + [other])
    loaded = Buffer(tmp_path).load()
    assert loaded == [dataclasses.replace(t, round=0) for t in paths + [other]]
    assert tree_nodes(loaded) == {"tree0": nodes}
    assert tree_nodes(loaded) == tree_nodes(paths)

    clash = dataclasses.replace(paths[0], id="clash", steps=["x=9\n"], node_ids=["b"], parent_ids=["r"],
                                step_values=[], step_rewards=[])
    with pytest.raises(ValueError, match="tree 'tree0', node 'b'"):
        tree_nodes(loaded + [clash])


def test_a_round_written_by_the_older_schema_still_loads(tmp_path):
    """A round as the code before the per-step and tree fields wrote it (its column set, from the
    then-current FEATURES) loads, with those fields empty, next to a new round."""
    old_features = Features({  # oreo.buffer.FEATURES before this change, verbatim
        "id": Value("string"),
        "round": Value("int64"),
        "task": Value("string"),
        "problem_id": Value("string"),
        "prompt": Value("string"),  # JSON: a string or a list of {role, content}
        "steps": List(Value("string")),
        "observations": List(Value("string")),
        "reward": Value("float64"),
        "correct": Value("bool"),
        "answer": Value("string"),
        "meta": Value("string"),  # JSON object
    })
    rows = [{"id": "old-0", "round": 0, "task": "t", "problem_id": "p", "prompt": json.dumps(CHAT),
             "steps": ["a", "b"], "observations": ["o"], "reward": 1.0, "correct": True, "answer": None,
             "meta": json.dumps({"finished": True})}]
    Dataset.from_list(rows, features=old_features).save_to_disk(str(tmp_path / "round_000"))
    before = sorted(p.name for p in (tmp_path / "round_000").iterdir())

    buf = Buffer(tmp_path)
    assert len(buf) == 1
    buf.append([full("new-0")])
    old, new = buf.load()
    assert old == Trajectory(id="old-0", round=0, task="t", problem_id="p", prompt=CHAT, steps=["a", "b"],
                             observations=["o"], reward=1.0, correct=True, meta={"finished": True})
    assert (old.step_rewards, old.step_values, old.tree_id, old.node_ids, old.parent_ids) == ([], [], None, [], [])
    assert new == dataclasses.replace(full("new-0"), round=1)
    assert buf.stats()["n_per_round"] == {0: 1, 1: 1}
    assert sorted(p.name for p in (tmp_path / "round_000").iterdir()) == before  # the old round is left as is


def test_trajectory_imports_nothing_from_oreo():
    tree = ast.parse((Path(__file__).parents[1] / "oreo" / "trajectory.py").read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
               [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "oreo"]
