"""Why value-guided search ties greedy decoding: what the likelihood verifier could recover at best.

    python experiments/verifier_headroom.py runs/seeds/0 [--policy oreo] [--split test] [--limit 500] [--n 32]

On the first ``limit`` problems of ``split``: the policy's greedy answer, ``n`` samples at ``temperature``, and the
likelihood verifier's score (``value=verifier``) of each finished response. Reports:

- how well the verifier tells greedy's right answers from its wrong ones (ROC AUC across problems);
- the headroom: of the problems greedy gets wrong, the share with a right sample among the ``n``, and the share
  where the verifier scores a right sample above greedy's wrong answer (what any selection by this verifier
  could recover); of the problems greedy gets right, the share where a wrong sample outscores greedy's answer
  (what it could lose);
- the accuracy of picking the top-scored response among greedy's and the samples (the best any search that
  ranks by this verifier could do with these candidates), next to greedy's and an exact verifier's (pass@n+1).

Writes ``experiments/results/verifier_headroom_{policy}_seedS.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from oreo.evaluate import verifier_scorer
from oreo.run_config import read_run_config
from oreo.runtime import build_sampler, pick_device
from oreo.tasks import make_task
from oreo.types import Context


def auc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--policy", default="oreo", choices=["oreo", "sft"])
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    run_dir = Path(args.run_dir)
    cfg = dataclasses.replace(read_run_config(run_dir), run_dir=str(run_dir))
    task = make_task(cfg.task)
    problems = task.problems(args.split)[:args.limit]
    policy_dir = run_dir / "checkpoints" / ("oreo/policy" if args.policy == "oreo" else "sft")
    sampler = build_sampler(cfg, policy_dir, cfg.evaluate, pick_device("auto"))
    verifier = verifier_scorer(cfg, policy_dir, sampler, task)

    greedy = [c for (c,) in sampler.generate([p.prompt for p in problems], n=1, temperature=0.0, seed=args.seed)]
    samples = sampler.generate([p.prompt for p in problems], n=args.n, temperature=args.temperature, seed=args.seed)
    rows = []   # per problem: (greedy right, greedy score, [(sample right, score)])
    for p, g, outs in zip(problems, greedy, samples):
        cands = [g] + [c for c in outs if c.finished]
        scores = verifier([Context(p.prompt, tuple(task.split_steps(c.text))) for c in cands])
        right = [c.finished and task.grade(p, c.text)[1] for c in cands]
        rows.append((right[0], scores[0], list(zip(right[1:], scores[1:]))))

    wrong_g = [r for r in rows if not r[0]]
    right_g = [r for r in rows if r[0]]
    has_right = [r for r in wrong_g if any(ok for ok, _ in r[2])]
    recover = [r for r in wrong_g if any(ok and s > r[1] for ok, s in r[2])]
    lose = [r for r in right_g if any(not ok and s > r[1] for ok, s in r[2])]
    top = [max([(r[1], r[0])] + [(s, ok) for ok, s in r[2]])[1] for r in rows]
    n = len(rows)
    pct = lambda k, m: f"{100 * k / max(1, m):.1f}%"  # noqa: E731
    g_auc = auc([r[1] for r in right_g], [r[1] for r in wrong_g])
    lines = [f"# The verifier's headroom over greedy ({args.policy} policy, {run_dir})", "",
             f"`python experiments/verifier_headroom.py {' '.join(sys.argv[1:])}`", "",
             f"First {n} {args.split} problems; {args.n} samples at T={args.temperature}; the likelihood verifier "
             f"of the {args.policy} policy.", "",
             "| measure | value |", "|---|---|",
             f"| greedy accuracy | {pct(len(right_g), n)} |",
             f"| verifier AUC, greedy's right answers against its wrong ones | "
             f"{'n/a' if g_auc is None else f'{g_auc:.3f}'} |",
             f"| greedy wrong, a right sample exists | {pct(len(has_right), len(wrong_g))} of {len(wrong_g)} |",
             f"| greedy wrong, a right sample scores above greedy's answer (recoverable) | "
             f"{pct(len(recover), len(wrong_g))} |",
             f"| greedy right, a wrong sample scores above greedy's answer (at risk) | "
             f"{pct(len(lose), len(right_g))} of {len(right_g)} |",
             f"| top-scored of greedy's and the samples' answers | {pct(sum(top), n)} |",
             f"| an exact verifier over the same candidates (pass@{args.n + 1}) | "
             f"{pct(sum(r[0] or any(ok for ok, _ in r[2]) for r in rows), n)} |"]
    split = "" if args.split == "test" else f"_{args.split}"
    out = Path(args.out or f"experiments/results/verifier_headroom_{args.policy}{split}_seed{cfg.seed}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
