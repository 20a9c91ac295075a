"""SIGTERM while a training stage runs: how long a first one waits for the loop to save, and the watchdog
thread that ends a stuck process.

The first SIGTERM asks the loop to save at its next optimizer step and exit (status 143; see
``oreo.checkpoint.StageCheckpoints``). If no optimizer step reads that request within the grace period
(``sigterm_grace``, default ``OREO_SIGTERM_GRACE_S`` or 30 s: a stuck loop), or a second SIGTERM arrives (a
second or more after the first: closer ones are copies of the same request), the process exits at once
with status 143, without saving, and says which in-stage checkpoint a rerun resumes from.
"""
from __future__ import annotations

import math
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Protocol


class WatchedStage(Protocol):
    """What the watchdog reads and calls on the stage it watches (``oreo.checkpoint.StageCheckpoints``); a
    protocol, so that this module does not import the checkpoint module that imports it."""
    sigterm_grace: float
    _terminate: bool
    _saving_step: int | None

    def _announce(self, with_deadline: bool) -> None: ...

    def _exit_now(self, why: str) -> None: ...

SIGTERM_GRACE_ENV = "OREO_SIGTERM_GRACE_S"
DEFAULT_SIGTERM_GRACE_S = 30.0
# A SIGTERM this soon after the first is the same request: a launcher (torchrun, srun) forwarding the
# scheduler's signal to a worker that got it too, as a member of the process group.
SIGTERM_REPEAT_S = 1.0


class Terminated(SystemExit):
    """Raised after a SIGTERM once the in-stage checkpoint is saved; exits with status 143 (128+15)."""

    def __init__(self, path: Path, step: int):
        super().__init__(143)
        self.path, self.step = path, step


def sigterm_grace_from_env() -> float:
    """Seconds a first SIGTERM waits for the training loop to act on it: ``OREO_SIGTERM_GRACE_S`` (a
    number, ``inf`` to wait for ever), else 30."""
    value = os.environ.get(SIGTERM_GRACE_ENV, "").strip()
    if not value:
        return DEFAULT_SIGTERM_GRACE_S
    try:
        grace = float(value)
    except ValueError:
        raise ValueError(f"{SIGTERM_GRACE_ENV}={value!r}: expected seconds (a number, or inf)") from None
    if math.isnan(grace) or grace < 0:
        raise ValueError(f"{SIGTERM_GRACE_ENV}={value!r}: expected seconds >= 0 (or inf)")
    return grace


def hard_exit(message: str, status: int = 143) -> None:
    """Write ``message`` to stderr and end the process now (no cleanup: the main thread may be stuck)."""
    try:
        os.write(2, message.encode(errors="replace") + b"\n")
    except OSError:
        pass

    def flush():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # best effort
                pass
    flusher = threading.Thread(target=flush, daemon=True)  # may block on a lock the stuck thread holds
    flusher.start()
    flusher.join(1.0)
    os._exit(status)


_WATCHDOGS: list = []  # this process's active SIGTERM watchdogs, innermost last


def _forget_watchdogs_in_child() -> None:
    """After a fork (data-loader workers, multiprocessing): the child is not the stage's process; it
    gets back the SIGTERM handling it had before the stage and does not signal the parent's watchdog."""
    if not _WATCHDOGS:
        return
    outer = _WATCHDOGS[0]
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, outer.previous_handler)
    except (ValueError, OSError, TypeError):
        pass
    for watchdog in _WATCHDOGS:
        for fd in (watchdog.read_fd, watchdog.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
    _WATCHDOGS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_watchdogs_in_child)


class SigtermWatchdog:
    """Counts SIGTERMs at the C level, through ``signal.set_wakeup_fd``, in a thread of its own: it sees
    them even when the main thread is stuck and never runs the Python handler. It ends the process
    (status 143) on a second SIGTERM (``SIGTERM_REPEAT_S`` or more after the first), or when the
    owner's grace passes after the first one without the loop acknowledging it (``acknowledge()``: the
    loop read the request and is saving); a periodic save running at that moment holds the deadline
    until it ends, then the grace starts again."""

    def __init__(self, owner: WatchedStage, previous_handler):
        self.owner, self.previous_handler = owner, previous_handler
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        try:
            self.previous_wakeup_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(self.read_fd)
            os.close(self.write_fd)
            raise
        self.count, self.first = 0, 0.0
        self.acknowledged = False
        self.closing = False
        _WATCHDOGS.append(self)
        self.thread = threading.Thread(target=self._run, name="oreo-sigterm-watchdog", daemon=True)
        self.thread.start()

    def acknowledge(self) -> None:
        self.acknowledged = True

    def _run(self) -> None:
        deadline, saving = None, False
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready, _, _ = select.select([self.read_fd], [], [], timeout)
                data = os.read(self.read_fd, 512) if ready else b""
            except OSError:
                return
            if self.closing or (ready and not data):
                return
            for byte in data:
                if byte != signal.SIGTERM:
                    continue
                if self.count and time.monotonic() - self.first < SIGTERM_REPEAT_S:
                    continue  # the same request twice (the scheduler's and the launcher's copy)
                self.count += 1
                self.owner._terminate = True
                if self.count >= 2:
                    self.owner._exit_now("a second SIGTERM: exiting at once")
                self.first = time.monotonic()
                grace = self.owner.sigterm_grace
                if not math.isinf(grace):
                    deadline = time.monotonic() + grace
                self.owner._announce(deadline is not None)
            now = time.monotonic()
            if self.acknowledged:
                deadline = None
            elif deadline is not None and now >= deadline:
                if self.owner._saving_step is not None:  # a periodic save: the loop is alive; wait for it
                    saving, deadline = True, now + 1.0
                    continue
                if saving:  # that save is done: the next step_done has a grace of its own to come
                    saving, deadline = False, now + self.owner.sigterm_grace
                    continue
                self.owner._exit_now(f"SIGTERM not acted on within {self.owner.sigterm_grace:g} s "
                                     f"(no optimizer step ended: is the loop stuck?): exiting without saving")

    def close(self) -> None:
        self.closing = True
        try:
            signal.set_wakeup_fd(self.previous_wakeup_fd)
        except (ValueError, OSError):
            pass
        if self in _WATCHDOGS:
            _WATCHDOGS.remove(self)
        os.close(self.write_fd)  # wakes the thread: end of file
        self.thread.join(5.0)
        os.close(self.read_fd)
