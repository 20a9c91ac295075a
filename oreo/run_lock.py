"""One live process per run directory: ``RUN_DIR/run.lock``.

Two processes on one directory would both train the same stages and interleave ``metrics.jsonl``, so the
second one is refused. The lock is an exclusive, non-blocking ``fcntl.flock`` on ``run.lock``, held on an
open descriptor for as long as the run holds the directory:

- The OS drops an flock when its process ends, however it ends (SIGKILL, OOM kill, a node reboot), so a
  lock is never left behind: no pid checks, which would be wrong across hosts and after a pid is reused.
- The file says who holds it, as JSON ``{pid, host, started}``, so a refused process can name the holder.
  A clean release empties it; a file that still names a holder while its flock is free was left by a
  process that ended without releasing it, and the takeover warns, naming it.
- The file is written in place and never removed or replaced: a process that opened the old file while
  another unlinked it would lock a file nobody else sees, and two processes would both hold "the" lock.
- flock is per open file, so a second open in one process would refuse that process itself: a process
  that locks a directory it already holds (two ``Run`` objects on it, as tests do) shares the first
  lock, counted; the last release unlocks it. A child made by ``fork`` closes its copy of the descriptor
  (the parent keeps the lock) and never empties the file.
- ``run.json.lock`` is a different lock: short merges of ``run.json`` (``oreo.run_dir.RunDir.write_record``).

Where flock does not work (some network filesystems), the run goes on unlocked, with a warning.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "run.lock"


class RunDirLocked(RuntimeError):
    """Another live process holds the run directory."""


@dataclass
class _Held:
    fd: int | None  # None where the filesystem cannot flock
    count: int


_held: dict[Path, _Held] = {}   # the directories this process holds, by resolved path


def lock_run_dir(run_dir: str | Path) -> RunDirLock:
    """Hold ``run_dir`` (created if missing) for this process until ``release()``, or until the returned
    object is garbage-collected or the process exits. Raises ``RunDirLocked`` naming the holder when
    another live process holds it; warns when it takes over a lock left by a process that has ended."""
    key = Path(run_dir).resolve()
    held = _held.get(key)
    if held is not None:
        held.count += 1
    else:
        _held[key] = _Held(fd=_take(key), count=1)
    return RunDirLock(key)


class RunDirLock:
    """This process's hold on a run directory (``lock_run_dir``)."""

    def __init__(self, key: Path):
        self.dir = key
        self._release = weakref.finalize(self, _release, key)

    def release(self) -> None:
        """Let go of the directory (once; later calls do nothing)."""
        self._release()


def _take(run_dir: Path) -> int | None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirLocked(_refusal(run_dir, _read_holder(path))) from None
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        warnings.warn(f"{path}: this filesystem cannot lock files ({e.strerror}); nothing stops a second run on "
                      f"{run_dir} while this one runs", stacklevel=3)
        return None
    previous = _holder(os.pread(fd, 1 << 16, 0))
    if previous:
        warnings.warn(f"{run_dir}: taking over the lock of {_describe(previous)}, which ended without releasing it "
                      f"(killed or crashed); its outputs are reused as usual", stacklevel=3)
    _write_holder(fd)
    return fd


def _write_holder(fd: int) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)


def _read_holder(path: Path, tries: int = 5) -> dict:
    """The holder's record; it may be empty for an instant while the holder writes it, hence the retries."""
    for _ in range(tries):
        try:
            holder = _holder(path.read_bytes())
        except OSError:
            holder = {}
        if holder:
            return holder
        time.sleep(0.05)
    return {}


def _holder(content: bytes) -> dict:
    try:
        holder = json.loads(content)
    except ValueError:   # empty (released cleanly) or cut short
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(started {holder.get('started', 'at an unknown time')})")


def _refusal(run_dir: Path, holder: dict) -> str:
    who = _describe(holder) if holder else "a process that has not written its name yet"
    kill = f"kill {holder['pid']} on {holder.get('host', 'its host')}; " if "pid" in holder else ""
    return (f"{run_dir} is in use by another run: {who} holds {run_dir / LOCK_NAME}. Two runs on one directory "
            f"would train the same stages twice and mix their outputs. Wait for it to finish, or stop it ({kill}"
            f"rerunning then resumes from its checkpoints), or use another run_dir.")


def _release(key: Path) -> None:
    held = _held.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count > 0:
        return
    del _held[key]
    if held.fd is not None:
        os.ftruncate(held.fd, 0)   # a clean release: the next holder has no one to warn about
        fcntl.flock(held.fd, fcntl.LOCK_UN)
        os.close(held.fd)


def _forget_in_child() -> None:
    # the parent still holds these; closing the child's copies leaves its flocks in place
    for held in _held.values():
        if held.fd is not None:
            os.close(held.fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)
