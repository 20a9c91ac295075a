"""Choose a method's settings on the validation split, from one finished run's SFT model and collection.

    python experiments/tune.py --base runs/cd0 --method oreo --grid oreo.beta=0.03,0.1,0.3 \\
        --name countdown_tune_oreo --jobs 2 +experiment=countdown threads=1

Each point of the grid (the product of the ``--grid`` lists) is a branch of ``--base``: a copy of its run
record, SFT checkpoint, buffer and reference cache in ``OUT/METHOD/POINT``, where ``METHOD`` alone is
trained with the point's settings (again, with ``recompute=[METHOD]``, if the base trained it) and evaluated
greedily on ``--split`` (never the test split). The SFT model's accuracy on that split is the reference line. Writes
``experiments/results/NAME.md`` and ``NAME.json``: the search space, each point's accuracy, the choice (the
highest; ties to the earliest point) with the command, the commit, the machine and the package versions.
``branch`` is also how ``experiments/seeds.py --variants`` trains a variant on every seed's run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from seeds import commit, machine, versions  # noqa: E402

# what a branch keeps of its base: the run record, the config, the SFT model, the collection, the reference cache
KEPT = ("run.json", "config.yaml", "buffer", "cache", "checkpoints/sft")


def branch(base: Path, dst: Path, method: str, overrides: list[str], *, seed: int | None = None,
           splits: list[str] | None = None, module: str = "oreo.train") -> dict:
    """Train ``method`` again in a copy of the finished run ``base`` (made once in ``dst``) with ``overrides``,
    evaluate it (and SFT) on ``splits``; return ``dst``'s ``metrics.json`` (method → split → accuracy).
    A branch that finished before is read, not run again."""
    log = dst.with_name(f"{dst.name}.log")
    if not (dst / "run.json").exists():
        missing = [k for k in KEPT if not (base / k).exists()]
        if missing:
            raise SystemExit(f"{base} cannot be branched: it has no {', '.join(missing)} (run sft and collect first)")
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for k in KEPT:
            (tmp / k).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (base / k).is_dir() else shutil.copy2)(base / k, tmp / k)
        tmp.rename(dst)
    stage_overrides = [f"stages=[sft,collect,{method}]", f"run_dir={dst}"]
    if method in json.loads((dst / "run.json").read_text()).get("settings", {}):
        stage_overrides.append(f"recompute=[{method}]")   # the base trained it: train it again, not reuse it
    if seed is not None:
        stage_overrides.append(f"seed={seed}")
    if splits:
        stage_overrides.append(f"evaluate.splits=[{','.join(splits)}]")
    metrics = dst / "metrics.json"
    done = dst / "branch.done"
    if not done.exists():
        with open(log, "a") as out:
            proc = subprocess.run([sys.executable, "-m", module, *overrides, *stage_overrides], cwd=ROOT,
                                  stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"branch {dst} failed (status {proc.returncode}): see {log}")
        done.write_text(json.dumps(overrides) + "\n")
    return json.loads(metrics.read_text())


def grid_points(grid: list[str]) -> list[list[str]]:
    """``["a=1,2", "b=x"]`` → ``[["a=1", "b=x"], ["a=2", "b=x"]]`` (the product, in the order given)."""
    axes = []
    for g in grid:
        key, sep, values = g.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {g!r}: write KEY=V1,V2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(p) for p in itertools.product(*axes)]


def point_name(point: list[str]) -> str:
    return "_".join(key.rsplit(".", 1)[-1] + value for key, _, value in (p.partition("=") for p in point)) or "default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a finished run with sft and collect")
    parser.add_argument("--method", required=True, help="the stage trained again: oreo, rft, dpo, kto, ...")
    parser.add_argument("--grid", nargs="+", required=True, help="KEY=V1,V2,... (the product of all is searched)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--out", default="runs/tune")
    parser.add_argument("--name", required=True, help="the report's files: experiments/results/NAME.md|json")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--module", default="oreo.train", help="the entry point each point runs")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every point (the base's experiment)")
    args = parser.parse_args()
    if args.split == "test":
        raise SystemExit("--split test: settings are chosen on validation, never on the test split")

    base = Path(args.base).resolve()
    points = grid_points(args.grid)
    dirs = [(ROOT / args.out / args.method / point_name(p)).resolve() for p in points]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        metrics = list(pool.map(lambda pd: branch(base, pd[1], args.method, [*args.overrides, *pd[0]],
                                                  splits=[args.split], module=args.module),
                                      zip(points, dirs)))
    scores = [100 * m[args.method][args.split] for m in metrics]
    sft = 100 * metrics[0]["sft"][args.split]
    best = max(range(len(points)), key=lambda i: (scores[i], -i))
    command = " ".join(["python experiments/tune.py", *sys.argv[1:]])
    lines = [f"# {args.name}", "", f"`{command}`", "",
             f"Measured {date.today().isoformat()} at commit {commit()} on {machine()}; {versions()}; "
             f"{time.perf_counter() - start:.0f} s. {args.method} trained again from {args.base}'s SFT model and "
             f"collection for each point; greedy accuracy (%) on {args.split} (SFT: {sft:.1f}).", "",
             "| settings | " + args.split + " |", "|---|---|"]
    lines += [f"| {' '.join(p)}{' (chosen)' if i == best else ''} | {s:.1f} |" for i, (p, s) in
              enumerate(zip(points, scores))]
    print("\n".join(lines))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps(
        {"command": command, "split": args.split, "method": args.method, "sft": sft, "chosen": points[best],
         "points": [{"settings": p, "accuracy": s} for p, s in zip(points, scores)]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
