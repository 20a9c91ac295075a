"""The learned values along a few trajectories, step by step, right and wrong steps marked.

    python experiments/value_trace.py runs/seeds/0 [--problems 4] [--policy sft] [--prm PATH]

For the first test problems whose samples (``--n`` at temperature 1 from the chosen policy) include a right and a
wrong finished response, one of each is scored after every step, V(prompt + steps[:k]) for k = 1..K, by:
the run's OREO value, the likelihood verifier (``value=verifier``, fitted on the run's buffer with the same
policy) and, with ``--prm``, a process value model. A step is marked right while the response so far is sound
(every line the prompt's next operation, applied right: ``sound_prefix``), wrong from its first mistake on.
Writes ``experiments/results/value_trace.{md,png}`` (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from oreo.encode import Encoder
from oreo.evaluate import verifier_scorer
from oreo.run_config import read_run_config
from oreo.runtime import build_sampler, pick_device
from oreo.search.value import ValueScorer, load_value_model
from oreo.tasks import make_task
from oreo.tasks.arithmetic import sound_prefix
from oreo.types import Context


def pick_pairs(task, problems, outs, count: int) -> list[tuple]:
    """``(problem, right response, wrong response)`` for the first ``count`` problems with both kinds."""
    pairs = []
    for p, completions in zip(problems, outs):
        finished = [c.text for c in completions if c.finished]
        right = [t for t in finished if task.grade(p, t)[1]]
        wrong = [t for t in finished if not task.grade(p, t)[1]]
        if right and wrong:
            pairs.append((p, right[0], wrong[0]))
        if len(pairs) == count:
            break
    return pairs


def trace(scorer, prompt: str, steps: list[str]) -> list[float]:
    """V after each step of one response."""
    return [float(v) for v in scorer([Context(prompt, tuple(steps[:k])) for k in range(1, len(steps) + 1)])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--problems", type=int, default=4, help="problems shown, each with a right and a wrong response")
    ap.add_argument("--n", type=int, default=8, help="samples per problem to find them among")
    ap.add_argument("--policy", default="sft", choices=["oreo", "sft"])
    ap.add_argument("--prm", default=None, help="also a process value model (a value checkpoint folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="experiments/results/value_trace.md")
    args = ap.parse_args()

    run_dir = Path(args.run_dir)
    cfg = dataclasses.replace(read_run_config(run_dir), run_dir=str(run_dir))
    task = make_task(cfg.task)
    device = pick_device("auto")
    policy_dir = run_dir / "checkpoints" / ("oreo/policy" if args.policy == "oreo" else "sft")
    sampler = build_sampler(cfg, policy_dir, cfg.evaluate, device)
    encoder = Encoder.unbounded(sampler.tokenizer)
    scorers = {"OREO value": ValueScorer(load_value_model(run_dir / "checkpoints" / "oreo" / "value",
                                                          dtype=cfg.model.dtype).to(device), encoder),
               "likelihood verifier": verifier_scorer(cfg, policy_dir, sampler, task)}
    if args.prm:
        scorers["PRM"] = ValueScorer(load_value_model(args.prm, dtype=cfg.model.dtype).to(device), encoder)

    problems = task.problems("test")[:50 * args.problems]
    outs = sampler.generate([p.prompt for p in problems], n=args.n, temperature=1.0, seed=args.seed)
    pairs = pick_pairs(task, problems, outs, args.problems)
    if not pairs:
        raise SystemExit(f"no problem among the first {len(problems)} has both a right and a wrong sample")
    traces = []   # (problem, label, steps, sound per step, {scorer: values})
    for p, right, wrong in pairs:
        for label, text in (("right", right), ("wrong", wrong)):
            steps = task.split_steps(text)
            sound = [sound_prefix(p.prompt, steps[:k]) for k in range(1, len(steps) + 1)]
            traces.append((p, label, steps, sound, {name: trace(s, p.prompt, steps) for name, s in scorers.items()}))
    write(args, traces, list(scorers))


def write(args, traces, names: list[str]) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# The learned values along trajectories", "",
             f"`python experiments/value_trace.py {' '.join(sys.argv[1:])}`", "",
             f"Policy: {args.policy}; a step is ✓ while the response so far is sound, ✗ from its first mistake.", ""]
    for p, label, steps, sound, values in traces:
        lines += [f"## `{p.prompt.strip()}` ({label} answer)", "",
                  "| step | | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for k, step in enumerate(steps):
            cells = " | ".join(f"{values[n][k]:.3f}" for n in names)
            lines.append(f"| `{step.strip()}` | {'✓' if sound[k] else '✗'} | {cells} |")
        lines.append("")
    out.write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(traces) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(9, 2.2 * rows + 0.6), squeeze=False, sharey=True)
    colours = dict(zip(names, ("tab:blue", "tab:orange", "tab:green")))
    for ax, (p, label, steps, sound, values) in zip(axes.flat, traces):
        x = list(range(1, len(steps) + 1))
        for name in names:
            ax.plot(x, values[name], "-", color=colours[name], label=name, alpha=0.8)
            ax.scatter([k for k, s in zip(x, sound) if s], [v for v, s in zip(values[name], sound) if s],
                       marker="o", color=colours[name], s=18)
            ax.scatter([k for k, s in zip(x, sound) if not s], [v for v, s in zip(values[name], sound) if not s],
                       marker="x", color="red", s=40, zorder=3)
        ax.set_title(f"{p.prompt.strip()}  ({label} answer)", fontsize=8)
        ax.set_xticks(x)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle("Value after each step (o: sound so far, red x: after the first mistake)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
