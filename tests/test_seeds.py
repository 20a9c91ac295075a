"""Paired seeds: the bootstrap interval against hand-computed cases, and the runner end to end on a stand-in run."""
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from oreo.stats import bootstrap_ci, mean_std, paired

ROOT = Path(__file__).resolve().parents[1]


def test_bootstrap_intervals_by_hand():
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)      # no spread, no interval
    # two values: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4; 2.5% and 97.5% are 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_a_bootstrap_interval_matches_the_normal_one_on_a_large_sample():
    rng = random.Random(1)
    xs = [rng.gauss(0.5, 1.0) for _ in range(400)]
    m, se = statistics.mean(xs), statistics.stdev(xs) / 20
    lo, hi = bootstrap_ci(xs, resamples=4000)
    assert abs(lo - (m - 1.96 * se)) < 0.2 * se and abs(hi - (m + 1.96 * se)) < 0.2 * se


def test_paired_differences_are_taken_seed_by_seed():
    p = paired("oreo", "sft", [50.0, 40.0, 60.0], [45.0, 35.0, 55.0])
    assert p.diffs == (5.0, 5.0, 5.0) and (p.mean, p.low, p.high) == (5.0, 5.0, 5.0) and p.verdict == "oreo > sft"
    # unpaired, the same numbers would look like noise: the spread across seeds (10) dwarfs the gap (5)
    assert mean_std([50.0, 40.0, 60.0])[1] == 10.0
    q = paired("a", "b", [1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 0.0, 0.0])
    assert q.low < 0 < q.high and q.verdict == "tie"
    with pytest.raises(ValueError, match="seeds"):
        paired("a", "b", [1.0], [1.0, 2.0])


def test_the_seeds_runner_reports_paired_differences_and_reuses_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "fakes")}
    cmd = [sys.executable, "experiments/seeds.py", "--seeds", "0", "1", "2", "3", "--out", str(tmp_path / "runs"),
           "--name", "fake", "--module", "fake_run", "--jobs", "2", "--results", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)   # each run again: the stand-in counts
    data = json.loads((tmp_path / "fake.json").read_text())
    assert data["seeds"] == [0, 1, 2, 3] and data["accuracy"]["sft"]["test"] == pytest.approx([40, 41, 42, 43])
    rows = {(p["a"], p["b"], p["split"]): p for p in data["paired"]}
    assert set(rows) == {(a, b, s) for a, b in [("rft", "sft"), ("oreo", "sft"), ("oreo", "rft")]
                         for s in ("test", "game24")}
    assert rows["oreo", "sft", "test"]["diffs"] == pytest.approx([10, 10, 10, 10])
    assert rows["oreo", "rft", "test"]["diffs"] == pytest.approx([2, -2, 2, -2])
    text = (tmp_path / "fake.md").read_text()
    assert "| oreo − sft | test | +10.0 | [+10.0, +10.0] | oreo > sft |" in text
    assert "| oreo − rft | test | +0.0 |" in text and "tie" in text and "commit" in text
    assert (tmp_path / "runs" / "0" / "calls").read_text() == "2"


def test_a_variant_is_trained_on_each_seeds_run_and_paired_with_the_others(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "fakes")}
    cmd = [sys.executable, "experiments/seeds.py", "--seeds", "0", "1", "--out", str(tmp_path / "runs"),
           "--name", "fake", "--module", "fake_run", "--results", str(tmp_path),
           "--variant", "oreo_b", "oreo", "oreo.beta=0.05", "--pairs", "oreo_b-oreo"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    data = json.loads((tmp_path / "fake.json").read_text())
    assert data["accuracy"]["oreo_b"]["test"] == pytest.approx([55, 56])
    assert [p["diffs"] for p in data["paired"] if p["split"] == "test"] == [pytest.approx([5, 5])]
    branch = tmp_path / "runs" / "0-oreo_b"
    assert (branch / "branch.done").exists() and (branch / "checkpoints" / "sft").is_dir()
    assert not (branch / "calls").exists() or (branch / "calls").read_text() == "1"


def test_the_tuner_chooses_on_validation_and_refuses_the_test_split(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "fakes")}
    base = tmp_path / "base"
    subprocess.run([sys.executable, "-m", "fake_run", f"run_dir={base}"], env=env, check=True)
    cmd = [sys.executable, "experiments/tune.py", "--base", str(base), "--method", "oreo", "--grid",
           "oreo.beta=0.01,0.1,0.05", "--out", str(tmp_path / "tune"), "--name", "tuned", "--module", "fake_run",
           "--results", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    data = json.loads((tmp_path / "tuned.json").read_text())
    assert data["chosen"] == ["oreo.beta=0.1"] and data["split"] == "validation"
    assert [p["accuracy"] for p in data["points"]] == pytest.approx([31, 40, 35])
    assert "oreo.beta=0.1 (chosen)" in (tmp_path / "tuned.md").read_text()
    # a method the base never trained is trained there, not recomputed
    rft = [*cmd[:5], "rft", "--grid", "rft.train.epochs=1", *cmd[8:], "--name", "tuned_rft"]
    subprocess.run(rft, cwd=ROOT, env=env, check=True, capture_output=True)
    assert json.loads((tmp_path / "tuned_rft.json").read_text())["points"][0]["accuracy"] == pytest.approx(30)
    refused = subprocess.run([*cmd, "--split", "test"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "never on the test split" in refused.stderr
