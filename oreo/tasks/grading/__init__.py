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

The modules, one job each: ``digits`` (digits of other scripts, for GSM8K and MATH alike),
``gsm8k``, ``boxed`` (MATH answers out of text), ``notation`` (rule 1), ``copies`` (rule 2),
``operators`` (rule 3), ``hedges`` (alternatives such as ``3 or 5`` for one gold item), ``rewrites``
(the rewrites of rule 4), ``sandbox`` (math-verify restricted, in worker processes) and
``equivalence`` (:func:`math_equal` and :func:`grade_math`: the rules in order). They import each
other relatively and nothing else of oreo, so a copy of the package from another git revision loads
on its own (``experiments/grader_gaming.py --ref``).
"""

from __future__ import annotations

from .boxed import extract_boxed, math_gold
from .equivalence import DEFAULT_TIMEOUT, grade_math, math_equal
from .gsm8k import GSM8K_ANSWER_PREFIX as GSM8K_ANSWER_PREFIX
from .gsm8k import extract_gsm8k_answer, grade_gsm8k, gsm8k_gold
from .notation import normalize_math_answer
from .sandbox import KILL_GRACE as KILL_GRACE
from .sandbox import WORKER_MEMORY_LIMIT as WORKER_MEMORY_LIMIT
from .sandbox import WORKER_START_TIMEOUT as WORKER_START_TIMEOUT

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
