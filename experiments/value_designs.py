"""Which step value verifies? Value designs compared on the same run, data and budget (issue: a value that verifies).

``python experiments/value_designs.py RUN_DIR [--n 32] [--problems 500] [--temperature 1.0]`` on a finished
default run (SFT → collect → RFT → OREO):

1. samples ``n`` responses per test problem (the first ``problems``) from the run's SFT policy, once;
2. scores every finished sample with each design:
   - ``oreo value``: the run's OREO value model at the response's last token;
   - ``prm``: a process value model (``PRMObjective``, the head on the step's last hidden state) trained from the
     SFT policy on ReST-MCTS*'s targets inferred from the run's collection round (prefix trees of its samples);
   - ``prm + log-probs``: the same PRM's value and the SFT policy's per-step log-probs as inputs of a linear value
     fitted by least squares on the same targets (features at each step end: the PRM's value, the step's
     log-prob, the lowest and the mean step log-prob so far);
   - ``log-probs (outcome)`` and ``prm + log-probs (outcome)``: a logistic regression of the outcome (right or
     wrong) of the collection's finished samples on the policy's step log-probs of the whole response (the mean,
     the lowest and the last step's, and the number of steps), without and with the PRM's value: the same inputs,
     fitted to tell right from wrong rather than to regress the progress targets;
   - ``implicit (oreo)``: OREO's own relation V(s_T) − V(s_0) = β Σ_t log π/π_ref, from the OREO policy against
     the SFT policy (its reference);
   - ``mean step log-prob`` and ``min step log-prob``: the SFT policy's own log-probability of each step,
     averaged or the lowest (free: no training);
3. prints, per design, the ROC AUC of right against wrong finished samples *within* each problem (averaged over
   the problems that have both) and best-of-N accuracy for N = 1, 4, 16, 32 (the first N samples of each
   problem), next to majority vote at the same N and pass@N.

Writes ``experiments/results/value_designs_seedS.{md,json}`` (``--out`` to change).
``python experiments/value_designs.py --summarise experiments/results/value_designs_seed*.json`` prints the
mean ± standard deviation over the seeds' files.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from oreo.buffer import Buffer
from oreo.encode import Encoder
from oreo.models import ValueModel, load_policy
from oreo.rollout.sampler import HFSampler
from oreo.run_config import read_run_config
from oreo.search.process_values import target_rows
from oreo.search.strategies import best_value_index, majority_index
from oreo.search.value import ValueScorer, step_logprobs
from oreo.search.verifier import fit_logistic, likelihood_features
from oreo.tasks import make_task
from oreo.trainers.common import TrainConfig
from oreo.trainers.prm import PRMConfig, PRMObjective
from oreo.types import Context

NS = (1, 4, 16, 32)


def within_problem_auc(values: list[float], correct: list[bool], groups: list) -> tuple[float, int]:
    """Mean over groups with both kinds of P(value of a right item > value of a wrong one), ties half; and
    how many groups had both."""
    by: dict = defaultdict(list)
    for v, y, g in zip(values, correct, groups):
        by[g].append((v, y))
    aucs = []
    for items in by.values():
        pos = [v for v, y in items if y]
        neg = [v for v, y in items if not y]
        if pos and neg:
            aucs.append(sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg)))
    return (sum(aucs) / len(aucs) if aucs else float("nan")), len(aucs)


def path_features(step_lp: list[float]) -> list[list[float]]:
    """Per step end k: the step's log-prob, the lowest and the mean step log-prob of steps 1..k."""
    out, low, total = [], float("inf"), 0.0
    for k, lp in enumerate(step_lp):
        low, total = min(low, lp), total + lp
        out.append([lp, low, total / (k + 1)])
    return out


def response_features(step_lp: list[list[float]], prm: list[float] | None) -> torch.Tensor:
    """Per response: the likelihood verifier's features (``oreo.search.verifier.FEATURES``), and the PRM's value."""
    rows = [likelihood_features(lp) for lp in step_lp]
    if prm is not None:
        rows = [r + [v] for r, v in zip(rows, prm)]
    return torch.tensor(rows, dtype=torch.float64)


def outcome_fit(step_lp, prm, labels: torch.Tensor):
    """The likelihood verifier's logistic regression (``fit_logistic``) on ``response_features``; returns the
    scorer ``(step_lp, prm) → logits``."""
    weights, bias, mean, std = (torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v
                                for v in fit_logistic(response_features(step_lp, prm), labels))
    return lambda lp, v: (((response_features(lp, v) - mean) / std) @ weights + bias).tolist()


