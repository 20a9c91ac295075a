"""How gameable is the MATH grader by copying, and how accurate is it on the hand-written pairs?

    python experiments/grader_gaming.py                 # the grader of this checkout
    python experiments/grader_gaming.py --ref 5ca634f   # the grader of a git revision (before)
    python experiments/grader_gaming.py --no-problem    # this grader, not told the problem text

**Copy gaming.** For every MATH500 problem, the candidate "copy" answers are spans of the problem
statement: each math expression (``$...$``, ``$$...$$``, ``\\[...\\]``, ``\\(...\\)``), its parts
between top-level relations and commas (``=``, ``<``, ``\\le``, ``,`` ...), every run of up to 8
consecutive top-level terms (split at ``+``, ``-``, ``\\cdot``, ``/``, relations), sub-expressions
(``\\binom{..}{..}``, ``n!``, ``\\log_b x``, ``\\frac{..}{..}``, ``\\sqrt{..}``, powers, trig
calls, floors, absolute values, brace and parenthesis groups), and the plain numbers of the text
(``0.5``, ``3/8``). A candidate that is the gold answer as written (equal normalised strings, also
in braces or parentheses or as an assignment: ``{2}`` or ``x = 2`` for ``2``) is left out. A
problem is *gameable* when some remaining candidate, boxed, grades correct. The share is printed
over all 500 problems and over the "compute / evaluate / simplify / what is" problems. With
``--no-problem`` the grader is not told the problem text, so only its operator rule and its
equivalence stand between a copy and a reward.

**Pairs.** ``tests/data/grader_pairs.jsonl`` holds (gold, answer, expected verdict, optional
problem) pairs; the accuracy is the share graded as expected.

``--ref REV`` loads the grader as it was at git revision REV (``git show``: the package
``oreo/tasks/grading/``, or the module ``oreo/tasks/grading.py`` before it was split) into a temporary
folder and grades with it: the old grader is measured without changing the checkout. A grader that has
no ``problem`` parameter is called without it.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "math" / "math500_test.jsonl"
PAIRS = ROOT / "tests" / "data" / "grader_pairs.jsonl"
ASKS_RE = re.compile(r"\b(compute|evaluate|simplify|what is)\b", re.IGNORECASE)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def load_grading(ref: str | None):
    """The grading module of this checkout, or of git revision ``ref``."""
    if ref is None:
        sys.path.insert(0, str(ROOT))
        from oreo.tasks import grading

        return grading
    folder = Path(tempfile.mkdtemp(prefix="grading-"))
    files = git("ls-tree", "--name-only", ref, "oreo/tasks/grading/").split()
    if files:  # the package: its modules import each other relatively, so it loads under another name
        package = folder / "grading_at_ref"
        package.mkdir()
        for name in files:
            (package / Path(name).name).write_text(git("show", f"{ref}:{name}"), encoding="utf-8")
        path, locations = package / "__init__.py", [str(package)]
    else:  # one module, before the split
        path, locations = folder / "grading_at_ref.py", None
        path.write_text(git("show", f"{ref}:oreo/tasks/grading.py"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("grading_at_ref", path, submodule_search_locations=locations)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ copy candidates

_MATH_RE = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$(.+?)(?<!\\)\$", re.DOTALL)
_SPLIT_RE = re.compile(r"\\(?:le|leq|ge|geq|ne|neq|lt|gt|approx|equiv|quad|qquad|text\{[^{}]*\})(?![a-zA-Z])"
                       r"|[=<>,;]")
_COMMAND_ARGS = {  # command -> number of brace arguments
    "binom": 2, "dbinom": 2, "tbinom": 2, "frac": 2, "dfrac": 2, "tfrac": 2, "sqrt": 1,
    "overline": 1, "lfloor": 0, "lceil": 0,
}
_FUNCTIONS = ("log", "ln", "lg", "exp", "sin", "cos", "tan", "cot", "sec", "csc",
              "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "gcd", "operatorname")
_PLAIN_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:/\d+)?(?![\w])")


def _group_end(text: str, start: int, open_: str, close: str) -> int | None:
    """The index after the group that opens at ``text[start]``; None if it does not close."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _argument_end(text: str, i: int) -> int:
    """The end of one TeX argument at ``text[i]`` (spaces first skipped): a group or a token."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return i
    if text[i] == "{":
        return _group_end(text, i, "{", "}") or len(text)
    if text[i] == "\\":
        m = re.match(r"\\[a-zA-Z]+|\\.", text[i:])
        return i + m.end()
    return i + 1


def _subexpressions(expr: str) -> set[str]:
    found: set[str] = set()
    for m in re.finditer(r"\\([a-zA-Z]+)", expr):
        name, start, end = m.group(1), m.start(), m.end()
        if name in _COMMAND_ARGS:
            if name == "sqrt" and end < len(expr) and expr[end] == "[":
                end = (_group_end(expr, end, "[", "]") or end)
            for _ in range(_COMMAND_ARGS[name]):
                end = _argument_end(expr, end)
            if name in ("lfloor", "lceil"):
                close = expr.find("\\r" + name[2:], end)
                end = close + len(name) + 1 if close >= 0 else end
            found.add(expr[start:end])
        elif name in _FUNCTIONS:
            end2 = end
            if name == "operatorname":
                end2 = _argument_end(expr, end2)
            if end2 < len(expr) and expr[end2] == "_":
                end2 = _argument_end(expr, end2 + 1)
            if end2 < len(expr) and expr[end2] == "^":
                end2 = _argument_end(expr, end2 + 1)
            # the argument: a group, or the run up to the next space-separated operator
            rest = expr[end2:]
            arg = re.match(r"\s*(\([^()]*\)|\{[^{}]*\}|\\?[\w.]+(?:\^\{?\\circ\}?)?)", rest)
            if arg:
                found.add(expr[start:end2 + arg.end()].strip())
    for m in re.finditer(r"(\d+|[a-zA-Z]|\))\s*!+", expr):
        start = m.start()
        if m.group(1) == ")":
            depth, j = 0, m.start(1)
            while j >= 0:
                depth += expr[j] == ")"
                depth -= expr[j] == "("
                if depth == 0:
                    break
                j -= 1
            start = max(j, 0)
        found.add(expr[start:m.end()])
    for m in re.finditer(r"(\d+(?:\.\d+)?|[a-zA-Z]|\\pi|\))\s*\^", expr):
        start = m.start()
        if m.group(1) == ")":
            j = expr.rfind("(", 0, m.start(1))
            start = max(j, 0)
        found.add(expr[start:_argument_end(expr, m.end())])
    for open_, close in (("(", ")"), ("{", "}"), ("|", "|")):
        for i, c in enumerate(expr):
            if c != open_ or (i > 0 and expr[i - 1] == "\\"):
                continue
            end = expr.find("|", i + 1) + 1 if open_ == "|" else _group_end(expr, i, open_, close)
            if end:
                found.add(expr[i:end])
                if open_ == "{":
                    found.add(expr[i + 1:end - 1])
    return found


_TOP_OPERATOR_RE = re.compile(r"\\(?:cdot|times|div|le|leq|ge|geq|ne|neq|pm)(?![a-zA-Z])|[-+=<>,/*]")


def _term_ranges(expr: str, most: int = 8) -> set[str]:
    """Every run of consecutive top-level terms of ``expr`` (terms are split at top-level ``+``,
    ``-``, ``\\cdot``, ``=``, ``,`` ...): ``99^2+99+1`` gives ``99^2+99``, ``99+1`` and so on."""
    cuts, depth, i = [], 0, 0
    while i < len(expr):
        c = expr[i]
        if c == "\\" and i + 1 < len(expr) and expr[i + 1] in "{}":
            i += 2
            continue
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
        elif depth == 0:
            m = _TOP_OPERATOR_RE.match(expr, i)
            if m:
                cuts.append((m.start(), m.end()))
                i = m.end()
                continue
        i += 1
    starts = [0] + [end for _, end in cuts]
    ends = [start for start, _ in cuts] + [len(expr)]
    found = set()
    for a in range(len(starts)):
        for b in range(a, min(len(ends), a + most)):
            found.add(expr[starts[a]:ends[b]].strip())
    return found


def copy_candidates(problem: str) -> list[str]:
    """Spans of the problem statement an answer could copy (see the module docstring)."""
    found: set[str] = set()
    for m in _MATH_RE.finditer(problem):
        expr = next(g for g in m.groups() if g is not None).strip()
        found.add(expr)
        parts = [p.strip() for p in _SPLIT_RE.split(expr)]
        found.update(parts)
        for part in [expr, *parts]:
            found.update(_subexpressions(part))
        found.update(_term_ranges(expr))
    outside = _MATH_RE.sub(" ", problem)
    found.update(m.group(0) for m in _PLAIN_NUMBER_RE.finditer(outside))
    out = set()
    for c in found:
        c = c.strip().rstrip(".,;:").strip()
        if c and len(c) <= 300 and "$" not in c and _balanced(c):
            out.add(c)
    return sorted(out)


def _balanced(text: str) -> bool:
    plain = text.replace("\\{", "").replace("\\}", "")
    return plain.count("{") == plain.count("}")


# ----------------------------------------------------------------------------------- measuring


def grader(module, with_problem: bool, timeout: float):
    takes_problem = "problem" in inspect.signature(module.grade_math).parameters

    def grade(answer: str, gold: str, problem: str | None) -> bool:
        response = f"The answer is $\\boxed{{{answer}}}$."
        if takes_problem and with_problem and problem is not None:
            return module.grade_math(response, gold, timeout=timeout, problem=problem)[1]
        return module.grade_math(response, gold, timeout=timeout)[1]

    return grade, takes_problem


def _unwrapped(s: str) -> str:
    """``s`` without a single-letter assignment (``x=2``) and without braces or parentheses around
    all of it (``{2}``, ``(1)``; not ``(1,2)``)."""
    s = re.sub(r"^[a-zA-Z]=(?=[^=<>]+$)", "", s)
    while len(s) >= 2 and (s[0], s[-1]) in (("{", "}"), ("(", ")")):
        depth = 0
        for k, c in enumerate(s):
            depth += c == s[0]
            depth -= c == s[-1]
            if depth == 0 and k < len(s) - 1:
                return s
        if s[0] == "(" and "," in s:
            return s
        s = s[1:-1]
    return s


def gameable(records, module, grade, threads: int):
    def one(record):
        gold, problem = record["answer"], record["problem"]
        gold_norm = _unwrapped(module.normalize_math_answer(gold))
        for candidate in copy_candidates(problem):
            if _unwrapped(module.normalize_math_answer(candidate)) == gold_norm:
                continue  # the gold answer as written (also "{2}" for "2")
            if grade(candidate, gold, problem):
                return candidate
        return None

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, records))


def pair_accuracy(grade, pairs, threads: int):
    def one(pair):
        return grade(pair["answer"], pair["gold"], pair.get("problem")) == pair["equal"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, pairs))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="grade with the grader (oreo/tasks/grading) of this git revision")
    parser.add_argument("--no-problem", action="store_true", help="do not pass the problem text")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N problems")
    parser.add_argument("--show", type=int, default=15, help="print this many gameable examples")
    args = parser.parse_args(argv)

    module = load_grading(args.ref)
    grade, takes_problem = grader(module, not args.no_problem, args.timeout)
    told = takes_problem and not args.no_problem
    print(f"grader: {'git ' + args.ref if args.ref else 'checkout'}; problem text passed: {told}")

    if args.pairs.exists():
        pairs = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        right = pair_accuracy(grade, pairs, args.threads)
        print(f"pairs: {sum(right)}/{len(pairs)} graded as expected ({sum(right) / len(pairs):.1%})")
        kinds: dict[str, list[bool]] = {}
        for pair, ok in zip(pairs, right, strict=True):
            kinds.setdefault(pair.get("kind", "other"), []).append(ok)
        print("  by kind: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(kinds.items())))
        for pair, ok in zip(pairs, right, strict=True):
            if not ok and args.show:
                print(f"  wrong: gold {pair['gold']!r} answer {pair['answer']!r} "
                      f"expected {pair['equal']} ({pair.get('kind')})")

    records = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    records = records[:args.limit] if args.limit else records
    start = time.perf_counter()
    hits = gameable(records, module, grade, args.threads)
    asks = [ASKS_RE.search(r["problem"]) is not None for r in records]
    n_hit = sum(h is not None for h in hits)
    n_asks = sum(asks)
    n_asks_hit = sum(h is not None for h, a in zip(hits, asks, strict=True) if a)
    n_candidates = sum(len(copy_candidates(r["problem"])) for r in records)
    print(f"MATH500 gameable by copying: {n_hit}/{len(records)} ({n_hit / len(records):.1%}); "
          f"compute/evaluate/simplify/what-is problems: {n_asks_hit}/{n_asks} "
          f"({n_asks_hit / max(n_asks, 1):.1%}); {n_candidates} candidates, "
          f"{time.perf_counter() - start:.0f}s")
    shown = 0
    for record, hit in zip(records, hits, strict=True):
        if hit is not None and shown < args.show:
            print(f"  {record['unique_id']}: gold {record['answer']!r} <- copy {hit!r}")
            shown += 1


if __name__ == "__main__":
    main()
