"""Why Step-APO does or does not help: ``python experiments/cpl_pairs.py RUN_DIR [RUN_DIR ...] [--out FILE]``.

Each ``RUN_DIR`` is a finished ``python -m oreo.cpl`` run, one per seed (its SFT model and round-1 trees are
reused). From the same SFT model and the same trees, each variant trains round 1's Step-APO with other
pairs or another loss (``VARIANTS``: the pair rule's baseline and kinds, the solution pairs, α, β, epochs, lr)
and is evaluated greedily. The table gives the pairs each rule finds (plan/plan, solution/solution,
plan/solution), the accuracy per split, and the shares of answers that leave an operation out or are sound
(``experiments/mistakes.py``), next to the run's own methods, as mean ± std over the runs.

``--iterations N --round K`` first searches a new round ``K`` of trees with N simulations from the SFT model
(the more-simulations experiment) and trains the variants on those; ``--value STAGE`` searches it with a
trained value model (the run's ``value_round1``: the value-head initialisation experiment) instead of round
1's untrained head. Every variant is a stage of the run (``step_apo_round1_<variant>``, evaluated as
``<variant>``), so an interrupted ablation resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections import Counter
from pathlib import Path

from mistakes import summarise

from oreo.run_config import read_run_config
from oreo.stages import StageId

# name → StepAPOConfig changes; "reference" is the paper's rule and loss (round 1's step_apo stage)
VARIANTS = {
    "reference": {},
    "step_dpo": {"alpha": 0.0},
    "node": {"baseline": "node"},
    "any": {"kinds": "any"},
    "node_any": {"baseline": "node", "kinds": "any"},
    "node_any_plans_only": {"baseline": "node", "kinds": "any", "solution_pairs": False},
    "node_any_step_dpo": {"baseline": "node", "kinds": "any", "alpha": 0.0},
    "node_any_alpha3": {"baseline": "node", "kinds": "any", "alpha": 3.0},
    "node_any_beta0.1": {"baseline": "node", "kinds": "any", "beta": 0.1},
    "node_any_beta1": {"baseline": "node", "kinds": "any", "beta": 1.0},
    "node_any_beta1_step_dpo": {"baseline": "node", "kinds": "any", "beta": 1.0, "alpha": 0.0},
    "node_any_epochs9": {"baseline": "node", "kinds": "any", "train": {"epochs": 9}},
    "node_any_lr3e-4": {"baseline": "node", "kinds": "any", "train": {"lr": 3e-4}},
}
# the run's own methods (python -m oreo.cpl), shown first
RUN_METHODS = ("sft", "instance_dpo_round1", "step_dpo_round1", "step_apo_round1", "sft_round2", "step_apo_round2")


def pair_counts(records: list, cfg) -> Counter:
    """How many pairs of each kind (``StepPair.kind``) the rule of ``cfg`` finds in ``records``' trees, and as
    ``backed`` how many of the pairs that are not two solutions the outcomes back: the chosen step's subtree holds
    a right solution (a win) and the rejected's none. The others get their order from the values backed up."""
    from oreo.search.plan_data import step_apo_pairs, trees_of
    from oreo.search.process_values import min_steps_to_correct
    from oreo.search.tree import normalise

    counts = Counter()
    for tree in trees_of(records):
        _, winning = min_steps_to_correct(tree)   # the nodes with a right solution (a won game) below them
        for p in step_apo_pairs(tree, **cfg.pair_rule()):
            counts[p.kind] += 1
            if p.kind != "solutions":
                child = tree.nodes[p.node_id].children
                counts["backed"] += (child[normalise(p.chosen)] in winning
                                     and child[normalise(p.rejected)] not in winning)
    return counts


