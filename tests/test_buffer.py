"""Tests for the offline buffer (oreo/buffer.py)."""

import dataclasses
import json

import pytest

from oreo.buffer import Buffer, RecordError, import_jsonl
from oreo.trajectory import Trajectory

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2? ünï"}]


def rec(id, problem_id="p1", reward=1.0, steps=None, **kw):
    return {"id": id, "task": "arith", "problem_id": problem_id, "prompt": "What is 2+2?",
            "steps": ["4"] if steps is None else steps, "reward": reward, **kw}


def test_from_dict_fills_defaults_without_mutating():
    raw = rec("a", reward=0.0)
    out = Trajectory.from_dict(raw).to_dict()
    assert out == {**raw, "round": None, "observations": [], "correct": False, "answer": None, "meta": {},
                   "step_rewards": [], "step_values": [], "tree_id": None, "node_ids": [], "parent_ids": []}
    assert "meta" not in raw
    assert Trajectory.from_dict(rec("b", reward=1)).correct is True
    assert isinstance(Trajectory.from_dict(rec("b", reward=1)).reward, float)


def test_append_and_load_round_trip(tmp_path):
    buf = Buffer(tmp_path / "buffer")
    r0 = [rec("a", answer="4", meta={"seed": 1, "temperature": 0.7, "finished": True}),
          rec("b", reward=0.0, steps=["Let x", " = 5.", ""], correct=False, answer=None)]
    r1 = [rec("c", prompt=CHAT, steps=["go north", "take key"], observations=["You see a key."],
              meta={"model": "tiny", "nested": {"k": [1, 2]}})]
    assert buf.append(r0) == 0
    assert buf.append(r1) == 1
    assert buf.rounds() == [0, 1]
    assert len(buf) == 3

    expected = [Trajectory.from_dict({**r, "round": 0}) for r in r0] + \
               [Trajectory.from_dict({**r, "round": 1}) for r in r1]
    loaded = Buffer(tmp_path / "buffer").load()
    assert loaded == expected and all(isinstance(r, Trajectory) for r in loaded)
    assert loaded[0].prompt == "What is 2+2?" and loaded[2].prompt == CHAT
    assert buf.load([1]) == expected[2:]
    assert buf.load([1, 0]) == expected  # round order regardless of the order asked

    ds = buf.dataset()
    assert ds.num_rows == 3 and json.loads(ds[2]["prompt"]) == CHAT  # raw JSON columns


def test_round_numbering_and_existing_round_refused(tmp_path):
    buf = Buffer(tmp_path)
    assert buf.append([rec("a")], round=5) == 5
    assert buf.append([rec("b")]) == 6
    assert buf.append([rec("c")], round=2) == 2
    assert buf.rounds() == [2, 5, 6]
    assert [r.id for r in buf.load()] == ["c", "a", "b"]
    with pytest.raises(FileExistsError, match="round_005"):
        buf.append([rec("d")], round=5)
    with pytest.raises(KeyError, match=r"\[3\]"):
        buf.load([3])
    assert len(buf) == 3


def test_duplicate_ids_rejected(tmp_path):
    buf = Buffer(tmp_path)
    buf.append([rec("a"), rec("b")])
    with pytest.raises(RecordError, match=r"record 1.*'id'.*duplicate id 'b'"):
        buf.append([rec("c"), rec("b")])
    with pytest.raises(RecordError, match=r"record 1.*'id'.*duplicate id 'c'"):
        buf.append([rec("c"), rec("c")])
    assert buf.rounds() == [0]  # nothing written by the failed appends


@pytest.mark.parametrize("bad, field, problem", [
    ({"steps": "4"}, "steps", "list of str"),
    ({"steps": ["4", 5]}, "steps", "list of str"),
    ({"reward": float("nan")}, "reward", "finite"),
    ({"reward": "1"}, "reward", "number"),
    ({"reward": True}, "reward", "number"),
    ({"prompt": [{"role": "user"}]}, "prompt", "content"),
    ({"prompt": 3}, "prompt", "str"),
    ({"correct": 1}, "correct", "bool"),
    ({"answer": 4}, "answer", "str"),
    ({"meta": {"finished": "yes"}}, "meta", "finished"),
    ({"meta": {"x": object()}}, "meta", "JSON"),
    ({"problem_id": 7}, "problem_id", "str"),
    ({"observations": ["a", "b", "c"]}, "observations", "3 observations for 1 steps"),
    ({"success": True}, "success", "unknown field"),
])
def test_bad_record_names_index_and_field(tmp_path, bad, field, problem):
    buf = Buffer(tmp_path)
    with pytest.raises(RecordError) as err:
        buf.append([rec("ok"), rec("bad", **bad)])
    msg = str(err.value)
    assert "record 1" in msg and "'bad'" in msg and f"field '{field}'" in msg and problem in msg
    assert err.value.field == field
    assert buf.rounds() == []


