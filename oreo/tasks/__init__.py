"""Problem sources with graders. A task has ``name``, ``problems(split)``, ``grade(problem, text)``,
``split_steps(text)``, ``step_stops`` (the strings that end a step) and ``sft_records(seed, n_per_problem)``."""
from __future__ import annotations


def make_task(cfg: dict):
    """Build the task named by ``cfg["name"]``; the other keys are its settings."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name == "arithmetic":
        from oreo.tasks.arithmetic import ArithmeticConfig, ArithmeticTask

        try:
            return ArithmeticTask(ArithmeticConfig(**cfg))
        except TypeError as e:
            raise ValueError(f"task '{name}': {e} (see conf/task/{name}.yaml for the known keys)") from None
    if name in ("gsm8k", "math"):
        from oreo.tasks.math_tasks import MathConfig, MathTask

        try:
            return MathTask(MathConfig(name=name, **cfg))
        except TypeError as e:
            raise ValueError(f"task '{name}': {e} (see conf/task/{name}.yaml for the known keys)") from None
    raise ValueError(f"unknown task {name!r}; known: arithmetic, gsm8k, math")
