"""The whole run's config, typed once.

Each section is a dataclass next to the code that reads it, holding every key's type, allowed range,
default and documentation, once: ``engine``, ``sampler``, ``collect``, ``evaluate``, ``iterate``,
``wandb`` and ``model`` in ``oreo/config.py``; ``sft``, ``rft``, ``oreo``, ``dpo``, ``kto`` and ``simpo`` with their
objectives in ``oreo/trainers/``; ``task`` in each task's module; ``search`` in
``oreo/search/strategies.py``. ``RunConfig`` puts them together.

``register()`` gives Hydra the schema ``conf/config.yaml`` starts from (every key with its default, so
``--cfg job`` prints the whole config and an unknown key or a wrong type fails when the config is
composed) and the tasks as the options of the ``task`` group; the YAML files under ``conf/`` only hold
presets (models, search strategies) and experiments. The entry points turn the composed ``DictConfig``
into a ``RunConfig`` with ``run_config`` (ranges checked, ``ConfigError`` naming the key); nothing after
them sees a ``DictConfig``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from oreo.config import (
    CollectConfig,
    ConfigError,
    EngineConfig,
    EvaluateConfig,
    IterateConfig,
    ModelConfig,
    SamplerConfig,
    WandbConfig,
    at_least,
    between,
    build,
    validate,
)
from oreo.search.mcts import MCTSConfig
from oreo.search.strategies import SearchConfig
from oreo.tasks import TASKS, task_config, task_config_class
from oreo.tasks.arithmetic import ArithmeticConfig
from oreo.trainers import METHODS
from oreo.trainers.common import TrainConfig
from oreo.trainers.dpo import DPOConfig
from oreo.trainers.kto import KTOConfig
from oreo.trainers.oreo import OREOConfig
from oreo.trainers.prm import PRMConfig
from oreo.trainers.sft import SFTConfig
from oreo.trainers.simpo import SimPOConfig
from oreo.trainers.step_apo import StepAPOConfig

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
SCHEMA = "oreo_schema"   # the name conf/config.yaml's defaults list starts with


@dataclass
class RestConfig:
    """ReST-MCTS*'s self-training, ``python -m oreo.rest_mcts`` (spec §1.5)."""
    rounds: int = at_least(1, 2)                  # MCTS* → SFT on its correct traces → PRM on its targets, per round
    max_problems: int | None = at_least(1, None)  # search the first K training problems (null: all of them)
    # the policy's traces: a correct search path is kept only if the value model that guided the search valued its
    # finished solution at least this (the reference's vm_critic filter used 0.2); null: every correct path
    value_filter: float | None = between(0.0, 1.0, None)
    min_chars: int = at_least(0, 0)   # ... and only if its response has this many characters (the reference: 50)

    def __post_init__(self):
        validate(self)


@dataclass
class CPLConfig:
    """CPL's two rounds, ``python -m oreo.cpl`` (spec §2.6); the plan search is ``mcts`` with style alphazero."""
    rounds: int = between(1, 2, 2)               # per round: plan search → SFT → Step-APO (python -m oreo.cpl)
    max_problems: int | None = at_least(1, None)  # the plan search runs on the first K training problems
    max_sft_paths: int = at_least(1, 4)          # a round's SFT data: right paths per problem (the reference: 4)
    # first SFT on the task's own solutions in the plan format (the embedded teacher) and search round 1 with that
    # model; false: round 1 searches with the base model and its few-shot prompt (the paper's GSM8K/MATH setting)
    initial_sft: bool = True
    # round 1 also trains the ablation's baselines on the same trees, from the same SFT model: Step-DPO (Step-APO
    # with step_apo.alpha 0) and instance-DPO (the dpo settings on whole solution paths, right against wrong)
    baselines: bool = True
    # round 1 searches with this trained value model (a folder holding value_head.safetensors: an OREO value, a PRM,
    # an earlier CPL run's checkpoints/value_round1) instead of an untrained head (model.value.head_init)
    value: str | None = None

    def __post_init__(self):
        validate(self)