def ablate(run_dir: Path, variants: list[str], round_: int, iterations: int | None, value: str | None) -> dict:
    """Train and evaluate ``variants`` in ``run_dir``; ``{method: {"pairs": Counter | None, split: accuracy,
    split + " skip": skip share}}`` for them and the run's own methods."""
    from oreo.pipeline import Run
    cfg = dataclasses.replace(read_run_config(run_dir), run_dir=str(run_dir))
    tag = "" if round_ == 1 else f"_r{round_}"
    if iterations:
        cfg = dataclasses.replace(cfg, mcts=dataclasses.replace(cfg.mcts, iterations=iterations))
    run = Run(cfg)
    sft_dir = run.sft()
    if iterations:
        run.collect_trees(sft_dir, run.checkpoint(value) if value else None, round=round_,
                          max_problems=cfg.cpl.max_problems)
    records = run.training_records([round_])
    out = {}
    for name in variants:
        changes = dict(VARIANTS[name])
        if "train" in changes:
            changes["train"] = dataclasses.replace(cfg.step_apo.train, **changes["train"])
        method_cfg = dataclasses.replace(cfg.step_apo, **changes)
        policy = run.train_method(StageId("step_apo", 1, variant=f"{name}{tag}"), sft_dir, rounds=[round_],
                                  method_cfg=method_cfg)
        run.evaluate(f"{name}{tag}", policy or sft_dir)
        out[f"{name}{tag}"] = {"pairs": pair_counts(records, method_cfg)}
    accuracy = json.loads((run_dir / "metrics.json").read_text())
    methods = [m for m in RUN_METHODS if m in accuracy] + list(out)
    for m in methods:
        row = out.setdefault(m, {"pairs": None})
        for split in cfg.evaluate.splits:
            row[split] = 100 * accuracy[m][split]
            if cfg.task.name == "arithmetic":   # the mistakes are the arithmetic task's
                kinds = summarise(run_dir / "eval" / f"{m}-{split}.jsonl")
                row[f"{split} skip"], row[f"{split} sound"] = kinds["skip"], kinds["sound"]
    return {m: out[m] for m in methods}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def format_table(results: dict[Path, dict], splits: list[str], note: str) -> str:
    """Methods × (pairs per run, then per split: accuracy, and for the arithmetic task the skip and sound shares;
    mean ± std over the runs)."""
    runs = list(results.values())
    methods = [m for m in runs[0] if all(m in r for r in runs)]
    kinds = ("", " skip", " sound") if all(f"{splits[0]} skip" in r[m] for r in runs for m in methods) else ("",)
    lines = [note, "", "| method | pairs per run, by kind | "
             + " | ".join(f"{s}{k}" for s in splits for k in kinds) + " |",
             "|---|---|" + "---|" * (len(kinds) * len(splits))]
    for m in methods:
        pairs = sorted({k for r in runs for k in (r[m]["pairs"] or {})})
        counts = ", ".join(f"{k} {statistics.mean(r[m]['pairs'][k] for r in runs):.0f}" for k in pairs)
        lines.append(f"| {m} | {counts} | " + " | ".join(
            mean_std([r[m][f"{s}{k}"] for r in runs]) for s in splits for k in kinds) + " |")
    return "\n".join(lines)


def plot(results: dict[Path, dict], splits: list[str], path: Path) -> None:
    """Per method, mean ± std over the runs: accuracy per split (left), skip and sound shares per split (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(results.values())
    methods = [m for m in runs[0] if all(m in r for r in runs)]
    panels = [("greedy accuracy (%)", [(s, s) for s in splits])]
    if all(f"{splits[0]} skip" in r[m] for r in runs for m in methods):
        panels.append(("share of answers (%)", [(f"{s} {k}", f"{s} {k}") for s in splits for k in ("skip", "sound")]))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 0.35 * len(methods) + 1.5), squeeze=False)
    for ax, (label, series) in zip(axes[0], panels):
        height = 0.8 / len(series)
        for j, (key, name) in enumerate(series):
            values = [[r[m][key] for r in runs] for m in methods]
            ax.barh([i + j * height for i in range(len(methods))], [statistics.mean(v) for v in values], height,
                    xerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values], label=name)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(methods))], methods)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"CPL: Step-APO variants, mean ± std over {len(runs)} run(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="python -m oreo.cpl runs, one per seed")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--round", type=int, default=1, help="the round of trees to train on")
    parser.add_argument("--iterations", type=int, help="search round --round anew with this many simulations")
    parser.add_argument("--value", help="... with this stage's value model (default: an untrained head)")
    parser.add_argument("--out", type=Path, help="write the table here as markdown (and a plot beside it, .png)")
    args = parser.parse_args()
    results = {d: ablate(d, args.variants, args.round, args.iterations, args.value) for d in args.run_dirs}
    first = read_run_config(args.run_dirs[0])
    splits = list(first.evaluate.splits)
    search = f" ({args.iterations} simulations, value {args.value or 'untrained'})" if args.iterations else ""
    command = " ".join(["python experiments/cpl_pairs.py", *map(str, args.run_dirs)] + (
        [f"--round {args.round} --iterations {args.iterations}"] if args.iterations else []) + (
        [f"--value {args.value}"] if args.value else []))
    shares = (", the share of answers that leave an operation out (skip, %) and of answers with every line right "
              "(sound, %)") if first.task.name == "arithmetic" else " (agents: success)"
    note = (f"Step-APO variants from each run's SFT model on its round-{args.round} trees{search}: greedy accuracy "
            f"(%){shares}, mean ± std over the runs. `{command}`. Pairs `backed`: of the pairs that are not two "
            f"solutions, those whose chosen step leads to a win in the tree and the rejected one to none.")
    table = format_table(results, splits, note)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
        plot(results, splits, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
