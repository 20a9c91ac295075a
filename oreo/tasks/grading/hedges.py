"""MATH grading: whether an answer offers alternatives ("3 or 5") where the gold answer is one item."""

from __future__ import annotations

import re

from .notation import _light
from .rewrites import _RELATION_RE

_WORD_JOIN_RE = re.compile(r"(?<![a-zA-Z\\])(?:or|and)(?![a-zA-Z])")


def _top_level_items(text: str) -> int:
    depth, items = 0, 1
    for c in _light(text):
        depth += c in "([{"
        depth -= c in ")]}"
        items += c == "," and depth == 0
    return items


def _hedged(answer: str, gold: str) -> bool:
    """Whether the answer offers alternatives ("3 or 5", "1 and 1") where the gold answer is one
    item; an inequality joined by "and"/"or" is left to the interval rewrite."""
    light = _light(answer, connectives=False)
    return (_WORD_JOIN_RE.search(light) is not None and _RELATION_RE.search(light) is None
            and "\\pm" not in gold and _top_level_items(gold) == 1)
