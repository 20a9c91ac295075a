"""What each stage of a run is, and what shaped its output, so that a rerun never mixes settings silently.

A stage is a ``StageId``: its kind (``sft``, ``collect``, ``evaluate``, a trained method such as ``rft``, ``oreo``,
``dpo``, or a kind a driver names, such as CPL's ``step_dpo``), the round of a multi-round driver, and a variant
(an experiment's extra training of a round, ``step_apo_round1_node_any``). Its ``name`` is what the run directory
and ``run.json`` use (``collect_2``, ``oreo_round3``); ``StageId.parse`` reads one back.

Each stage records the settings that shaped its output in ``run.json`` ("settings") when it starts: the config
keys its kind declares (``KINDS``), and the seed offset it runs with. A rerun whose settings differ for a stage
that has finished or started refuses, listing the keys (``StageSettingsChanged``); ``recompute=[STAGE, ...]``
redoes a stage and every stage that depends on it. Settings that change how a stage runs but not what it computes
(micro-batch sizes, checkpoint and log intervals, chunk sizes, generation batch sizes) are left out, so they may
change between reruns.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from oreo.trainers import METHODS

# what every stage depends on: the seed, the task, the model (not how it is run)
COMMON = ("seed", "task", "model.name_or_path", "model.dtype", "model.tiny", "model.lora", "model.trust_remote_code")
HOW_NOT_WHAT = (".save_every", ".log_every", ".micro_batch_size", ".chunk_size", "collect.batch_size")
# the key of run.json's stage settings that holds what the stage adds to the run's seed before it runs
SEED_OFFSET = "seed_offset"

_ROUND = "(0|[1-9][0-9]*)"
_COLLECT_NAME = re.compile(f"collect_{_ROUND}")
_ROUND_NAME = re.compile(f"(.+?)_round{_ROUND}(?:_(.+))?")


def _fields(name: str) -> tuple[str, int | None, str | None]:
    """``(kind, round, variant)`` of a stage name: ``collect_2``, ``KIND_roundN``, ``KIND_roundN_VARIANT``, or
    a kind alone."""
    if m := _COLLECT_NAME.fullmatch(name):
        return "collect", int(m[1]), None
    if (m := _ROUND_NAME.fullmatch(name)) and m[1] != "collect":
        return m[1], int(m[2]), m[3]
    return name, None, None


@dataclass(frozen=True)
class StageId:
    """One stage of a run: its ``kind`` (``KINDS``), the ``round`` of the multi-round driver that runs it (None:
    the plain pipeline's stage; ``collect``: the buffer round it writes), and a ``variant``, an experiment's name
    for another training of that kind in that round. Without a round and a variant it also names every stage of
    its kind (``recompute=[oreo]``)."""
    kind: str
    round: int | None = None
    variant: str | None = None

    def __post_init__(self):
        if not self.kind or _fields(self.name) != (self.kind, self.round, self.variant):
            raise ValueError(f"{self!r} is not a stage whose name reads back as itself: a round is a whole number "
                             f"from 0, a variant needs a round (collect has none), a kind names no round")

    @property
    def name(self) -> str:
        """What the run directory (checkpoints/NAME) and run.json use: ``collect_2``, ``oreo_round3``,
        ``step_apo_round1_node_any``, ``sft``."""
        if self.round is None:
            return self.kind
        if self.kind == "collect":
            return f"collect_{self.round}"
        return f"{self.kind}_round{self.round}" + (f"_{self.variant}" if self.variant else "")

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> StageId:
        """The stage that ``name`` names (its ``name`` is ``name`` again): ``collect_2`` → collect, round 2;
        ``oreo_round3`` → oreo, round 3; ``step_apo_round1_node_any`` → step_apo, round 1, variant node_any;
        another name is a kind alone."""
        return cls(*_fields(name))

    @property
    def is_kind(self) -> bool:
        """Whether this names a whole kind (and the plain pipeline's one stage of it)."""
        return self.round is None and self.variant is None


def stage_id(stage: StageId | str) -> StageId:
    """``stage``, or the stage a name (run.json's, ``recompute=[...]``'s) names."""
    return stage if isinstance(stage, StageId) else StageId.parse(stage)


@dataclass(frozen=True)
class Kind:
    """What a kind of stage declares: the config keys (sections or dotted keys) that shape every stage of it,
    those that also shape its rounds from 1 on (the settings of the multi-round drivers that run them), the method
    it trains (``oreo.trainers.METHODS``; None: it trains none) and its seed offset (what it adds to the run's seed
    before it runs, plus ``seed_per_round`` times its round; None: it seeds nothing itself)."""
    shaped_by: tuple[str, ...]
    rounds_shaped_by: tuple[str, ...] = ()
    method: str | None = None
    seed: int | None = None
    seed_per_round: int = 0


# what shapes a method trained on the buffer besides its section
TRAINED = ("collect.balanced_k", "engine.bf16")


def trained(method: str, rounds_shaped_by: tuple[str, ...] = ()) -> Kind:
    """The kind of stage that trains ``method``: shaped by its section (and the buffer's selection), seeded with
    its seed offset."""
    declared = METHODS.get(method)
    return Kind((method, *TRAINED), rounds_shaped_by, method=method, seed=declared.seed if declared else None)


KINDS = {
    # on the task's own solutions (not the buffer's): its section alone
    "sft": Kind(("sft",), method="sft", seed=METHODS["sft"].seed),
    # later rounds: iterate's (samples) or rest_mcts's and cpl's (search trees) collections; round r seeds 2 + 100 r
    "collect": Kind(("collect", "sampler.backend"),
                    rounds_shaped_by=("iterate", "mcts", "rest.max_problems", "cpl.max_problems"),
                    seed=2, seed_per_round=100),
    "evaluate": Kind(("evaluate.max_new_tokens", "evaluate.sampled", "sampler.backend")),
    "rft": trained("rft"),
    "oreo": trained("oreo", rounds_shaped_by=("iterate",)),   # iterate's rounds
    "dpo": trained("dpo"),
    "kto": trained("kto"),
    "prm": trained("prm"),
    "step_apo": trained("step_apo"),
    "simpo": trained("simpo"),
    # CPL's stages named after what they train: Step-DPO (Step-APO with alpha 0), instance-DPO and the value model
    "step_dpo": trained("step_apo"),
    "instance_dpo": trained("dpo"),
    "value": trained("prm"),
}


def kind_of(stage: StageId | str) -> Kind:
    """What ``stage``'s kind declares; a kind no longer (or not yet) declared, read from an earlier (later)
    oreo's run.json, is taken to train the method of its name."""
    k = stage_id(stage).kind
    return KINDS.get(k) or trained(k)


def shaped_by(stage: StageId | str) -> tuple[str, ...]:
    """The config keys (sections or dotted keys) whose values shape ``stage``'s output."""
    stage = stage_id(stage)
    k = kind_of(stage)
    return COMMON + k.shaped_by + (k.rounds_shaped_by if stage.round else ())


def seed_offset(stage: StageId | str) -> int | None:
    """What ``stage`` adds to the run's seed before it runs (None: it seeds nothing itself)."""
    stage = stage_id(stage)
    k = kind_of(stage)
    return None if k.seed is None else k.seed + k.seed_per_round * (stage.round or 0)


def settings_of(cfg: dict, stage: StageId | str) -> dict:
    """``{dotted key: value}`` of the settings that shape ``stage`` in the resolved config ``cfg``."""
    flat = {}
    for key in shaped_by(stage):
        value = cfg
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        flat.update(_flatten(key, value))
    return {k: v for k, v in flat.items() if not k.endswith(HOW_NOT_WHAT)}


def recorded_settings(cfg: dict, stage: StageId | str) -> dict:
    """What run.json records for ``stage``: the settings that shape it in ``cfg`` and its seed offset. A run.json
    written before the offset was recorded lacks it, which ``differences`` does not count."""
    offset = seed_offset(stage)
    return settings_of(cfg, stage) | ({SEED_OFFSET: offset} if offset is not None else {})


def _flatten(prefix: str, value) -> dict:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flatten(f"{prefix}.{key}", sub).items()}
    return {prefix: value}


def differences(recorded: dict, now: dict) -> list[str]:
    """``key: recorded → now`` for every key both sides have whose value differs. A key only one side has is
    a setting a newer or older oreo added or removed (the config is typed, so a user cannot add one): its
    default is what the run used, so it is not a difference. So is the seed offset, which run.json files written
    before it was recorded lack: the offsets it replaced were the same."""
    return [f"{key}: {recorded[key]!r} → {now[key]!r}" for key in sorted(set(recorded) & set(now))
            if recorded[key] != now[key]]


class StageSettingsChanged(ValueError):
    def __init__(self, stage: StageId | str, changes: list[str], run_dir):
        stage = stage_id(stage)
        self.stage, self.changes = stage.name, changes
        listed = "\n  ".join(changes)
        super().__init__(
            f"stage '{stage}' in {run_dir} was run with other settings:\n  {listed}\n"
            f"Its outputs would not match this config. Either use a new run_dir, or add recompute=[{stage.kind}] "
            f"to redo '{stage}' and every stage that depends on it.")


def dependents(stage: StageId | str, stages: list[str]) -> set[str]:
    """The names among ``stages`` of the stages to redo when ``stage`` is redone: itself (a kind such as
    ``collect`` or ``oreo`` names every round of it) and those trained on its output. A trained method's
    evaluation goes with it (the pipeline forgets it); ``evaluate`` redoes every evaluation."""
    redone, ids = stage_id(stage), {name: StageId.parse(name) for name in stages}
    if redone.kind == "sft":
        return set(stages)
    if redone.kind == "collect":   # every trained stage but the first SFT (a round's SFT learns from its search: CPL)
        return {name for name, s in ids.items() if s != StageId("sft") and s.kind != "evaluate"}
    return {name for name, s in ids.items() if s == redone or (redone.is_kind and s.kind == redone.kind)}
