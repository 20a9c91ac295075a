"""Trainer state next to the Hugging Face weights: what a run needs to continue (optimizers,
schedulers, step, RNG)."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from oreo.distributed import rank_world


def save_trainer_state(path: Path, engines: dict, step: int | None) -> None:
    """Each engine's optimizer and scheduler under ``path/NAME/``, plus ``path/state.pt`` (step, RNG).

    Called on every rank (DeepSpeed saves its partitioned optimizer state collectively)."""
    path = Path(path)
    for name, engine in engines.items():
        (path / name).mkdir(parents=True, exist_ok=True)
        engine.save_state(path / name)
    if rank_world()[0] == 0:
        torch.save({"step": step, "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()},
                   path / "state.pt")


def load_trainer_state(path: Path, engines: dict) -> dict:
    """Restore what ``save_trainer_state`` wrote; returns ``{"step": ...}`` and restores the RNGs."""
    path = Path(path)
    for name, engine in engines.items():
        engine.load_state(path / name)
    state = torch.load(path / "state.pt", weights_only=False)
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return {"step": state["step"]}
