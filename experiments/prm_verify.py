"""Does a process value model verify better than OREO's value? A probe on a finished run.

``python experiments/prm_verify.py RUN_DIR [--n 8] [--problems 500]``:

1. reads the run's collection round (N samples per training problem from the SFT policy), makes each
   problem's samples a tree of shared step prefixes (``oreo.search.tree.prefix_tree``) and takes
   ReST-MCTS*'s inferred per-step targets from it (``oreo.search.process_values``);
2. trains a process value model (``PRMObjective``) on them, from the SFT policy;
3. samples ``n`` responses per test problem from the SFT policy (T = 1) once, and scores every finished one
   with the PRM and with the run's OREO value model (both read at the response's last token);
4. prints, for each scorer, best-of-n accuracy and the AUC of its scores for correct against incorrect
   samples, next to the mean accuracy of one sample, majority vote and pass@n.

A verifier that helps has best-of-n above majority vote and an AUC well above 0.5.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from oreo.buffer import Buffer
from oreo.encode import Encoder
from oreo.models import ValueModel, load_policy
from oreo.rollout.sampler import HFSampler
from oreo.run_config import read_run_config
from oreo.search.process_values import target_rows
from oreo.search.strategies import majority_index
from oreo.search.value import ValueScorer
from oreo.tasks import make_task
from oreo.trainers.common import TrainConfig
from oreo.trainers.prm import PRMConfig, PRMObjective
from oreo.types import Context


def auc(scores: list[float], labels: list[bool]) -> float:
    """P(score of a correct sample > score of an incorrect one), ties counting half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--problems", type=int, default=500, help="test problems (the first K)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="experiments/results/prm_verify.md")
    args = parser.parse_args()
    run = Path(args.run_dir)
    cfg = read_run_config(run)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task)
    policy, tok = load_policy(str(run / "checkpoints" / "sft"), dtype=cfg.model.dtype)
    rows = target_rows(Buffer(run / "buffer").load([0]))
    prm = PRMObjective(policy, tok, PRMConfig(max_len=cfg.oreo.max_len),
                       TrainConfig(epochs=args.epochs, lr=args.lr, seed=cfg.seed))
    info = prm.fit(rows)
    print(f"PRM: {len(rows)} target paths, {info['steps']} steps", flush=True)
    problems = task.problems("test")[:args.problems]
    sampler = HFSampler(policy, tok, Encoder.unbounded(tok), batch_size=512,
                        max_new_tokens=cfg.evaluate.max_new_tokens)
    outs = sampler.generate([p.prompt for p in problems], n=args.n, temperature=1.0, seed=cfg.seed + 17)
    items = [(i, c) for i, cs in enumerate(outs) for c in cs]
    graded = [task.grade(problems[i], c.text) if c.finished else (None, False) for i, c in items]
    contexts = [Context(problems[i].prompt, tuple(task.split_steps(c.text))) for i, c in items]
    scorers = {"prm": prm.value.eval()}
    oreo_value = run / "checkpoints" / "oreo" / "value"
    if oreo_value.exists():
        scorers["oreo value"] = ValueModel.from_pretrained(oreo_value, dtype=cfg.model.dtype).eval()
    lines = [f"# Verifiers on {len(problems)} test problems, {args.n} samples each (T = 1, the SFT policy of "
             f"`{run}`)", "", f"command: `python experiments/prm_verify.py {run} --n {args.n} "
             f"--problems {args.problems} --epochs {args.epochs} --lr {args.lr}`",
             f"PRM: {len(rows)} target paths from the run's collection round, {info['steps']} optimizer steps", "",
             "| selection | accuracy | AUC (correct vs incorrect samples) |", "|---|---|---|"]
    correct = [ok for _, ok in graded]
    per_problem = defaultdict(list)
    for (i, c), (answer, ok) in zip(items, graded):
        per_problem[i].append((answer, ok, c.finished))
    single = sum(correct) / len(correct)
    majority = sum(rows_[majority_index([a if f else None for a, _, f in rows_]) or 0][1]
                   for rows_ in per_problem.values()) / len(problems)
    pass_n = sum(any(ok for _, ok, _ in rows_) for rows_ in per_problem.values()) / len(problems)
    lines += [f"| one sample | {100 * single:.1f} | |", f"| majority vote | {100 * majority:.1f} | |",
              f"| pass@{args.n} (oracle) | {100 * pass_n:.1f} | |"]
    results = {"single": single, "majority": majority, "pass": pass_n}
    for name, model in scorers.items():
        values = ValueScorer(model, Encoder.unbounded(tok), batch_size=256)(contexts)
        best = defaultdict(lambda: (float("-inf"), False))
        for (i, c), v, (_, ok) in zip(items, values, graded):
            if c.finished and v > best[i][0]:
                best[i] = (v, ok)
        acc = sum(ok for _, ok in best.values()) / len(problems)
        finished = [k for k, (_, c) in enumerate(items) if c.finished]
        a = auc([values[k] for k in finished], [correct[k] for k in finished])
        lines.append(f"| best-of-{args.n} by {name} | {100 * acc:.1f} | {a:.3f} |")
        results[name] = {"best_of_n": acc, "auc": a}
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
