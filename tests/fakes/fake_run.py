"""A stand-in for ``python -m oreo.train`` in the seeds runner's test: writes RUN_DIR/metrics.json from the seed."""
import json
import sys
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:])
seed, run_dir = int(args["seed"]), Path(args["run_dir"])
run_dir.mkdir(parents=True, exist_ok=True)
calls = run_dir / "calls"
calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))
metrics = {"sft": {"test": 0.40 + 0.01 * seed, "game24": 0.1},
           "rft": {"test": 0.50 + 0.01 * seed + (0.02 if seed % 2 else -0.02), "game24": 0.1},
           "oreo": {"test": 0.50 + 0.01 * seed, "game24": 0.1}}
(run_dir / "metrics.json").write_text(json.dumps(metrics))