def summarise(paths: list[str]) -> str:
    """A markdown table of each ranking's within-problem AUC and best-of-N, mean ± std over the seeds' files."""
    runs = [json.loads(Path(p).read_text()) for p in paths]

    def cell(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
        values = [scale * v for v in values]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    lines = [f"Mean ± std over {len(runs)} seeds ({', '.join(Path(p).stem for p in paths)})", "",
             "| ranking | within-problem AUC | " + " | ".join(f"N={n}" for n in NS) + " |",
             "|---|---|" + "---|" * len(NS)]
    for name in runs[0]["accuracy"]:
        if not all(name in r["accuracy"] for r in runs):
            continue
        auc = cell([r["auc"][name][0] for r in runs], digits=3) if name in runs[0]["auc"] else ""
        lines.append(f"| {name} | {auc} | " + " | ".join(cell([r["accuracy"][name][str(n)] for r in runs], 100)
                                                        for n in NS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--summarise", nargs="+", metavar="JSON", help="seeds' result files to average")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--prm-epochs", type=float, default=2.0)
    parser.add_argument("--prm-lr", type=float, default=1e-3)
    parser.add_argument("--out", default=None, help="default: experiments/results/value_designs_seedS")
    parser.add_argument("--dump", default=None, help="also write every scored sample to this jsonl")
    args = parser.parse_args()
    if args.summarise:
        print(summarise(args.summarise))
        return
    if not args.run_dir:
        parser.error("give RUN_DIR (or --summarise FILES)")
    start = time.perf_counter()
    run = Path(args.run_dir)
    cfg = read_run_config(run)
    out = Path(args.out or f"experiments/results/value_designs_seed{cfg.seed}")
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task)
    sft, tok = load_policy(str(run / "checkpoints" / "sft"), dtype=cfg.model.dtype)
    encoder = Encoder.unbounded(tok)

    # 1. the samples
    problems = task.problems("test")[:args.problems]
    sampler = HFSampler(sft, tok, encoder, batch_size=512, max_new_tokens=cfg.evaluate.max_new_tokens)
    outs = sampler.generate([p.prompt for p in problems], n=args.n, temperature=args.temperature, seed=cfg.seed + 17)
    items = [(i, c) for i, cs in enumerate(outs) for c in cs if c.finished]   # cut samples are never answers
    position = [k for cs in outs for k, c in enumerate(cs) if c.finished]      # index among the problem's samples
    graded = [task.grade(problems[i], c.text) for i, c in items]
    correct = [bool(ok) for _, ok in graded]
    keys = [None if a is None else getattr(task, "answer_key", str)(a) for a, _ in graded]
    contexts = [Context(problems[i].prompt, tuple(task.split_steps(c.text))) for i, c in items]
    print(f"{len(items)} finished samples of {len(problems) * args.n}", flush=True)

    # 2. the designs
    scores: dict[str, list[float]] = {}
    sft_steps = step_logprobs(sft, encoder, contexts, batch_size=256)
    scores["mean step log-prob"] = [sum(s) / max(len(s), 1) for s in sft_steps]
    scores["min step log-prob"] = [min(s, default=0.0) for s in sft_steps]
    oreo_dir = run / "checkpoints" / "oreo"
    if (oreo_dir / "value").exists():
        value = ValueModel.from_pretrained(oreo_dir / "value", dtype=cfg.model.dtype)
        scores["oreo value"] = ValueScorer(value, encoder, batch_size=256)(contexts)
        oreo_policy, _ = load_policy(str(oreo_dir / "policy"), dtype=cfg.model.dtype)
        oreo_steps = step_logprobs(oreo_policy, encoder, contexts, batch_size=256)
        scores["implicit (oreo)"] = [cfg.oreo.beta * (sum(a) - sum(b)) for a, b in zip(oreo_steps, sft_steps)]
    rows = target_rows(Buffer(run / "buffer").load([0]))
    prm = PRMObjective(sft, tok, PRMConfig(max_len=cfg.oreo.max_len),
                       TrainConfig(epochs=args.prm_epochs, lr=args.prm_lr, seed=cfg.seed))
    info = prm.fit(rows)
    prm_scorer = ValueScorer(prm.value.eval(), encoder, batch_size=256)
    scores["prm"] = prm_scorer(contexts)
    # the linear value over the PRM and the policy's step log-probs, fitted on the PRM's own targets
    prefixes = [(Context(r.prompt, tuple(r.steps[:k + 1])), v) for r in rows for k, v in enumerate(r.step_values)]
    train_lp = step_logprobs(sft, encoder, [Context(r.prompt, tuple(r.steps)) for r in rows], batch_size=256)
    feats = [f for lp in train_lp for f in path_features(lp)]
    x = torch.tensor([[v, *f, 1.0] for v, f in zip(prm_scorer([c for c, _ in prefixes]), feats)], dtype=torch.float64)
    y = torch.tensor([t for _, t in prefixes], dtype=torch.float64)
    w = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    sample_x = torch.tensor([[v, *path_features(lp)[-1], 1.0] if lp else [v, 0.0, 0.0, 0.0, 1.0]
                             for v, lp in zip(scores["prm"], sft_steps)], dtype=torch.float64)
    scores["prm + log-probs"] = (sample_x @ w).tolist()

    # the same inputs, fitted to the outcome of the collection's finished samples (a logistic regression)
    finished = [r for r in Buffer(run / "buffer").load([0]) if r.meta.get("finished", True) and r.steps]
    fin_contexts = [Context(r.prompt, tuple(r.steps)) for r in finished]
    fin_lp = step_logprobs(sft, encoder, fin_contexts, batch_size=256)
    fin_prm = prm_scorer(fin_contexts)
    labels = torch.tensor([float(r.correct) for r in finished], dtype=torch.float64)
    for name, with_prm in (("log-probs (outcome)", False), ("prm + log-probs (outcome)", True)):
        fit = outcome_fit(fin_lp, fin_prm if with_prm else None, labels)
        scores[name] = fit(sft_steps, scores["prm"] if with_prm else None)

    if args.dump:
        with open(args.dump, "w") as f:
            for k, (i, c) in enumerate(items):
                f.write(json.dumps({"problem": i, "position": position[k], "correct": correct[k], "key": keys[k],
                                    "steps": list(contexts[k].steps), "step_logprobs": sft_steps[k],
                                    **{name: values[k] for name, values in scores.items()}}) + "\n")

    # 3. the measures
    by_problem: dict[int, list[int]] = defaultdict(list)
    for k, (i, _) in enumerate(items):
        by_problem[i].append(k)

    def accuracy(pick) -> dict[int, float]:
        """N → the fraction of problems whose pick among their first N samples is right."""
        result = {}
        for n in NS:
            hits = 0
            for i in range(len(problems)):
                ks = [k for k in by_problem.get(i, []) if position[k] < n]
                chosen = pick(ks) if ks else None
                hits += chosen is not None and correct[chosen]
            result[n] = hits / len(problems)
        return result

    def majority(ks):
        j = majority_index([keys[k] for k in ks])
        return None if j is None else ks[j]

    table = {"majority vote": accuracy(majority),
             "pass@N (oracle)": accuracy(lambda ks: next((k for k in ks if correct[k]), ks[0]))}
    aucs = {}
    for name, values in scores.items():
        table[name] = accuracy(lambda ks, v=values: ks[best_value_index([v[k] for k in ks], [True] * len(ks))])
        aucs[name] = within_problem_auc(values, correct, [i for i, _ in items])
    lines = [f"# Value designs on {len(problems)} test problems, {args.n} samples each (T = {args.temperature:g}, "
             f"the SFT policy of `{run}`, seed {cfg.seed})", "",
             f"command: `python experiments/value_designs.py {run} --n {args.n} --problems {args.problems} "
             f"--temperature {args.temperature:g}`",
             f"PRM: {len(rows)} target paths from the run's collection round, {info['steps']} optimizer steps; "
             f"linear value weights (prm, step, min step, mean step, bias): {', '.join(f'{v:.3f}' for v in w)}", "",
             "| ranking | within-problem AUC | " + " | ".join(f"N={n}" for n in NS) + " |",
             "|---|---|" + "---|" * len(NS)]
    for name, acc in table.items():
        auc = f"{aucs[name][0]:.3f}" if name in aucs else ""
        lines.append(f"| {name} | {auc} | " + " | ".join(f"{100 * acc[n]:.1f}" for n in NS) + " |")
    lines += ["", f"best-of-N: the highest-scored finished sample of the first N; AUC over the "
              f"{next(iter(aucs.values()))[1]} problems with both right and wrong finished samples. "
              f"{time.perf_counter() - start:.0f} s."]
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"accuracy": table, "auc": aucs, "weights": w.tolist(),
                                                    "n_finished": len(items)}, indent=2))


if __name__ == "__main__":
    main()
