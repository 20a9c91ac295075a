"""Answer extraction and grading for GSM8K and MATH.

GSM8K answers are numbers: the response's final ``#### X`` line when it has one, otherwise its
last number, compared exactly as decimals (``"1,234"``, ``"$1234.00"`` and ``"1234."`` are equal).

MATH answers are LaTeX: the content of the response's last ``\\boxed{...}`` (or ``\\fbox{...}``,
or ``\\boxed X``) is compared with the gold answer in two steps. A string fast path first
normalises both sides (spacing, ``\\dfrac``, ``\\left``, degrees, percent signs, units written as
``\\text{ cm}``, ``x=`` prefixes, thousands separators, choice letters) and accepts equal strings.
Otherwise the symbolic check of the ``math-verify`` package decides (fractions vs decimals,
intervals, tuples, sets, matrices, equations, radicals, ...).

Model output is untrusted: nothing here evaluates it as Python. The symbolic check runs in a
worker process with a time limit, so an answer that makes SymPy hang (``9^{9^{9^{9}}}``) costs at
most the limit, from any thread: a grader error or timeout is logged on the ``oreo.grading``
logger and grades wrong, and never raises into the caller.

Every ``grade_*`` function returns ``(extracted answer or None, correct)``, like the arithmetic
task's ``grade``.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import re
import subprocess
import sys
import threading
import warnings
from decimal import Decimal, InvalidOperation

__all__ = [
    "DEFAULT_TIMEOUT",
    "extract_boxed",
    "extract_gsm8k_answer",
    "grade_gsm8k",
    "grade_math",
    "gsm8k_gold",
    "math_equal",
    "math_gold",
    "normalize_math_answer",
]

logger = logging.getLogger("oreo.grading")

DEFAULT_TIMEOUT = 5.0
# Extra wait beyond the time limit before a silent worker is killed: the worker stops itself at
# the limit when SymPy is interruptible, the kill is for when it is stuck inside C code.
KILL_GRACE = 1.0
WORKER_START_TIMEOUT = 120.0
WORKER_MEMORY_LIMIT = 4 * 1024**3

# ---------------------------------------------------------------------------------------- GSM8K

GSM8K_ANSWER_PREFIX = "####"

# A number with an optional sign and "$", thousands separators only in groups of three. The sign
# counts only where it cannot be a binary minus ("12-5" ends with 5, not -5).
_NUMBER_RE = re.compile(
    r"(?P<sign>(?<![\w)\]}])-)?(?:\$\s?)?(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?"
)


def _numbers(text: str) -> list[str]:
    out = []
    for m in _NUMBER_RE.finditer(text):
        sign = "-" if m.group("sign") else ""
        out.append(sign + m.group("int").replace(",", "") + (m.group("frac") or ""))
    return out


def extract_gsm8k_answer(text: str) -> str | None:
    """The model's final number, as plain digits (``"-1234.50"``), or None if it has none.

    The first number after the last ``####`` wins when there is one; otherwise the last number
    of the text. Commas between digit groups, a ``$`` and a trailing period are dropped.
    """
    i = text.rfind(GSM8K_ANSWER_PREFIX)
    if i >= 0:
        after = _numbers(text[i + len(GSM8K_ANSWER_PREFIX):].split("\n", 1)[0])
        if after:
            return after[0]
    found = _numbers(text)
    return found[-1] if found else None


def gsm8k_gold(answer_field: str) -> str:
    """The gold answer of a GSM8K record: the text after its last ``#### ``, without commas.

    Raises ValueError if the field has no ``####`` line.
    """
    i = answer_field.rfind(GSM8K_ANSWER_PREFIX)
    if i < 0:
        raise ValueError(f"no '{GSM8K_ANSWER_PREFIX}' in GSM8K answer {answer_field[-80:]!r}")
    return answer_field[i + len(GSM8K_ANSWER_PREFIX):].strip().replace(",", "")


def _decimal(number: str) -> Decimal | None:
    try:
        return Decimal(number)
    except (InvalidOperation, ValueError):
        return None


def grade_gsm8k(response: str, gold: str) -> tuple[str | None, bool]:
    """``(extracted answer, whether it equals gold as a number)``; ``"3.50"`` equals ``"3.5"``.

    ``gold`` is a GSM8K gold answer such as :func:`gsm8k_gold` returns (commas and ``$`` are
    allowed). Raises ValueError if ``gold`` holds no number; never raises on the response.
    """
    gold_number = extract_gsm8k_answer(gold)
    gold_value = None if gold_number is None else _decimal(gold_number)
    if gold_value is None:
        raise ValueError(f"GSM8K gold answer {gold!r} is not a number")
    answer = extract_gsm8k_answer(response)
    value = None if answer is None else _decimal(answer)
    return answer, value is not None and value == gold_value


# ----------------------------------------------------------------------------------------- MATH

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _braced(text: str, start: int) -> str | None:
    """The content of the brace group opening at ``text[start]``; escaped braces do not count."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` or ``\\fbox{...}``, stripped; None if absent.

    Braces must balance (``\\{`` and ``\\}`` do not count), else None: a truncated box is no
    answer. ``\\boxed 5`` without braces gives the run of characters up to the next space or
    ``$``, less a trailing period. An empty box gives None.
    """
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        content = _braced(stripped, 0)
    else:
        m = re.match(r"[^\s$]+", stripped)
        content = m.group(0).rstrip(".,") if m else None
    if content is None or not content.strip():
        return None
    return content.strip()


def math_gold(record: dict) -> str:
    """The gold answer of a MATH record: its ``answer`` field (MATH500), else the last boxed
    expression of its ``solution`` (the full MATH test set). Raises ValueError if neither."""
    answer = record.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer.strip()
    boxed = extract_boxed(record.get("solution") or "")
    if boxed is None:
        raise ValueError("MATH record has neither an 'answer' nor a boxed answer in 'solution'")
    return boxed


_SPACING_RE = re.compile(r"\\[!,;: ]|~")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PERCENT_RE = re.compile(r"\\?%")
# A unit: a text command at the end whose content starts with a space ("5\text{ cm}^2").
_UNIT_RE = re.compile(r"\\(?:text|textrm|mbox|mathrm)\{\s[^{}]*\}(?:\^\{?\d\}?)?\s*$")
_TEXT_RE = re.compile(r"\\(?:text|textrm|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize_math_answer(answer: str) -> str:
    """A canonical string for the fast path of :func:`math_equal`: equal strings are equivalent.

    Drops spacing commands, ``\\left``/``\\right``, ``$``, degree and percent signs, a trailing
    unit such as ``\\text{ cm}^2``, a trailing period, thousands separators and all spaces;
    unwraps ``\\text{...}``; writes ``\\dfrac12``, ``\\frac12`` and a plain ``1/2`` as
    ``\\frac{1}{2}``, ``\\sqrt2`` as ``\\sqrt{2}``, ``.5`` as ``0.5``, ``3.50`` as ``3.5`` and
    ``(A)`` as ``A``.
    """
    s = answer.replace("\n", " ").strip()
    s = _SPACING_RE.sub(" ", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = _DEGREES_RE.sub("", s)
    s = _PERCENT_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "")
    s = _UNIT_RE.sub("", s)
    s = _TEXT_RE.sub(r"\1", s)
    s = s.replace(" ", "").rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    s = re.sub(r"^(-?)(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", s)
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    m = re.fullmatch(r"\(([A-Ea-e])\)", s)
    if m:
        s = m.group(1)
    if re.fullmatch(r"-?\d+\.\d+", s):
        s = s.rstrip("0").rstrip(".")
    return s


def _rhs(normalized: str) -> str:
    m = re.fullmatch(r"[a-zA-Z]=([^=<>]+)", normalized)
    return m.group(1) if m else normalized


def _verify_input(answer: str) -> str:
    # math-verify reads "50\%" as an unparsed string: MATH's percent answers mean the number.
    return "\\boxed{" + _PERCENT_RE.sub("", answer) + "}"


def math_equal(answer: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether the LaTeX ``answer`` is equivalent to the LaTeX ``gold`` answer.

    Equal :func:`normalize_math_answer` strings are equivalent without further work (also when
    one side is a single-letter assignment such as ``x=3`` whose right side matches); otherwise
    math-verify's symbolic comparison (gold first: it is not symmetric) decides, in a worker
    process, within ``timeout`` seconds (plus a 1 s grace to kill a stuck worker; starting a
    worker the first time is not counted). A timeout or grader error is logged and gives False.
    Thread-safe: concurrent calls use up to one worker each (at most ``os.cpu_count()``).
    """
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if not answer.strip() or not gold.strip():
        return False
    a, g = normalize_math_answer(answer), normalize_math_answer(gold)
    # "x=3" matches "3", but "y=3" is left to math-verify, which tells it from "x=3".
    if a == g or _rhs(a) == g or a == _rhs(g):
        return True
    return _symbolic_equal(gold, answer, timeout)


def grade_math(response: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[str | None, bool]:
    """``(last boxed answer of the response, whether it is equivalent to gold)``.

    ``gold`` is a MATH gold answer such as :func:`math_gold` returns. A response without a boxed
    answer grades ``(None, False)``. See :func:`math_equal` for the comparison and ``timeout``.
    """
    answer = extract_boxed(response)
    if answer is None:
        return None, False
    return answer, math_equal(answer, gold, timeout)


def _symbolic_equal(gold: str, answer: str, timeout: float) -> bool:
    request = {"gold": _verify_input(gold), "answer": _verify_input(answer), "timeout": timeout}
    reply = _pool().ask(request, timeout)
    if "equal" in reply:
        return bool(reply["equal"])
    logger.warning("math grading %s (gold %r, answer %.200r): graded wrong",
                   reply.get("error", "failed"), gold, answer)
    return False


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
        import math_verify

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
                gold = math_verify.parse(request["gold"], parsing_timeout=None)
                answer = math_verify.parse(request["answer"], parsing_timeout=None)
                result = {"equal": bool(math_verify.verify(gold, answer, timeout_seconds=None))}
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
