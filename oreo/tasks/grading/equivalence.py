"""MATH grading as a whole: :func:`math_equal` applies the rules of the package docstring in order, the
symbolic check in a worker process last; :func:`grade_math` grades a response by its boxed answer.
"""

from __future__ import annotations

import logging

from .boxed import extract_boxed
from .copies import _is_copy
from .hedges import _hedged
from .notation import _same_as_written
from .operators import _unevaluated
from .rewrites import _symbolic_form, _uses_letter_e, _verify_input
from .sandbox import _pool

logger = logging.getLogger("oreo.grading")

DEFAULT_TIMEOUT = 5.0


def math_equal(answer: str, gold: str, timeout: float = DEFAULT_TIMEOUT, problem: str | None = None) -> bool:
    """Whether the LaTeX ``answer`` is equivalent to the LaTeX ``gold`` answer (for the problem
    ``problem``, when given).

    In order: the answer as the gold answer is written (equal :func:`normalize_math_answer`
    strings, also when one side is a single-letter assignment such as ``x=3`` whose right side
    matches, or wrapped in braces) is equivalent without further work; a copy of a span of
    ``problem`` is not; nor is an answer with an operator the gold answer has evaluated away (see
    the package docstring); otherwise, after the rewrites of the package docstring, math-verify's
    symbolic comparison (gold first: it is not symmetric) decides, in a worker process, within
    ``timeout`` seconds (plus a 1 s grace to kill a stuck worker; starting a worker the first time
    is not counted). A timeout or grader error is logged and gives False. Thread-safe: concurrent
    calls use up to one worker each (at most ``os.cpu_count()``).
    """
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if not answer.strip() or not gold.strip():
        return False
    if _same_as_written(answer, gold):
        return True
    if problem and _is_copy(answer, problem):
        return False
    if _unevaluated(answer, gold) or _hedged(answer, gold):
        return False
    e_notation = not (_uses_letter_e(gold) or _uses_letter_e(answer))
    answer_form, gold_form = _symbolic_form(answer, e_notation), _symbolic_form(gold, e_notation)
    if _same_as_written(answer_form, gold_form):
        return True
    return _symbolic_equal(gold_form, answer_form, timeout)


def grade_math(response: str, gold: str, timeout: float = DEFAULT_TIMEOUT,
               problem: str | None = None) -> tuple[str | None, bool]:
    """``(last boxed answer of the response, whether it is equivalent to gold)``.

    ``gold`` is a MATH gold answer such as :func:`math_gold` returns; ``problem``, the problem
    statement, lets the grader tell an answer from a copy of the question. A response without a
    boxed answer grades ``(None, False)``. See :func:`math_equal` for the comparison and ``timeout``.
    """
    answer = extract_boxed(response)
    if answer is None:
        return None, False
    return answer, math_equal(answer, gold, timeout, problem=problem)


def _symbolic_equal(gold: str, answer: str, timeout: float) -> bool:
    request = {"gold": _verify_input(gold), "answer": _verify_input(answer), "timeout": timeout}
    reply = _pool().ask(request, timeout)
    if "equal" in reply:
        return bool(reply["equal"])
    logger.warning("math grading %s (gold %r, answer %.200r): graded wrong",
                   reply.get("error", "failed"), gold, answer)
    return False
