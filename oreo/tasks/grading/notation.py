"""Rule 1 of MATH grading, the gold answer as written: notation made uniform (spacing, ``\\dfrac``,
units, unicode signs, ...) and compared as strings (:func:`normalize_math_answer`,
``_same_as_written``). The other rules read answers through the same first steps (``_light``).
"""

from __future__ import annotations

import re

from .digits import _ascii_digits

_SPACING_RE = re.compile(r"(?<!\\)\\[!,;: ]|\\q?quad(?![a-zA-Z])|~")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PERCENT_RE = re.compile(r"\\?%")
# A unit: a text command at the end, after something, whose content starts with a space or with
# a word of two letters or more, and holds no digit, no connective and does not start with an
# operator word ("5\text{ cm}^2", "15\text{dollars}"; not "3\text{ or 5}", "3\text{ squared}",
# "2\mathrm{e}", nor a whole answer "\text{odd}").
_OPERATOR_WORD = r"(?:squared|cubed|times|plus|minus|over|divided|factorial|choose|mod|to)(?![a-zA-Z])"
_UNIT_RE = re.compile(r"(?<=\S)\s*\\(?:text|textrm|mbox|mathrm)\{(?=\s|[a-zA-Z]{2})(?!\s*" + _OPERATOR_WORD + r")"
                      r"(?![^{}]*(?<![a-zA-Z])(?:or|and)(?![a-zA-Z]))[^{}\d]*\}(?:\^\{?\d\}?)?\s*\.?\s*$")
_TEXT_RE = re.compile(r"\\(?:text|textrm|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "3 or 5", "19 and 43", "7, -2, and -5": alternatives and lists become comma lists.
_CONNECTIVE_RE = re.compile(r"\s*,?\s*(?<![a-zA-Z\\])(?:or|and)(?![a-zA-Z])\s*,?\s*")
_UNICODE = {
    "∞": r"\infty ", "−": "-", "–": "-", "—": "-", "×": r"\times ", "·": r"\cdot ", "⋅": r"\cdot ",
    "÷": r"\div ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ", "π": r"\pi ", "…": r"\ldots ",
    "∪": r"\cup ", "∩": r"\cap ", "±": r"\pm ", "∓": r"\mp ", "∈": r"\in ", "θ": r"\theta ",
    "²": "^2", "³": "^3", "½": r"\frac{1}{2}", "¼": r"\frac{1}{4}", "¾": r"\frac{3}{4}",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_ROOT_SIGN_RE = re.compile(r"√\s*(?:\(([^()]*)\)|\{([^{}]*)\}|(\d+(?:\.\d+)?|[a-zA-Z]))?")


def _unicode(text: str) -> str:
    """Unicode math signs as LaTeX: ``∞`` is ``\\infty``, ``−`` is ``-``, ``√2`` is ``\\sqrt{2}``;
    digits of other scripts as ASCII digits (``４２`` is ``42``)."""
    text = _ROOT_SIGN_RE.sub(
        lambda m: "\\sqrt{" + next((g for g in m.groups() if g is not None), "") + "}"
        if any(g is not None for g in m.groups()) else "\\sqrt ", text)
    return _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], _ascii_digits(text))


def _light(text: str, units: bool = True, connectives: bool = True) -> str:
    """Spacing kept (one space), notation made uniform: the shared first steps of every form."""
    s = re.sub(r"\s+", " ", _unicode(text))  # first: no run of spaces for the patterns below
    s = _SPACING_RE.sub(" ", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = re.sub(r"\\[dt](frac|binom)(?![a-zA-Z])", r"\\\1", s)
    s = re.sub(r"\\displaystyle(?![a-zA-Z])", "", s)
    s = _DEGREES_RE.sub("", s)
    s = _PERCENT_RE.sub("", s)
    s = re.sub(r"\\textdollar(?![a-zA-Z])(?:\s*\{\})?", "", s).replace("\\$", "").replace("$", "")
    if units:
        s = _UNIT_RE.sub("", s)
    s = _TEXT_RE.sub(r" \1 ", s)
    if connectives:
        s = _CONNECTIVE_RE.sub(",", s)
        s = re.sub(r"(?:\s*,){2,}", ",", s).strip(" ,")
    return re.sub(r"\s+", " ", s).strip()


def _expand_shorthand(s: str) -> str:
    """``\\frac12`` as ``\\frac{1}{2}``, ``\\sqrt2`` as ``\\sqrt{2}`` (spaces allowed)."""
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", s)
    return re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)


def normalize_math_answer(answer: str) -> str:
    """A canonical string for the fast path of :func:`math_equal`: equal strings are equivalent.

    Reads unicode signs as LaTeX (``∞``, ``−``, ``√``, ``≤``); drops spacing commands,
    ``\\left``/``\\right``, ``$`` and ``\\textdollar``, degree and percent signs, a trailing unit
    such as ``\\text{ cm}^2`` or ``\\text{dollars}`` (see the package docstring), a trailing period, thousands
    separators and all spaces; unwraps ``\\text{...}``; writes the connectives "or" and "and" as
    commas (``3 or 5`` is the list ``3,5``); writes ``\\dfrac12``, ``\\frac12`` and a plain ``1/2``
    as ``\\frac{1}{2}``, ``\\sqrt2`` as ``\\sqrt{2}``, ``.5`` as ``0.5``, ``3.50`` as ``3.5`` and
    ``(A)`` as ``A``.
    """
    s = _light(answer).replace(" ", "").rstrip(".")
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


def _unwrap(s: str) -> str:
    """``s`` without groups that wrap all of it: ``{2}`` and ``(\\binom{4}{2})``, not ``(1,2)``."""
    partner, stack = {}, []
    for k, c in enumerate(s):
        if c in "{(":
            stack.append(k)
        elif c in "})" and stack:
            partner[stack.pop()] = k
    i, j = 0, len(s) - 1
    while (i < j and (s[i], s[j]) in (("{", "}"), ("(", ")")) and partner.get(i) == j
           and not (s[i] == "(" and "," in s[i + 1:j])):
        i, j = i + 1, j - 1
        while i <= j and s[i] == " ":
            i += 1
        while j >= i and s[j] == " ":
            j -= 1
    return s[i:j + 1]


def _same_as_written(answer: str, gold: str) -> bool:
    """Whether the answer is the gold answer as written, up to notation: equal normalised strings,
    also when one side is a single-letter assignment whose right side is the other (``x=3``, ``3``)
    or is wrapped in braces or parentheses (``{2}``)."""
    a, g = normalize_math_answer(answer), normalize_math_answer(gold)
    a_forms, g_forms = {a, _unwrap(a)}, {g, _unwrap(g)}
    return bool({_rhs(x) for x in a_forms} & g_forms or a_forms & {_rhs(x) for x in g_forms}
                or a_forms & g_forms)
