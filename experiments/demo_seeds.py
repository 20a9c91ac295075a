"""An experiment's table over several seeds: ``python experiments/demo_seeds.py --seeds 0 1 2 [overrides...]``.

Runs ``python -m oreo.train seed=S run_dir=OUT/S [overrides]`` for each seed (finished runs are reused),
then prints method × split greedy accuracy (agents: success rate) as mean ± standard deviation and the
per-seed values, and writes the same as markdown to ``experiments/results/NAME.md``. The household
agents: ``python experiments/demo_seeds.py --out runs/household_seeds --name household_seeds +experiment=household``.
``--module oreo.rest_mcts`` (or ``oreo.cpl``) runs that entry point instead of ``oreo.train``: ReST-MCTS*'s rounds
over seeds, ``--out runs/rest_mcts --name rest_mcts_seeds +experiment=rest_mcts``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/seeds")
    parser.add_argument("--name", default="demo_seeds", help="the table's file: experiments/results/NAME.md")
    parser.add_argument("--module", default="oreo.train", help="the entry point each seed runs")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args()
    results, times = {}, {}
    for seed in args.seeds:
        run_dir = ROOT / args.out / str(seed)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", args.module, f"seed={seed}", f"run_dir={run_dir}", *args.overrides],
                       cwd=ROOT, check=True)
        times[seed] = time.perf_counter() - start
        results[seed] = json.loads((run_dir / "metrics.json").read_text())
    table = format_markdown(results, times, [f"-m {args.module}", *args.overrides])
    print(table)
    out = ROOT / "experiments" / "results" / f"{args.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")


def format_markdown(results: dict, times: dict, overrides: list[str]) -> str:
    first = next(iter(results.values()))
    methods = [m for m in first if all(m in r for r in results.values())]  # every method each seed measured
    splits = list(next(iter(results.values()))["sft"])
    lines = [f"Greedy accuracy or success rate (%) over seeds {sorted(results)}, mean ± std (per-seed values)",
             f"overrides: {' '.join(overrides) or '(none)'}", "",
             "| method | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for m in methods:
        cells = []
        for s in splits:
            vals = [100 * results[seed][m][s] for seed in sorted(results)]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {std:.1f} ({', '.join(f'{v:.1f}' for v in vals)})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "wall time of this command per seed (s; a finished run is reused, not run again): "
              + ", ".join(f"seed {s}: {t:.0f}" for s, t in sorted(times.items()))]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
