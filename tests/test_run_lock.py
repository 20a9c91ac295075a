"""One live process per run directory (oreo.run_lock): a second process is refused naming the holder, a lock
left by a killed process is taken over with a warning, one process may build several Runs on its directory."""
import importlib.util
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from oreo.pipeline import Run
from oreo.run_config import compose
from oreo.run_lock import RunDirLocked, lock_run_dir

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
       "OMP_NUM_THREADS": "1"}

# holds the directory argv[1] until its stdin closes, then exits without releasing it explicitly
HOLD = """
import sys
from oreo.run_lock import lock_run_dir
lock = lock_run_dir(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""
# asks for the directory argv[1]: exit status 3 when refused
TRY = """
import sys
from oreo.run_lock import RunDirLocked, lock_run_dir
try:
    lock_run_dir(sys.argv[1])
except RunDirLocked:
    sys.exit(3)
"""


def hold(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == "held\n"
    return proc


def refused_elsewhere(run_dir: Path) -> bool:
    """Whether another process is refused the directory."""
    status = subprocess.run([sys.executable, "-c", TRY, str(run_dir)], cwd=ROOT, env=ENV, timeout=60).returncode
    assert status in (0, 3)
    return status == 3


def compose_run(run_dir: Path) -> Run:
    return Run(compose([f"run_dir={run_dir}", "+experiment=smoke", "threads=1"]))


def test_a_second_run_on_a_held_directory_is_refused_at_once_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    holder = compose_run(run_dir)   # this process holds run_dir through Run
    proc = subprocess.run([sys.executable, "-m", "oreo.train", f"run_dir={run_dir}", "+experiment=smoke", "threads=1"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert (f"{run_dir.resolve()} is in use by another run: pid {os.getpid()} on host {HOST} (started "
            in proc.stderr), proc.stderr[-3000:]
    assert "Wait for it to finish, or stop it" in proc.stderr and "or use another run_dir" in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    holder.close()
    assert not refused_elsewhere(run_dir)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_every_rank_of_a_torchrun_job_fails_alike_when_another_run_holds_the_directory(tmp_path):
    """Rank 0 alone asks for the lock and shares the refusal: no rank waits at a barrier for it."""
    lock = lock_run_dir(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "oreo.train", f"run_dir={tmp_path}", "+experiment=smoke", "threads=1"],
                          cwd=ROOT, env={**ENV, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    refusal = f"RunDirLocked: {tmp_path.resolve()} is in use by another run: pid {os.getpid()} on host {HOST}"
    assert (proc.stdout + proc.stderr).count(refusal) == 2, proc.stderr[-5000:]
    lock.release()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning_naming_it(tmp_path):
    holder = hold(tmp_path)
    holder.kill()
    holder.wait(timeout=30)
    left = json.loads((tmp_path / "run.lock").read_text())
    assert left["pid"] == holder.pid and left["host"] == HOST
    says = rf"taking over the lock of pid {holder.pid} on host {re.escape(HOST)} \(started .+\), which ended"
    with pytest.warns(UserWarning, match=says):
        lock = lock_run_dir(tmp_path)
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_the_directory_is_free_again_once_its_holder_exits(tmp_path):
    holder = hold(tmp_path)
    with pytest.raises(RunDirLocked, match=rf"pid {holder.pid} on host {re.escape(HOST)} .*kill {holder.pid} on "):
        lock_run_dir(tmp_path)
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    assert (tmp_path / "run.lock").read_text() == ""   # released at exit: nobody to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lock = lock_run_dir(tmp_path)
    lock.release()


def test_one_process_builds_two_runs_on_its_directory_and_holds_it_until_both_are_closed(tmp_path):
    run_dir = tmp_path / "run"
    first, second = compose_run(run_dir), compose_run(run_dir)
    first.close()
    assert refused_elsewhere(run_dir)
    second.close()
    assert not refused_elsewhere(run_dir)


def test_a_forked_child_cannot_release_its_parents_lock(tmp_path):
    lock = lock_run_dir(tmp_path)
    child = multiprocessing.get_context("fork").Process(target=lock.release)
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert refused_elsewhere(tmp_path)
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not refused_elsewhere(tmp_path)


def test_a_run_refused_for_changed_settings_lets_go_of_the_directory_at_once(tmp_path):
    from oreo.stages import StageId, StageSettingsChanged

    run_dir = tmp_path / "run"
    run = compose_run(run_dir)
    run.ledger.claim(StageId("sft"))
    run.checkpoint("sft").mkdir(parents=True)   # sft started with the smoke settings
    run.close()
    with pytest.raises(StageSettingsChanged) as refused:
        Run(compose([f"run_dir={run_dir}", "+experiment=smoke", "threads=1", "sft.train.lr=0.5"]))
    assert not refused_elsewhere(run_dir)   # while the error (and the half-built Run its traceback holds) lives
    assert "stage 'sft'" in str(refused.value)