@dataclass
class RunConfig:
    """``python -m oreo.train`` runs the ``stages`` in ``run_dir``; the default run is the embedded arithmetic
    experiment, end to end on CPU: SFT on an imperfect teacher → collect graded samples → RFT and OREO on
    that buffer → greedy evaluation."""
    run_dir: str = "runs/default"   # everything the run writes goes here (config.yaml, metrics*, buffer/, checkpoints/)
    seed: int = at_least(0, 0)      # every stage's seed (the tasks' and the training data orders' too)
    device: str = "auto"            # auto (cuda if available) | cpu | cuda | cuda:N
    threads: int | None = at_least(1, None)   # torch CPU threads; null: torch's default
    # python -m oreo.evaluate: the checkpoint (policy/, value/); null: RUN_DIR/checkpoints/oreo
    checkpoint: str | None = None
    # python -m oreo.evaluate: the value model that scores (e.g. RUN_DIR/checkpoints/prm); null: the checkpoint's
    # value/; policy: the policy's own step likelihood, exp(mean step log-prob), no value model needed; verifier:
    # a logistic readout of the policy's step log-probs fitted on RUN_DIR's buffer (oreo.search.verifier)
    value: str | None = None
    # skip stages whose outputs exist in run_dir; a killed stage continues from its last in-stage checkpoint
    resume: bool = True
    # stages to redo, with every stage that depends on them (e.g. [oreo], [collect])
    recompute: list = field(default_factory=list)
    # which stages run, of sft, collect, rft, oreo, dpo, kto, prm, step_apo, simpo (in that order); every trained
    # policy is evaluated
    stages: list = field(default_factory=lambda: ["sft", "collect", "rft", "oreo"])
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    # rejection-sampling fine-tuning: SFT on the buffer's correct samples (RFT's best of 1 and 3 epochs,
    # lr 1e-4 / 3e-4 / 1e-3, README; the same learning rate as OREO's policy)
    rft: SFTConfig = field(default_factory=lambda: SFTConfig(train=TrainConfig(epochs=3)))
    oreo: OREOConfig = field(default_factory=OREOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)   # a process value model (stages=[...,prm]; not evaluated)
    step_apo: StepAPOConfig = field(default_factory=StepAPOConfig)   # CPL's Step-APO on plan-search trees
    simpo: SimPOConfig = field(default_factory=SimPOConfig)   # SimPO on DPO's pairs, reference-free
    cpl: CPLConfig = field(default_factory=CPLConfig)
    iterate: IterateConfig = field(default_factory=IterateConfig)
    mcts: MCTSConfig = field(default_factory=MCTSConfig)    # the tree search of python -m oreo.rest_mcts
    rest: RestConfig = field(default_factory=RestConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = field(default_factory=ArithmeticConfig)   # a task's config (oreo.tasks.TASKS); choose with task=NAME

    def __post_init__(self):
        validate(self)

    def method(self, name: str):
        """The config section of the trained method ``name`` (``oreo.trainers.METHODS``)."""
        return getattr(self, name)


def register() -> None:
    """Hand the schema and the task options to Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    schema = OmegaConf.structured(RunConfig)
    schema.task = None   # filled by the task group
    for name in METHODS:
        schema[name].train.seed = "${seed}"
    store.store(name=SCHEMA, node=schema)
    for name in TASKS:
        cls = task_config_class(name)
        node = OmegaConf.structured(cls(name=name))
        node.seed = "${seed}"
        store.store(group="task", name=name, node=node)


def run_config(cfg: DictConfig | dict) -> RunConfig:
    """The typed config of a composed Hydra config (or a plain dict of one); an unknown key, a wrong type or a
    value out of range raises ``ConfigError`` naming the dotted key."""
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if "task" in values:
        values["task"] = task_config(values["task"])
    return build(RunConfig, values, "")


def compose(overrides: list[str] = ()) -> RunConfig:
    """``conf/config.yaml`` with ``overrides`` (as on the command line), typed: for tests and scripts."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return run_config(hydra_compose(config_name="config", overrides=list(overrides)))


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The typed config a finished run wrote (``RUN_DIR/config.yaml``): for scripts that study a run."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; give the run_dir of a run (python -m oreo.train run_dir=...)")
    return run_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def as_dict(cfg) -> dict:
    """A typed config (or any dataclass) as plain JSON-able values (tuples become lists)."""
    return OmegaConf.to_container(OmegaConf.create(dataclasses.asdict(cfg)))


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(as_dict(cfg)))


def check_inputs(cfg: RunConfig) -> None:
    """The files the config names exist, so that a bad path fails before the first stage."""
    if cfg.collect.from_file and not Path(cfg.collect.from_file).is_file():
        raise ConfigError("collect.from_file", f"{cfg.collect.from_file}: no such file")
    data_dir = getattr(cfg.task, "data_dir", None)
    if data_dir and not Path(data_dir).exists():
        raise ConfigError("task.data_dir", f"{data_dir}: no such file or folder")


register()
