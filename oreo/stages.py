"""What shaped each stage's output, so that a rerun never mixes settings silently.

Each stage of a run (``sft``, ``collect_K``, ``rft``, ``oreo``, ``dpo``, ``kto``, iterate's ``oreo_roundK``,
``evaluate``) records the settings that shaped its output in ``run.json`` ("settings") when it starts.
A rerun whose settings differ for a stage that has finished or started refuses, listing the keys
(``StageSettingsChanged``); ``recompute=[STAGE, ...]`` redoes a stage and every stage that depends on it.
Settings that change how a stage runs but not what it computes (micro-batch sizes, checkpoint and log
intervals, chunk sizes, generation batch sizes) are left out, so they may change between reruns.
"""
from __future__ import annotations

# what every stage depends on: the seed, the task, the model (not how it is run)
COMMON = ("seed", "task", "model.name_or_path", "model.dtype", "model.tiny", "model.lora", "model.trust_remote_code")
HOW_NOT_WHAT = (".save_every", ".log_every", ".micro_batch_size", ".chunk_size", "collect.batch_size")


# CPL's stages named after what they train, and the config section each reads
SECTION = {"step_dpo": "step_apo", "instance_dpo": "dpo", "value": "prm"}


def kind(stage: str) -> str:
    """``collect_2`` → ``collect``; ``oreo_round3`` → ``oreo``; others are their own kind."""
    if stage.startswith("collect_"):
        return "collect"
    return stage.split("_round")[0]


def shaped_by(stage: str) -> tuple[str, ...]:
    """The config keys (sections or dotted keys) whose values shape ``stage``'s output."""
    k = kind(stage)
    if k == "sft":
        own = ("sft",)
    elif k == "collect":
        # later rounds: iterate's (samples) or rest_mcts's and cpl's (search trees) collections
        own = ("collect", "sampler.backend") + (("iterate", "mcts", "rest.max_problems", "cpl.max_problems")
                                                 if stage != "collect_0" else ())
    elif k == "evaluate":
        own = ("evaluate.max_new_tokens", "evaluate.sampled", "sampler.backend")
    else:  # a trained method (CPL's baselines and value read the step_apo, dpo and prm sections)
        own = (SECTION.get(k, k), "collect.balanced_k", "engine.bf16") + (("iterate",) if k == "oreo" and "_round" in
                                                                           stage else ())
    return COMMON + own


def settings_of(cfg: dict, stage: str) -> dict:
    """``{dotted key: value}`` of the settings that shape ``stage`` in the resolved config ``cfg``."""
    flat = {}
    for key in shaped_by(stage):
        value = cfg
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        flat.update(_flatten(key, value))
    return {k: v for k, v in flat.items() if not k.endswith(HOW_NOT_WHAT)}


def _flatten(prefix: str, value) -> dict:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flatten(f"{prefix}.{key}", sub).items()}
    return {prefix: value}


def differences(recorded: dict, now: dict) -> list[str]:
    """``key: recorded → now`` for every key both sides have whose value differs. A key only one side has is
    a setting a newer or older oreo added or removed (the config is typed, so a user cannot add one): its
    default is what the run used, so it is not a difference."""
    return [f"{key}: {recorded[key]!r} → {now[key]!r}" for key in sorted(set(recorded) & set(now))
            if recorded[key] != now[key]]


class StageSettingsChanged(ValueError):
    def __init__(self, stage: str, changes: list[str], run_dir):
        self.stage, self.changes = stage, changes
        listed = "\n  ".join(changes)
        super().__init__(
            f"stage '{stage}' in {run_dir} was run with other settings:\n  {listed}\n"
            f"Its outputs would not match this config. Either use a new run_dir, or add recompute=[{kind(stage)}] "
            f"to redo '{stage}' and every stage that depends on it.")


def dependents(stage: str, stages: list[str]) -> set[str]:
    """The stages among ``stages`` to redo when ``stage`` is redone: itself (a kind such as ``collect`` or
    ``oreo`` names every round of it) and those trained on its output. A trained method's evaluation goes
    with it (the pipeline forgets it); ``evaluate`` redoes every evaluation."""
    k = kind(stage)
    if k == "sft":
        return set(stages)
    if k == "collect":   # every trained stage but the first SFT (a round's SFT learns from its search: CPL)
        return {s for s in stages if s != "sft" and kind(s) != "evaluate"}
    return {s for s in stages if s == stage or kind(s) == stage}
