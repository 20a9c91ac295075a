"""Trainer state next to the Hugging Face weights, and the in-stage checkpoints that let a killed
training stage resume exactly where it stopped.

A stage writing its result to ``OUT`` keeps its latest in-stage checkpoint at ``OUT.progress/``
(engine states with the weights, step, RNG), replaced atomically every ``save_every`` optimizer steps
and on SIGTERM, and removed once ``OUT`` is written. Checkpoints are taken only at optimizer-step
boundaries, so a kill mid-accumulation loses the partial accumulation and nothing else: the resumed
stage replays the same micro-batches (the data order is a function of the seed and the step).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import torch

from oreo.distributed import all_reduce_scalars, barrier, rank_world


# ---------------------------------------------------------------- append-only progress files
# Collection and search evaluation append one JSON line per finished unit of work and flush it, so a
# kill leaves whole lines and at most one cut line, which is skipped (its unit is redone).
@contextmanager
def append_lines(path: Path):
    """``path`` opened for appending; a line cut by a kill is ended first, so the next one is whole."""
    path = Path(path)
    with path.open("a") as out:
        if path.stat().st_size:
            with path.open("rb") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    out.write("\n")
        yield out


def whole_lines(path: Path) -> list:
    """The JSON objects of ``path``'s lines, skipping a line cut by a kill; ``[]`` if there is no file."""
    path = Path(path)
    if not path.exists():
        return []
    items = []
    for line in path.read_text().splitlines():
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return items


def save_trainer_state(path: Path, engines: dict, step: int | None) -> None:
    """Each engine's state (weights, optimizer, scheduler) under ``path/NAME/``, plus ``path/state.pt``
    (step, RNG). Called on every rank (DeepSpeed saves its partitioned state collectively)."""
    path = Path(path)
    for name, engine in engines.items():
        (path / name).mkdir(parents=True, exist_ok=True)
        engine.save_state(path / name)
    if rank_world()[0] == 0:
        torch.save({"step": step, "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()},
                   path / "state.pt")


def load_trainer_state(path: Path, engines: dict) -> dict:
    """Restore what ``save_trainer_state`` wrote; returns ``{"step": ...}`` and restores the RNGs."""
    path = Path(path)
    for name, engine in engines.items():
        engine.load_state(path / name)
    state = torch.load(path / "state.pt", weights_only=False)
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return {"step": state["step"]}


def save_atomically(path: str | Path, write) -> Path:
    """Call ``write(tmp_dir)`` then rename ``tmp_dir`` to ``path``: a kill never leaves half a checkpoint."""
    path = Path(path)
    rank, _ = rank_world()
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    write(tmp)
    barrier()
    if rank == 0:
        old = path.with_name(path.name + ".old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()  # no rank reads the checkpoint before it is in place
    return path


def weights_stamp(folder: str | Path | None) -> int | None:
    """The latest modification time (ns) of the files in ``folder``: it tells a retrained checkpoint
    from an earlier one at the same path, so results measured on the earlier one are not reused."""
    if folder is None or not Path(folder).is_dir():
        return None
    return max((f.stat().st_mtime_ns for f in Path(folder).iterdir() if f.is_file()), default=None)


def progress_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".progress")


class Terminated(SystemExit):
    """Raised after a SIGTERM once the in-stage checkpoint is saved; exits with status 143 (128+15)."""

    def __init__(self, path: Path, step: int):
        super().__init__(143)
        self.path, self.step = path, step


class StageCheckpoints:
    """In-stage checkpoints of one training stage (see the module docstring).

    Use as a context manager around the training loop: it catches SIGTERM (the signal schedulers and
    ``torchrun`` send before killing) and turns it into a checkpoint at the next optimizer step.
    ``restore()`` returns the step to start from; ``step_done(step)`` after every optimizer step saves
    when due; ``finish()`` drops the in-stage checkpoint once the stage's result is written.
    """

    def __init__(self, out_dir: str | Path | None, engines: dict, *, every: int = 0, resume: bool = True,
                 stage: str = ""):
        self.dir = progress_dir(out_dir) if out_dir is not None else None
        self.engines, self.every, self.resume, self.stage = engines, int(every or 0), resume, stage
        self._terminate = False
        self._previous_handler = None

    def __enter__(self) -> StageCheckpoints:
        if self.dir is not None:
            try:
                self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            except ValueError:  # not the main thread: no signal handling
                self._previous_handler = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)

    def _on_sigterm(self, signum, frame) -> None:
        self._terminate = True

    def restore(self) -> int:
        """Load the in-stage checkpoint if there is one (and resuming is on); the step to start from."""
        if self.dir is None or not (self.dir / "state.pt").exists():
            return 0
        if not self.resume:
            if rank_world()[0] == 0:
                shutil.rmtree(self.dir, ignore_errors=True)
            return 0
        step = int(load_trainer_state(self.dir, self.engines)["step"])
        if rank_world()[0] == 0:
            print(f"{self.stage}: resuming from step {step} ({self.dir})", flush=True)
        return step

    def step_done(self, step: int, total: int) -> None:
        """After optimizer step ``step`` (1-based): save if due or if SIGTERM arrived (then exit)."""
        if self.dir is None:
            return
        # Every rank must agree before the collective save: one rank may have caught the signal first.
        terminate = all_reduce_scalars({"t": float(self._terminate)}, op="sum")["t"] > 0
        due = self.every > 0 and step % self.every == 0 and step < total
        if due or terminate:
            self.save(step)
        if terminate:
            if rank_world()[0] == 0:
                print(f"{self.stage}: SIGTERM: saved step {step} to {self.dir}; rerun to resume", flush=True)
            raise Terminated(self.dir, step)

    def save(self, step: int) -> None:
        save_atomically(self.dir, lambda tmp: save_trainer_state(tmp, self.engines, step))

    def finish(self) -> None:
        if self.dir is not None and rank_world()[0] == 0:
            shutil.rmtree(self.dir, ignore_errors=True)
