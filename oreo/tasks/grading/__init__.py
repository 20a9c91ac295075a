"""Answer extraction and grading for GSM8K and MATH.

GSM8K answers are numbers: the response's final ``#### X`` line when it has one, otherwise its
last number, compared exactly as decimals (``"1,234"``, ``"$1234.00"`` and ``"1234."`` are equal).

Digits of other scripts are the number they spell, in GSM8K and MATH answers alike: every Unicode
decimal digit (category Nd: fullwidth ``４２``, Arabic-Indic ``٤٢``) is read as its ASCII digit
before anything else, because it is the same number in another script (Python's ``\\d`` and
``Decimal`` read them too, so refusing them would take a rule of its own); superscripts and
vulgar fractions are no digits (``²`` is ``^2``, ``½`` is ``\\frac{1}{2}``).

MATH answers are LaTeX: the content of the response's last ``\\boxed{...}`` (or ``\\fbox{...}``,
or ``\\boxed X``) is compared with the gold answer. RL optimises whatever the grader rewards, so
the grader rewards answers, not restatements of the question. In order:

1. **The gold answer as written** is correct: equal normalised strings (spacing, ``\\dfrac``,
   ``\\left``, degrees, percent signs, dollar signs, ``x=`` prefixes, thousands separators, choice
   letters, unicode signs such as ``∞`` and ``−``, braces around the whole, and a unit: a trailing
   ``\\text{...}`` after the answer that holds words, no digit, no "or"/"and", does not start with
   an operator word such as "squared" or "times", and starts with a space or a word of two letters
   or more: ``15\\text{ dollars}``, ``15\\text{dollars}`` and ``5\\,\\mathrm{cm}^2`` are ``15`` and
   ``5``; ``15 \\text{ dollars and } 3``, ``3\\text{ squared}`` and ``2\\mathrm{e}`` are not).
2. **A copy of the question** is wrong. Given the problem statement (``problem=``; the MATH task
   passes it), an answer that is a span of the statement (up to that same notation, starting and
   ending at whole numbers, words and commands) is wrong unless it is the gold answer as written:
   ``\\binom{10}{5}`` for "Compute $\\dbinom{10}{5}$", ``0.\\overline{54}`` for "Express
   $0.\\overline{54}$ as a fraction", ``3/8`` for "Write 3/8 as a decimal".
3. **An operator the gold answer has evaluated away** makes the answer wrong, problem or not.
   Operators are: binomials (``\\binom``, ``\\choose``), factorials (``!``), logarithms, trigonometric
   functions, sums, products, integrals, limits, roots (also a power whose exponent is a fraction
   or decimal number: ``2^{1/2}`` and ``3^{\\frac13}`` are roots, like ``\\sqrt{2}`` and
   ``\\sqrt[3]{3}``), powers (``^``, ``\\exp``), ``mod``, floors and ceilings, absolute values,
   functions such as ``\\gcd`` and ``\\max``, and ``+``/binary
   ``-``/``\\pm``: the answer may hold one only if the gold answer holds one of the same kind
   (``2^{10}`` may be ``4^5``, ``1024`` may not be ``2^{10}``; ``\\cot x`` may be
   ``\\frac{\\cos x}{\\sin x}``). When the gold answer is a constant (no variables), products
   (``\\times``, ``\\cdot``, juxtaposition) and divisions (``\\frac`` of non-numbers, ``/``,
   ``\\div``) count too, and are allowed when the gold answer has a product, a division, or a
   fraction or decimal beside some other operator (``\\frac{3}{2}\\pi`` may be
   ``\\frac{3\\pi}{2}``); when it has variables they are free (forms of an expression differ in
   them). Number literals are no operators: a fraction of numbers (``\\frac{2}{4}`` for
   ``\\frac12``), a mixed number, a decimal, a repeating decimal, scientific notation
   (``6.72\\times10^{-5}``, ``6.72e-5``, also a bare power of ten ``10^3``). The rule sees kinds of
   operators, not structure: rewriting a copy with operators the gold answer keeps (``\\sqrt{50}``
   for ``5\\sqrt2``, a factored form for an expanded one) is caught only by rule 2, which reads a
   number, letter or group to the power ``1/n`` as the radical (``50^{1/2}`` copies ``\\sqrt{50}``).
4. **Equivalence.** Both sides are rewritten, then math-verify's symbolic check decides (fractions
   vs decimals, intervals, tuples, sets, matrices, equations, radicals, ...). The rewrites: an
   inequality in one variable with constant bounds is an interval (``-2\\le x<7`` is ``[-2,7)``;
   "or" joins a union, "and" of two one-sided bounds an interval); a repeating decimal is a
   fraction (``0.\\overline{3}``, ``0.1\\bar{6}``, ``0.(3)``, ``0.333\\ldots``); E-notation is
   ``\\times10^{k}`` (``6.72e-5``; not when either side uses the constant ``e``); unicode signs are
   LaTeX; the words "or" and "and" join a list (``3 or 5`` is the list ``3, 5``, which is not
   ``3``: text that holds a digit or a connective is never a unit); a terminating decimal is the
   exact fraction it writes (``0.3333333`` is ``\\frac{3333333}{10^7}``). So **a decimal equals a
   gold answer only if it is exactly its value**: ``0.5`` is ``\\frac12``, ``0.3333333`` is not
   ``\\frac13`` (``0.\\overline{3}`` is), ``3.1416`` is not ``\\pi``. math-verify alone would
   accept them: it compares a float with any number rounded to 6 places. A gold answer that is
   itself a decimal is a value too: ``0.33`` is matched by ``0.330`` and ``\\frac{33}{100}``, not
   by ``0.333`` or ``\\frac13``, nor ``3.14`` by ``3.1416``. MATH writes a rounded gold answer
   when the problem asks for rounding ("to the nearest hundredth"), and then the answer must be
   rounded as asked: a more precise answer that rounds to it is wrong, because an exact decimal
   gold (``0.5``) cannot be told from a rounded one (``0.54`` must not round to ``0.5``).

Model output is untrusted: nothing here evaluates it as Python. math-verify is asked for LaTeX
extraction only: its expression extraction, which hands plain text to SymPy's ``parse_expr`` (an
``eval`` of the text turned into Python), is not configured, and in the worker ``parse_expr`` is
replaced in math-verify and latex2sympy2_extended by a function that refuses. What remains turns
text into SymPy through latex2sympy2_extended's ANTLR grammar, which builds SymPy objects node by
node (``Symbol``, ``Integer``, ``Add``, ...) and never parses a string as Python. The symbolic
check runs in a worker process with a time limit, so an answer that makes SymPy hang
(``9^{9^{9^{9}}}``) costs at most the limit, from any thread: a grader error or timeout is logged on
the ``oreo.grading`` logger and grades wrong, and never raises into the caller. Rules 1 to 3 and
the rewrites are linear-time string work in the caller.

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
import unicodedata
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
# counts only where it cannot be a binary minus ("12-5" ends with 5, not -5). ASCII digits only:
# other scripts' digits are made ASCII first (_ascii_digits).
_NUMBER_RE = re.compile(
    r"(?P<sign>(?<![\w)\]}])-)?(?:\$\s?)?(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?P<frac>\.[0-9]+)?"
)


def _ascii_digits(text: str) -> str:
    """``text`` with every Unicode decimal digit (category Nd: fullwidth ``４``, Arabic-Indic ``٤``,
    Devanagari ``४``, ...) written as the ASCII digit of the same value. Superscripts and other
    numerals that are no decimal digits (``²``, ``½``, ``Ⅳ``) are left as they are."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() or unicodedata.decimal(c, None) is None else str(unicodedata.decimal(c))
                   for c in text)


