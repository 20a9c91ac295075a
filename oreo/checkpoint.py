"""Checkpoints: trainer state next to the Hugging Face weights, and the in-stage checkpoints that let a
killed training stage resume exactly where it stopped; saved whole (atomic folders with a manifest) and
loaded without trusting them.

A stage writing its result to ``OUT`` keeps its latest in-stage checkpoint at ``OUT.progress/``
(engine states with the weights, step, RNG), replaced atomically every ``save_every`` optimizer steps
and on SIGTERM, and removed once ``OUT`` is written. Checkpoints are taken only at optimizer-step
boundaries, so a kill mid-accumulation loses the partial accumulation and nothing else: the resumed
stage replays the same micro-batches (the data order is a function of the seed and the step).

Loading trusts nothing in the run directory: every ``.pt`` file is read with
``torch.load(weights_only=True)`` (tensors and plain data only; a file holding any other Python
object is refused before anything in it runs), and a damaged or refused file fails with a
``CheckpointError`` that names it and says what to do.

What a SIGTERM does to a running stage (save at the next optimizer step, or exit at once when the loop
is stuck) is in ``oreo.signals``; the JSON-lines progress files of collection and evaluation are in
``oreo.partial_files``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
from pathlib import Path

import torch

from oreo.distributed import all_reduce_scalars, barrier, rank_world
from oreo.signals import SigtermWatchdog, Terminated, hard_exit, sigterm_grace_from_env

RESTART_HINT = "delete {dir} to restart the stage from its start"
# Written last into every atomically saved folder: each file's size (and, for a finished stage's output,
# its SHA-256), so a rerun that relies on the folder finds a file cut or changed since, before loading it.
MANIFEST = "oreo_manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint or progress file that cannot be used: damaged, cut short, holding something other
    than tensors and plain data, or not matching what loads it. The message names the file (and the
    line, for a line of a progress file) and says what to do."""

    def __init__(self, path: str | Path, problem: str, hint: str = "", *, line: int | None = None):
        self.path, self.problem, self.hint, self.line = Path(path), problem, hint, line
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}" + (f"; {hint}" if hint else ""))

    def with_hint(self, hint: str) -> CheckpointError:
        """The same error with ``hint`` (what to do) in place of the one it had."""
        return CheckpointError(self.path, self.problem, hint, line=self.line)


def _load_failure(file: Path, error: Exception) -> CheckpointError:
    """What went wrong when torch.load(weights_only=True) failed on ``file``, in one line."""
    text = str(error)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text)
    if unsafe:
        return CheckpointError(file, f"refused: it holds a Python object ({unsafe.group(1)}) besides tensors and "
                                     "plain data, which unpickling could use to run code (nothing in it was run); "
                                     "it was not written by oreo, or was changed since")
    if text.startswith("Weights only load failed"):
        detail = re.search(r"(Unsupported operand[^\n]*|WeightsUnpickler error:[^\n]*\n*[^\n]+)", text)
        reason = " ".join(detail.group(1).split()) if detail else "not a torch checkpoint"
        reason = f"not a torch checkpoint of tensors and plain data ({reason}; nothing in it was run)"
    elif isinstance(error, EOFError):
        reason = "empty or cut short"
    elif isinstance(error, FileNotFoundError):
        reason = "missing"
    else:
        reason = f"{type(error).__name__}: {text.split('. ')[0]}" if text else type(error).__name__
    return CheckpointError(file, f"damaged, cannot be loaded: {reason}")


def safe_load(file: str | Path, *, map_location=None, safe_globals=()):
    """``torch.load(file, weights_only=True)``: tensors and plain data (dicts, lists, tuples, numbers,
    strings), plus the classes in ``safe_globals``; anything else is refused before it can run. Any
    failure (missing, damaged, refused) raises ``CheckpointError`` naming ``file``."""
    file = Path(file)
    try:
        if safe_globals:
            with torch.serialization.safe_globals(list(safe_globals)):
                return torch.load(file, map_location=map_location, weights_only=True)
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # every failure is reported the same way, with the file
        raise _load_failure(file, e) from e


