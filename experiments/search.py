"""Accuracy against generated tokens per problem for the test-time strategies, with the OREO policy and
value of a finished run (default: ``make demo``'s runs/demo).

    python experiments/search.py --run-dir runs/demo --split test

Sampling strategies (majority, best-of-N by value, value-weighted vote) are read off one set of
``max(ns)`` samples per problem: the strategy at N uses the first N, and its tokens are those N
samples' tokens. Beam search runs once per width. ``--oracle`` adds beam search guided by an exact
value (1 while every step so far is right, else 0) to show what the search gains with a value that
knows the arithmetic. Also reported: how well the learned value tells right from wrong finished
samples (ROC AUC). ``--mcts 10 20`` adds MCTS* (``search=mcts``) at those iteration budgets.
``--value policy`` scores with the policy's own step likelihood (``value=policy``) instead of the run's value
model, ``--value verifier`` with the likelihood verifier fitted on the run's buffer (``value=verifier``, kept in
RUN_DIR/checkpoints/verifier), ``--value PATH`` with the value model in PATH (a PRM); ``--policy sft`` searches
with the SFT policy instead of OREO's. ``--split heldout`` for the longer chains.
Writes a markdown table and a PNG plot. ``--summarise FILE.json ... --out OUT.md`` averages several seeds'
results (mean ± std) into one table and plot.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from oreo.encode import Encoder
from oreo.evaluate import verifier_scorer
from oreo.progress import progress
from oreo.run_config import read_run_config
from oreo.runtime import build_sampler, pick_device
from oreo.search.mcts import MCTSConfig
from oreo.search.strategies import SearchConfig, Searcher
from oreo.search.value import StepLikelihoodScorer, ValueScorer, load_value_model
from oreo.tasks import make_task
from oreo.tasks.arithmetic import sound_prefix


def roc_auc(values: list[float], labels: list[bool]) -> float | None:
    """P(value of a random right sample > value of a random wrong one), ties counting half."""
    pos = [v for v, y in zip(values, labels) if y]
    neg = [v for v, y in zip(values, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/demo")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="first N problems of the split")
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--widths", type=int, nargs="+", default=[3, 5, 7])
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--oracle", action="store_true",
                    help="also beam search with an exact value (arithmetic; countdown: V*)")
    ap.add_argument("--mcts", type=int, nargs="*", default=[], help="MCTS* at these iteration budgets")
    ap.add_argument("--value", default="oreo",
                    help="oreo (the run value) | policy (its step likelihood) | verifier (fitted on the buffer) | PATH")
    ap.add_argument("--policy", default="oreo", choices=["oreo", "sft"], help="the policy that searches")
    ap.add_argument("--block", type=int, default=64, help="problems per batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="experiments/results/search.md")
    ap.add_argument("--summarise", nargs="+", metavar="JSON", help="average these seeds' result files (to --out)")
    args = ap.parse_args()
    if args.summarise:
        return summarise(args.summarise, Path(args.out))

    run_dir = Path(args.run_dir)
    ckpt = run_dir / "checkpoints" / "oreo"
    if not (ckpt / "value").is_dir():
        raise SystemExit(f"{ckpt}/value not found: run `make demo` (or pass --run-dir of a finished OREO run)")
    cfg = read_run_config(run_dir)
    device = pick_device("auto")
    task = make_task(cfg.task)
    problems = task.problems(args.split)[:args.limit]
    policy_dir = ckpt / "policy" if args.policy == "oreo" else run_dir / "checkpoints" / "sft"
    sampler = build_sampler(cfg, policy_dir, cfg.evaluate, device)
    encoder = Encoder.unbounded(sampler.tokenizer)
    if args.value == "policy":
        scorer = StepLikelihoodScorer(sampler.model, encoder)
    elif args.value == "verifier":
        scorer = verifier_scorer(dataclasses.replace(cfg, run_dir=str(run_dir)), policy_dir, sampler, task)
    else:
        value_dir = ckpt / "value" if args.value == "oreo" else Path(args.value)
        scorer = ValueScorer(load_value_model(value_dir, dtype=cfg.model.dtype).to(device), encoder)
    blocks = [problems[i:i + args.block] for i in range(0, len(problems), args.block)]
    rows = []  # (strategy, parameter, accuracy, tokens per problem, wall seconds)

    def run(name, param, searcher) -> None:
        start, right, tokens = time.perf_counter(), 0, 0
        for b, block in enumerate(progress(iterable=blocks, desc=f"{name} {param}", leave=False)):
            for p, choice in zip(block, searcher.solve(block, seed=args.seed * 7919 + b)):
                right += choice.response is not None and task.grade(p, choice.response)[1]
                tokens += choice.tokens
        rows.append((name, param, right / len(problems), tokens / len(problems), time.perf_counter() - start))
        print(f"{name:<14} {param:>4}  accuracy {100 * rows[-1][2]:5.1f}%  tokens/problem {rows[-1][3]:7.1f}",
              flush=True)

    run("greedy", "", Searcher(SearchConfig("greedy"), task, sampler))

    # sampling strategies: one set of samples, read at every N
    n_max = max(args.ns)
    searchers = {s: Searcher(SearchConfig(s, n=n_max, temperature=args.temperature), task, sampler, scorer)
                 for s in ("majority", "best_of_n", "weighted_vote")}
    tally = {(s, n): [0, 0] for s in searchers for n in args.ns}
    sample_values, sample_right = [], []
    start = time.perf_counter()
    for b, block in enumerate(progress(iterable=blocks, desc=f"{n_max} samples", leave=False)):
        outs = sampler.generate([p.prompt for p in block], n=n_max, temperature=args.temperature,
                                seed=args.seed * 7919 + b)
        for p, completions in zip(block, outs):
            values = searchers["best_of_n"].values(p, completions)
            for c, v in zip(completions, values):
                if c.finished:
                    sample_values.append(v)
                    sample_right.append(task.grade(p, c.text)[1])
            for s, searcher in searchers.items():
                for n in args.ns:
                    choice = searcher.choose(p, completions[:n], values[:n])
                    tally[s, n][0] += choice.response is not None and task.grade(p, choice.response)[1]
                    tally[s, n][1] += choice.tokens
    sampling_wall = time.perf_counter() - start
    for (s, n), (right, tokens) in tally.items():
        rows.append((s, n, right / len(problems), tokens / len(problems), sampling_wall))

    for width in args.widths:
        run("beam", width, Searcher(SearchConfig("beam", width=width, temperature=args.temperature), task, sampler,
                                    scorer))
    for iterations in args.mcts:
        run("mcts", iterations, Searcher(SearchConfig("mcts", mcts=MCTSConfig(iterations=iterations, end_gate=0.9)),
                                         task, sampler, scorer))
    if args.oracle:
        def oracle(contexts):
            if hasattr(task, "value_star"):   # countdown: V*, the target still reachable
                return [float(task.value_star(task.puzzle_of(c.prompt), c.steps)) for c in contexts]
            return [float(sound_prefix(c.prompt, c.steps)) for c in contexts]

        for width in args.widths:
            run("beam (oracle)", width, Searcher(SearchConfig("beam", width=width, temperature=args.temperature),
                                                 task, sampler, oracle))

    auc = roc_auc(sample_values, sample_right)
    right_v = [v for v, y in zip(sample_values, sample_right) if y]
    wrong_v = [v for v, y in zip(sample_values, sample_right) if not y]
    report(args, rows, auc, right_v, wrong_v, len(problems))


def report(args, rows, auc, right_v, wrong_v, n_problems) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    lines = [f"# Test-time search on the embedded task ({args.split}, {n_problems} problems)", "",
             f"`python experiments/search.py {' '.join(sys.argv[1:])}`", "",
             f"Run: `{args.run_dir}`; policy {args.policy}; value {args.value}; sampling temperature "
             f"{args.temperature} (MCTS*: its own, 0.7); seed {args.seed}.", "",
             "| strategy | N or B | accuracy | generated tokens / problem |", "|---|---|---|---|"]
    for name, param, acc, tokens, _ in rows:
        lines.append(f"| {name} | {param} | {100 * acc:.1f}% | {tokens:.1f} |")
    lines += ["", f"Learned value on finished samples: ROC AUC right vs wrong "
              f"{'n/a' if auc is None else f'{auc:.3f}'}; mean V of right samples {mean(right_v):.3f} "
              f"({len(right_v)}), of wrong ones {mean(wrong_v):.3f} ({len(wrong_v)})."]
    out.write_text("\n".join(lines) + "\n")
    info = {"split": args.split, "policy": args.policy, "value": args.value, "temperature": args.temperature}
    (out.with_suffix(".json")).write_text(json.dumps({"rows": rows, "auc": auc, **info}, indent=1))
    names = dict.fromkeys(r[0] for r in rows)
    plot({name: [(r[3], 100 * r[2], r[1], 0.0) for r in rows if r[0] == name] for name in names},
         out.with_suffix(".png"), f"Test-time strategies, {args.policy} policy, value: {args.value} (embedded task)",
         f"accuracy on {args.split} (%)")
    print(f"wrote {out}, {out.with_suffix('.png')}")


def summarise(paths: list[str], out: Path) -> None:
    """Mean ± std over several seeds' result files (``--summarise``): a markdown table and the plot."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    first = runs[0]
    keys = [(r[0], r[1]) for r in first["rows"]]
    found = {k: [] for k in keys}   # (strategy, parameter) → [(accuracy, tokens)] over the seeds
    for run in runs:
        for name, param, acc, tokens, _ in run["rows"]:
            if (name, param) in found:
                found[name, param].append((acc, tokens))
    keys = [k for k in keys if len(found[k]) == len(runs)]

    def stats(xs):
        mean = sum(xs) / len(xs)
        return mean, (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0

    what = f"{first.get('split', '?')}, policy {first.get('policy', '?')}, value {first.get('value', '?')}, " \
           f"T {first.get('temperature', '?')}"
    lines = [f"# Test-time search over {len(runs)} seeds ({what})", "",
             f"`python experiments/search.py --summarise {' '.join(paths)} --out {out}`", "",
             "| strategy | N or B | accuracy (mean ± std) | per seed | generated tokens / problem |",
             "|---|---|---|---|---|"]
    points: dict[str, list] = {}
    for name, param in keys:
        accs = [100 * a for a, _ in found[name, param]]
        (acc, std), (tokens, _) = stats(accs), stats([t for _, t in found[name, param]])
        lines.append(f"| {name} | {param} | {acc:.1f} ± {std:.1f} | {', '.join(f'{a:.1f}' for a in accs)} | "
                     f"{tokens:.1f} |")
        points.setdefault(name, []).append((tokens, acc, param, std))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    plot(points, out.with_suffix(".png"), f"Test-time strategies, mean of {len(runs)} seeds ({what})",
         f"accuracy on {first.get('split', '?')} (%)")
    print("\n".join(lines))
    print(f"wrote {out}, {out.with_suffix('.png')}")


def plot(points: dict[str, list[tuple]], path: Path, title: str, ylabel: str) -> None:
    """Accuracy against generated tokens per problem, one line per strategy: ``points[name]`` holds
    ``(tokens, accuracy %, parameter, std)`` (the std is the table's: the seeds differ more than the strategies
    do, so bars of it would hide the comparison)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in points.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) > 1 else "*", label=name, markersize=6)
        if name.startswith(("beam", "mcts")):
            for x, y, b, _ in pts:
                label = f"B={b}" if name.startswith("beam") else f"i={b}"
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
