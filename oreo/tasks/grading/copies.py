"""Rule 2 of MATH grading: whether an answer is a copy of a span of the problem statement."""

from __future__ import annotations

import re

from .notation import _expand_shorthand, _light, _rhs, _unwrap, normalize_math_answer

# A number, a letter or a parenthesised group to the power 1/n: the n-th root, as a radical.
_UNIT_ROOT_RE = re.compile(r"((?<![\d.])\d+|(?<![a-zA-Z\\])[a-zA-Z]|\([^()]*\))\s*\^\s*"
                           r"(?:\{\s*(?:1\s*/\s*(\d+)|\\frac\s*\{\s*1\s*\}\s*\{\s*(\d+)\s*\}|(0\.5))\s*\}"
                           r"|\\frac\s*\{\s*1\s*\}\s*\{\s*(\d+)\s*\})")


def _radical(m: re.Match) -> str:
    base = m.group(1)[1:-1] if m.group(1).startswith("(") else m.group(1)
    n = next(g for g in m.groups()[1:] if g is not None)
    return "\\sqrt{" + base + "}" if n in ("2", "0.5") else "\\sqrt[" + n + "]{" + base + "}"


def _span_form(text: str) -> str:
    s = _expand_shorthand(_light(text, units=False, connectives=False))
    s = _UNIT_ROOT_RE.sub(_radical, s)  # "50^{1/2}" copies "\\sqrt{50}", "8^{1/3}" copies "\\sqrt[3]{8}"
    s = re.sub(r"([_^])\s*\{\s*([a-zA-Z0-9])\s*\}", r"\1\2", s)
    s = re.sub(r"\\times(?![a-zA-Z])", r"\\cdot", s)
    return s.replace("{,}", "")


def _squeeze(s: str) -> tuple[str, list[bool]]:
    """``s`` without spaces, and for each character whether a space stood before it."""
    chars, gaps, gap = [], [], False
    for c in s:
        if c.isspace():
            gap = True
            continue
        chars.append(c)
        gaps.append(gap)
        gap = False
    gaps.append(gap)
    return "".join(chars), gaps


def _whole_tokens(text: str, gaps: list[bool], i: int, j: int) -> bool:
    """Whether ``text[i:j]`` neither starts nor ends inside a number, word or command name."""
    first, last = text[i], text[j - 1]
    if i > 0 and not gaps[i]:
        before = text[i - 1]
        if (first.isdigit() or first == ".") and (before.isdigit() or before == "."):
            return False
        if first.isalpha() and (before.isalpha() or before == "\\"):
            return False
    if j < len(text) and not gaps[j]:
        after = text[j]
        if last.isdigit() and (after.isdigit() or (after == "." and text[j + 1:j + 2].isdigit())):
            return False
        if last.isalpha() and after.isalpha():
            return False
    return True


def _is_copy(answer: str, problem: str) -> bool:
    """Whether ``answer`` (up to notation and wrapping braces or parentheses) is a span of the
    problem statement, starting and ending at whole numbers, words and commands."""
    text, gaps = _squeeze(_span_form(problem))
    forms = set()
    for form in (answer, normalize_math_answer(answer)):
        squeezed = _squeeze(_span_form(form))[0].rstrip(".,;:")
        forms |= {squeezed, _rhs(squeezed), _unwrap(squeezed), _unwrap(_rhs(squeezed))}
    for form in forms:
        if not form:
            continue
        i = text.find(form)
        while i >= 0:
            if _whole_tokens(text, gaps, i, i + len(form)):
                return True
            i = text.find(form, i + 1)
    return False
