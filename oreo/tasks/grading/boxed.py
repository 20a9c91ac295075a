"""MATH answers out of text: the last ``\\boxed{...}`` of a response, and the gold answer of a record."""

from __future__ import annotations

import re

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
