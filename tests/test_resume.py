"""A training stage killed at any point resumes from its last in-stage checkpoint and ends with the
parameters of an uninterrupted run (tests/resume_train.py trains; this file kills it)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oreo.checkpoint import save_atomically

sys.path.insert(0, str(Path(__file__).parent))
import resume_train  # noqa: E402

SCRIPT = Path(__file__).with_name("resume_train.py")
ROOT = SCRIPT.parents[1]
KILL_AT_MICRO = 9   # the first micro-batch of step 5: mid-accumulation, after the step-4 checkpoint


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _train(out: Path, objective: str, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--objective", objective, *extra],
                            env=_env(), cwd=ROOT, **popen)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def _kill_at_micro(out: Path, trainer: str, sig: int) -> subprocess.Popen:
    proc = _train(out, trainer, "--pace", "0.2", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == f"micro {KILL_AT_MICRO}":
            proc.send_signal(sig)
            break
    proc.communicate(timeout=300)
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run's weights, trained in this process (the same code on the same one thread)."""
    cache = {}

    def get(trainer: str) -> dict:
        if trainer not in cache:
            out = tmp_path_factory.mktemp(f"full-{trainer}")
            resume_train.train(out, trainer)
            assert not (out / "stage.progress").exists()  # dropped once the stage's result is written
            cache[trainer] = torch.load(out / "params.pt")
        return cache[trainer]
    return get


def _assert_same(a: dict, b: dict) -> None:
    for model in a:
        for name, value in a[model].items():
            torch.testing.assert_close(b[model][name], value, rtol=0, atol=1e-6, msg=f"{model}.{name}")


@pytest.mark.parametrize("trainer", ["oreo", "sft", "dpo", "kto", "prm", "step_apo", "simpo"])
def test_sigkill_mid_accumulation_then_resume_matches_an_uninterrupted_run(tmp_path, trainer, uninterrupted):
    proc = _kill_at_micro(tmp_path, trainer, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    progress = tmp_path / "stage.progress"
    assert torch.load(progress / "state.pt", weights_only=False)["step"] == 4
    assert not (tmp_path / "stage").exists() and not (tmp_path / "params.pt").exists()
    out = _finish(_train(tmp_path, trainer, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    assert "resuming from step 4" in out  # not a silent restart from scratch
    _assert_same(uninterrupted(trainer), torch.load(tmp_path / "params.pt"))
    assert (tmp_path / "stage" / "trainer_state" / "state.pt").exists()
    assert not progress.exists()


def test_sigterm_saves_at_the_next_step_and_exits_then_resumes(tmp_path, uninterrupted):
    proc = _kill_at_micro(tmp_path, "oreo", signal.SIGTERM)
    assert proc.returncode == 143
    # SIGTERM arrived during step 5's first micro-batch: the step completes, is saved, the process exits
    assert torch.load(tmp_path / "stage.progress" / "state.pt", weights_only=False)["step"] == 5
    out = _finish(_train(tmp_path, "oreo", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    assert "resuming from step 5" in out
    _assert_same(uninterrupted("oreo"), torch.load(tmp_path / "params.pt"))


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path):
    target = tmp_path / "ckpt"
    save_atomically(target, lambda tmp: (tmp / "weights").write_text("v1"))

    def crash(tmp):
        (tmp / "weights").write_text("half of v2")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        save_atomically(target, crash)
    assert (target / "weights").read_text() == "v1"
    save_atomically(target, lambda tmp: (tmp / "weights").write_text("v2"))
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
