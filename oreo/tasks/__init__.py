"""Problem sources with graders, and agent environments.

Their interfaces are ``oreo.types.Task`` (``kind = "single_turn"``: ``problems(split)``,
``grade(problem, text)``, ``split_steps(text)``, ``step_stops``, ``sft_records(seed, n_per_problem)``)
and ``oreo.types.AgentTask`` (``kind = "agent"``: games, ``make_env()``, ``prompt(game, first_observation)``,
``max_steps``, ``sft_records`` of expert episodes). ``TASKS`` registers them by name."""
from __future__ import annotations

import importlib

from oreo.config import ConfigError

# name → (module, config dataclass, task class); a task's module is imported when it is first made
# (alfworld's pulls in its game engine)
TASKS = {
    "arithmetic": ("oreo.tasks.arithmetic", "ArithmeticConfig", "ArithmeticTask"),
    "gsm8k": ("oreo.tasks.math_tasks", "MathConfig", "MathTask"),
    "math": ("oreo.tasks.math_tasks", "MathConfig", "MathTask"),
    "household": ("oreo.tasks.household", "HouseholdConfig", "HouseholdTask"),
    "alfworld": ("oreo.tasks.alfworld", "AlfworldConfig", "AlfworldTask"),
}


def make_task(cfg: dict):
    """Build the task named by ``cfg["name"]`` (``TASKS``); the other keys are its settings."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    module, config_class, task_class = TASKS[name]
    module = importlib.import_module(module)
    config = getattr(module, config_class)
    if "name" in config.__dataclass_fields__:  # one config class for several tasks
        cfg["name"] = name
    try:
        return getattr(module, task_class)(config(**cfg))
    except TypeError as e:
        raise ValueError(f"task '{name}': {e} (see conf/task/{name}.yaml for the known keys)") from None
    except ConfigError as e:
        raise ConfigError(f"task.{e.key}", e.problem) from None


def task_vocabulary(name: str) -> list[str]:
    """The closed vocabulary of an embedded task, for a tiny model's word tokenizer."""
    if name == "household":
        from oreo.tasks.household import vocabulary

        return vocabulary()
    raise ValueError(f"model.tiny.vocabulary: {name!r} has no word list; use chars or household")
