"""Rule 4 of MATH grading, the rewrites before the symbolic check: the text given to math-verify
(inequalities as intervals, repeating decimals as fractions, E-notation as powers of ten, terminating
decimals as exact fractions).
"""

from __future__ import annotations

import re

from .notation import _CONNECTIVE_RE, _PERCENT_RE, _SPACING_RE, _THOUSANDS_RE, _light, _unicode
from .operators import _GREEK

_RELATION_RE = re.compile(r"((?:\\leqslant|\\geqslant|\\leq|\\geq|\\le|\\ge|\\lt|\\gt|\\neq|\\ne)(?![a-zA-Z])"
                          r"|<=|>=|!=|<|>)")
_JOINER_RE = re.compile(r"((?<![a-zA-Z\\])(?:or|and)(?![a-zA-Z])|\\cup|\\cap|\\lor|\\land|\\vee|\\wedge)")
_VARIABLE_RE = re.compile(r"[a-zA-Z]|\\(?:" + "|".join(sorted(_GREEK - {"Pi"})) + r")")
_LESS = {"<": False, "\\lt": False, "\\le": True, "\\leq": True, "\\leqslant": True, "<=": True}
_FLIPPED = {"<": ">", ">": "<", "\\lt": "\\gt", "\\gt": "\\lt", "<=": ">=", ">=": "<=", "\\le": "\\ge",
            "\\ge": "\\le", "\\leq": "\\geq", "\\geq": "\\leq", "\\leqslant": "\\geqslant",
            "\\geqslant": "\\leqslant"}
_MORE = {">": False, "\\gt": False, "\\ge": True, "\\geq": True, "\\geqslant": True, ">=": True}


def _is_constant(expr: str) -> bool:
    rest = re.sub(r"\\(?:frac|sqrt|pi|infty|cdot|times)(?![a-zA-Z])", "", expr)
    return bool(expr.strip()) and not re.search(r"[a-zA-Z\\=<>]", rest)


def _inequality(piece: str) -> tuple[str, list[tuple]] | None:
    """``(variable, intervals)`` of an inequality in one variable with constant bounds, else None.
    An interval is ``(low, low closed, high, high closed)``; None is an infinite end."""
    parts = [p.strip() for p in _RELATION_RE.split(piece.strip().rstrip("."))]
    if len(parts) == 3:
        left, rel, right = parts
        if _VARIABLE_RE.fullmatch(left) and _is_constant(right):
            var, bound = left, right
        elif _VARIABLE_RE.fullmatch(right) and _is_constant(left):
            var, bound = right, left
            rel = _FLIPPED.get(rel, rel)
        else:
            return None
        if rel in _LESS:
            return var, [(None, False, bound, _LESS[rel])]
        if rel in _MORE:
            return var, [(bound, _MORE[rel], None, False)]
        if rel in ("\\ne", "\\neq", "!="):
            return var, [(None, False, bound, False), (bound, False, None, False)]
        return None
    if len(parts) == 5:
        low, rel1, var, rel2, high = parts
        if not (_VARIABLE_RE.fullmatch(var) and _is_constant(low) and _is_constant(high)):
            return None
        if rel1 in _LESS and rel2 in _LESS:
            return var, [(low, _LESS[rel1], high, _LESS[rel2])]
        if rel1 in _MORE and rel2 in _MORE:
            return var, [(high, _MORE[rel2], low, _MORE[rel1])]
    return None


def _interval_form(text: str) -> str | None:
    """An inequality (or a union of them with "or", or two one-sided ones with "and") in one
    variable as interval notation: ``-2 \\le x < 7`` is ``[-2,7)``, ``x<-2 or x>3`` is
    ``(-\\infty,-2)\\cup(3,\\infty)``; None for anything else."""
    s = _light(text, connectives=False)
    if not _RELATION_RE.search(s) or len(s) > 500:
        return None
    pieces = _JOINER_RE.split(s)
    parsed = [_inequality(p) for p in pieces[::2]]
    if any(p is None for p in parsed) or len({var for var, _ in parsed}) != 1:
        return None
    joiners = {"and" if j in ("and", "\\cap", "\\land", "\\wedge") else "or" for j in pieces[1::2]}
    intervals = [i for _, found in parsed for i in found]
    if joiners == {"and"}:
        if len(intervals) != 2:
            return None
        (lo1, lc1, hi1, hc1), (lo2, lc2, hi2, hc2) = intervals
        if lo1 is not None and hi1 is None and lo2 is None and hi2 is not None:
            intervals = [(lo1, lc1, hi2, hc2)]
        elif lo2 is not None and hi2 is None and lo1 is None and hi1 is not None:
            intervals = [(lo2, lc2, hi1, hc1)]
        else:
            return None
    elif len(joiners) > 1:
        return None
    return "\\cup ".join(("[" if lc else "(") + (lo or "-\\infty") + "," + (hi or "\\infty")
                         + ("]" if hc else ")") for lo, lc, hi, hc in intervals)


