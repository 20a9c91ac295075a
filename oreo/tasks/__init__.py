"""Problem sources with graders, and agent environments.

A single-turn task has ``name``, ``problems(split)``, ``grade(problem, text)``, ``split_steps(text)``,
``step_stops`` (the strings that end a step) and ``sft_records(seed, n_per_problem)``. An agent task
(``is_agent = True``, ``oreo.tasks.agent``) has ``problems(split)`` (its games), ``make_env()``,
``prompt(game, first_observation)``, ``max_steps`` and ``sft_records`` (expert episodes)."""
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
    if name == "household":
        from oreo.tasks.household import HouseholdConfig, HouseholdTask

        try:
            return HouseholdTask(HouseholdConfig(**cfg))
        except TypeError as e:
            raise ValueError(f"task '{name}': {e} (see conf/task/{name}.yaml for the known keys)") from None
    if name == "alfworld":
        from oreo.tasks.alfworld import AlfworldConfig, AlfworldTask

        try:
            return AlfworldTask(AlfworldConfig(**cfg))
        except TypeError as e:
            raise ValueError(f"task '{name}': {e} (see conf/task/{name}.yaml for the known keys)") from None
    raise ValueError(f"unknown task {name!r}; known: arithmetic, gsm8k, math, household, alfworld")


def task_vocabulary(name: str) -> list[str]:
    """The closed vocabulary of an embedded task, for a tiny model's word tokenizer."""
    if name == "household":
        from oreo.tasks.household import vocabulary

        return vocabulary()
    raise ValueError(f"model.tiny.vocabulary: {name!r} has no word list; use chars or household")
