"""Paired seeds: every method against its baseline on the same seeds, with a bootstrap 95% interval.

    python experiments/seeds.py --seeds 0 1 2 3 4 5 6 7 8 9 --out runs/countdown_seeds --name countdown_seeds \\
        --jobs 2 +experiment=countdown "stages=[sft,collect,rft,oreo,dpo,kto]" threads=1

Runs ``python -m MODULE seed=S run_dir=OUT/S [overrides]`` for each seed (``--jobs`` at a time; a finished run
is reused), reads each run's ``metrics.json`` (method → split → accuracy) and reports, per split:

- each method's mean ± std and per-seed values;
- each pair of ``--pairs`` (default: every method against ``sft``, and ``oreo`` against ``rft``, ``dpo`` and
  ``kto`` where they ran) as the mean of the per-seed differences, its percentile bootstrap 95% interval
  (10,000 resamples of the seeds) and whether the interval excludes 0.

``--variant NAME METHOD KEY=VALUE...`` adds a row NAME: METHOD trained again with those settings on a branch of
each seed's run (its SFT model and collection; ``experiments/tune.py``'s ``branch``), so the variant is paired with
the others on the same seed (for example ``--variant oreo_step oreo oreo.granularity=step``).

Writes ``experiments/results/NAME.md`` and ``NAME.json``, with the command, the commit, the machine and the
package versions. The seed changes the problems, the teacher's data and every initialisation, so a paired
difference holds all of them fixed.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from oreo.stats import mean_std, paired  # noqa: E402


def run_seed(module: str, seed: int, run_dir: Path, overrides: list[str], variants: list[list[str]] = ()
             ) -> tuple[float, dict]:
    """Run one seed (then its variants); the wall time and its results (method → split → accuracy)."""
    from tune import branch

    start = time.perf_counter()
    log = run_dir.with_name(f"{run_dir.name}.log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        proc = subprocess.run([sys.executable, "-m", module, f"seed={seed}", f"run_dir={run_dir}", *overrides],
                              cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed (status {proc.returncode}): see {log}")
    results = json.loads((run_dir / "metrics.json").read_text())
    for name, method, *settings in variants:
        metrics = branch(run_dir, run_dir.with_name(f"{run_dir.name}-{name}"), method, [*overrides, *settings],
                         seed=seed, module=module)
        results[name] = metrics[method]
    return time.perf_counter() - start, results


def points(x: float) -> str:
    return f"{round(x, 1) + 0.0:+.1f}"   # + 0.0: no "-0.0"


def default_pairs(methods: list[str]) -> list[tuple[str, str]]:
    pairs = [(m, "sft") for m in methods if m != "sft" and "sft" in methods]
    return pairs + [("oreo", b) for b in ("rft", "dpo", "kto") if "oreo" in methods and b in methods]


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        cpu += f", {info.count('processor')} cores"
    except (OSError, StopIteration):
        pass
    return cpu


def versions() -> str:
    import torch
    import transformers

    return f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"


def commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return proc.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def report(results: dict[int, dict], pairs: list[tuple[str, str]] | None, header: list[str]) -> tuple[str, dict]:
    """Markdown and JSON of ``results`` (seed → method → split → accuracy in [0, 1]), in percent."""
    seeds = sorted(results)
    methods = [m for m in results[seeds[0]] if all(m in results[s] for s in seeds)]
    splits = [s for s in results[seeds[0]][methods[0]] if all(s in results[x][m] for x in seeds for m in methods)]
    pairs = [p for p in (pairs or default_pairs(methods)) if p[0] in methods and p[1] in methods]
    values = {m: {s: [100 * results[x][m][s] for x in seeds] for s in splits} for m in methods}
    lines = [*header, "", f"Seeds: {', '.join(map(str, seeds))}. Accuracy (%), mean ± std, then per seed.", "",
             "| method | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for m in methods:
        cells = [f"{mean_std(values[m][s])[0]:.1f} ± {mean_std(values[m][s])[1]:.1f} "
                 f"({', '.join(f'{v:.1f}' for v in values[m][s])})" for s in splits]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    out = {"seeds": seeds, "accuracy": values, "paired": []}
    if pairs:
        lines += ["", "Paired differences (points): mean over seeds of A − B on the same seed, percentile bootstrap "
                      "95% interval over seeds (10,000 resamples), per-seed differences.", "",
                  "| A − B | split | mean | 95% interval | verdict | per seed |", "|---|---|---|---|---|---|"]
        for a, b in pairs:
            for s in splits:
                p = paired(a, b, values[a][s], values[b][s])
                lines.append(f"| {a} − {b} | {s} | {points(p.mean)} | [{points(p.low)}, {points(p.high)}] | "
                             f"{p.verdict} | {', '.join(points(d) for d in p.diffs)} |")
                out["paired"].append({"a": a, "b": b, "split": s, "mean": p.mean, "low": p.low, "high": p.high,
                                      "diffs": list(p.diffs)})
    return "\n".join(lines), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--out", default="runs/seeds")
    parser.add_argument("--name", default="seeds", help="the report's files: experiments/results/NAME.md|json")
    parser.add_argument("--module", default="oreo.train", help="the entry point each seed runs")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (give each threads=1)")
    parser.add_argument("--pairs", nargs="*", default=None, help="A-B pairs (default: every method - sft, oreo - "
                                                                  "rft, dpo, kto)")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME METHOD KEY=VALUE",
                        help="a row NAME: METHOD trained again with KEY=VALUE settings on each seed's run")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    if any(len(v) < 2 for v in args.variant):
        raise SystemExit("--variant NAME METHOD [KEY=VALUE ...]")
    pairs = [tuple(p.split("-", 1)) for p in args.pairs] if args.pairs else None

    run_dirs = {s: (ROOT / args.out / str(s)).resolve() for s in args.seeds}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = dict(zip(args.seeds, pool.map(lambda s: run_seed(args.module, s, run_dirs[s], args.overrides,
                                                                 args.variant), args.seeds)))
    times, results = {s: t for s, (t, _) in done.items()}, {s: r for s, (_, r) in done.items()}
    command = " ".join(["python experiments/seeds.py", *sys.argv[1:]])
    header = [f"# {args.name}", "", f"`{command}`", "",
              f"Measured {date.today().isoformat()} at commit {commit()} on {machine()}; {versions()}. Wall time "
              f"per seed (s; a finished run is reused): " + ", ".join(f"{s}: {t:.0f}" for s, t in times.items())]
    markdown, data = report(results, pairs, header)
    data.update(command=command, wall_s=times)
    print(markdown)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(markdown + "\n")
    (out / f"{args.name}.json").write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
