"""Nothing in a run directory is trusted: a trainer-state or engine file holding a pickled object that
would run code is refused without running it, and a damaged checkpoint or progress file fails with the
file's name and what to do (tests/ds_state.py does the same for DeepSpeed's engine files)."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from oreo.checkpoint import (
    CheckpointError,
    StageCheckpoints,
    load_trainer_state,
    safe_load,
    save_trainer_state,
)
from oreo.engine import OptimConfig, TorchEngine
from oreo.partial_files import append_lines, whole_lines

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling it creates the file ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _engine() -> TorchEngine:
    torch.manual_seed(0)
    engine = TorchEngine(nn.Linear(4, 2), OptimConfig(lr=0.1), total_steps=10, accumulation=1)
    engine.backward(engine.module(torch.randn(5, 4)).pow(2).mean())
    engine.step()
    return engine


def _stage(tmp_path: Path) -> tuple[StageCheckpoints, Path]:
    """A stage writing ``tmp_path/out`` with an in-stage checkpoint at step 3."""
    ckpt = StageCheckpoints(tmp_path / "out", {"policy": _engine()}, stage="test")
    save_trainer_state(ckpt.dir, ckpt.engines, step=3)
    return ckpt, ckpt.dir


def _restore_fails(ckpt: StageCheckpoints, file: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as info:
        ckpt.restore()
    message = str(info.value)
    assert message.startswith(f"{file}: "), message
    assert f"delete {ckpt.dir} to restart the stage from its start" in message
    for word in words:
        assert word in message, message
    return message


def test_the_in_stage_checkpoint_loads(tmp_path):
    ckpt, _ = _stage(tmp_path)
    assert ckpt.restore() == 3


@pytest.mark.parametrize("name", ["state.pt", "policy/engine.pt"])
@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_a_pickled_object_that_runs_code_is_refused_and_not_run(tmp_path, name, form):
    ckpt, progress = _stage(tmp_path)
    marker = tmp_path / "code-ran"
    file = progress / name
    data = {"step": 3, "payload": Payload(marker)}
    if form == "torch.save":
        torch.save(data, file)
        words = ("refused", "(os.makedirs)", "nothing in it was run")
    else:  # the legacy (not zip) format
        file.write_bytes(pickle.dumps(data))
        words = ("not a torch checkpoint of tensors and plain data", "nothing in it was run")
    try:
        torch.load(file, weights_only=False)  # what the loader did before: it runs the payload ...
    except RuntimeError:
        pass  # (the legacy format's magic number is checked after unpickling)
    assert marker.exists()
    marker.rmdir()
    _restore_fails(ckpt, file, *words)  # ... and now refuses it
    assert not marker.exists()


@pytest.mark.parametrize("name", ["state.pt", "policy/engine.pt"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_a_damaged_in_stage_checkpoint_names_the_file_and_what_to_do(tmp_path, name, damage):
    ckpt, progress = _stage(tmp_path)
    file = progress / name
    data = file.read_bytes()
    if damage == "truncated":
        file.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        file.write_bytes(bytes(range(256)) * 4)
    elif damage == "empty":
        file.write_bytes(b"")
    else:
        file.unlink()
    if damage == "missing" and name == "state.pt":
        assert ckpt.restore() == 0  # no checkpoint at all: the stage starts from its start
        return
    _restore_fails(ckpt, file, "missing" if damage == "missing" else "damaged")


def test_a_state_that_is_not_oreos_names_the_file(tmp_path):
    ckpt, progress = _stage(tmp_path)
    torch.save({"step": 3}, progress / "state.pt")  # no RNG state
    _restore_fails(ckpt, progress / "state.pt", "damaged", "torch_rng")
    ckpt, progress = _stage(tmp_path)
    torch.save({"module": {}, "optimizer": {}, "scheduler": {}, "micro_step": 0}, progress / "policy/engine.pt")
    _restore_fails(ckpt, progress / "policy/engine.pt", "does not fit")


def test_trainer_state_outside_a_stage_says_what_to_do(tmp_path):
    save_trainer_state(tmp_path / "trainer_state", {"policy": _engine()}, step=3)
    (tmp_path / "trainer_state" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be resumed from; delete it"):
        load_trainer_state(tmp_path / "trainer_state", {"policy": _engine()})


def test_safe_load_allows_only_plain_data(tmp_path):
    plain = {"a": [1, 2.5, "x", None, (3, 4)], "t": torch.arange(3)}
    torch.save(plain, tmp_path / "plain.pt")
    loaded = safe_load(tmp_path / "plain.pt")
    assert loaded["a"] == plain["a"] and torch.equal(loaded["t"], plain["t"])
    torch.save({"s": slice(1, 2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="refused"):
        safe_load(tmp_path / "other.pt")
    assert safe_load(tmp_path / "other.pt", safe_globals=[slice])["s"] == slice(1, 2)


# ------------------------------------------------------------------ progress files (JSON lines)
def _lines(path: Path, *lines: str, end: str = "\n") -> Path:
    path.write_text("\n".join(lines) + end)
    return path


def test_a_cut_last_line_is_skipped(tmp_path):
    path = _lines(tmp_path / "p.jsonl", '{"a": 1}', '{"a": 2}', '{"a": 3, "b"', end="")
    assert whole_lines(path) == [{"a": 1}, {"a": 2}]
    path = _lines(tmp_path / "q.jsonl", '{"a": 1}', '{"a": 2}', end="")  # whole, only its newline lost
    assert whole_lines(path) == [{"a": 1}, {"a": 2}]
    assert whole_lines(tmp_path / "none.jsonl") == []


def test_a_damaged_line_in_the_middle_names_the_file_and_the_line(tmp_path):
    path = _lines(tmp_path / "p.jsonl", '{"a": 1}', '{"a": 2, "b', '{"a": 3}')
    with pytest.raises(CheckpointError) as info:
        whole_lines(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 2: damaged"), message
    assert "only the last line can be cut by a kill" in message and "delete that line" in message
    assert info.value.line == 2
    # a line ended by a newline is never a cut one, even the last
    with pytest.raises(CheckpointError, match="line 3"):
        whole_lines(_lines(tmp_path / "q.jsonl", '{"a": 1}', '{"a": 2}', '\x00\x00garbage'))


def test_appending_after_a_cut_line_drops_it(tmp_path):
    path = _lines(tmp_path / "p.jsonl", '{"a": 1}', '{"a": 2, "b', end="")  # killed mid-line
    for item in ({"a": 3}, {"a": 4}):  # resumed, then killed after a line, resumed again
        with append_lines(path) as out:
            out.write(json.dumps(item) + "\n")
    assert whole_lines(path) == [{"a": 1}, {"a": 3}, {"a": 4}]
    path = _lines(tmp_path / "q.jsonl", '{"a": 1}', '{"a": 2}', end="")  # the newline alone was lost
    with append_lines(path) as out:
        out.write('{"a": 3}\n')
    assert whole_lines(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    path = _lines(tmp_path / "r.jsonl", '{"a": 1', end="")  # a first line cut
    with append_lines(path) as out:
        out.write('{"a": 2}\n')
    assert whole_lines(path) == [{"a": 2}]


# ------------------------------------------------------------------ DeepSpeed's engine files
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_engine_state_loads_weights_only(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ds_state.py"), str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["round_trip"] == "same", results
    assert not results["payload_ran"], results
    for case in ("payload", "truncated", "missing"):
        message = results[case]
        assert message.startswith(str(tmp_path / "damaged" / f"{case}.progress")), (case, message)
        assert f"delete {tmp_path / 'damaged' / f'{case}.progress'} to restart the stage from its start" in message
    assert "refused" in results["payload"] and "nothing in it was run" in results["payload"]
    assert "damaged" in results["truncated"] and "missing" in results["missing"]