_REPEATING_RES = [
    re.compile(r"(?<![\d.])(-?)(\d*)\.(\d*)\s*\\(?:overline|bar|dot)\s*(?:\{\s*(\d+)\s*\}|(\d))"),
    re.compile(r"(?<![\d.])(-?)(\d*)\.(\d*)\((\d+)\)()"),
]
_ELLIPSIS_RE = re.compile(r"(?<![\d.])(-?)(\d*)\.(\d+)\s*(?:\\ldots|\\cdots|\\dots|\.\.\.)")


def _fraction(sign: str, whole: str, fixed: str, repeating: str) -> str:
    from fractions import Fraction

    digits = (whole or "0") + fixed
    value = Fraction(int(digits + repeating) - int(digits), 10 ** len(fixed) * (10 ** len(repeating) - 1))
    if value.denominator == 1:
        return f"{sign}{value.numerator}"
    return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _repeating_as_fraction(s: str) -> str:
    """``0.\\overline{3}``, ``0.1\\bar{6}``, ``0.(3)`` and ``0.333\\ldots`` as fractions."""
    for pattern in _REPEATING_RES:
        s = pattern.sub(lambda m: _fraction(m.group(1), m.group(2), m.group(3), m.group(4) or m.group(5))
                        if len(m.group(4) or m.group(5)) <= 30 and len(m.group(2) + m.group(3)) <= 30
                        else m.group(0), s)

    def ellipsis(m: re.Match) -> str:
        decimals = m.group(3)
        if len(decimals) > 60:
            return m.group(0)
        for start in range(len(decimals)):
            tail = decimals[start:]
            for period in range(1, len(tail) // 2 + 1):
                repeated = (tail[:period] * (len(tail) // period + 1))[:len(tail)]
                if tail == repeated and len(tail) >= 2 * period:
                    return _fraction(m.group(1), m.group(2), decimals[:start], tail[:period])
        return m.group(0)

    return _ELLIPSIS_RE.sub(ellipsis, s)


_E_NOTATION_RE = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)[eE]\+?(-?\d+)(?![\w.])")


def _uses_letter_e(text: str) -> bool:
    rest = _E_NOTATION_RE.sub("", _light(text))
    return re.search(r"(?<![a-zA-Z\\])e(?![a-zA-Z])", rest) is not None


# A terminating decimal, not one right after "digit," ("1,234.5": math-verify reads thousands there).
_DECIMAL_RE = re.compile(r"(?<![\w.])(?<!\d,)(?<!\{,\})(\d*)\.(\d+)(?!\d|\.\d)")


def _exact_decimals(s: str) -> str:
    """Terminating decimals as exact fractions in braces: ``0.3333333`` is
    ``{\\frac{3333333}{10000000}}``, so that math-verify, which compares a float with any number
    rounded to 6 places, compares exact values (``0.3333333`` is not ``\\frac13``)."""
    if _THOUSANDS_RE.fullmatch(s.strip()):
        s = s.replace(",", "")
    return _DECIMAL_RE.sub(lambda m: "{\\frac{" + ((m.group(1) + m.group(2)).lstrip("0") or "0") + "}{1"
                           + "0" * len(m.group(2)) + "}}", s)


def _symbolic_form(text: str, e_notation: bool) -> str:
    """The text given to math-verify: unicode signs as LaTeX, an inequality as an interval,
    connectives as commas, repeating decimals as fractions, E-notation as ``\\times10^{k}``,
    terminating decimals as exact fractions."""
    interval = _interval_form(text)
    if interval is not None:
        return _exact_decimals(interval)
    s = re.sub(r"\s+", " ", _unicode(text))
    s = _SPACING_RE.sub(" ", s)
    s = re.sub(r"\\(?:text|textrm|mbox|mathrm)\{([^{}]*(?<![a-zA-Z])(?:or|and)(?![a-zA-Z])[^{}]*)\}",
               r" \1 ", s)
    s = _CONNECTIVE_RE.sub(", ", s)
    s = re.sub(r"(?:\s*,){2,}", ",", s).strip(" ,")
    s = _repeating_as_fraction(s)
    if e_notation:
        s = _E_NOTATION_RE.sub(r"\1\\times10^{\2}", s)
    return _exact_decimals(s)


def _verify_input(answer: str) -> str:
    # math-verify reads "50\%" as an unparsed string: MATH's percent answers mean the number.
    return "\\boxed{" + _PERCENT_RE.sub("", answer) + "}"
