"""metrics.jsonl always; wandb offline when asked, without a key or network."""
import json

import pytest

from oreo.metrics import MetricsLogger, read_metrics


def test_jsonl_rows_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = MetricsLogger(tmp_path)
    logger.log("sft", 1, {"loss": 2.0})
    logger.log("oreo", 1, {"value_loss": 0.5, "kl": 0.01})
    logger.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["stage"], r["step"]) for r in rows] == [("sft", 1), ("oreo", 1)]
    assert rows[1]["value_loss"] == 0.5 and logger.wandb is None


def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = MetricsLogger(tmp_path, wandb_cfg={"mode": "offline", "project": "oreo-test"}, config={"a": 1})
    for step in range(3):
        logger.log("sft", step, {"loss": 1.0 / (step + 1)})
    logger.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 3
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["loss"] == pytest.approx(1 / 3)