def _numbers(text: str) -> list[str]:
    out = []
    for m in _NUMBER_RE.finditer(text):
        sign = "-" if m.group("sign") else ""
        out.append(sign + m.group("int").replace(",", "") + (m.group("frac") or ""))
    return out


def extract_gsm8k_answer(text: str) -> str | None:
    """The model's final number, as plain digits (``"-1234.50"``), or None if it has none.

    The first number after the last ``####`` wins when there is one; otherwise the last number
    of the text. Commas between digit groups, a ``$`` and a trailing period are dropped; digits of
    other scripts are read as the ASCII digits they are (``"#### ４２"`` gives ``"42"``).
    """
    text = _ascii_digits(text)
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
    such as ``\\text{ cm}^2`` or ``\\text{dollars}`` (see the module docstring), a trailing period, thousands
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


# ------------------------------------------------------------------------- copies of the problem


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


# ------------------------------------------------------------------------- unevaluated operators

# Number literals, each one "#" for the operator check: E-notation, scientific notation (also a
# bare power of ten), repeating decimals, mixed numbers, fractions of numbers, numbers.
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_LITERAL_RES = [re.compile(p) for p in (
    rf"(?<![\w.\\]){_NUM}[eE][-+]?\d+(?![\w.])",
    rf"(?<![\d.]){_NUM}\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*(?:\{{\s*[-+]?\s*\d+\s*\}}|[-+]?\d)",
    r"(?<![\w.}^_])10\s*\^\s*(?:\{\s*[-+]?\s*\d+\s*\}|\d)",
    r"(?<![\d.])\d*\.\d*\s*\\(?:overline|bar|dot)\s*(?:\{\s*\d+\s*\}|\d)",
    r"(?<![\d.])\d*\.\d*\(\d+\)",
    r"(?<![\d.])\d*\.\d+\s*(?:\\ldots|\\cdots|\\dots|\.\.\.)",
    r"(?<![\w.}])\d+\s*\\frac\s*\{\s*\d+\s*\}\s*\{\s*\d+\s*\}",
    rf"\\frac\s*\{{\s*-?\s*{_NUM}\s*\}}\s*\{{\s*-?\s*{_NUM}\s*\}}",
    r"(?<![\w.)}^_])\d+\s*/\s*\d+(?![\w.(])",
    _NUM,
)]
# A power whose exponent is a fraction or decimal number is a root: "2^{1/2}", "3^{\\frac{1}{3}}",
# "x^{-3/2}", "2^{0.5}" hold a root ("sqrt" below), not a power.
_ROOT_POWER_RE = re.compile(r"\^\s*(?:\{\s*-?\s*(?:\d+\s*/\s*\d+|\\frac\s*\{\s*-?\s*\d+\s*\}\s*\{\s*\d+\s*\}"
                            r"|\d*\.\d+)\s*\}|\\frac\s*\{\s*\d+\s*\}\s*\{\s*\d+\s*\})")
