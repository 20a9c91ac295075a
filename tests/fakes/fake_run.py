"""A stand-in for ``python -m oreo.train`` in the seeds runner's and the tuner's tests: writes RUN_DIR/metrics.json
(and the files a branch copies) from the seed; ``oreo.beta=B`` adds B to OREO's accuracies, as a trained variant."""
import json
import sys
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:])
seed, run_dir = int(args.get("seed", 0)), Path(args["run_dir"])
run_dir.mkdir(parents=True, exist_ok=True)
calls = run_dir / "calls"
calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))
for folder in ("buffer", "cache", "checkpoints/sft"):
    (run_dir / folder).mkdir(parents=True, exist_ok=True)
(run_dir / "config.yaml").touch()
record = run_dir / "run.json"
if not record.exists():
    record.write_text(json.dumps({"settings": {"sft": {}, "collect_0": {}, "oreo": {}}}))
for stage in args.get("recompute", "[]").strip("[]").split(","):   # as the real run: only a stage it has
    if stage and stage not in json.loads(record.read_text())["settings"]:
        sys.exit(f"recompute: {stage!r} is not a stage of {run_dir}")
bonus = float(args.get("oreo.beta", 0.0))
splits = args.get("evaluate.splits", "[test,game24]").strip("[]").split(",")
metrics = {"sft": {"test": 0.40 + 0.01 * seed, "game24": 0.1, "validation": 0.3},
           "rft": {"test": 0.50 + 0.01 * seed + (0.02 if seed % 2 else -0.02), "game24": 0.1, "validation": 0.3},
           "oreo": {"test": 0.50 + 0.01 * seed + bonus, "game24": 0.1 + bonus, "validation": 0.3 + bonus}}
(run_dir / "metrics.json").write_text(json.dumps({m: {s: v[s] for s in splits} for m, v in metrics.items()}))
