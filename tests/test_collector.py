"""Tests for single-turn collection (oreo/rollout/collector.py): grading, rounds, resumability."""

import hashlib
import json

import pytest

from oreo.buffer import Buffer
from oreo.encode import Encoder
from oreo.models import load_policy
from oreo.rollout.collector import collect
from oreo.rollout.sampler import HFSampler
from oreo.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from oreo.types import Completion

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


class Kill(Exception):
    """Stands for the process being killed while sampling."""


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask(ArithmeticConfig(seed=1, n_train=7, n_test=1, n_heldout=1))


class ScriptedSampler:
    """Deterministic completions that depend on the prompt, the seed and the row in the batch (as
    real batched sampling does). Row kinds cycle: right answer finished, right answer cut by the
    token limit, wrong answer finished, no answer."""

    def __init__(self, task, fail_after_calls=None):
        self.answers = {p.prompt: p.answer for p in task.problems("train")}
        self.calls, self.prompts_seen, self.fail_after_calls = 0, [], fail_after_calls

    def generate(self, prompts, *, n=1, temperature=1.0, seed=0, progress=None):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise Kill("simulated kill")
        self.calls += 1
        self.prompts_seen += list(prompts)
        out = []
        for i, prompt in enumerate(prompts):
            row = []
            for k in range(n):
                h = int(hashlib.sha256(f"{prompt}|{seed}|{i}|{k}".encode()).hexdigest(), 16) % 1000
                ans = self.answers[prompt]
                kind = (i * n + k) % 4
                text = {0: f"work {h}\n#### {ans}", 1: f"work {h}\n#### {ans}",
                        2: f"work {h}\n#### {ans + 1}", 3: f"work {h}\n"}[kind]
                row.append(Completion(text, finished=kind != 1, n_tokens=len(text) + (kind != 1)))
            out.append(row)
            if progress is not None:
                progress.update(n)
        return out


def by_problem(records):
    out = {}
    for r in records:
        out.setdefault(r.problem_id, []).append(r)
    return out


def test_collect_writes_one_graded_round(tmp_path, task):
    problems = task.problems("train")[:5]
    buffer = Buffer(tmp_path / "buffer")
    stats = collect(task, problems, ScriptedSampler(task), buffer, n=4, temperature=0.7, seed=3,
                    problems_per_chunk=2, meta={"model": "scripted"})
    assert buffer.rounds() == [0]
    records = buffer.load()
    assert stats["round"] == 0 and stats["records"] == len(records) == 20
    groups = by_problem(records)
    assert list(groups) == [p.id for p in problems]  # problem order kept
    truncated_right = 0
    for p in problems:
        rs = groups[p.id]
        assert len(rs) == 4
        for r in rs:
            text = "".join(r.steps)
            answer, correct = task.grade(p, text)
            assert r.prompt == p.prompt and r.task == "arithmetic" and r.round == 0
            assert r.steps == task.split_steps(text)
            assert r.answer == (None if answer is None else str(answer))
            assert r.correct == (correct and r.meta["finished"])
            assert r.reward == (1.0 if r.correct else 0.0)
            if not r.meta["finished"]:
                assert r.reward == 0.0
                truncated_right += correct
            assert r.meta["temperature"] == 0.7 and r.meta["seed"] == 3 and r.meta["model"] == "scripted"
    assert truncated_right == 5  # the cut-but-right completions exist and got no reward
    assert {r.reward for r in records} == {0.0, 1.0}
    assert stats["accuracy"] == pytest.approx(sum(r.correct for r in records) / 20)
    assert len({r.id for r in records}) == 20
    assert not list((tmp_path / "buffer").glob("*.partial.jsonl"))

    # a second collection is the next round, with fresh ids
    collect(task, problems[:2], ScriptedSampler(task), buffer, n=1, temperature=1.0, seed=4)
    assert buffer.rounds() == [0, 1] and len(buffer.load([1])) == 2


def run_interrupted(tmp_path, task, problems, kill_after_calls, **kw):
    buffer = Buffer(tmp_path / "buffer")
    with pytest.raises(Kill):
        collect(task, problems, ScriptedSampler(task, fail_after_calls=kill_after_calls), buffer, **kw)
    assert buffer.rounds() == []  # nothing appended
    partial = tmp_path / "buffer" / "round_000.partial.jsonl"
    assert partial.exists()
    return buffer, partial


def test_resume_after_interruption(tmp_path, task):
    problems = task.problems("train")  # 7 problems, chunks of 3: 3 calls
    kw = dict(n=3, temperature=1.0, seed=11, problems_per_chunk=3)
    buffer, partial = run_interrupted(tmp_path / "a", task, problems, kill_after_calls=1, **kw)

    rerun = ScriptedSampler(task)
    stats = collect(task, problems, rerun, buffer, **kw)
    assert rerun.prompts_seen == [p.prompt for p in problems[3:]]  # collected problems not regenerated
    assert rerun.calls == 2
    assert not partial.exists()
    assert buffer.rounds() == [0] and stats["records"] == 21
    resumed = buffer.load()
    groups = by_problem(resumed)
    assert list(groups) == [p.id for p in problems] and all(len(g) == 3 for g in groups.values())
    assert len({r.id for r in resumed}) == 21

    # ... and it equals an uninterrupted collection
    fresh = Buffer(tmp_path / "b" / "buffer")
    collect(task, problems, ScriptedSampler(task), fresh, **kw)
    assert resumed == fresh.load()


