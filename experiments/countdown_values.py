"""Does a learned value know V*? Countdown's values scored against the exact oracle, state by state.

    python experiments/countdown_values.py RUN_DIR [--split validation] [--puzzles 300] [--n 8] [--threshold T]

From the run's SFT policy, ``n`` responses (T = 1) per puzzle of ``split`` (the first ``puzzles``); every step
prefix of every response (the state after each step) gets V* (1: every step legal and the target still
reachable; a finished response: solved) and a score from each value design:

- ``oreo value``: the run's OREO value model at the prefix's last token (``checkpoints/oreo/value``);
- ``implicit``: OREO's V(s_t) − V(s_0) = β Σ log π/π_ref over the prefix, the OREO policy against the SFT policy;
- ``policy likelihood``: the SFT policy's mean step log-probability of the prefix (free);
- ``prm``: a process value model, if the run has one (``checkpoints/prm``), and the diagnostic probes of
  ``countdown_value_probe.py`` (``checkpoints/probe_*``).

Reports, per design:

- the within-problem AUC of states: over pairs of states of the same puzzle with V* = 1 and V* = 0, how often
  the live one scores higher (ties half), averaged over puzzles that have both;
- the same AUC against each kind of dead state alone: slips (a step is illegal: a wrong result, a number not left)
  and dead ends (every step legal, the target out of reach), which ask different things of a value (checking the
  arithmetic, or searching what is left), and against dead ends at each depth (live and dead states after the same
  number of steps: 3, 2 or 1 number left);
- the F1 of finding each response's first dead step (the first step after which the target is out of reach): a
  response's predicted first dead step is the first whose score is below a threshold; a hit when it is the true
  one. The threshold is the one that maximises F1 on this split unless ``--thresholds FILE`` gives the ones chosen
  on validation (as the test report must).

Writes ``experiments/results/countdown_values_{split}.md|json`` (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oreo.encode import Encoder  # noqa: E402
from oreo.models import load_policy  # noqa: E402
from oreo.run_config import read_run_config  # noqa: E402
from oreo.runtime import build_sampler, pick_device  # noqa: E402
from oreo.search.value import ValueScorer, load_value_model, step_logprobs  # noqa: E402
from oreo.tasks import make_task  # noqa: E402
from oreo.tasks.countdown import state_after  # noqa: E402
from oreo.types import Context  # noqa: E402


def within_problem_auc(scores: list[float], alive: list[int], groups: list) -> tuple[float | None, int]:
    """Mean over groups holding both kinds of P(score of a live state > score of a dead one), ties half."""
    by = defaultdict(lambda: ([], []))
    for s, a, g in zip(scores, alive, groups):
        by[g][0 if a else 1].append(s)
    aucs = [sum((x > y) + 0.5 * (x == y) for x in live for y in dead) / (len(live) * len(dead))
            for live, dead in by.values() if live and dead]
    return (sum(aucs) / len(aucs) if aucs else None), len(aucs)


def auc_by_kind(scores: list[float], alive: list[int], legal: list[bool], depth: list[int], groups: list) -> dict:
    """Within-problem AUC of live states against slips only (dead after an illegal step), dead ends only (every
    step legal, the target out of reach), and dead ends after step d against live states after step d."""
    def auc(keep) -> float | None:
        rows = [r for r in range(len(scores)) if keep(r)]
        return within_problem_auc([scores[r] for r in rows], [alive[r] for r in rows], [groups[r] for r in rows])[0]

    out = {"slips": auc(lambda r: alive[r] or not legal[r]), "dead ends": auc(lambda r: legal[r])}
    for d in (1, 2, 3):
        out[f"dead ends after step {d}"] = auc(lambda r, d=d: legal[r] and depth[r] == d)
    return out


def first_dead(flags: list[bool]) -> int | None:
    return next((k for k, dead in enumerate(flags) if dead), None)


def dead_step_f1(paths: list[tuple[list[float], list[int]]], threshold: float) -> float:
    """F1 of predicting each path's first dead step (first score below ``threshold``) against the true one (first
    V* = 0); a path with neither counts as nothing."""
    tp = fp = fn = 0
    for scores, alive in paths:
        true, guess = first_dead([not a for a in alive]), first_dead([s < threshold for s in scores])
        if guess is not None and guess == true:
            tp += 1
        else:
            fp += guess is not None
            fn += true is not None
    return 2 * tp / max(1, 2 * tp + fp + fn)


def best_threshold(paths) -> tuple[float, float]:
    candidates = sorted({s for scores, _ in paths for s in scores})
    step = max(1, len(candidates) // 400)
    return max(((dead_step_f1(paths, t), t) for t in candidates[::step] + [float("inf")]), key=lambda x: x[0])[::-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--puzzles", type=int, default=300)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thresholds", default=None, help="a validation report's json: use its thresholds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    cfg = dataclasses.replace(read_run_config(run_dir), run_dir=str(run_dir))
    task = make_task(cfg.task)
    if not hasattr(task, "value_star"):
        raise SystemExit(f"{run_dir}: task {task.name} has no oracle (countdown has)")
    puzzles = task.problems(args.split)[:args.puzzles]
    ckpt = run_dir / "checkpoints"
    sampler = build_sampler(cfg, ckpt / "sft", cfg.evaluate, pick_device("auto"))
    sft, encoder = sampler.model, Encoder.unbounded(sampler.tokenizer)
    torch.manual_seed(args.seed)
    outs = sampler.generate([p.prompt for p in puzzles], n=args.n, temperature=args.temperature, seed=args.seed)

    states, alive, groups, path_of, legal, depth = [], [], [], [], [], []   # one row per prefix after k >= 1 steps
    for i, (p, completions) in enumerate(zip(puzzles, outs)):
        for j, c in enumerate(completions):
            steps = task.split_steps(c.text)
            for k in range(1, len(steps) + 1):
                states.append(Context(p.prompt, tuple(steps[:k])))
                alive.append(task.value_star(p, steps[:k]))
                legal.append(state_after(p, steps[:k]) is not None)
                depth.append(k)
                groups.append(i)
                path_of.append((i, j))

    designs: dict[str, list[float]] = {}
    if (ckpt / "oreo" / "value").is_dir():
        value = load_value_model(ckpt / "oreo" / "value", dtype=cfg.model.dtype)
        designs["oreo value"] = ValueScorer(value, encoder)(states)
    for folder in [ckpt / "prm", *sorted(ckpt.glob("probe_*"))]:   # a PRM; countdown_value_probe.py's models
        if (folder / "config.json").exists():
            value = load_value_model(folder, dtype=cfg.model.dtype)
            designs[folder.name] = ValueScorer(value, encoder)(states)
    sft_lp = step_logprobs(sft, encoder, states)
    designs["policy likelihood"] = [sum(lp) / len(lp) for lp in sft_lp]
    if (ckpt / "oreo" / "policy").is_dir():
        oreo_policy, _ = load_policy(str(ckpt / "oreo" / "policy"), dtype=cfg.model.dtype)
        oreo_lp = step_logprobs(oreo_policy, encoder, states)
        designs["implicit (oreo)"] = [cfg.oreo.beta * (sum(a) - sum(b)) for a, b in zip(oreo_lp, sft_lp)]

    given = json.loads(Path(args.thresholds).read_text())["thresholds"] if args.thresholds else {}
    paths = defaultdict(list)
    for row, key in enumerate(path_of):
        paths[key].append(row)
    result = {"split": args.split, "puzzles": len(puzzles), "n": args.n, "states": len(states),
              "alive_share": sum(alive) / len(alive), "designs": {}, "thresholds": {}}
    for name, scores in designs.items():
        auc, n_groups = within_problem_auc(scores, alive, groups)
        by_kind = auc_by_kind(scores, alive, legal, depth, groups)
        by_path = [([scores[r] for r in rows], [alive[r] for r in rows]) for rows in paths.values()]
        threshold = given.get(name)
        if threshold is None:
            threshold, f1 = best_threshold(by_path)
        else:
            f1 = dead_step_f1(by_path, threshold)
        result["designs"][name] = {"auc": auc, "puzzles_with_both": n_groups, "dead_step_f1": f1,
                                   "auc_vs_slips": by_kind["slips"], "auc_vs_dead_ends": by_kind["dead ends"],
                                   "auc_vs_dead_ends_by_step": [by_kind[f"dead ends after step {d}"]
                                                                for d in (1, 2, 3)]}
        result["thresholds"][name] = threshold
    chosen = "given (" + args.thresholds + ")" if args.thresholds else f"chosen on this split ({args.split})"
    lines = [f"# Values against V* on countdown ({run_dir}, {args.split})", "",
             f"`python experiments/countdown_values.py {' '.join(sys.argv[1:])}`", "",
             f"{len(puzzles)} puzzles × {args.n} responses of the SFT policy at T={args.temperature}: "
             f"{len(states)} states after a step, {100 * result['alive_share']:.1f}% of them alive (V* = 1), "
             f"{100 * legal.count(False) / len(legal):.1f}% after a slip. "
             f"Thresholds for the first dead step: {chosen}.", "",
             "| value | within-problem AUC of states | against slips only | against dead ends only | dead ends after "
             "step 1 / 2 / 3 | puzzles with both | first-dead-step F1 | threshold |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for name, d in result["designs"].items():
        by_step = " / ".join(map(fmt, d["auc_vs_dead_ends_by_step"]))
        lines.append(f"| {name} | {fmt(d['auc'])} | {fmt(d['auc_vs_slips'])} | {fmt(d['auc_vs_dead_ends'])} | "
                     f"{by_step} | {d['puzzles_with_both']} | {d['dead_step_f1']:.3f} | "
                     f"{result['thresholds'][name]:.4g} |")
    out = Path(args.out or ROOT / "experiments" / "results" / f"countdown_values_{args.split}.md")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
