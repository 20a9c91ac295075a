"""Metrics: every logged step goes to ``metrics.jsonl`` and, when enabled, to wandb.

wandb runs online when a key is configured, offline otherwise, and is disabled with
``WANDB_MODE=disabled`` (the tests do this) or ``wandb.mode=disabled`` in the config.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, wandb_cfg: dict | None = None, config: dict | None = None,
                 enabled: bool = True):
        """``enabled=False`` (ranks other than 0) logs nothing."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.wandb = None
        self._rows = 0
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wandb_cfg = dict(wandb_cfg or {})
        mode = os.environ.get("WANDB_MODE") or wandb_cfg.get("mode", "auto")
        if mode != "disabled":
            self.wandb = _start_wandb(run_dir, mode, wandb_cfg, config)

    def log(self, stage: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"stage": stage, "step": step, "time": time.time(), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            # wandb wants one monotone step across stages: count logged rows instead of stage steps.
            self._rows += 1
            self.wandb.log({f"{stage}/{k}": v for k, v in values.items()}, step=self._rows)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(run_dir, mode: str, cfg: dict, config: dict | None):
    try:
        import wandb
    except ImportError:
        return None
    if mode == "auto":
        has_key = bool(os.environ.get("WANDB_API_KEY")) or Path("~/.netrc").expanduser().exists()
        mode = "online" if has_key else "offline"
    return wandb.init(project=cfg.get("project", "oreo"), name=cfg.get("name"), dir=str(run_dir),
                      mode=mode, config=config, reinit="finish_previous")


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