def test_resume_from_a_partial_file_of_the_older_record_format(tmp_path, task):
    """Partial records written before trajectories had per-step and tree fields (plain dicts without
    them) are read back as trajectories: the resumed round equals an uninterrupted one."""
    problems = task.problems("train")
    kw = dict(n=2, temperature=1.0, seed=9, problems_per_chunk=3)
    buffer, partial = run_interrupted(tmp_path / "a", task, problems, kill_after_calls=1, **kw)
    new_fields = ("step_rewards", "step_values", "tree_id", "node_ids", "parent_ids")
    lines = [json.loads(line) for line in partial.read_text().splitlines()]
    for line in lines:
        for item in line["problems"]:
            assert all(set(new_fields) <= set(r) for r in item["records"])  # written as Trajectory.to_dict
            item["records"] = [{k: v for k, v in r.items() if k not in new_fields} for r in item["records"]]
    partial.write_text("".join(json.dumps(line) + "\n" for line in lines))

    collect(task, problems, ScriptedSampler(task), buffer, **kw)
    fresh = Buffer(tmp_path / "b" / "buffer")
    collect(task, problems, ScriptedSampler(task), fresh, **kw)
    assert buffer.load() == fresh.load()


def test_resume_after_kill_mid_write(tmp_path, task):
    """A kill while a chunk is being written leaves part of it (and maybe half a line) on disk."""
    problems = task.problems("train")
    kw = dict(n=2, temperature=1.0, seed=5, problems_per_chunk=3)
    buffer, partial = run_interrupted(tmp_path / "a", task, problems, kill_after_calls=2, **kw)
    text = partial.read_text()
    assert text.endswith("\n")
    partial.write_text(text[: 3 * len(text) // 4])  # cut inside the second chunk's part

    collect(task, problems, ScriptedSampler(task), buffer, **kw)
    fresh = Buffer(tmp_path / "b" / "buffer")
    collect(task, problems, ScriptedSampler(task), fresh, **kw)
    assert buffer.load() == fresh.load()  # no duplicates, no gaps, same samples
    assert not partial.exists()


def test_stale_partial_of_a_finished_round_is_ignored(tmp_path, task):
    """A kill between appending the round and removing the partial file must not leak into the next round."""
    problems = task.problems("train")[:3]
    kw = dict(n=1, temperature=1.0, seed=0, problems_per_chunk=2)
    buffer = Buffer(tmp_path / "buffer")
    collect(task, problems, ScriptedSampler(task), buffer, round=0, **kw)
    stale = tmp_path / "buffer" / "round_000.partial.jsonl"
    stale.write_text(json.dumps({"problem_id": problems[0].id, "records": []}) + "\n")
    with pytest.raises(FileExistsError):
        collect(task, problems, ScriptedSampler(task, fail_after_calls=0), buffer, round=0, **kw)
    sampler = ScriptedSampler(task)
    collect(task, problems, sampler, buffer, **kw)
    assert buffer.rounds() == [0, 1] and len(buffer.load([1])) == 3 and sampler.calls == 2
    assert not stale.exists()


def test_collect_with_hf_sampler_resumes_identically(tmp_path, task):
    model, tok = load_policy("tiny", tiny=TINY, seed=0)
    problems = task.problems("train")[:5]
    kw = dict(n=2, temperature=1.0, seed=7, problems_per_chunk=2)

    class Killed(HFSampler):
        calls = 0

        def generate(self, *a, **k):
            if Killed.calls == 1:
                raise Kill
            Killed.calls += 1
            return super().generate(*a, **k)

    def make(cls):
        return cls(model, tok, Encoder(tok), batch_size=3, max_new_tokens=6)
    buffer = Buffer(tmp_path / "a")
    with pytest.raises(Kill):
        collect(task, problems, make(Killed), buffer, **kw)
    collect(task, problems, make(HFSampler), buffer, **kw)
    fresh = Buffer(tmp_path / "b")
    collect(task, problems, make(HFSampler), fresh, **kw)
    resumed = buffer.load()
    assert resumed == fresh.load()
    assert len(resumed) == 10
    assert [len(g) for g in by_problem(resumed).values()] == [2] * 5
    for r in resumed:  # a random model is cut by the token limit: never rewarded
        if not r.meta["finished"]:
            assert r.reward == 0.0 and r.meta["n_tokens"] == 6
    texts = {"".join(r.steps) for r in resumed}
    assert len(texts) == 10  # samples differ across problems and within a problem