_TOKEN_RE = re.compile(r"\\[a-zA-Z]+|\\.|#|[a-zA-Z]|\S")
_TRIG = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "arccot", "arcsec",
         "arccsc", "sinh", "cosh", "tanh", "coth"}
_OPERATOR_COMMANDS = {
    **{name: "binom" for name in ("binom", "choose")},
    **{name: "log" for name in ("log", "ln", "lg")},
    **{name: "trig" for name in _TRIG},
    "sum": "sum", "prod": "prod", "lim": "lim",
    **{name: "int" for name in ("int", "iint", "iiint", "oint")},
    "sqrt": "sqrt", "root": "sqrt", "exp": "pow",
    **{name: "mod" for name in ("mod", "bmod", "pmod")},
    **{name: "floor" for name in ("lfloor", "rfloor", "lceil", "rceil", "floor", "ceil")},
    **{name: "abs" for name in ("lvert", "rvert", "vert", "mid", "|", "lVert", "rVert", "Vert")},
    **{name: "function" for name in ("max", "min", "gcd", "det", "deg", "operatorname", "sup", "inf",
                                     "arg", "lcm")},
    "pm": "add", "mp": "add",
    **{name: "mul" for name in ("times", "cdot", "ast")},
    **{name: "div" for name in ("div", "over", "frac")},
}
_OPERATOR_WORDS = re.compile(r"(?<![a-zA-Z\\])(gcd|lcm|mod|max|min|log|ln|sin|cos|tan|sqrt|binom|choose)"
                             r"(?![a-zA-Z])")
_WORD_KINDS = {"gcd": "function", "lcm": "function", "max": "function", "min": "function", "mod": "mod",
               "log": "log", "ln": "log", "sin": "trig", "cos": "trig", "tan": "trig", "sqrt": "sqrt",
               "binom": "binom", "choose": "binom"}
# Commands that start an operand ("2\\sqrt{3}" is a product), unlike binary ones (\\div, \\bmod).
_PREFIX_KINDS = {"binom", "log", "trig", "sum", "prod", "lim", "int", "sqrt", "function"}
_PREFIX_COMMANDS = {"frac", "exp", "lfloor", "lceil", "floor", "ceil"}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta",
          "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi",
          "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Phi", "Psi",
          "Omega", "ell"}
