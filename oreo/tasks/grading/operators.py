"""Rule 3 of MATH grading: the operators an answer holds that the gold answer has evaluated away."""

from __future__ import annotations

import re

from .notation import _expand_shorthand, _light

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
    """The operators that the answer holds and the gold answer has evaluated away (see the package
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