def test_missing_field():
    bad = rec("x")
    del bad["reward"]
    with pytest.raises(RecordError, match=r"here \(id 'x'\): field 'reward': missing"):
        Trajectory.from_dict(bad, where="here")


def hand_made(tmp_path):
    buf = Buffer(tmp_path)
    buf.append([
        rec("a", "p1", 1.0, ["ab", "c"], meta={"finished": True}),
        rec("b", "p1", 0.0, ["xyz"], meta={"finished": False}),
        rec("c", "p2", 0.0, ["1234"]),
    ])
    buf.append([rec("d", "p3", 1.0, ["a", "b", "c"])])
    return buf


def test_stats(tmp_path):
    buf = hand_made(tmp_path)
    assert buf.stats() == {
        "n": 4,
        "n_per_round": {0: 3, 1: 1},
        "mean_reward": 0.5,
        "frac_correct": 0.5,
        "mean_steps": 1.75,
        "mean_response_chars": 3.25,
        "n_problems": 3,
        "frac_problems_any_correct": pytest.approx(2 / 3),
        "frac_problems_mixed": pytest.approx(1 / 3),
        "frac_finished": 0.75,
    }
    s0 = buf.stats(rounds=[0])
    assert (s0["n"], s0["n_problems"], s0["frac_problems_mixed"]) == (3, 2, 0.5)


def test_filter(tmp_path):
    buf = hand_made(tmp_path)
    assert [r.id for r in buf.filter(lambda r: r.correct)] == ["a", "d"]
    assert [r.id for r in buf.filter(lambda r: r.correct, rounds=[0])] == ["a"]
    assert buf.filter(lambda r: False) == []


def test_export_import_round_trip(tmp_path):
    buf = hand_made(tmp_path / "buffer")
    buf.append([rec("e", prompt=CHAT, steps=["s1", "s2"], observations=["o1", "o2"], step_rewards=[0.25, 0.5],
                    step_values=[-1.0, 2.5], tree_id="t", node_ids=["n1", "n2"], parent_ids=[None, "n1"])])
    out = tmp_path / "out" / "records.jsonl"
    assert buf.export_jsonl(out) == 5
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5
    records = import_jsonl(out)
    assert records == buf.load()
    assert (records[-1].step_rewards, records[-1].step_values, records[-1].tree_id, records[-1].parent_ids) == \
        ([0.25, 0.5], [-1.0, 2.5], "t", [None, "n1"])

    other = Buffer(tmp_path / "other")
    other.append(records)
    assert other.load() == [dataclasses.replace(r, round=0) for r in records]
    assert buf.export_jsonl(tmp_path / "r1.jsonl", rounds=[1]) == 1


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(rec("a")), "", json.dumps(rec("b", steps=[1]))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:3 \(id 'b'\): field 'steps'"):
        import_jsonl(path)

    path.write_text(json.dumps(rec("a")) + "\n{not json\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: invalid JSON"):
        import_jsonl(path)

    path.write_text(json.dumps(rec("a")) + "\n" + json.dumps(rec("a")) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: field 'id': duplicate"):
        import_jsonl(path)


def test_leftover_temp_folder_is_ignored_and_cleaned(tmp_path):
    buf = Buffer(tmp_path)
    buf.append([rec("a")])
    # Simulate a kill mid-write: a half-written round left in its temporary folder.
    leftover = tmp_path / ".tmp_round_001_deadbeef"
    leftover.mkdir()
    (leftover / "data-00000-of-00001.arrow").write_bytes(b"partial")
    assert buf.rounds() == [0] and len(buf) == 1

    reopened = Buffer(tmp_path)
    assert not leftover.exists()
    assert reopened.append([rec("b")]) == 1
    assert [r.id for r in reopened.load()] == ["a", "b"]


def test_empty_buffer(tmp_path):
    buf = Buffer(tmp_path / "missing")
    assert len(buf) == 0 and buf.rounds() == [] and buf.load() == []
    assert buf.dataset().num_rows == 0
    assert buf.filter(lambda r: True) == []
    stats = buf.stats()
    assert stats["n"] == 0 and stats["n_problems"] == 0 and stats["mean_reward"] is None
    assert buf.export_jsonl(tmp_path / "empty.jsonl") == 0
    assert import_jsonl(tmp_path / "empty.jsonl") == []
    with pytest.raises(ValueError, match="no records"):
        buf.append([])
    assert not (tmp_path / "missing").exists()


def test_import_reference_format(tmp_path):
    from oreo.buffer import import_reference_jsonl

    path = tmp_path / "train-n5-t1.jsonl"
    lines = [{"prompt": "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n", "response": "a\nb\n#### 3",
              "reward": 1},
             {"prompt": "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n", "response": "c", "reward": 0},
             {"prompt": "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n", "response": "", "reward": 0}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    records, report = import_reference_jsonl(path, lambda t: t.splitlines(keepends=True), task="gsm8k")
    assert report == {"lines": 3, "empty response": [3]}
    assert all(isinstance(r, Trajectory) for r in records)
    assert [r.problem_id for r in records] == ["ref-000000", "ref-000000", "ref-000001"]
    assert records[0].steps == ["a\n", "b\n", "#### 3"] and records[0].correct is True
    assert records[2].steps == [] and records[2].reward == 0.0
    with path.open("a") as f:
        f.write(json.dumps({"prompt": "x", "response": "y", "reward": "high"}) + "\n")
    with pytest.raises(RecordError, match=r"train-n5-t1.jsonl:4.*reward"):
        import_reference_jsonl(path, str.split)


@pytest.mark.parametrize("content,says", [
    (b'{"prompt": "p", "response": "r", "reward": 1}\n[1, 2]\n', r":2: expected a JSON object, got list"),
    (b'{"prompt": "p", "response": "r", "reward": 1}\n{"prompt": "\xff\xfe", "response": "r", "reward": 1}\n',
     r":2: not UTF-8 text"),
    (b"", r": no records: the file is empty"),
    (b"\n\n", r": no records: the file is empty"),
])
def test_an_imported_file_that_cannot_be_read_names_the_file_and_line(tmp_path, content, says):
    from oreo.buffer import import_reference_jsonl

    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordError, match=r"data\.jsonl" + says):
        import_reference_jsonl(path, str.split)


def test_import_counts_suspicious_lines_keeps_extra_fields_and_refuses_a_wrong_file(tmp_path, capsys):
    from oreo.buffer import MAX_SUSPICIOUS_SHARE, import_reference_jsonl

    good = [{"prompt": f"q{i}", "response": f"a{i}", "reward": i % 2, "source": "gsm8k", "score": 0.5 * i}
            for i in range(8)]
    odd = [{"prompt": "q0", "response": "a0", "reward": 0},   # duplicate of line 1
           {"prompt": "q9", "response": " ", "reward": 0}]     # empty response
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in good + odd))
    records, report = import_reference_jsonl(path, str.split)
    assert len(records) == 10 and report == {"lines": 10, "empty response": [10], "duplicate line": [9]}
    assert records[1].meta["extra"] == {"source": "gsm8k", "score": 0.5}  # nothing dropped
    said = capsys.readouterr().out
    assert "1 with empty response (line 10)" in said and "1 with duplicate line (line 9)" in said
    assert MAX_SUSPICIOUS_SHARE == 0.5
    path.write_text("".join(json.dumps({"prompt": "q", "response": " ", "reward": 1}) + "\n" for _ in range(4)))
    with pytest.raises(RecordError, match=r"4 of 4 lines are suspicious.*right file"):
        import_reference_jsonl(path, str.split)


