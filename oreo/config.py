"""Typed config sections: every setting is checked (type and allowed range) when its section is built,
and an error names the key, e.g. ``sft.train.batch_size: must be >= 1, got -16``.

A dataclass declares each field's range with ``at_least``, ``above``, ``between`` or ``one_of`` and
calls ``validate(self)`` in ``__post_init__``; ``build(cls, values, section)`` makes one from a config
section, naming the section in every error. ``check_run_config`` builds every section of a run's
config before any stage starts, so a bad value fails in seconds, not after SFT.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting is wrong; the message starts with its dotted key."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def at_least(low, default, **kw):
    return field(default=default, metadata={"min": low, **kw})


def above(low, default, **kw):
    return field(default=default, metadata={"gt": low, **kw})


def between(low, high, default, **kw):
    return field(default=default, metadata={"min": low, "max": high, **kw})


def one_of(choices, default, **kw):
    return field(default=default, metadata={"choices": tuple(choices), **kw})


def _allowed(annotation) -> tuple[set, bool]:
    """The plain types a field annotation allows, and whether it allows None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        kinds = set()
        for a in args:
            if a is not type(None):
                kinds |= _allowed(a)[0]
        return kinds, type(None) in args
    return {origin or annotation}, False


def _check_type(value, annotation) -> str | None:
    kinds, optional = _allowed(annotation)
    if value is None:
        return None if optional else "must be set (got null)"
    if kinds & {typing.Any, object}:
        return None
    if float in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if math.isfinite(value) else f"must be a finite number, got {value!r}"
    if int in kinds and isinstance(value, int) and not isinstance(value, bool):
        return None
    if bool in kinds and isinstance(value, bool):
        return None
    if str in kinds and isinstance(value, str):
        return None
    if kinds & {list, tuple} and isinstance(value, (list, tuple)):
        return None
    if any(isinstance(k, type) and dataclasses.is_dataclass(k) and isinstance(value, k) for k in kinds):
        return None
    names = " or ".join(sorted(getattr(k, "__name__", str(k)) for k in kinds))
    return f"must be {names}{' or null' if optional else ''}, got {type(value).__name__} {value!r}"


def validate(obj) -> None:
    """Check every field of the dataclass ``obj`` against its annotation and its range metadata."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = _check_type(value, hints.get(f.name, typing.Any))
        if problem:
            raise ConfigError(f.name, problem)
        if value is None:
            continue
        m = f.metadata
        if "choices" in m and value not in m["choices"]:
            raise ConfigError(f.name, f"must be one of {', '.join(map(str, m['choices']))}, got {value!r}")
        if "min" in m and value < m["min"]:
            raise ConfigError(f.name, f"must be >= {m['min']}{_upper(m)}, got {value!r}")
        if "max" in m and value > m["max"]:
            raise ConfigError(f.name, f"must be <= {m['max']}, got {value!r}")
        if "gt" in m and not value > m["gt"]:
            raise ConfigError(f.name, f"must be > {m['gt']}, got {value!r}")


def _upper(m) -> str:
    return f" and <= {m['max']}" if "max" in m else ""


def build(cls, values: dict, section: str):
    """``cls(**values)``; an unknown key, a wrong type or an out-of-range value raises ``ConfigError``
    naming ``section.key``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}", f"unknown key; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{section}.{e.key}", e.problem) from None


# ---------------------------------------------------------------------------- sections of the run


@dataclass
class EngineConfig:
    backend: str = one_of(("torch", "deepspeed"), "torch")
    zero_stage: int = between(0, 3, 2)
    bf16: bool = False
    offload_optimizer: bool = False

    def __post_init__(self):
        validate(self)


@dataclass
class CollectConfig:
    n: int = at_least(1, 4)                      # samples (episodes) per training problem (game)
    max_problems: int | None = at_least(1, None)  # collect on the first K training problems only
    temperature: float = at_least(0.0, 1.0)
    max_new_tokens: int = at_least(1, 64)
    batch_size: int = at_least(1, 512)
    balanced_k: int | None = at_least(1, None)   # train on at most k correct and k incorrect per problem
    from_file: str | None = None                  # import {prompt, response, reward} lines instead of sampling

    def __post_init__(self):
        validate(self)


@dataclass
class SampledEvalConfig:
    n: int = at_least(0, 0)
    temperature: float = at_least(0.0, 1.0)
    ks: list = field(default_factory=lambda: [1, 4, 8])

    def __post_init__(self):
        validate(self)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ConfigError("ks", f"must be whole numbers >= 1, got {self.ks!r}")


@dataclass
class EvaluateConfig:
    splits: list = field(default_factory=lambda: ["test", "heldout"])
    max_new_tokens: int = at_least(1, 96)
    batch_size: int = at_least(1, 512)
    sampled: SampledEvalConfig = field(default_factory=SampledEvalConfig)

    def __post_init__(self):
        validate(self)


@dataclass
class SamplerConfig:
    backend: str = one_of(("hf", "vllm", "auto"), "hf")
    gpu_memory_utilization: float = between(0.01, 1.0, 0.5)

    def __post_init__(self):
        validate(self)


@dataclass
class IterateConfig:
    rounds: int = at_least(1, 3)
    reference: str = one_of(("sft", "previous"), "sft")
    data: str = one_of(("latest", "all"), "latest")

    def __post_init__(self):
        validate(self)


@dataclass
class WandbConfig:
    mode: str = one_of(("auto", "online", "offline", "disabled"), "auto")
    project: str = "oreo"
    name: str | None = None

    def __post_init__(self):
        validate(self)
