"""math-verify, restricted and in worker processes: LaTeX extraction only (SymPy's ``parse_expr`` refused),
and a pool of worker processes that each answer one symbolic check at a time within a time limit. The
worker loads this file alone, so it imports nothing of oreo.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
import warnings

# Extra wait beyond the time limit before a silent worker is killed: the worker stops itself at
# the limit when SymPy is interruptible, the kill is for when it is stuck inside C code.
KILL_GRACE = 1.0
WORKER_START_TIMEOUT = 120.0
WORKER_MEMORY_LIMIT = 4 * 1024**3


def _refuse_expression(*args, **kwargs):
    raise ValueError("plain-text expression parsing is disabled in the grader")


def _restrict_math_verify():
    """math-verify with LaTeX extraction only: its expression extraction (SymPy's ``parse_expr``,
    which evaluates Python) is not in the extraction config and cannot run if reached anyway."""
    import math_verify
    import math_verify.parser

    math_verify.parser.parse_expr = _refuse_expression
    try:
        import latex2sympy2_extended.latex2sympy2 as l2s

        l2s.parse_expr = _refuse_expression
    except ImportError:
        pass
    return math_verify, [math_verify.LatexExtractionConfig()]


def _verify(gold: str, answer: str) -> bool:
    """math-verify's verdict on two ``\\boxed{...}`` strings, LaTeX extraction only (no time limit:
    the worker sets one)."""
    math_verify, extraction = _restrict_math_verify()
    parsed_gold = math_verify.parse(gold, extraction_config=extraction, parsing_timeout=None)
    parsed_answer = math_verify.parse(answer, extraction_config=extraction, parsing_timeout=None)
    return bool(math_verify.verify(parsed_gold, parsed_answer, timeout_seconds=None))


# ------------------------------------------------------------------------------- worker processes

# The worker loads this file alone, not the oreo package: it needs no sys.path setup and
# imports nothing of the caller's (no torch, no __main__ re-import as multiprocessing would do).
_BOOT = (
    "import importlib.util as u, sys\n"
    "s = u.spec_from_file_location('_oreo_grading_worker', sys.argv[1])\n"
    "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m)\n"
    "m._worker_main()\n"
)


class _Timeout(BaseException):
    """Raised by the worker's timer; a BaseException so that ``except Exception`` in SymPy and
    math-verify does not swallow it."""


def _worker_main() -> None:
    """Serve one JSON request per stdin line with one JSON reply per line on the real stdout."""
    import signal

    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints go to stderr, never into the replies
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a worker stops
    warnings.simplefilter("ignore")  # SymPy's deprecation warnings would land in the caller's log

    def reply(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    try:
        _restrict_math_verify()

        # Its own signal timeouts are off (ours cover parse and verify together); silence the
        # warning that says so.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which logs it
        reply({"ready": False, "error": f"cannot import math_verify: {type(e).__name__}: {e}"})
        return
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > WORKER_MEMORY_LIMIT:
            resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_LIMIT, hard))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the CPU limit below must not dump core
    except (ImportError, ValueError, OSError):
        resource = None
    timer = hasattr(signal, "setitimer")
    if timer:
        def on_alarm(signum, frame):
            raise _Timeout

        signal.signal(signal.SIGALRM, on_alarm)
    reply({"ready": True})

    for line in sys.stdin:
        request = json.loads(line)
        timeout = float(request["timeout"])
        if resource is not None:
            # A CPU limit kills a worker stuck in C code even if its parent died meanwhile.
            usage = resource.getrusage(resource.RUSAGE_SELF)
            soft = math.ceil(usage.ru_utime + usage.ru_stime + timeout + 5 * KILL_GRACE)
            _, hard = resource.getrlimit(resource.RLIMIT_CPU)
            if hard == resource.RLIM_INFINITY or soft < hard:
                resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        try:
            if timer:
                signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                result = {"equal": _verify(request["gold"], request["answer"])}
            finally:
                if timer:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:
            result = {"error": f"timed out after {timeout:g}s"}
        except BaseException as e:  # noqa: BLE001 - str(e) could itself hang on a huge expression
            result = {"error": f"raised {type(e).__name__}"}
        reply(result)


class _Worker:
    """One worker process and a thread that queues its replies."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
        )
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._read, name="oreo-grading-reader", daemon=True).start()
        try:
            ready = self._get(WORKER_START_TIMEOUT)
        except EOFError:
            ready = None
        if not ready or not ready.get("ready"):
            self.kill()
            why = ready.get("error") if ready else f"did not start (exit code {self.proc.returncode})"
            raise RuntimeError(f"math grading worker {why}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def _get(self, timeout: float) -> dict | None:
        """The next reply; None if there is none in time; EOFError if the worker is gone."""
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            raise EOFError("the worker exited")
        return json.loads(line)

    def ask(self, request: dict, timeout: float) -> dict | None:
        """The reply, or None if the worker is stuck past the grace (then it must be killed)."""
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._get(timeout + KILL_GRACE)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class _Pool:
    """Up to ``max_workers`` workers, started on demand and reused; one request each at a time."""

    def __init__(self, max_workers: int) -> None:
        self.idle: list[_Worker] = []
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max_workers)

    def ask(self, request: dict, timeout: float) -> dict:
        with self.slots:
            with self.lock:
                worker = self.idle.pop() if self.idle else None
            reply = None
            try:
                if worker is None:
                    worker = _Worker()
                reply = worker.ask(request, timeout)
            except Exception as e:  # noqa: BLE001 - the caller gets a wrong grade, not a crash
                why = f"failed: {type(e).__name__}: {e}"
                if worker is not None:
                    worker.kill()
                    why += f" (worker exit code {worker.proc.returncode})"
                return {"error": why}
            finally:
                # Also on KeyboardInterrupt: a worker with a request pending is never reused.
                if reply is None and worker is not None and worker.proc.returncode is None:
                    worker.kill()
            if reply is None:
                return {"error": f"timed out after {timeout:g}s (worker killed)"}
            with self.lock:
                self.idle.append(worker)
            return reply

    def close(self) -> None:
        with self.lock:
            workers, self.idle = self.idle, []
        for worker in workers:
            worker.close()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool(os.cpu_count() or 1)
        return _POOL


def _forget_pool() -> None:
    # A forked child shares its parent's worker pipes: it must start its own workers.
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


def _close_pool() -> None:
    if _POOL is not None:
        _POOL.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
atexit.register(_close_pool)
