"""Trainer state round-trips: optimizer moments, scheduler position, step and RNG."""
import random

import torch
from torch import nn

from oreo.checkpoint import load_trainer_state, save_trainer_state
from oreo.engine import OptimConfig, TorchEngine


def trained_engine(seed: int) -> TorchEngine:
    torch.manual_seed(seed)
    engine = TorchEngine(nn.Linear(4, 2), OptimConfig(lr=0.1), total_steps=10, accumulation=1)
    for _ in range(3):
        engine.backward(engine.module(torch.randn(5, 4)).pow(2).mean())
        engine.step()
    return engine


def test_trainer_state_round_trip(tmp_path):
    engine = trained_engine(0)
    torch.manual_seed(123)
    random.seed(7)
    save_trainer_state(tmp_path / "state", {"policy": engine}, step=3)
    expected_draw, expected_py = torch.rand(3), random.random()

    fresh = TorchEngine(nn.Linear(4, 2), OptimConfig(lr=0.1), total_steps=10, accumulation=1)
    fresh.module.load_state_dict(engine.module.state_dict())
    torch.manual_seed(999)
    info = load_trainer_state(tmp_path / "state", {"policy": fresh})
    assert info["step"] == 3
    assert torch.equal(torch.rand(3), expected_draw) and random.random() == expected_py
    assert fresh.scheduler.get_last_lr() == engine.scheduler.get_last_lr()
    for a, b in zip(engine.optimizer.state.values(), fresh.optimizer.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    # one more identical step on both gives identical parameters
    x = torch.randn(5, 4)
    for e in (engine, fresh):
        e.backward(e.module(x).pow(2).mean())
        e.step()
    for p, q in zip(engine.module.parameters(), fresh.module.parameters()):
        assert torch.equal(p, q)
