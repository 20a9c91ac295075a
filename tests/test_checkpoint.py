"""Trainer state round-trips: optimizer moments, scheduler position, step and RNG. SIGTERM stops a
stuck training loop (tests/stuck_train.py hangs; this file signals it)."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from oreo.checkpoint import StageCheckpoints, load_trainer_state, save_trainer_state
from oreo.engine import OptimConfig, TorchEngine
from oreo.signals import Terminated


def trained_engine(seed: int) -> TorchEngine:
    torch.manual_seed(seed)
    engine = TorchEngine(nn.Linear(4, 2), OptimConfig(lr=0.1), total_steps=10, accumulation=1)
    for _ in range(3):
        engine.backward(engine.module(torch.randn(5, 4)).pow(2).mean())
        engine.step()
    return engine


def test_trainer_state_round_trip(tmp_path):
    engine = trained_engine(0)
    torch.manual_seed(123)
    random.seed(7)
    save_trainer_state(tmp_path / "state", {"policy": engine}, step=3)
    expected_draw, expected_py = torch.rand(3), random.random()

    fresh = TorchEngine(nn.Linear(4, 2), OptimConfig(lr=0.1), total_steps=10, accumulation=1)
    fresh.module.load_state_dict(engine.module.state_dict())
    torch.manual_seed(999)
    info = load_trainer_state(tmp_path / "state", {"policy": fresh})
    assert info["step"] == 3
    assert torch.equal(torch.rand(3), expected_draw) and random.random() == expected_py
    assert fresh.scheduler.get_last_lr() == engine.scheduler.get_last_lr()
    for a, b in zip(engine.optimizer.state.values(), fresh.optimizer.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    # one more identical step on both gives identical parameters
    x = torch.randn(5, 4)
    for e in (engine, fresh):
        e.backward(e.module(x).pow(2).mean())
        e.step()
    for p, q in zip(engine.module.parameters(), fresh.module.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------ SIGTERM stops a stuck loop
STUCK = Path(__file__).with_name("stuck_train.py")
ROOT = STUCK.parents[1]


def _stuck(out: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """tests/stuck_train.py, once it has saved its second step and hangs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **(env or {})}
    proc = subprocess.Popen([sys.executable, str(STUCK), str(out), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    for line in proc.stdout:
        if line.strip() in ("stuck", "step 3"):
            return proc
    proc.kill()
    raise AssertionError(f"stuck_train.py ended early: {proc.communicate()[1]}")


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[float, str]:
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"still running {timeout} s after SIGTERM") from None
    return time.monotonic() - start, err


def _saved_step(out: Path) -> int:
    return torch.load(out / "stage.progress" / "state.pt", weights_only=True)["step"]


HANGS = ["sleep"] + (["mutex"] if sys.platform.startswith("linux") else [])


@pytest.mark.parametrize("hang", HANGS)
def test_a_second_sigterm_stops_a_stuck_loop_at_once(tmp_path, hang):
    proc = _stuck(tmp_path, "--hang", hang, "--grace", "600")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # a copy of the same request (a launcher forwarding it): not a second one
    time.sleep(1.5)
    assert proc.poll() is None  # the first one only asks for a save at the next optimizer step
    proc.send_signal(signal.SIGTERM)
    _, err = _wait(proc, 10)
    assert proc.returncode == 143, err
    assert "a second SIGTERM: exiting at once" in err
    assert "stage.progress holds step 2: a rerun resumes from it" in err
    assert _saved_step(tmp_path) == 2


@pytest.mark.parametrize("hang", HANGS)
def test_a_sigterm_nobody_acts_on_stops_a_stuck_loop_after_the_grace(tmp_path, hang):
    proc = _stuck(tmp_path, "--hang", hang, env={"OREO_SIGTERM_GRACE_S": "2"})  # the grace from the environment
    proc.send_signal(signal.SIGTERM)
    waited, err = _wait(proc, 20)
    assert proc.returncode == 143, err
    assert 1.9 <= waited, waited
    assert "SIGTERM not acted on within 2 s" in err and "exiting without saving" in err
    assert "holds step 2: a rerun resumes from it" in err
    assert _saved_step(tmp_path) == 2


def test_a_sigterm_in_a_healthy_loop_still_saves_at_the_next_step(tmp_path):
    proc = _stuck(tmp_path, "--steps", "0", "--hang", "none", "--grace", "5")
    proc.send_signal(signal.SIGTERM)
    _, err = _wait(proc, 20)
    assert proc.returncode == 143, err
    assert "not acted on" not in err
    assert 3 <= _saved_step(tmp_path) < 200


def test_sigterm_grace_settings(monkeypatch):
    monkeypatch.delenv("OREO_SIGTERM_GRACE_S", raising=False)
    assert StageCheckpoints(None, {}).sigterm_grace == 30
    monkeypatch.setenv("OREO_SIGTERM_GRACE_S", "inf")
    assert StageCheckpoints(None, {}).sigterm_grace == float("inf")
    assert StageCheckpoints(None, {}, sigterm_grace=3).sigterm_grace == 3
    monkeypatch.setenv("OREO_SIGTERM_GRACE_S", "soon")
    with pytest.raises(ValueError, match="OREO_SIGTERM_GRACE_S"):
        StageCheckpoints(None, {})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_sigterm_to_a_forked_child_is_not_the_stages(tmp_path):
    with StageCheckpoints(tmp_path / "out", {}, sigterm_grace=float("inf")) as ckpt:
        pid = os.fork()
        if pid == 0:  # a data-loader worker, say: SIGTERM ends it as it would have without the stage
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        time.sleep(0.3)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        assert not ckpt._terminate and ckpt._watchdog.count == 0
    assert signal.getsignal(signal.SIGTERM) is not ckpt._on_sigterm


def test_a_sigterm_after_the_last_step_ends_the_stage_with_terminated(tmp_path):
    engine = trained_engine(0)
    with pytest.raises(Terminated) as info:
        with StageCheckpoints(tmp_path / "out", {"policy": engine}, sigterm_grace=float("inf")) as ckpt:
            ckpt.step_done(3, total=3)
            os.kill(os.getpid(), signal.SIGTERM)  # while the stage writes its result
            time.sleep(0.2)
            ckpt.finish()
    assert info.value.code == 143 and info.value.step == 3