def test_an_imported_reward_outside_the_tasks_range_is_refused_unless_accepted(tmp_path):
    from oreo.buffer import import_reference_jsonl

    lines = [{"prompt": f"q{i}", "response": "a", "reward": r} for i, r in enumerate([1, 0, -1e6, 1, 5])]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(RecordError, match=r"data\.jsonl:3: field 'reward': outside the task's range \[0, 1\] on 2 "
                                          r"of 5 lines \(lines 3, 5\).*accept_out_of_range_rewards=true"):
        import_reference_jsonl(path, str.split)
    records, report = import_reference_jsonl(path, str.split, reward_range=(-1e6, 5))   # a task with that range
    assert len(records) == 5 and "reward outside the task's range" not in report
    records, report = import_reference_jsonl(path, str.split, accept_out_of_range=True)
    assert [r.reward for r in records] == [1, 0, -1e6, 1, 5]
    assert report["reward outside the task's range"] == [3, 5]   # imported, and reported
    path.write_text(json.dumps({"prompt": "q", "response": "a", "reward": float("nan")}) + "\n")
    with pytest.raises(RecordError, match=r":1: field 'reward': not a finite number"):
        import_reference_jsonl(path, str.split, accept_out_of_range=True)


def test_an_imported_empty_prompt_is_counted_and_refused(tmp_path):
    from oreo.buffer import import_reference_jsonl

    lines = [{"prompt": p, "response": "a", "reward": 1} for p in ["q1", "", "q2", "  \n", "q3"]]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(RecordError, match=r"data\.jsonl:2: field 'prompt': empty on 2 of 5 lines \(lines 2, 4\)"):
        import_reference_jsonl(path, str.split)


def test_a_damaged_round_names_its_folder_and_what_to_do(tmp_path):
    buf = Buffer(tmp_path / "buffer")
    buf.append([rec(f"r{i}") for i in range(3)], round=0)
    arrow = next((tmp_path / "buffer" / "round_000").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])  # cut by a full disk
    with pytest.raises(RuntimeError, match=r"round_000: damaged, cannot be loaded.*delete that folder"):
        Buffer(tmp_path / "buffer").load()