def save_trainer_state(path: Path, engines: dict, step: int | None) -> None:
    """Each engine's state (weights, optimizer, scheduler) under ``path/NAME/``, plus ``path/state.pt``
    (step, RNG: tensors, ints and tuples, so it loads with ``weights_only=True``). Called on every rank
    (DeepSpeed saves its partitioned state collectively)."""
    path = Path(path)
    for name, engine in engines.items():
        (path / name).mkdir(parents=True, exist_ok=True)
        engine.save_state(path / name)
    if rank_world()[0] == 0:
        torch.save({"step": step, "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()},
                   path / "state.pt")


def _python_rng_state(value) -> tuple:
    """``random.setstate``'s argument from what ``state.pt`` holds (a tuple; a list is accepted too)."""
    version, internal, gauss = value
    return int(version), tuple(int(v) for v in internal), None if gauss is None else float(gauss)


def load_trainer_state(path: Path, engines: dict) -> dict:
    """Restore what ``save_trainer_state`` wrote; returns ``{"step": ...}`` and restores the RNGs.

    Every file loads with ``torch.load(weights_only=True)``. A missing, damaged or refused file, or a
    state that does not fit the engines, raises ``CheckpointError`` naming the file; for an in-stage
    checkpoint (``OUT.progress``) it says to delete that folder to restart the stage from its start."""
    path = Path(path)
    hint = (RESTART_HINT.format(dir=path) if path.name.endswith(".progress")
            else f"{path} cannot be resumed from; delete it and rerun what wrote it")
    try:
        for name, engine in engines.items():
            engine.load_state(path / name)
        file = path / "state.pt"
        state = safe_load(file)
        try:
            step = state["step"]
            step = None if step is None else int(step)
            torch_rng, python_rng = state["torch_rng"], _python_rng_state(state["python_rng"])
            if not isinstance(torch_rng, torch.Tensor):
                raise TypeError(f"torch_rng is a {type(torch_rng).__name__}, not a tensor")
            torch.set_rng_state(torch_rng)
            random.setstate(python_rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(file, "damaged: not the step and RNG state oreo writes "
                                        f"({type(e).__name__}: {e})") from e
    except CheckpointError as e:
        raise e.with_hint(hint) from e.__cause__
    return {"step": step}


def save_atomically(path: str | Path, write, *, hashes: bool = True) -> Path:
    """Call ``write(tmp_dir)``, record its files in ``MANIFEST`` (sizes, and SHA-256 with ``hashes``), then
    rename ``tmp_dir`` to ``path``: a kill never leaves half a checkpoint. A full disk raises ``DiskFull``
    naming the folder (the previous checkpoint stays whole)."""
    path = Path(path)
    rank, _ = rank_world()
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        write(tmp)
        barrier()
        if rank == 0:
            write_manifest(tmp, hashes=hashes)
    except Exception as e:
        full = disk_full(tmp, e)
        if full is None:
            raise
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # give back what the cut write took
        raise full from e
    if rank == 0:
        old = path.with_name(path.name + ".old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()  # no rank reads the checkpoint before it is in place
    return path


class DiskFull(OSError):
    """A write failed because the file system holding it has no space left."""


def disk_full(path: Path, error: BaseException) -> DiskFull | None:
    """``DiskFull`` naming ``path`` if ``error`` came from a full disk, else None. torch.save reports a short
    write as "unexpected pos" with no errno; a full disk is then confirmed by the free space left."""
    chain, e = [], error
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    by_errno = any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in chain)
    text = " ".join(str(e) for e in chain)
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        free = None
    short_write = any(s in text for s in ("unexpected pos", "No space left", "file write failed"))
    if not by_errno and not (short_write and free is not None and free < (1 << 20)):
        return None
    left = f"{free} bytes free" if free is not None else "free space unknown"
    return DiskFull(errno.ENOSPC, f"{path}: could not be written, the disk is full ({left}); free some space and "
                                  f"rerun the same command: it resumes from the last complete checkpoint")


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: str | Path, *, hashes: bool = True) -> None:
    """``folder/MANIFEST``: every file under ``folder`` with its size and, with ``hashes``, its SHA-256."""
    folder = Path(folder)
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        entry = {"size": file.stat().st_size}
        if hashes:
            entry["sha256"] = _sha256(file)
        files[file.relative_to(folder).as_posix()] = entry
    (folder / MANIFEST).write_text(json.dumps({"version": 1, "files": files}, indent=1))


def verify_manifest(folder: str | Path, hint: str) -> bool:
    """Check ``folder``'s files against its ``MANIFEST`` (False if it has none: written before manifests).
    A missing, cut or changed file raises ``CheckpointError`` naming it, with ``hint`` (what to do)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.exists():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(manifest, f"damaged, cannot be read ({e})", hint) from None
    for name, entry in files.items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(file, "missing: the stage wrote it and it is gone", hint)
        size = file.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(file, f"{'cut short' if size < entry['size'] else 'grown'}: {size} bytes, "
                                        f"{entry['size']} when written", hint)
        if "sha256" in entry and _sha256(file) != entry["sha256"]:
            raise CheckpointError(file, "changed since it was written (its SHA-256 differs)", hint)
    return True


def check_safetensors(folder_or_file: str | Path, hint: str = "") -> None:
    """Every ``.safetensors`` file (in a folder, or the file) is whole: its header reads and its tensors end
    where the file ends. A damaged one raises ``CheckpointError`` naming it (safetensors' own error does not)."""
    path = Path(folder_or_file)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    hint = hint or ("it was cut or damaged after it was written: rerun the stage that wrote it (in its run: "
                    "recompute=[STAGE]), or restore the file")
    for file in files:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = f.read(n) if 0 <= n <= size - 8 else b""
        try:
            meta = json.loads(header) if header else None
            ends = [t["data_offsets"][1] for k, t in meta.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, AttributeError):
            meta = None
        if meta is None:
            raise CheckpointError(file, f"damaged: no readable safetensors header ({size} bytes)", hint)
        expected = 8 + n + max(ends, default=0)
        if size != expected:
            raise CheckpointError(file, f"{'cut short' if size < expected else 'damaged'}: {size} bytes, its header "
                                        f"says {expected}", hint)


def weights_stamp(folder: str | Path | None) -> int | None:
    """The latest modification time (ns) of the files in ``folder``: it tells a retrained checkpoint
    from an earlier one at the same path, so results measured on the earlier one are not reused."""
    if folder is None or not Path(folder).is_dir():
        return None
    return max((f.stat().st_mtime_ns for f in Path(folder).iterdir() if f.is_file()), default=None)


def progress_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".progress")


class StageCheckpoints:
    """In-stage checkpoints of one training stage (see the module docstring).

    Use as a context manager around the training loop: it catches SIGTERM (the signal schedulers and
    ``torchrun`` send before killing) and turns it into a checkpoint at the next optimizer step.
    ``restore()`` returns the step to start from; ``step_done(step)`` after every optimizer step saves
    when due; ``finish()`` drops the in-stage checkpoint once the stage's result is written.

    A stuck loop still stops: a second SIGTERM (a second or more after the first), or a first one that
    no ``step_done`` reads within ``sigterm_grace`` seconds (default: ``OREO_SIGTERM_GRACE_S``, else 30;
    ``inf`` waits for ever), ends the process at once with status 143 without saving; the last
    in-stage checkpoint, if any, stays whole (saves are atomic) and a rerun resumes from it. Set the
    grace above the time of one optimizer step (a periodic save in progress does not count). A SIGTERM
    that arrives after the last ``step_done`` (while the stage writes its result) makes the block exit
    with ``Terminated`` once the stage is done.
    """

    def __init__(self, out_dir: str | Path | None, engines: dict, *, every: int = 0, resume: bool = True,
                 stage: str = "", sigterm_grace: float | None = None):
        self.dir = progress_dir(out_dir) if out_dir is not None else None
        self.engines, self.every, self.resume, self.stage = engines, int(every or 0), resume, stage
        self.sigterm_grace = sigterm_grace_from_env() if sigterm_grace is None else float(sigterm_grace)
        if math.isnan(self.sigterm_grace) or self.sigterm_grace < 0:
            raise ValueError(f"sigterm_grace must be seconds >= 0 (or inf), got {sigterm_grace!r}")
        self._terminate = False
        self._previous_handler = None
        self._watchdog = None
        self._rank = 0
        self._last_step = None     # the last optimizer step step_done saw
        self._saved_step = None    # the step of the in-stage checkpoint on disk (restored or saved here)
        self._saving_step = None   # the step being saved now, if a save is in progress
        self._finished = False     # finish() ran: the stage's result is written

    def __enter__(self) -> StageCheckpoints:
        if self.dir is not None:
            self._rank = rank_world()[0]
            try:
                self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            except ValueError:  # not the main thread: no signal handling
                self._previous_handler = None
                return self
            try:
                self._watchdog = SigtermWatchdog(self, self._previous_handler)
            except (ValueError, OSError):  # no wakeup fd: a second SIGTERM still exits (_on_sigterm)
                self._watchdog = None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        if exc_type is None and self._terminate:
            # SIGTERM after the last optimizer step: the stage finished; stop here, not in the next stage
            if self._rank == 0:
                print(f"{self.stage}: SIGTERM: the stage finished first; exiting", flush=True)
            raise Terminated(self.dir, self._last_step)

    def _on_sigterm(self, signum, frame) -> None:
        if self._terminate and self._watchdog is None:
            self._exit_now("a second SIGTERM: exiting at once")
        self._terminate = True

    def _announce(self, with_deadline: bool) -> None:
        if self._rank != 0:
            return
        limit = f"; exits without saving if none ends within {self.sigterm_grace:g} s" if with_deadline else ""
        try:
            os.write(2, f"{self.stage}: SIGTERM: saving at the next optimizer step, then exiting{limit} "
                        f"(a second SIGTERM exits at once)\n".encode())
        except OSError:
            pass

    def _exit_now(self, why: str) -> None:
        """Exit with status 143 now, saying what was and was not saved."""
        rank = f"rank {self._rank}: " if rank_world()[1] > 1 else ""
        hard_exit(f"{rank}{self.stage}: {why}; {self._on_disk()}")

    def _on_disk(self) -> str:
        if self._finished:
            return "the stage's result is already written: a rerun skips the stage"
        said = ""
        if self._saving_step is not None:
            said = (f"the save of step {self._saving_step} in progress is abandoned (saves are atomic: "
                    "the previous checkpoint stays whole); ")
        if self._saved_step is not None:
            lost = f" (steps after {self._saved_step} are lost)" if (self._last_step or 0) > self._saved_step else ""
            return said + (f"the in-stage checkpoint {self.dir} holds step {self._saved_step}: "
                           f"a rerun resumes from it{lost}")
        if self.dir is not None and (self.dir / "state.pt").exists():
            return said + f"a rerun resumes from the in-stage checkpoint {self.dir}"
        return said + "no in-stage checkpoint was saved: a rerun restarts the stage from its start"

    def restore(self) -> int:
        """Load the in-stage checkpoint if there is one (and resuming is on); the step to start from.
        A damaged one raises ``CheckpointError`` naming the file (delete the folder to restart)."""
        if self.dir is None or not (self.dir / "state.pt").exists():
            return 0
        if not self.resume:
            if rank_world()[0] == 0:
                shutil.rmtree(self.dir, ignore_errors=True)
            return 0
        verify_manifest(self.dir, RESTART_HINT.format(dir=self.dir))
        step = int(load_trainer_state(self.dir, self.engines)["step"])
        self._saved_step = self._last_step = step
        if rank_world()[0] == 0:
            print(f"{self.stage}: resuming from step {step} ({self.dir})", flush=True)
        return step

    def step_done(self, step: int, total: int) -> None:
        """After optimizer step ``step`` (1-based): save if due or if SIGTERM arrived (then exit)."""
        self._last_step = step
        if self.dir is None:
            return
        # Every rank must agree before the collective save: one rank may have caught the signal first.
        terminate = all_reduce_scalars({"t": float(self._terminate)}, op="sum")["t"] > 0
        if terminate and self._watchdog is not None:
            self._watchdog.acknowledge()  # the loop is alive and saving: no grace deadline now
        due = self.every > 0 and step % self.every == 0 and step < total
        if due or terminate:
            self.save(step)
        if terminate:
            if rank_world()[0] == 0:
                print(f"{self.stage}: SIGTERM: saved step {step} to {self.dir}; rerun to resume", flush=True)
            raise Terminated(self.dir, step)

    def save(self, step: int) -> None:
        self._saving_step = step
        # sizes only: hashing every in-stage save of a large model's optimizer state would cost seconds each
        save_atomically(self.dir, lambda tmp: save_trainer_state(tmp, self.engines, step), hashes=False)
        self._saving_step, self._saved_step = None, step

    def finish(self) -> None:
        if self.dir is not None and rank_world()[0] == 0:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._finished = True
