"""Problem sources with graders, and agent environments.

Their interfaces are ``oreo.types.Task`` (``kind = "single_turn"``: ``problems(split)``,
``grade(problem, text)``, ``split_steps(text)``, ``step_stops``, ``sft_records(seed, n_per_problem)``)
and ``oreo.types.AgentTask`` (``kind = "agent"``: games, ``make_env()``, ``prompt(game, first_observation)``,
``max_steps``, ``sft_records`` of expert episodes). ``TASKS`` registers them by name."""
from __future__ import annotations

import importlib

from oreo.config import ConfigError, build

# name → (module, config dataclass, task class); a task's module is imported when it is first made
# (alfworld's pulls in its game engine)
TASKS = {
    "arithmetic": ("oreo.tasks.arithmetic", "ArithmeticConfig", "ArithmeticTask"),
    "countdown": ("oreo.tasks.countdown", "CountdownConfig", "CountdownTask"),
    "gsm8k": ("oreo.tasks.math_tasks", "MathConfig", "MathTask"),
    "math": ("oreo.tasks.math_tasks", "MathConfig", "MathTask"),
    "household": ("oreo.tasks.household", "HouseholdConfig", "HouseholdTask"),
    "alfworld": ("oreo.tasks.alfworld", "AlfworldConfig", "AlfworldTask"),
}


def _load(name: str):
    if name not in TASKS:
        raise ConfigError("task.name", f"unknown task {name!r}; known: {', '.join(TASKS)}")
    module, config_class, task_class = TASKS[name]
    module = importlib.import_module(module)
    return getattr(module, config_class), getattr(module, task_class)


def task_config_class(name: str) -> type:
    """The config dataclass of the task ``name`` (its defaults are the task's defaults)."""
    return _load(name)[0]


def task_kind(name: str) -> str:
    """``"single_turn"`` or ``"agent"``: the kind of the task ``name``."""
    return _load(name)[1].kind


def task_config(values: dict):
    """The typed config of the task named by ``values["name"]``; an unknown key, a wrong type or a value out of
    range fails naming ``task.KEY``."""
    values = dict(values)
    name = values.get("name")
    if not isinstance(name, str):
        raise ConfigError("task.name", f"must name a task ({', '.join(TASKS)}), got {name!r}")
    try:
        return build(task_config_class(name), values, "task")
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError("task", str(e)) from None


def make_task(cfg):
    """Build the task from its typed config (``task_config``) or from a dict of one, such as a run's ``task``
    section; ``cfg.name`` says which task (``TASKS``)."""
    if isinstance(cfg, dict):
        cfg = task_config(cfg)
    return _load(cfg.name)[1](cfg)


def task_vocabulary(name: str) -> list[str]:
    """The closed vocabulary of an embedded task, for a tiny model's word tokenizer."""
    if name == "household":
        from oreo.tasks.household import vocabulary

        return vocabulary()
    raise ValueError(f"model.tiny.vocabulary: {name!r} has no word list; use chars or household")
