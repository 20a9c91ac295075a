"""A run directory's files: where each output lives, the lock that keeps it to one process, and its record.

``RUN_DIR`` holds ``config.yaml`` (the resolved config), ``run.json`` (the record, ``oreo.run_record``) and
``metrics.json`` (its accuracies), ``metrics.jsonl`` (the logged steps), ``buffer/`` (collected rounds),
``checkpoints/STAGE`` (trained stages, with ``.progress``, ``.tmp`` and ``.old`` beside them while they train or
are saved), ``eval/METHOD-SPLIT.jsonl`` (evaluations), ``cache/`` and ``plots/``.
"""
from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

from oreo.atomic_write import write_atomically
from oreo.run_lock import RunDirLock, lock_run_dir
from oreo.run_record import RunRecord

# what a stage's checkpoint leaves beside it: its name with these suffixes (oreo.checkpoint)
CHECKPOINT_SUFFIXES = ("", ".progress", ".tmp", ".old")


class RunDir:
    """The files of the run directory ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run_json = self.path / "run.json"
        self.metrics_json = self.path / "metrics.json"
        self.config_yaml = self.path / "config.yaml"
        self.buffer = self.path / "buffer"
        self.checkpoints = self.path / "checkpoints"
        self.cache = self.path / "cache"

    # ------------------------------------------------------------------ where things are
    def checkpoint(self, stage: str) -> Path:
        return self.checkpoints / stage

    def eval_file(self, method: str, split: str, samples: bool = False) -> Path:
        return self.path / "eval" / f"{method}-{split}{'-samples' if samples else ''}.jsonl"

    def plot(self, name: str) -> Path:
        return self.path / "plots" / f"{name}.png"

    def buffer_round(self, round: int) -> Path:
        return self.buffer / f"round_{round:03d}"

    def buffer_round_partials(self, round: int) -> list[Path]:
        """The unfinished files collection round ``round`` left."""
        return list(self.buffer.glob(f"round_{round:03d}.partial*.jsonl"))

    def eval_partials(self) -> list[Path]:
        """The unfinished files evaluations left."""
        return list((self.path / "eval").glob("*.partial*.jsonl"))

    def holds_a_run(self) -> bool:
        """Whether an earlier run wrote here."""
        return any(p.exists() for p in (self.run_json, self.checkpoints, self.buffer))

    def checkpoint_names(self) -> set[str]:
        """The stages with a checkpoint here, finished or in progress."""
        if not self.checkpoints.is_dir():
            return set()
        return {p.name.removesuffix(".progress") for p in self.checkpoints.iterdir()
                if not p.name.endswith((".tmp", ".old"))}

    # ------------------------------------------------------------------ the lock
    def lock(self) -> RunDirLock:
        """Hold the directory for this process (``oreo.run_lock``)."""
        return lock_run_dir(self.path)

    # ------------------------------------------------------------------ the record
    def read_record(self) -> RunRecord:
        """The record in ``run.json`` (an empty one where there is none); ``RunRecordError`` if it is damaged."""
        return RunRecord.read(self.run_json) if self.run_json.exists() else RunRecord()

    def write_record(self, record: RunRecord) -> None:
        """Write ``record`` to ``run.json`` and its accuracies to ``metrics.json``.

        What another process wrote to ``run.json`` since this one read it is merged in, never overwritten, under
        ``run.json.lock`` (``RunRecord.absorb``: ``record`` then holds what was written): a process that loses a race
        cannot drop the record of a stage that finished."""
        with open(self.path / "run.json.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                on_disk = json.loads(self.run_json.read_text())
            except (OSError, ValueError):
                on_disk = {}
            record.absorb(on_disk if isinstance(on_disk, dict) else {})
            write_atomically(self.run_json, record.to_json())
            write_atomically(self.metrics_json, record.metrics_json())

    def write_config(self, text: str) -> None:
        self.config_yaml.write_text(text)

    # ------------------------------------------------------------------ removing a stage's outputs (recompute)
    def remove_buffer_round(self, round: int) -> None:
        shutil.rmtree(self.buffer_round(round), ignore_errors=True)
        for partial in self.buffer_round_partials(round):
            partial.unlink()

    def remove_checkpoint(self, stage: str) -> None:
        for suffix in CHECKPOINT_SUFFIXES:
            shutil.rmtree(self.checkpoints / f"{stage}{suffix}", ignore_errors=True)

    def remove_evaluations(self, method: str) -> None:
        for path in (self.path / "eval").glob(f"{method}-*.jsonl"):
            path.unlink()