_SYMBOLS = _GREEK | {"pi", "infty", "hbar", "emptyset", "varnothing"}
# Operators that evaluate something: never in an answer unless in the gold answer.
_EVALUATING = {"binom", "factorial", "log", "trig", "sum", "prod", "int", "lim", "sqrt", "pow", "mod",
               "floor", "abs", "function", "add"}


def _operand_end(token: str) -> bool:
    return (token == "#" or token.isalpha() or token in (")", "]", "}", "!")
            or (token.startswith("\\") and token[1:] in _SYMBOLS))


def _operand_start(token: str) -> bool:
    name = token[1:] if token.startswith("\\") else None
    if name is None:
        return token == "#" or token.isalpha() or token == "("
    return (name in _SYMBOLS or name in _PREFIX_COMMANDS
            or (_OPERATOR_COMMANDS.get(name) in _PREFIX_KINDS and name != "choose"))


def _operators(text: str) -> tuple[set[str], bool, bool]:
    """The kinds of operators in an answer (number literals are not operators), whether it is a
    constant (no variables, no words), and whether it holds a fraction or a decimal number."""
    s = _expand_shorthand(_light(text))
    s = re.sub(r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)\s*=(?![=<>])", "", s)  # "x = 3": the right side
    s = re.sub(r"\\begin\s*\{[^{}]*\}", "(", s)
    s = re.sub(r"\\end\s*\{[^{}]*\}", ")", s)
    s = s.replace("\\\\", ",").replace("&", ",")
    kinds = {_WORD_KINDS[m.group(1)] for m in _OPERATOR_WORDS.finditer(s)}
    s, roots = _ROOT_POWER_RE.subn("", s)  # "2^{1/2}" is the root "2" (a root of 2, not a power)
    if roots:
        kinds.add("sqrt")
    has_fraction = bool(re.search(r"\\frac|/|\d\.\d|\.\d", s))
    for pattern in _LITERAL_RES:
        s = pattern.sub(" # ", s)
    tokens = _TOKEN_RE.findall(s)
    constant = True
    for k, token in enumerate(tokens):
        before = tokens[k - 1] if k else None
        after = tokens[k + 1] if k + 1 < len(tokens) else None
        if token.isalpha() and token not in ("e", "i"):
            constant = False
        elif token.startswith("\\") and token[1:] in _GREEK:
            constant = False
        if token.startswith("\\") and token[1:] in _OPERATOR_COMMANDS:
            kinds.add(_OPERATOR_COMMANDS[token[1:]])
        elif token in ("+", "-"):
            if before is not None and _operand_end(before):
                kinds.add("add")
        elif token in ("*", "×"):
            kinds.add("mul")
        elif token == "/":
            kinds.add("div")
        elif token == "^":
            kinds.add("pow")
        elif token == "|":
            kinds.add("abs")
        elif token == "!" and after != "=":
            kinds.add("factorial")
        if before is not None and _operand_end(before) and _operand_start(token):
            kinds.add("mul")
    return kinds, constant, has_fraction


def _unevaluated(answer: str, gold: str) -> set[str]:
    """The operators that the answer holds and the gold answer has evaluated away (see the module
    docstring); empty when there are none."""
    found, _, _ = _operators(answer)
    gold_kinds, constant, has_fraction = _operators(gold)
    allowed = set(gold_kinds)
    if not constant:
        allowed |= {"mul", "div"}  # "\\cot x" is "\\frac{\\cos x}{\\sin x}"
    elif gold_kinds:
        if "div" in gold_kinds or has_fraction:
            allowed |= {"mul", "div"}  # "\\frac{3}{2}\\pi" is "\\frac{3\\pi}{2}" and "1.5\\pi"
    checked = found if constant else found & _EVALUATING
    return checked - allowed


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


# ------------------------------------------------------------------- rewrites before the SymPy check

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


def math_equal(answer: str, gold: str, timeout: float = DEFAULT_TIMEOUT, problem: str | None = None) -> bool:
    """Whether the LaTeX ``answer`` is equivalent to the LaTeX ``gold`` answer (for the problem
    ``problem``, when given).

    In order: the answer as the gold answer is written (equal :func:`normalize_math_answer`
    strings, also when one side is a single-letter assignment such as ``x=3`` whose right side
    matches, or wrapped in braces) is equivalent without further work; a copy of a span of
    ``problem`` is not; nor is an answer with an operator the gold answer has evaluated away (see
    the module docstring); otherwise, after the rewrites of the module docstring, math-verify's
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
